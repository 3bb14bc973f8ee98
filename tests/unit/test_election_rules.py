"""Leadership decisions as Heartbeat would make them, without etcd."""

from __future__ import annotations

import pytest

from etcdha.election_rules import (
    CAMPAIGN_STEP,
    Action,
    ClusterView,
    Leader,
    Member,
    decide,
    preference,
)
from etcdha.spec import ClusterSpec


def spec(auto_failback: bool = True, failback_delay: str = "0s") -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "nodes": ["node1", "node2", "node3"],
            "election": {"auto_failback": auto_failback, "failback_delay": failback_delay},
            "groups": [
                {"name": "web", "node": "node1", "resources": [{"address": "192.0.2.200/24"}]},
                {"name": "db", "node": "node2", "resources": [{"address": "192.0.2.201/24"}]},
            ],
        }
    )


def me(node: str, eligible: bool = True, why: str | None = None, ping_ok: bool = True) -> Member:
    return Member(node, 1, eligible, why, ping_ok)


def view(*eligible: str, now: float = 0.0, ineligible: tuple[str, ...] = ()) -> ClusterView:
    v = ClusterView()
    for i, n in enumerate(eligible):
        v.note_member(Member(n, 100 + i, True), now)
    for n in ineligible:
        v.note_member(Member(n, 200, False, "standby"), now)
    return v


def test_preference_puts_the_groups_node_first() -> None:
    s = spec()
    assert preference(s, s.groups[0]) == ["node1", "node2", "node3"]
    assert preference(s, s.groups[1]) == ["node2", "node1", "node3"]


def test_vacant_group_goes_to_the_most_preferred_eligible_node() -> None:
    s = spec()
    v = view("node1", "node2", "node3")
    v.set_leader("web", None, now=10.0)
    assert decide(s, s.groups[0], v, me("node1"), 10.0).action is Action.campaign
    d2 = decide(s, s.groups[0], v, me("node2"), 10.0)
    assert d2.action is Action.wait and d2.retry_in == pytest.approx(CAMPAIGN_STEP)
    # If node1 has not taken it by its turn, node2 campaigns; node3 waits longer.
    assert decide(s, s.groups[0], v, me("node2"), 10.0 + CAMPAIGN_STEP).action is (Action.campaign)
    assert decide(s, s.groups[0], v, me("node3"), 10.0 + CAMPAIGN_STEP).action is (Action.wait)


def test_ineligible_node_never_campaigns_and_hands_over() -> None:
    s = spec()
    v = view("node2", ineligible=("node1",))
    v.set_leader("web", None, 0.0)
    assert decide(s, s.groups[0], v, me("node1", False, "standby"), 0.0).action is Action.follow
    assert decide(s, s.groups[0], v, me("node2"), 0.0).action is Action.campaign
    v.set_leader("web", Leader("node1", 200, 7), 1.0)
    d = decide(s, s.groups[0], v, me("node1", False, "standby"), 1.0)
    assert d.action is Action.handover and "standby" in d.reason


def test_auto_failback_waits_for_failback_delay() -> None:
    s = spec(failback_delay="5s")
    v = view("node2", now=0.0)
    v.set_leader("web", Leader("node2", 101, 9), 0.0)
    assert decide(s, s.groups[0], v, me("node2"), 1.0).action is Action.hold
    v.note_member(Member("node1", 300, True), now=10.0)  # node1 returns at t=10
    d = decide(s, s.groups[0], v, me("node2"), 12.0)
    assert d.action is Action.hold and d.retry_in == pytest.approx(3.0)
    d = decide(s, s.groups[0], v, me("node2"), 15.0)
    assert d.action is Action.handover and "auto_failback" in d.reason


def test_no_failback_when_auto_failback_is_off() -> None:
    s = spec(auto_failback=False)
    v = view("node1", "node2")
    v.set_leader("web", Leader("node2", 101, 9), 0.0)
    assert decide(s, s.groups[0], v, me("node2"), 100.0).action is Action.hold


def test_takeover_moves_the_group_to_its_target() -> None:
    s = spec()
    v = view("node1", "node2", "node3")
    v.set_leader("web", Leader("node1", 100, 5), 0.0)
    v.takeover["web"] = "node3"
    d = decide(s, s.groups[0], v, me("node1"), 1.0)
    assert d.action is Action.handover and "node3" in d.reason
    v.set_leader("web", None, 2.0)
    assert decide(s, s.groups[0], v, me("node3"), 2.0).action is Action.campaign
    assert decide(s, s.groups[0], v, me("node1"), 2.0).action is Action.wait
    # Once node3 leads, auto_failback does not pull the group straight back.
    v.set_leader("web", Leader("node3", 102, 8), 3.0)
    assert decide(s, s.groups[0], v, me("node3"), 3.0).action is Action.hold


def test_takeover_towards_an_ineligible_node_is_ignored() -> None:
    s = spec()
    v = view("node1", ineligible=("node2",))
    v.set_leader("web", Leader("node1", 100, 5), 0.0)
    v.takeover["web"] = "node2"
    assert decide(s, s.groups[0], v, me("node1"), 1.0).action is Action.hold


def test_two_groups_led_by_different_nodes() -> None:
    s = spec()
    v = view("node1", "node2")
    v.set_leader("web", None, 0.0)
    v.set_leader("db", None, 0.0)
    assert decide(s, s.groups[0], v, me("node1"), 0.0).action is Action.campaign
    assert decide(s, s.groups[1], v, me("node2"), 0.0).action is Action.campaign
    assert decide(s, s.groups[1], v, me("node1"), 0.0).action is Action.wait


def test_a_follower_follows() -> None:
    s = spec()
    v = view("node1", "node2")
    v.set_leader("web", Leader("node1", 100, 5), 0.0)
    assert decide(s, s.groups[0], v, me("node2"), 0.0).action is Action.follow


def test_ping_nodes_count_as_ipfail_counts_them() -> None:
    s = spec()
    v = view("node1", "node2")
    v.set_leader("web", Leader("node1", 100, 5), 0.0)
    # node1 reaches no ping node but node2 does: node1 hands over.
    lost = me("node1", True, "no ping node answers", ping_ok=False)
    d = decide(s, s.groups[0], v, lost, 1.0)
    assert d.action is Action.handover and "node2 reaches one" in d.reason
    v.set_leader("web", None, 2.0)
    v.note_member(Member("node1", 100, True, "no ping node answers", ping_ok=False), 2.0)
    assert decide(s, s.groups[0], v, lost, 2.0).action is Action.follow
    assert decide(s, s.groups[0], v, me("node2"), 2.0).action is Action.campaign
    # The ping node is silent for everybody: the leader keeps leading.
    v.note_member(Member("node2", 101, True, None, ping_ok=False), 3.0)
    v.set_leader("web", Leader("node1", 100, 6), 3.0)
    assert decide(s, s.groups[0], v, lost, 3.0).action is Action.hold


def test_a_node_that_handed_over_gives_the_preferred_one_a_lease_ttl_to_take_it() -> None:
    s = spec()
    ttl = s.election.lease_ttl
    v = view("node1", "node2", "node3")
    v.set_leader("web", None, now=10.0)  # node2 handed web over to node1 at 10.0
    d = decide(s, s.groups[0], v, me("node2"), 10.0 + 2 * CAMPAIGN_STEP, handed_over_at=10.0)
    assert d.action is Action.wait and d.retry_in == pytest.approx(ttl - 2 * CAMPAIGN_STEP)
    assert decide(s, s.groups[0], v, me("node2"), 10.0 + ttl, handed_over_at=10.0).action is (
        Action.campaign
    )
    # node1 dies meanwhile: its member key goes, node2 ranks first and takes it at once
    v.drop_member("node1")
    assert decide(s, s.groups[0], v, me("node2"), 10.5, handed_over_at=10.0).action is (
        Action.campaign
    )
