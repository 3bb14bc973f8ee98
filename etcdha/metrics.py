"""Prometheus metrics (prefix etcdha_, base units, counters end in _total)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
