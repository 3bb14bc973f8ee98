"""Small asyncio servers that stand in for real servers in tests and benchmarks.

* :class:`HTTPBehaviour` / :func:`start_http`: an HTTP/1.1 server (one
  listener per port, all ports sharing one behaviour table) whose answer can be
  changed while it runs: status, body, chunked, huge, slow (one byte a second),
  silent (accepts and never answers), garbage (binary).
* :func:`start_dns`: a DNS server on UDP (and TCP) answering A/AAAA/TXT/PTR
  records from a dict, NXDOMAIN otherwise, or garbage.
* :func:`start_line_server`: a TCP server answering every request with a fixed
  text (ldirectord's simpletcp check).

Every start function returns something with ``close()`` (async); callers close
it on every exit path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

__all__ = [
    "DNSServer",
    "HTTPBehaviour",
    "HTTPServers",
    "start_dns",
    "start_http",
    "start_line_server",
]


@dataclass
class HTTPBehaviour:
    """What the HTTP server answers; change the fields while it runs."""

    status: int = 200
    body: bytes = b"ok\n"
    mode: str = "normal"  # normal, chunked, huge, slow, silent, garbage, close
    huge_size: int = 10 * 1024 * 1024
    requests: int = 0
    hosts: list[str] = field(default_factory=list)

    def response(self) -> bytes:
        reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Unavailable"}
        head = f"HTTP/1.1 {self.status} {reason.get(self.status, 'Status')}\r\n"
        if self.mode == "chunked":
            chunks = b"".join(
                f"{len(self.body[i : i + 3]):x}\r\n".encode() + self.body[i : i + 3] + b"\r\n"
                for i in range(0, len(self.body), 3)
            )
            return (head + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() + (
                chunks + b"0\r\n\r\n"
            )
        return (
            head + f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
        ).encode() + self.body


class _HTTPProtocol(asyncio.Protocol):
    def __init__(self, servers: HTTPServers) -> None:
        self.servers = servers
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not derive from asyncio's.
        self.transport = cast(asyncio.Transport, transport)
        self.servers.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.servers.connections.discard(self)
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        if self.task is not None or self.transport is None:
            return
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        b = self.servers.behaviour
        b.requests += 1
        for line in self.buffer.split(b"\r\n"):
            if line.lower().startswith(b"host:"):
                b.hosts.append(line[5:].strip().decode("latin-1"))
        if b.mode == "silent":
            return
        if b.mode == "close":
            self.transport.close()
            return
        if b.mode == "garbage":
            self.transport.write(bytes(range(256)) * 4)
            self.transport.close()
            return
        if b.mode in ("huge", "slow"):
            self.task = asyncio.get_running_loop().create_task(self._stream(b))
            return
        self.transport.write(b.response())
        self.transport.close()

    async def _stream(self, b: HTTPBehaviour) -> None:
        assert self.transport is not None
        t = self.transport
        try:
            if b.mode == "slow":
                for byte in b.response():
                    t.write(bytes([byte]))
                    await asyncio.sleep(1.0)
            else:
                t.write(f"HTTP/1.1 200 OK\r\nContent-Length: {b.huge_size}\r\n\r\n".encode())
                block = b"x" * 65536
                sent = 0
                while sent < b.huge_size and not t.is_closing():
                    t.write(block)
                    sent += len(block)
                    if t.get_write_buffer_size() > 1 << 20:
                        await asyncio.sleep(0.01)
            t.close()
        except (ConnectionError, RuntimeError):
            t.abort()


class HTTPServers:
    """Listeners on several ports sharing one :class:`HTTPBehaviour`."""

    def __init__(self, behaviour: HTTPBehaviour) -> None:
        self.behaviour = behaviour
        self.servers: list[asyncio.Server] = []
        self.ports: list[int] = []
        self.connections: set[_HTTPProtocol] = set()

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self.servers.clear()


async def start_http(
    host: str = "127.0.0.1",
    ports: Iterable[int] = (0,),
    behaviour: HTTPBehaviour | None = None,
    *,
    tls: ssl.SSLContext | None = None,
) -> HTTPServers:
    """One listener per port (0: any free port); all share ``behaviour``."""
    servers = HTTPServers(behaviour or HTTPBehaviour())
    loop = asyncio.get_running_loop()
    try:
        for port in ports:
            server = await loop.create_server(
                lambda: _HTTPProtocol(servers), host, port, ssl=tls, backlog=1024
            )
            servers.servers.append(server)
            servers.ports.append(server.sockets[0].getsockname()[1])
    except BaseException:
        await servers.close()
        raise
    return servers


# ---------------------------------------------------------------------------
# DNS


@dataclass
class DNSServer:
    """Answers from ``records`` ({(name, type): [text values]}); NXDOMAIN otherwise."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    mode: str = "normal"  # normal, garbage, silent, servfail
    port: int = 0
    transport: asyncio.DatagramTransport | None = None
    tcp: asyncio.Server | None = None
    queries: int = 0

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.tcp is not None:
            self.tcp.close()
            with contextlib.suppress(Exception):
                await self.tcp.wait_closed()

    def answer(self, query: bytes) -> bytes | None:
        self.queries += 1
        if self.mode == "silent":
            return None
        if self.mode == "garbage":
            return b"\xff" * 7 + query[:2]
        ident, _flags, _qd = struct.unpack("!HHH", query[:6])
        pos, labels = 12, []
        while query[pos]:
            n = query[pos]
            labels.append(query[pos + 1 : pos + 1 + n].decode())
            pos += 1 + n
        qtype = struct.unpack("!H", query[pos + 1 : pos + 3])[0]
        question = query[12 : pos + 5]
        name = ".".join(labels).lower()
        tname = {1: "A", 28: "AAAA", 16: "TXT", 12: "PTR"}.get(qtype, str(qtype))
        values = self.records.get((name, tname))
        names = {n for n, _ in self.records}
        rcode = 2 if self.mode == "servfail" else (0 if values or name in names else 3)
        answers = b""
        for value in values or [] if rcode == 0 else []:
            if tname == "A":
                rdata = ipaddress.IPv4Address(value).packed
            elif tname == "AAAA":
                rdata = ipaddress.IPv6Address(value).packed
            elif tname == "TXT":
                rdata = bytes([len(value)]) + value.encode()
            else:
                rdata = (
                    b"".join(bytes([len(p)]) + p.encode() for p in value.rstrip(".").split("."))
                    + b"\0"
                )
            answers += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata
        count = len(values or []) if rcode == 0 else 0
        header = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, count, 0, 0)
        return header + question + answers


class _DNSProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            reply = self.server.answer(data)
        except (IndexError, struct.error, UnicodeError):
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def start_dns(
    host: str = "127.0.0.1", records: dict[tuple[str, str], list[str]] | None = None
) -> DNSServer:
    """A DNS server on a free UDP port, with a TCP listener on the same port."""
    server = DNSServer(records=dict(records or {}))
    loop = asyncio.get_running_loop()
    for _ in range(20):
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DNSProtocol(server), local_addr=(host, 0)
        )
        port = transport.get_extra_info("sockname")[1]
        # The same TCP port may be taken by another program: then pick another.
        probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            probe.bind((host, port))
            break
        except OSError:
            transport.close()
        finally:
            probe.close()
    server.transport = transport
    server.port = port

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            reply = server.answer(await reader.readexactly(length))
            if reply is not None:
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError, struct.error):
            pass
        finally:
            writer.close()

    try:
        server.tcp = await asyncio.start_server(handle, host, server.port)
    except OSError:
        server.tcp = None  # the TCP port is taken: UDP only
    return server


# ---------------------------------------------------------------------------
# simpletcp


async def start_line_server(
    answer: bytes, host: str = "127.0.0.1"
) -> tuple[asyncio.Server, list[bytes]]:
    """A TCP server that reads the request to EOF and answers ``answer``;
    returns the server and the list the requests are appended to."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await reader.read(65536))
            writer.write(answer)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, 0), seen
