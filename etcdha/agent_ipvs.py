"""The agent's IPVS duties: feeding the tables, standby copies, kernel settings.

- The reconciler's inputs (config, health verdicts under the spec's policy,
  drains) are recomputed from a mirror of the agent's watched keys a moment
  after any of them changes, and handed to the :class:`~etcdha.ipvs.reconcile.Feed`.
- The leader's table is the group's ``ipvs`` resource (started and stopped by
  the group's runner, its status written under the group's term).
- Every group this node does not lead gets a standby copy: the same table kept
  warm in this kernel (or none, when the config turns warm copies off).
- The connection sync daemons follow this node's groups as a whole: the master
  while it leads any group with a sync daemon, the backup while any such group
  is led elsewhere or vacant (:mod:`etcdha.ipvs.syncd`).
- The kernel settings the services need are checked, set when the config says
  the agent manages them, and reported in members/<node>.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from etcdha.ipvs.inputs import InputsMirror, inputs_from_kvs
from etcdha.ipvs.model import ServiceKey
from etcdha.ipvs.preflight import Finding, PreflightError, fix, preflight
from etcdha.ipvs.reconcile import DEBOUNCE, Feed, IPVSTable, install, write_status
from etcdha.ipvs.syncd import SyncDaemons, daemon_roles
from etcdha.ipvs.text import from_json
from etcdha.keyspace import KeyKind, Keyspace
from etcdha.resources import ResourceError
from etcdha.spec import ClusterSpec, IPVSResource
from etcdha.store import EtcdError, KeyValue, Store, WatchEvent

log = logging.getLogger(__name__)

RETRY_STANDBY = 10.0  # seconds between attempts to start a standby copy that failed
INLINE_KEYS = 500  # fewer input keys than this are aggregated on the loop (about 1 ms)


def ipvs_settings(spec: ClusterSpec, group: str) -> IPVSResource | None:
    g = next((g for g in spec.groups if g.name == group), None)
    if g is None:
        return None
    return next((r for r in g.resources if isinstance(r, IPVSResource)), None)


class IPVSDuties:
    def __init__(
        self,
        node: str,
        store: Store,
        ks: Keyspace,
        term_of: Callable[[str], int | None],
        lease_of: Callable[[], int] = lambda: 0,
    ) -> None:
        self.node = node
        self.store = store
        self.ks = ks
        self.term_of = term_of  # the group's leader-key create revision while we lead it
        self.lease_of = lease_of  # the status goes with the leader's lease
        self.feed = Feed()
        self.mirror = InputsMirror(ks)
        self.dirty = asyncio.Event()
        self.revision = 0
        self.standby: dict[str, tuple[IPVSResource, IPVSTable]] = {}
        self.daemons = SyncDaemons()
        self._failed: dict[str, float] = {}  # group -> when its standby copy last failed
        self._said: set[str] = set()
        self.kernel: list[Finding] = []

    def install(self) -> None:
        install(self.feed, on_applied=self._applied)

    # -- inputs

    def load(self, kvs: list[KeyValue], revision: int) -> None:
        """A full read: the mirror, and the services applied before (status keys)."""
        self.mirror.load(kvs)
        self.revision = revision
        for kv in kvs:
            parsed = self.ks.classify(kv.key)
            if parsed is not None and parsed.kind is KeyKind.STATUS_IPVS:
                keys = _applied_services(kv)
                if keys:
                    self.feed.remember(parsed.name, keys)
        self.dirty.set()

    def apply(self, event: WatchEvent, revision: int) -> None:
        if self.mirror.apply(event):
            self.revision = revision
            self.dirty.set()

    def config_changed(self) -> None:
        self.dirty.set()

    async def run_inputs(self, spec_of: Callable[[], tuple[ClusterSpec | None, int]]) -> None:
        """Recompute the inputs a moment after the keys they come from changed."""
        while True:
            await self.dirty.wait()
            await asyncio.sleep(DEBOUNCE)
            self.dirty.clear()
            spec, config_revision = spec_of()
            if spec is None or not any(ipvs_settings(spec, g.name) for g in spec.groups):
                continue  # no IPVS table in the config: nothing reads the verdicts here
            kvs, revision = self.mirror.snapshot(), self.revision

            aggregate = functools.partial(
                inputs_from_kvs,
                self.ks,
                kvs,
                revision,
                spec=spec,
                config_revision=config_revision,
            )
            # Thousands of health keys take a while to aggregate: then in a thread.
            read = await asyncio.to_thread(aggregate) if len(kvs) > INLINE_KEYS else aggregate()
            for problem in read.problems:
                if problem not in self._said:
                    self._said.add(problem)
                    log.warning("IPVS inputs: %s", problem)
            i = read.inputs
            self.feed.update(
                spec=spec,
                config_revision=config_revision,
                verdicts=i.verdicts,
                health_revision=revision,
                drains=i.drains,
                drain_revision=revision,
                weights=i.weights,
            )

    async def _applied(self, group: str, payload: dict[str, Any]) -> None:
        term = self.term_of(group)
        if term is None:
            return
        try:
            if not await write_status(self.store, self.ks, group, term, payload, self.lease_of()):
                log.info("group %s: not writing the IPVS status: term %d is over", group, term)
        except EtcdError as e:
            log.warning("group %s: could not write the IPVS status: %s", group, e)

    # -- standby copies

    async def follow_roles(self, spec: ClusterSpec, leading: dict[str, bool]) -> None:
        """A standby copy for every IPVS group this node does not lead, none for
        those it leads (their resource has the table); the sync daemons as the
        node's groups need them."""
        node = next((n for n in spec.nodes if n.name == self.node), None)
        wanted: dict[str, IPVSResource] = {}
        if node is not None:
            for g in spec.groups:
                settings = ipvs_settings(spec, g.name)
                if settings is not None and not leading.get(g.name, False):
                    wanted[g.name] = settings
        for group in list(self.standby):
            if self.standby[group][0] != wanted.get(group):
                _, table = self.standby.pop(group)
                await table.stop()
        # Before new standby copies, which may take a while to fill on a large table.
        await self.daemons.follow(*daemon_roles(spec, self.node, leading))
        for group, settings in wanted.items():
            if group in self.standby:
                continue
            if time.monotonic() - self._failed.get(group, -RETRY_STANDBY) < RETRY_STANDBY:
                continue
            await self._start_standby(group, settings)

    async def _start_standby(self, group: str, settings: IPVSResource) -> None:
        table = IPVSTable(group, self.feed, settings=settings, role="standby")
        try:
            await table.start()
        except ResourceError as e:
            self._failed[group] = time.monotonic()
            log.error(
                "group %s: cannot keep a standby copy of the IPVS table: %s (trying again "
                "in %.0fs)",
                group,
                e,
                RETRY_STANDBY,
            )
            await table.stop()
            return
        self._failed.pop(group, None)
        self.standby[group] = (settings, table)
        log.info("group %s: %s", group, table.describe())

    async def audit(self) -> None:
        for _, table in list(self.standby.values()):
            try:
                await table.audit()
            except ResourceError as e:
                log.error("group %s: %s", table.group, e)
        await self.daemons.audit()

    async def close(self, *, stop_daemons: bool) -> None:
        """Standby copies stay in the kernel; the sync daemons go with `stop_daemons`
        (a stop that hands over), else they stay as they are (a planned restart)."""
        for _, table in self.standby.values():
            with contextlib.suppress(ResourceError):
                await table.stop()
        self.standby.clear()
        if stop_daemons:
            await self.daemons.stop()
        self.daemons.close()

    # -- kernel settings

    async def check_kernel(self, spec: ClusterSpec) -> list[Finding]:
        """The settings this node's IPVS groups need; fixed where the config says
        the agent manages them. Returns those still not right."""
        groups = [g.name for g in spec.groups if ipvs_settings(spec, g.name) is not None]
        if self.node not in spec.node_names or not groups:
            self.kernel = []
            return []
        findings: dict[str, Finding] = {}
        for group in groups:
            found = await asyncio.to_thread(preflight, spec, group)
            settings = ipvs_settings(spec, group)
            if settings is not None and settings.manage_sysctls:
                needed = [f for f in found if f.required and not f.ok]
                if needed:
                    found = [f for f in found if f not in needed] + await self._fix(needed)
            for f in found:
                findings.setdefault(f.setting, f)
        bad = [f for f in findings.values() if not f.ok]
        for f in bad:
            key = f"kernel:{f.setting}={f.actual}"
            if key not in self._said:
                self._said.add(key)
                log.warning("kernel setting: %s", f)
        self.kernel = bad
        return bad

    async def _fix(self, needed: list[Finding]) -> list[Finding]:
        try:
            fixed = await asyncio.to_thread(fix, needed)
        except PreflightError as e:
            log.error("cannot set the kernel settings the config needs: %s", e)
            return needed
        for f in fixed:
            log.info(
                "set %s to %s (the config lets the agent manage it): %s", f.setting, f.actual, f.why
            )
        return fixed

    def member_data(self) -> list[dict[str, object]]:
        return [f.to_json() for f in self.kernel]


def _applied_services(kv: KeyValue) -> set[ServiceKey]:
    """The services a status/<group>/ipvs value says were applied (none if unreadable)."""
    try:
        data = json.loads(kv.value)
        table = data.get("table") if isinstance(data, dict) else None
        return set(from_json(table).keys()) if isinstance(table, list) else set()
    except (ValueError, TypeError, KeyError, AttributeError):
        return set()
