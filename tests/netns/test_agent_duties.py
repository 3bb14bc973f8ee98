"""What a leader does besides failing over: audit, clean-up, live config,
notify hooks, IPv6, and riding through a compaction."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from failover_support import DIP, VIP, spec, start_both

from etcdha.lab.directors import AddressSampler, DirectorLab

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def test_an_address_removed_by_hand_comes_back(lab: DirectorLab) -> None:
    start_both(lab, spec(extra_election="  audit_interval: 300ms"))
    lab.seed.topology.exec("node1", "ip", "addr", "del", f"{VIP}/24", "dev", "eth0")
    assert VIP not in lab.addresses("node1")
    lab.wait_for(lambda: VIP in lab.addresses("node1"), 5, "the audit to re-add the VIP")
    assert "removed from eth0 behind our back" in lab.agents["node1"].log()


def test_stale_addresses_are_removed_at_start(lab: DirectorLab) -> None:
    lab.apply(spec())
    lab.start_agent("node1")
    lab.wait_for(lambda: lab.leader("web") == "node1", 10, "node1 to lead")
    lab.seed.topology.exec("node2", "ip", "addr", "add", f"{VIP}/24", "dev", "eth0")
    lab.start_agent("node2")
    # From the agent's start, Python's included (slow on a loaded machine).
    lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 15, "node2 to drop the stale VIP")
    assert "left from an earlier run" in lab.agents["node2"].log()


def test_config_changes_are_picked_up_live(lab: DirectorLab) -> None:
    start_both(lab)
    more = """  - name: web
    node: node1
    resources:
      - {address: 192.0.2.200/24, interface: eth0}
      - {address: 198.51.100.200}
  - name: mail
    node: node2
    resources: [{address: 192.0.2.201/24}]"""
    with AddressSampler(lab, VIP) as sampler:
        lab.apply(spec(groups=more))
        lab.wait_for(lambda: lab.holders("192.0.2.201") == ["node2"], 5, "the new group")
    assert [h for _, h in sampler.changes] == [("node1",)], "the VIP moved on a reload"
    # Dropping the DIP from web's resources takes it off the leader, nothing else.
    lab.apply(spec(groups=more.replace("      - {address: 198.51.100.200}\n", "")))
    lab.wait_for(lambda: DIP not in lab.addresses("node1"), 5, "the DIP to go")
    assert lab.holders(VIP) == ["node1"]


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    out = tmp_path / "notified"
    script = tmp_path / "hook.sh"
    script.write_text(f'#!/bin/sh\necho "$1 $2 $3" >> {out}\n')
    script.chmod(0o755)
    yield script, out


def test_notify_hooks_hear_each_transition(lab: DirectorLab, hook: tuple[Path, Path]) -> None:
    script, out = hook
    notify = f"notify: {{commands: [{script}], timeout: 2s}}\n"
    lab.apply(spec() + notify)
    lab.start_agent("node1")
    lab.start_agent("node2")
    lab.wait_for(
        lambda: out.exists() and "web leader node1 holds web" in out.read_text(),
        10,
        "the leader hook",
    )
    lab.etcdha("standby", "node1", "--wait", "5")
    lab.wait_for(
        lambda: "web backup" in out.read_text() and "web leader node2 holds web" in out.read_text(),
        5,
        "the standby hooks",
    )


def test_ipv6_address_moves_with_unsolicited_na() -> None:
    with DirectorLab(nodes=2, ipv6=True) as lab:
        vip6 = lab.seed.vip6
        groups = f"""  - name: web
    node: node1
    resources:
      - {{address: 192.0.2.200/24}}
      - {{address: "{vip6}/64"}}"""
        start_both(lab, spec(groups=groups))
        lab.wait_for(lambda: vip6 in lab.addresses("node1"), 5, "the IPv6 VIP on node1")
        lab.seed.topology.exec("client", "ping", "-6", "-c1", "-W1", vip6)
        assert lab.neighbour_mac("client", vip6) == lab.mac("node1")
        lab.kill_agent("node1")
        lab.wait_for(lambda: vip6 in lab.addresses("node2"), 5, "the IPv6 VIP on node2")
        lab.wait_for(
            lambda: lab.neighbour_mac("client", vip6) == lab.mac("node2"),
            3,
            "the client to learn node2's MAC from the unsolicited NA",
        )


def test_a_compacted_watch_is_re_read_without_failover(lab: DirectorLab) -> None:
    # node1 stays cut off from etcd while some twenty etcdctl commands run: a TTL
    # that outlasts them on a loaded machine too.
    start_both(lab, spec(ttl=20, keepalive=2))
    with AddressSampler(lab, VIP) as sampler:
        lab.seed.cut_control("node1")
        # While node1 cannot see etcd: a change it must not miss, then enough
        # writes and a compaction to put its watch's revision out of reach.
        lab.etcdha("standby", "node2", node="node2")
        for i in range(20):
            lab.etcdctl("put", f"/elsewhere/x{i}", "filler")
        revision = int(
            lab.etcdctl("get", "/etcdha/default/config", "-w", "fields")
            .split('"Revision" : ')[1]
            .split()[0]
        )
        lab.etcdctl("compaction", str(revision))
        time.sleep(1.0)
        lab.seed.restore_control("node1")
        time.sleep(3.0)
    assert [h for _, h in sampler.changes] == [("node1",)]
    report = lab.etcdha("status", "--json").stdout
    assert '"standby: standby"' in report
    # node1 saw the standby of node2 although it happened while node1 was cut off.
    lab.etcdha("takeover", "node2")
    time.sleep(1.0)
    assert lab.holders(VIP) == ["node1"], "a takeover towards a node in standby is ignored"


def test_scripts_start_in_order_stop_in_reverse_and_are_kept_running(
    lab: DirectorLab, tmp_path: Path
) -> None:
    log = tmp_path / "calls"
    state = tmp_path / "running"
    script = tmp_path / "svc"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $2" >> {log}\n'
        f'case "$2" in start) touch {state};; stop) rm -f {state};;\n'
        f"  status) [ -e {state} ] || exit 3;; esac\n"
    )
    script.chmod(0o755)
    groups = f"""  - name: web
    node: node1
    resources:
      - {{address: 192.0.2.200/24}}
      - {{path: {script}, args: [one]}}
      - {{path: {script}, args: [two]}}"""
    start_both(lab, spec(groups=groups, extra_election="  audit_interval: 300ms"))
    lab.wait_for(lambda: log.exists() and "two start" in log.read_text(), 5, "both scripts")
    state.unlink()  # the service died behind our back
    lab.wait_for(lambda: state.exists(), 3, "the audit to start it again")
    lab.etcdha("standby", "node1", "--wait", "5")
    lab.wait_for(lambda: "one stop" in log.read_text(), 5, "the scripts to stop")
    calls = [line for line in log.read_text().splitlines() if not line.endswith("status")]
    first = calls.index("one start")
    assert calls[first : first + 2] == ["one start", "two start"]
    stops = [c for c in calls if c.endswith("stop")]
    assert stops[-2:] == ["two stop", "one stop"]


def test_a_plain_stop_hands_over_without_waiting_for_the_ttl(lab: DirectorLab) -> None:
    start_both(lab, spec(ttl=10, keepalive=2))
    with AddressSampler(lab, VIP) as sampler:
        stopped = time.monotonic()
        lab.agents["node1"].process.stop(timeout=10)
        lab.wait_for(lambda: lab.holders(VIP) == ["node2"], 3, "node2 to take over")
        assert time.monotonic() - stopped < 3
    assert sampler.overlaps() == []
    assert "the agent is shutting down" in lab.etcdha("events").stdout


def test_every_agent_checks_the_real_servers_and_status_shows_each_view(
    lab: DirectorLab, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "test.html").write_text("ok\n")
    servers = {
        rs: lab.seed.topology.start(
            rs,
            sys.executable,
            "-m",
            "http.server",
            "80",
            "--bind",
            addr,
            "--directory",
            str(site),
        )
        for rs, addr in (("rs1", lab.seed.rs1), ("rs2", lab.seed.rs2))
    }
    services = f"""
virtual_services:
  - address: 192.0.2.200:80
    scheduler: rr
    health_policy: all  # no ipvs resource here (no IPVS in the host kernel)
    check: {{type: negotiate, service: http, request: /test.html, receive: ok,
             interval: 300ms, timeout: 1s}}
    reals:
      - {{address: "{lab.seed.rs1}:80", forward: masq}}
      - {{address: "{lab.seed.rs2}:80", forward: masq}}
"""
    start_both(lab, spec() + services)

    def reals() -> dict[str, dict[str, Any]]:
        report = json.loads(lab.etcdha("status", "--json").stdout)
        return {r["real_label"]: r for r in report["reals"]}

    def all_up_from_both() -> bool:
        rs = reals()
        return len(rs) == 2 and all(
            r["state"] == "up" and {v["checker"] for v in r["views"]} == {"node1", "node2"}
            for r in rs.values()
        )

    try:
        lab.wait_for(all_up_from_both, 10, "both reals up in both views", interval=0.3)
    except AssertionError as e:
        raise AssertionError(f"{e}: {reals()}") from None
    servers["rs1"].stop()
    rs1 = f"{lab.seed.rs1}:80"
    lab.wait_for(lambda: reals()[rs1]["state"] == "down", 5, "rs1 down", interval=0.2)
    assert reals()[f"{lab.seed.rs2}:80"]["state"] == "up"
    text = lab.etcdha("status").stdout
    assert f"-> {rs1}: down" in text and "node2: down" in text
