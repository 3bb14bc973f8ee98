"""How late the fence guard removes addresses after their deadline.

Builds a namespace with two interfaces, runs a guard inside it, and arms a
group with a VIP and a DIP ROUNDS times, each with a deadline a moment ahead.
For every round it records the guard's own figure (deadline to "both
addresses gone") and the time this process saw them gone (polling netlink
every ~2 ms, so that one includes the polling delay). Needs root.

    .venv/bin/python bench/fence_lateness.py [ROUNDS]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile

from pyroute2 import AsyncIPRoute

from etcdha import clock, network
from etcdha.fence import FenceClient, FenceError
from etcdha.lab.netns import Topology

ADDRESSES = [("eth0", "192.0.2.200", 24), ("eth1", "198.51.100.200", 24)]


async def _gone_at(ns: str) -> float:
    wanted = {ip for _, ip, _ in ADDRESSES}
    async with AsyncIPRoute(netns=ns, flags=0) as ipr:
        for _ in range(5000):
            found = {m.get("IFA_LOCAL") async for m in await ipr.addr("dump")}
            now = clock.now()  # after the answer: never earlier than the removal
            if not found & wanted:
                return now
            await asyncio.sleep(0.002)
    raise RuntimeError("the addresses were never removed")


def _summary(name: str, values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return (
        f"{name:<28} min {values[0]:6.2f}  median {statistics.median(values):6.2f}  "
        f"p95 {p95:6.2f}  max {values[-1]:6.2f}  (ms, {len(values)} rounds)"
    )


async def main(rounds: int) -> None:
    directory = tempfile.mkdtemp(prefix="ehbench-")
    sock = os.path.join(directory, "fence.sock")
    async with Topology() as topo:
        try:
            topo.connect("d", "eth0", "pub")
            topo.connect("d", "eth1", "priv")
            ns = topo.ns("d")
            topo.start("d", sys.executable, "-m", "etcdha.fence", "--socket", sock)
            client = FenceClient(sock, spawn=False)
            for _ in range(250):
                try:
                    await client.connect()
                    break
                except FenceError:
                    await asyncio.sleep(0.02)
            guard_ms: list[float] = []
            seen_ms: list[float] = []
            for _ in range(rounds):
                for ifname, ip, plen in ADDRESSES:
                    await network.add_address(ifname, ip, plen, netns=ns)
                deadline = clock.now() + 0.2
                await client.arm("bench", deadline, ADDRESSES)
                seen_ms.append((await _gone_at(ns) - deadline) * 1000)
                guard_ms.append((await client.status())["fired"][-1]["late_ms"])
            await client.aclose()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs; 2 addresses per group")
    print(_summary("guard: deadline -> removed", guard_ms))
    print(_summary("observer: deadline -> seen", seen_ms))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
