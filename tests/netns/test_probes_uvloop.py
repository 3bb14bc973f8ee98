"""The HTTP probe on uvloop's event loop (the checker worker's loop when uvloop is
installed), where plain HTTP goes through a protocol instead of socket calls:
the same verdicts and the same bounds on hostile servers as on the standard loop.

The servers run on a standard loop in a thread of their own (they are written
for asyncio's transports); the probes and the checker run on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from etcdha import probes
from etcdha.checker import Checker
from etcdha.keyspace import Keyspace
from etcdha.lab.realservers import HTTPBehaviour, HTTPServers, start_http, start_line_server
from etcdha.probes import Target
from etcdha.spec import Check, ClusterSpec
from etcdha.store import EtcdSettings, Store

uvloop = pytest.importorskip("uvloop")

pytestmark = pytest.mark.netns

LO = "127.0.0.1"
T = TypeVar("T")


class ServerThread:
    """A standard asyncio loop in a thread, for the test's servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def http(
        self,
        behaviour: HTTPBehaviour | None = None,
        count: int = 1,
        tls: ssl.SSLContext | None = None,
    ) -> HTTPServers:
        return self.call(start_http(ports=[0] * count, behaviour=behaviour, tls=tls))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def servers() -> Iterator[ServerThread]:
    st = ServerThread()
    opened: list[HTTPServers] = []
    original = st.http

    def tracked(
        behaviour: HTTPBehaviour | None = None, count: int = 1, tls: ssl.SSLContext | None = None
    ) -> HTTPServers:
        srv = original(behaviour, count, tls)
        opened.append(srv)
        return srv

    st.http = tracked  # type: ignore[method-assign]
    try:
        yield st
    finally:
        for srv in opened:
            st.call(srv.close())
        st.close()


def on_uvloop(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert "uvloop" in type(runner.get_loop()).__module__
        return runner.run(coro)


def target(port: int, **kw: Any) -> Target:
    check = kw.pop("check", None) or Check(service="http")
    return Target(LO, port, check=check, timeout=kw.pop("timeout", 1.0), **kw)


def test_http_verdicts_on_uvloop(servers: ServerThread) -> None:
    b = HTTPBehaviour(body=b"<p>ok</p>")
    port = servers.http(b).ports[0]

    async def run() -> None:
        t = target(port, receive="ok", request="/test.html")
        assert (await probes.run("http", t)).detail == "200 OK"
        b.status = 503
        r = await probes.run("http", t)
        assert (r.ok, r.detail) == (False, "503 Unavailable")
        b.status, b.body = 200, b"sorry"
        r = await probes.run("http", t)
        assert not r.ok and "receive 'ok' not found" in r.detail
        b.body = b"all ok"
        assert (await probes.run("http", t)).ok
        assert b.hosts[-1] == LO

        b.status, b.body, b.mode = 404, b"x" * 10 + b"needle", "chunked"
        check = Check(service="http", expected_status=[404], virtualhost="www.example.org")
        r = await probes.run("http", target(port, check=check, receive="need+le"))
        assert r.ok, r
        assert b.hosts[-1] == "www.example.org"
        head = Check(service="http", http_method="HEAD")
        assert not (await probes.run("http", target(port, check=head))).ok  # 404

    on_uvloop(run())


def test_refused_on_uvloop(servers: ServerThread) -> None:
    srv = servers.http()
    port = srv.ports[0]
    servers.call(srv.close())
    r = on_uvloop(probes.run("http", target(port)))
    assert (r.ok, r.detail) == (False, "connection refused")


@pytest.mark.parametrize(
    ("mode", "expect", "most"),
    [
        ("garbage", "malformed answer", 0.5),
        ("huge", "not found in the first 64 KiB", 0.5),
        ("slow", "timed out after 1.5s", 1.7),
        ("silent", "timed out after 1.5s", 1.7),
        ("close", "connection closed before a status line", 0.5),
    ],
)
def test_http_garbage_on_uvloop(servers: ServerThread, mode: str, expect: str, most: float) -> None:
    port = servers.http(HTTPBehaviour(mode=mode, huge_size=10 * 1024 * 1024)).ports[0]
    started = time.monotonic()
    r = on_uvloop(probes.run("http", target(port, receive="never", timeout=1.5)))
    took = time.monotonic() - started
    assert not r.ok and expect in r.detail, r
    assert took < most, took


def test_garbage_servers_never_delay_other_checks_on_uvloop(servers: ServerThread) -> None:
    good = servers.http(count=20)
    bad = [
        servers.http(HTTPBehaviour(mode=m)) for m in ("garbage", "huge", "slow", "silent", "close")
    ]
    reals = [*good.ports, *(s.ports[0] for s in bad)]
    spec = ClusterSpec.model_validate(
        {
            "nodes": ["n1"],
            "virtual_services": [
                {
                    "address": "192.0.2.200:80",
                    "check": {"interval": "200ms", "timeout": "2s", "receive": "ok"},
                    "reals": [{"address": f"{LO}:{p}"} for p in reals],
                }
            ],
        }
    )

    async def run() -> Checker:
        checker = Checker(Store(EtcdSettings()), Keyspace(), "n1", lambda: spec, lambda: 0)
        task = asyncio.create_task(checker.run())
        try:
            await asyncio.sleep(4.0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return checker

    checker = on_uvloop(run())
    assert checker.slip_percentiles()["p99"] < 0.05, checker.slip_percentiles()
    states = {rk[1]: st for rk, st in checker.states.items()}
    for p in good.ports:
        st = states[f"127.0.0.1-{p}"]
        assert st.state == "up" and 15 <= st.checks <= 22, (p, st.checks)
    for s in bad:
        st = states[f"127.0.0.1-{s.ports[0]}"]
        assert st.state == "down", (s.behaviour.mode, st.detail)


def test_https_on_uvloop(servers: ServerThread, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec"),
            *("-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"),
            *("-subj", "/CN=www.example.org", "-addext", "subjectAltName=DNS:www.example.org"),
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    b = HTTPBehaviour(body=b"secure ok")
    port = servers.http(b, tls=ctx).ports[0]
    plain_server, _ = servers.call(start_line_server(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    plain = plain_server.sockets[0].getsockname()[1]

    async def run() -> None:
        r = await probes.run("https", target(port, check=Check(service="https"), receive="ok"))
        assert r.ok, r
        vhost = Check(service="https", virtualhost="www.example.org")
        assert (await probes.run("https", target(port, check=vhost))).ok
        assert b.hosts[-1] == "www.example.org"
        strict = Check(service="https", virtualhost="www.example.org", verify_tls=True)
        r = await probes.run("https", target(port, check=strict))
        assert not r.ok and "CERTIFICATE_VERIFY_FAILED" in r.detail, r
        # A server that answers plain HTTP to a TLS hello.
        r = await probes.run("https", target(plain, check=Check(service="https")))
        assert not r.ok and r.detail.startswith("TLS handshake failed"), r

    try:
        on_uvloop(run())
    finally:
        servers.loop.call_soon_threadsafe(plain_server.close)
