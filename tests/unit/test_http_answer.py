"""The HTTP check's verdict on an answer, from the bytes read so far."""

from __future__ import annotations

from typing import Literal

import pytest

from etcdha.probes import READ_LIMIT, Result, Target
from etcdha.probes.http import LINE_LIMIT, MAX_HEADERS, judge
from etcdha.spec import Check

CL_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"
CL_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_ANSWER = (
    CHUNKED_HEAD + b'5;ext=1\r\nhello\r\n1\r\n \r\nA;name="v"\r\nworld, bye\r\n0\r\n\r\n'
)
OPEN_ANSWER = b"HTTP/1.0 200 OK\r\nServer: test\r\n\r\nhello world"
LF_ANSWER = b"HTTP/1.1 200 OK\nContent-Length: 11\n\nhello world"
LF_CHUNKED = b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n5\nhello\n6\n world\n0\n\n"
RESET = ConnectionResetError(104, "Connection reset by peer")


def target(
    receive: str | None = None,
    *,
    method: Literal["GET", "HEAD"] = "GET",
    expected: list[int] | None = None,
) -> Target:
    check = Check(service="http", http_method=method, expected_status=expected or [])
    return Target("192.0.2.10", 80, check=check, receive=receive, request="/alive")


def first_verdict(t: Target, data: bytes) -> tuple[int | None, Result | None]:
    """Feed every prefix of ``data`` (no eof): where the verdict first came, and
    that verdict; every longer prefix must give the same one."""
    at: int | None = None
    verdict: Result | None = None
    for n in range(len(data) + 1):
        got = judge(t, data[:n], False)
        if at is None:
            if got is not None:
                at, verdict = n, got
        else:
            assert got == verdict, f"prefix of {n} bytes"
    return at, verdict


# ---------------------------------------------------------------------------
# complete answers


@pytest.mark.parametrize(
    ("receive", "expected"),
    [
        (None, Result(True, "200 OK")),
        ("hello", Result(True, "200 OK")),
        (r"lo\s+wor", Result(True, "200 OK")),
        ("^hello world$", Result(True, "200 OK")),
        ("bye", Result(False, "200 OK; receive 'bye' not found")),
        ("Content-Type", Result(False, "200 OK; receive 'Content-Type' not found")),
    ],
)
def test_complete_answer_judged_before_eof(receive: str | None, expected: Result) -> None:
    assert judge(target(receive), CL_ANSWER, False) == expected
    assert judge(target(receive), CL_ANSWER, True) == expected


def test_without_receive_up_right_after_the_head() -> None:
    t = target()
    assert judge(t, CL_HEAD[:-1], False) is None
    assert judge(t, CL_HEAD, False) == Result(True, "200 OK")
    assert judge(t, CL_HEAD + b"hel", False) == Result(True, "200 OK")
    assert judge(t, OPEN_ANSWER[: OPEN_ANSWER.index(b"\r\n\r\n") + 4], False) == Result(
        True, "200 OK"
    )


def test_with_receive_waits_for_the_whole_content_length_body() -> None:
    t = target("world")
    assert judge(t, CL_HEAD, False) is None
    assert judge(t, CL_HEAD + b"hello worl", False) is None
    assert judge(t, CL_HEAD + b"hello world", False) == Result(True, "200 OK")


def test_bytes_past_content_length_are_not_matched() -> None:
    data = CL_HEAD + b"hello world, then more"
    assert judge(target("more"), data, False) == Result(False, "200 OK; receive 'more' not found")


def test_content_length_zero_is_judged_at_once() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert judge(target("x"), data, False) == Result(False, "200 OK; receive 'x' not found")
    assert judge(target(""), data, False) == Result(True, "200 OK")


def test_status_line_without_reason() -> None:
    data = b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok"
    assert judge(target("ok"), data, False) == Result(True, "200")
    assert judge(target("no"), data, False) == Result(False, "200; receive 'no' not found")


# ---------------------------------------------------------------------------
# incremental arrival


@pytest.mark.parametrize(
    ("data", "receive", "decided_at", "expected"),
    [
        (CL_ANSWER, "world", len(CL_ANSWER), Result(True, "200 OK")),
        (CL_ANSWER, "planet", len(CL_ANSWER), Result(False, "200 OK; receive 'planet' not found")),
        (CL_ANSWER, None, CL_ANSWER.index(b"\r\n\r\n") + 4, Result(True, "200 OK")),
        # a chunked body is complete at its last (zero) chunk's size line
        (CHUNKED_ANSWER, "hello world, bye", len(CHUNKED_ANSWER) - 2, Result(True, "200 OK")),
        (
            CHUNKED_ANSWER,
            "ext|name",
            len(CHUNKED_ANSWER) - 2,
            Result(False, "200 OK; receive 'ext|name' not found"),
        ),
        (CHUNKED_ANSWER, None, len(CHUNKED_HEAD), Result(True, "200 OK")),
        (LF_ANSWER, "hello world", len(LF_ANSWER), Result(True, "200 OK")),
        (LF_CHUNKED, "^hello world$", len(LF_CHUNKED) - 1, Result(True, "200 OK")),
    ],
    ids=[
        "length-found",
        "length-missing",
        "length-no-receive",
        "chunked-found",
        "chunked-missing",
        "chunked-no-receive",
        "lf-length",
        "lf-chunked",
    ],
)
def test_every_prefix_waits_until_the_answer_is_complete(
    data: bytes, receive: str | None, decided_at: int, expected: Result
) -> None:
    t = target(receive)
    assert first_verdict(t, data) == (decided_at, expected)
    assert judge(t, data, True) == expected


@pytest.mark.parametrize(
    ("receive", "expected"),
    [
        ("world$", Result(True, "200 OK")),
        ("Server", Result(False, "200 OK; receive 'Server' not found")),
    ],
)
def test_body_without_length_is_judged_at_eof(receive: str, expected: Result) -> None:
    t = target(receive)
    assert first_verdict(t, OPEN_ANSWER) == (None, None)
    assert judge(t, OPEN_ANSWER, True) == expected


def test_chunked_body_cut_by_eof_matches_what_came() -> None:
    t = target("wor")
    cut = CHUNKED_HEAD + b"5\r\nhello\r\n6\r\n wor"
    assert judge(t, cut, False) is None
    assert judge(t, cut, True) == Result(True, "200 OK")
    assert judge(target("world"), cut, True) == Result(False, "200 OK; receive 'world' not found")


# ---------------------------------------------------------------------------
# status and method


@pytest.mark.parametrize(
    ("expected_status", "status_line", "expected"),
    [
        ([], b"HTTP/1.1 200 OK", Result(True, "200 OK")),
        ([], b"HTTP/1.0 204 No Content", Result(True, "204 No Content")),
        ([], b"HTTP/1.1 299 Odd", Result(True, "299 Odd")),
        ([], b"HTTP/1.1 199 Odd", Result(False, "199 Odd")),
        ([], b"HTTP/1.1 300 Multiple Choices", Result(False, "300 Multiple Choices")),
        ([], b"HTTP/1.1 301 Moved Permanently", Result(False, "301 Moved Permanently")),
        ([], b"HTTP/1.1 404 Not Found", Result(False, "404 Not Found")),
        ([], b"HTTP/1.1 503 Service Unavailable", Result(False, "503 Service Unavailable")),
        ([404], b"HTTP/1.1 404 Not Found", Result(True, "404 Not Found")),
        ([404], b"HTTP/1.1 200 OK", Result(False, "200 OK")),
        ([301, 302], b"HTTP/1.1 302 Found", Result(True, "302 Found")),
        ([301, 302], b"HTTP/1.1 303 See Other", Result(False, "303 See Other")),
    ],
)
def test_expected_status(expected_status: list[int], status_line: bytes, expected: Result) -> None:
    data = status_line + b"\r\nContent-Length: 0\r\n\r\n"
    assert judge(target(expected=expected_status), data, False) == expected


def test_wrong_status_is_decided_without_waiting_for_the_body() -> None:
    data = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 500\r\n\r\n"
    assert judge(target("ok"), data, False) == Result(False, "503 Service Unavailable")


@pytest.mark.parametrize(
    ("receive", "status_line", "expected"),
    [
        (
            "ok",
            b"HTTP/1.1 200 OK",
            Result(False, "200 OK; HEAD has no body to match receive against"),
        ),
        (None, b"HTTP/1.1 200 OK", Result(True, "200 OK")),
        ("ok", b"HTTP/1.1 404 Not Found", Result(False, "404 Not Found")),
    ],
)
def test_head_method(receive: str | None, status_line: bytes, expected: Result) -> None:
    data = status_line + b"\r\nContent-Length: 1234\r\n\r\n"
    assert judge(target(receive, method="HEAD"), data, False) == expected


# ---------------------------------------------------------------------------
# malformed answers


def headers(count: int) -> bytes:
    return b"".join(b"X-H%d: v\r\n" % i for i in range(count))


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "bad status line b'SSH-2.0-OpenSSH_9.6\\r\\n'"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "bad status line b'HTTP/1.1 abc OK\\r\\n'"),
        (b"HTTP/1.1  200 OK\r\n\r\n", "bad status line b'HTTP/1.1  200 OK\\r\\n'"),
        (b"x" * 100 + b"\n", "bad status line b'" + "x" * 60 + "'"),
        (
            b"HTTP/1.1 200 OK\r\nServer nginx\r\n\r\nbody",
            "bad header line b'Server nginx\\r\\n'",
        ),
        (
            b"HTTP/1.1 200 OK\r\n" + headers(MAX_HEADERS + 1) + b"\r\n",
            "more than 100 headers",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * LINE_LIMIT + b"\r\n\r\n",
            "header line too long",
        ),
        # no newline yet, but already too long: no need to wait for more
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * LINE_LIMIT, "header line too long"),
        (b"HTTP/1.1 200 " + b"a" * LINE_LIMIT + b"\r\n", "header line too long"),
        (
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-H%d: " % i + b"a" * 15000 + b"\r\n" for i in range(5))
            + b"\r\n",
            "headers longer than 64 KiB",
        ),
        (CHUNKED_HEAD + b"zz\r\nhello\r\n0\r\n\r\n", "bad chunk size b'zz\\r\\n'"),
        (CHUNKED_HEAD + b";ext\r\nhello\r\n0\r\n\r\n", "bad chunk size b';ext\\r\\n'"),
        (CHUNKED_HEAD + b"\r\nhello\r\n0\r\n\r\n", "bad chunk size b'\\r\\n'"),
        # int() would take these; a negative size once walked the parser backwards
        (CHUNKED_HEAD + b"-5\r\nhello\r\n0\r\n\r\n", "bad chunk size b'-5\\r\\n'"),
        (CHUNKED_HEAD + b"+5\r\nhello\r\n0\r\n\r\n", "bad chunk size b'+5\\r\\n'"),
        (CHUNKED_HEAD + b"0x5\r\nhello\r\n0\r\n\r\n", "bad chunk size b'0x5\\r\\n'"),
        (CHUNKED_HEAD + b"1_0\r\nhello\r\n0\r\n\r\n", "bad chunk size b'1_0\\r\\n'"),
    ],
    ids=[
        "not-http",
        "status-not-a-number",
        "two-spaces",
        "status-line-shown-cut",
        "header-without-colon",
        "too-many-headers",
        "line-too-long",
        "line-too-long-unfinished",
        "status-line-too-long",
        "headers-too-long",
        "chunk-size-not-hex",
        "chunk-size-empty-with-ext",
        "chunk-size-empty",
        "chunk-size-negative",
        "chunk-size-signed",
        "chunk-size-0x",
        "chunk-size-underscore",
    ],
)
def test_malformed_answer(data: bytes, detail: str) -> None:
    expected = Result(False, f"malformed answer: {detail}")
    t = target("hello")
    assert judge(t, data, False) == expected
    assert judge(t, data, True) == expected


def test_header_limits_are_inclusive() -> None:
    t = target("ok")
    many = b"HTTP/1.1 200 OK\r\n" + headers(MAX_HEADERS - 1) + b"Content-Length: 2\r\n\r\nok"
    assert judge(t, many, False) == Result(True, "200 OK")
    # a line of exactly LINE_LIMIT bytes before its newline is accepted
    line = b"X-Big: " + b"a" * (LINE_LIMIT - len(b"X-Big: ") - 1) + b"\r\n"
    long_line = b"HTTP/1.1 200 OK\r\n" + line + b"Content-Length: 2\r\n\r\nok"
    assert judge(t, long_line, False) == Result(True, "200 OK")


def test_bad_chunk_size_does_not_matter_without_receive() -> None:
    data = CHUNKED_HEAD + b"zz\r\nhello\r\n0\r\n\r\n"
    assert judge(target(), data, True) == Result(True, "200 OK")


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"", "connection closed before a status line"),
        (b"HTTP/1.1 200 OK", "bad status line b'HTTP/1.1 200 OK'"),
        (b"HTTP/1.1 200 OK\r\nServer: x\r\n", "connection closed inside the headers"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5", "connection closed inside the headers"),
        (b"HTTP/1.1 200 OK\r\nServer: x\r\n\r", "connection closed inside the headers"),
    ],
    ids=["empty", "status-line-unfinished", "after-a-header", "inside-a-header", "cut-blank"],
)
def test_closed_too_early(data: bytes, detail: str) -> None:
    for receive in (None, "x"):
        t = target(receive)
        assert judge(t, data, False) is None
        assert judge(t, data, True) == Result(False, f"malformed answer: {detail}")


@pytest.mark.parametrize(
    "data",
    [b"", b"HTTP/1.1 2", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nServer: x\r\n"],
    ids=["nothing", "partial-status-line", "status-line-only", "inside-headers"],
)
@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (RESET, "connection reset by peer"),
        (BrokenPipeError(32, "Broken pipe"), "broken pipe"),
        (TimeoutError(), "timed out"),
    ],
    ids=["reset", "pipe", "timeout"],
)
def test_error_before_the_head_is_the_detail(data: bytes, error: OSError, detail: str) -> None:
    assert judge(target(), data, True, error) == Result(False, detail)


def test_error_after_a_complete_answer_is_ignored() -> None:
    assert judge(target("world"), CL_ANSWER, True, RESET) == Result(True, "200 OK")
    assert judge(target(expected=[201]), CL_ANSWER, True, RESET) == Result(False, "200 OK")


# ---------------------------------------------------------------------------
# body limits


def length_answer(body: bytes) -> tuple[bytes, int]:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    return head + body, len(head)


def chunked_answer(body: bytes, size: int) -> tuple[bytes, int]:
    """The body in chunks of ``size`` bytes, and where the first 64 KiB of it end."""
    out = bytearray(CHUNKED_HEAD)
    limit_at = 0
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        out += b"%x\r\n" % len(piece)
        if start <= READ_LIMIT <= start + len(piece):
            limit_at = len(out) + READ_LIMIT - start
        out += piece + b"\r\n"
    return bytes(out + b"0\r\n\r\n"), limit_at


BIG = b"a" * (READ_LIMIT + 10_000)


def place(needle: bytes, at: int) -> bytes:
    return BIG[:at] + needle + BIG[at + len(needle) :]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (place(b"needle", 100), Result(True, "200 OK")),
        (place(b"needle", READ_LIMIT - 6), Result(True, "200 OK")),
        (
            place(b"needle", READ_LIMIT - 3),
            Result(False, "200 OK; receive 'needle' not found in the first 64 KiB"),
        ),
        (
            place(b"needle", READ_LIMIT + 500),
            Result(False, "200 OK; receive 'needle' not found in the first 64 KiB"),
        ),
    ],
    ids=["early", "ends-at-limit", "straddles-limit", "after-limit"],
)
def test_large_bodies_are_judged_on_their_first_64_kib(body: bytes, expected: Result) -> None:
    t = target("needle")
    data, head = length_answer(body)
    assert judge(t, data[: head + READ_LIMIT - 1], False) is None
    assert judge(t, data[: head + READ_LIMIT], False) == expected
    assert judge(t, data, True) == expected

    for size in (20_000, READ_LIMIT + 5_000):
        data, limit_at = chunked_answer(body, size)
        assert judge(t, data[: limit_at - 1], False) is None
        assert judge(t, data[:limit_at], False) == expected
        assert judge(t, data, True) == expected

    open_head = b"HTTP/1.0 200 OK\r\n\r\n"
    data = open_head + body
    assert judge(t, data[: len(open_head) + READ_LIMIT - 1], False) is None
    assert judge(t, data[: len(open_head) + READ_LIMIT], False) == expected


def test_small_body_not_found_does_not_mention_the_limit() -> None:
    data, _ = length_answer(b"a" * (READ_LIMIT - 1))
    assert judge(target("b"), data, False) == Result(False, "200 OK; receive 'b' not found")
