"""etcd restored from an older snapshot, or rebuilt empty, under running agents.

The store's revision goes back: the agents must notice, drop what they hold,
read everything again and take nothing read back for proof, and the group
must end with one holder, the one etcd names; never two meanwhile. Real etcd,
real agents, real namespaces, every director's addresses sampled every 10 ms.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from failover_support import VIP, spec, start_both

from etcdha.lab.directors import AddressSampler, DirectorLab, etcdha_argv
from etcdha.lab.netns import netns_exec_argv

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

TTL = 4.0


def settled(lab: DirectorLab) -> str | None:
    """The node etcd names for web, if it (and only it) holds the VIP."""
    leader = lab.leader("web")
    return leader if leader is not None and lab.holders(VIP) == [leader] else None


def restart_etcd_with(lab: DirectorLab, prepare: str, snapshot: Path | None = None) -> None:
    member = lab.etcd[0]
    member.stop()
    if prepare == "restore":
        assert snapshot is not None
        member.restore(snapshot)
    else:
        member.wipe()
    member.start(wait=False)
    lab.wait_etcd()


def planned_restart(lab: DirectorLab, node: str) -> None:
    import subprocess

    agent = lab.agents[node]
    subprocess.run(
        netns_exec_argv(
            lab.seed.ns(node),
            etcdha_argv(
                "agent", "stop", "--restart", "--node", node, "--run-dir", str(agent.run_dir)
            ),
        ),
        check=True,
        capture_output=True,
        timeout=30,
    )
    lab.start_agent(node)


def test_a_restore_from_an_older_snapshot_never_gives_two_holders(lab: DirectorLab) -> None:
    start_both(lab, spec(ttl=TTL, keepalive=1))
    snapshot = lab.work / "backup.db"
    # The snapshot names node1; then node2 takes over, so the restore goes back
    # to a store where node1 leads while node2 holds the VIP.
    lab.etcdctl("snapshot", "save", str(snapshot))
    lab.etcdha("standby", "node1")
    lab.wait_for(lambda: settled(lab) == "node2", 10, "node2 to lead")
    with AddressSampler(lab, VIP) as sampler:
        restart_etcd_with(lab, "restore", snapshot)
        restored = time.monotonic()
        lab.wait_for(lambda: settled(lab), 4 * TTL + 5, "one holder, the one etcd names")
        print(f"settled on {settled(lab)} {time.monotonic() - restored:.2f}s after etcd was back")
        # The next step: a planned restart of the other node reads the
        # restored store; it must not adopt a term and hold the VIP beside the leader.
        holder = settled(lab)
        other = "node2" if holder == "node1" else "node1"
        planned_restart(lab, other)
        time.sleep(TTL + 2)
        assert settled(lab) == holder
    assert sampler.overlaps() == [], f"two holders: {sampler.changes}"
    for node in ("node1", "node2"):
        assert lab.agents[node].process.alive(), f"{node}'s agent stopped"
        assert "etcd went back in time" in lab.agents[node].log(), node


def test_etcd_rebuilt_empty_brings_the_service_back_on_one_holder(lab: DirectorLab) -> None:
    start_both(lab, spec(ttl=TTL, keepalive=1))
    with AddressSampler(lab, VIP) as sampler:
        restart_etcd_with(lab, "wipe")
        rebuilt = time.monotonic()
        # The config is gone with the data: the agents go on with the last one.
        lab.wait_for(lambda: settled(lab), 4 * TTL + 5, "one holder, the one etcd names")
        print(f"settled on {settled(lab)} {time.monotonic() - rebuilt:.2f}s after etcd was back")
        time.sleep(2.0)
        assert settled(lab) is not None
    assert sampler.overlaps() == [], f"two holders: {sampler.changes}"
    for node in ("node1", "node2"):
        assert lab.agents[node].process.alive(), f"{node}'s agent stopped"
    members = lab.etcdctl("get", "--prefix", "--keys-only", "/etcdha/default/members/")
    assert "node1" in members and "node2" in members, members
    fences = lab.etcdctl("get", "--prefix", "--print-value-only", "/etcdha/default/fence/")
    assert len([json.loads(v) for v in fences.splitlines() if v.strip()]) == 2, fences
