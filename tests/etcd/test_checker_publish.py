"""The checker writes health keys only when a verdict changes, and again under a new lease."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from etcdha.checker import Checker
from etcdha.checker_worker import run_standalone
from etcdha.keyspace import Keyspace
from etcdha.lab.etcd_process import EtcdServer
from etcdha.lab.realservers import HTTPBehaviour, HTTPServers, start_http
from etcdha.spec import ClusterSpec
from etcdha.spec_load import to_json
from etcdha.store import EventType, Store, WatchEvent

pytestmark = pytest.mark.etcd

REALS = 50


def spec_for(ports: list[int], *, interval: str = "300ms", **check: object) -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "nodes": ["node1"],
            "virtual_services": [
                {
                    "address": "192.0.2.200:80",
                    "check": {"interval": interval, "timeout": "1s", **check},
                    "reals": [{"address": f"127.0.0.1:{p}"} for p in ports],
                }
            ],
        }
    )


@dataclass
class Recorder:
    """Every health event seen by a watch, from the moment it started."""

    events: list[WatchEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for(self, count: int, timeout: float) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def recording(store: Store, prefix: str) -> AsyncIterator[Recorder]:
    rec = Recorder()
    _, revision = await store.get_prefix(prefix)

    async def watch() -> None:
        async for batch in store.watch_prefix(prefix, revision + 1):
            rec.events.extend(batch.events)
            rec.changed.set()

    task = asyncio.create_task(watch())
    try:
        yield rec
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def servers(count: int) -> AsyncIterator[tuple[HTTPServers, HTTPServers]]:
    """``count - 1`` ports of one server and 1 port of another (to fail on its own)."""
    many = await start_http(ports=[0] * (count - 1))
    one = await start_http(behaviour=HTTPBehaviour())
    try:
        yield many, one
    finally:
        await many.close()
        await one.close()


@contextlib.asynccontextmanager
async def kept_alive(store: Store, lease: dict[str, int]) -> AsyncIterator[None]:
    """Renew ``lease["lease"]`` (whichever it is now) every second."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                await store.keepalive_once(lease["lease"])

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def running(checker: Checker) -> AsyncIterator[None]:
    task = asyncio.create_task(checker.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_writes_only_on_transitions_and_again_under_a_new_lease(
    store: Store, keyspace: Keyspace
) -> None:
    lease = (await store.grant(5)).id
    current = {"lease": lease}
    async with servers(REALS) as (many, one):
        spec = spec_for([*many.ports, *one.ports])
        checker = Checker(store, keyspace, "node1", lambda: spec, lambda: current["lease"])
        prefix = keyspace.health_prefix("node1")
        async with kept_alive(store, current), recording(store, prefix) as rec, running(checker):
            await rec.wait_for(REALS, timeout=10)
            assert all(e.type is EventType.PUT and e.kv.lease == lease for e in rec.events)
            assert {json.loads(e.kv.value)["state"] for e in rec.events} == {"up"}
            assert len({e.kv.key for e in rec.events}) == REALS

            # Steady state: 30 s, ~5000 checks, not one write.
            checks_before = sum(st.checks for st in checker.states.values())
            await asyncio.sleep(30)
            checks = sum(st.checks for st in checker.states.values()) - checks_before
            assert checks >= REALS * 30 / 0.3 * 0.8, checks
            assert len(rec.events) == REALS, rec.events[REALS:]

            # One real fails: exactly one write, its key, down.
            one.behaviour.status = 503
            await rec.wait_for(REALS + 1, timeout=5)
            await asyncio.sleep(1.5)
            assert len(rec.events) == REALS + 1
            down = rec.events[-1]
            value = json.loads(down.kv.value)
            assert down.kv.key == checker.key(("tcp-192.0.2.200-80", f"127.0.0.1-{one.ports[0]}"))
            assert value["state"] == "down" and value["detail"].startswith("503")
            assert value["since"].endswith("Z") and "latency_ms" in value

            # The lease goes (as after losing etcd); a new one: every verdict again.
            await store.revoke(lease)
            await rec.wait_for(2 * REALS + 1, timeout=5)  # the revocation deletes them all
            assert {e.type for e in rec.events[REALS + 1 :]} == {EventType.DELETE}
            # A transition while the lease is gone waits for the next lease.
            one.behaviour.status = 200
            await asyncio.sleep(1.0)
            assert len(rec.events) == 2 * REALS + 1
            current["lease"] = new_lease = (await store.grant(30)).id
            await rec.wait_for(3 * REALS + 1, timeout=5)
            rewritten = rec.events[2 * REALS + 1 :]
            assert all(e.type is EventType.PUT and e.kv.lease == new_lease for e in rewritten)
            states = {e.kv.key: json.loads(e.kv.value)["state"] for e in rewritten}
            assert len(states) == REALS
            assert set(states.values()) == {"up"}
            await asyncio.sleep(1.0)
            assert len(rec.events) == 3 * REALS + 1
    await store.revoke(current["lease"])


async def test_counts_and_live_spec_updates(store: Store, keyspace: Keyspace) -> None:
    """failure_count 3 and rise_count 2 as seen in etcd; a real removed loses its key."""
    lease = (await store.grant(30)).id
    async with servers(3) as (many, one):
        spec = spec_for([*many.ports, *one.ports], interval="200ms", failure_count=3, rise_count=2)
        checker = Checker(store, keyspace, "w1", lambda: spec, lambda: lease)
        key = checker.key(("tcp-192.0.2.200-80", f"127.0.0.1-{one.ports[0]}"))
        async with recording(store, keyspace.health_prefix("w1")) as rec, running(checker):
            await rec.wait_for(3, timeout=5)
            st = checker.states[("tcp-192.0.2.200-80", f"127.0.0.1-{one.ports[0]}")]
            before = st.checks
            one.behaviour.mode = "close"
            await rec.wait_for(4, timeout=5)
            assert st.checks - before >= 3  # three failures before the verdict
            assert rec.events[-1].kv.key == key
            assert json.loads(rec.events[-1].kv.value)["state"] == "down"
            before = st.checks
            one.behaviour.mode = "normal"
            await rec.wait_for(5, timeout=5)
            assert st.checks - before >= 2
            assert json.loads(rec.events[-1].kv.value)["state"] == "up"

            # A real leaves the config: its key goes; the others are not rewritten.
            smaller = spec_for(many.ports, interval="200ms", failure_count=3, rise_count=2)
            checker.update(smaller)
            await rec.wait_for(6, timeout=5)
            assert rec.events[-1].type is EventType.DELETE and rec.events[-1].kv.key == key
            await asyncio.sleep(0.6)
            assert len(rec.events) == 6
    await store.revoke(lease)


async def test_standalone_worker_holds_its_own_lease(
    etcd: EtcdServer, store: Store, keyspace: Keyspace, tmp_path: Path
) -> None:
    async with servers(2) as (many, one):
        spec = spec_for([*many.ports, *one.ports])
        await store.put(keyspace.config(), to_json(spec))
        started: list[Checker] = []
        task = asyncio.create_task(
            run_standalone(
                etcd.settings(), keyspace, "worker1", checks_dir=tmp_path, ready=started.append
            )
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                kvs, _ = await store.get_prefix(keyspace.health_prefix("worker1"))
                if len(kvs) == 2:
                    break
                assert time.monotonic() < deadline, "no verdicts from the worker"
                await asyncio.sleep(0.1)
            lease = kvs[0].lease
            assert lease and all(kv.lease == lease for kv in kvs)
            assert await store.time_to_live(lease) > 0

            # A config change is taken live: a third real appears.
            extra = await start_http()
            try:
                bigger = spec_for([*many.ports, *one.ports, *extra.ports])
                await store.put(keyspace.config(), to_json(bigger))
                while len((await store.get_prefix(keyspace.health_prefix("worker1")))[0]) < 3:
                    assert time.monotonic() < deadline + 5
                    await asyncio.sleep(0.1)
            finally:
                await extra.close()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Stopping revokes the lease: the worker's verdicts are gone at once.
        kvs, _ = await store.get_prefix(keyspace.health_prefix("worker1"))
        assert kvs == []


async def test_a_new_checker_carries_on_from_the_verdicts_under_its_lease(
    store: Store, keyspace: Keyspace
) -> None:
    """adopt(): what the agent's checker process does after a planned restart or
    a crash: the verdicts under the lease stand, agreeing checks write nothing,
    a real that changed meanwhile is a transition, and the key of a real that
    left the config goes; keys under another lease are not its own."""
    lease = (await store.grant(30)).id
    async with servers(4) as (many, one):
        spec = spec_for([*many.ports, *one.ports])
        first = Checker(store, keyspace, "node1", lambda: spec, lambda: lease)
        prefix = keyspace.health_prefix("node1")
        async with recording(store, prefix) as rec, running(first):
            await rec.wait_for(4, timeout=10)
        kvs, _ = await store.get_prefix(prefix)
        before = {kv.key: kv.mod_revision for kv in kvs}
        assert len(before) == 4

        # Meanwhile: one real fails, one leaves the config; a stray key under
        # another lease (not this checker's to adopt) is left alone.
        one.behaviour.status = 503
        smaller = spec_for([*many.ports[1:], *one.ports])
        gone = first.key(("tcp-192.0.2.200-80", f"127.0.0.1-{many.ports[0]}"))
        other = (await store.grant(30)).id
        stray = keyspace.health("node1", "tcp-192.0.2.200-80", "127.0.0.9-80")
        await store.put(stray, b'{"state":"up","since":"","detail":""}', lease=other)

        second = Checker(store, keyspace, "node1", lambda: smaller, lambda: lease)
        second.update(smaller)
        assert await second.adopt(lease) == 3
        async with recording(store, prefix) as rec, running(second):
            await rec.wait_for(2, timeout=10)
            await asyncio.sleep(1.5)  # five checks of every real
        writes = {(e.type, e.kv.key) for e in rec.events}
        changed = second.key(("tcp-192.0.2.200-80", f"127.0.0.1-{one.ports[0]}"))
        assert writes == {(EventType.DELETE, gone), (EventType.PUT, changed)}, writes
        assert second.transitions == 1  # up -> down, recorded as a health event
        kvs, _ = await store.get_prefix(prefix)
        after = {kv.key: kv.mod_revision for kv in kvs}
        assert stray in after
        unchanged = set(before) - {gone, changed}
        assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
        await store.revoke(other)
    await store.revoke(lease)
