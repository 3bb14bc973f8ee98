"""etcd_unreachable: failsafe — keep the VIP while every other director confirms,
agent to agent, that it cannot reach etcd either and will not take over.

Patroni's failsafe_mode is the model. When its keepalives fail and its
fencing deadline nears, a leader asks every other director (HTTPS with mutual
TLS, certificates from the cluster's CA) for a promise. A director promises
only if its own keepalives are failing too; a promise means "I will not
campaign for the next `lease_ttl` seconds". With a promise from every other
director the leader moves its deadline to the earliest promise's end
(measured from when it sent the request, so never later than the promise)
minus the fence margin, and re-arms its fence guard. One refusal, or one
director that does not answer, and the leader drops at its deadline as
under `drop`.

Why it is safe: nobody else can lead while every other director has promised
not to campaign, and the leader stops holding before the first promise ends;
when etcd comes back, a promise still binds its director until it ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from etcdha import clock

log = logging.getLogger(__name__)

PATH = "/failsafe"
PROBE_LIMIT = 0.3  # how long a director tries etcd before it confirms it cannot reach it


@dataclass(frozen=True)
class TLSFiles:
    cacert: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.cacert))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.cacert))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        # Peers are known by the CA that signed them, not by host names.
        ctx.check_hostname = False
        return ctx


class Failsafe:
    """Both sides: answering other leaders, and asking on our own behalf."""

    def __init__(
        self,
        node: str,
        tls: TLSFiles,
        reaches_etcd: Callable[[float], Awaitable[bool]],
        promise_for: Callable[[], float],
    ) -> None:
        self.node = node
        self.tls = tls
        self.reaches_etcd = reaches_etcd
        self.promise_for = promise_for
        self.promised_until = 0.0  # clock.now() value; we may not campaign before it
        self._server: asyncio.Server | None = None

    # -- answering

    async def serve(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._handle, host, port, ssl=self.tls.server_context()
        )
        log.info("failsafe: answering other directors on %s:%d (mutual TLS)", host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def may_campaign(self) -> bool:
        return clock.now() >= self.promised_until

    async def answer(self, requester: str) -> dict[str, object]:
        if requester == self.node:
            return {"node": self.node, "promise": False, "why": "that is my own name"}
        # Confirm directly: one bounded attempt to reach etcd now.
        if await self.reaches_etcd(PROBE_LIMIT):
            return {"node": self.node, "promise": False, "why": "I can reach etcd"}
        duration = self.promise_for()
        self.promised_until = max(self.promised_until, clock.now() + duration)
        log.warning(
            "failsafe: promised %s not to campaign for %.1fs: neither of us reaches etcd",
            requester,
            duration,
        )
        return {"node": self.node, "promise": True, "for": duration}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = (await reader.readline()).decode("latin-1").split()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = min(int(value.strip() or 0), 4096)
                body = json.loads(await reader.readexactly(length)) if length else {}
            reply: dict[str, object]
            if request[:2] != ["POST", PATH] or not isinstance(body, dict):
                status, reply = 404, {"error": "not found"}
            else:
                status, reply = 200, await self.answer(str(body.get("node", "")))
            data = json.dumps(reply).encode()
            writer.write(
                f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, ssl.SSLError, IndexError):
            pass
        finally:
            writer.close()

    # -- asking

    async def _ask(self, peer: str, host: str, port: int, limit: float) -> tuple[str, float]:
        """(peer, promised seconds) or raise with the reason."""
        body = json.dumps({"node": self.node}).encode()
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=self.tls.client_context()
            )
            try:
                writer.write(
                    f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                raw = await reader.read(8192)
            finally:
                writer.close()
        reply = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        if not reply.get("promise"):
            raise RuntimeError(f"{peer} refused: {reply.get('why', 'no reason given')}")
        return peer, float(reply["for"])

    async def confirm(self, peers: dict[str, tuple[str, int]], limit: float) -> float | None:
        """Ask every peer; the clock.now() value until which all promised, or None."""
        if not peers:
            return None
        sent = clock.now()
        results = await asyncio.gather(
            *(self._ask(name, host, port, limit) for name, (host, port) in peers.items()),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            log.warning(
                "failsafe: no confirmation from every director (%s); the VIP goes at the deadline",
                "; ".join(str(f) or type(f).__name__ for f in failures),
            )
            return None
        promised = [r for r in results if isinstance(r, tuple)]
        return sent + min(duration for _, duration in promised)
