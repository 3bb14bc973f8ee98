"""``tcp``: ldirectord's simpletcp check: send ``request``, expect ``receive``.

The request is sent as is (write ``\\n`` in YAML for a newline), then the
sending side is shut down, as ldirectord does. Up when the regular expression
``receive`` (``^`` and ``$`` match at each line, as ldirectord's line by line
match) is found in what the server answers (read until it closes, at most
64 KiB); with no ``receive``, any answer of at least one byte passes. On a UDP
service the request is one datagram and the answer is the first datagram back.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from functools import cache, partial

from etcdha.probes import READ_LIMIT, Cancellable, Result, Target, register, register_direct
from etcdha.probes._engine import ProbeEngine, exchange
from etcdha.probes._net import Datagram


@cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text, re.MULTILINE)  # ldirectord matches line by line


def _matches(target: Target, data: bytes) -> bool:
    if target.receive is None:
        return bool(data)
    return bool(_pattern(target.receive).search(data.decode("utf-8", "replace")))


def _verdict(target: Target, data: bytes) -> Result:
    if _matches(target, data):
        return Result(True, f"answered {len(data)} bytes" if target.receive is None else "matched")
    if not data:
        return Result(False, "closed without answering")
    return Result(False, f"receive {target.receive!r} not found in {data[:40]!r}")


@register("tcp")
async def tcp(target: Target) -> Result:
    payload = (target.request or "").encode()
    if target.protocol == "udp":
        endpoint = await Datagram.open(target)
        try:
            endpoint.send(payload)
            return _verdict(target, await endpoint.receive())
        finally:
            with contextlib.suppress(Exception):
                endpoint.close()
    return await exchange(target, payload, partial(_judge, target), shut_write=True)


@register_direct("tcp")
def tcp_direct(
    engine: ProbeEngine, target: Target, done: Callable[[Result], None]
) -> Cancellable | None:
    if target.protocol != "tcp":
        return None
    payload = (target.request or "").encode()
    return engine.start(target, payload, partial(_judge, target), done, shut_write=True)


def _judge(target: Target, data: bytes, eof: bool, error: OSError | None) -> Result | None:
    """Read until the answer matches, the server closes, or 64 KiB came."""
    if _matches(target, data[:READ_LIMIT]) or eof or len(data) >= READ_LIMIT:
        return _verdict(target, data[:READ_LIMIT])
    return None
