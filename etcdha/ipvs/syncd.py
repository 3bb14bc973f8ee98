"""The IPVS connection sync daemon: a director that leads a group runs the master,
one that stands by for a group runs the backup, so that connections survive a
takeover (ipvsadm --start-daemon / --stop-daemon).

The kernel runs at most one master and one backup per network namespace, and
they sync every IPVS connection, whatever its group. So the roles are the
node's, not a group's: the master runs while this node leads at least one
group with a sync daemon, the backup while at least one such group is led
elsewhere (or by nobody); both run when a node leads one group and stands by
for another. :func:`daemon_roles` computes them; :class:`SyncDaemons` keeps
the kernel in line with them. Every group's ``sync_daemon`` names the same
interface and syncid (a cross-field rule of the spec); a node's own name for
the interface comes from its ``interfaces: {sync: ...}``.

The netlink calls run in a thread, so the event loop never waits on the kernel
stopping a daemon thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from etcdha import metrics
from etcdha.ipvs.netlink import IPVSError, NetlinkBackend, SyncDaemon
from etcdha.spec import ClusterSpec, IPVSResource, Node

log = logging.getLogger(__name__)

T = TypeVar("T")
STATES = ("master", "backup")
RETRY = 10.0  # seconds between attempts after the kernel refused a daemon

Where = tuple[str, int]  # (interface, syncid)
Roles = dict[str, Where | None]  # "master" / "backup" -> where it runs, or None: not at all


def _with_backend(backend: NetlinkBackend | None, fn: Callable[[NetlinkBackend], T]) -> T:
    b = backend if backend is not None else NetlinkBackend()
    try:
        return fn(b)
    finally:
        if backend is None:
            b.close()


async def sync_daemons(backend: NetlinkBackend | None = None) -> list[SyncDaemon]:
    """The running sync daemons."""
    return await asyncio.to_thread(_with_backend, backend, lambda b: b.daemons())


async def ensure_sync_daemon(
    state: str,
    interface: str,
    syncid: int = 0,
    *,
    backend: NetlinkBackend | None = None,
) -> bool:
    """Have the `state` (master/backup) daemon run on `interface` with `syncid`;
    restarted when it runs with other settings. True if anything was started."""

    def run(b: NetlinkBackend) -> bool:
        running = [d for d in b.daemons() if d.state == state]
        if running and (running[0].interface, running[0].syncid) == (interface, syncid):
            return False
        if running:
            b.stop_daemon(state)
        b.start_daemon(state, interface, syncid)
        return True

    return await asyncio.to_thread(_with_backend, backend, run)


async def stop_sync_daemon(state: str, backend: NetlinkBackend | None = None) -> None:
    """Stop the `state` daemon; no error when it is not running."""
    await asyncio.to_thread(_with_backend, backend, lambda b: b.stop_daemon(state))


def sync_interface(settings: IPVSResource, node: Node) -> str | None:
    """The sync daemon's interface on this node: its own name under `sync` in the
    node's interfaces, else the resource's."""
    if settings.sync_daemon is None:
        return None
    return node.interfaces.get("sync", settings.sync_daemon.interface)


def daemon_roles(
    spec: ClusterSpec, node_name: str, leading: Mapping[str, bool]
) -> tuple[Roles, dict[str, list[str]]]:
    """The daemons this node needs, and for each the groups that need it.

    `leading`: group -> whether this node leads it now. A node outside the config
    needs none."""
    node = next((n for n in spec.nodes if n.name == node_name), None)
    roles: Roles = {state: None for state in STATES}
    why: dict[str, list[str]] = {state: [] for state in STATES}
    if node is None:
        return roles, why
    for g in spec.groups:
        settings = next((r for r in g.resources if isinstance(r, IPVSResource)), None)
        if settings is None or settings.sync_daemon is None:
            continue
        interface = sync_interface(settings, node)
        assert interface is not None
        state = "master" if leading.get(g.name, False) else "backup"
        # The spec makes every group's settings agree; the first group's stand.
        if roles[state] is None:
            roles[state] = (interface, settings.sync_daemon.syncid)
        why[state].append(g.name)
    return roles, why


def _describe(state: str, where: Where | None) -> str:
    if where is None:
        return f"no {state}"
    return f"{state} on {where[0]} (syncid {where[1]})"


def _apply(b: NetlinkBackend, wanted: Roles) -> tuple[list[str], dict[str, Exception]]:
    """Bring both daemons in line: (what was changed, what failed per state)."""
    running = {d.state: (d.interface, d.syncid) for d in b.daemons()}
    done: list[str] = []
    failed: dict[str, Exception] = {}
    for state in STATES:
        want, have = wanted.get(state), running.get(state)
        if want == have:
            continue
        try:
            if have is not None:
                b.stop_daemon(state)
                done.append(f"stopped the {_describe(state, have)}")
            if want is not None:
                b.start_daemon(state, *want)
                done.append(f"started the {_describe(state, want)}")
        except (IPVSError, OSError) as e:
            failed[state] = e
    return done, failed


class SyncDaemons:
    """This node's master and backup sync daemons, kept as its groups' roles say.

    :meth:`follow` is cheap when the roles have not changed since the kernel was
    last brought in line; :meth:`audit` reads the kernel and repairs it (someone
    stopped a daemon, or a previous agent left one running)."""

    def __init__(self, backend_factory: Callable[[], NetlinkBackend] = NetlinkBackend) -> None:
        self.backend_factory = backend_factory
        self.backend: NetlinkBackend | None = None
        self.wanted: Roles | None = None
        self.why: dict[str, list[str]] = {}
        self._applied: Roles | None = None  # the roles the kernel was last put in line with
        self._failed_at = -RETRY
        self._said: set[str] = set()

    async def follow(self, wanted: Roles, why: dict[str, list[str]]) -> None:
        """The roles are now `wanted` (for the groups in `why`): make it so."""
        self.wanted, self.why = wanted, why
        if wanted == self._applied:
            return
        if time.monotonic() - self._failed_at < RETRY:
            return
        await self._bring_in_line("the roles changed")

    async def audit(self) -> None:
        """Read the kernel and repair what differs from the roles."""
        if self.wanted is None:
            return
        if self._applied is None and time.monotonic() - self._failed_at < RETRY:
            return
        await self._bring_in_line("audit")

    async def stop(self) -> None:
        """Stop both daemons (the agent is leaving and hands its groups over)."""
        await self._bring_in_line("stop", {state: None for state in STATES})
        self.close()

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    async def _bring_in_line(self, why: str, wanted: Roles | None = None) -> None:
        target = wanted if wanted is not None else self.wanted
        assert target is not None
        try:
            if self.backend is None:
                self.backend = await asyncio.to_thread(self.backend_factory)
            backend = self.backend
            done, failed = await asyncio.to_thread(_apply, backend, target)
        except (IPVSError, OSError) as e:
            done, failed = [], {state: e for state in STATES if target.get(state)}
            if not failed:
                failed = {"master": e}
        for change in done:
            log.info(
                "IPVS connection sync daemons: %s (%s)", change, self._reason(why, target, change)
            )
        if failed:
            self._failed_at = time.monotonic()
            self._applied = None
            for state, error in failed.items():
                said = f"{state}:{error}"
                groups = self.why.get(state) or ["-"]
                for group in groups:
                    metrics.ipvs_reconcile_errors.labels(group, "sync-daemon").inc()
                if said not in self._said:
                    self._said.add(said)
                    # Connections would not survive a takeover; the service itself works.
                    log.error(
                        "cannot run the IPVS connection sync daemons as wanted (%s, %s): %s; "
                        "trying again every %.0fs",
                        _describe("master", target.get("master")),
                        _describe("backup", target.get("backup")),
                        error,
                        RETRY,
                    )
            return
        self._said.clear()
        if wanted is None:
            self._applied = dict(target)

    def _reason(self, why: str, target: Roles, change: str) -> str:
        if why == "stop":
            return "the agent hands its groups over and stops"
        state = "master" if "master" in change else "backup"
        groups = ", ".join(self.why.get(state, []))
        if target.get(state) is not None:
            lead = "leads" if state == "master" else "stands by for"
            where = f"this node {lead} {groups}"
        elif state == "master":
            where = "this node leads no group with a sync daemon"
        else:
            where = "no group with a sync daemon is led by another node"
        return f"{where}; the kernel had it otherwise" if why == "audit" else where
