"""A stand-in agent for the fence tests, run as its own process inside a namespace.

    python fence_agent.py SOCKET GROUP TTL IFNAME/IP/PREFIX... [--renew-every S] [--log FILE]

Connects to the guard on SOCKET (starting one, detached, if none answers), arms
GROUP with a deadline TTL seconds ahead, prints ``armed <deadline> <guard pid>``
and then either sleeps or re-arms every ``--renew-every`` seconds, printing
``renewed <deadline>`` each time, until it is killed.
"""

from __future__ import annotations

import argparse
import asyncio

from etcdha import clock
from etcdha.fence import FenceClient


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("group")
    parser.add_argument("ttl", type=float)
    parser.add_argument("addresses", nargs="+")
    parser.add_argument("--renew-every", type=float, default=0.0)
    parser.add_argument("--log")
    args = parser.parse_args()
    addresses = []
    for text in args.addresses:
        ifname, ip, prefixlen = text.split("/")
        addresses.append((ifname, ip, int(prefixlen)))

    client = FenceClient(args.socket, agent="test-agent", idle_exit=10, log_file=args.log)
    await client.connect()
    deadline = clock.now() + args.ttl
    await client.arm(args.group, deadline, addresses)
    print(f"armed {deadline} {client.guard_pid}", flush=True)
    while True:
        if args.renew_every <= 0:
            await asyncio.sleep(3600)
            continue
        await asyncio.sleep(args.renew_every)
        deadline = clock.now() + args.ttl
        await client.arm(args.group, deadline, addresses)
        print(f"renewed {deadline}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
