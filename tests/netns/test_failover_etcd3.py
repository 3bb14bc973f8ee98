"""Leadership rides through trouble in a three-member etcd: no failover."""

from __future__ import annotations

import os
import time

import pytest
from failover_support import VIP, spec, start_both

from etcdha.lab.directors import AddressSampler, DirectorLab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def leader_events(lab: DirectorLab) -> list[str]:
    return [
        line
        for line in lab.etcdha("events", "--limit", "0").stdout.splitlines()
        if "leader-" in line
    ]


def test_one_etcd_member_dying_causes_no_failover(lab3: DirectorLab) -> None:
    start_both(lab3)
    before = lab3.etcdha("events", "--json").stdout
    with AddressSampler(lab3, VIP) as sampler:
        # The worst member to lose: etcd's own leader.
        lab3.etcd[lab3.etcd_leader_index()].kill()
        time.sleep(3 * 3.0)
    assert [h for _, h in sampler.changes] == [("node1",)]
    assert lab3.etcdha("events", "--json").stdout.count("leader-") == before.count("leader-")


def test_fifty_etcd_leader_changes_cause_no_failover(lab3: DirectorLab) -> None:
    # lease_ttl 2 s, the minimum: an etcd leader change re-grants every lease
    # its full TTL, so leadership must ride through each move.
    start_both(lab3, spec(ttl=2, keepalive=0.5))
    before = lab3.etcdha("events", "--json").stdout.count("leader-")
    with AddressSampler(lab3, VIP) as sampler:
        for _ in range(50):
            lab3.move_etcd_leader()
            time.sleep(0.1)
        time.sleep(2.0)
    assert [h for _, h in sampler.changes] == [("node1",)]
    assert lab3.etcdha("events", "--json").stdout.count("leader-") == before
    assert lab3.leader("web") == "node1"
