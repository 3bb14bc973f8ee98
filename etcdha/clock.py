"""The clock that decides fences: CLOCK_BOOTTIME.

CLOCK_MONOTONIC stops while the machine is suspended (and across some virtual
machine pauses); etcd's clock on another machine does not, so a lease can
expire in etcd while a monotonic deadline still lies ahead. CLOCK_BOOTTIME
counts that time too. Like CLOCK_MONOTONIC it never jumps with the wall clock
and is one clock for every process of a machine, so the agent and its fence
guard compare the same values. Every fencing deadline (lease keepalives, the
fence guard, failsafe promises) is a value of this clock; asyncio's own timers
stay on the monotonic clock, which is fine for "sleep this long".
"""

from __future__ import annotations

import time


def now() -> float:
    """Seconds since boot, suspended time included."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def monotonic_of(boottime: float) -> float:
    """The CLOCK_MONOTONIC value of the same instant (for peers that speak it)."""
    return boottime - (now() - time.monotonic())
