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
* Plain HTTP runs on the probe engine (:mod:`etcdha.probes._engine`), https on
  asyncio's TLS streams; both judge the answer with :func:`judge` as it comes
  in, so a verdict never waits for more than it needs.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from functools import cache

from etcdha.probes import (
    READ_LIMIT,
    Cancellable,
    Result,
    Target,
    describe_error,
    register,
    register_direct,
)
from etcdha.probes._engine import BUFFER_LIMIT, Done, Parse, ProbeEngine, exchange
from etcdha.probes._net import close_stream, open_stream

MAX_HEADERS = 100
LINE_LIMIT = 16 * 1024
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
_STATUS_RE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: ([^\r\n]*))?\r?\n\Z")


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


@register_direct("http")
def http_direct(engine: ProbeEngine, target: Target, done: Done) -> Cancellable | None:
    prepared = target.memo.get("http")
    if prepared is None:
        prepared = target.memo["http"] = (request_bytes(target), answer_parser(target))
    return engine.start(target, prepared[0], prepared[1], done)


@register("http")
async def http(target: Target) -> Result:
    return await _request(target, tls=False)


@register("https")
async def https(target: Target) -> Result:
    return await _request(target, tls=True)


def request_bytes(target: Target) -> bytes:
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
        return await exchange(target, request_bytes(target), answer_parser(target))
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
        writer.write(request_bytes(target))
        parse = answer_parser(target)
        data = b""
        while True:
            error: OSError | None = None
            try:
                chunk = await reader.read(65536)
            except OSError as exc:
                chunk, error = b"", exc
            data += chunk
            eof = not chunk or len(data) >= BUFFER_LIMIT
            result = parse(data, eof, error)
            if result is not None:
                return result
            if eof:
                return Result(False, describe_error(error) if error else "connection closed")
    finally:
        close_stream(writer)


# ---------------------------------------------------------------------------
# judging an answer from what has been read so far


class Malformed(Exception):
    pass


def answer_parser(target: Target) -> Parse:
    """``parse(data, eof, error)`` for this target: its verdict, or None for "read more"."""

    def parse(data: bytes, eof: bool, error: OSError | None) -> Result | None:
        return judge(target, data, eof, error)

    return parse


def judge(target: Target, data: bytes, eof: bool, error: OSError | None = None) -> Result | None:
    """The verdict on an answer of which ``data`` has come (all of it when ``eof``)."""
    check = target.check
    try:
        head = _head(data, eof)
        if head is None:
            return None
        status, reason, headers, body_at = head
        line = f"{status} {reason}".strip()
        if not status_ok(check.expected_status, status):
            return Result(False, line)
        if target.receive is None:
            return Result(True, line)
        if check.http_method == "HEAD":
            return Result(False, f"{line}; HEAD has no body to match receive against")
        body = _body(data, body_at, headers, eof)
    except Malformed as exc:
        if eof and error is not None:
            return Result(False, describe_error(error))
        return Result(False, f"malformed answer: {exc}")
    if body is None:
        return None
    text = body.decode("utf-8", "replace")
    if _pattern(target.receive).search(text):
        return Result(True, line)
    cut = " in the first 64 KiB" if len(body) >= READ_LIMIT else ""
    return Result(False, f"{line}; receive {target.receive!r} not found{cut}")


def _lines(data: bytes, at: int, eof: bool) -> tuple[bytes, int] | None:
    """The line starting at ``at`` (with its newline) and where the next starts;
    at the end of the stream the rest, possibly empty; None: not all here yet."""
    end = data.find(b"\n", at)
    if end >= 0:
        if end - at > LINE_LIMIT:
            raise Malformed("header line too long")
        return data[at : end + 1], end + 1
    if len(data) - at > LINE_LIMIT:
        raise Malformed("header line too long")
    if eof:
        return data[at:], len(data)
    return None


def _head(data: bytes, eof: bool) -> tuple[int, str, dict[str, str], int] | None:
    """(status, reason, headers, where the body starts), None until all of it came."""
    got = _lines(data, 0, eof)
    if got is None:
        return None
    first, at = got
    if not first:
        raise Malformed("connection closed before a status line")
    m = _STATUS_RE.match(first)
    if not m:
        raise Malformed(f"bad status line {first[:60]!r}")
    status = int(m.group(3))
    reason = (m.group(4) or b"").decode("latin-1")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        got = _lines(data, at, eof)
        if got is None:
            return None
        line, at = got
        if at > READ_LIMIT:
            raise Malformed("headers longer than 64 KiB")
        if line in (b"\r\n", b"\n"):
            return status, reason, headers, at
        if not line.endswith(b"\n"):  # nothing more, or a line cut by the close
            raise Malformed("connection closed inside the headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise Malformed(f"bad header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    raise Malformed(f"more than {MAX_HEADERS} headers")


def _body(data: bytes, at: int, headers: dict[str, str], eof: bool) -> bytes | None:
    """The body to match (at most READ_LIMIT bytes), None until enough of it came."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return _chunked(data, at, eof)
    length = headers.get("content-length")
    limit = READ_LIMIT
    if length is not None and length.isdigit():
        limit = min(limit, int(length))
    if len(data) - at >= limit or eof:
        return data[at : at + limit]
    return None


def _chunked(data: bytes, at: int, eof: bool) -> bytes | None:
    out = bytearray()
    while len(out) < READ_LIMIT:
        got = _lines(data, at, eof)
        if got is None:
            return None
        size_line, at = got
        if not size_line and eof:
            break  # closed before the last chunk: match what came
        digits = size_line.split(b";")[0].strip()
        if not _CHUNK_SIZE.match(digits):  # int() would take "-5", "0x5", "1_0"
            raise Malformed(f"bad chunk size {size_line[:40]!r}")
        size = int(digits, 16)
        if size == 0:
            break
        want = min(size, READ_LIMIT - len(out))
        if len(data) - at < want and not eof:
            return None
        out += data[at : at + want]
        at += want
        if want < size or len(data) < at:
            break
        got = _lines(data, at, eof)  # the CRLF after the chunk
        if got is None:
            return None
        at = got[1]
    return bytes(out)
