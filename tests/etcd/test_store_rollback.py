"""Store against an etcd that goes back in time: restored from an older snapshot,
restored under a new cluster token, rebuilt empty; and the events that must not
be taken for one (restarts, leader changes, a member lost and back, fail-over,
compaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from etcdha.lab.etcd_process import EtcdCluster, EtcdServer, run_etcdctl
from etcdha.store import (
    Compare,
    EtcdSettings,
    EtcdUnavailable,
    Op,
    Store,
    StoreWentBack,
    WatchBatch,
    WatchCompacted,
    WatchEvent,
)

pytestmark = pytest.mark.etcd


@dataclass
class Listener:
    """Records every call of an on_went_back callback, with its time."""

    calls: list[tuple[float, str]] = field(default_factory=list)
    called: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, why: str) -> None:
        self.calls.append((time.monotonic(), why))
        self.called.set()


@dataclass
class Watcher:
    """Consumes a watch in a task: the events it delivered and how it ended."""

    watch: AsyncGenerator[WatchBatch, None]
    events: list[WatchEvent] = field(default_factory=list)
    ended_at: float | None = None
    task: asyncio.Task[None] | None = None
    delivered: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> Watcher:
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            async for batch in self.watch:
                self.events.extend(batch.events)
                self.delivered.set()
        finally:
            self.ended_at = time.monotonic()
            self.delivered.set()

    async def outcome(self, within: float) -> BaseException | None:
        """Wait up to ``within`` seconds for the watch to end; its exception, or None."""
        assert self.task is not None
        done, _ = await asyncio.wait([self.task], timeout=within)
        if not done:
            keys = [e.kv.key for e in self.events]
            pytest.fail(f"the watch stayed silent for {within:g}s; it had delivered {keys}")
        return self.task.exception()

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait([self.task])
        await self.watch.aclose()


async def wait_for_keys(watcher: Watcher, keys: list[str], within: float = 10.0) -> None:
    """Wait until the watch has delivered ``keys`` first (in that order)."""
    try:
        async with asyncio.timeout(within):
            while [e.kv.key for e in watcher.events][: len(keys)] != keys:
                assert watcher.ended_at is None, "the watch ended"
                watcher.delivered.clear()
                await watcher.delivered.wait()
    except TimeoutError:
        delivered = [(e.kv.key, e.kv.mod_revision) for e in watcher.events]
        pytest.fail(f"the watch delivered {delivered} within {within:g}s, not {keys}")


# ---------------------------------------------------------------------------
# the store went back


async def test_restore_from_older_snapshot_same_token(
    etcd_process: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    # Same name, peer URL and token: the restored member keeps its cluster id and
    # member id; only the revision (and here the raft term) go back.
    proc = etcd_process.process
    assert proc is not None
    settings = etcd_process.settings(request_timeout=2.0)
    async with Store(settings) as store, Store(settings) as writer:
        listener = Listener()
        store.on_went_back(listener)
        await writer.put(prefix + "a", b"1")
        _, rev = await store.get_prefix(prefix)
        watcher = Watcher(store.watch_prefix(prefix, rev + 1)).start()
        try:
            await writer.put(prefix + "b", b"1")
            await wait_for_keys(watcher, [prefix + "b"])
            await asyncio.to_thread(proc.snapshot, tmp_path / "snap.db")
            await writer.put(prefix + "c", b"1")  # lost by the restore
            await writer.put(prefix + "d", b"1")  # lost by the restore
            await wait_for_keys(watcher, [prefix + "b", prefix + "c", prefix + "d"])
            seen_before = store.history_state()["revision"]

            await asyncio.to_thread(proc.stop)
            await asyncio.to_thread(proc.restore, tmp_path / "snap.db")
            await asyncio.to_thread(proc.start)
            answering = time.monotonic()
            await writer.put(prefix + "e", b"1")  # written to the restored store

            error = await watcher.outcome(within=10.0)
            assert isinstance(error, StoreWentBack), error
            assert watcher.ended_at is not None
            assert watcher.ended_at - answering < 3.0
            assert [e.kv.key for e in watcher.events] == [prefix + k for k in "bcd"]
        finally:
            await watcher.stop()
        assert len(listener.calls) == 1
        called_at, why = listener.calls[0]
        assert called_at - answering < 3.0
        assert why == error.why
        assert "revision" in why
        assert f"{seen_before}" in why
        assert store.generation == 1

        # The documented recovery: read everything again, watch from the revision read.
        kvs, now = await store.get_prefix(prefix)
        assert [kv.key for kv in kvs] == [prefix + "a", prefix + "b", prefix + "e"]
        assert now < seen_before
        watcher = Watcher(store.watch_prefix(prefix, now + 1)).start()
        try:
            await writer.put(prefix + "f", b"1")
            await wait_for_keys(watcher, [prefix + "f"])
        finally:
            await watcher.stop()
        assert store.generation == 1
        assert len(listener.calls) == 1


async def test_restore_with_a_new_cluster_token(
    etcd_process: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    # What docs/etcd-restore.md asks of operators: a new token gives the restored
    # cluster a new cluster id, which every client notices at its first answer.
    proc = etcd_process.process
    assert proc is not None
    settings = etcd_process.settings(request_timeout=2.0)
    async with Store(settings) as store:
        listener = Listener()
        store.on_went_back(listener)
        await store.put(prefix + "a", b"1")
        await asyncio.to_thread(proc.snapshot, tmp_path / "snap.db")
        _, rev = await store.get_prefix(prefix)
        watcher = Watcher(store.watch_prefix(prefix, rev + 1)).start()
        try:
            await asyncio.sleep(0.3)  # the watch is established and quiet
            old_cluster = store.history_state()["cluster_id"]
            await asyncio.to_thread(proc.stop)
            await asyncio.to_thread(proc.restore, tmp_path / "snap.db", "etcdha-restored-1")
            await asyncio.to_thread(proc.start)
            answering = time.monotonic()
            error = await watcher.outcome(within=10.0)
            assert isinstance(error, StoreWentBack), error
            assert watcher.ended_at is not None
            assert watcher.ended_at - answering < 3.0
        finally:
            await watcher.stop()
        assert len(listener.calls) == 1
        why = listener.calls[0][1]
        assert f"cluster id {old_cluster:x}" in why
        assert store.generation == 1
        assert store.history_state()["cluster_id"] not in (0, old_cluster)
        kvs, _ = await store.get_prefix(prefix)
        assert [kv.key for kv in kvs] == [prefix + "a"]
        assert store.generation == 1


async def test_rebuilt_empty(etcd_process: EtcdServer, prefix: str) -> None:
    # Stopped, data directory emptied, started again: same name, peer URL and
    # token, so the same cluster id; the revision starts again at 1.
    proc = etcd_process.process
    assert proc is not None
    settings = etcd_process.settings(request_timeout=2.0)
    async with Store(settings) as store:
        listener = Listener()
        store.on_went_back(listener)
        for i in range(3):
            await store.put(f"{prefix}{i}", b"1")
        _, rev = await store.get_prefix(prefix)
        cluster_id = store.history_state()["cluster_id"]
        watcher = Watcher(store.watch_prefix(prefix, rev + 1)).start()
        try:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(proc.stop)
            await asyncio.to_thread(proc.wipe)
            await asyncio.to_thread(proc.start)
            answering = time.monotonic()
            error = await watcher.outcome(within=10.0)
            assert isinstance(error, StoreWentBack), error
            assert watcher.ended_at is not None
            assert watcher.ended_at - answering < 3.0
        finally:
            await watcher.stop()
        assert [why for _, why in listener.calls] == [error.why]
        assert f"after revision {rev} had been seen" in error.why
        assert store.history_state()["cluster_id"] == cluster_id
        kvs, now = await store.get_prefix(prefix)
        assert kvs == []
        assert now == 1
        assert store.generation == 1


async def test_keepalive_only_client_notices_within_one_keepalive(
    etcd_process: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    # No watch and no read: only lease keepalives, whose answers come from a
    # member that may lag, so a lower header is checked with one linearizable read.
    proc = etcd_process.process
    assert proc is not None
    settings = etcd_process.settings(request_timeout=2.0)
    async with Store(settings) as holder, Store(settings) as writer:
        listener = Listener()
        holder.on_went_back(listener)
        lease = await holder.grant(60)
        await asyncio.to_thread(proc.snapshot, tmp_path / "snap.db")
        last = 0
        for i in range(3):
            last = await writer.put(f"{prefix}{i}", b"lost by the restore")
        assert (await holder.keepalive_once(lease.id)).ttl == 60
        assert holder.history_state()["revision"] == last  # seen in the keepalive's header

        await asyncio.to_thread(proc.stop)
        await asyncio.to_thread(proc.restore, tmp_path / "snap.db")
        await asyncio.to_thread(proc.start)
        result = await holder.keepalive_once(lease.id, timeout=5.0)
        answered = time.monotonic()
        assert result.ttl > 0  # the lease came back with the snapshot: nothing expires
        # The agent sends a keepalive every lease_ttl / 4 (0.5 s with a 2 s TTL).
        async with asyncio.timeout(0.5):
            await listener.called.wait()
        assert listener.calls[0][0] - answered < 0.5
        why = listener.calls[0][1]
        assert "linearizable read" in why
        assert "lease keepalive answer" in why
        assert f"after revision {last} had been seen" in why
        assert holder.generation == 1
        assert (await holder.keepalive_once(lease.id)).ttl > 0
        await asyncio.sleep(0.1)
        assert len(listener.calls) == 1


async def test_seeded_store_notices_at_its_first_request(
    etcd_process: EtcdServer, prefix: str
) -> None:
    # A process that was not running while etcd was rebuilt: what it kept of
    # history_state() lets its next Store notice.
    proc = etcd_process.process
    assert proc is not None
    settings = etcd_process.settings(request_timeout=2.0)
    async with Store(settings) as earlier:
        for i in range(5):
            await earlier.put(f"{prefix}{i}", b"1")
        state = json.loads(json.dumps(earlier.history_state()))  # as kept in a file
    assert state["revision"] >= 6
    assert state["cluster_id"] > 0
    assert state["raft_term"] > 0

    # The same etcd, nothing went back: nothing to notice.
    same = Store(settings)
    same.seed_history(state)
    quiet = Listener()
    same.on_went_back(quiet)
    await same.open()
    try:
        assert await same.get(prefix + "0") is not None
    finally:
        await same.close()
    assert same.generation == 0
    assert quiet.calls == []

    await asyncio.to_thread(proc.stop)
    await asyncio.to_thread(proc.wipe)
    await asyncio.to_thread(proc.start)

    # Seeded before open(): open() itself notices (its status answer looks old,
    # a linearizable read confirms) before the first request of the caller.
    store = Store(settings)
    store.seed_history(state)
    listener = Listener()
    store.on_went_back(listener)
    await store.open()
    try:
        assert store.generation == 1
        assert len(listener.calls) == 1
        assert f"after revision {state['revision']} had been seen" in listener.calls[0][1]
        assert await store.get(prefix + "0") is None
        assert store.generation == 1
    finally:
        await store.close()

    # Seeded after open(): the first linearizable answer notices.
    async with Store(settings) as late:
        late.seed_history(state)
        listener = Listener()
        late.on_went_back(listener)
        kvs, _ = await late.get_prefix(prefix)
        assert kvs == []
        assert late.generation == 1
        assert len(listener.calls) == 1
        assert "on a linearizable read" in listener.calls[0][1]


async def test_seeded_store_on_a_new_cluster_counts_it_as_gone_back(
    etcd_process: EtcdServer, etcd: EtcdServer
) -> None:
    # Documented: a brand-new cluster (another cluster id) than the one the kept
    # state came from counts as the store having gone back; the caller re-reads.
    async with Store(etcd_process.settings()) as earlier:
        await earlier.get("/x")
        state = earlier.history_state()
    async with Store(etcd.settings()) as store:
        store.seed_history(state)
        listener = Listener()
        store.on_went_back(listener)
        await store.get("/x")
        assert store.generation == 1
        assert [why.startswith("cluster id") for _, why in listener.calls] == [True]
        assert store.history_state()["cluster_id"] != state["cluster_id"]
        await store.get("/x")
        assert store.generation == 1


async def test_waiting_watch_is_woken_when_another_request_notices(
    etcd_process: EtcdServer, prefix: str
) -> None:
    # A watch waiting in its stream read must not stay silent when another
    # request of its Store finds the store went back. Seeding marks above what
    # etcd has makes the next read find etcd behind them, as after a restore,
    # while the watch's stream stays open.
    async with Store(etcd_process.settings()) as store:
        listener = Listener()
        store.on_went_back(listener)
        await store.put(prefix + "a", b"1")
        _, rev = await store.get_prefix(prefix)
        watcher = Watcher(store.watch_prefix(prefix, rev + 1)).start()
        try:
            await asyncio.sleep(0.3)
            assert watcher.ended_at is None
            not_yet_iterated = store.watch_prefix(prefix, rev + 1)
            state = store.history_state()
            store.seed_history({**state, "revision": state["revision"] + 1000})
            await store.get(prefix + "a")
            noticed = time.monotonic()
            assert store.generation == 1
            error = await watcher.outcome(within=2.0)
            assert isinstance(error, StoreWentBack), error
            assert watcher.ended_at is not None
            assert watcher.ended_at - noticed < 0.5
            assert error.why == listener.calls[0][1]
        finally:
            await watcher.stop()
        # A watch called before the rollback fails at its first step, even if
        # nothing iterated it before; so does one whose start revision was read
        # before the rollback (generation=). One started after it runs.
        with pytest.raises(StoreWentBack):
            await anext(not_yet_iterated)
        await not_yet_iterated.aclose()
        watcher = Watcher(store.watch_prefix(prefix, rev + 1, generation=0)).start()
        try:
            assert isinstance(await watcher.outcome(within=2.0), StoreWentBack)
        finally:
            await watcher.stop()
        watcher = Watcher(store.watch_prefix(prefix, rev + 1)).start()
        try:
            await store.put(prefix + "b", b"1")
            await wait_for_keys(watcher, [prefix + "b"])
        finally:
            await watcher.stop()
        assert len(listener.calls) == 1


# ---------------------------------------------------------------------------
# not a rollback


@dataclass
class Busy:
    """A Store in use as an agent uses it: a lease kept alive every 0.2 s, a watch
    on its prefix, writes and reads; it records any rollback it is told of."""

    store: Store
    prefix: str
    listener: Listener = field(default_factory=Listener)
    written: list[str] = field(default_factory=list)
    ttls: list[int] = field(default_factory=list)
    watcher: Watcher | None = None
    keepalive: asyncio.Task[None] | None = None

    async def start(self) -> Busy:
        self.store.on_went_back(self.listener)
        lease = await self.store.grant(30)
        _, rev = await self.store.get_prefix(self.prefix)
        self.watcher = Watcher(self.store.watch_prefix(self.prefix, rev + 1)).start()
        self.keepalive = asyncio.create_task(self._keep(lease.id))
        return self

    async def _keep(self, lease_id: int) -> None:
        while True:
            with contextlib.suppress(EtcdUnavailable):
                self.ttls.append((await self.store.keepalive_once(lease_id, timeout=1.0)).ttl)
            await asyncio.sleep(0.2)

    async def write(self, name: str) -> None:
        """Create ``name`` (retrying while etcd is unavailable) and read the prefix back.

        Each attempt only creates the key if it is absent, as an agent guards its
        writes: an attempt whose answer was lost may still be applied much later
        (sent to a member frozen before it forwarded it), and must then change
        nothing.
        """
        key = self.prefix + name
        async with asyncio.timeout(20):
            while True:
                try:
                    await self.store.txn(
                        [Compare.create_revision(key, "==", 0)], [Op.put(key, b"1")]
                    )
                    break
                except EtcdUnavailable:
                    await asyncio.sleep(0.1)
        self.written.append(key)
        kvs, _ = await self.store.get_prefix(self.prefix)
        assert key in [kv.key for kv in kvs]

    async def check(self) -> None:
        """Everything written was delivered once, in order; no rollback, the lease alive."""
        assert self.watcher is not None
        await wait_for_keys(self.watcher, self.written, within=20.0)
        assert [e.kv.key for e in self.watcher.events] == self.written
        assert self.listener.calls == []
        assert self.store.generation == 0
        assert self.ttls
        assert all(ttl > 0 for ttl in self.ttls)

    async def stop(self) -> None:
        if self.keepalive is not None:
            self.keepalive.cancel()
            await asyncio.wait([self.keepalive])
        if self.watcher is not None:
            await self.watcher.stop()


def suspicions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "may have gone back" in r.getMessage()]


def statuses(cluster: EtcdCluster) -> list[dict[str, Any]]:
    out = cluster.etcdctl("endpoint", "status", "-w", "json").stdout
    result: list[dict[str, Any]] = json.loads(out)
    return result


async def test_restart_on_its_data_is_not_a_rollback(
    etcd_process: EtcdServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="etcdha.store")
    proc = etcd_process.process
    assert proc is not None
    async with Store(etcd_process.settings(request_timeout=2.0)) as store:
        busy = await Busy(store, prefix).start()
        try:
            await busy.write("before")
            await asyncio.to_thread(proc.restart)  # SIGTERM; the raft term goes up
            await busy.write("after-restart")
            await asyncio.to_thread(proc.kill)
            await asyncio.to_thread(proc.start)
            await busy.write("after-kill")
            await asyncio.sleep(0.5)  # keepalives on the new stream
            await busy.check()
        finally:
            await busy.stop()
    # One member restarted on its data never looks older: not even a suspicion.
    assert suspicions(caplog) == []


async def test_leader_changes_are_not_a_rollback(etcd_cluster3: EtcdCluster, prefix: str) -> None:
    endpoints = etcd_cluster3.endpoints
    settings = EtcdSettings(endpoints=endpoints, dial_timeout=1.0, request_timeout=5.0)
    other = EtcdSettings(endpoints=(endpoints[2],), dial_timeout=1.0, request_timeout=5.0)
    async with Store(settings) as first, Store(other) as second:
        a = await Busy(first, prefix + "a/").start()
        b = await Busy(second, prefix + "b/").start()
        try:
            terms = []
            for i in range(8):
                status = await asyncio.to_thread(statuses, etcd_cluster3)
                leader = status[0]["Status"]["leader"]
                target = next(
                    s["Status"]["header"]["member_id"]
                    for s in status
                    if s["Status"]["header"]["member_id"] != leader
                )
                leader_url = next(
                    s["Endpoint"] for s in status if s["Status"]["header"]["member_id"] == leader
                )
                await asyncio.to_thread(run_etcdctl, [leader_url], ["move-leader", f"{target:x}"])
                terms.append(status[0]["Status"]["raftTerm"])
                await asyncio.gather(a.write(f"{i}"), b.write(f"{i}"))
            await asyncio.sleep(0.5)
            await a.check()
            await b.check()
        finally:
            await a.stop()
            await b.stop()
    assert terms == sorted(terms)
    assert terms[-1] > terms[0]


async def test_member_lost_and_back_and_failover_are_not_a_rollback(
    etcd_cluster3: EtcdCluster, prefix: str
) -> None:
    # The Store uses m0, then m1 when m0 is killed, then m0 again (back, and
    # catching up on what was written without it) when m1 is killed; a member
    # frozen and thawed behind the others is used again the same way.
    m0, m1, m2 = etcd_cluster3.members
    settings = EtcdSettings(
        endpoints=(m0.client_url, m1.client_url), dial_timeout=1.0, request_timeout=5.0
    )
    writer_settings = EtcdSettings(endpoints=(m2.client_url,), dial_timeout=1.0)
    async with Store(settings) as store, Store(writer_settings) as writer:
        busy = await Busy(store, prefix + "busy/").start()
        try:
            await busy.write("on-m0")
            assert store.endpoint == m0.client_url

            await asyncio.to_thread(m0.kill)
            await busy.write("on-m1")
            assert store.endpoint == m1.client_url
            for i in range(300):  # m0 misses these
                await writer.put(f"{prefix}other/{i}", b"x")
            await asyncio.to_thread(m0.start)
            await asyncio.to_thread(m1.kill)
            await busy.write("back-on-m0")
            assert store.endpoint == m0.client_url
            await asyncio.to_thread(m1.start)
            await asyncio.sleep(0.5)

            # Frozen: keepalives time out, the Store moves to m1; m0 thaws behind.
            await asyncio.to_thread(m0.pause)
            try:
                await busy.write("on-m1-again")
                for i in range(300):
                    await writer.put(f"{prefix}other/{i}", b"y")
            finally:
                await asyncio.to_thread(m0.resume)
            await asyncio.to_thread(m1.kill)
            await busy.write("on-thawed-m0")
            assert store.endpoint == m0.client_url
            await asyncio.sleep(0.5)
            await busy.check()
        finally:
            await busy.stop()


async def test_compaction_is_not_a_rollback(etcd_process: EtcdServer, prefix: str) -> None:
    async with Store(etcd_process.settings()) as store:
        listener = Listener()
        store.on_went_back(listener)
        _, rev = await store.get_prefix(prefix)
        live = Watcher(store.watch_prefix(prefix, rev + 1)).start()
        try:
            await store.put(prefix + "first", b"v")
            await wait_for_keys(live, [prefix + "first"])  # the watch is running
            last = 0
            for i in range(3):
                last = await store.put(f"{prefix}k{i}", b"v")
            await store.compact(last)
            await store.put(prefix + "after", b"v")
            keys = [prefix + "first", *(f"{prefix}k{i}" for i in range(3)), prefix + "after"]
            await wait_for_keys(live, keys)
        finally:
            await live.stop()
        old = Watcher(store.watch_prefix(prefix, rev + 1)).start()
        try:
            error = await old.outcome(within=10.0)
        finally:
            await old.stop()
        assert isinstance(error, WatchCompacted), error
        assert error.compact_revision == last
        assert listener.calls == []
        assert store.generation == 0


async def test_watch_from_a_future_revision_is_not_a_rollback(
    etcd_process: EtcdServer, prefix: str
) -> None:
    # Created below where it starts, as on a restored store: a linearizable read
    # finds etcd where it was, so the watch goes on and delivers when etcd gets there.
    async with Store(etcd_process.settings()) as store:
        listener = Listener()
        store.on_went_back(listener)
        _, rev = await store.get_prefix(prefix)
        watcher = Watcher(store.watch_prefix(prefix, rev + 4)).start()
        try:
            await asyncio.sleep(1.5)  # created, and a progress notification below its start
            for i in range(4):
                await store.put(f"{prefix}{i}", b"1")
            await wait_for_keys(watcher, [prefix + "3"])
        finally:
            await watcher.stop()
        assert listener.calls == []
        assert store.generation == 0


def test_seed_history_refuses_what_is_not_a_history_state() -> None:
    store = Store()
    for bad in ({"revision": -1}, {"cluster_id": "1"}, {"raft_term": True}):
        with pytest.raises(ValueError, match="non-negative integer"):
            store.seed_history(bad)  # type: ignore[arg-type]
    store.seed_history({"revision": 5})  # no cluster id: nothing known, nothing kept
    assert store.history_state() == {"cluster_id": 0, "revision": 0, "raft_term": 0}
    state = {"cluster_id": 7, "revision": 5, "raft_term": 2}
    store.seed_history(state)
    assert store.history_state() == state
