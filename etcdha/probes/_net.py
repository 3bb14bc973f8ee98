"""Socket helpers shared by the probes (asyncio, non-blocking)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from etcdha.probes import Target


def family_of(target: Target) -> int:
    return socket.AF_INET6 if target.family == 6 else socket.AF_INET


async def open_stream(
    target: Target, **kwargs: object
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP (or TLS, with ``ssl=``) stream to the target; the caller's timeout bounds it."""
    return await asyncio.open_connection(
        target.address,
        target.port,
        limit=16 * 1024,
        **kwargs,  # type: ignore[arg-type]
    )


_NO_LINGER = struct.pack("ii", 1, 0)


def reset_on_close(sock: socket.socket | None) -> None:
    """Close with a reset (SO_LINGER 0), as load balancers' health checks do: the
    real server's socket is freed at once instead of sitting in TIME_WAIT, which
    thousands of checks a second would pile up there (and here)."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)


def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close without waiting for the peer (an answer we stopped reading may still come)."""
    transport = writer.transport
    reset_on_close(transport.get_extra_info("socket"))
    with contextlib.suppress(Exception):
        transport.abort()


async def sctp_connect(target: Target) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(family_of(target), socket.SOCK_STREAM, socket.IPPROTO_SCTP)
    with sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (target.address, target.port))


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.queue.put_nowait(exc)


class Datagram:
    """A connected UDP endpoint: ICMP errors (port unreachable) arrive as exceptions."""

    def __init__(
        self, sock: socket.socket, transport: asyncio.DatagramTransport, protocol: _Datagrams
    ) -> None:
        self.sock = sock
        self.transport = transport
        self.protocol = protocol

    @classmethod
    async def open(cls, target: Target) -> Datagram:
        loop = asyncio.get_running_loop()
        sock = socket.socket(family_of(target), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((target.address, target.port))
            transport, protocol = await loop.create_datagram_endpoint(_Datagrams, sock=sock)
        except BaseException:
            sock.close()
            raise
        return cls(sock, transport, protocol)

    def send(self, data: bytes) -> None:
        if data:
            self.transport.sendto(data)
        else:
            # asyncio's transport drops empty datagrams; an empty probe is legitimate.
            with contextlib.suppress(BlockingIOError):
                self.sock.send(b"")

    async def receive(self) -> bytes:
        item = await self.protocol.queue.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.transport.close()
