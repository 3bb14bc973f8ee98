"""The agent's one HTTP listener: /metrics, /healthz, /readyz (asyncio, no threads)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST

from etcdha import metrics

log = logging.getLogger(__name__)

Probe = Callable[[], tuple[bool, str]]
Exposition = Callable[[], Awaitable[bytes]]


async def _own_metrics() -> bytes:
    return metrics.exposition()


class HTTPServer:
    """``exposition`` gives /metrics' body (default: this process's metrics)."""

    def __init__(
        self,
        host: str,
        port: int,
        healthz: Probe,
        readyz: Probe,
        exposition: Exposition | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._routes: dict[str, Probe] = {"/healthz": healthz, "/readyz": readyz}
        self._exposition = exposition or _own_metrics
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.port = sock[1]
        log.info("serving /metrics, /healthz and /readyz on %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, await self._exposition()
            elif path in self._routes:
                ok, text = self._routes[path]()
                status, ctype, body = (200 if ok else 503), "text/plain", (text + "\n").encode()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
