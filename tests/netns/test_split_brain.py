"""Faults that used to give two VIP holders, each injected on real etcd, real
agents and real namespaces, with every director's addresses sampled every 10 ms.

An operator's etcdctl (a revoked lease, a deleted leader key), a frozen leader
meanwhile, a planned restart that dies while starting, a config change that
adds an address, a removal that fails, an address with another prefix length,
a reclaimed lease with other timings, a start that takes longer than the lease,
and a second agent under the same node name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
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

LEADER_KEY = "/etcdha/default/leader/web"


def leader_record(lab: DirectorLab) -> dict[str, int] | None:
    out = lab.etcdctl("get", "-w", "json", LEADER_KEY)
    kvs = json.loads(out).get("kvs") or []
    if not kvs:
        return None
    kv = kvs[0]
    return {"lease": int(kv.get("lease", 0)), "term": int(kv["create_revision"])}


def leader_node(lab: DirectorLab) -> str | None:
    return lab.leader("web")


def settled_on(lab: DirectorLab, node: str) -> bool:
    """`node` leads in etcd and is the only holder of the VIP."""
    return leader_node(lab) == node and lab.holders(VIP) == [node]


def planned_restart(lab: DirectorLab, node: str) -> None:
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
    assert not agent.process.alive()


def slow_script(tmp_path: Path, seconds: float) -> tuple[Path, Path]:
    """A resource script whose start takes `seconds`; it marks each start in a file."""
    marks = tmp_path / "starts"
    script = tmp_path / "slow"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = start ]; then echo $$ >> {marks}; sleep {seconds}; fi\nexit 0\n'
    )
    script.chmod(0o755)
    return script, marks


def starts(marks: Path) -> int:
    return len(marks.read_text().split()) if marks.exists() else 0


# -- an operator's etcdctl on the leader's lease or key


@pytest.mark.parametrize("trial", range(3))
def test_revoking_the_leaders_lease_never_gives_two_holders(lab: DirectorLab, trial: int) -> None:
    # A long keepalive interval: the old leader learns of the revoke only at its
    # next keepalive, so a new leader that did not wait for it would overlap.
    start_both(lab, spec(ttl=6, keepalive=2))
    record = leader_record(lab)
    assert record is not None
    with AddressSampler(lab, VIP) as sampler:
        revoked = time.monotonic()
        lab.etcdctl("lease", "revoke", format(record["lease"], "x"))
        held: list[str] = []

        def held_again() -> bool:
            # Kept as seen: a failback right after may empty the list again.
            held[:] = lab.holders(VIP)
            return bool(held) and leader_node(lab) is not None

        lab.wait_for(held_again, 12, "a leader holding the VIP again")
        back = sampler.first_time(held[0], after=sampler.last_time("node1") or 0)
        time.sleep(1.0)
    print(f"revoke -> VIP held again after {(back or time.monotonic()) - revoked:.3f}s")
    assert sampler.overlaps() == [], f"two holders: {sampler.changes}"


def test_deleting_the_key_of_a_frozen_leader_never_gives_two_holders(lab: DirectorLab) -> None:
    start_both(lab, spec(ttl=4, keepalive=1))
    with AddressSampler(lab, VIP) as sampler:
        lab.signal_agent("node1", signal.SIGSTOP)
        lab.etcdctl("del", LEADER_KEY)
        lab.wait_for(lambda: lab.holders(VIP) == ["node2"], 10, "node2 to hold the VIP")
        lab.signal_agent("node1", signal.SIGCONT)
        lab.wait_for(lambda: settled_on(lab, "node1"), 15, "node1 to lead again")
        time.sleep(0.5)
    assert sampler.overlaps() == [], f"two holders: {sampler.changes}"


def test_revoking_the_lease_of_a_frozen_leader_never_gives_two_holders(lab: DirectorLab) -> None:
    start_both(lab, spec(ttl=4, keepalive=1))
    record = leader_record(lab)
    assert record is not None
    with AddressSampler(lab, VIP) as sampler:
        lab.signal_agent("node1", signal.SIGSTOP)
        lab.etcdctl("lease", "revoke", format(record["lease"], "x"))
        lab.wait_for(lambda: lab.holders(VIP) == ["node2"], 10, "node2 to hold the VIP")
        lab.signal_agent("node1", signal.SIGCONT)
        lab.wait_for(lambda: settled_on(lab, "node1"), 15, "node1 to lead again")
        time.sleep(0.5)
    assert sampler.overlaps() == [], f"two holders: {sampler.changes}"


def test_deleting_the_leaders_key_moves_nothing_twice(lab: DirectorLab) -> None:
    """The leader drops its addresses when its key goes; then whoever wins adds them."""
    start_both(lab, spec(ttl=4, keepalive=1))
    with AddressSampler(lab, VIP) as sampler:
        lab.etcdctl("del", LEADER_KEY)
        lab.wait_for(lambda: settled_on(lab, "node1"), 10, "node1 to lead again")
        time.sleep(0.5)
    assert sampler.overlaps() == []
    assert "leader key" in lab.agents["node1"].log()


# -- the guard knows every address before it is placed


def test_a_restart_killed_while_starting_leaves_no_vip_behind(
    lab: DirectorLab, tmp_path: Path
) -> None:
    script, marks = slow_script(tmp_path, 1.5)
    groups = f"""  - name: web
    node: node1
    resources:
      - {{path: {script}, timeout: 10s}}
      - {{address: 192.0.2.200/24, interface: eth0}}"""
    # A long TTL: the planned restart must finish (Python starts) within it.
    start_both(lab, spec(ttl=10, keepalive=2, groups=groups))
    with AddressSampler(lab, VIP) as sampler:
        planned_restart(lab, "node1")
        assert lab.holders(VIP) == ["node1"]
        before = starts(marks)
        lab.start_agent("node1")
        lab.wait_for(lambda: starts(marks) > before, 30, "the new agent to run the script")
        lab.kill_agent("node1")
        lab.wait_for(lambda: settled_on(lab, "node2"), 25, "node2 to take over")
        time.sleep(1.0)
    assert sampler.overlaps() == [], f"two holders: {sampler.changes}"
    assert VIP not in lab.addresses("node1")


def test_an_address_added_by_config_apply_is_guarded_before_it_is_placed(
    lab: DirectorLab, tmp_path: Path
) -> None:
    extra = "192.0.2.210"
    script, _ = slow_script(tmp_path, 1.5)
    # A long keepalive interval: no renewal re-arms the guard by chance meanwhile.
    start_both(lab, spec(ttl=6, keepalive=2))
    more = f"""  - name: web
    node: node1
    resources:
      - {{address: 192.0.2.200/24, interface: eth0}}
      - {{address: 198.51.100.200}}
      - {{address: {extra}/24, interface: eth0}}
      - {{path: {script}, timeout: 10s}}"""
    with AddressSampler(lab, extra) as sampler:
        lab.apply(spec(ttl=6, keepalive=2, groups=more))
        # Frozen the moment the address is placed: the guard alone must remove it.
        wait_for_address(lab, "node1", extra)
        lab.signal_agent("node1", signal.SIGSTOP)
        lab.wait_for(lambda: lab.holders(extra) == ["node2"], 15, "node2 to take over")
        time.sleep(1.0)
        lab.signal_agent("node1", signal.SIGCONT)
    assert sampler.overlaps() == [], f"two holders of {extra}: {sampler.changes}"


def wait_for_address(lab: DirectorLab, node: str, ip: str, timeout: float = 10.0) -> None:
    """Poll a namespace's addresses every millisecond until `ip` is there."""
    from pyroute2 import NetNS

    with NetNS(lab.seed.ns(node)) as ns:
        deadline = time.monotonic() + timeout
        while not any(a.get_attr("IFA_ADDRESS") == ip for a in ns.get_addr()):
            assert time.monotonic() < deadline, f"{ip} never appeared on {node}"
            time.sleep(0.001)


# -- a removal that fails keeps the guard armed and the key held


def exhaust_descriptors(pid: int) -> None:
    """Lower the process's descriptor limit to its lowest free descriptor number.

    The kernel hands out the lowest free number, so a limit at the count of
    open descriptors still lets one through wherever a socket just closed left
    a hole. Set the limit at the first hole and check, a moment later, that no
    descriptor below it closed meanwhile.
    """
    for _ in range(50):
        open_fds = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        lowest_free = next(n for n in range(len(open_fds) + 1) if n not in open_fds)
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={lowest_free}:"], check=True)
        time.sleep(0.2)
        still_open = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
        if all(n in still_open for n in range(lowest_free)):
            return
    raise AssertionError(f"the descriptors of {pid} never stayed still")


def test_a_failed_removal_keeps_the_key_until_the_address_is_gone(lab: DirectorLab) -> None:
    start_both(lab, spec(ttl=4, keepalive=1))
    pid = lab.agents["node1"].process.pid
    assert pid is not None
    limit = subprocess.run(
        ["prlimit", f"--pid={pid}", "--nofile", "--raw", "--noheadings", "--output=SOFT"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with AddressSampler(lab, VIP) as sampler:
        # No descriptor left: the netlink socket to remove the VIP cannot be opened.
        exhaust_descriptors(pid)
        lab.etcdha("standby", "node1")
        time.sleep(5.0)  # more than the TTL: the peer must not take the VIP meanwhile
        assert lab.holders(VIP) == ["node1"], "the VIP left although removing it failed?"
        assert leader_node(lab) == "node1", "the key went while the VIP stayed"
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:"], check=True)
        lab.wait_for(lambda: settled_on(lab, "node2"), 10, "the handover to complete")
        time.sleep(0.5)
    assert sampler.overlaps() == [], f"two holders: {sampler.changes}"


# -- an address is the same address whatever its prefix length


def test_a_vip_with_another_prefix_length_is_removed_on_failover(lab: DirectorLab) -> None:
    lab.seed.topology.exec("node1", "ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
    start_both(lab)
    with AddressSampler(lab, VIP) as sampler:
        lab.etcdha("standby", "node1")
        lab.wait_for(lambda: lab.holders(VIP) == ["node2"], 10, "node2 to take the VIP")
        time.sleep(0.5)
    assert sampler.overlaps() == [], f"two holders: {sampler.changes}"


def test_a_stale_vip_with_another_prefix_length_is_removed_at_start(lab: DirectorLab) -> None:
    lab.apply(spec())
    lab.start_agent("node1")
    lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 10, "node1 to hold the VIP")
    lab.seed.topology.exec("node2", "ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
    lab.start_agent("node2")
    lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 10, "node2 to drop the stale VIP")


# -- timings come from the lease etcd granted; slow starts finish


def test_a_reclaimed_lease_keeps_its_own_timings(lab: DirectorLab) -> None:
    start_both(lab, spec(ttl=9, keepalive=3))
    # New timings take effect at the next start, but the lease reclaimed then is
    # the old one (TTL 9 s): a 9 s keepalive interval would outlive it.
    lab.apply(spec(ttl=30, keepalive=9))
    time.sleep(0.5)
    with AddressSampler(lab, VIP) as sampler:
        planned_restart(lab, "node1")
        lab.start_agent("node1")
        lab.wait_for(lambda: "reclaimed lease" in lab.agents["node1"].log(), 30, "the reclaim")
        time.sleep(12.0)
    assert [h for _, h in sampler.changes] == [("node1",)], sampler.changes


def test_a_start_longer_than_the_lease_finishes_and_holds(lab: DirectorLab, tmp_path: Path) -> None:
    script, marks = slow_script(tmp_path, 4.0)  # TTL 3 s, fence margin 0.5 s
    groups = f"""  - name: web
    node: node1
    resources:
      - {{path: {script}, timeout: 10s}}
      - {{address: 192.0.2.200/24, interface: eth0}}"""
    lab.apply(spec(ttl=3, keepalive=1, groups=groups))
    # node1 (preferred) wins first: node2 started beside it could win before
    # node1 registered and hand over to it by auto_failback, a second start.
    lab.start_agent("node1")
    lab.wait_for(lambda: leader_node(lab) == "node1", 10, "node1 to win web")
    lab.start_agent("node2")
    lab.wait_for(lambda: lab.holders(VIP) != [], 20, "somebody to hold the VIP")
    holder = lab.holders(VIP)
    record = leader_record(lab)
    with AddressSampler(lab, VIP) as sampler:
        time.sleep(6.0)
    assert [h for _, h in sampler.changes] == [tuple(holder)], sampler.changes
    assert leader_record(lab) == record, "the group was handed over and won again"
    assert starts(marks) == 1, f"the slow start ran {starts(marks)} times"


# -- one agent per node name, across PID namespaces too


def test_a_twin_in_another_pid_namespace_refuses_to_start(lab: DirectorLab) -> None:
    start_both(lab)
    argv = etcdha_argv(
        "agent",
        "start",
        "--node",
        "node1",
        "--run-dir",
        str(lab.work / "container"),
        "--listen",
        "127.0.0.1:9700",
        "--endpoints",
        lab.endpoints,
    )
    # As a container would run it: its own PID namespace, where node1's pid means nothing.
    result = subprocess.run(
        netns_exec_argv(
            lab.seed.ns("node1"), ["unshare", "--pid", "--fork", "--mount-proc", *argv]
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "already live" in result.stderr
    assert lab.holders(VIP) == ["node1"]


def test_an_agent_that_lost_its_lease_does_not_overwrite_a_live_twin(lab: DirectorLab) -> None:
    start_both(lab, spec(ttl=3, keepalive=1))
    member = "/etcdha/default/members/node1"
    with AddressSampler(lab, VIP) as sampler:
        lab.signal_agent("node1", signal.SIGSTOP)
        lab.wait_for(lambda: not lab.etcdctl("get", member).strip(), 10, "node1's lease to expire")
        twin_dir = lab.work / "twin"
        twin_log = open(lab.work / "twin.log", "ab")  # noqa: SIM115 - the process writes it
        twin = lab.seed.topology.start(
            "node1",
            *etcdha_argv(
                "agent", "start", "--node", "node1", "--endpoints", lab.endpoints,
                "--run-dir", str(twin_dir), "--listen", "127.0.0.1:9700",
            ),
            stdout=twin_log,
            stderr=twin_log,
        )  # fmt: skip
        twin_log.close()
        try:
            lab.wait_for(
                lambda: lab.etcdctl("get", "--print-value-only", member).strip(),
                30,
                "the twin to register",
            )
            twin_value = json.loads(lab.etcdctl("get", "--print-value-only", member))
            lab.signal_agent("node1", signal.SIGCONT)
            time.sleep(5.0)
            now_value = json.loads(lab.etcdctl("get", "--print-value-only", member))
            assert now_value["lease"] == twin_value["lease"], "the old agent overwrote its twin"
            assert "another agent" in lab.agents["node1"].log()
        finally:
            twin.stop(timeout=5.0)
    assert sampler.overlaps() == [], f"two holders: {sampler.changes}"
