"""Does an IPv4 address with a lifetime vanish on time on this kernel?

A possible second fencing layer would give the VIP a valid lifetime a little
beyond the lease deadline and refresh it with every renewal, so the kernel
itself drops the address if nobody refreshes it. That only holds as far as the
kernel keeps the lifetime, which this measures, in a namespace of its own:

1. addresses added with valid_lft = preferred_lft = N seconds: how long after
   the add each one was seen gone (polled over netlink every 5 ms), for
   several N and several start phases (the kernel checks IPv4 lifetimes from
   one timer shared by all namespaces, rounded to whole seconds);
2. an address refreshed (``ip addr replace`` with a new lifetime) before it
   expired: whether it outlived its first lifetime, and when it vanished
   counted from the refresh.

The measured addresses are secondaries next to a permanent primary, with
``promote_secondaries`` on: without it, the expiry of whichever address is
primary in a subnet deletes every secondary of that subnet with it (seen
here: four addresses added 0.37 s apart all vanished at the first one's
expiry).

Needs root; takes about 15 seconds.

    .venv/bin/python bench/addr_lifetime.py
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time

from pyroute2 import AsyncIPRoute

from etcdha import network
from etcdha.lab.netns import Topology

RUNS_PER_LIFETIME = {1: 4, 2: 8, 3: 4}


async def _present(ipr: AsyncIPRoute, ip: str) -> bool:
    return any([m.get("IFA_LOCAL") == ip async for m in await ipr.addr("dump")])


async def _vanish_time(ns: str, ip: str, since: float, limit: float = 10.0) -> float:
    async with AsyncIPRoute(netns=ns, flags=0) as ipr:
        for _ in range(int(limit / 0.005)):
            now = time.monotonic()
            if not await _present(ipr, ip):
                return now - since
            await asyncio.sleep(0.005)
    raise RuntimeError(f"{ip} still present {limit}s after it should have expired")


async def _one(ns: str, ip: str, lifetime: int) -> float:
    await asyncio.sleep(random.uniform(0, 1))  # a random phase against the kernel's timer
    added = time.monotonic()
    await network.add_address("eth0", ip, 24, valid_lft=lifetime, netns=ns)
    return await _vanish_time(ns, ip, added)


async def _refresh(ns: str, ip: str) -> tuple[bool, float]:
    await network.add_address("eth0", ip, 24, valid_lft=2, netns=ns)
    await asyncio.sleep(1.0)
    refreshed = time.monotonic()
    await network.refresh_address_lifetime("eth0", ip, 24, valid_lft=2, netns=ns)
    await asyncio.sleep(max(0.0, refreshed + 1.5 - time.monotonic()))  # 2.5 s after the add
    info = await network.address_state("eth0", ip, netns=ns)
    outlived = info is not None
    return outlived, await _vanish_time(ns, ip, refreshed)


async def main() -> None:
    print(f"kernel {os.uname().release}")
    async with Topology() as topo:
        topo.connect("h", "eth0", "br0")
        ns = topo.ns("h")
        # A permanent primary address, and promote_secondaries: otherwise the expiry of
        # whichever address is primary in the subnet takes every secondary with it.
        topo.sysctl("h", "net.ipv4.conf.all.promote_secondaries", 1)
        topo.sysctl("h", "net.ipv4.conf.eth0.promote_secondaries", 1)
        topo.add_address("h", "eth0", "192.0.2.1/24")
        info_ip = "192.0.2.99"
        await network.add_address("eth0", info_ip, 24, valid_lft=30, preferred_lft=20, netns=ns)
        info = await network.address_state("eth0", info_ip, netns=ns)
        assert info is not None
        print(
            f"kernel reports valid_lft {info.valid_lft}s, preferred_lft {info.preferred_lft}s "
            "for an address added with 30/20"
        )
        await network.remove_address("eth0", info_ip, netns=ns)

        host = 10
        for lifetime, runs in RUNS_PER_LIFETIME.items():
            jobs = []
            for _ in range(runs):
                jobs.append(_one(ns, f"192.0.2.{host}", lifetime))
                host += 1
            seen = sorted(await asyncio.gather(*jobs))
            print(
                f"valid_lft {lifetime}s: gone after min {seen[0]:.2f}s, "
                f"median {statistics.median(seen):.2f}s, max {seen[-1]:.2f}s "
                f"({runs} addresses, random start phases)"
            )
        outlived, after = await _refresh(ns, "192.0.2.50")
        print(
            "refreshed with valid_lft 2s at 1.0s after the add: "
            f"{'still present' if outlived else 'GONE'} at 2.5s; "
            f"gone {after:.2f}s after the refresh"
        )


if __name__ == "__main__":
    asyncio.run(main())
