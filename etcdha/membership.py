"""members/<node>: registering this agent, refusing a second live one, and
reclaiming the lease a previous instance left alive for a planned restart."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from etcdha import procs
from etcdha.election import LeaseKeeper
from etcdha.keyspace import Keyspace
from etcdha.store import Compare, Op, Store

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The agent cannot start; the message says why and what to do."""


class AlreadyRunning(StartupError):
    pass


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_is_agent(pid: int) -> bool:
    if not procs.pid_running(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"etcdha" in cmdline


async def register(
    store: Store,
    ks: Keyspace,
    node: str,
    keeper: LeaseKeeper,
    member_value: Callable[[], bytes],
) -> None:
    """Reclaim our lease after a planned restart, or take a new one; refuse to
    run beside a live agent of the same node name."""
    key = ks.member(node)
    existing = await store.get(key)
    if existing is not None and existing.lease:
        try:
            data = json.loads(existing.value)
        except ValueError:
            data = {}
        same_host = data.get("boot_id") == boot_id() and data.get("host") == socket.gethostname()
        pid = data.get("pid")
        if same_host and isinstance(pid, int) and pid != os.getpid() and pid_is_agent(pid):
            raise AlreadyRunning(
                f"node {node} is already live: pid {pid} on this host holds {key}; "
                "stop it first, or give this agent another --node"
            )
        if not same_host:
            ttl = await store.time_to_live(existing.lease)
            raise AlreadyRunning(
                f"node {node} is already live on host {data.get('host', '?')} "
                f"({key}, lease {existing.lease:x}, {ttl}s left); stop that agent or use "
                "another --node (if it crashed, its lease expires within that time)"
            )
        if await keeper.reclaim(existing.lease):
            log.info("planned restart: reclaimed lease %x of pid %s", existing.lease, pid)
            return
    await keeper.grant()
    value = member_value()
    result = await store.txn(
        [Compare.create_revision(key, "==", 0)],
        [Op.put(key, value, lease=keeper.lease_id)],
    )
    if not result.succeeded:
        await keeper.revoke()
        raise AlreadyRunning(f"node {node} registered concurrently by another agent ({key})")
    log.info("member registered: %s under lease %x", key, keeper.lease_id)
