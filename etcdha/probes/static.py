"""``on``, ``off`` and ``none``: checks that do not touch the real server.

``on``: always up (ldirectord's checktype=on). ``off``: always down
(checktype=off adds no real server). ``none``: ldirectord's negotiate check of
service none, which marks the real up without checking it.
"""

from __future__ import annotations

from collections.abc import Callable

from etcdha.probes import Cancellable, DirectProbe, Result, Target, register, register_direct
from etcdha.probes._engine import ProbeEngine

ON = Result(True, "check type on")
OFF = Result(False, "check type off")
NONE = Result(True, "service none: not checked")


class _Done:
    """The handle of a check that ended as it started."""

    def cancel(self) -> None:
        pass


_DONE = _Done()


def _direct(result: Result) -> DirectProbe:
    def start(engine: ProbeEngine, target: Target, done: Callable[[Result], None]) -> Cancellable:
        done(result)
        return _DONE

    return start


@register("on")
async def on(target: Target) -> Result:
    return ON


@register("off")
async def off(target: Target) -> Result:
    return OFF


@register("none")
async def none(target: Target) -> Result:
    return NONE


register_direct("on")(_direct(ON))
register_direct("off")(_direct(OFF))
register_direct("none")(_direct(NONE))
