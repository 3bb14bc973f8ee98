"""The agent's lease, its fencing deadline, and leadership of each group.

Safety rests on one rule: a leader drops its addresses before its lease can
expire in etcd. The deadline is the send time of the last acknowledged
keepalive + the lease TTL - a margin, on CLOCK_BOOTTIME (etcdha.clock); etcd cannot
expire the lease before send time + TTL, because it restarts the TTL only when
it receives the keepalive. The fence guard process is armed with the same
deadline, so the rule also holds when this process is killed or frozen.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from etcdha import clock, metrics
from etcdha.events import event_op, now_rfc3339
from etcdha.fence import FenceClient, FenceError
from etcdha.keyspace import Keyspace
from etcdha.resources import Resource, ResourceError
from etcdha.store import Compare, EtcdError, Op, Store

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    pass


class LeaseKeeper:
    """One lease per agent, kept alive; tracks the fencing deadline."""

    def __init__(
        self,
        store: Store,
        ttl: float,
        interval: float,
        margin: float,
        on_renew: Callable[[float], Awaitable[None]],
    ) -> None:
        self.store = store
        self.ttl = max(2, math.ceil(ttl))
        self.interval = interval
        self.margin = margin
        self.on_renew = on_renew
        self.lease_id = 0
        self.deadline = 0.0  # clock.now() value; addresses must be gone by then
        self.last_ack = 0.0  # clock.now() at the send of the last acknowledged keepalive
        self.lost = asyncio.Event()

    def alive(self) -> bool:
        return self.lease_id != 0 and clock.now() < self.deadline

    def remaining(self) -> float:
        return self.deadline - clock.now()

    def unreachable(self) -> bool:
        """The last keepalive went unanswered."""
        return clock.now() - self.last_ack > 1.2 * self.interval

    async def probe(self, limit: float) -> bool:
        """Can we reach etcd right now? One keepalive, bounded; counts if it works."""
        if clock.now() - self.last_ack < 0.5 * self.interval:
            return True
        try:
            result = await self.store.keepalive_once(self.lease_id, timeout=limit)
        except EtcdError:
            return False
        if result.ttl > 0:
            self.last_ack = result.sent_at
            self.deadline = max(self.deadline, result.sent_at + result.ttl - self.margin)
        return True

    def extend(self, deadline: float) -> None:
        """A later deadline vouched for by other means (failsafe promises)."""
        self.deadline = max(self.deadline, deadline)

    async def grant(self) -> int:
        sent = clock.now()
        lease = await self.store.grant(self.ttl)
        self.lease_id = lease.id
        self.last_ack = sent
        self.deadline = sent + lease.ttl - self.margin
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
        self.last_ack = result.sent_at
        self.deadline = result.sent_at + result.ttl - self.margin
        self.lost.clear()
        log.info("reclaimed lease %x left by the previous agent (TTL %ds)", lease_id, result.ttl)
        return True

    async def run(self) -> None:
        """Keep the lease alive until it is lost; then set `lost` and return."""
        while True:
            started = time.monotonic()  # asyncio sleeps on the monotonic clock
            timeout = max(0.2, min(self.interval, self.remaining()))
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
                    log.error("lease %x has expired in etcd; all leadership is gone", self.lease_id)
                    self.lost.set()
                    return
                self.last_ack = result.sent_at
                self.deadline = max(self.deadline, result.sent_at + result.ttl - self.margin)
                metrics.lease_deadline.set(self.remaining())
                await self.on_renew(self.deadline)
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
    ) -> None:
        self.name = name
        self.node = node
        self.store = store
        self.ks = ks
        self.fence = fence
        self.notify = notify
        self.resources: list[Resource] = []
        self._keys: list[object] = []  # what each resource was built from
        self.term: Term | None = None  # set while we hold the leader key
        self.released_term = 0  # the last term we handed over (deleted the key of)
        self.active = False  # resources started
        self._lock = asyncio.Lock()

    async def update(
        self, keys: list[object], make: Callable[[object], Resource], deadline: float
    ) -> None:
        """Bring the resources in line with the config: stop those it dropped (in
        reverse), start those it added (in order), leave unchanged ones alone."""
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
                    plan.append((key, make(key), True))
            self._keys = [k for k, _, _ in plan]
            if not self.active:
                self.resources = [r for _, r, _ in plan]
                return
            log.info("group %s: resources changed in the config; applying the change", self.name)
            await self._stop([r for _, r in old])
            self.resources = [r for _, r, _ in plan]
            for _, r, fresh in plan:
                if fresh:
                    try:
                        await r.start()
                    except ResourceError as e:
                        log.error("group %s: %s", self.name, e)
            await self._arm(deadline)

    @property
    def key(self) -> str:
        return self.ks.leader(self.name)

    async def campaign(self, lease_id: int, reason: str) -> bool:
        """Create the leader key if nobody holds it; True if we won."""
        value = json.dumps({"node": self.node, "lease": lease_id, "since": now_rfc3339()})
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

    async def activate(self, deadline: float) -> None:
        """Arm the guard, then start resources in order."""
        async with self._lock:
            if self.active or self.term is None:
                return
            await self._arm(deadline)
            started: list[Resource] = []
            try:
                for r in self.resources:
                    if clock.now() >= deadline:
                        # The guard may have fired already: adding more would outlive it.
                        raise ResourceError("the lease deadline passed while starting")
                    await r.start()
                    started.append(r)
                    # Addresses become known as they are placed; the guard must know them.
                    await self._arm(deadline)
            except ResourceError as e:
                log.error("group %s: %s; stopping what was started and handing over", self.name, e)
                await self._stop(started)
                self.active = False
                raise
            self.active = True
            metrics.is_leader.labels(self.name).set(1)
            self._set_state("leader")
            metrics.addresses_assigned.labels(self.name).set(len(self.held()))
            metrics.transitions.labels(self.name, "acquired").inc()
            self.notify(self.name, "leader", f"{self.node} holds {self.name}")

    async def audit(self) -> None:
        """Repair drift while we lead. Address audits run under the lock, so a
        handover or a fence never races an address being added back; slower
        audits (scripts) run outside it and stop as soon as we no longer lead."""
        async with self._lock:
            if not self.active:
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

    async def _arm(self, deadline: float) -> None:
        addrs = [a for r in self.resources for a in r.fence_addresses()]
        try:
            await self.fence.arm(self.name, deadline, addrs)
        except FenceError as e:
            # Without the guard a kill -9 could leave the VIP behind: do not lead.
            raise ResourceError(f"the fence guard cannot be armed: {e}") from e

    async def renew(self, deadline: float) -> None:
        if self.active:
            try:
                await self._arm(deadline)
            except ResourceError as e:
                # The guard keeps the previous deadline and fires at it: still safe.
                log.warning("group %s: %s", self.name, e)

    async def _stop(self, resources: list[Resource]) -> None:
        for r in reversed(resources):
            try:
                await r.stop()
            except ResourceError as e:
                log.error("group %s: stopping %s failed: %s", self.name, r.describe(), e)

    async def deactivate(self, direction: str, reason: str) -> None:
        """Stop resources in reverse order and disarm the guard (no etcd writes)."""
        async with self._lock:
            if self.active:
                await self._stop(self.resources)
                self.active = False
                metrics.is_leader.labels(self.name).set(0)
                self._set_state("fenced" if direction == "fenced" else "follower")
                metrics.addresses_assigned.labels(self.name).set(0)
                metrics.transitions.labels(self.name, direction).inc()
                state = "fault" if direction == "fenced" else "backup"
                self.notify(self.name, state, reason)
            try:
                await self.fence.disarm(self.name)
            except FenceError as e:
                log.warning("group %s: could not disarm the fence guard: %s", self.name, e)

    async def handover(self, reason: str, extra_ops: list[Op] | None = None) -> None:
        """Graceful: addresses off first, then the leader key goes, so the next node
        takes over at once instead of after the TTL."""
        await self.deactivate("released", reason)
        term = self.term
        self.term = None
        if term is None:
            return
        self.released_term = max(self.released_term, term.revision)
        ops = [
            Op.delete(self.key),
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
        await self._delete_key(term.revision, ops)
        log.info("%s handed %s over: %s", self.node, self.name, reason)

    async def _delete_key(self, term: int, ops: list[Op]) -> None:
        start = time.monotonic()
        try:
            await self.store.txn([Compare.create_revision(self.key, "==", term)], ops)
            metrics.etcd_requests.labels("handover", "ok").observe(time.monotonic() - start)
        except EtcdError as e:
            metrics.etcd_requests.labels("handover", "error").observe(time.monotonic() - start)
            log.warning(
                "group %s: could not delete the leader key (%s); trying again", self.name, e
            )

    async def finish_release(self, term: int) -> None:
        """The key of a term we handed over is still there (the delete failed): retry."""
        await self._delete_key(term, [Op.delete(self.key)])

    async def fenced(self, reason: str) -> None:
        self.term = None
        await self.deactivate("fenced", reason)

    async def deposed(self, reason: str) -> None:
        self.term = None
        await self.deactivate("deposed", reason)
