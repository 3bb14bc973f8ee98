"""From a health verdict written to etcd to the kernel's IPVS table, through the agent's path.

Runs inside Debian's user-mode-linux (one CPU, HZ=100), with a real etcd: the
agent's own pipeline (a watch on the cluster prefix, the inputs mirror, the
health aggregation, the Feed, the leader's IPVSTable and netlink) follows a
checker's verdicts while this script flips one real's verdict between up and
down and polls the kernel (a netlink dump of that service every 0.5 ms) until
the weight changes. Printed: median, p90, p99 and max of the delay, for the
seed's table (1 service, 2 reals) and for a larger one.

    .venv/bin/python bench/ipvs_latency.py [--changes N] [--services N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

from etcdha.agent_ipvs import IPVSDuties
from etcdha.configdb import apply_config
from etcdha.ipvs.model import ServiceKey
from etcdha.ipvs.netlink import NetlinkBackend
from etcdha.ipvs.reconcile import IPVSTable
from etcdha.keyspace import Keyspace
from etcdha.lab.etcd_process import EtcdProcess
from etcdha.spec_load import load_text
from etcdha.store import EtcdSettings, Store

GROUP = "lvs"


def spec_text(services: int) -> str:
    lines = [
        "nodes: [node1]",
        f"groups: [{{name: {GROUP}, node: node1, resources: [ipvs]}}]",
        "health_policy: leader",
        "virtual_services:",
    ]
    for i in range(services):
        lines += [
            f"  - address: 192.0.2.{1 + i // 250}:{1000 + i % 250}",
            "    scheduler: rr",
            "    quiescent: true",
            "    reals:",
            f'      - {{address: "198.51.100.{1 + i % 250}:80", forward: masq}}',
            f'      - {{address: "203.0.113.{1 + i % 250}:80", forward: masq}}',
        ]
    return "\n".join(lines) + "\n"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(etcd: EtcdProcess, services: int, changes: int) -> list[float]:
    ks = Keyspace("/etcdha", f"lat{services}")
    async with Store(EtcdSettings(endpoints=etcd.endpoints)) as store:
        spec = load_text(spec_text(services), "bench.yaml").spec
        await apply_config(store, ks, spec, source="bench", expect_revision=None)
        await store.put(ks.leader(GROUP), json.dumps({"node": "node1"}).encode())
        duties = IPVSDuties("node1", store, ks, lambda group: None)
        kvs, revision = await store.get_prefix(ks.root)
        duties.load(kvs, revision)
        table = IPVSTable(GROUP, duties.feed)

        async def watch() -> None:
            rev = revision
            async for batch in store.watch_prefix(ks.root, rev + 1):
                for event in batch.events:
                    duties.apply(event, batch.revision)

        tasks = [
            asyncio.create_task(duties.run_inputs(lambda: (spec, 1))),
            asyncio.create_task(watch()),
        ]
        await asyncio.sleep(0.2)
        await table.start()
        backend = NetlinkBackend()
        key = ServiceKey.of_address("tcp", "192.0.2.1", 1000)
        health = ks.health("node1", key.segment, "198.51.100.1-80")

        def weight() -> int | None:
            for dest, _ in backend.dests(key):
                if dest.address == "198.51.100.1":
                    return dest.weight
            return None

        delays: list[float] = []
        try:
            for i in range(changes + 1):
                up = i % 2 == 0
                want = 1 if up else 0
                value = json.dumps({"state": "up" if up else "down", "since": "", "detail": ""})
                started = time.perf_counter()
                await store.put(health, value.encode())
                while weight() != want:
                    await asyncio.sleep(0.0005)
                    if time.perf_counter() - started > 10:
                        raise RuntimeError("the change did not reach the kernel in 10 s")
                if i:  # the first one only warms the path up
                    delays.append(time.perf_counter() - started)
                await asyncio.sleep(0.05)
        finally:
            for t in tasks:
                t.cancel()
            await table.stop()
            backend.flush()
            backend.close()
        return delays


def inside(changes: int, sizes: list[int]) -> None:
    print("one health verdict: etcd put -> the kernel's weight (inside user-mode-linux)")
    with EtcdProcess("bench") as etcd:
        for services in sizes:
            d = asyncio.run(measure(etcd, services, changes))
            ms = [x * 1000 for x in d]
            print(
                f"  {services} services, {services * 2} reals, {len(ms)} changes: "
                f"median {statistics.median(ms):.1f} ms, p90 {pct(ms, 90):.1f} ms, "
                f"p99 {pct(ms, 99):.1f} ms, max {max(ms):.1f} ms"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--services", type=int, nargs="*", default=[1, 1000])
    args = parser.parse_args()
    if os.environ.get("ETCDHA_IN_UML"):
        inside(args.changes, args.services)
        return 0
    from etcdha.lab.uml import run_in_uml, unavailable

    reason = unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    argv = ["python", os.path.abspath(__file__), "--changes", str(args.changes), "--services"]
    result = run_in_uml([*argv, *map(str, args.services)], timeout=900, mem="1G")
    sys.stdout.write(result.output)
    return result.code


if __name__ == "__main__":
    sys.exit(main())
