"""Store against a real etcd: KV, txn guards, leases, watches, fail-over, TLS, auth."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path

import pytest

from etcdha import clock
from etcdha.lab.etcd_process import EtcdCluster, EtcdProcess, EtcdServer, free_port
from etcdha.store import (
    Compare,
    EtcdAuthError,
    EtcdError,
    EtcdLeaseNotFound,
    EtcdSettings,
    EtcdUnavailable,
    EventType,
    Op,
    Store,
    WatchBatch,
    WatchCompacted,
    WatchEvent,
    parse_endpoint,
    parse_endpoints,
)

pytestmark = pytest.mark.etcd


async def take(
    watch: AsyncGenerator[WatchBatch, None], n: int, within: float = 15.0
) -> list[WatchEvent]:
    """The next ``n`` events of ``watch`` (progress notifications skipped)."""
    events: list[WatchEvent] = []
    async with asyncio.timeout(within):
        while len(events) < n:
            batch = await anext(watch)
            events.extend(batch.events)
    return events


def follower_first(cluster: EtcdCluster) -> tuple[str, ...]:
    """The cluster's endpoints, starting with one that is not the raft leader."""
    out = cluster.etcdctl("endpoint", "status", "-w", "json").stdout
    followers = [
        s["Endpoint"]
        for s in json.loads(out)
        if s["Status"]["header"]["member_id"] != s["Status"]["leader"]
    ]
    first = followers[0]
    return (first, *(e for e in cluster.endpoints if e != first))


# ---------------------------------------------------------------------------
# endpoints (no etcd needed)


def test_parse_endpoints_forms() -> None:
    assert parse_endpoints("http://127.0.0.1:2379,https://etcd1:2379, [::1]:2380") == (
        "http://127.0.0.1:2379",
        "https://etcd1:2379",
        "[::1]:2380",
    )
    assert parse_endpoints("etcd1") == ("etcd1:2379",)
    assert parse_endpoints("HTTPS://[2001:db8::1]/") == ("https://[2001:db8::1]:2379",)
    ep = parse_endpoint("https://etcd-1.example:12379")
    assert (ep.scheme, ep.host, ep.port, ep.target) == (
        "https",
        "etcd-1.example",
        12379,
        "etcd-1.example:12379",
    )
    assert parse_endpoint("[::1]:2379").target == "[::1]:2379"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no etcd endpoint"),
        ("a,,b", "empty entry"),
        ("unix:///run/etcd.sock", "unsupported scheme"),
        ("http://h:2379/v3", "nothing more"),
        ("::1:2379", "brackets"),
        ("[::1", "missing ']'"),
        ("[nope]:1", "not an IPv6 address"),
        ("h:0", "port must be"),
        ("h:99999", "port must be"),
        ("h:x", "port must be"),
        ("h:", "empty port"),
        (":2379", "missing host"),
        ("http://user@h:2379", "nothing more"),
        ("h1:2379,h1:2379", "listed twice"),
        ("bad_host!:1", "not a valid host name"),
    ],
)
def test_parse_endpoints_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_endpoints(text)


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="cert and key"):
        EtcdSettings(cert="c.pem")
    with pytest.raises(ValueError, match="needs a user"):
        EtcdSettings(password_file="pw")
    with pytest.raises(TypeError):
        EtcdSettings(endpoints="http://127.0.0.1:2379")  # type: ignore[arg-type]
    assert "secret" not in repr(EtcdSettings(user="root:secret"))


# ---------------------------------------------------------------------------
# KV and txn


async def test_get_put_prefix_delete(store: Store, prefix: str) -> None:
    assert await store.get(prefix + "missing") is None
    rev1 = await store.put(prefix + "a", b"1")
    rev2 = await store.put(prefix + "b/c", b'{"x": 2}')
    assert rev2 > rev1
    kv = await store.get(prefix + "a")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        prefix + "a",
        b"1",
        rev1,
        rev1,
        1,
        0,
    )
    await store.put(prefix + "a", b"2")
    await store.put(prefix.rstrip("/") + "x", b"outside")  # shares the prefix text minus '/'
    kvs, rev = await store.get_prefix(prefix)
    assert [(k.key, k.value) for k in kvs] == [(prefix + "a", b"2"), (prefix + "b/c", b'{"x": 2}')]
    assert kvs[0].version == 2
    assert rev >= rev2 + 2
    assert await store.delete(prefix + "a") is True
    assert await store.delete(prefix + "a") is False
    await store.put(prefix + "d", b"")
    assert await store.delete_prefix(prefix) == 2
    kvs, _ = await store.get_prefix(prefix)
    assert kvs == []
    assert await store.get(prefix.rstrip("/") + "x") is not None


async def test_hostname_endpoint_without_scheme(etcd: EtcdServer, prefix: str) -> None:
    port = parse_endpoint(etcd.endpoints[0]).port
    host = parse_endpoint(etcd.endpoints[0]).host
    if host not in ("127.0.0.1", "localhost"):
        pytest.skip("etcd runs elsewhere than on this host's loopback")
    async with Store(etcd.settings(endpoints=(f"localhost:{port}",))) as store:
        await store.put(prefix + "k", b"v")
        kv = await store.get(prefix + "k")
        assert kv is not None
        assert kv.value == b"v"


async def test_txn_mod_revision_guard(store: Store, prefix: str) -> None:
    key = prefix + "config"
    rev = await store.put(key, b"v1")
    ok = await store.txn(
        [Compare.mod_revision(key, "==", rev)],
        [Op.put(key, b"v2"), Op.get(key)],
        [Op.get(key)],
    )
    assert ok.succeeded
    assert ok.revision > rev
    assert [r.kind for r in ok.responses] == ["put", "get"]
    assert [kv.value for kv in ok.responses[1].kvs] == [b"v2"]
    # The same guard again is stale now: the failure branch runs and shows the winner.
    stale = await store.txn(
        [Compare.mod_revision(key, "==", rev)], [Op.put(key, b"v3")], [Op.get(key)]
    )
    assert not stale.succeeded
    assert stale.revision == ok.revision
    assert [kv.value for kv in stale.responses[0].kvs] == [b"v2"]
    current = await store.get(key)
    assert current is not None
    assert current.value == b"v2"


async def test_txn_compare_targets_and_ops(store: Store, prefix: str) -> None:
    key = prefix + "k"
    await store.put(key, b"abc")
    await store.put(prefix + "sub/1", b"1")
    await store.put(prefix + "sub/2", b"2")
    result = await store.txn(
        [
            Compare.value(key, "==", b"abc"),
            Compare.value(key, "!=", b"x"),
            Compare.version(key, "==", 1),
            Compare.version(key, ">", 0),
            Compare.create_revision(key, ">", 0),
            Compare.mod_revision(key, "<", 10**9),
            Compare.lease(key, "==", 0),
        ],
        [Op.get_prefix(prefix + "sub/"), Op.delete_prefix(prefix + "sub/"), Op.delete(key)],
    )
    assert result.succeeded
    assert [kv.key for kv in result.responses[0].kvs] == [prefix + "sub/1", prefix + "sub/2"]
    assert result.responses[1].deleted == 2
    assert result.responses[2].deleted == 1
    failed = await store.txn([Compare.version(key, "!=", 0)], [Op.put(key, b"x")])
    assert not failed.succeeded
    assert failed.responses == []
    assert await store.get(key) is None
    with pytest.raises(TypeError):
        Compare.version(key, "==", b"1").to_protobuf()  # type: ignore[arg-type]


async def test_create_guard_exactly_one_of_two_concurrent_txns_wins(
    etcd: EtcdServer, prefix: str
) -> None:
    async with Store(etcd.settings()) as a, Store(etcd.settings()) as b:
        for i in range(10):
            key = f"{prefix}leader/g{i}"

            async def campaign(store: Store, name: bytes, key: str = key) -> bool:
                result = await store.txn(
                    [Compare.create_revision(key, "==", 0)],
                    [Op.put(key, name)],
                    [Op.get(key)],
                )
                return result.succeeded

            won = await asyncio.gather(campaign(a, b"a"), campaign(b, b"b"))
            assert sorted(won) == [False, True]
            holder = await a.get(key)
            assert holder is not None
            assert holder.value == (b"a" if won[0] else b"b")


# ---------------------------------------------------------------------------
# leases


async def test_lease_keepalive_keeps_key_and_expiry_without_it(store: Store, prefix: str) -> None:
    kept = await store.grant(2)
    left = await store.grant(2)
    assert kept.ttl == 2
    assert kept.id != left.id
    await store.put(prefix + "kept", b"1", lease=kept.id)
    await store.put(prefix + "left", b"1", lease=left.id)
    end = time.monotonic() + 6.0
    expired_after: float | None = None
    start = time.monotonic()
    while time.monotonic() < end:
        before = clock.now()
        result = await store.keepalive_once(kept.id)
        assert result.ttl == 2
        assert before <= result.sent_at <= clock.now()
        if expired_after is None and await store.get(prefix + "left") is None:
            expired_after = time.monotonic() - start
        if expired_after is not None and time.monotonic() - start > 3.0:
            break
        await asyncio.sleep(0.4)
    # The kept key outlived its TTL; the other one expired on its own.
    assert time.monotonic() - start > 3.0
    kept_kv = await store.get(prefix + "kept")
    assert kept_kv is not None
    assert kept_kv.lease == kept.id
    assert expired_after is not None, "a lease without keepalive did not expire"
    assert 1.5 <= expired_after <= 5.0
    assert await store.time_to_live(left.id) == -1
    assert 0 < await store.time_to_live(kept.id) <= 2

    await store.revoke(kept.id)
    assert await store.get(prefix + "kept") is None
    gone = await store.keepalive_once(kept.id)
    assert gone.ttl <= 0
    assert await store.time_to_live(kept.id) == -1
    await store.revoke(kept.id)  # revoking a lease that is gone is fine
    with pytest.raises(EtcdLeaseNotFound):
        await store.put(prefix + "late", b"x", lease=kept.id)


async def test_concurrent_keepalives_share_one_stream(store: Store) -> None:
    leases = [await store.grant(10) for _ in range(4)]
    results = await asyncio.gather(
        *(store.keepalive_once(lease.id) for lease in leases for _ in range(3))
    )
    assert all(r.ttl == 10 for r in results)
    for lease in leases:
        await store.revoke(lease.id)


async def test_keepalive_answers_go_to_their_own_request() -> None:
    # Internal invariant behind the fencing deadline: an answer that arrives after
    # its caller gave up must not be taken as the answer to a later keepalive.
    from types import SimpleNamespace

    from etcdha.store import _KeepaliveStream

    class FakeCall:
        def __init__(self) -> None:
            self.answers: asyncio.Queue[object] = asyncio.Queue()

        async def read(self) -> object:
            return await self.answers.get()

        def cancel(self) -> None:
            pass

    call = FakeCall()
    stream = _KeepaliveStream(conn=None, call=call)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    first: asyncio.Future[int] = loop.create_future()
    second: asyncio.Future[int] = loop.create_future()
    stream.pending[7] = collections.deque([first, second])
    first.cancel()  # its caller timed out
    await call.answers.put(SimpleNamespace(ID=7, TTL=5))  # the late answer to the first
    await asyncio.sleep(0.01)
    assert not second.done()
    await call.answers.put(SimpleNamespace(ID=7, TTL=4))
    assert await asyncio.wait_for(second, 1) == 4
    await stream.close()
    assert stream.broken


# ---------------------------------------------------------------------------
# watch


async def test_watch_sees_puts_and_deletes_in_order(store: Store, prefix: str) -> None:
    _, rev = await store.get_prefix(prefix)
    watch = store.watch_prefix(prefix, rev + 1, prev_kv=True)
    try:
        await store.put(prefix + "a", b"1")
        await store.put(prefix + "b", b"1")
        await store.put(prefix + "a", b"2")
        await store.delete(prefix + "b")
        await store.put(prefix.rstrip("/") + "-other", b"not watched")
        await store.txn([], [Op.put(prefix + "c", b"3"), Op.delete(prefix + "a")])
        events = await take(watch, 6)
    finally:
        await watch.aclose()
    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
        (EventType.PUT, prefix + "a", b"1"),
        (EventType.PUT, prefix + "b", b"1"),
        (EventType.PUT, prefix + "a", b"2"),
        (EventType.DELETE, prefix + "b", b""),
        (EventType.PUT, prefix + "c", b"3"),
        (EventType.DELETE, prefix + "a", b""),
    ]
    revisions = [e.kv.mod_revision for e in events]
    assert revisions == sorted(revisions)
    assert revisions[4] == revisions[5]  # one txn, one revision
    assert events[0].prev_kv is None
    assert events[2].prev_kv is not None
    assert events[2].prev_kv.value == b"1"
    assert events[3].prev_kv is not None
    assert events[3].prev_kv.key == prefix + "b"


async def test_quiet_watch_gets_progress_notifications(store: Store, prefix: str) -> None:
    await store.put(prefix + "x", b"1")
    _, rev = await store.get_prefix(prefix)
    watch = store.watch_prefix(prefix)
    try:
        async with asyncio.timeout(10):
            batch = await anext(watch)
    finally:
        await watch.aclose()
    assert batch.events == ()
    assert batch.revision >= rev


async def test_watch_from_compacted_revision_raises(store: Store, prefix: str) -> None:
    _, rev = await store.get_prefix(prefix)
    last = 0
    for i in range(3):
        last = await store.put(f"{prefix}k{i}", b"v")
    await store.compact(last)
    watch = store.watch_prefix(prefix, rev + 1)
    try:
        with pytest.raises(WatchCompacted) as caught:
            await take(watch, 1)
    finally:
        await watch.aclose()
    assert caught.value.compact_revision == last
    # The documented recovery: re-read, then watch from the read revision.
    kvs, now = await store.get_prefix(prefix)
    assert len(kvs) == 3
    watch = store.watch_prefix(prefix, now + 1)
    try:
        await store.put(prefix + "k9", b"v")
        assert [e.kv.key for e in await take(watch, 1)] == [prefix + "k9"]
    finally:
        await watch.aclose()


async def test_watch_resumes_after_restart_and_kill(etcd_process: EtcdServer, prefix: str) -> None:
    proc = etcd_process.process
    assert proc is not None
    async with Store(etcd_process.settings(request_timeout=2.0)) as store:
        lease = await store.grant(30)
        _, rev = await store.get_prefix(prefix)
        watch = store.watch_prefix(prefix, rev + 1)
        try:
            await store.put(prefix + "1", b"")
            seen = await take(watch, 1)
            # Written while the watcher is busy elsewhere; not consumed before the stop.
            await store.put(prefix + "2", b"")
            await store.put(prefix + "3", b"")
            await asyncio.to_thread(proc.stop)
            with pytest.raises(EtcdUnavailable):
                await store.get(prefix + "1")
            await asyncio.to_thread(proc.start)
            await store.put(prefix + "4", b"")
            await store.put(prefix + "5", b"")
            seen += await take(watch, 4)
            assert (await store.keepalive_once(lease.id)).ttl > 0  # stream reopened

            await store.put(prefix + "6", b"")
            await asyncio.to_thread(proc.kill)
            await asyncio.to_thread(proc.start)
            await store.put(prefix + "7", b"")
            seen += await take(watch, 2)
            assert (await store.keepalive_once(lease.id)).ttl > 0
        finally:
            await watch.aclose()
    assert [e.kv.key for e in seen] == [f"{prefix}{i}" for i in range(1, 8)]
    revisions = [e.kv.mod_revision for e in seen]
    assert revisions == list(range(revisions[0], revisions[0] + 7))  # none missed or repeated


async def test_watch_resumed_between_catch_up_batches_misses_nothing(
    etcd_process: EtcdServer, prefix: str
) -> None:
    # etcd replays history in batches of at most 1000 revisions, each stamped with
    # the current revision; resuming must follow the events, not that stamp.
    proc = etcd_process.process
    assert proc is not None
    async with Store(etcd_process.settings(request_timeout=2.0)) as store:
        _, rev = await store.get_prefix(prefix)
        for i in range(1200):
            await store.put(f"{prefix}{i:04d}", b"")
        watch = store.watch_prefix(prefix, rev + 1)
        try:
            first = await anext(watch)
            assert 0 < len(first.events) < 1200
            await asyncio.to_thread(proc.restart)
            rest = await take(watch, 1200 - len(first.events))
        finally:
            await watch.aclose()
    revisions = [e.kv.mod_revision for e in (*first.events, *rest)]
    assert revisions == list(range(rev + 1, rev + 1201))


# ---------------------------------------------------------------------------
# availability


async def test_unavailable_quickly_when_nothing_listens() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(EtcdUnavailable, match="no etcd endpoint answered"):
        await Store.connect(EtcdSettings(endpoints=(url,), dial_timeout=0.5))
    assert time.monotonic() - start < 2.0


async def test_requests_fail_within_timeout_when_etcd_stops(
    etcd_process: EtcdServer, prefix: str
) -> None:
    proc = etcd_process.process
    assert proc is not None
    async with Store(etcd_process.settings(request_timeout=1.0)) as store:
        await store.put(prefix + "k", b"v")
        await asyncio.to_thread(proc.stop)
        for call in (store.get(prefix + "k"), store.put(prefix + "k", b"w"), store.grant(5)):
            start = time.monotonic()
            with pytest.raises(EtcdUnavailable) as caught:
                await call
            assert time.monotonic() - start < 2.5
            assert not caught.value.maybe_committed  # nothing was sent
        await asyncio.to_thread(proc.start)
        kv = await store.get(prefix + "k")
        assert kv is not None
        assert kv.value == b"v"


async def test_dead_first_endpoint_fails_over(etcd: EtcdServer, prefix: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with Store(etcd.settings(endpoints=(dead, *etcd.endpoints))) as store:
        await store.put(prefix + "k", b"v")
        assert store.endpoint == etcd.endpoints[0]


async def test_cluster_keeps_working_when_the_used_member_is_killed(
    etcd_cluster3: EtcdCluster, prefix: str
) -> None:
    endpoints = follower_first(etcd_cluster3)
    settings = EtcdSettings(endpoints=endpoints, dial_timeout=1.0, request_timeout=5.0)
    async with Store(settings) as store:
        assert store.endpoint == endpoints[0]
        _, rev = await store.get_prefix(prefix)
        watch = store.watch_prefix(prefix, rev + 1)
        try:
            lease = await store.grant(10)
            await store.put(prefix + "before", b"1", lease=lease.id)
            assert (await store.keepalive_once(lease.id)).ttl == 10
            assert [e.kv.key for e in await take(watch, 1)] == [prefix + "before"]

            victim = next(m for m in etcd_cluster3 if m.client_url == endpoints[0])
            await asyncio.to_thread(victim.kill)

            kv = await store.get(prefix + "before")
            assert kv is not None
            await store.put(prefix + "after", b"2", lease=lease.id)
            won = await store.txn(
                [Compare.create_revision(prefix + "new", "==", 0)], [Op.put(prefix + "new", b"x")]
            )
            assert won.succeeded
            assert (await store.keepalive_once(lease.id)).ttl == 10
            assert [e.kv.key for e in await take(watch, 2)] == [prefix + "after", prefix + "new"]
            assert store.endpoint != endpoints[0]
        finally:
            await watch.aclose()


async def test_frozen_member_bounds_keepalive_then_fails_over(
    etcd_cluster3: EtcdCluster, prefix: str
) -> None:
    endpoints = follower_first(etcd_cluster3)
    settings = EtcdSettings(endpoints=endpoints, dial_timeout=1.0, request_timeout=3.0)
    async with Store(settings) as store:
        lease = await store.grant(10)
        assert (await store.keepalive_once(lease.id)).ttl == 10
        victim = next(m for m in etcd_cluster3 if m.client_url == endpoints[0])
        await asyncio.to_thread(victim.pause)  # SIGSTOP: connections stay open, nothing answers
        try:
            start = time.monotonic()
            with pytest.raises(EtcdUnavailable, match="not answered"):
                await store.keepalive_once(lease.id, timeout=1.0)
            assert time.monotonic() - start < 1.5
            result = await store.keepalive_once(lease.id, timeout=3.0)
            assert result.ttl == 10
            assert store.endpoint != endpoints[0]
            await store.put(prefix + "k", b"v", lease=lease.id)
            assert await store.get(prefix + "k") is not None
        finally:
            await asyncio.to_thread(victim.resume)


async def test_watch_resumed_on_another_member_reports_compaction(
    etcd_cluster3: EtcdCluster, prefix: str
) -> None:
    endpoints = follower_first(etcd_cluster3)
    watcher_settings = EtcdSettings(endpoints=endpoints, dial_timeout=1.0)
    writer_settings = EtcdSettings(endpoints=endpoints[1:], dial_timeout=1.0)
    async with Store(watcher_settings) as watcher, Store(writer_settings) as writer:
        _, rev = await writer.get_prefix(prefix)
        watch = watcher.watch_prefix(prefix, rev + 1)
        try:
            await writer.put(prefix + "1", b"")
            await take(watch, 1)
            victim = next(m for m in etcd_cluster3 if m.client_url == endpoints[0])
            await asyncio.to_thread(victim.kill)
            # While the watcher is cut off, history it has not seen is compacted away.
            await writer.put(prefix + "2", b"")
            last = await writer.put(prefix + "3", b"")
            await writer.compact(last)
            with pytest.raises(WatchCompacted) as caught:
                await take(watch, 2)
            assert caught.value.compact_revision == last
        finally:
            await watch.aclose()


# ---------------------------------------------------------------------------
# TLS and authentication


async def test_tls_with_client_certificate(etcd_tls: EtcdServer, prefix: str) -> None:
    async with Store(etcd_tls.settings()) as store:
        await store.put(prefix + "k", b"tls")
        kv = await store.get(prefix + "k")
        assert kv is not None
        assert kv.value == b"tls"
    # A host name checked against the certificate's DNS name, no scheme given.
    port = parse_endpoint(etcd_tls.endpoints[0]).port
    async with Store(etcd_tls.settings(endpoints=(f"localhost:{port}",))) as store:
        assert await store.get(prefix + "k") is not None


async def test_tls_without_client_certificate_is_refused(etcd_tls: EtcdServer) -> None:
    settings = etcd_tls.settings(cert=None, key=None, dial_timeout=1.0)
    with pytest.raises(EtcdUnavailable):
        await Store.connect(settings)
    with pytest.raises(EtcdUnavailable):
        plain = "http://" + etcd_tls.endpoints[0].removeprefix("https://")
        await Store.connect(EtcdSettings(endpoints=(plain,), dial_timeout=1.0))


async def test_user_password_auth(tmp_path: Path, prefix: str) -> None:
    # A one-second token TTL makes etcd forget idle tokens, so re-authentication runs.
    proc = EtcdProcess("auth", extra_args=("--auth-token-ttl", "1"))
    await asyncio.to_thread(proc.start)
    try:
        for args in (
            ("user", "add", "root:rootpw"),
            ("user", "add", "alice:alicepw"),
            ("role", "add", "checker"),
            ("role", "grant-permission", "checker", "--prefix=true", "readwrite", prefix + "mine/"),
            ("user", "grant-role", "alice", "checker"),
            ("auth", "enable"),
        ):
            await asyncio.to_thread(proc.etcdctl, *args)
        password_file = tmp_path / "password"
        password_file.write_text("rootpw\n")
        settings = EtcdSettings(endpoints=proc.endpoints, user="root", password_file=password_file)
        async with Store(settings) as store:
            await store.put(prefix + "k", b"v")
            lease = await store.grant(10)
            assert (await store.keepalive_once(lease.id)).ttl == 10
            _, rev = await store.get_prefix(prefix)
            watch = store.watch_prefix(prefix, rev + 1)
            try:
                await asyncio.sleep(2.5)  # the token expires meanwhile
                await store.put(prefix + "k2", b"v")
                kv = await store.get(prefix + "k2")
                assert kv is not None
                assert [e.kv.key for e in await take(watch, 1)] == [prefix + "k2"]
            finally:
                await watch.aclose()

        with pytest.raises(EtcdAuthError, match="root"):
            await Store.connect(replace(settings, password_file=None, user="root:wrong"))

        alice = EtcdSettings(endpoints=proc.endpoints, user="alice:alicepw")
        async with Store(alice) as store:
            await store.put(prefix + "mine/x", b"ok")
            with pytest.raises(EtcdAuthError, match="permission denied"):
                await store.put(prefix + "theirs", b"no")

        async with Store(EtcdSettings(endpoints=proc.endpoints)) as anonymous:
            with pytest.raises(EtcdAuthError, match="give a user"):
                await anonymous.get(prefix + "k")
    finally:
        await asyncio.to_thread(proc.close)


async def test_closed_store_refuses_calls(etcd: EtcdServer) -> None:
    store = await Store.connect(etcd.settings())
    await store.close()
    with pytest.raises(EtcdError, match="closed"):
        await store.get("/x")
