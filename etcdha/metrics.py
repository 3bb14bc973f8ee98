"""Prometheus metrics (prefix etcdha_, base units, counters end in _total)."""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

REGISTRY = CollectorRegistry(auto_describe=True)

is_leader = Gauge(
    "etcdha_is_leader", "1 while this node leads the resource group", ["group"], registry=REGISTRY
)
state = Gauge(
    "etcdha_group_state",
    "1 for the group's current state on this node (leader, follower, fenced)",
    ["group", "state"],
    registry=REGISTRY,
)
transitions = Counter(
    "etcdha_leader_transitions_total",
    "Leadership changes on this node, by direction (acquired, released, fenced, deposed)",
    ["group", "direction"],
    registry=REGISTRY,
)
keepalive_duration = Histogram(
    "etcdha_lease_keepalive_duration_seconds",
    "Round trip of lease keepalives",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
keepalive_failures = Counter(
    "etcdha_lease_keepalive_failures_total",
    "Lease keepalives that got no answer",
    registry=REGISTRY,
)
lease_deadline = Gauge(
    "etcdha_lease_deadline_seconds",
    "Seconds left before this node must drop its addresses if no keepalive succeeds",
    registry=REGISTRY,
)
etcd_requests = Histogram(
    "etcdha_etcd_request_duration_seconds",
    "etcd requests made by the HA loop, by operation and result",
    ["op", "result"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
addresses_assigned = Gauge(
    "etcdha_addresses_assigned",
    "Addresses of the group held by this node",
    ["group"],
    registry=REGISTRY,
)
announcements = Counter(
    "etcdha_announcements_sent_total",
    "Gratuitous ARPs (arp) and unsolicited neighbour advertisements (na) sent",
    ["kind"],
    registry=REGISTRY,
)
ha_loop_last_run = Gauge(
    "etcdha_ha_loop_last_run_timestamp_seconds",
    "When the HA loop last completed a pass (Unix time)",
    registry=REGISTRY,
)
eligible = Gauge(
    "etcdha_eligible",
    "1 while this node may lead (not standby, interfaces, ping nodes)",
    registry=REGISTRY,
)

# Real-server health checks. IPVS_LABELS are node_exporter's names for an IPVS
# backend (node_ipvs_backend_*), so PromQL can join on them: local_address and
# local_port of the virtual service ("" and 0 for fwmark services),
# remote_address and remote_port of the real server, proto (TCP, UDP, SCTP,
# FWM) and local_mark (the firewall mark, "" otherwise).
IPVS_LABELS = (
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "proto",
    "local_mark",
)


class Buckets:
    """A histogram kept as plain numbers: a sample costs one bisect, where
    prometheus_client's costs locks and a scan (a checker takes two samples per
    check, thousands a second). Exported by :class:`CheckMetrics`."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        bounds = (*map(floatToGoString, self.bounds), "+Inf")
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class CheckSource(Protocol):
    def check_counts(self) -> Iterable[tuple[tuple[str, ...], int, int]]:
        """(IPVS label values, checks up, checks down) per real server."""
        ...


DURATION_BOUNDS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
SLIP_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class CheckMetrics(Collector):
    """The per-check metrics, from numbers the checkers keep themselves:
    etcdha_checks_total (by real server and result), etcdha_check_duration_seconds
    (by probe) and etcdha_check_schedule_slip_seconds."""

    def __init__(self) -> None:
        self.sources: weakref.WeakSet[Any] = weakref.WeakSet()
        self.slip = Buckets(SLIP_BOUNDS)
        self.durations: dict[str, Buckets] = {}

    def add_source(self, source: CheckSource) -> None:
        self.sources.add(source)

    def duration(self, probe: str) -> Buckets:
        found = self.durations.get(probe)
        if found is None:
            found = self.durations[probe] = Buckets(DURATION_BOUNDS)
        return found

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        return list(self._families(samples=True))

    def _families(self, samples: bool = False) -> Iterable[Metric]:
        checks = CounterMetricFamily(
            "etcdha_checks",
            "Health checks of real servers run by this checker, by result (up, down)",
            labels=[*IPVS_LABELS, "result"],
        )
        duration = HistogramMetricFamily(
            "etcdha_check_duration_seconds",
            "How long one health check took, by probe (http, connect, external, ...)",
            labels=["probe"],
        )
        slip = HistogramMetricFamily(
            "etcdha_check_schedule_slip_seconds",
            "How late a health check started against its schedule",
        )
        if samples:
            totals: dict[tuple[str, ...], list[int]] = {}
            for source in list(self.sources):
                for labels, up, down in source.check_counts():
                    both = totals.setdefault(labels, [0, 0])
                    both[0] += up
                    both[1] += down
            for labels, (up, down) in totals.items():
                checks.add_metric([*labels, "up"], up)
                checks.add_metric([*labels, "down"], down)
            for probe, buckets in sorted(self.durations.items()):
                duration.add_metric([probe], buckets.cumulative(), buckets.total)
            slip.add_metric([], self.slip.cumulative(), self.slip.total)
        return (checks, duration, slip)


check_metrics = CheckMetrics()
REGISTRY.register(check_metrics)


real_up = Gauge(
    "etcdha_real_server_up",
    "1 while this checker's verdict for the real server is up",
    list(IPVS_LABELS),
    registry=REGISTRY,
)
real_weight = Gauge(
    "etcdha_real_server_desired_weight",
    "The weight this checker's verdict asks for: the configured (or dynamic) weight when up, "
    "0 when down",
    list(IPVS_LABELS),
    registry=REGISTRY,
)
health_writes = Counter(
    "etcdha_health_writes_total",
    "Health keys this checker wrote or deleted in etcd (verdict changes and republishing)",
    registry=REGISTRY,
)

# What a checker exports. The agent's checker runs in a process of its own
# (etcdha.checker_process), which serves these; the agent serves the rest and
# appends the checker's, so its /metrics shows both as before.
CHECKER_COLLECTORS: tuple[Collector, ...] = (check_metrics, real_up, real_weight, health_writes)


class _Collectors:
    """A registry-like view (what generate_latest reads) over some collectors."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.collect = collect


def _checker_families(described: bool = False) -> Iterable[Metric]:
    """The families (``described``: without their samples, which cost a pass
    over every real)."""
    for collector in CHECKER_COLLECTORS:
        describe = getattr(collector, "describe", None) if described else None
        yield from describe() if describe is not None else collector.collect()


def _other_families() -> Iterable[Metric]:
    names = {m.name for m in _checker_families(described=True)}
    return (m for m in REGISTRY.collect() if m.name not in names)


def checker_exposition() -> bytes:
    """The checker's metrics alone, in the text exposition format."""
    return generate_latest(_Collectors(_checker_families))


def exposition(*, checker: bool = True) -> bytes:
    """Every metric of this process; ``checker=False``: without the checker's."""
    if checker:
        return generate_latest(REGISTRY)
    return generate_latest(_Collectors(_other_families))


# The IPVS table of each group this node reconciles (leader, or warm standby copy).
ipvs_reconcile_duration = Histogram(
    "etcdha_ipvs_reconcile_duration_seconds",
    "One reconcile of a group's IPVS table: kernel dump, diff and changes",
    ["group"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
ipvs_rule_changes = Counter(
    "etcdha_ipvs_rule_changes_total",
    "IPVS changes made by reconciles, by operation (add-service, edit-service, add-dest, "
    "edit-dest, delete-dest, delete-service)",
    ["group", "op"],
    registry=REGISTRY,
)
ipvs_desired_services = Gauge(
    "etcdha_ipvs_desired_services",
    "Virtual services in the group's desired IPVS table",
    ["group"],
    registry=REGISTRY,
)
ipvs_desired_destinations = Gauge(
    "etcdha_ipvs_desired_destinations",
    "Destinations (reals and active fallbacks) in the group's desired IPVS table",
    ["group"],
    registry=REGISTRY,
)
ipvs_fallback_active = Gauge(
    "etcdha_ipvs_fallback_active_services",
    "Virtual services of the group served by their fallback (no real up)",
    ["group"],
    registry=REGISTRY,
)
ipvs_reconcile_errors = Counter(
    "etcdha_ipvs_reconcile_errors_total",
    "Reconcile failures, by kind: refused (the kernel refused an operation), failed (the "
    "kernel table could not be read or written)",
    ["group", "kind"],
    registry=REGISTRY,
)
