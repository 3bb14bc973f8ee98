"""One live checker per name.

``checkers/<name>``, bound to the checker's lease, says who holds the name
(:func:`claim_name`). A second checker with a name in use refuses to start
(``etcdha checker start``) or, started under a lease that meets a taken name
later, publishes nothing until the name is free;
a registration left by an earlier process on this host that is gone now (a
crash, kill -9) is taken over at once: its lease is revoked, and its stale
verdicts go with it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from etcdha.events import now_rfc3339
from etcdha.keyspace import Keyspace
from etcdha.membership import AlreadyRunning, boot_id
from etcdha.store import (
    Compare,
    Op,
    Store,
)

log = logging.getLogger(__name__)


class CheckerNameInUse(AlreadyRunning):
    """Another live checker holds this checker name."""


def _process_start(pid: int) -> str | None:
    """The start time of a running process (clock ticks since boot), None when
    there is no such process: with the pid it tells a process from a later one
    that reused its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None
    return fields[19]


def _registration(role: str, pid: int) -> bytes:
    return json.dumps(
        {
            "role": role,
            "host": socket.gethostname(),
            "boot_id": boot_id(),
            "pid": pid,
            "pid_start": _process_start(pid),
            "since": now_rfc3339(),
        }
    ).encode()


async def claim_name(
    store: Store, ks: Keyspace, name: str, lease_id: int, role: str, owner_pid: int | None = None
) -> None:
    """Hold ``checkers/<name>`` under ``lease_id``, or raise CheckerNameInUse.

    Taken: by this lease already (nothing to do); by a live checker elsewhere or
    by a running process on this host (refused); by a process of this host that
    is gone, or by this very process under an older lease (taken over).

    ``owner_pid``: the process the registration names, when it is not this one
    (the agent's checker process registers the agent, whose lease it uses).
    """
    me = owner_pid or os.getpid()
    key = ks.checker(name)
    for _ in range(5):
        result = await store.txn(
            [Compare.create_revision(key, "==", 0)],
            [Op.put(key, _registration(role, me), lease=lease_id)],
            [Op.get(key)],
        )
        if result.succeeded:
            log.info("checker name %s registered under lease %x", name, lease_id)
            return
        kvs = result.responses[0].kvs
        if not kvs:
            continue  # gone in between: try again
        held = kvs[0]
        try:
            data = json.loads(held.value)
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        pid, started = data.get("pid"), data.get("pid_start")
        if held.lease == lease_id:
            if pid != me or started != _process_start(me):
                # Our lease, reclaimed by a new process (an agent's planned restart).
                await store.txn(
                    [Compare.lease(key, "==", lease_id)],
                    [Op.put(key, _registration(role, me), lease=lease_id)],
                )
            return
        this_host = data.get("host") == socket.gethostname() and data.get("boot_id") == boot_id()
        gone = this_host and (
            not isinstance(pid, int)
            or _process_start(pid) is None
            or _process_start(pid) != started
            or pid == me
        )
        if held.lease and gone and data.get("role") == "agent" and pid != me:
            # Never revoke a crashed agent's lease: its addresses stay until its
            # fence guard removes them at the lease's deadline.
            ttl = await store.time_to_live(held.lease)
            raise CheckerNameInUse(
                f"checker name {name} belongs to the agent of pid {pid} on this host, which is"
                f" gone; its lease {held.lease:x} expires in {ttl}s (or start that agent again)"
            )
        if held.lease and not gone:
            what = f"a live {data.get('role', 'checker')}"
            if this_host:
                raise CheckerNameInUse(
                    f"checker name {name} is in use by {what} on this host (pid {pid}, {key}):"
                    " stop it first, or give this checker another --name"
                )
            ttl = await store.time_to_live(held.lease)
            raise CheckerNameInUse(
                f"checker name {name} is in use by {what} on host {data.get('host', '?')}"
                f" (pid {pid}, {key}, lease {held.lease:x}, {ttl}s left): stop it, or give"
                " this checker another --name (if it crashed, its lease expires within that time)"
            )
        if held.lease and pid != me:
            # An earlier incarnation on this host: its verdicts are stale.
            log.info(
                "checker name %s: taking over from pid %s, gone; revoking its lease %x",
                name,
                pid,
                held.lease,
            )
            await store.revoke(held.lease)
        else:
            await store.txn([Compare.mod_revision(key, "==", held.mod_revision)], [Op.delete(key)])
    raise CheckerNameInUse(
        f"checker name {name}: {key} keeps changing; is another checker starting?"
    )
