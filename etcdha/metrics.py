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
checks = Counter(
    "etcdha_checks_total",
    "Health checks of real servers run by this checker, by result (up, down)",
    [*IPVS_LABELS, "result"],
    registry=REGISTRY,
)
check_duration = Histogram(
    "etcdha_check_duration_seconds",
    "How long one health check took, by probe (http, connect, external, ...)",
    ["probe"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
check_slip = Histogram(
    "etcdha_check_schedule_slip_seconds",
    "How late a health check started against its schedule",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
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
