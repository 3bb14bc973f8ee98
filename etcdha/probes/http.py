"""``http`` and ``https``: one request on a new connection, as ldirectord's negotiate check.

* ``http_method`` GET (default) or HEAD, path ``request`` (default ``/``),
  ``Host`` from ``virtualhost`` (default: the real's address, as ldirectord).
* Up when the status is in ``expected_status`` (default: any 2xx) and, when
  ``receive`` is set, the regular expression is found in the body.
* At most 64 KiB of the body is read (chunked or not); the connection is then
  dropped, so a huge or endless body costs nothing more. Redirects are not
  followed: list 3xx statuses in ``expected_status`` to accept them.
* https: certificates are not verified (as ldirectord) unless ``verify_tls``;
  SNI is ``virtualhost`` when that is a name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from asyncio.selector_events import BaseSelectorEventLoop
from functools import cache
from typing import Protocol, cast

from etcdha.probes import READ_LIMIT, Result, Target, register
from etcdha.probes._net import close_stream, family_of, open_stream, reset_on_close

MAX_HEADERS = 100
_STATUS_RE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: ([^\r\n]*))?\r?\n\Z")


class Malformed(Exception):
    pass


@cache
def tls_context(verify: bool) -> ssl.SSLContext:
    if verify:
        return ssl.create_default_context()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def host_header(target: Target) -> str:
    if target.check.virtualhost:
        return target.check.virtualhost
    return f"[{target.address}]" if ":" in target.address else target.address


def status_ok(check_status: list[int], status: int) -> bool:
    return status in check_status if check_status else 200 <= status <= 299


@register("http")
async def http(target: Target) -> Result:
    return await _request(target, tls=False)


@register("https")
async def https(target: Target) -> Result:
    return await _request(target, tls=True)


def _request_bytes(target: Target) -> bytes:
    check = target.check
    path = target.request or "/"
    if not path.startswith("/"):
        path = "/" + path
    return (
        f"{check.http_method} {path} HTTP/1.1\r\nHost: {host_header(target)}\r\n"
        "User-Agent: etcdha-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1", "replace")


async def _request(target: Target, *, tls: bool) -> Result:
    if not tls:
        loop = asyncio.get_running_loop()
        if isinstance(loop, BaseSelectorEventLoop):
            # The standard loop: its socket calls cost about a third less CPU per
            # check than asyncio streams (no transport or stream objects).
            sock_reader = await SocketReader.connect(target)
            try:
                await sock_reader.send(_request_bytes(target))
                return await _exchange(target, sock_reader)
            finally:
                sock_reader.close()
        # Other loops (uvloop): their transports are native code and cost about
        # half of what their socket calls do.
        request = _request_bytes(target)
        _, conn = await loop.create_connection(
            lambda: ProtocolReader(request, loop), target.address, target.port
        )
        try:
            return await _exchange(target, conn)
        finally:
            conn.close()
    check = target.check
    kwargs: dict[str, object] = {"ssl": tls_context(check.verify_tls)}
    name = check.virtualhost.split(":")[0] if check.virtualhost else None
    if check.verify_tls:
        kwargs["server_hostname"] = name or target.address
    elif name and not _is_address(name):
        kwargs["server_hostname"] = name
    else:
        kwargs["server_hostname"] = None
    try:
        reader, writer = await open_stream(target, **kwargs)
    except ssl.SSLError as exc:
        return Result(False, f"TLS handshake failed: {exc.reason or exc}")
    try:
        writer.write(_request_bytes(target))
        return await _exchange(target, reader)
    finally:
        close_stream(writer)


async def _exchange(target: Target, reader: Reader) -> Result:
    check = target.check
    try:
        status, reason, headers = await _read_head(reader)
    except Malformed as exc:
        return Result(False, f"malformed answer: {exc}")
    except ValueError:
        return Result(False, "malformed answer: header line too long")
    line = f"{status} {reason}".strip()
    if not status_ok(check.expected_status, status):
        return Result(False, line)
    if target.receive is None:
        return Result(True, line)
    if check.http_method == "HEAD":
        return Result(False, f"{line}; HEAD has no body to match receive against")
    body = await _read_body(reader, headers)
    text = body.decode("utf-8", "replace")
    if _pattern(target.receive).search(text):
        return Result(True, line)
    cut = " in the first 64 KiB" if len(body) >= READ_LIMIT else ""
    return Result(False, f"{line}; receive {target.receive!r} not found{cut}")


class Reader(Protocol):
    async def readline(self) -> bytes: ...
    async def read(self, n: int) -> bytes: ...


class _Buffered:
    """readline()/read() over a buffer that `_fill` extends (sets `eof` at the end);
    `error` is what ended the connection, raised once the buffer is drained."""

    LINE_LIMIT = 16 * 1024

    def __init__(self) -> None:
        self.buffer = b""
        self.eof = False
        self.error: BaseException | None = None

    async def _fill(self) -> None:
        raise NotImplementedError

    async def readline(self) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line, self.buffer = self.buffer[: end + 1], self.buffer[end + 1 :]
                return line
            if len(self.buffer) > self.LINE_LIMIT:
                raise ValueError("line too long")
            if self.eof:
                if self.error is not None and not self.buffer:
                    raise self.error
                line, self.buffer = self.buffer, b""
                return line
            await self._fill()

    async def read(self, n: int) -> bytes:
        if not self.buffer and not self.eof:
            await self._fill()
        if not self.buffer and self.error is not None:
            raise self.error
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data


class SocketReader(_Buffered):
    """readline()/read() over a non-blocking socket and the loop's sock_* calls."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.sock = sock
        self.loop = loop

    @classmethod
    async def connect(cls, target: Target) -> SocketReader:
        loop = asyncio.get_running_loop()
        sock = socket.socket(family_of(target), socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, (target.address, target.port))
        except BaseException:
            sock.close()
            raise
        return cls(sock, loop)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    async def _fill(self) -> None:
        data = await self.loop.sock_recv(self.sock, 65536)
        if data:
            self.buffer += data
        else:
            self.eof = True

    def close(self) -> None:
        reset_on_close(self.sock)
        self.sock.close()


class ProtocolReader(_Buffered, asyncio.Protocol):
    """readline()/read() over a transport that sends ``request`` once connected."""

    def __init__(self, request: bytes, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.request = request
        self.loop = loop
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes: no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > 2 * READ_LIMIT and self.transport is not None:
            self.transport.pause_reading()  # we never read more than READ_LIMIT
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _fill(self) -> None:
        if self.eof:
            if self.error is not None:
                raise self.error
            return
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        if self.transport is not None:
            reset_on_close(self.transport.get_extra_info("socket"))
            self.transport.abort()


async def _read_head(reader: Reader) -> tuple[int, str, dict[str, str]]:
    first: bytes = await reader.readline()
    if not first:
        raise Malformed("connection closed before a status line")
    m = _STATUS_RE.match(first)
    if not m:
        raise Malformed(f"bad status line {first[:60]!r}")
    status = int(m.group(3))
    reason = (m.group(4) or b"").decode("latin-1")
    headers: dict[str, str] = {}
    total = len(first)
    for _ in range(MAX_HEADERS + 1):
        line: bytes = await reader.readline()
        total += len(line)
        if total > READ_LIMIT:
            raise Malformed("headers longer than 64 KiB")
        if line in (b"\r\n", b"\n"):
            return status, reason, headers
        if not line:
            raise Malformed("connection closed inside the headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise Malformed(f"bad header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    raise Malformed(f"more than {MAX_HEADERS} headers")


async def _read_body(reader: Reader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while len(out) < READ_LIMIT:
            size_line: bytes = await reader.readline()
            try:
                size = int(size_line.split(b";")[0].strip() or b"x", 16)
            except ValueError:
                raise Malformed(f"bad chunk size {size_line[:40]!r}") from None
            if size == 0:
                break
            want = min(size, READ_LIMIT - len(out))
            chunk: bytes = await reader.read(want)
            while len(chunk) < want:
                more: bytes = await reader.read(want - len(chunk))
                if not more:
                    break
                chunk += more
            out += chunk
            if want < size or len(chunk) < want:
                break
            await reader.readline()  # the CRLF after the chunk
        return bytes(out)
    length = headers.get("content-length")
    limit = READ_LIMIT
    if length is not None and length.isdigit():
        limit = min(limit, int(length))
    out = bytearray()
    while len(out) < limit:
        data: bytes = await reader.read(limit - len(out))
        if not data:
            break
        out += data
    return bytes(out)
