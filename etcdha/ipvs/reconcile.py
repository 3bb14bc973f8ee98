"""The IPVS table as a group resource: desired from config + health, kept in the kernel.

The agent owns one :class:`Feed` and tells it what it learns from etcd::

    feed = Feed()
    install(feed, on_applied=...)          # registers the group resource factory
    feed.update(spec=spec, config_revision=rev)
    feed.update(verdicts={(service_seg, real_seg): up, ...}, health_revision=rev)
    feed.update(drains={(service_seg, real_seg), ...}, drain_revision=rev)
    feed.remember("lvs", keys)             # services applied before (status/<group>/ipvs)

Each group's ``ipvs`` resource (:class:`IPVSTable`) reconciles when it starts,
a moment after every change of the feed, and on the group's audits. A
reconcile diffs the desired table against the kernel's and applies the
difference through netlink; services the config does not name are never
touched. At start and on audits it dumps the kernel table first (the resync
that repairs drift, spaced out to 20 times the dump's duration so a huge table
does not keep the kernel busy); after a feed change it diffs against what its
last reconcile left (a large table's dump costs far more than the change),
and dumps again at once if the kernel refuses anything. Stopping the resource leaves the
table in place (a warm copy, so a takeover only moves addresses), unless the
config no longer gives the group any service: then the group's services go.

After a reconcile that changed something (or used new revisions), ``on_applied``
gets the group and a status payload; :func:`write_status` stores it under
``status/<group>/ipvs`` guarded by the leader key's create revision (the term).
An IPVSTable in role "standby" keeps the same table for a standby, without status.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from etcdha import metrics, resources
from etcdha.aio import cancel_and_wait
from etcdha.events import now_rfc3339
from etcdha.ipvs.desired import Plan, compiled_reals, named_services, plan
from etcdha.ipvs.diff import Op, OpKind, apply_ops, diff
from etcdha.ipvs.inputs import Inputs
from etcdha.ipvs.model import ServiceKey, Table
from etcdha.ipvs.netlink import IPVSError, NetlinkBackend, OpError
from etcdha.ipvs.text import to_ipvsadm, to_json
from etcdha.keyspace import Keyspace
from etcdha.resources import HeldAddress, ResourceError
from etcdha.spec import ClusterSpec, IPVSResource, Node
from etcdha.store import Compare, Store
from etcdha.store import Op as StoreOp

log = logging.getLogger(__name__)

DEBOUNCE = 0.0  # a yield: changes already queued make one reconcile (more that
# arrive while it runs make the next one)
INLINE_OPS = 64  # fewer kernel changes than this are sent from the loop, not a thread
INLINE_REALS = 1000  # smaller tables are planned on the loop after a health change
MIN_RESYNC = 1.0  # seconds between audit resyncs, at least
RESYNC_FACTOR = 20  # ... and at least this many times the last reconcile's duration
STATUS_TABLE_LIMIT = 512 * 1024  # bytes of JSON: larger tables go to status as a digest
LOG_OPS = 20  # more changes than this are logged as a summary


class Feed:
    """What the IPVS resources need to know, kept up to date by the agent."""

    def __init__(self) -> None:
        self.inputs = Inputs()
        self._listeners: set[asyncio.Event] = set()
        self._remembered: dict[str, set[ServiceKey]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def update(
        self,
        *,
        spec: ClusterSpec | None = None,
        config_revision: int | None = None,
        verdicts: Mapping[tuple[str, str], bool] | None = None,
        health_revision: int | None = None,
        drains: Collection[tuple[str, str]] | None = None,
        drain_revision: int | None = None,
        weights: Mapping[tuple[str, str], int] | None = None,
    ) -> None:
        """Replace what is given (a whole new set of verdicts or drains, not a delta)
        and wake every IPVS resource. Verdicts: (service segment, real segment) ->
        True up / False down; a real without a verdict is up."""
        i = self.inputs
        self.inputs = Inputs(
            spec if spec is not None else i.spec,
            config_revision if config_revision is not None else i.config_revision,
            dict(verdicts) if verdicts is not None else i.verdicts,
            health_revision if health_revision is not None else i.health_revision,
            frozenset(drains) if drains is not None else i.drains,
            drain_revision if drain_revision is not None else i.drain_revision,
            dict(weights) if weights is not None else i.weights,
        )
        for event in self._listeners:
            event.set()

    def remember(self, group: str, keys: Iterable[ServiceKey]) -> None:
        """Services this group applied before (e.g. read from status/<group>/ipvs):
        those the config has dropped since are deleted by the next reconcile."""
        self._remembered.setdefault(group, set()).update(keys)

    def remembered(self, group: str) -> set[ServiceKey]:
        return set(self._remembered.get(group, ()))

    def _replace_remembered(self, group: str, keys: Iterable[ServiceKey]) -> None:
        self._remembered[group] = set(keys)

    def lock(self, group: str) -> asyncio.Lock:
        """One lock per group: the leader's table and a standby's copy of it in the
        same agent never reconcile the same services at once."""
        return self._locks.setdefault(group, asyncio.Lock())

    def listen(self) -> asyncio.Event:
        event = asyncio.Event()
        self._listeners.add(event)
        return event

    def unlisten(self, event: asyncio.Event) -> None:
        self._listeners.discard(event)


@dataclass
class ReconcileResult:
    group: str
    plan: Plan
    ops: list[Op]
    errors: list[OpError]
    duration: float
    inputs: Inputs
    after: Table = field(default_factory=Table)  # the kernel's services after it, as we know
    dumped: bool = True  # the kernel was read first (not our belief of it)

    @property
    def table(self) -> Table:
        return self.plan.table


Backend = NetlinkBackend
AppliedHook = Callable[[str, dict[str, Any]], Awaitable[None]]


async def reconcile(
    backend: Backend,
    group: str,
    inputs: Inputs,
    managed: Collection[ServiceKey] = (),
    *,
    believed: Table | None = None,
    empty: bool = False,
) -> ReconcileResult:
    """Bring the kernel in line with the group's desired table; raises IPVSError
    when the kernel table cannot be read or written at all.

    `believed`: what the kernel holds for these services as far as we know (the
    result of our last reconcile); given, the kernel is not dumped first, which
    on a large table is most of the cost. A refused operation then means the
    belief was wrong: the caller reconciles again without it.

    `empty`: want none of the group's services (a standby without a warm copy).
    """
    started = time.monotonic()
    if inputs.spec is None:
        return ReconcileResult(group, Plan(Table()), [], [], 0.0, inputs, Table(), False)
    # In a thread: a new large config takes a while to parse (health changes do not).
    if empty:
        wanted = Plan(Table())
    else:
        args = (inputs.spec, group, inputs.verdicts, inputs.drains, inputs.weights)
        # A health change on a small compiled spec takes well under a millisecond;
        # a new config's first plan, or a large table, goes to a thread.
        if (compiled_reals(inputs.spec, group) or INLINE_REALS) < INLINE_REALS:
            wanted = plan(*args)
        else:
            wanted = await asyncio.to_thread(plan, *args)
    keys = set(managed) | set(wanted.table.keys())
    dumped = believed is None
    if believed is None:
        current = await asyncio.to_thread(backend.dump, keys)
    else:
        current = believed.only(keys)
    ops = diff(current, wanted.table, keys)
    if len(ops) < INLINE_OPS:
        errors = backend.apply(ops) if ops else []  # one send and its ack: microseconds
    else:
        errors = await asyncio.to_thread(backend.apply, ops)
    duration = time.monotonic() - started
    metrics.ipvs_reconcile_duration.labels(group).observe(duration)
    metrics.ipvs_desired_services.labels(group).set(len(wanted.table))
    metrics.ipvs_desired_destinations.labels(group).set(wanted.table.dest_count)
    metrics.ipvs_fallback_active.labels(group).set(len(wanted.fallback_active))
    failed = {id(e.op) for e in errors}
    done = [op for op in ops if id(op) not in failed]
    for op in done:
        metrics.ipvs_rule_changes.labels(group, op.kind.value).inc()
    if errors:
        metrics.ipvs_reconcile_errors.labels(group, "refused").inc(len(errors))
    after = apply_ops(current, done).only(keys)
    return ReconcileResult(group, wanted, ops, errors, duration, inputs, after, dumped)


def _remember_applied(feed: Feed, result: ReconcileResult) -> None:
    """The group's services are now those applied, and any whose delete failed."""
    kept = {e.op.service.key for e in result.errors if e.op.kind is OpKind.DELETE_SERVICE}
    feed._replace_remembered(result.group, set(result.table.keys()) | kept)


def _managed(feed: Feed, group: str) -> set[ServiceKey]:
    spec = feed.inputs.spec
    named = named_services(spec, group) if spec is not None else set()
    return named | feed.remembered(group)


def _describe_op(op: Op) -> str:
    d = op.dest
    key = op.service.key
    if op.kind is OpKind.ADD_SERVICE:
        return f"added service {key} ({op.service.scheduler})"
    if op.kind is OpKind.EDIT_SERVICE:
        return f"changed service {key} ({op.service.scheduler})"
    if op.kind is OpKind.DELETE_SERVICE:
        return f"deleted service {key}"
    assert d is not None
    if op.kind is OpKind.ADD_DEST:
        return f"added {d} to {key} ({d.forward.spec_name}, weight {d.weight})"
    if op.kind is OpKind.EDIT_DEST:
        return f"set {d} of {key} to {d.forward.spec_name}, weight {d.weight}"
    return f"removed {d} from {key}"


def _log_result(result: ReconcileResult, what: str) -> None:
    if len(result.ops) > LOG_OPS:
        counts: dict[str, int] = {}
        for op in result.ops:
            counts[op.kind.value] = counts.get(op.kind.value, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in counts.items())
        log.info(
            "group %s: %s made %d IPVS changes in %.2fs (%s)",
            result.group,
            what,
            len(result.ops),
            result.duration,
            summary,
        )
    else:
        for op in result.ops:
            log.info("group %s: %s", result.group, _describe_op(op))
    for err in result.errors[:LOG_OPS]:
        log.error("group %s: the kernel refused to %s: %s", result.group, err.op, err)
    if len(result.errors) > LOG_OPS:
        log.error(
            "group %s: and %d more refused IPVS changes", result.group, len(result.errors) - LOG_OPS
        )


def status_payload(result: ReconcileResult) -> dict[str, Any]:
    """What status/<group>/ipvs holds: the applied table (JSON, or only its digest
    when large), the revisions used, and what was refused."""
    table = to_json(result.table)
    text = json.dumps(table, separators=(",", ":"))
    payload: dict[str, Any] = {
        "applied_at": now_rfc3339(),
        "config_revision": result.inputs.config_revision,
        "health_revision": result.inputs.health_revision,
        "drain_revision": result.inputs.drain_revision,
        "services": len(result.table),
        "destinations": result.table.dest_count,
        "fallback_active": [k.segment for k in result.plan.fallback_active],
        "rules_sha256": hashlib.sha256(to_ipvsadm(result.table).encode()).hexdigest(),
        "changes": len(result.ops),
        "refused": [str(e) for e in result.errors],
    }
    if len(text) <= STATUS_TABLE_LIMIT:
        payload["table"] = table
    else:
        payload["table"] = None
        payload["table_omitted"] = f"{len(text)} bytes of JSON; see `etcdha render`"
    return payload


async def write_status(
    store: Store,
    ks: Keyspace,
    group: str,
    term: int,
    payload: Mapping[str, Any],
    lease: int = 0,
) -> bool:
    """Put status/<group>/ipvs if we still lead the group: a txn comparing the
    leader key's create revision with `term`. False when the term is over."""
    result = await store.txn(
        [Compare.create_revision(ks.leader(group), "==", term)],
        [StoreOp.put(ks.status_ipvs(group), json.dumps(payload).encode(), lease=lease)],
    )
    return result.succeeded


class IPVSTable:
    """A group's `ipvs` resource (role "leader"), or a standby's copy of it
    (role "standby": no status, and no table at all when the config turns the
    warm copy off). The sync daemons are the node's, not a group's: see
    :mod:`etcdha.ipvs.syncd`."""

    def __init__(
        self,
        group: str,
        feed: Feed,
        *,
        settings: IPVSResource | None = None,
        role: str = "leader",
        on_applied: AppliedHook | None = None,
        backend_factory: Callable[[], Backend] = NetlinkBackend,
    ) -> None:
        self.group = group
        self.feed = feed
        self.settings = settings if settings is not None else IPVSResource()
        self.role = role
        self.on_applied = on_applied
        self.backend_factory = backend_factory
        self.backend: Backend | None = None
        self.last: ReconcileResult | None = None
        self._lock = feed.lock(group)
        self._task: asyncio.Task[None] | None = None
        self._event: asyncio.Event | None = None
        self._last_dump = 0.0  # monotonic time of the last reconcile that read the kernel
        self._dump_duration = 0.0
        self._believed: Table | None = None  # the kernel's services after our last reconcile
        self._reported: tuple[Any, ...] | None = None
        self._refused: set[str] = set()

    @property
    def _empty(self) -> bool:
        return self.role == "standby" and not self.settings.warm_copy

    def describe(self) -> str:
        what = "ipvs table" if self.role == "leader" else "standby copy of the ipvs table"
        if self.last is None:
            return f"{what} of group {self.group}"
        t = self.last.table
        return f"{what} of group {self.group} ({len(t)} services, {t.dest_count} destinations)"

    def fence_addresses(self) -> list[HeldAddress]:
        return []

    async def _backend(self) -> Backend:
        if self.backend is None:
            try:
                self.backend = await asyncio.to_thread(self.backend_factory)
            except (IPVSError, OSError) as e:
                raise ResourceError(f"cannot reach the kernel's IPVS table: {e}") from e
        return self.backend

    async def sync(self, why: str) -> ReconcileResult:
        """One reconcile now; raises ResourceError if the kernel could not be reached.
        After a feed change it trusts its belief of the kernel (no dump); at start,
        on audits, and whenever the kernel refused a change, it reads the kernel."""
        async with self._lock:
            trust = why not in ("start", "resync") and self._believed is not None
            result = await self._sync_locked(why, self._believed if trust else None)
            if trust and result.errors:
                log.info(
                    "group %s: the kernel refused a change; reading its IPVS table again",
                    self.group,
                )
                result = await self._sync_locked("resync", None)
        await self._report(result)
        return result

    async def _sync_locked(self, why: str, believed: Table | None) -> ReconcileResult:
        backend = await self._backend()
        managed = _managed(self.feed, self.group)
        try:
            result = await reconcile(
                backend,
                self.group,
                self.feed.inputs,
                managed,
                believed=believed,
                empty=self._empty,
            )
        except (IPVSError, OSError) as e:
            metrics.ipvs_reconcile_errors.labels(self.group, "failed").inc()
            self._believed = None
            raise ResourceError(f"IPVS reconcile ({why}) failed: {e}") from e
        finally:
            if believed is None:
                self._last_dump = time.monotonic()
        if result.dumped:
            self._dump_duration = result.duration
        self._believed = None if result.errors else result.after
        _remember_applied(self.feed, result)
        # A refused change is tried again on every reconcile: say so once.
        fresh = [op for op in result.ops if str(op) not in self._refused]
        if why == "resync" and fresh:
            log.warning("group %s: the kernel's IPVS table had drifted; repairing it", self.group)
        _log_result(
            ReconcileResult(
                result.group,
                result.plan,
                fresh,
                [e for e in result.errors if str(e.op) not in self._refused],
                result.duration,
                result.inputs,
            ),
            why,
        )
        self._refused = {str(e.op) for e in result.errors}
        self.last = result
        return result

    async def _report(self, result: ReconcileResult) -> None:
        if self.on_applied is None or self.role != "leader":
            return
        i = result.inputs
        # The table follows from the inputs: same revisions, nothing changed,
        # same refusals: the stored status still holds.
        mark = (
            i.config_revision,
            i.health_revision,
            i.drain_revision,
            tuple(sorted(str(e) for e in result.errors)),
        )
        if mark == self._reported and not result.ops:
            return
        try:
            payload = await asyncio.to_thread(status_payload, result)
            await self.on_applied(self.group, payload)
            self._reported = mark
        except Exception as e:  # the status is informative: never fatal
            log.warning("group %s: could not record the IPVS status: %s", self.group, e)

    async def start(self) -> None:
        await self.sync("start")
        self._event = self.feed.listen()
        self._task = asyncio.create_task(self._follow(), name=f"ipvs {self.group} {self.role}")

    async def _follow(self) -> None:
        assert self._event is not None
        while True:
            await self._event.wait()
            await asyncio.sleep(DEBOUNCE)
            self._event.clear()
            try:
                await self.sync("input change")
            except ResourceError as e:
                log.error("group %s: %s", self.group, e)
            except Exception:  # keep following the feed whatever one reconcile met
                log.exception("group %s: IPVS reconcile failed", self.group)

    async def audit(self) -> None:
        """A resync that repairs drift, spaced out for large tables."""
        spacing = max(MIN_RESYNC, RESYNC_FACTOR * self._dump_duration)
        if time.monotonic() - self._last_dump < spacing or self._lock.locked():
            return
        await self.sync("resync")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._event is not None:
            self.feed.unlisten(self._event)
            self._event = None
        spec = self.feed.inputs.spec
        if spec is not None and not named_services(spec, self.group):
            # The config gives this group no service any more: take ours away.
            await self.sync("stop")
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def install(
    feed: Feed,
    *,
    on_applied: AppliedHook | None = None,
    backend_factory: Callable[[], Backend] = NetlinkBackend,
) -> None:
    """Make every group's `ipvs` resource an IPVSTable fed by `feed`. After each
    reconcile that changed something, `on_applied(group, payload)` is awaited
    (the agent writes it with write_status under the group's term)."""

    def factory(group: str, settings: IPVSResource, node: Node) -> resources.Resource:
        return IPVSTable(
            group,
            feed,
            settings=settings,
            on_applied=on_applied,
            backend_factory=backend_factory,
        )

    resources.register_ipvs(factory)
