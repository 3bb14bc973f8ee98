"""members/<node>: one live agent per node name.

- On a host, a lock file in the run directory (``agent-<cluster>-<node>.lock``,
  held for the agent's life) keeps a second agent with the same run directory
  from starting.
- Across hosts and containers (where pids mean nothing: each PID namespace has
  its own), the member key decides. Every agent process has a random instance
  id, written in its member value and in a hand-off file in its run directory
  (``agent-<cluster>-<node>.json``: instance and lease). A live member key is
  reclaimed only by the agent that finds its own hand-off file naming that
  key's instance and lease: the same run directory, after a planned restart or
  a crash. Anything else is a twin, and the new agent refuses to start.
- Every write of the key is guarded: created only where none exists, updated
  only while it is bound to our lease. An agent that lost its lease and finds
  the key taken by another agent meanwhile stops instead of overwriting it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etcdha.election import LeaseKeeper
from etcdha.keyspace import Keyspace
from etcdha.store import Compare, KeyValue, Op, Store

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The agent cannot start; the message says why and what to do."""


class AlreadyRunning(StartupError):
    pass


class Superseded(RuntimeError):
    """Another agent took this node's name while this one had lost its lease."""


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def new_instance() -> str:
    return uuid.uuid4().hex


class RunLock:
    """The per-host lock of one node name (an exclusive flock, released on exit)."""

    def __init__(self, run_dir: Path, cluster: str, node: str) -> None:
        self.path = run_dir / f"agent-{cluster}-{node}.lock"
        self._fd: int | None = None

    def take(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(
                f"another agent on this host already runs under this node name "
                f"(it holds {self.path}); stop it first"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Handoff:
    """The hand-off file: which instance and lease this run directory's agent had."""

    def __init__(self, run_dir: Path, cluster: str, node: str) -> None:
        self.path = run_dir / f"agent-{cluster}-{node}.json"

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, instance: str, lease: int) -> None:
        # A few bytes on the run directory's tmpfs: quick enough for the event loop.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"instance": instance, "lease": lease}))
        tmp.replace(self.path)


def _member(kv: KeyValue | None) -> dict[str, Any]:
    if kv is None:
        return {}
    try:
        data = json.loads(kv.value)
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


async def _describe_holder(store: Store, key: str, kv: KeyValue) -> str:
    data = _member(kv)
    ttl = await store.time_to_live(kv.lease) if kv.lease else -1
    where = f"host {data.get('host', '?')}"
    left = f", {ttl}s left" if ttl >= 0 else ""
    return f"{where} ({key}, lease {kv.lease:x}{left})"


async def register(
    store: Store,
    ks: Keyspace,
    node: str,
    keeper: LeaseKeeper,
    member_value: Callable[[], bytes],
    handoff: Handoff,
    instance: str,
) -> None:
    """Reclaim the lease our run directory's previous agent left (planned restart),
    or take a new one and create members/<node>; refuse beside a live twin."""
    key = ks.member(node)
    existing = await store.get(key)
    if existing is not None and existing.lease:
        previous = handoff.read()
        ours = previous.get("lease") == existing.lease and previous.get("instance") == _member(
            existing
        ).get("instance")
        if not ours:
            holder = await _describe_holder(store, key, existing)
            raise AlreadyRunning(
                f"node {node} is already live on {holder}; stop that agent or use another "
                "--node (if it crashed elsewhere, its lease expires within that time)"
            )
        if await keeper.reclaim(existing.lease):
            result = await store.txn(
                [Compare.lease(key, "==", existing.lease)],
                [Op.put(key, member_value(), lease=existing.lease)],
            )
            if result.succeeded:
                handoff.write(instance, keeper.lease_id)
                log.info(
                    "planned restart: reclaimed lease %x of the previous agent", keeper.lease_id
                )
                return
    await keeper.grant()
    await claim(store, ks, node, keeper, member_value, handoff, instance)


async def claim(
    store: Store,
    ks: Keyspace,
    node: str,
    keeper: LeaseKeeper,
    member_value: Callable[[], bytes],
    handoff: Handoff,
    instance: str,
) -> None:
    """Create members/<node> under our (new) lease, only where none exists."""
    key = ks.member(node)
    result = await store.txn(
        [Compare.create_revision(key, "==", 0)],
        [Op.put(key, member_value(), lease=keeper.lease_id)],
        [Op.get(key)],
    )
    holder = result.responses[0].kvs[0] if result.responses and result.responses[0].kvs else None
    if result.succeeded or (holder is not None and holder.lease == keeper.lease_id):
        handoff.write(instance, keeper.lease_id)
        log.info("member registered: %s under lease %x", key, keeper.lease_id)
        return
    with contextlib.suppress(Exception):
        await keeper.revoke()
    what = await _describe_holder(store, key, holder) if holder else key
    raise AlreadyRunning(f"node {node} was registered meanwhile by another agent, on {what}")


async def update(store: Store, ks: Keyspace, node: str, lease: int, value: bytes) -> bool:
    """Rewrite members/<node> while it is bound to our lease; False if it is not
    (gone with our lease, or another agent's)."""
    key = ks.member(node)
    result = await store.txn([Compare.lease(key, "==", lease)], [Op.put(key, value, lease=lease)])
    return result.succeeded
