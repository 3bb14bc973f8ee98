"""One live checker per name: a second `etcdha checker start` with a name in use is
refused, a crashed worker's name is taken over on its host, and an agent's
checker whose name a worker holds publishes nothing until the worker stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from etcdha.checker import Checker, CheckerNameInUse, claim_name
from etcdha.keyspace import KeyKind, Keyspace
from etcdha.lab.etcd_process import EtcdServer
from etcdha.lab.realservers import HTTPServers, start_http
from etcdha.membership import boot_id
from etcdha.spec import ClusterSpec
from etcdha.spec_load import to_json
from etcdha.store import KeyValue, Store

pytestmark = pytest.mark.etcd


def spec_for(ports: list[int]) -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "nodes": ["node1"],
            "virtual_services": [
                {
                    "address": "192.0.2.200:80",
                    "check": {"interval": "300ms", "timeout": "1s"},
                    "reals": [{"address": f"127.0.0.1:{p}"} for p in ports],
                }
            ],
        }
    )


@contextlib.asynccontextmanager
async def configured(store: Store, ks: Keyspace) -> AsyncIterator[HTTPServers]:
    reals = await start_http(ports=[0, 0])
    try:
        await store.put(ks.config(), to_json(spec_for(reals.ports)))
        yield reals
    finally:
        await reals.close()


async def worker(etcd: EtcdServer, ks: Keyspace, name: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDHA_")}
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "etcdha", "checker", "start", "--name", name),
        *("--endpoints", ",".join(etcd.endpoints), "--prefix", ks.prefix),
        *("--cluster", ks.cluster),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> str:
    if proc.returncode is None:
        proc.send_signal(sig)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    return err.decode()


async def until(what: str, check: Callable[[], Awaitable[Any]], timeout: float = 15) -> Any:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return found


async def registration(store: Store, ks: Keyspace, name: str) -> tuple[KeyValue, dict[str, Any]]:
    kv = await until(f"checkers/{name}", lambda: store.get(ks.checker(name)))
    assert isinstance(kv, KeyValue)
    return kv, json.loads(kv.value)


async def health_leases(store: Store, ks: Keyspace, name: str) -> set[int]:
    kvs, _ = await store.get_prefix(ks.health_prefix(name))
    return {kv.lease for kv in kvs} if len(kvs) == 2 else set()


async def test_a_second_worker_with_a_live_name_is_refused_and_a_crashed_ones_is_taken_over(
    etcd: EtcdServer, store: Store, keyspace: Keyspace
) -> None:
    async with configured(store, keyspace):
        first = await worker(etcd, keyspace, "w1")
        try:
            kv, data = await registration(store, keyspace, "w1")
            parsed = keyspace.classify(kv.key)
            assert parsed is not None and parsed.kind is KeyKind.CHECKER and parsed.name == "w1"
            assert data["pid"] == first.pid and data["role"] == "worker" and kv.lease
            assert await until("w1's verdicts", lambda: health_leases(store, keyspace, "w1")) == {
                kv.lease
            }

            second = await worker(etcd, keyspace, "w1")
            err = await asyncio.wait_for(second.communicate(), 30)
            assert second.returncode == 1, err
            message = err[1].decode()
            assert "refusing to start: checker name w1 is in use by a live worker" in message
            assert f"pid {first.pid}" in message
            # The first goes on untouched.
            assert first.returncode is None
            held = await store.get(keyspace.checker("w1"))
            assert held is not None and held.mod_revision == kv.mod_revision
            assert await health_leases(store, keyspace, "w1") == {kv.lease}

            # kill -9: its lease outlives it; the next worker on this host takes over.
            await stop(first, signal.SIGKILL)
            assert await store.time_to_live(kv.lease) > 0
            third = await worker(etcd, keyspace, "w1")
            try:
                new_kv, _ = await until(
                    "the third worker's registration",
                    lambda: _registered_by(store, keyspace, "w1", third.pid),
                )
                assert new_kv.lease != kv.lease
                assert await store.time_to_live(kv.lease) == -1  # revoked, stale verdicts gone
                assert await until(
                    "the third worker's verdicts", lambda: health_leases(store, keyspace, "w1")
                ) == {new_kv.lease}
            finally:
                await stop(third)
            # Stopping revokes: name and verdicts are free again.
            assert await store.get(keyspace.checker("w1")) is None
        finally:
            with contextlib.suppress(ProcessLookupError):
                first.kill()
            await first.wait()


async def test_an_agents_checker_and_a_worker_never_share_a_name(
    etcd: EtcdServer, store: Store, keyspace: Keyspace
) -> None:
    async with configured(store, keyspace) as reals:
        spec = spec_for(reals.ports)
        lease = (await store.grant(30)).id
        agent_checker = Checker(store, keyspace, "node1", lambda: spec, lambda: lease)
        task = asyncio.create_task(agent_checker.run())
        try:
            kv, data = await registration(store, keyspace, "node1")
            assert kv.lease == lease and data["role"] == "agent"
            proc = await worker(etcd, keyspace, "node1")
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 1, err
            assert "checker name node1 is in use by a live agent on this host" in err.decode()
            assert await health_leases(store, keyspace, "node1") == {lease}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.revoke(lease)

        # The other way round: a worker holds the name; the agent's checker waits.
        proc = await worker(etcd, keyspace, "node1")
        try:
            kv, _ = await registration(store, keyspace, "node1")
            worker_lease = kv.lease
            lease = (await store.grant(30)).id
            agent_checker = Checker(store, keyspace, "node1", lambda: spec, lambda: lease)
            task = asyncio.create_task(agent_checker.run())
            await asyncio.sleep(3.0)
            assert agent_checker.writes == 0
            assert await health_leases(store, keyspace, "node1") == {worker_lease}
            await stop(proc)
            assert await until(
                "the agent's checker to publish", lambda: health_leases(store, keyspace, "node1")
            ) == {lease}
            held = await store.get(keyspace.checker("node1"))
            assert held is not None and held.lease == lease
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            await store.revoke(lease)


async def test_registrations_of_other_hosts_and_of_reused_pids(
    etcd: EtcdServer, store: Store, keyspace: Keyspace
) -> None:
    key = keyspace.checker("c1")
    other = (await store.grant(30)).id
    await store.put(
        key,
        json.dumps({"role": "worker", "host": "elsewhere.example", "pid": 4242}).encode(),
        lease=other,
    )
    mine = (await store.grant(30)).id
    with pytest.raises(CheckerNameInUse, match=r"live worker on host elsewhere\.example .*s left"):
        await claim_name(store, keyspace, "c1", mine, "worker")
    held = await store.get(key)
    assert held is not None and held.lease == other

    # This host, a running pid that is not the process which registered (its
    # start time differs): the registering process is gone, the name is ours.
    this_host = {
        "role": "worker",
        "host": socket.gethostname(),
        "boot_id": boot_id(),
        "pid": os.getppid(),
        "pid_start": "1",
    }
    await store.put(key, json.dumps(this_host).encode(), lease=other)
    await claim_name(store, keyspace, "c1", mine, "worker")
    held = await store.get(key)
    assert held is not None and held.lease == mine
    assert await store.time_to_live(other) == -1
    # Claiming again under the same lease changes nothing.
    await claim_name(store, keyspace, "c1", mine, "worker")
    again = await store.get(key)
    assert again is not None and again.mod_revision == held.mod_revision
    # A new process under the same lease (an agent's planned restart reclaims
    # its lease) writes its own pid, so the name is never taken for gone.
    await store.put(key, json.dumps({**this_host, "pid": 1}).encode(), lease=mine)
    await claim_name(store, keyspace, "c1", mine, "agent")
    refreshed = await store.get(key)
    assert refreshed is not None and json.loads(refreshed.value)["pid"] == os.getpid()
    await store.revoke(mine)

    # A crashed agent's lease is never revoked (its fence guard still holds its
    # addresses until the lease's deadline): the name waits for it to expire.
    crashed = (await store.grant(30)).id
    await store.put(key, json.dumps({**this_host, "role": "agent"}).encode(), lease=crashed)
    mine = (await store.grant(30)).id
    with pytest.raises(CheckerNameInUse, match=r"agent of pid \d+ on this host, which is gone"):
        await claim_name(store, keyspace, "c1", mine, "worker")
    assert await store.time_to_live(crashed) > 0
    await store.revoke(crashed)
    await store.revoke(mine)


async def _registered_by(
    store: Store, ks: Keyspace, name: str, pid: int
) -> tuple[KeyValue, dict[str, Any]] | None:
    kv = await store.get(ks.checker(name))
    if kv is None:
        return None
    data = json.loads(kv.value)
    return (kv, data) if data.get("pid") == pid else None


async def test_an_agent_refuses_to_start_under_a_name_a_worker_checks_as(
    etcd: EtcdServer, store: Store, keyspace: Keyspace, tmp_path: Any
) -> None:
    """The agent's checker goes by the node's name: an agent whose node name a live
    checker-only worker holds refuses to start, and leaves no member behind."""
    async with configured(store, keyspace):
        proc = await worker(etcd, keyspace, "node1")
        try:
            await registration(store, keyspace, "node1")
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDHA_")}
            agent = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "etcdha", "agent", "start", "--node", "node1"),
                *("--endpoints", ",".join(etcd.endpoints), "--prefix", keyspace.prefix),
                *("--cluster", keyspace.cluster, "--run-dir", str(tmp_path)),
                *("--listen", f"127.0.0.1:{port}"),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            _, err = await asyncio.wait_for(agent.communicate(), 30)
            assert agent.returncode == 1, err.decode()
            assert "checker name node1 is in use by a live worker" in err.decode()
            assert await store.get(keyspace.member("node1")) is None
            assert proc.returncode is None  # the worker goes on
        finally:
            await stop(proc)
