"""Health aggregation: policies over live checkers, parsing of health keys, the report."""

from __future__ import annotations

import json

import pytest

from etcdha.health import (
    DOWN,
    UNKNOWN,
    UP,
    HealthRecord,
    aggregate,
    health_report,
    leaders_from,
    parse_health,
    summary,
)
from etcdha.keyspace import Keyspace
from etcdha.spec import ClusterSpec, HealthPolicy
from etcdha.store import KeyValue

KS = Keyspace("/etcdha", "default")
SVC = "tcp-192.0.2.200-80"


def rec(checker: str, state: str, *, weight: int | None = None, since: str = "") -> HealthRecord:
    return HealthRecord(
        checker, SVC, "192.0.2.12-80", state, since, f"{checker} {state}", 1.0, weight
    )


def kv(key: str, value: object, rev: int = 1) -> KeyValue:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return KeyValue(key, raw, rev, rev, 1, 7)


# -- policies


@pytest.mark.parametrize(
    ("policy", "states", "expected"),
    [
        ("majority", ["up", "up", "down"], UP),
        ("majority", ["up", "down"], DOWN),  # a tie is down
        ("majority", ["up"], UP),
        ("majority", ["down", "down", "up"], DOWN),
        ("all", ["up", "up", "up"], UP),
        ("all", ["up", "up", "down"], DOWN),
        ("any", ["down", "down", "up"], UP),
        ("any", ["down", "down"], DOWN),
        ("majority", [], UNKNOWN),
        ("all", [], UNKNOWN),
        ("any", [], UNKNOWN),
    ],
)
def test_policies_over_live_checkers(policy: str, states: list[str], expected: str) -> None:
    records = [rec(f"n{i}", s) for i, s in enumerate(states)]
    assert aggregate(policy, records).state == expected


def test_leader_policy_follows_the_leaders_checker_only() -> None:
    records = [rec("node1", DOWN), rec("node2", UP), rec("node3", UP)]
    verdict = aggregate(HealthPolicy.leader, records, leader="node1")
    assert verdict.state == DOWN
    assert "node1" in verdict.reason
    assert aggregate("leader", records, leader="node2").state == UP


def test_leader_policy_without_leader_or_its_verdict_is_unknown() -> None:
    records = [rec("node2", UP)]
    assert aggregate("leader", records, leader=None).state == UNKNOWN
    verdict = aggregate("leader", records, leader="node1")
    assert verdict.state == UNKNOWN
    assert "node1 has no verdict" in verdict.reason


def test_dynamic_weights() -> None:
    records = [rec("a", UP, weight=5), rec("b", UP, weight=3), rec("c", DOWN)]
    assert aggregate("any", records).weight == 3
    assert aggregate("majority", records).weight == 3
    assert aggregate("all", records).weight is None  # down: no weight
    assert aggregate("leader", records, leader="a").weight == 5
    assert aggregate("any", [rec("a", UP)]).weight is None


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        aggregate("most", [rec("a", UP)])


# -- parsing


def test_parse_health_keeps_good_keys_and_reports_bad_ones() -> None:
    good = {"state": "up", "since": "2024-01-01T00:00:00.000Z", "detail": "200 OK", "latency_ms": 1}
    kvs = [
        kv(KS.health("node1", SVC, "192.0.2.12-80"), good, rev=5),
        kv(KS.health("node2", SVC, "192.0.2.12-80"), {**good, "state": "down", "weight": 2}),
        kv(KS.health("node3", SVC, "192.0.2.12-80"), b"{not json"),
        kv(KS.health("node4", SVC, "192.0.2.12-80"), {"state": "sideways"}),
        kv(KS.health("node5", SVC, "192.0.2.12-80"), [1, 2]),
        kv(KS.health("node6", SVC, "192.0.2.12-80"), {**good, "latency_ms": "fast"}),
        kv(KS.health("node7", SVC, "192.0.2.12-80"), {**good, "weight": -1}),
        kv(KS.health("node8", SVC, "192.0.2.12-80"), b"\xff\xfe"),
        kv(KS.health_prefix() + "node1/tcp-192.0.2.200-80", good),  # too short
        kv(KS.health_prefix() + "node1/tcp-192.0.2.200-80/not-a-real", good),
        kv(KS.health_prefix() + "-bad/tcp-192.0.2.200-80/192.0.2.12-80", good),
        kv(KS.member("node1"), {"node": "node1"}),  # not a health key: ignored silently
        kv("/elsewhere/x", good),
    ]
    records, problems = parse_health(KS, kvs)
    assert [(r.checker, r.state) for r in records] == [("node1", "up"), ("node2", "down")]
    assert records[0].mod_revision == 5 and records[0].latency_ms == 1.0
    assert records[1].weight == 2
    assert len(problems) == 9
    assert all(p.startswith(KS.health_prefix()) for p in problems)


def test_leaders_from_skips_malformed_leader_keys() -> None:
    kvs = [
        kv(KS.leader("lvs"), {"node": "node1"}),
        kv(KS.leader("web"), b"garbage"),
        kv(KS.leader("db"), {"node": 3}),
    ]
    assert leaders_from(KS, kvs) == {"lvs": "node1"}


# -- the report


SPEC = ClusterSpec.model_validate(
    {
        "nodes": ["node1", "node2", "node3"],
        "groups": [{"name": "lvs", "node": "node1", "resources": ["ipvs"]}],
        "virtual_services": [
            {
                "address": "192.0.2.200:80",
                "reals": [{"address": "192.0.2.12:80"}, {"address": "192.0.2.6:80"}],
            },
            {
                "address": "192.0.2.200:443",
                "health_policy": "majority",
                "reals": [{"address": "192.0.2.20->192.0.2.21:443"}],
            },
        ],
    }
)


def test_health_report_per_real() -> None:
    def v(state: str, since: str, detail: str) -> dict[str, object]:
        return {"state": state, "since": since, "detail": detail, "latency_ms": 2.5}

    https = "tcp-192.0.2.200-443"
    kvs = [
        kv(KS.config(), json.loads(SPEC.model_dump_json())),
        kv(KS.leader("lvs"), {"node": "node2"}),
        kv(KS.health("node1", SVC, "192.0.2.12-80"), v("down", "T1", "503")),
        kv(KS.health("node2", SVC, "192.0.2.12-80"), v("up", "T2", "200 OK")),
        kv(KS.health("node1", https, "192.0.2.20-443"), v("up", "T3", "a")),
        kv(KS.health("node2", https, "192.0.2.20-443"), v("up", "T4", "b")),
        kv(KS.health("node3", https, "192.0.2.20-443"), v("down", "T5", "c")),
        kv(KS.health("node1", https, "192.0.2.99-443"), v("up", "T6", "old")),
        kv(KS.health("node1", https, "192.0.2.21-443"), b"nonsense"),
    ]
    reports, problems = health_report(KS, kvs)
    assert len(problems) == 1 and "malformed" in problems[0]
    by = {(r.service, r.real): r for r in reports}
    first = by[(SVC, "192.0.2.12-80")]
    assert (first.state, first.policy, first.since, first.detail) == (
        "up",
        "leader",
        "T2",
        "200 OK",
    )
    assert {v["checker"]: v["state"] for v in first.views} == {"node1": "down", "node2": "up"}
    assert by[(SVC, "192.0.2.6-80")].state == UNKNOWN  # the leader has no verdict
    ranged = by[(https, "192.0.2.20-443")]
    assert (ranged.state, ranged.policy, ranged.since, ranged.detail) == (
        "up",
        "majority",
        "T4",
        "b",
    )
    assert by[(https, "192.0.2.21-443")].state == UNKNOWN
    stale = by[(https, "192.0.2.99-443")]
    assert not stale.in_config and stale.state == UNKNOWN  # leader policy, no leader given
    assert [r.real for r in reports][:4] == [
        "192.0.2.12-80",
        "192.0.2.6-80",
        "192.0.2.20-443",
        "192.0.2.21-443",
    ]
    assert summary(reports) == {"up": 2, "down": 0, "unknown": 3}
    json.dumps([r.to_json() for r in reports])  # JSON-ready


def test_health_report_without_config_or_with_a_broken_one() -> None:
    kvs = [kv(KS.health("node1", SVC, "192.0.2.12-80"), {"state": "up"})]
    reports, problems = health_report(KS, kvs)
    assert len(reports) == 1 and not reports[0].in_config and problems == []
    reports, problems = health_report(KS, [kv(KS.config(), b"{}"), *kvs])
    assert len(reports) == 1 and len(problems) == 1 and "invalid" in problems[0]
