"""``on``, ``off`` and ``none``: checks that do not touch the real server.

``on``: always up (ldirectord's checktype=on). ``off``: always down
(checktype=off adds no real server). ``none``: ldirectord's negotiate check of
service none, which marks the real up without checking it.
"""

from __future__ import annotations

from etcdha.probes import Result, Target, register


@register("on")
async def on(target: Target) -> Result:
    return Result(True, "check type on")


@register("off")
async def off(target: Target) -> Result:
    return Result(False, "check type off")


@register("none")
async def none(target: Target) -> Result:
    return Result(True, "service none: not checked")
