"""The checker: probes every real server of the spec and publishes verdicts on change.

One schedule (a heap and a single timer) for every real server. A due check
starts its probe's direct form where it has one (plain HTTP, tcp, connect and
the static checks: a callback, no task) or else a short-lived task; either way
a real whose probe hangs holds only its own check (and one of
``max_concurrency`` slots) until its timeout and never delays the checks of
other reals. Each real keeps its own
rhythm: the first check within the first second (spread at random), then every
``interval`` with +-5 % jitter on a fixed rate (a check that overruns its
interval skips the missed slots rather than bunching them).

Publishing: ``health/<checker>/<service>/<real>`` (JSON: state, since,
detail, latency_ms, weight when dynamic), a put bound to the lease that
``lease_id_getter`` returns, written only when a verdict changes, and all of
them again whenever that lease id changes (a new lease after the old one was
lost: its keys went with it). A real that leaves the spec loses its key.
Writes go through one publisher task, in txns of up to 64 puts, up to 4 of
them in flight (etcd renews a lease only after applying what it committed
before: a deep queue of verdict writes would delay every lease's keepalives);
while etcd does not answer they wait (newer verdicts replace older ones) and
the probes go on. :meth:`Checker.adopt` lets a new checker
carry on from the verdicts an earlier process of the same name left under the
same lease.

Events: every up->down and down->up transition is recorded in a ``health``
event under ``events/`` (a first verdict is not a transition). The publisher
gathers the transitions since its last event into one event (listing the
first ``EVENT_LISTED``, counting the rest), written right after the verdicts
it goes with, and a token bucket (``EVENT_BURST`` events, then one per
``EVENT_EVERY`` seconds) bounds how often: a flapping fleet of thousands of
reals costs etcd one small event every few seconds, not one per flap. Health
events are bound to a retention lease of their own (``EVENT_RETENTION``), so
their history expires instead of growing; an event that cannot be written
never holds back a verdict.

What to check and the verdict counters: :mod:`etcdha.checker_jobs`; one live
checker per name: :mod:`etcdha.checker_name`; ``etcdha checker start``:
:mod:`etcdha.checker_worker`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import heapq
import itertools
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etcdha import metrics, probes
from etcdha.checker_jobs import NEVER, Job, RealKey, RealState, jobs_from_spec, verdict_text
from etcdha.checker_name import CheckerNameInUse, claim_name
from etcdha.events import event_put
from etcdha.health import parse_health
from etcdha.keyspace import Keyspace, validate_name
from etcdha.probes import Result, Target
from etcdha.probes._engine import ProbeEngine, engine_for
from etcdha.spec import ClusterSpec
from etcdha.store import (
    EtcdError,
    EtcdLeaseNotFound,
    Op,
    Store,
)

log = logging.getLogger(__name__)

__all__ = [
    "Checker",
    "CheckerNameInUse",
    "Job",
    "RealState",
    "claim_name",
    "default_checks_dir",
    "freeze_gc",
    "jobs_from_spec",
    "loop_factory",
]

SpecGetter = Callable[[], ClusterSpec | None]
LeaseGetter = Callable[[], int]

JITTER = 0.05
FIRST_SPREAD = 1.0  # seconds over which the first checks of all reals are spread
# Checks due this close to now start together: timers fire up to a clock tick
# early (uvloop's are in whole milliseconds), and without this window the
# dispatcher woke several times per check only to find nothing due yet.
DISPATCH_AHEAD = 0.002
DISPATCH_PER_WAKE = 256  # checks started by one callback of the schedule's timer
TXN_OPS = 64  # etcd's --max-txn-ops is 128 by default
TXNS_IN_FLIGHT = 4  # see the module's docstring: lease renewals wait behind them in etcd
PORTLESS_PROBES = {"ping", "on", "off", "none", "external"}
EVENT_BURST = 10  # health events written at once before the rate limit applies
EVENT_EVERY = 10.0  # then one event per this many seconds at most
EVENT_LISTED = 10  # transitions listed in one event; the rest are counted
EVENT_DETAIL = 80  # characters of a probe's detail kept in an event
EVENT_RETENTION = 86_400  # seconds a health event stays in etcd (its lease's TTL)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (about half the CPU per plain
    HTTP check), unless ETCDHA_UVLOOP=0; None: the standard loop."""
    if os.environ.get("ETCDHA_UVLOOP", "1") == "0":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def default_checks_dir() -> Path:
    """/usr/lib/etcdha/checks when it exists (packages install there), else the
    checks/ folder of a source checkout this module runs from."""
    if probes.DEFAULT_CHECKS_DIR.is_dir():
        return probes.DEFAULT_CHECKS_DIR
    source = Path(__file__).resolve().parent.parent / "checks"
    return source if source.is_dir() else probes.DEFAULT_CHECKS_DIR


# ---------------------------------------------------------------------------
# the checker


class _Check:
    """One check of one real: waiting for a slot, running, or ended."""

    __slots__ = ("checker", "due", "epoch", "finished", "handle", "probe", "rk", "st", "started")

    def __init__(self, checker: Checker, rk: RealKey, st: RealState, epoch: int, due: float):
        self.checker = checker
        self.rk = rk
        self.st = st
        self.epoch = epoch
        self.due = due
        self.probe = ""
        self.handle: probes.Cancellable | None = None
        self.started = False
        self.finished = False

    def done(self, result: Result) -> None:
        if not self.finished:
            self.finished = True
            self.handle = None  # the handle holds this callback: no reference cycle
            self.checker._conclude(self, result)

    def cancel(self) -> None:
        """Withdrawn (the real left or its check changed, or the checker stops)."""
        if self.finished:
            return
        self.finished = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.started:
            self.checker._release()


class Checker:
    """Checks every real of the spec and publishes verdicts under ``health/<name>/``.

    ``spec_getter()`` gives the spec to start with (None: nothing to check yet);
    :meth:`update` takes a new one live. ``lease_id_getter()`` gives the lease
    the health keys are bound to (0: none yet; a new id republishes them all).
    """

    def __init__(
        self,
        store: Store,
        keyspace: Keyspace,
        name: str,
        spec_getter: SpecGetter,
        lease_id_getter: LeaseGetter,
        *,
        checks_dir: Path | None = None,
        max_concurrency: int = 512,
        jitter: float = JITTER,
        event_burst: int = EVENT_BURST,
        event_every: float = EVENT_EVERY,
        event_retention: int = EVENT_RETENTION,
        role: str = "agent",
        owner_pid: int | None = None,
    ) -> None:
        self.store = store
        self.ks = keyspace
        self.name = validate_name(name, "checker name")
        self.role = role
        self.owner_pid = owner_pid  # the process its name registration names (None: this one)
        self._refused = ""  # why the name is not ours now ("": it is, or not asked yet)
        self.spec_getter = spec_getter
        self.lease_id_getter = lease_id_getter
        self.checks_dir = checks_dir or default_checks_dir()
        self.jitter = jitter
        self.max_concurrency = max(1, max_concurrency)
        self._active = 0  # checks holding a slot
        self._waiting: collections.deque[_Check] = collections.deque()
        self._draining = False
        self.states: dict[RealKey, RealState] = {}
        # The schedule: (due, sequence, real, epoch) on the loop's clock. An entry
        # whose epoch is not its real's current one is stale (the check changed).
        self._heap: list[tuple[float, int, RealKey, int]] = []
        self._seq = itertools.count()
        self._epochs: dict[RealKey, int] = {}
        self._inflight: dict[RealKey, _Check] = {}  # started or waiting for a slot
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # cached: looked up per check
        self._engine: ProbeEngine | None = None
        self._timer_at = math.inf
        self._pending: dict[RealKey, bytes | None] = {}
        self._wake = asyncio.Event()
        self._published_lease = 0
        self._adopted_lease = 0  # its verdicts were read back from etcd (see adopt)
        self._dead_lease = 0
        self._running = False
        self._backoff = 0.1
        self.writes = 0  # health keys written or deleted, for tests and figures
        # Health events: transitions waiting for an event, and the rate limit.
        self.event_burst = max(1, event_burst)
        self.event_every = event_every
        self.event_retention = max(60, event_retention)
        self._transitions: list[dict[str, Any]] = []
        self._unlisted = 0
        self._counts = {"down": 0, "up": 0}
        self._tokens = float(self.event_burst)
        self._tokens_at = time.monotonic()
        self._event_lease = 0
        self._event_lease_renew = 0.0
        self._event_failing = False
        self.transitions = 0  # up<->down transitions seen, for tests and figures
        self.events_written = 0
        self.slips: collections.deque[float] = collections.deque(maxlen=100_000)
        self._durations = metrics.check_metrics.duration
        metrics.check_metrics.add_source(self)

    # -- public

    def key(self, rk: RealKey) -> str:
        return self.ks.health(self.name, rk[0], rk[1])

    def update(self, spec: ClusterSpec | None) -> None:
        """Take a new spec live: new reals start, removed ones stop (their key is
        deleted), changed checks restart keeping the real's verdict."""
        jobs = jobs_from_spec(spec, self.checks_dir) if spec is not None else {}
        for rk in list(self.states):
            if rk not in jobs:
                self._unschedule(rk)
                self._epochs.pop(rk, None)
                gone = self.states.pop(rk)
                _forget_metrics(gone)
                if gone.state is not None:
                    self._pending[rk] = None
                else:
                    self._pending.pop(rk, None)
        for rk, job in jobs.items():
            st = self.states.get(rk)
            if st is None:
                self.states[rk] = RealState(job)
                if self._running:
                    self._schedule_first(rk)
            elif st.job != job:
                st.job = job
                st.successes = st.failures = 0
                st.connects = NEVER
                if self._running:
                    self._unschedule(rk)
                    self._schedule_first(rk)
        self._wake.set()

    async def adopt(self, lease: int) -> int:
        """Carry on from the verdicts this checker's name holds under ``lease``.

        For a checker that takes over from an earlier process under the same
        lease (the agent's checker process after a planned restart of the
        agent, or after a crash of its own): each real's verdict starts as the
        one in etcd, so a check that agrees writes nothing (``since`` stays) and
        one that does not is a transition; keys of reals no longer configured
        are deleted, and nothing else is written again. Call it before
        :meth:`run`; returns how many verdicts were taken up.
        """
        kvs, _ = await self.store.get_prefix(self.ks.health_prefix(self.name))
        ours = [kv for kv in kvs if kv.lease == lease]
        records, problems = parse_health(self.ks, ours)
        for problem in problems:
            log.warning("ignoring a verdict left in etcd: %s", problem)
        taken = 0
        for record in records:
            rk = (record.service, record.real)
            st = self.states.get(rk)
            if st is None:
                self._pending[rk] = None  # no longer configured
                continue
            if st.state is not None:
                continue  # checked already: that verdict is newer
            st.state, st.since, st.detail = record.state, record.since, record.detail
            st.latency_ms = record.latency_ms or 0.0
            st.weight = record.weight if st.job.dynamic else None
            _set_state_metrics(st)
            taken += 1
        self._adopted_lease = lease
        if taken:
            log.info("carrying on from %d verdicts under lease %x", taken, lease)
        return taken

    def republish(self) -> None:
        """Write every verdict again (e.g. after the agent re-created its lease)."""
        self._published_lease = 0
        self._adopted_lease = 0
        self._dead_lease = 0
        self._wake.set()

    async def run(self) -> None:
        """Check and publish until cancelled; cancelling stops every probe."""
        if not self.states:
            self.update(self.spec_getter())
        self._loop = asyncio.get_running_loop()
        self._engine = engine_for(self._loop)
        self._running = True
        try:
            for rk in self.states:
                self._schedule_first(rk)
            await self._publish_loop()
        finally:
            self._running = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer, self._timer_at = None, math.inf
            self._heap.clear()
            for check in list(self._inflight.values()):
                check.cancel()
            self._inflight.clear()
            self._waiting.clear()

    def check_counts(self) -> list[tuple[tuple[str, ...], int, int]]:
        """For etcdha_checks_total: (IPVS label values, up, down) per real."""
        return [
            (tuple(v for _, v in st.job.labels), st.ups, st.checks - st.ups)
            for st in self.states.values()
            if st.checks
        ]

    def slip_percentiles(self) -> dict[str, float]:
        """Schedule slip (seconds late at probe start) over the recent checks."""
        data = sorted(self.slips)
        if not data:
            return {}

        def pick(q: float) -> float:
            return data[min(len(data) - 1, math.ceil(q * len(data)) - 1)]

        return {"p50": pick(0.5), "p99": pick(0.99), "max": data[-1], "n": float(len(data))}

    # -- scheduling: one heap and one timer for every real; each check is
    # started directly or as a short-lived task. (A task per real would keep
    # thousands of sleeping futures and timer handles alive for a whole
    # interval each, and the garbage collector walks them all in every full
    # collection: tens of milliseconds of slip.)

    def _schedule_first(self, rk: RealKey) -> None:
        interval = self.states[rk].job.interval
        loop = self._loop or asyncio.get_running_loop()
        due = loop.time() + random.uniform(0, min(interval, FIRST_SPREAD))
        self._push(rk, due)

    def _push(self, rk: RealKey, due: float) -> None:
        epoch = self._epochs.get(rk, 0)
        heapq.heappush(self._heap, (due, next(self._seq), rk, epoch))
        if due < self._timer_at:
            self._arm(due)

    def _unschedule(self, rk: RealKey) -> None:
        self._epochs[rk] = self._epochs.get(rk, 0) + 1
        check = self._inflight.pop(rk, None)
        if check is not None:
            check.cancel()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = (self._loop or asyncio.get_running_loop()).call_at(when, self._dispatch)
        self._timer_at = when

    def _dispatch(self) -> None:
        """Start every check that is due, then sleep until the next one."""
        self._timer, self._timer_at = None, math.inf
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        horizon = now + DISPATCH_AHEAD
        heap = self._heap
        budget = DISPATCH_PER_WAKE
        while heap and heap[0][0] <= horizon:
            if budget == 0:
                # The rest on the loop's next turn: a check can end at once (a
                # refused connect) and a saturated checker would otherwise start
                # thousands in one callback, while its verdicts wait to be written.
                self._arm(now)
                return
            due, _, rk, epoch = heapq.heappop(heap)
            if epoch != self._epochs.get(rk, 0) or rk not in self.states or rk in self._inflight:
                continue
            budget -= 1
            check = _Check(self, rk, self.states[rk], epoch, due)
            self._inflight[rk] = check
            if self._active < self.max_concurrency:
                self._start(check)
            else:
                self._waiting.append(check)
        if heap:
            self._arm(heap[0][0])

    def _start(self, check: _Check) -> None:
        """Run one check: its probe's direct form when it has one, else a task."""
        self._active += 1
        check.started = True
        loop = self._loop or asyncio.get_running_loop()
        slip = max(0.0, loop.time() - check.due)
        self.slips.append(slip)
        metrics.check_metrics.slip.observe(slip)
        st = check.st
        job = st.job
        probe, timeout = st.next_probe()
        check.probe = probe
        target = job.target if timeout == job.target.timeout else _with_timeout(job, timeout)
        if target.port == 0 and probe not in PORTLESS_PROBES:
            check.done(Result(False, "no port to probe: set check.port for this fwmark service"))
            return
        starter = probes.direct(probe)
        handle = None
        if starter is not None:
            assert self._engine is not None
            try:
                handle = starter(self._engine, target, check.done)
            except Exception as exc:  # a probe's bug fails its check, never the schedule
                log.exception("%s probe of %s failed to start", probe, job.real_label)
                check.done(Result(False, probes.describe_error(exc)))
                return
        if handle is None:
            handle = loop.create_task(self._run_probe(check, probe, target))
        if not check.finished:
            check.handle = handle

    async def _run_probe(self, check: _Check, probe: str, target: Target) -> None:
        check.done(await probes.run(probe, target))

    def _conclude(self, check: _Check, result: Result) -> None:
        """A check's result: the verdict, then the real's next check."""
        rk, st = check.rk, check.st
        if self._inflight.get(rk) is check:
            del self._inflight[rk]
        self._release()
        try:
            self._observe(st, check.probe, result)
        except Exception:
            log.exception("check of %s failed unexpectedly", st.job.real_label)
        if not self._running or check.epoch != self._epochs.get(rk, 0):
            return
        interval = st.job.interval
        due = check.due + interval * (1 + random.uniform(-self.jitter, self.jitter))
        now = (self._loop or asyncio.get_running_loop()).time()
        if due < now:  # overran: skip the missed slots, keep the phase
            due += math.ceil((now - due) / interval) * interval
        self._push(rk, due)

    def _release(self) -> None:
        """A slot is free: start the checks waiting for one (no recursion when a
        started check ends at once)."""
        self._active -= 1
        if self._draining:
            return
        self._draining = True
        try:
            while self._waiting and self._active < self.max_concurrency:
                check = self._waiting.popleft()
                if not check.finished:
                    self._start(check)
        finally:
            self._draining = False

    def _observe(self, st: RealState, probe: str, result: Result) -> None:
        job = st.job
        self._durations(probe).observe(result.latency_ms / 1000.0)
        before = st.state
        if st.observe(probe, result):
            if before is not None and before != st.state:
                self._note_transition(st, before)
            log.info(
                "%s of %s is %s: %s",
                job.real_label,
                job.service_label,
                verdict_text(st),
                result.detail,
            )
            self._pending[job.key] = st.value()
            self._wake.set()
            _set_state_metrics(st)  # gauges change only with the verdict

    # -- publishing

    async def _publish_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            await self._publish_verdicts()
            await self._publish_events()

    async def _publish_verdicts(self) -> None:
        lease = self.lease_id_getter()
        if not lease or lease == self._dead_lease:
            return  # no lease yet, or etcd said it is gone: wait for a new one
        if lease != self._published_lease:
            if not await self._claim(lease):
                return
            if lease != self._adopted_lease:  # else they are in etcd already
                for rk, st in self.states.items():
                    if st.state is not None and rk not in self._pending:
                        self._pending[rk] = st.value()
            self._adopted_lease = 0
            self._published_lease = lease
            log.info("publishing %d verdicts under lease %x", len(self._pending), lease)
        while self._pending:
            # Several txns at once: a checker whose loop is saturated by its checks
            # takes many loop iterations per round trip to etcd.
            items = list(itertools.islice(self._pending.items(), TXN_OPS * TXNS_IN_FLIGHT))
            for rk, _ in items:
                del self._pending[rk]
            batches = [items[i : i + TXN_OPS] for i in range(0, len(items), TXN_OPS)]
            results = await asyncio.gather(
                *(self._write(lease, batch) for batch in batches), return_exceptions=True
            )
            failed: EtcdError | None = None
            for batch, result in zip(batches, results, strict=True):
                if isinstance(result, BaseException):
                    for rk, v in batch:
                        self._pending.setdefault(rk, v)
                    if not isinstance(result, EtcdError):
                        raise result
                    failed = result if failed is None else failed
                    if isinstance(result, EtcdLeaseNotFound):
                        failed = result
                else:
                    self.writes += len(batch)
                    metrics.health_writes.inc(len(batch))
            if failed is not None:
                if isinstance(failed, EtcdLeaseNotFound):
                    log.warning("lease %x is gone; verdicts wait for a new one", lease)
                    self._published_lease = 0
                    self._dead_lease = lease
                    return
                log.warning("cannot publish verdicts yet: %s", failed)
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, 2.0)
                return
            self._backoff = 0.1

    async def _write(self, lease: int, batch: list[tuple[RealKey, bytes | None]]) -> None:
        ops = [
            Op.put(self.key(rk), v, lease=lease) if v is not None else Op.delete(self.key(rk))
            for rk, v in batch
        ]
        await self.store.txn([], ops)

    async def _claim(self, lease: int) -> bool:
        """Hold our name under ``lease`` before publishing under it."""
        try:
            await claim_name(self.store, self.ks, self.name, lease, self.role, self.owner_pid)
        except CheckerNameInUse as e:
            if str(e) != self._refused:
                log.error("not publishing verdicts: %s", e)
                self._refused = str(e)
            return False
        except EtcdError as e:
            if isinstance(e, EtcdLeaseNotFound):
                self._dead_lease = lease
            log.warning("cannot register checker name %s yet: %s", self.name, e)
            return False
        if self._refused:
            log.info("checker name %s is ours now; publishing verdicts", self.name)
            self._refused = ""
        return True

    # -- health events

    def _note_transition(self, st: RealState, before: str) -> None:
        assert st.state is not None
        self.transitions += 1
        self._counts[st.state] += 1
        if len(self._transitions) >= EVENT_LISTED:
            self._unlisted += 1
            return
        self._transitions.append(
            {
                "service": st.job.service_label,
                "real": st.job.real_label,
                "from": before,
                "to": st.state,
                "at": st.since,
                "detail": st.detail[:EVENT_DETAIL],
            }
        )

    async def _publish_events(self) -> None:
        """One event for the transitions gathered so far, if the rate limit allows."""
        if not self._transitions:
            return
        if self._refused:  # the name is another checker's: its events are not ours to write
            self._transitions, self._unlisted, self._counts = [], 0, {"down": 0, "up": 0}
            return
        now = time.monotonic()
        self._tokens = min(
            float(self.event_burst), self._tokens + (now - self._tokens_at) / self.event_every
        )
        self._tokens_at = now
        if self._tokens < 1.0:
            return
        listed, unlisted, counts = self._transitions, self._unlisted, self._counts
        self._transitions, self._unlisted, self._counts = [], 0, {"down": 0, "up": 0}
        event: dict[str, Any] = {"type": "health", "checker": self.name, "transitions": listed}
        if unlisted:
            event["more"] = unlisted
        event.update(counts)
        try:
            lease = await self._retention_lease()
            await self.store.txn([], [event_put(self.ks, event, lease)])
        except EtcdError as e:
            if isinstance(e, EtcdLeaseNotFound):
                self._event_lease = 0
            if not self._event_failing:  # once per outage, not every second
                log.warning("cannot record a health event yet: %s", e)
            self._event_failing = True
            # Keep them for the next try; what does not fit the list is counted.
            merged = listed + self._transitions
            self._transitions = merged[:EVENT_LISTED]
            self._unlisted += unlisted + len(merged) - len(self._transitions)
            for k, v in counts.items():
                self._counts[k] += v
            return
        self._tokens -= 1.0
        self.events_written += 1
        self._event_failing = False

    async def _retention_lease(self) -> int:
        """The lease health events are bound to; a fresh one every 1/24 of the
        retention, so an event lives between 23/24 and all of it."""
        now = time.monotonic()
        if not self._event_lease or now >= self._event_lease_renew:
            self._event_lease = (await self.store.grant(self.event_retention)).id
            self._event_lease_renew = now + self.event_retention / 24
        return self._event_lease


def _with_timeout(job: Job, timeout: float) -> Target:
    from dataclasses import replace

    return replace(job.target, timeout=timeout)


# ---------------------------------------------------------------------------
# metrics: per-check numbers are counted in RealState and metrics.check_metrics
# (a scrape reads them); the gauges change only with a verdict.


def _gauges(st: RealState) -> tuple[Any, Any]:
    if st._gauges is None:
        labels = dict(st.job.labels)
        st._gauges = (metrics.real_up.labels(**labels), metrics.real_weight.labels(**labels))
    return st._gauges


def freeze_gc() -> None:
    """Move every object alive now out of the garbage collector's sight.

    With thousands of reals the long-lived state (jobs, targets, metric
    children) makes each full collection a pause of tens of milliseconds, which
    shows as schedule slip; frozen, collections only scan what came after.
    Call it once the spec is loaded (the worker and the agent do).
    """
    gc.collect()
    gc.freeze()
    # Young collections every 10,000 allocations instead of 700: a check
    # allocates a few dozen short-lived objects that die by reference count, and
    # at thousands of checks a second the default made the collector about 3 %
    # of the checker's CPU.
    gc.set_threshold(10_000, 10, 10)


def _set_state_metrics(st: RealState) -> None:
    up, weight = _gauges(st)
    up.set(1 if st.state == "up" else 0)
    weight.set(st.desired_weight())


def _forget_metrics(st: RealState) -> None:
    values = [v for _, v in st.job.labels]
    for family in (metrics.real_up, metrics.real_weight):
        with contextlib.suppress(KeyError):
            family.remove(*values)
