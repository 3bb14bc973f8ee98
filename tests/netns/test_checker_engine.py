"""The checker's direct probes (plain HTTP, tcp, connect on the probe engine)
against real servers on loopback: withdrawn checks drop their connection at once,
the concurrency bound holds, per-check metrics reach /metrics, IPv6 works, and a
check leaves no reference cycle behind (garbage the collector would have to
find, in pauses that show as schedule slip)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import subprocess
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from prometheus_client import generate_latest

from etcdha.checker import Checker, loop_factory
from etcdha.keyspace import Keyspace
from etcdha.lab.realservers import HTTPBehaviour, start_http
from etcdha.metrics import REGISTRY
from etcdha.spec import ClusterSpec
from etcdha.store import EtcdSettings, Store

pytestmark = pytest.mark.netns

T = TypeVar("T")
LO = "127.0.0.1"


def spec_of(reals: list[str], **check: object) -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "nodes": ["n1"],
            "virtual_services": [
                {
                    "address": "192.0.2.200:80",
                    "check": {"interval": "200ms", "timeout": "1s", **check},
                    "reals": [{"address": r} for r in reals],
                }
            ],
        }
    )


def new_checker(spec: ClusterSpec, **kw: Any) -> Checker:
    # The store is never opened: lease 0 means nothing is published.
    return Checker(Store(EtcdSettings()), Keyspace(), "n1", lambda: spec, lambda: 0, **kw)


@contextlib.asynccontextmanager
async def running(checker: Checker) -> Any:
    task = asyncio.create_task(checker.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(condition: Callable[[], bool], within: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not condition():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.01)
    return True


def on_each_loop(coro: Callable[[], Coroutine[Any, Any, T]]) -> list[T]:
    """Run on the standard loop, then on uvloop when it is installed."""
    factories = [None, loop_factory()] if loop_factory() is not None else [None]
    out = []
    for factory in factories:
        with asyncio.Runner(loop_factory=factory) as runner:
            out.append(runner.run(coro()))
    return out


def test_a_withdrawn_check_drops_its_connection_at_once() -> None:
    async def run() -> None:
        silent = await start_http(behaviour=HTTPBehaviour(mode="silent"))
        good = await start_http()
        try:
            reals = [f"{LO}:{silent.ports[0]}", f"{LO}:{good.ports[0]}"]
            checker = new_checker(spec_of(reals, timeout="10s"))
            async with running(checker):
                assert await wait_for(lambda: len(silent.connections) == 1, 2.0)
                checker.update(spec_of(reals[1:], timeout="10s"))
                # The hanging check's socket is closed now, not at its 10 s timeout.
                assert await wait_for(lambda: not silent.connections, 0.5)
                requests = silent.behaviour.requests
                await asyncio.sleep(0.6)
                assert silent.behaviour.requests == requests  # never checked again
                assert [rk[1] for rk in checker.states] == [f"127.0.0.1-{good.ports[0]}"]
                st = next(iter(checker.states.values()))
                assert st.state == "up" and st.checks >= 3
        finally:
            await silent.close()
            await good.close()

    on_each_loop(run)


def test_concurrency_bound_holds_and_waiting_checks_still_run() -> None:
    async def run() -> None:
        silent = await start_http(ports=[0] * 6, behaviour=HTTPBehaviour(mode="silent"))
        good = await start_http(ports=[0] * 3)
        try:
            reals = [f"{LO}:{p}" for p in (*silent.ports, *good.ports)]
            checker = new_checker(spec_of(reals, timeout="500ms"), max_concurrency=3)
            most = 0
            async with running(checker):
                loop = asyncio.get_running_loop()
                end = loop.time() + 3.0
                while loop.time() < end:
                    most = max(most, len(silent.connections) + len(good.connections))
                    await asyncio.sleep(0.005)
            assert 1 <= most <= 3, most
            by_port = {int(rk[1].rsplit("-", 1)[1]): st for rk, st in checker.states.items()}
            for p in silent.ports:
                assert by_port[p].state == "down" and by_port[p].detail == "timed out after 0.5s"
            for p in good.ports:
                assert by_port[p].state == "up" and by_port[p].checks >= 1
        finally:
            await silent.close()
            await good.close()

    on_each_loop(run)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in the text exposition format."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels}")


def test_check_metrics_reach_the_exposition() -> None:
    async def run() -> None:
        up = await start_http()
        down = await start_http(behaviour=HTTPBehaviour(status=503))
        try:
            reals = [f"{LO}:{up.ports[0]}", f"{LO}:{down.ports[0]}"]
            before = generate_latest(REGISTRY).decode()
            durations0 = _count_or_zero(before, "etcdha_check_duration_seconds_count", probe="http")
            slips0 = _count_or_zero(before, "etcdha_check_schedule_slip_seconds_count")
            checker = new_checker(spec_of(reals))
            async with running(checker):
                await asyncio.sleep(1.0)
                text = generate_latest(REGISTRY).decode()
                states = {int(rk[1].rsplit("-", 1)[1]): st for rk, st in checker.states.items()}
                total = sum(st.checks for st in states.values())
            labels = {"local_address": "192.0.2.200", "local_port": "80", "proto": "TCP"}
            for port, st in states.items():
                ok = st.ups
                mine = {**labels, "remote_address": LO, "remote_port": str(port)}
                assert sample(text, "etcdha_checks_total", **mine, result="up") == ok
                assert sample(text, "etcdha_checks_total", **mine, result="down") == st.checks - ok
            assert states[up.ports[0]].ups == states[up.ports[0]].checks >= 3
            assert states[down.ports[0]].ups == 0
            assert sample(text, "etcdha_real_server_up", remote_port=str(up.ports[0])) == 1
            assert sample(text, "etcdha_real_server_up", remote_port=str(down.ports[0])) == 0
            durations = sample(text, "etcdha_check_duration_seconds_count", probe="http")
            assert durations - durations0 == total
            le_inf = sample(text, "etcdha_check_duration_seconds_bucket", probe="http", le="+Inf")
            assert le_inf == durations
            assert sample(text, "etcdha_check_schedule_slip_seconds_count") - slips0 >= total
            # A real that leaves the spec leaves the exposition.
            checker.update(spec_of(reals[:1]))
            after = generate_latest(REGISTRY).decode()
            assert f'remote_port="{down.ports[0]}"' not in after
        finally:
            await up.close()
            await down.close()

    on_each_loop(run)


def _count_or_zero(text: str, name: str, **labels: str) -> float:
    try:
        return sample(text, name, **labels)
    except AssertionError:
        return 0.0


def checked(checker: Checker, times: int) -> bool:
    return bool(checker.states) and all(st.checks >= times for st in checker.states.values())


def test_ipv6_http_and_connect_checks() -> None:
    async def run() -> None:
        srv = await start_http("::1")
        try:
            checker = new_checker(spec_of([f"[::1]:{srv.ports[0]}"], receive="ok"))
            async with running(checker):
                assert await wait_for(lambda: checked(checker, 2), 3.0)
            (st,) = checker.states.values()
            assert st.state == "up" and st.detail == "200 OK"
            connect = new_checker(spec_of([f"[::1]:{srv.ports[0]}"], type="connect"))
            async with running(connect):
                assert await wait_for(lambda: checked(connect, 1), 3.0)
            (st,) = connect.states.values()
            assert st.state == "up" and st.detail == "connected"
        finally:
            await srv.close()

    on_each_loop(run)


# Answers 200 "ok" on the first N ports, 500 on the others; in a process of its
# own, so that its connections' garbage is not counted as the checker's.
SERVER = """
import asyncio, sys
class Answer(asyncio.Protocol):
    def __init__(self, status):
        self.status = status
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        if b"\\r\\n\\r\\n" in data:
            head = b"HTTP/1.1 %d X\\r\\nContent-Length: 2\\r\\n\\r\\n" % self.status
            self.transport.write(head + b"ok")
            self.transport.close()
async def main(good, bad):
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda s=s: Answer(s), "127.0.0.1", 0)
               for s in [200] * good + [500] * bad]
    print(" ".join(str(x.sockets[0].getsockname()[1]) for x in servers), flush=True)
    await asyncio.Event().wait()
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def test_checks_leave_no_reference_cycles() -> None:
    async def run() -> tuple[int, int]:
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SERVER, "10", "1", stdout=subprocess.PIPE
        )
        gone = await start_http()
        refused = gone.ports[0]
        await gone.close()
        try:
            assert server.stdout is not None
            ports = [int(p) for p in (await server.stdout.readline()).split()]
            reals = [f"{LO}:{p}" for p in (*ports, refused)]
            checker = new_checker(spec_of(reals, interval="50ms", receive="ok"))
            async with running(checker):
                await asyncio.sleep(0.5)  # warm: first verdicts, metric children
                gc.collect()
                gc.disable()
                try:
                    checks0 = sum(st.checks for st in checker.states.values())
                    await asyncio.sleep(1.5)
                    checks = sum(st.checks for st in checker.states.values()) - checks0
                    garbage = gc.collect()
                finally:
                    gc.enable()
            states = list(checker.states.values())
            assert sum(st.state == "up" for st in states) == 10
            assert sum(st.state == "down" for st in states) == 2
            return checks, garbage
        finally:
            server.kill()
            await server.wait()

    for checks, garbage in on_each_loop(run):
        # Hundreds of checks (up, wrong status, refused); what the collector
        # finds is the loop's own odds and ends, not one cycle per check.
        assert checks >= 200, checks
        assert garbage < checks / 10, (garbage, checks)


# Out of file descriptors for a while, then not: the checks that cannot open a
# socket fail with the reason, the schedule goes on, and every real recovers.
# (In a process of its own: the limit is the whole process's.)
NOFILE = """
import asyncio, json, os, resource, sys
from etcdha.checker import Checker
from etcdha.keyspace import Keyspace
from etcdha.lab.realservers import start_http
from etcdha.spec import ClusterSpec
from etcdha.store import EtcdSettings, Store

async def main():
    srv = await start_http(ports=[0] * 20)
    spec = ClusterSpec.model_validate({"nodes": ["n1"], "virtual_services": [{
        "address": "192.0.2.200:80", "check": {"interval": "50ms", "timeout": "1s"},
        "reals": [{"address": f"127.0.0.1:{p}"} for p in srv.ports]}]})
    checker = Checker(Store(EtcdSettings()), Keyspace(), "n1", lambda: spec, lambda: 0)
    task = asyncio.create_task(checker.run())
    await asyncio.sleep(0.5)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used, hard))
    await asyncio.sleep(0.5)
    details = sorted({st.detail for st in checker.states.values()})
    down = sum(st.state == "down" for st in checker.states.values())
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    restored = {rk: st.checks for rk, st in checker.states.items()}
    await asyncio.sleep(3.0)  # the servers (asyncio) pause accepting for 1 s after EMFILE
    up = sum(st.state == "up" for st in checker.states.values())
    since = min(st.checks - restored[rk] for rk, st in checker.states.items())
    task.cancel()
    print(json.dumps({"details": details, "down": down, "up": up, "since": since}))
    os._exit(0)

asyncio.run(main())
"""


def test_out_of_file_descriptors_fails_checks_not_the_schedule() -> None:
    out = subprocess.run(
        [sys.executable, "-c", NOFILE], capture_output=True, text=True, timeout=60, check=True
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    # Nearly all fail (a descriptor freed by one check may serve the next).
    assert found["down"] >= 15 and "too many open files" in found["details"], found
    assert found["up"] == 20 and found["since"] >= 10, found  # every real checked on
