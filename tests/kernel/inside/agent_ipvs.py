"""Inside user-mode-linux: two agents (real processes) keep the IPVS table.

The seed topology in namespaces, etcd on its control link, `etcdha agent
start` on node1 and node2, line servers on rs1 and rs2 (each answers every
line with its name) and a "Sorry" server on each director for the fallback.
Checked, from the kernel's tables and a client's connections:

- the leader's table equals `etcdha render`; the standby keeps the same table
  (a warm copy); status/<group>/ipvs records it; `etcdha status` says in sync;
- the sync daemon runs as master on the leader and backup on the standby;
- the kernel settings the config needs are set (manage_sysctls) and the
  advised ones are reported in members/<node>;
- a real whose server stops gets weight 0 from the checkers' verdicts, every
  real down brings the fallback, and recovery restores them;
- after kill -9 of the leading agent, the other holds the VIP within the
  lease TTL + 2 s (when the kernel reported it), its table was already there,
  and an established connection goes on through it; after the preferred node
  returns (auto_failback, once its agent says it is ready), the connection
  still goes on; never two holders of the VIP or the DIP.

The waits follow events (agents/Watch): an agent's start is over when its
member key says so, however long the guest takes; what follows is bounded
from there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from agents import (
    POLL,
    REACT,
    Held,
    LineServer,
    Watch,
    kernel,
    logs_on_failure,
    wait_daemons,
    wait_ready,
)
from support import in_uml, sh

from etcdha.ipvs import parse_ipvsadm
from etcdha.lab.directors import DirectorLab

pytestmark = in_uml

GROUP = "lvs"
TTL = 2.0
SYNC = ("eth1", 7)
MASTER = ("master", *SYNC)
BACKUP = ("backup", *SYNC)


def spec(lab: DirectorLab) -> str:
    s = lab.seed
    return f"""
nodes: [node1, node2]
election:
  lease_ttl: {TTL}s
  keepalive_interval: 500ms
groups:
  - name: {GROUP}
    node: node1
    resources:
      - {{address: {s.vip}/24, interface: eth0}}
      - {{address: {s.dip}/24, interface: eth1}}
      - {{type: ipvs, sync_daemon: {{interface: eth1, syncid: 7}}, manage_sysctls: true}}
virtual_services:
  - address: {s.vip}:80
    scheduler: rr
    quiescent: true
    check: {{type: connect, interval: 300ms, timeout: 300ms}}
    fallback: {{address: "127.0.0.1:80", forward: gate}}
    reals:
      - {{address: "{s.rs1}:80", forward: masq}}
      - {{address: "{s.rs2}:80", forward: masq}}
"""


def who(ns: str, vip: str, n: int) -> list[str]:
    """Which server each of `n` new connections reached ('refused' if none)."""
    out = []
    for _ in range(n):
        try:
            h = Held(ns, vip)
        except OSError:
            out.append("refused")
            continue
        try:
            out.append(h.ask() or "closed")
        except OSError:
            out.append("error")
        finally:
            h.close()
    return out


class Rig:
    def __init__(self, lab: DirectorLab) -> None:
        self.lab = lab
        s = lab.seed
        self.reals = {"rs1": s.rs1, "rs2": s.rs2}
        self.servers = {name: LineServer(s.ns(name), name, ip) for name, ip in self.reals.items()}
        self.sorry = [LineServer(s.ns(n), "Sorry", "0.0.0.0") for n in s.nodes]
        self.watch = Watch(lab, [s.vip, s.dip])

    def stop_real(self, name: str) -> None:
        self.servers[name].close()

    def start_real(self, name: str) -> None:
        self.servers[name] = LineServer(self.lab.seed.ns(name), name, self.reals[name])

    def close(self) -> None:
        self.watch.close()
        for server in [*self.servers.values(), *self.sorry]:
            server.close()


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    with DirectorLab() as lab:
        rig = Rig(lab)
        try:
            with logs_on_failure(lab, request):
                yield rig
        finally:
            rig.close()


def weights(lab: DirectorLab, node: str) -> dict[str, int]:
    """real ip -> weight in the node's kernel table (the fallback as 127.0.0.1)."""
    table = parse_ipvsadm(kernel(lab, node))
    return {d.address: d.weight for entry in table.sorted() for d in entry.dests.values()}


def test_agents_keep_the_ipvs_table_and_connections_survive_failover(rig: Rig) -> None:
    lab, watch = rig.lab, rig.watch
    s = lab.seed
    client = s.ns("client")
    vip = s.vip
    # node2 starts with forwarding off: the config lets the agents manage it
    sh("ip", "netns", "exec", s.ns("node2"), "sysctl", "-qw", "net.ipv4.ip_forward=0")
    lab.apply(spec(lab))
    lab.start_agent("node1")
    wait_ready(watch, "node1")
    watch.wait(lambda: watch.holders(vip) == ("node1",), REACT, "node1 to hold the VIP")
    lab.start_agent("node2")
    wait_ready(watch, "node2")

    # Every real up (or not yet checked): the desired table does not change, so
    # one render serves (each CLI run costs a Python start in the guest).
    rendered = parse_ipvsadm(lab.etcdha("render", "--group", GROUP).stdout)

    def equal_to_render(node: str) -> bool:
        return parse_ipvsadm(kernel(lab, node)) == rendered

    lab.wait_for(lambda: equal_to_render("node1"), 10, "node1's table to equal render", POLL)
    lab.wait_for(lambda: equal_to_render("node2"), 10, "node2's warm copy to equal render", POLL)
    assert weights(lab, "node1") == {s.rs1: 1, s.rs2: 1}

    # status/<group>/ipvs and `etcdha status`
    def in_sync() -> bool:
        report = json.loads(lab.etcdha("status", "--json").stdout)
        return bool(report["groups"][GROUP]["ipvs"]["in_sync"])

    lab.wait_for(in_sync, 10, "etcdha status to report the applied table in sync", POLL)
    status = json.loads(
        lab.etcdctl("get", "--print-value-only", f"/etcdha/default/status/{GROUP}/ipvs")
    )
    assert status["services"] == 1 and status["destinations"] == 2
    assert status["refused"] == []
    assert "ipvs: desired 1 services, 2 destinations, applied at" in lab.etcdha("status").stdout

    # sync daemons (the leader the master only, the standby the backup only),
    # kernel settings
    wait_daemons(lab, {"node1": {MASTER}, "node2": {BACKUP}}, 10, "the sync daemons")
    forward = sh("ip", "netns", "exec", s.ns("node2"), "sysctl", "-n", "net.ipv4.ip_forward")
    assert forward.strip() == "1", "the agent sets ip_forward for masq reals"
    assert "set net.ipv4.ip_forward to 1" in lab.agents["node2"].log()
    reported = watch.wait(
        lambda: (watch.member("node1") or {}).get("kernel_settings"),
        10,
        "kernel settings in members/",
    )
    assert [k["setting"] for k in reported] == ["net.ipv4.vs.conntrack"]
    assert reported[0]["required"] is False

    # traffic: round robin, then health through the checkers
    assert sorted(who(client, vip, 4)) == ["rs1", "rs1", "rs2", "rs2"]
    held = Held(client, vip)
    first = held.ask()
    other = "rs2" if first == "rs1" else "rs1"
    ip = rig.reals
    # the other real's server stops: weight 0 on the leader and on the standby
    rig.stop_real(other)
    lab.wait_for(
        lambda: weights(lab, "node1").get(ip[other]) == 0, 5, f"{other} at weight 0 on node1", POLL
    )
    lab.wait_for(
        lambda: weights(lab, "node2").get(ip[other]) == 0, 5, f"{other} at weight 0 on node2", POLL
    )
    assert who(client, vip, 3) == [first] * 3
    # every real down: the fallback answers new connections, the held one goes on
    rig.stop_real(first)
    lab.wait_for(
        lambda: weights(lab, "node1").get("127.0.0.1") == 1, 5, "the fallback on node1", POLL
    )
    assert who(client, vip, 2) == ["Sorry"] * 2
    assert held.ask() == first
    # both back: round robin again
    rig.start_real(first)
    rig.start_real(other)
    lab.wait_for(
        lambda: weights(lab, "node1") == {s.rs1: 1, s.rs2: 1}, 5, "both reals back on node1", POLL
    )
    assert sorted(who(client, vip, 4)) == ["rs1", "rs1", "rs2", "rs2"]
    for _ in range(5):
        assert held.ask() == first

    # kill -9 the leading agent: node2 takes over with the table it already had,
    # and the established connection goes on through it (sync daemon)
    time.sleep(1.5)  # the master sends its connection updates about once a second
    synced = sh("ip", "netns", "exec", s.ns("node2"), "ipvsadm", "-L", "-n", "-c")
    assert ip[first] in synced, f"node2's backup daemon has the connection:\n{synced}"
    killed = time.monotonic()
    lab.kill_agent("node1")
    # The wait allows for a slow guest; the takeover's time is when the kernel
    # reported node2's address (ip monitor), not when a poll happened to see it.
    watch.wait(lambda: watch.holders(vip) == ("node2",), TTL + 10, "node2 to hold the VIP")
    took = watch.since(vip, ("node2",)) - killed
    assert took <= TTL + 2, f"node2 held the VIP {took:.2f}s after the kill"
    assert held.ask() == first, "the established connection continues on the new leader"
    wait_daemons(lab, {"node2": {MASTER}}, 5, "node2's master sync daemon")
    lab.wait_for(
        lambda: (
            json.loads(lab.etcdha("status", "--json").stdout)["groups"][GROUP]["leader"] == "node2"
            and in_sync()
        ),
        10,
        "node2's status in sync",
        POLL,
    )
    assert sorted(who(client, vip, 4)) == ["rs1", "rs1", "rs2", "rs2"]
    assert held.ask() == first

    # node1 returns: once its agent says it is ready, auto_failback hands the
    # group back; the connection goes on
    lab.start_agent("node1")
    wait_ready(watch, "node1")
    watch.wait(lambda: watch.holders(vip) == ("node1",), TTL + REACT, "node1 to hold the VIP again")
    wait_daemons(lab, {"node1": {MASTER}, "node2": {BACKUP}}, 5, "the sync daemons swapped back")
    assert held.ask() == first, "the established connection survives the failback too"
    held.close()
    assert equal_to_render("node1") and equal_to_render("node2")
    # never two holders of the VIP or the DIP, from start to end
    assert watch.most_holders(vip) == 1 and watch.most_holders(s.dip) == 1
