"""When a new leader may place its group's addresses (election_rules.may_place),
and how fence records are read (view_sync.fence_seen): pure logic."""

from __future__ import annotations

import json

from etcdha.election_rules import ClusterView, FenceSeen, may_place
from etcdha.store import KeyValue
from etcdha.view_sync import fence_seen

NODES = ["node1", "node2"]


def view(*records: FenceSeen, distrusted_since: float | None = None) -> ClusterView:
    v = ClusterView(distrusted_since=distrusted_since)
    for r in records:
        v.fences[r.node] = r
    return v


def test_nobody_listed_nothing_to_wait_for() -> None:
    assert may_place(view(), "web", "node2", 100.0, NODES, 3.0).clear


def test_a_record_that_lists_the_group_holds_it_back_until_its_ttl_has_passed() -> None:
    v = view(FenceSeen("node1", {"web": 7}, ttl=3.0, seen_at=100.0))
    gate = may_place(v, "web", "node2", 101.0, NODES, 3.0)
    assert not gate.clear
    assert gate.retry_in == 2.0
    assert "node1 may still hold its addresses" in gate.reason and "term 7" in gate.reason
    assert may_place(v, "web", "node2", 103.0, NODES, 3.0).clear
    # Another group, or our own record, never holds us back.
    assert may_place(v, "mail", "node2", 101.0, NODES, 3.0).clear
    assert may_place(v, "web", "node1", 101.0, NODES, 3.0).clear


def test_the_acknowledgement_clears_at_once() -> None:
    v = view(FenceSeen("node1", {}, ttl=3.0, seen_at=100.5))
    assert may_place(v, "web", "node2", 100.6, NODES, 3.0).clear


def test_a_deleted_record_still_counts_for_what_it_listed() -> None:
    v = view(FenceSeen("node1", {"web": 7}, ttl=3.0, seen_at=100.0, present=False))
    gate = may_place(v, "web", "node2", 102.0, NODES, 3.0)
    assert not gate.clear and "before it was deleted" in gate.reason


def test_after_the_store_went_back_only_records_written_since_count() -> None:
    stale = FenceSeen("node1", {}, ttl=3.0, seen_at=200.0, trusted=False)
    gate = may_place(view(stale, distrusted_since=200.0), "web", "node2", 201.0, NODES, 3.0)
    assert not gate.clear and "etcd went back in time" in gate.reason
    assert gate.retry_in == 2.0
    fresh = FenceSeen("node1", {}, ttl=3.0, seen_at=200.5)
    assert may_place(view(fresh, distrusted_since=200.0), "web", "node2", 201.0, NODES, 3.0).clear
    # No record at all from a director of the spec: wait the longest TTL known.
    nothing = may_place(view(distrusted_since=200.0), "web", "node2", 201.0, NODES, 5.0)
    assert not nothing.clear and nothing.retry_in == 4.0
    assert may_place(view(distrusted_since=200.0), "web", "node2", 205.0, NODES, 5.0).clear


def test_the_longest_wait_wins() -> None:
    v = view(
        FenceSeen("node1", {"web": 7}, ttl=3.0, seen_at=100.0),
        FenceSeen("node3", {"web": 5}, ttl=10.0, seen_at=99.0),
    )
    gate = may_place(v, "web", "node2", 100.0, [*NODES, "node3"], 3.0)
    assert gate.retry_in == 9.0 and "node3" in gate.reason


def kv(value: object) -> KeyValue:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return KeyValue("/etcdha/default/fence/node1", raw, 5, 9, 2, 0)


def test_fence_records_are_read_strictly() -> None:
    good = fence_seen("node1", kv({"groups": {"web": 7}, "ttl": 3, "lease": 1}), 10.0, True)
    assert good == FenceSeen("node1", {"web": 7}, 3.0, 10.0, True)
    bad: object
    for bad in (
        b"not json",
        b"\xff",
        [],
        {"groups": {"web": 7}},
        {"groups": {"web": "7"}, "ttl": 3},
        {"groups": {"web": True}, "ttl": 3},
        {"groups": ["web"], "ttl": 3},
        {"groups": {}, "ttl": 0},
        {"groups": {}, "ttl": True},
    ):
        assert fence_seen("node1", kv(bad), 10.0, True) is None, bad


def test_a_late_leader_event_older_than_the_view_is_ignored() -> None:
    from etcdha.election_rules import Leader

    v = ClusterView()
    # We won term 20 and noted it at once; the watch then delivers, late, the
    # deletion of the previous leader key (revision 19): it must not undo ours.
    v.set_leader("web", Leader("node2", 5, 20), 1.0, revision=20)
    v.set_leader("web", None, 1.1, revision=19)
    assert v.leaders["web"].term == 20
    v.set_leader("web", None, 1.2, revision=21)
    assert "web" not in v.leaders
