"""``connect``: can a connection be opened to the real server's port?

* TCP: a three-way handshake, closed at once (ldirectord's connect check).
* SCTP: an SCTP association (the kernel's SCTP module must be loadable).
* UDP has no connection. The probe sends one datagram (the check's request, or
  an empty one) from a connected socket and waits up to one second (at most the
  timeout): an ICMP port unreachable is "down", an answer or silence is "up"
  (silence only means nothing refused the port, nmap's "open|filtered"). Use a
  ``dns`` or ``external`` check for UDP services that can really answer, or
  ``ping`` for the host, as ldirectord's connect check on UDP services does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from etcdha.probes import Cancellable, Result, Target, register, register_direct
from etcdha.probes._engine import ProbeEngine, exchange
from etcdha.probes._net import Datagram, sctp_connect

UDP_WAIT = 1.0


@register("connect")
async def connect(target: Target) -> Result:
    if target.protocol == "udp":
        return await udp_connect(target)
    if target.protocol == "sctp":
        await sctp_connect(target)
        return Result(True, "sctp association established")
    return await exchange(target, b"", None)


@register_direct("connect")
def connect_direct(
    engine: ProbeEngine, target: Target, done: Callable[[Result], None]
) -> Cancellable | None:
    if target.protocol != "tcp":
        return None
    return engine.start(target, b"", None, done)


async def udp_connect(target: Target) -> Result:
    endpoint = await Datagram.open(target)
    try:
        endpoint.send((target.request or "").encode())
        try:
            async with asyncio.timeout(min(UDP_WAIT, target.timeout * 0.9)):
                await endpoint.receive()
        except TimeoutError:
            return Result(True, "no answer and no ICMP error (open|filtered)")
        except ConnectionRefusedError:
            return Result(False, "ICMP port unreachable")
        return Result(True, "answered")
    finally:
        with contextlib.suppress(Exception):
            endpoint.close()
