"""etcd_unreachable: failsafe — the VIP stays only while every director confirms."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import directors
from failover_support import VIP, spec, start_both

from etcdha import clock
from etcdha.lab.directors import AddressSampler, DirectorLab
from etcdha.membership import boot_id

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

TTL = 5.0  # room for confirmations on a loaded 2-core machine
STARTUP = 30.0  # an agent's start-up: over 10 s seen on a loaded 2-core machine


def failsafe_spec(ttl: float) -> str:
    return spec(ttl=ttl, extra_election="  etcd_unreachable: failsafe").replace(
        "nodes: [node1, node2]",
        # Directors confirm to each other over the public network, not etcd's link.
        "nodes:\n  - {name: node1, peer: '192.0.2.11:9615'}"
        "\n  - {name: node2, peer: '192.0.2.12:9615'}",
    )


FAILSAFE = failsafe_spec(TTL)


@pytest.fixture
def tls_lab(request: pytest.FixtureRequest) -> Iterator[DirectorLab]:
    yield from directors(request, nodes=2, tls=True)


def test_etcd_down_for_everybody_keeps_the_vip(tls_lab: DirectorLab) -> None:
    lab = tls_lab
    start_both(lab, FAILSAFE)
    with AddressSampler(lab, VIP) as sampler:
        lab.etcd[0].stop()
        time.sleep(2 * TTL)  # far past the deadline that `drop` would keep
        assert lab.holders(VIP) == ["node1"]
        lab.etcd[0].start(wait=False)
        lab.wait_etcd()
        time.sleep(TTL)
    assert sampler.overlaps() == []
    assert lab.holders(VIP) == ["node1"]
    assert "every other director confirms" in lab.agents["node1"].log()
    assert "promised node1 not to campaign" in lab.agents["node2"].log()


def test_a_director_that_reaches_etcd_refuses_and_the_leader_drops(tls_lab: DirectorLab) -> None:
    lab = tls_lab
    start_both(lab, FAILSAFE)
    with AddressSampler(lab, VIP) as sampler:
        cut = time.monotonic()
        lab.seed.cut_control("node1")
        lab.wait_for(lambda: lab.holders(VIP) == ["node2"], TTL + 2, "node2 to take over")
        dropped = sampler.last_time("node1")
        assert dropped is not None and dropped - cut < TTL
    assert sampler.overlaps() == []
    assert "node2 refused: I can reach etcd" in lab.agents["node1"].log()


def _promise_end(agent_run_dir: Path, node: str) -> float | None:
    """When the promise recorded in a director's run directory ends, on this
    process's monotonic clock (the sampler's); None if there is no record."""
    try:
        record = json.loads((agent_run_dir / f"failsafe-default-{node}.json").read_text())
    except FileNotFoundError:
        return None
    return clock.monotonic_of(float(record["until"]))


# Promises outlast node2's restart (over 5 s beside a CPU hog), so that its new
# agent finds one still binding.
RESTART_TTL = 10.0


def test_a_restarted_director_honours_the_promise_its_predecessor_made(
    tls_lab: DirectorLab,
) -> None:
    lab = tls_lab
    start_both(lab, failsafe_spec(RESTART_TTL))
    with AddressSampler(lab, VIP) as sampler:
        lab.seed.cut_control("node1")
        lab.seed.cut_control("node2")
        lab.wait_for(
            lambda: "promised node1 not to campaign" in lab.agents["node2"].log(),
            RESTART_TTL,
            "node2's promise",
        )
        # node1's lease expires in etcd: only the promise keeps node2 from campaigning.
        # (Polled gently: every etcdctl run competes with the sampler.)
        lab.wait_for(
            lambda: lab.leader("web") is None,
            2 * RESTART_TTL,
            "node1's lease to expire",
            interval=0.2,
        )
        assert lab.holders(VIP) == ["node1"]
        lab.kill_agent("node2")
        promise_end = _promise_end(lab.agents["node2"].run_dir, "node2")
        lab.seed.restore_control("node2")
        lab.start_agent("node2")
        lab.wait_for(
            lambda: sampler.first_time("node2") is not None,
            STARTUP + RESTART_TTL,
            "node2 to take over",
        )
    assert sampler.overlaps() == [], f"two holders seen: {sampler.changes}"
    assert promise_end is not None, "node2 kept no record of its promise"
    took = sampler.first_time("node2")
    assert took is not None and took >= promise_end, (
        f"node2 took the VIP {promise_end - (took or 0):.3f}s before its promise ended"
    )
    assert "may not campaign until" in lab.agents["node2"].log(), (
        "node2's start-up outlasted the promise: the restart tested nothing"
    )
    # Overlaps or an early take shorter than the longest gap could go unseen.
    assert sampler.max_gap < 0.2, f"sampling stalled for {sampler.max_gap:.3f}s"


def test_a_promise_from_before_a_reboot_binds_for_its_whole_length(tls_lab: DirectorLab) -> None:
    """A run directory that survived a reboot: CLOCK_BOOTTIME started again, so the
    record's end means nothing now; the agent waits the promise's whole length."""
    lab = tls_lab
    lab.apply(FAILSAFE)
    length = TTL - 1  # not the lease TTL, which an unreadable record would give
    run_dir = lab.work / "run-node1"  # where lab.start_agent puts node1's
    run_dir.mkdir()
    record = run_dir / "failsafe-default-node1.json"
    # Made 3 s after another boot: long past on this boot's clock.
    record.write_text(
        json.dumps(
            {"node": "node1", "to": "node2", "boot_id": "another boot", "until": 3.0, "for": length}
        )
    )
    with AddressSampler(lab, VIP) as sampler:
        launched = time.monotonic()
        lab.start_agent("node1")
        lab.wait_for(
            lambda: sampler.first_time("node1") is not None, STARTUP + length, "node1 to lead"
        )
    took = sampler.first_time("node1")
    assert took is not None
    assert took - launched >= length, f"node1 took the VIP {took - launched:.3f}s after its start"
    log = lab.agents["node1"].log()
    assert "before this machine last booted" in log
    # Rewritten as this boot's record: an agent started again meanwhile waits too.
    assert json.loads(record.read_text())["boot_id"] == boot_id()


def test_a_director_that_cannot_record_its_promise_refuses(tls_lab: DirectorLab) -> None:
    lab = tls_lab
    start_both(lab, FAILSAFE)
    # A folder where node2's record goes: the rename onto it fails.
    (lab.agents["node2"].run_dir / "failsafe-default-node2.json").mkdir()
    with AddressSampler(lab, VIP) as sampler:
        cut = time.monotonic()
        lab.seed.cut_control("node1")
        lab.seed.cut_control("node2")
        lab.wait_for(
            lambda: sampler.last_time("node1") is not None and not lab.holders(VIP),
            TTL + 2,
            "node1 to drop the VIP",
        )
        dropped = sampler.last_time("node1")
        assert dropped is not None and dropped - cut < TTL
    assert sampler.overlaps() == []
    assert "node2 refused: I cannot record a promise" in lab.agents["node1"].log()
    assert "promised node1" not in lab.agents["node2"].log()


FAILSAFE3 = FAILSAFE.replace(
    "\n  - {name: node2, peer: '192.0.2.12:9615'}",
    "\n  - {name: node2, peer: '192.0.2.12:9615'}\n  - {name: node3, peer: '192.0.2.13:9615'}",
)


@pytest.fixture
def tls_lab3(request: pytest.FixtureRequest) -> Iterator[DirectorLab]:
    yield from directors(request, nodes=3, tls=True)


def _members(lab: DirectorLab) -> dict[str, dict[str, object]]:
    out = lab.etcdctl("get", "--prefix", "--print-value-only", "/etcdha/default/members/")
    values = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {str(v["node"]): v for v in values}


def test_a_director_added_by_config_apply_is_asked_too(tls_lab3: DirectorLab) -> None:
    lab = tls_lab3
    start_both(lab, FAILSAFE)
    lab.apply(FAILSAFE3)
    lab.start_agent("node3")
    lab.wait_for(
        lambda: _members(lab).get("node3", {}).get("peer") == "192.0.2.13:9615",
        STARTUP,
        "node3 to publish its peer address",
        interval=0.2,
    )
    with AddressSampler(lab, VIP) as sampler:
        for node in ("node1", "node2", "node3"):
            lab.seed.cut_control(node)
        time.sleep(2 * TTL)  # far past the deadline that `drop` would keep
        assert lab.holders(VIP) == ["node1"]
    assert [h for _, h in sampler.changes] == [("node1",)]
    assert "promised node1 not to campaign" in lab.agents["node2"].log()
    assert "promised node1 not to campaign" in lab.agents["node3"].log()


def test_a_member_that_cannot_be_asked_makes_the_leader_drop(tls_lab3: DirectorLab) -> None:
    """node3's agent runs before any config names it (so it answers nobody); node1
    and node2 lose etcd; then a config naming node3 is applied, which node1 never
    sees. node1 cannot ask node3, so it drops; node3 takes over cleanly."""
    lab = tls_lab3
    start_both(lab, FAILSAFE)
    lab.start_agent("node3")
    lab.wait_for(lambda: "node3" in _members(lab), STARTUP, "node3 to register", interval=0.2)
    assert _members(lab)["node3"].get("peer") is None
    with AddressSampler(lab, VIP) as sampler:
        cut = time.monotonic()
        lab.seed.cut_control("node1")
        lab.seed.cut_control("node2")
        path = lab.work / "cluster3.yaml"
        path.write_text(FAILSAFE3)
        lab.etcdha("config", "apply", str(path), node="node3")
        lab.wait_for(lambda: sampler.first_time("node3") is not None, 3 * TTL, "node3 to lead")
        dropped = sampler.last_time("node1")
    assert sampler.overlaps() == [], f"two holders seen: {sampler.changes}"
    assert dropped is not None and dropped - cut < TTL
    assert "node3 is a member but publishes no peer address" in lab.agents["node1"].log()
    assert "promised node1" not in lab.agents["node2"].log()
