"""Health transitions become events: one per real going down or up, readable with
`etcdha events`, and a flapping fleet costs a bounded number of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from etcdha.checker import EVENT_LISTED, Checker
from etcdha.keyspace import Keyspace
from etcdha.lab.etcd_process import EtcdServer
from etcdha.lab.realservers import HTTPBehaviour, start_http
from etcdha.spec import ClusterSpec
from etcdha.store import KeyValue, Store

pytestmark = pytest.mark.etcd


def spec_for(ports: list[int], interval: str = "200ms") -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "nodes": ["node1"],
            "virtual_services": [
                {
                    "address": "192.0.2.200:80",
                    "check": {"interval": interval, "timeout": "1s"},
                    "reals": [{"address": f"127.0.0.1:{p}"} for p in ports],
                }
            ],
        }
    )


@contextlib.asynccontextmanager
async def running(checker: Checker) -> AsyncIterator[None]:
    task = asyncio.create_task(checker.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def events_of(store: Store, ks: Keyspace) -> list[tuple[KeyValue, dict[str, Any]]]:
    kvs, _ = await store.get_prefix(ks.events_prefix())
    return [(kv, json.loads(kv.value)) for kv in sorted(kvs, key=lambda kv: kv.key)]


async def wait_until(what: str, timeout: float, check: Any) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def health_count(store: Store, ks: Keyspace, checker: str) -> int:
    kvs, _ = await store.get_prefix(ks.health_prefix(checker))
    return len(kvs)


async def etcdha_cli(etcd: EtcdServer, ks: Keyspace, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDHA_")}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "etcdha", *args),
        *("--endpoints", ",".join(etcd.endpoints), "--prefix", ks.prefix),
        *("--cluster", ks.cluster),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_each_transition_is_an_event_that_etcdha_events_shows(
    etcd: EtcdServer, store: Store, keyspace: Keyspace
) -> None:
    lease = (await store.grant(30)).id
    steady = await start_http(ports=[0, 0])
    flaky = await start_http(behaviour=HTTPBehaviour())
    try:
        port = flaky.ports[0]
        spec = spec_for([*steady.ports, port])
        checker = Checker(store, keyspace, "node1", lambda: spec, lambda: lease)
        async with running(checker):
            await wait_until(
                "3 verdicts", 10, lambda: _is(health_count(store, keyspace, "node1"), 3)
            )
            # First verdicts are not transitions.
            await asyncio.sleep(1.0)
            assert await events_of(store, keyspace) == []

            flaky.behaviour.status = 503
            await wait_until("an event", 5, lambda: _has_events(store, keyspace, 1))
            flaky.behaviour.status = 200
            await wait_until("a second event", 5, lambda: _has_events(store, keyspace, 2))
            await asyncio.sleep(1.0)
            events = await events_of(store, keyspace)
        assert len(events) == 2, events
        (kv_down, down), (_, up) = events
        assert down["type"] == "health" and down["checker"] == "node1"
        assert down["down"] == 1 and down["up"] == 0 and "more" not in down
        (t,) = down["transitions"]
        assert t["service"] == "tcp 192.0.2.200:80" and t["real"] == f"127.0.0.1:{port}"
        assert (t["from"], t["to"]) == ("up", "down") and t["detail"].startswith("503")
        assert t["at"].endswith("Z")
        assert [(u["from"], u["to"]) for u in up["transitions"]] == [("down", "up")]
        # Bound to the retention lease: the history expires by itself.
        assert kv_down.lease and kv_down.lease != lease
        assert 86_000 < await store.time_to_live(kv_down.lease) <= 86_400

        text = await etcdha_cli(etcd, keyspace, "events")
        lines = text.splitlines()
        assert len(lines) == 2, text
        real = f"tcp 192.0.2.200:80 real 127.0.0.1:{port}"
        assert f" health checker=node1 {real} up->down (503" in lines[0]
        assert f" health checker=node1 {real} down->up (200" in lines[1]
        as_json = [
            json.loads(line)
            for line in (await etcdha_cli(etcd, keyspace, "events", "--json")).splitlines()
        ]
        assert [e["transitions"][0]["to"] for e in as_json] == ["down", "up"]
    finally:
        await steady.close()
        await flaky.close()
        await store.revoke(lease)


async def test_a_flapping_fleet_is_rate_limited_and_every_transition_counted(
    etcd: EtcdServer, store: Store, keyspace: Keyspace
) -> None:
    reals = 200
    lease = (await store.grant(60)).id
    fleet = await start_http(ports=[0] * reals)
    try:
        spec = spec_for(fleet.ports)
        burst, every = 2, 2.0
        checker = Checker(
            store, keyspace, "w1", lambda: spec, lambda: lease, event_burst=burst, event_every=every
        )
        async with running(checker):
            await wait_until(
                "all verdicts", 15, lambda: _is(health_count(store, keyspace, "w1"), reals)
            )
            start = time.monotonic()
            for status in (503, 200, 503, 200, 503, 200):
                fleet.behaviour.status = status
                await asyncio.sleep(1.0)

            # Wait until every transition is in an event (the limit lets one out
            # every `every` seconds).
            async def all_recorded() -> bool:
                events = await events_of(store, keyspace)
                told = sum(len(e["transitions"]) + e.get("more", 0) for _, e in events)
                return checker.transitions > 0 and told == checker.transitions

            await wait_until("every transition recorded", 20, all_recorded)
            elapsed = time.monotonic() - start
            events = [e for _, e in await events_of(store, keyspace)]
        # Six flips of 200 reals: over a thousand transitions...
        assert checker.transitions >= 5 * reals, checker.transitions
        # ...in a handful of events.
        assert len(events) <= burst + elapsed / every + 1, (len(events), elapsed)
        assert all(len(e["transitions"]) <= EVENT_LISTED for e in events)
        assert sum(e["down"] + e["up"] for e in events) == checker.transitions
        assert sum(e["down"] for e in events) >= 3 * reals * 0.9
        assert any(e.get("more", 0) > 0 for e in events)

        text = await etcdha_cli(etcd, keyspace, "events")
        heads = [line for line in text.splitlines() if not line.startswith("    ")]
        assert len(heads) == len(events)
        assert any("not listed" in line for line in heads), text
    finally:
        await fleet.close()
        await store.revoke(lease)


async def _is(count: Any, want: int) -> bool:
    return bool(await count == want)


async def _has_events(store: Store, ks: Keyspace, n: int) -> bool:
    return len(await events_of(store, ks)) >= n
