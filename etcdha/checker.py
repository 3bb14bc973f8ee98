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

Verdicts (ldirectord's counters):

* A real has no verdict until its first check; the first result decides
  (up or down). ldirectord starts a real that is not already in the kernel's
  table as down and brings it up on the first good check; a new checker
  publishing "down" after one failed check, or "up" after one good one, is the
  same, without making a healthy real wait ``rise_count`` intervals on every
  agent restart.
* Then ``failure_count`` consecutive failures take an up real down, and
  ``rise_count`` consecutive successes bring a down real up; a result that
  agrees with the verdict resets the other counter.
* A dynamic weight (external checks with ``dynamic_weight``) that changes while
  the real is up is a new verdict too.

Publishing: ``health/<checker>/<service>/<real>`` (JSON: state, since,
detail, latency_ms, weight when dynamic), a put bound to the lease that
``lease_id_getter`` returns, written only when a verdict changes, and all of
them again whenever that lease id changes (a new lease after the old one was
lost: its keys went with it). A real that leaves the spec loses its key.
Writes go through one publisher task, in txns of up to 64 puts; while etcd
does not answer they wait (newer verdicts replace older ones) and the probes
go on.

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

One live checker per name: ``checkers/<name>``, bound to the checker's
lease, says who holds the name (:func:`claim_name`). A second checker with a
name in use refuses to start (``etcdha checker start``) or, started under a
lease that meets a taken name later, publishes nothing until the name is free;
a registration left by an earlier process on this host that is gone now (a
crash, kill -9) is taken over at once: its lease is revoked, and its stale
verdicts go with it.

:func:`run_standalone` is the checker-only worker (``etcdha checker start``): it
grants its own lease, keeps it alive, follows the config key and serves
/metrics.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import heapq
import itertools
import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdha import metrics, probes
from etcdha.configdb import parse_stored
from etcdha.events import event_put, now_rfc3339
from etcdha.httpd import HTTPServer
from etcdha.keyspace import Keyspace, fwmark_segment, real_segment, service_segment, validate_name
from etcdha.membership import AlreadyRunning, boot_id
from etcdha.probes import Plan, Result, Target
from etcdha.probes._engine import ProbeEngine, engine_for
from etcdha.spec import ClusterSpec, VirtualService
from etcdha.spec_types import expand_real, split_host_port
from etcdha.store import (
    Compare,
    EtcdError,
    EtcdLeaseNotFound,
    EtcdSettings,
    Op,
    Store,
    WatchCompacted,
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
    "run_standalone",
]

RealKey = tuple[str, str]  # (service segment, real segment)
SpecGetter = Callable[[], ClusterSpec | None]
LeaseGetter = Callable[[], int]

JITTER = 0.05
FIRST_SPREAD = 1.0  # seconds over which the first checks of all reals are spread
# Checks due this close to now start together: timers fire up to a clock tick
# early (uvloop's are in whole milliseconds), and without this window the
# dispatcher woke several times per check only to find nothing due yet.
DISPATCH_AHEAD = 0.002
TXN_OPS = 64
PORTLESS_PROBES = {"ping", "on", "off", "none", "external"}
_NEVER = 10**9
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
# what to check


@dataclass(frozen=True)
class Job:
    """One real server of one virtual service, as its check sees it."""

    key: RealKey
    service_label: str
    real_label: str
    target: Target
    plan: Plan
    interval: float
    failure_count: int
    rise_count: int
    weight: int  # the real's configured weight
    dynamic: bool
    labels: tuple[tuple[str, str], ...]  # node_exporter's IPVS label names


def _service_key(vs: VirtualService) -> tuple[str, str, int]:
    """(segment, virtual address text, virtual port)."""
    if vs.fwmark is not None:
        return fwmark_segment(vs.fwmark, vs.ip_family), str(vs.fwmark), 0
    assert vs.address is not None
    ip, port = split_host_port(vs.address)
    return service_segment(vs.protocol.value, str(ip), port), str(ip), port


def ipvs_labels(vs: VirtualService, address: str, port: int) -> tuple[tuple[str, str], ...]:
    """Labels as node_exporter's ipvs collector names them (node_ipvs_backend_*)."""
    if vs.fwmark is not None:
        local_address, local_port, proto, mark = "", "0", "FWM", str(vs.fwmark)
    else:
        assert vs.address is not None
        ip, vport = split_host_port(vs.address)
        local_address, local_port, proto, mark = str(ip), str(vport), vs.protocol.value.upper(), ""
    return (
        ("local_address", local_address),
        ("local_port", local_port),
        ("remote_address", address),
        ("remote_port", str(port)),
        ("proto", proto),
        ("local_mark", mark),
    )


def jobs_from_spec(spec: ClusterSpec, checks_dir: Path) -> dict[RealKey, Job]:
    """Every real server of every virtual service (ranges expanded), keyed by segments."""
    jobs: dict[RealKey, Job] = {}
    for vs in spec.virtual_services:
        segment, vaddr, vport = _service_key(vs)
        check = vs.check
        plan = probes.plan(check)
        for real in vs.reals:
            for ip, rport in expand_real(real.address):
                address = str(ip)
                port = check.port or rport or vport
                timeout = plan.timeout
                target = Target(
                    address=address,
                    port=port,
                    protocol="udp" if vs.protocol.value == "udp" else vs.protocol.value,
                    check=check,
                    request=real.request if real.request is not None else check.request,
                    receive=real.receive if real.receive is not None else check.receive,
                    timeout=timeout,
                    virtual_address=vaddr,
                    virtual_port=vport,
                    real_port=rport,
                    checks_dir=checks_dir,
                )
                key = (segment, real_segment(address, rport))
                jobs[key] = Job(
                    key=key,
                    service_label=vs.label,
                    real_label=f"[{address}]:{rport}" if ip.version == 6 else f"{address}:{rport}",
                    target=target,
                    plan=plan,
                    interval=max(check.interval, 0.05),
                    failure_count=check.failure_count,
                    rise_count=check.rise_count,
                    weight=real.weight,
                    dynamic=check.dynamic_weight,
                    labels=ipvs_labels(vs, address, port if vs.fwmark is None else rport),
                )
    return jobs


# ---------------------------------------------------------------------------
# verdicts


@dataclass
class RealState:
    """What one checker knows of one real server."""

    job: Job
    state: str | None = None  # None until the first check
    since: str = ""
    detail: str = ""
    latency_ms: float = 0.0
    weight: int | None = None
    successes: int = 0
    failures: int = 0
    checks: int = 0
    ups: int = 0  # checks that passed (etcdha_checks_total)
    connects: int = _NEVER  # ldirectord's num_connects for negotiate_every
    _gauges: tuple[Any, Any] | None = field(default=None, repr=False)

    def value(self) -> bytes:
        data: dict[str, Any] = {
            "state": self.state,
            "since": self.since,
            "detail": self.detail,
            "latency_ms": self.latency_ms,
        }
        if self.job.dynamic and self.weight is not None:
            data["weight"] = self.weight
        return json.dumps(data, separators=(",", ":")).encode()

    def desired_weight(self) -> int:
        if self.state != "up":
            return 0
        return self.weight if self.weight is not None else self.job.weight

    def next_probe(self) -> tuple[str, float]:
        """Which probe this check runs (negotiate_every: ldirectord's combined check)."""
        plan = self.job.plan
        if plan.every <= 1 or self.connects >= plan.every - 1:
            return plan.probe, plan.timeout
        return "connect", plan.connect_timeout

    def observe(self, probe: str, result: Result) -> bool:
        """Apply one result; True when the verdict changed (a write is due)."""
        self.checks += 1
        if result.ok:
            self.ups += 1
        plan = self.job.plan
        if plan.every > 1:
            if probe == plan.probe and probe != "connect":
                if result.ok:
                    self.connects = 0
            elif result.ok:
                self.connects += 1
            else:
                self.connects = _NEVER
        self.detail = result.detail
        self.latency_ms = result.latency_ms
        new_weight = result.weight if self.job.dynamic else None
        if self.state is None:
            return self._become("up" if result.ok else "down", new_weight)
        if result.ok:
            self.failures = 0
            self.successes += 1
            if self.state == "up":
                return self._reweigh(new_weight)
            if self.successes >= self.job.rise_count:
                return self._become("up", new_weight)
            return False
        self.successes = 0
        self.failures += 1
        if self.state == "down" or self.failures < self.job.failure_count:
            return False
        return self._become("down", None)

    def _become(self, state: str, weight: int | None) -> bool:
        self.state = state
        self.since = now_rfc3339()
        self.weight = weight
        self.successes = self.failures = 0
        return True

    def _reweigh(self, weight: int | None) -> bool:
        if weight == self.weight:
            return False
        self.weight = weight
        return True


def _verdict_text(st: RealState) -> str:
    if st.state == "up" and st.weight is not None:
        return f"up (weight {st.weight})"
    return st.state or "unknown"


# ---------------------------------------------------------------------------
# one live checker per name


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


def _registration(role: str) -> bytes:
    pid = os.getpid()
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


async def claim_name(store: Store, ks: Keyspace, name: str, lease_id: int, role: str) -> None:
    """Hold ``checkers/<name>`` under ``lease_id``, or raise CheckerNameInUse.

    Taken: by this lease already (nothing to do); by a live checker elsewhere or
    by a running process on this host (refused); by a process of this host that
    is gone, or by this very process under an older lease (taken over).
    """
    key = ks.checker(name)
    for _ in range(5):
        result = await store.txn(
            [Compare.create_revision(key, "==", 0)],
            [Op.put(key, _registration(role), lease=lease_id)],
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
            if pid != os.getpid() or started != _process_start(os.getpid()):
                # Our lease, reclaimed by a new process (an agent's planned restart).
                await store.txn(
                    [Compare.lease(key, "==", lease_id)],
                    [Op.put(key, _registration(role), lease=lease_id)],
                )
            return
        this_host = data.get("host") == socket.gethostname() and data.get("boot_id") == boot_id()
        gone = this_host and (
            not isinstance(pid, int)
            or _process_start(pid) is None
            or _process_start(pid) != started
            or pid == os.getpid()
        )
        if held.lease and gone and data.get("role") == "agent" and pid != os.getpid():
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
        if held.lease and pid != os.getpid():
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
    ) -> None:
        self.store = store
        self.ks = keyspace
        self.name = validate_name(name, "checker name")
        self.role = role
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
                st.connects = _NEVER
                if self._running:
                    self._unschedule(rk)
                    self._schedule_first(rk)
        self._wake.set()

    def republish(self) -> None:
        """Write every verdict again (e.g. after the agent re-created its lease)."""
        self._published_lease = 0
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

    # -- scheduling: one heap and one timer for every real; a short-lived task
    # per check. (A task per real would keep thousands of sleeping futures and
    # timer handles alive for a whole interval each, and the garbage collector
    # walks them all in every full collection: tens of milliseconds of slip.)

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
        horizon = loop.time() + DISPATCH_AHEAD
        heap = self._heap
        while heap and heap[0][0] <= horizon:
            due, _, rk, epoch = heapq.heappop(heap)
            if epoch != self._epochs.get(rk, 0) or rk not in self.states or rk in self._inflight:
                continue
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
                _verdict_text(st),
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
            for rk, st in self.states.items():
                if st.state is not None and rk not in self._pending:
                    self._pending[rk] = st.value()
            self._published_lease = lease
            log.info("publishing %d verdicts under lease %x", len(self._pending), lease)
        while self._pending:
            batch = list(self._pending.items())[:TXN_OPS]
            for rk, _ in batch:
                del self._pending[rk]
            ops = [
                Op.put(self.key(rk), v, lease=lease) if v is not None else Op.delete(self.key(rk))
                for rk, v in batch
            ]
            try:
                await self.store.txn([], ops)
            except EtcdError as e:
                for rk, v in batch:
                    self._pending.setdefault(rk, v)
                if isinstance(e, EtcdLeaseNotFound):
                    log.warning("lease %x is gone; verdicts wait for a new one", lease)
                    self._published_lease = 0
                    self._dead_lease = lease
                    return
                log.warning("cannot publish verdicts yet: %s", e)
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, 2.0)
                return
            self._backoff = 0.1
            self.writes += len(ops)
            metrics.health_writes.inc(len(ops))

    async def _claim(self, lease: int) -> bool:
        """Hold our name under ``lease`` before publishing under it."""
        try:
            await claim_name(self.store, self.ks, self.name, lease, self.role)
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
    pass


def _set_state_metrics(st: RealState) -> None:
    up, weight = _gauges(st)
    up.set(1 if st.state == "up" else 0)
    weight.set(st.desired_weight())


def _forget_metrics(st: RealState) -> None:
    values = [v for _, v in st.job.labels]
    for family in (metrics.real_up, metrics.real_weight):
        with contextlib.suppress(KeyError):
            family.remove(*values)


# ---------------------------------------------------------------------------
# the checker-only worker


class _LeaseHolder:
    """The standalone checker's own lease: granted, kept alive, re-granted when lost."""

    def __init__(self, store: Store, ttl: int) -> None:
        self.store = store
        self.ttl = max(2, ttl)
        self.lease_id = 0

    async def run(self) -> None:
        while True:
            if not self.lease_id:
                try:
                    self.lease_id = (await self.store.grant(self.ttl)).id
                    log.info("checker lease %x granted (TTL %ds)", self.lease_id, self.ttl)
                except EtcdError as e:
                    log.warning("cannot take a lease yet: %s", e)
                    await asyncio.sleep(1.0)
                    continue
            await asyncio.sleep(self.ttl / 3)
            try:
                answer = await self.store.keepalive_once(self.lease_id, timeout=self.ttl / 3)
            except EtcdError as e:
                log.warning("lease keepalive failed: %s", e)
                continue
            if answer.ttl <= 0:
                log.warning("checker lease %x expired; taking a new one", self.lease_id)
                self.lease_id = 0

    async def revoke(self) -> None:
        if self.lease_id:
            with contextlib.suppress(EtcdError):
                await self.store.revoke(self.lease_id)
            self.lease_id = 0


async def run_standalone(
    settings: EtcdSettings,
    keyspace: Keyspace,
    name: str,
    *,
    checks_dir: Path | None = None,
    listen: tuple[str, int] | None = None,
    ready: Callable[[Checker], None] | None = None,
) -> None:
    """``etcdha checker start``: check the reals of the stored config until cancelled.

    The lease TTL is the spec's election.lease_ttl; the lease is revoked on the
    way out, so this checker's verdicts disappear with it.
    """
    validate_name(name, "checker name")
    async with await Store.connect(settings) as store:
        spec: ClusterSpec | None = None
        config_rev = 0
        said = False
        while spec is None:
            kv = await store.get(keyspace.config())
            if kv is not None:
                stored = parse_stored(kv, keyspace)
                spec, config_rev = stored.spec, kv.mod_revision
                if stored.problem is not None:
                    log.error("the stored config is invalid: %s", stored.problem)
            if spec is None:
                if not said:
                    log.info("waiting for a config at %s", keyspace.config())
                    said = True
                await asyncio.sleep(1.0)
        holder = _LeaseHolder(store, math.ceil(spec.election.lease_ttl))
        holder.lease_id = (await store.grant(holder.ttl)).id
        try:
            await claim_name(store, keyspace, name, holder.lease_id, "worker")
        except BaseException:
            await asyncio.shield(holder.revoke())
            raise
        current = spec
        checker = Checker(
            store,
            keyspace,
            name,
            lambda: current,
            lambda: holder.lease_id,
            checks_dir=checks_dir,
            role="worker",
        )
        http: HTTPServer | None = None
        if listen is not None:
            http = HTTPServer(
                listen[0],
                listen[1],
                lambda: (True, "ok"),
                lambda: (bool(holder.lease_id), "ok" if holder.lease_id else "no lease"),
            )
            await http.start()

        async def follow_config() -> None:
            nonlocal current
            revision = config_rev
            while True:
                try:
                    async for batch in store.watch_prefix(keyspace.config(), revision + 1):
                        revision = batch.revision
                        for event in batch.events:
                            if event.kv.key != keyspace.config() or not event.kv.value:
                                continue
                            stored = parse_stored(event.kv, keyspace)
                            if stored.spec is None:
                                log.error("ignoring an invalid config: %s", stored.problem)
                                continue
                            current = stored.spec
                            log.info("config revision %d is in force", event.kv.mod_revision)
                            checker.update(current)
                except WatchCompacted:
                    kvs, revision = await store.get_prefix(keyspace.config())
                    for kv in kvs:
                        stored = parse_stored(kv, keyspace)
                        if kv.key == keyspace.config() and stored.spec is not None:
                            current = stored.spec
                            checker.update(current)

        checker.update(current)
        freeze_gc()
        log.info(
            "checker %s: %d real servers, %s event loop",
            name,
            len(checker.states),
            type(asyncio.get_running_loop()).__module__.split(".")[0],
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(holder.run(), name="lease")
                tg.create_task(follow_config(), name="config")
                tg.create_task(checker.run(), name="checker")
                if ready is not None:
                    ready(checker)
        finally:
            if http is not None:
                await http.close()
            await asyncio.shield(holder.revoke())
