"""The lab's web servers, in-process: each real server's httpd and each director's fallback.

As in the seed, every real server serves ``/test.html`` containing "ok" (what
the check asks for) and an index page naming itself, so the client can tell
who answered; every director serves the "Sorry" page that IPVS falls back to
when no real server is up (the spec says 127.0.0.1:80; IPVS hands the
connection to the local stack with the VIP as destination, so the listener is
on every address, as the seed's httpd was). A server can be stopped and
started again, as `systemctl stop httpd` would.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from etcdha.lab.nsock import listener_in

FALLBACK_WORD = "Sorry"


def real_index(name: str, address: str) -> str:
    return f"<html><body><h1>{name}</h1><p>real server {name} ({address})</p></body></html>\n"


def fallback_page(director: str) -> str:
    return (
        f"<html><body><h1>{FALLBACK_WORD}</h1><p>no real server is up; "
        f"this is the fallback page of {director}</p></body></html>\n"
    )


def _response(status: int, body: str) -> bytes:
    reason = "OK" if status == 200 else "Not Found"
    data = body.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


class _Protocol(asyncio.Protocol):
    def __init__(self, server: WebServer) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > 16384:
                self.transport.close()
            return
        path = self.buffer.split(b" ", 2)[1].decode("latin-1") if b" " in self.buffer else "/"
        self.server.requests += 1
        self.transport.write(self.server.answer(path))
        self.transport.close()


@dataclass
class WebServer:
    """One httpd on ``address:port`` inside namespace ``ns``; :meth:`stop` and
    :meth:`start` as often as needed."""

    name: str
    ns: str
    pages: dict[str, str]
    address: str = "0.0.0.0"
    port: int = 80
    requests: int = 0
    connections: set[asyncio.Transport] = field(default_factory=set)
    _server: asyncio.Server | None = None

    def answer(self, path: str) -> bytes:
        page = self.pages.get(path.split("?", 1)[0])
        return _response(200, page) if page is not None else _response(404, "not found\n")

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        sock = listener_in(self.ns, self.address, self.port)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Protocol(self), sock=sock)

    async def stop(self) -> None:
        """Stop listening and cut open connections: new connections are refused."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for transport in list(self.connections):
            transport.abort()
        with contextlib.suppress(Exception):
            await server.wait_closed()


def real_server(name: str, ns: str, address: str) -> WebServer:
    pages = {"/": real_index(name, address), "/index.html": real_index(name, address)}
    pages["/test.html"] = "ok\n"
    return WebServer(name, ns, pages, address=address)


def fallback_server(director: str, ns: str) -> WebServer:
    page = fallback_page(director)
    return WebServer(f"fallback-{director}", ns, {"/": page, "/index.html": page})
