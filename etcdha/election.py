"""The agent's lease, its fencing deadline, and leadership of each group.

Safety rests on two rules.

1. A leader drops its addresses before its lease can expire in etcd. The
   deadline is the send time of the last acknowledged keepalive + the lease TTL
   - a margin, on CLOCK_BOOTTIME (etcdha.clock); etcd cannot expire the lease
   before send time + TTL, because it restarts the TTL only when it receives the
   keepalive. While the node may hold addresses, the deadline is also never
   later than the last successful write of its fence record + TTL - margin (see
   fence_record.py). The fence guard process is armed with the same deadline
   and every address the group may hold *before* any is placed, so the rule
   also holds when this process is killed or frozen mid-start.
2. A new leader adds nothing while another director may still hold the
   addresses: it waits until that director's fence record leaves the group
   out, or was last written longer than its TTL ago (election_rules.may_place).

The lease's timings come from the TTL etcd granted (a reclaimed lease keeps
the TTL it was granted with), not from the spec alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from etcdha import clock, metrics
from etcdha.aio import cancel_and_wait
from etcdha.events import event_op, now_rfc3339
from etcdha.fence import FenceClient, FenceError
from etcdha.fence_record import FenceRecord
from etcdha.keyspace import Keyspace
from etcdha.resources import AddressRuntime, HeldAddress, Resource, ResourceError, remove_held
from etcdha.store import Compare, EtcdError, Op, Store

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    pass


class LeaseKeeper:
    """One lease per agent, kept alive; tracks the fencing deadline.

    `ttl`, `interval` and `margin` are those of the lease etcd granted: the
    spec's, unless etcd granted (or a reclaimed lease has) another TTL; then
    the keepalive interval is at most a third of it and the margin leaves room
    for one renewal.
    """

    def __init__(
        self,
        store: Store,
        ttl: float,
        interval: float,
        margin: float,
        on_renew: Callable[[float], Awaitable[None]],
    ) -> None:
        self.store = store
        self.want = (max(2, math.ceil(ttl)), interval, margin)
        self.ttl, self.interval, self.margin = self.want
        self.on_renew = on_renew
        self.lease_id = 0
        self.lease_deadline = 0.0  # from keepalives; clock.now() values
        self.record_deadline: float | None = None  # from fence record writes, while it lists groups
        self.last_ack = 0.0  # clock.now() at the send of the last acknowledged keepalive
        self.lost = asyncio.Event()

    @property
    def deadline(self) -> float:
        """Addresses must be gone by then (a clock.now() value)."""
        if self.record_deadline is None:
            return self.lease_deadline
        return min(self.lease_deadline, self.record_deadline)

    def alive(self) -> bool:
        return self.lease_id != 0 and clock.now() < self.lease_deadline

    def remaining(self) -> float:
        return self.deadline - clock.now()

    def unreachable(self) -> bool:
        """The last keepalive went unanswered."""
        return clock.now() - self.last_ack > 1.2 * self.interval

    def confirmed(self, sent: float | None) -> None:
        """A fence record write that lists groups succeeded (sent then); None: it
        lists none any more."""
        if sent is None:
            self.record_deadline = None
        else:
            self.record_deadline = max(self.record_deadline or 0.0, sent + self.ttl - self.margin)

    def _acked(self, sent: float, ttl: int) -> None:
        self.last_ack = max(self.last_ack, sent)
        self.lease_deadline = max(self.lease_deadline, sent + ttl - self.margin)

    def _use(self, lease_id: int, granted: int) -> None:
        """Take the timings from the TTL etcd granted."""
        want_ttl, want_interval, want_margin = self.want
        self.ttl = granted
        self.interval = min(want_interval, granted / 3)
        self.margin = min(want_margin, (granted - self.interval) / 2)
        if (self.ttl, self.interval, self.margin) != self.want:
            log.warning(
                "lease %x has a TTL of %ds (the config asks for %ds): keepalives every %.2fs "
                "and a fence margin of %.2fs, to fit it",
                lease_id,
                granted,
                want_ttl,
                self.interval,
                self.margin,
            )

    async def probe(self, limit: float) -> bool:
        """Can we reach etcd right now? One keepalive, bounded; counts if it works."""
        if clock.now() - self.last_ack < 0.5 * self.interval:
            return True
        try:
            result = await self.store.keepalive_once(self.lease_id, timeout=limit)
        except EtcdError:
            return False
        if result.ttl > 0:
            self._acked(result.sent_at, result.ttl)
        return True

    def extend(self, deadline: float) -> None:
        """A later deadline vouched for by other means (failsafe promises)."""
        self.lease_deadline = max(self.lease_deadline, deadline)
        if self.record_deadline is not None:
            self.record_deadline = max(self.record_deadline, deadline)

    async def grant(self) -> int:
        sent = clock.now()
        lease = await self.store.grant(self.want[0])
        self.lease_id = lease.id
        self._use(lease.id, lease.ttl)
        self.last_ack = sent
        self.lease_deadline = sent + lease.ttl - self.margin
        self.lost.clear()
        log.info("granted lease %x with TTL %ds", lease.id, lease.ttl)
        return lease.id

    async def reclaim(self, lease_id: int) -> bool:
        """Adopt a lease a previous instance of this agent left alive (planned restart)."""
        try:
            result = await self.store.keepalive_once(lease_id)
        except EtcdError as e:
            log.info("could not reclaim lease %x: %s", lease_id, e)
            return False
        if result.ttl <= 0:
            return False
        self.lease_id = lease_id
        self._use(lease_id, result.ttl)
        self.last_ack = result.sent_at
        self.lease_deadline = result.sent_at + result.ttl - self.margin
        self.lost.clear()
        log.info("reclaimed lease %x left by the previous agent (TTL %ds)", lease_id, result.ttl)
        return True

    async def run(self) -> None:
        """Keep the lease alive until it is lost; then set `lost` and return."""
        while True:
            started = time.monotonic()  # asyncio sleeps on the monotonic clock
            # A whole interval to answer, even past the deadline: a late answer still
            # tells when it was sent, and a shorter wait would never let a slow etcd
            # (or a loaded machine) catch up.
            timeout = max(0.2, self.interval)
            try:
                result = await self.store.keepalive_once(self.lease_id, timeout=timeout)
            except (EtcdError, TimeoutError) as e:
                metrics.keepalive_failures.inc()
                log.warning(
                    "lease keepalive failed (%s); %.1fs left before addresses are dropped",
                    e or "timeout",
                    self.remaining(),
                )
            else:
                metrics.keepalive_duration.observe(clock.now() - result.sent_at)
                if result.ttl <= 0:
                    log.error("lease %x is gone in etcd; all leadership is gone", self.lease_id)
                    self.lost.set()
                    return
                self._acked(result.sent_at, result.ttl)
                await self.on_renew(self.deadline)
                metrics.lease_deadline.set(self.remaining())
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def revoke(self) -> None:
        if self.lease_id:
            try:
                await self.store.revoke(self.lease_id)
            except EtcdError as e:
                log.warning("could not revoke lease %x: %s", self.lease_id, e)
            self.lease_id = 0


@dataclass
class Term:
    revision: int  # the leader key's create revision
    since: str


class Phase(StrEnum):
    idle = "idle"  # holds nothing of the group
    gated = "gated"  # holds the key; waits until no other director may hold the addresses
    starting = "starting"  # the guard knows every address; resources are starting
    active = "active"  # every resource started
    stopping = "stopping"  # giving the group up; an address could not be removed yet


def _address_key(a: HeldAddress) -> tuple[str, str]:
    # An address is the same address whatever its prefix length.
    return (a.ifname, a.ip)


class GroupRunner:
    """Leadership of one resource group on this node."""

    def __init__(
        self,
        name: str,
        node: str,
        store: Store,
        ks: Keyspace,
        fence: FenceClient,
        notify: Callable[[str, str, str], None],
        record: FenceRecord,
        deadline: Callable[[], float],
        wake: Callable[[], None],
    ) -> None:
        self.name = name
        self.node = node
        self.store = store
        self.ks = ks
        self.fence = fence
        self.notify = notify
        self.record = record
        self.deadline = deadline  # the fence deadline, as it moves
        self.wake = wake  # ask the agent for a reconcile pass
        self.resources: list[Resource] = []
        self._keys: list[object] = []  # what each resource was built from
        self.term: Term | None = None  # set while we hold the leader key
        self.released_term = 0  # the last term we handed over (deleted the key of)
        self.phase = Phase.idle
        # Every address this group may have on this node's interfaces: the guard
        # knows each before it is placed and forgets it only once it is gone.
        self.guarded: dict[tuple[str, str], HeldAddress] = {}
        self.failure: str | None = None  # why the last start failed (the agent hands over)
        self._started: list[Resource] = []
        self._failed_stops: set[Resource] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        return self.phase is Phase.active

    @property
    def may_hold(self) -> bool:
        """Addresses of the group may be on this node's interfaces."""
        return self.phase in (Phase.starting, Phase.active, Phase.stopping)

    @property
    def key(self) -> str:
        return self.ks.leader(self.name)

    # -- the config

    async def update(self, keys: list[object], make: Callable[[object], Resource]) -> None:
        """Bring the resources in line with the config: stop those it dropped (in
        reverse), start those it added (in order), leave unchanged ones alone. New
        addresses are guarded before they are placed; removed ones stay guarded
        until they are gone. Errors are logged, never raised."""
        async with self._lock:
            if keys == self._keys:
                return
            old = list(zip(self._keys, self.resources, strict=True))
            plan: list[tuple[object, Resource, bool]] = []
            for key in keys:
                match = next((pair for pair in old if pair[0] == key), None)
                if match is not None:
                    old.remove(match)
                    plan.append((key, match[1], False))
                else:
                    plan.append((key, self._own(make(key)), True))
            if not self.active:
                self._keys = [k for k, _, _ in plan]
                self.resources = [r for _, r, _ in plan]
                return
            log.info("group %s: resources changed in the config; applying the change", self.name)
            fresh = [r for _, r, new in plan if new]
            added: list[tuple[str, str]] = []
            for r in fresh:
                for a in await self._addresses_of(r, quiet=False):
                    if _address_key(a) not in self.guarded:
                        self.guarded[_address_key(a)] = a
                        added.append(_address_key(a))
            try:
                await self._arm()
            except ResourceError as e:
                for k in added:
                    self.guarded.pop(k, None)
                log.error(
                    "group %s: not applying the new resources: %s (trying again at the next "
                    "change or audit)",
                    self.name,
                    e,
                )
                return
            self._keys = [k for k, _, _ in plan]
            await self._stop_resources([r for _, r in reversed(old)])
            self.resources = [r for _, r, _ in plan]
            await self._remove_leftovers()
            for r in fresh:
                try:
                    await r.start()
                    self._started.append(r)
                except ResourceError as e:
                    log.error("group %s: %s", self.name, e)
            await self._arm_quietly()

    # -- the key

    async def campaign(self, lease_id: int, ttl: float, reason: str) -> bool:
        """Create the leader key if nobody holds it; True if we won."""
        value = json.dumps(
            {"node": self.node, "lease": lease_id, "ttl": ttl, "since": now_rfc3339()}
        )
        ops = [
            Op.put(self.key, value.encode(), lease=lease_id),
            event_op(
                self.ks,
                {
                    "type": "leader-acquired",
                    "group": self.name,
                    "node": self.node,
                    "reason": reason,
                },
            ),
        ]
        start = time.monotonic()
        result = await self.store.txn([Compare.create_revision(self.key, "==", 0)], ops)
        metrics.etcd_requests.labels("campaign", "won" if result.succeeded else "lost").observe(
            time.monotonic() - start
        )
        if result.succeeded:
            self.term = Term(result.revision, now_rfc3339())
            log.info(
                "%s won leadership of %s (term %d): %s",
                self.node,
                self.name,
                result.revision,
                reason,
            )
        return result.succeeded

    def adopt(self, term: int) -> bool:
        """A leader key of ours exists (a planned restart, or our deadline passed while
        the lease lived on): carry on with it. Never a term we have handed over
        ourselves: a view that still shows it is only behind."""
        if term <= self.released_term:
            return False
        if self.term is None or self.term.revision != term:
            self.term = Term(term, now_rfc3339())
            log.info("%s carries on leading %s (term %d)", self.node, self.name, term)
        return True

    # -- placing the addresses

    def begin(self) -> None:
        """Start the group's resources in a task of their own (the agent's loop goes
        on meanwhile; a slow start keeps the lease renewed and the guard armed)."""
        if self.phase not in (Phase.idle, Phase.gated) or self.term is None:
            return
        self.phase = Phase.starting
        self.failure = None
        self._task = asyncio.create_task(self._activate(), name=f"start {self.name}")

    async def _activate(self) -> None:
        try:
            async with self._lock:
                await self._place()
        except ResourceError as e:
            self.failure = str(e)
            log.error("group %s: %s; handing over", self.name, e)
        finally:
            self.wake()

    async def _place(self) -> None:
        term = self.term
        if term is None:
            raise ResourceError("the term ended before the resources started")
        # 1. Every address the group may hold, known before any is placed.
        for r in self.resources:
            for a in await self._addresses_of(r, quiet=True):
                self.guarded[_address_key(a)] = a
        # 2. The fence record lists the group: a new leader waits for us from now on.
        self.record.hold(self.name, term.revision)
        try:
            lost = await self.record.write()
        except EtcdError as e:
            raise ResourceError(f"cannot write the fence record: {e}") from e
        if lost:
            for group in lost:
                self.record.lose_key(group)
            if self.name in lost:
                raise ResourceError("the leader key is no longer ours")
            lost_keys = ", ".join(lost)
            log.warning("group %s: the leader keys of %s are gone", self.name, lost_keys)
            try:
                if await self.record.write():
                    raise ResourceError("the leader keys keep changing; not starting")
            except EtcdError as e:
                raise ResourceError(f"cannot write the fence record: {e}") from e
        # 3. The guard knows them all.
        await self._arm()
        # 4. The resources, in order.
        for r in self.resources:
            if clock.now() >= self.deadline():
                raise ResourceError("the fence deadline passed while starting (etcd unreachable?)")
            await r.start()
            self._started.append(r)
        self.phase = Phase.active
        metrics.is_leader.labels(self.name).set(1)
        self._set_state("leader")
        metrics.addresses_assigned.labels(self.name).set(len(self.held()))
        metrics.transitions.labels(self.name, "acquired").inc()
        self.notify(self.name, "leader", f"{self.node} holds {self.name}")

    def _own(self, r: Resource) -> Resource:
        if isinstance(r, AddressRuntime):
            r.allowed = self._may_place
        return r

    def _may_place(self) -> bool:
        """An address may be added now: we hold the term, are starting or leading,
        and the fence deadline lies ahead."""
        return (
            self.term is not None
            and self.phase in (Phase.starting, Phase.active)
            and clock.now() < self.deadline()
        )

    async def _addresses_of(self, r: Resource, *, quiet: bool) -> list[HeldAddress]:
        if isinstance(r, AddressRuntime):
            try:
                await r.resolve()
            except ResourceError:
                if quiet:
                    raise
                return []
        return r.fence_addresses()

    async def audit(self) -> None:
        """Repair drift while we lead. Address audits run under the lock, so a
        handover or a fence never races an address being added back; slower
        audits (scripts) run outside it and stop as soon as we no longer lead."""
        async with self._lock:
            if not self.active or not self._may_place():
                return
            for r in self.resources:
                if r.fence_addresses():
                    await r.audit()
        for r in list(self.resources):
            if not self.active:
                return
            if not r.fence_addresses():
                await r.audit()

    def _set_state(self, state: str) -> None:
        for name in ("leader", "follower", "fenced"):
            metrics.state.labels(self.name, name).set(1 if name == state else 0)

    def held(self) -> list[str]:
        return [f"{a.ip}/{a.prefixlen}" for r in self.resources for a in r.fence_addresses()]

    async def _arm(self) -> None:
        try:
            await self.fence.arm(self.name, self.deadline(), list(self.guarded.values()))
        except FenceError as e:
            # Without the guard a kill -9 could leave the VIP behind: do not lead.
            raise ResourceError(f"the fence guard cannot be armed: {e}") from e

    async def _arm_quietly(self) -> None:
        try:
            await self._arm()
        except ResourceError as e:
            # The guard keeps the previous deadline and fires at it: still safe.
            log.warning("group %s: %s", self.name, e)

    async def renew(self) -> None:
        """A new deadline: the guard gets it (while anything may be held)."""
        if self.may_hold and self.guarded:
            await self._arm_quietly()

    # -- giving it up

    async def _stop_resources(self, resources: list[Resource]) -> None:
        """Stop `resources` (in the order given); an address stays guarded until it
        is gone."""
        for r in resources:
            started = r in self._started
            if started:
                self._started.remove(r)
            addresses = r.fence_addresses()
            if not started and not addresses:
                continue  # a script or table that never started
            try:
                await r.stop()
            except ResourceError as e:
                if r not in self._failed_stops:  # said once; tried again every second
                    self._failed_stops.add(r)
                    log.error("group %s: stopping %s failed: %s", self.name, r.describe(), e)
                continue
            if r in self._failed_stops:
                self._failed_stops.discard(r)
                log.info("group %s: stopped %s on a later try", self.name, r.describe())
            for a in addresses:
                self.guarded.pop(_address_key(a), None)

    async def _remove_leftovers(self) -> None:
        """Guarded addresses no resource places any more (the config dropped them)."""
        placed = {_address_key(a) for r in self.resources for a in r.fence_addresses()}
        for key, a in list(self.guarded.items()):
            if key in placed:
                continue
            try:
                await remove_held(a)
            except ResourceError as e:
                log.error("group %s: %s", self.name, e)
                continue
            self.guarded.pop(key, None)

    async def deactivate(self, direction: str, reason: str) -> bool:
        """Stop the resources in reverse order (no etcd writes but the fence record's
        acknowledgement). True once every address is gone; until then the guard
        stays armed for those left and the record keeps listing the group."""
        task, self._task = self._task, None
        self.failure = None
        if task is not None and not task.done():
            await cancel_and_wait(task)
        async with self._lock:
            was = self.phase
            if was is Phase.idle:
                return True
            if was is not Phase.gated:
                self.phase = Phase.stopping
                await self._stop_resources(list(reversed(self.resources)))
                await self._remove_leftovers()
            if self.guarded and was is not Phase.gated:
                if was is not Phase.stopping:
                    log.error(
                        "group %s: %s still on this node; the guard stays armed for it and "
                        "the group is not released until it is gone",
                        self.name,
                        ", ".join(f"{a.ip} on {a.ifname}" for a in self.guarded.values()),
                    )
                await self._arm_quietly()
                return False
            self.guarded.clear()
            self.phase = Phase.idle
            if was in (Phase.active, Phase.starting, Phase.stopping):
                metrics.is_leader.labels(self.name).set(0)
                self._set_state("fenced" if direction == "fenced" else "follower")
                metrics.addresses_assigned.labels(self.name).set(0)
                if was is not Phase.stopping:
                    metrics.transitions.labels(self.name, direction).inc()
                    state = "fault" if direction == "fenced" else "backup"
                    self.notify(self.name, state, reason)
            try:
                await self.fence.disarm(self.name)
            except FenceError as e:
                log.warning("group %s: could not disarm the fence guard: %s", self.name, e)
            self.record.release(self.name)
            return True

    async def acknowledge(self) -> None:
        """Tell etcd the group's addresses are gone (the fence record without it)."""
        if self.record.settled:
            return
        try:
            await self.record.write()
        except EtcdError as e:
            log.warning(
                "group %s: cannot write the fence record yet (%s); trying again", self.name, e
            )

    async def handover(self, reason: str, extra_ops: list[Op] | None = None) -> bool:
        """Graceful: addresses off first, then the leader key goes (with the fence
        record's acknowledgement), so the next node takes over at once instead of
        after the TTL. False while an address could not be removed: the key stays."""
        if not await self.deactivate("released", reason):
            return False
        term = self.term
        self.term = None
        if term is None:
            await self.acknowledge()
            return True
        self.released_term = max(self.released_term, term.revision)
        groups = dict(self.record.groups)
        ops = [
            Op.delete(self.key),
            self.record.put_op(),
            event_op(
                self.ks,
                {
                    "type": "leader-released",
                    "group": self.name,
                    "node": self.node,
                    "reason": reason,
                },
            ),
            *(extra_ops or []),
        ]
        if await self._delete_key(term.revision, ops):
            self.record.wrote(groups)
        await self.acknowledge()
        log.info("%s handed %s over: %s", self.node, self.name, reason)
        return True

    async def _delete_key(self, term: int, ops: list[Op]) -> bool:
        start = time.monotonic()
        try:
            result = await self.store.txn([Compare.create_revision(self.key, "==", term)], ops)
            metrics.etcd_requests.labels("handover", "ok").observe(time.monotonic() - start)
            return result.succeeded
        except EtcdError as e:
            metrics.etcd_requests.labels("handover", "error").observe(time.monotonic() - start)
            log.warning(
                "group %s: could not delete the leader key (%s); trying again", self.name, e
            )
            return False

    async def finish_release(self, term: int) -> None:
        """The key of a term we handed over is still there (the delete failed): retry."""
        await self._delete_key(term, [Op.delete(self.key)])

    async def fenced(self, reason: str) -> bool:
        self.term = None
        if self.may_hold or self.phase is Phase.gated:
            log.info("group %s: giving it up: %s", self.name, reason)
        done = await self.deactivate("fenced", reason)
        await self.acknowledge()
        return done

    async def deposed(self, reason: str) -> bool:
        self.term = None
        if self.may_hold or self.phase is Phase.gated:
            log.info("group %s: giving it up: %s", self.name, reason)
        done = await self.deactivate("deposed", reason)
        await self.acknowledge()
        return done
