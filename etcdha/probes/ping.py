"""``ping``: ICMP (IPv4) or ICMPv6 echo, ``checkcount`` attempts of ``timeout`` each.

Reuses :func:`etcdha.network.ping` (a raw socket: root or CAP_NET_RAW).
"""

from __future__ import annotations

import time

from etcdha import network
from etcdha.probes import Result, Target, register


@register("ping")
async def ping(target: Target) -> Result:
    attempts = max(1, target.check.checkcount)
    each = target.timeout * 0.95 / attempts  # inside the probe's own bound
    for _ in range(attempts):
        started = time.monotonic()
        if await network.ping(target.address, each):
            return Result(True, "echo reply", (time.monotonic() - started) * 1000.0)
    return Result(False, f"no echo reply ({attempts} attempt{'s' if attempts > 1 else ''})")
