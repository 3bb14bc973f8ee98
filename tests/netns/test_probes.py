"""Every probe against real servers: up, down, recovery; garbage never stalls the checker.

Most servers listen on loopback. ICMP cases (ping, port and host unreachable,
connect timeouts) run in two namespaces of their own on a bridge: the test's
thread enters the "real" namespace to open the servers' sockets there, and the
"client" namespace to probe (sockets stay in the namespace they were made in).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pyroute2 import netns

from etcdha import probes
from etcdha.checker import Checker, Job, RealState, jobs_from_spec
from etcdha.keyspace import Keyspace
from etcdha.lab.netns import Topology
from etcdha.lab.realservers import HTTPBehaviour, start_dns, start_http, start_line_server
from etcdha.probes import Result, Target
from etcdha.procs import pid_running
from etcdha.spec import Check, ClusterSpec
from etcdha.store import EtcdSettings, Store

pytestmark = pytest.mark.netns

LO = "127.0.0.1"


def target(port: int, address: str = LO, **kw: object) -> Target:
    check = kw.pop("check", None) or Check()
    return Target(address, port, check=check, timeout=kw.pop("timeout", 1.0), **kw)  # type: ignore[arg-type]


def job(failure_count: int = 1, rise_count: int = 1) -> Job:
    spec = ClusterSpec.model_validate(
        {
            "nodes": ["n1"],
            "virtual_services": [
                {
                    "address": "192.0.2.200:8080",
                    "check": {"failure_count": failure_count, "rise_count": rise_count},
                    "reals": [{"address": "192.0.2.12:8080"}],
                }
            ],
        }
    )
    return next(iter(jobs_from_spec(spec, Path("/nonexistent")).values()))


class Verdicts:
    """ldirectord's counters fed with real probe results: a trail of verdicts."""

    def __init__(self, failure_count: int = 1, rise_count: int = 1) -> None:
        self.state = RealState(job(failure_count, rise_count))
        self.trail: list[str | None] = []

    async def check(self, name: str, t: Target) -> Result:
        result = await probes.run(name, t)
        self.state.observe(name, result)
        self.trail.append(self.state.state)
        return result


# ---------------------------------------------------------------------------
# http and https


async def test_http_up_down_recovery_with_counts() -> None:
    b = HTTPBehaviour(body=b"<p>ok</p>")
    srv = await start_http(behaviour=b)
    try:
        t = target(srv.ports[0], check=Check(service="http"), receive="ok", request="/test.html")
        v = Verdicts(failure_count=2, rise_count=2)
        assert (await v.check("http", t)).detail == "200 OK"
        b.status = 503
        r = await v.check("http", t)
        assert not r.ok and r.detail == "503 Unavailable"
        assert v.trail == ["up", "up"]  # one failure is not enough
        await v.check("http", t)
        assert v.trail[-1] == "down"
        b.status, b.body = 200, b"sorry"
        r = await v.check("http", t)
        assert not r.ok and "receive 'ok' not found" in r.detail
        b.body = b"all ok"
        await v.check("http", t)
        assert v.trail[-1] == "down"  # rising: one success of two
        await v.check("http", t)
        assert v.trail == ["up", "up", "down", "down", "down", "up"]
        assert b.hosts[-1] == LO  # Host: the real's address, as ldirectord
    finally:
        await srv.close()


async def test_http_options_and_refused() -> None:
    b = HTTPBehaviour(status=404, body=b"x" * 10 + b"needle", mode="chunked")
    srv = await start_http(behaviour=b)
    try:
        check = Check(
            service="http", expected_status=[404], virtualhost="www.example.org", http_method="GET"
        )
        r = await probes.run("http", target(srv.ports[0], check=check, receive="need+le"))
        assert r.ok, r
        assert b.hosts[-1] == "www.example.org"
        head = Check(service="http", http_method="HEAD")
        assert (await probes.run("http", target(srv.ports[0], check=head))).ok is False  # 404
        b.status = 200
        assert (await probes.run("http", target(srv.ports[0], check=head))).ok
        port = srv.ports[0]
    finally:
        await srv.close()
    r = await probes.run("http", target(port, check=Check(service="http")))
    assert (r.ok, r.detail) == (False, "connection refused")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
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
    return cert, key


async def test_https_unverified_by_default_sni_and_handshake_failures(
    tls_files: tuple[Path, Path],
) -> None:
    cert, key = tls_files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    names: list[str | None] = []
    ctx.sni_callback = lambda _obj, name, _ctx: names.append(name)
    b = HTTPBehaviour(body=b"secure ok")
    srv = await start_http(behaviour=b, tls=ctx)
    plain, _ = await start_line_server(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    try:
        port = srv.ports[0]
        v = Verdicts()
        r = await v.check("https", target(port, check=Check(service="https"), receive="ok"))
        assert r.ok, r
        vhost = Check(service="https", virtualhost="www.example.org")
        assert (await probes.run("https", target(port, check=vhost))).ok
        assert names[-1] == "www.example.org" and b.hosts[-1] == "www.example.org"
        # A self-signed certificate fails verification when asked for.
        strict = Check(service="https", virtualhost="www.example.org", verify_tls=True)
        r = await v.check("https", target(port, check=strict))
        assert not r.ok and r.detail.startswith("TLS handshake failed"), r
        assert "CERTIFICATE_VERIFY_FAILED" in r.detail
        # A server that does not speak TLS at all.
        plain_port = plain.sockets[0].getsockname()[1]
        r = await v.check("https", target(plain_port, check=Check(service="https")))
        assert not r.ok and r.detail.startswith("TLS handshake failed"), r
        assert v.trail == ["up", "down", "down"]
        await v.check("https", target(port, check=Check(service="https")))
        assert v.trail[-1] == "up"
    finally:
        await srv.close()
        plain.close()
        await plain.wait_closed()


# ---------------------------------------------------------------------------
# garbage: never a crash, never a stall


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
async def test_http_garbage_is_down_within_the_timeout(mode: str, expect: str, most: float) -> None:
    b = HTTPBehaviour(mode=mode, huge_size=10 * 1024 * 1024)
    srv = await start_http(behaviour=b)
    try:
        t = target(srv.ports[0], check=Check(service="http"), receive="never", timeout=1.5)
        started = time.monotonic()
        r = await probes.run("http", t)
        took = time.monotonic() - started
        assert not r.ok and expect in r.detail, r
        assert took < most, took
    finally:
        await srv.close()


async def test_garbage_servers_never_delay_other_checks() -> None:
    """20 healthy reals at 200 ms and 5 hostile ones (binary, 10 MB, one byte a second,
    silent, closing): the healthy reals keep their schedule."""
    good = await start_http(ports=[0] * 20)
    bad = [await start_http(behaviour=HTTPBehaviour(mode=m)) for m in
           ("garbage", "huge", "slow", "silent", "close")]  # fmt: skip
    try:
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
        store = Store(EtcdSettings())  # never opened: lease 0 means nothing is published
        checker = Checker(store, Keyspace(), "n1", lambda: spec, lambda: 0)
        task = asyncio.create_task(checker.run())
        try:
            await asyncio.sleep(4.0)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        slips = checker.slip_percentiles()
        assert slips["p99"] < 0.05, slips
        states = {rk[1]: st for rk, st in checker.states.items()}
        for p in good.ports:
            st = states[f"127.0.0.1-{p}"]
            assert st.state == "up" and 15 <= st.checks <= 22, (p, st.checks)
        for s in bad:
            st = states[f"127.0.0.1-{s.ports[0]}"]
            assert st.state == "down", (s.behaviour.mode, st.detail)
    finally:
        await good.close()
        for s in bad:
            await s.close()


# ---------------------------------------------------------------------------
# tcp send/expect, dns, connect, on/off/none


async def test_tcp_send_expect() -> None:
    srv, seen = await start_line_server(b"220 ready\r\n+PONG\r\n")
    port = srv.sockets[0].getsockname()[1]
    try:
        v = Verdicts()
        r = await v.check("tcp", target(port, request="PING\r\n", receive=r"^\+PONG"))
        assert r.ok and seen[-1] == b"PING\r\n"
        r = await v.check("tcp", target(port, request="PING\r\n", receive="NOPE"))
        assert not r.ok and "not found" in r.detail
        await v.check("tcp", target(port, request="PING\r\n"))  # any answer passes
        assert v.trail == ["up", "down", "up"]
    finally:
        srv.close()
        await srv.wait_closed()
    assert not (await probes.run("tcp", target(port, request="x"))).ok


async def test_dns_answers_nxdomain_garbage_and_tcp() -> None:
    srv = await start_dns(
        records={("www.example.org", "A"): ["192.0.2.7"], ("txt.example.org", "TXT"): ["v=ok"]}
    )
    try:
        check = Check(service="dns")
        t = target(srv.port, check=check, protocol="udp", request="www.example.org")
        v = Verdicts()
        assert (await v.check("dns", replace(t, receive=r"^192\.0\.2\.7$"))).ok
        r = await v.check("dns", replace(t, request="nope.example.org"))
        assert (r.ok, r.detail) == (False, "NXDOMAIN")
        r = await v.check("dns", replace(t, receive="192.0.2.8"))
        assert not r.ok and "no answer matches" in r.detail
        txt = Check(service="dns", dns_type="TXT")
        txt_target = target(
            srv.port, check=txt, protocol="udp", request="txt.example.org", receive="v=ok"
        )
        r = await v.check("dns", txt_target)
        assert r.ok, r
        assert (await probes.run("dns", replace(t, protocol="tcp"))).ok
        srv.mode = "garbage"  # garbage is ignored; the probe waits for a real answer
        r = await v.check("dns", replace(t, timeout=0.5))
        assert not r.ok and "timed out" in r.detail
        srv.mode = "servfail"
        assert (await probes.run("dns", t)).detail == "SERVFAIL"
        srv.mode = "normal"
        await v.check("dns", t)
        assert v.trail == ["up", "down", "down", "up", "down", "up"]
    finally:
        await srv.close()


async def test_static_probes() -> None:
    t = target(1)
    assert (await probes.run("on", t)).ok
    assert not (await probes.run("off", t)).ok
    assert (await probes.run("none", t)).ok
    with pytest.raises(KeyError):
        probes.get("telnet")


# ---------------------------------------------------------------------------
# external checks


def script(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def checks_dir(tmp_path: Path) -> Path:
    script(tmp_path, "ok", 'echo "OK - $1 $2 $3 $4 login=$ETCDHA_CHECK_LOGIN"\nexit 0\n')
    script(tmp_path, "crit", 'echo "CRITICAL - broken"\nexit 2\n')
    script(tmp_path, "seven", "exit 7\n")
    script(tmp_path, "flag", '[ -e "$ETCDHA_CHECK_REQUEST" ] && exit 0\nexit 2\n')
    script(
        tmp_path,
        "hang",
        f"sleep 300 &\necho $! > {tmp_path}/child\necho $$ > {tmp_path}/parent\nsleep 300\n",
    )
    # Exit 0 only if the script's own effective and bounding sets lack
    # CAP_NET_ADMIN (12) and CAP_NET_RAW (13).
    script(
        tmp_path,
        "caps",
        "rc=0\n"
        "while read -r k v; do\n"
        '  case "$k" in CapEff:|CapBnd:)\n'
        '    echo "$k $v"\n'
        "    [ $(( (0x$v >> 12) & 3 )) -eq 0 ] || rc=1;;\n"
        "  esac\n"
        "done < /proc/self/status\n"
        "exit $rc\n",
    )
    return tmp_path


def ext(checks_dir: Path, command: str, **check: object) -> Target:
    c = Check(type="external", command=command, **check)
    return Target(
        "192.0.2.12",
        80,
        check=c,
        timeout=1.0,
        virtual_address="192.0.2.200",
        virtual_port=80,
        real_port=80,
        checks_dir=checks_dir,
    )


async def test_external_exit_codes_arguments_and_recovery(checks_dir: Path) -> None:
    v = Verdicts(failure_count=1, rise_count=1)
    r = await v.check("external", ext(checks_dir, "ok", login="monitor"))
    assert r.ok
    assert r.detail == "ok exit 0: OK - 192.0.2.200 80 192.0.2.12 80 login=monitor"
    r = await v.check("external", ext(checks_dir, "crit"))
    assert (r.ok, r.detail) == (False, "crit exit 2: CRITICAL - broken")
    flag = checks_dir / "flag-file"
    r = await v.check("external", replace(ext(checks_dir, "flag"), request=str(flag)))
    assert not r.ok
    flag.touch()
    r = await v.check("external", replace(ext(checks_dir, "flag"), request=str(flag)))
    assert r.ok
    assert v.trail == ["up", "down", "down", "up"]
    missing = await probes.run("external", ext(checks_dir, "nosuch"))
    assert not missing.ok and "no executable check 'nosuch'" in missing.detail


async def test_external_dynamic_weight(checks_dir: Path) -> None:
    assert not (await probes.run("external", ext(checks_dir, "seven"))).ok
    r = await probes.run("external", ext(checks_dir, "seven", dynamic_weight=True))
    assert (r.ok, r.weight) == (True, 5)
    r = await probes.run("external", ext(checks_dir, "crit", dynamic_weight=True))
    assert (r.ok, r.weight) == (True, 0)
    st = RealState(job().__class__(**{**job().__dict__, "dynamic": True}))
    assert st.observe("external", r) and st.weight == 0
    assert st.observe("external", Result(True, "", weight=3)) and st.desired_weight() == 3
    assert not st.observe("external", Result(True, "", weight=3))  # no change, no write


async def test_external_hang_kills_the_whole_group(checks_dir: Path) -> None:
    started = time.monotonic()
    r = await probes.run("external", ext(checks_dir, "hang"))
    assert not r.ok and "killed after 1s" in r.detail, r
    assert time.monotonic() - started < 1.5
    pids = [int((checks_dir / n).read_text()) for n in ("parent", "child")]
    deadline = time.monotonic() + 2
    while any(pid_running(p) for p in pids):
        assert time.monotonic() < deadline, f"left running: {pids}"
        await asyncio.sleep(0.05)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hold the capabilities to drop")
async def test_external_runs_without_network_capabilities(checks_dir: Path) -> None:
    r = await probes.run("external", ext(checks_dir, "caps"))
    assert r.ok, r


# ---------------------------------------------------------------------------
# ICMP: ping, unreachable hosts and ports, connect timeouts (namespaces)


@pytest.fixture(scope="module")
def pair() -> Iterator[Topology]:
    with Topology() as topo:
        for name, last in (("client", 1), ("real", 2)):
            topo.connect(name, "eth0", "br0")
            topo.add_address(name, "eth0", f"192.0.2.{last}/24")
            topo.add_address(name, "eth0", f"2001:db8::{last}/64", nodad=True)
            topo.sysctl(name, "net.ipv4.icmp_ratelimit", 0)
            topo.sysctl(name, "net.ipv6.icmp.ratelimit", 0)
        topo.exec("client", "ip", "route", "add", "unreachable", "198.51.100.0/24")
        yield topo


@contextlib.contextmanager
def inside(topo: Topology, name: str) -> Iterator[None]:
    netns.pushns(topo.ns(name))
    try:
        yield
    finally:
        netns.popns()


@contextlib.asynccontextmanager
async def udp_echo(topo: Topology, port: int) -> AsyncIterator[None]:
    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            self.transport.sendto(data or b"!", addr)  # type: ignore[attr-defined]

    with inside(topo, "real"):
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Echo, local_addr=("192.0.2.2", port)
        )
    try:
        yield
    finally:
        transport.close()


async def test_ping_up_down_and_unreachable(pair: Topology) -> None:
    v = Verdicts()
    with inside(pair, "client"):
        assert (await v.check("ping", target(0, "192.0.2.2"))).ok
        assert (await v.check("ping", target(0, "2001:db8::2"))).ok
        r = await v.check("ping", target(0, "192.0.2.3", timeout=0.5))  # nobody there
        assert not r.ok and "no echo reply" in r.detail
        started = time.monotonic()
        r = await v.check("ping", target(0, "198.51.100.1"))  # ICMP host unreachable
        assert not r.ok and time.monotonic() - started < 0.5
        await v.check("ping", target(0, "192.0.2.2"))
    assert v.trail == ["up", "up", "down", "down", "up"]


async def test_connect_tcp_timeout_and_no_route(pair: Topology) -> None:
    with inside(pair, "real"):
        srv = await start_http("192.0.2.2")
    try:
        with inside(pair, "client"):
            assert (await probes.run("connect", target(srv.ports[0], "192.0.2.2"))).ok
            r = await probes.run("connect", target(80, "192.0.2.3", timeout=0.5))
            assert (r.ok, r.detail) == (False, "timed out after 0.5s")
            r = await probes.run("connect", target(80, "198.51.100.1"))
            assert (r.ok, r.detail) == (False, "no route to host")
    finally:
        await srv.close()


async def test_connect_udp_port_unreachable_and_recovery(pair: Topology) -> None:
    v = Verdicts()
    with inside(pair, "client"):
        r = await v.check("connect", target(5353, "192.0.2.2", protocol="udp"))
        assert (r.ok, r.detail) == (False, "ICMP port unreachable")
        async with udp_echo(pair, 5353):
            r = await v.check("connect", target(5353, "192.0.2.2", protocol="udp", request="hi"))
            assert (r.ok, r.detail) == (True, "answered")
        r = await v.check("connect", target(5353, "192.0.2.2", protocol="udp"))
        assert not r.ok
    assert v.trail == ["down", "up", "down"]
