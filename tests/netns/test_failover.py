"""Director failover in the seed topology: real etcd, real agents, real namespaces.

Each test starts etcd on the control link and `etcdha agent start` in each
director's namespace, then injects a fault (kill -9, SIGSTOP, a cut link, a
standby...) while a sampler reads every director's addresses every 10 ms.

What these tests cannot cover, and etcdha does not guard: a freeze of the whole
machine (hypervisor pause, kernel hang). The fence guard is frozen with the
agent then, and the kernel keeps the addresses until the machine runs again.
Killing or stopping the agent alone (kill -9, SIGSTOP, OOM) is covered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from failover_support import (
    DIP,
    TTL,
    VIP,
    assert_clean_handoff,
    client_ping,
    spec,
    start_both,
)

from etcdha.lab.directors import AddressSampler, DirectorLab, etcdha_argv
from etcdha.lab.netns import netns_exec_argv

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def test_kill9_leader_addresses_go_before_the_new_leader_takes_them(lab: DirectorLab) -> None:
    start_both(lab)
    client_ping(lab, VIP)
    assert lab.neighbour_mac("client", VIP) == lab.mac("node1")
    with AddressSampler(lab, VIP) as sampler:
        killed = time.monotonic()
        lab.kill_agent("node1")
        lab.wait_for(lambda: set(lab.holders(VIP)) == {"node2"}, TTL + 1, "node2 to hold the VIP")
        took = time.monotonic() - killed
        lab.wait_for(lambda: DIP in lab.addresses("node2"), 1, "node2 to hold the DIP")
        # The client learns the new MAC from the gratuitous ARP alone: it sends nothing.
        lab.wait_for(
            lambda: lab.neighbour_mac("client", VIP) == lab.mac("node2"),
            TTL + 1 - took,
            "the client's ARP entry to point at node2",
        )
        time.sleep(0.3)
    assert_clean_handoff(sampler, "node1", "node2")
    assert VIP not in lab.addresses("node1") and DIP not in lab.addresses("node1")
    # No fencing sleep after winning: the takeover costs about one TTL, not two.
    assert took < TTL + 1, took


def test_sigstop_of_the_leader_never_gives_two_holders(lab: DirectorLab) -> None:
    start_both(lab)
    with AddressSampler(lab, VIP) as sampler:
        lab.signal_agent("node1", signal.SIGSTOP)
        lab.wait_for(lambda: lab.holders(VIP) == ["node2"], TTL + 1, "node2 to take over")
        time.sleep(1.0)
        lab.signal_agent("node1", signal.SIGCONT)
        # node1 finds its lease gone, registers again and (auto_failback) takes
        # the group back gracefully; still never two holders.
        lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 15, "node1 to take the VIP back")
        time.sleep(0.5)
    assert_clean_handoff(sampler, "node1", "node2")
    assert sampler.changes[-1][1] == ("node1",)


def test_leader_cut_off_from_etcd_drops_the_vip_first(lab: DirectorLab) -> None:
    start_both(lab)
    with AddressSampler(lab, VIP) as sampler:
        cut = time.monotonic()
        lab.seed.cut_control("node1")
        lab.wait_for(lambda: lab.holders(VIP) == ["node2"], TTL + 1, "node2 to take over")
        dropped = sampler.last_time("node1")
        assert dropped is not None and dropped - cut < TTL, "node1 held on past its deadline"
        lab.seed.restore_control("node1")
        lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 15, "node1 to come back")
        time.sleep(0.5)
    assert_clean_handoff(sampler, "node1", "node2")


def test_standby_online_takeover_move_without_waiting_for_the_ttl(lab: DirectorLab) -> None:
    start_both(lab, spec(ttl=10, keepalive=2))
    with AddressSampler(lab, VIP) as sampler:
        t = time.monotonic()
        lab.etcdha("standby", "node1", "--wait", "5")
        lab.wait_for(lambda: lab.holders(VIP) == ["node2"], 2, "standby to move the VIP")
        assert time.monotonic() - t < 3, "standby waited for the TTL"
        report = json.loads(lab.etcdha("status", "--json").stdout)
        assert report["members"]["node1"]["eligible"] is False
        assert report["members"]["node1"]["why"] == "standby: standby"
        assert report["groups"]["web"]["leader"] == "node2"
        assert report["members"]["node2"]["holding"] == {"web": [f"{VIP}/24", f"{DIP}/24"]}

        t = time.monotonic()
        lab.etcdha("online", "node1")  # auto_failback brings the group home
        lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 2, "failback to node1")

        lab.etcdha("takeover", "node2", "--wait", "5")
        lab.wait_for(lambda: lab.holders(VIP) == ["node2"], 2, "takeover by node2")
        time.sleep(0.5)
        assert lab.holders(VIP) == ["node2"], "auto_failback undid the takeover"
        lab.etcdha("takeover", "--clear", "node2")
        lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 2, "preference after --clear")
    assert sampler.overlaps() == []
    events = lab.etcdha("events").stdout
    for what in ("standby", "online", "takeover", "leader-released", "leader-acquired"):
        assert what in events


def test_a_ping_node_lost_by_the_leader_moves_the_group(lab: DirectorLab) -> None:
    start_both(lab)
    blackhole = ["ip", "route", "add", "blackhole", "192.0.2.1/32"]
    with AddressSampler(lab, VIP) as sampler:
        lab.seed.topology.exec("node1", *blackhole)
        lab.wait_for(lambda: lab.holders(VIP) == ["node2"], 5, "node2 to take over")
        lab.seed.topology.exec("node1", "ip", "route", "del", "blackhole", "192.0.2.1/32")
        lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 5, "node1 back once it pings")
    assert sampler.overlaps() == []
    # The ping node silent for every director: the leader keeps the service.
    lab.seed.topology.set_link("ping", "eth0", False)
    time.sleep(2.0)
    assert lab.holders(VIP) == ["node1"]


def test_two_groups_led_by_different_nodes(lab: DirectorLab) -> None:
    groups = """  - name: web
    node: node1
    resources: [{address: 192.0.2.200/24}]
  - name: mail
    node: node2
    resources: [{address: 192.0.2.201/24}]"""
    lab.apply(spec(groups=groups))
    lab.start_agent("node1")
    lab.start_agent("node2")
    lab.wait_for(
        lambda: lab.holders(VIP) == ["node1"] and lab.holders("192.0.2.201") == ["node2"],
        10,
        "each group on its preferred node",
    )
    lab.etcdha("standby", "node2", "--wait", "5")
    lab.wait_for(lambda: lab.holders("192.0.2.201") == ["node1"], 2, "mail to move to node1")
    assert lab.holders(VIP) == ["node1"]
    # One lease per agent, whatever the number of groups.
    listing = lab.etcdctl("lease", "list").splitlines()
    assert listing[0] == "found 2 leases", listing


def test_planned_restart_within_the_ttl_moves_nothing(lab: DirectorLab) -> None:
    start_both(lab, spec(ttl=10, keepalive=2))
    term = lab.etcdctl("get", "-w", "json", "/etcdha/default/leader/web")
    with AddressSampler(lab, VIP) as sampler:
        agent = lab.agents["node1"]
        subprocess.run(
            netns_exec_argv(
                lab.seed.ns("node1"),
                [
                    *etcdha_argv(
                        "agent",
                        "stop",
                        "--restart",
                        "--node",
                        "node1",
                        "--run-dir",
                        str(agent.run_dir),
                    )
                ],
            ),
            check=True,
            capture_output=True,
            timeout=30,
        )
        assert not agent.process.alive()
        lab.start_agent("node1")
        time.sleep(4.0)
    assert sampler.changes == [sampler.changes[0]] and sampler.changes[0][1] == ("node1",)
    assert '"create_revision"' in term
    after = lab.etcdctl("get", "-w", "json", "/etcdha/default/leader/web")
    assert _create_revision(term) == _create_revision(after), "the leader key was re-created"


def _create_revision(etcdctl_json: str) -> int:
    return int(json.loads(etcdctl_json)["kvs"][0]["create_revision"])


def test_a_second_agent_with_a_live_node_name_refuses_to_start(lab: DirectorLab) -> None:
    start_both(lab)
    result = lab.etcdha(
        "agent",
        "start",
        "--node",
        "node1",
        "--run-dir",
        str(lab.work / "other"),
        "--listen",
        "127.0.0.1:9700",
        node="node1",
        check=False,
        timeout=30,
    )
    assert result.returncode == 1
    assert "already live" in result.stderr
    assert lab.holders(VIP) == ["node1"]


def test_etcd_restart_shorter_than_the_ttl_causes_no_failover(lab: DirectorLab) -> None:
    # lease_ttl 10 s against a restart of about 1-2 s.
    start_both(lab, spec(ttl=10, keepalive=2))
    with AddressSampler(lab, VIP) as sampler:
        lab.etcd[0].stop()
        lab.etcd[0].start(wait=False)
        lab.wait_etcd()
        time.sleep(4.0)
    assert [h for _, h in sampler.changes] == [("node1",)]
    assert lab.leader("web") == "node1"


def test_etcd_unreachable_drop_policy_gives_up_the_vip_and_recovers(lab: DirectorLab) -> None:
    start_both(lab)
    with AddressSampler(lab, VIP) as sampler:
        lab.etcd[0].stop()
        stopped = time.monotonic()
        lab.wait_for(lambda: lab.holders(VIP) == [], TTL + 1, "the leader to drop the VIP")
        assert time.monotonic() - stopped < TTL
        lab.etcd[0].start(wait=False)
        lab.wait_etcd()
        lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 15, "node1 to lead again")
    assert sampler.overlaps() == []


def test_agents_started_while_etcd_is_down_wait_for_it_and_lead(lab: DirectorLab) -> None:
    # A director booted before etcd (or during a full outage) waits, holding
    # nothing, and joins once etcd answers; no restart by systemd needed.
    lab.apply(spec())
    lab.etcd[0].stop()
    lab.start_agent("node1")
    lab.start_agent("node2")
    for node in ("node1", "node2"):
        lab.wait_for(
            lambda n=node: "etcd unreachable, waiting for it" in lab.agents[n].log(),  # type: ignore[misc]
            10,
            f"{node}'s agent to say it waits for etcd",
        )
    time.sleep(2.0)
    assert all(lab.agents[n].process.alive() for n in ("node1", "node2"))
    assert lab.holders(VIP) == []
    lab.etcd[0].start(wait=False)
    lab.wait_etcd()
    lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 15, "node1 to lead once etcd answers")
    assert "etcd answers: starting" in lab.agents["node1"].log()


def test_metrics_and_health_endpoints(lab: DirectorLab) -> None:
    start_both(lab)

    def get(path: str) -> str:
        return subprocess.run(
            netns_exec_argv(
                lab.seed.ns("node1"),
                [
                    "python3",
                    "-c",
                    "import urllib.request,sys;"
                    f"print(urllib.request.urlopen('http://127.0.0.1:9614{path}').read().decode())",
                ],
            ),
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    metrics = get("/metrics")
    assert 'etcdha_is_leader{group="web"} 1.0' in metrics
    assert "etcdha_lease_keepalive_duration_seconds_count" in metrics
    assert "etcdha_announcements_sent_total" in metrics
    assert get("/healthz").startswith("ok")
    assert get("/readyz").startswith("ok")
