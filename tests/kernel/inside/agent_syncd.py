"""Inside user-mode-linux: the connection sync daemons follow each node's groups
as a whole.

The kernel runs at most one master and one backup sync daemon. With two IPVS
groups led by different directors, each director leads one group (master)
and stands by for the other (backup), so each must run both; a director that
leads every group runs only the master, one that leads none only the backup.

Two groups, lvs1 (preferred node1: the seed's VIP and DIP, NAT to rs1 and rs2)
and lvs2 (preferred node2: a second VIP, served by the director itself through
a local gate destination), with the same sync daemon settings. Checked:

- both agents up: each director runs a master and a backup;
- a connection through lvs2's VIP (scheduled by node2) reaches node1's backup
  while node1 runs a master for lvs1;
- kill -9 of node1's agent: node2 leads both groups and runs only the master
  (node1's kernel keeps what the killed agent left: both daemons);
- node1 in standby, then its agent started again: the new agent leads nothing,
  so it stops the master the old one left running and keeps the backup;
- node1 online: it takes lvs1 back, and both directors run both daemons.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agents import (
    POLL,
    REACT,
    Held,
    LineServer,
    Watch,
    daemons,
    logs_on_failure,
    wait_daemons,
    wait_ready,
    wait_started,
)
from support import in_uml, sh

from etcdha.lab.directors import DirectorLab

pytestmark = in_uml

TTL = 2.0
VIP2 = "192.0.2.201"
SYNC = ("eth1", 7)
MASTER = ("master", *SYNC)
BACKUP = ("backup", *SYNC)


def spec(lab: DirectorLab) -> str:
    s = lab.seed
    sync = f"sync_daemon: {{interface: {SYNC[0]}, syncid: {SYNC[1]}}}"
    return f"""
nodes: [node1, node2]
election:
  lease_ttl: {TTL}s
  keepalive_interval: 500ms
groups:
  - name: lvs1
    node: node1
    resources:
      - {{address: {s.vip}/24, interface: eth0}}
      - {{address: {s.dip}/24, interface: eth1}}
      - {{type: ipvs, {sync}}}
  - name: lvs2
    node: node2
    resources:
      - {{address: {VIP2}/24, interface: eth0}}
      - {{type: ipvs, {sync}}}
virtual_services:
  - address: {s.vip}:80
    group: lvs1
    scheduler: rr
    check: {{type: connect, interval: 300ms, timeout: 300ms}}
    reals:
      - {{address: "{s.rs1}:80", forward: masq}}
      - {{address: "{s.rs2}:80", forward: masq}}
  - address: {VIP2}:80
    group: lvs2
    scheduler: rr
    check: {{type: connect, interval: 300ms, timeout: 300ms}}
    reals:
      - {{address: "127.0.0.1:80", forward: gate}}
"""


@pytest.fixture
def rig(request: pytest.FixtureRequest) -> Iterator[Watch]:
    with DirectorLab() as lab:
        s = lab.seed
        servers = [LineServer(s.ns(n), n, getattr(s, n)) for n in ("rs1", "rs2")]
        servers += [LineServer(s.ns(n), n, "0.0.0.0") for n in s.nodes]
        watch = Watch(lab, [s.vip, VIP2])
        try:
            with logs_on_failure(lab, request):
                yield watch
        finally:
            watch.close()
            for server in servers:
                server.close()


def test_each_director_runs_the_daemons_its_groups_need(rig: Watch) -> None:
    lab, s, watch = rig.lab, rig.lab.seed, rig
    lab.apply(spec(lab))
    lab.start_agent("node1")
    wait_ready(watch, "node1")
    lab.start_agent("node2")
    wait_ready(watch, "node2")
    watch.wait(
        lambda: watch.leaders() == {"lvs1": "node1", "lvs2": "node2"},
        TTL + REACT,
        "node1 to lead lvs1 and node2 lvs2",
    )
    watch.wait(
        lambda: watch.holders(s.vip) == ("node1",) and watch.holders(VIP2) == ("node2",),
        REACT,
        "node1 to hold lvs1's VIP and node2 lvs2's",
    )

    # each leads one group and stands by for the other: master and backup on both
    wait_daemons(
        lab,
        {"node1": {MASTER, BACKUP}, "node2": {MASTER, BACKUP}},
        REACT,
        "a master and a backup sync daemon on each director",
    )

    # node2's master syncs a connection through lvs2 to node1's backup
    held = Held(s.ns("client"), VIP2)
    assert held.ask() == "node2"

    def synced() -> bool:
        table = sh("ip", "netns", "exec", s.ns("node1"), "ipvsadm", "-L", "-n", "-c")
        return f"{s.client}:{held.port}" in table

    lab.wait_for(synced, 5, "node1's backup to learn lvs2's connection from node2", POLL)

    # kill -9 node1's agent: node2 leads both and runs only the master; node1's
    # kernel keeps what its agent left
    lab.kill_agent("node1")
    watch.wait(
        lambda: watch.leaders() == {"lvs1": "node2", "lvs2": "node2"},
        TTL + REACT,
        "node2 to lead both groups",
    )
    wait_daemons(lab, {"node2": {MASTER}}, REACT, "node2 to run only a master")
    assert daemons(lab, "node1") == {MASTER, BACKUP}
    assert held.ask() == "node2"

    # node1 restarts in standby: it leads nothing, so the master left running goes
    lab.etcdha("standby", "node1")
    lab.start_agent("node1")
    assert wait_started(watch, "node1")["eligible"] is False
    wait_daemons(
        lab,
        {"node1": {BACKUP}, "node2": {MASTER}},
        REACT,
        "node1's new agent to stop the master it does not need",
    )
    assert watch.leaders() == {"lvs1": "node2", "lvs2": "node2"}

    # online: node1 takes lvs1 back; both directors run both daemons again
    lab.etcdha("online", "node1")
    watch.wait(
        lambda: watch.leaders() == {"lvs1": "node1", "lvs2": "node2"},
        TTL + REACT,
        "node1 to lead lvs1 again",
    )
    wait_daemons(
        lab,
        {"node1": {MASTER, BACKUP}, "node2": {MASTER, BACKUP}},
        REACT,
        "a master and a backup sync daemon on each director again",
    )
    watch.wait(
        lambda: watch.holders(s.vip) == ("node1",) and watch.holders(VIP2) == ("node2",),
        REACT,
        "node1 to hold lvs1's VIP again and node2 lvs2's",
    )
    assert held.ask() == "node2"
    held.close()
    # never two holders of either VIP
    assert watch.most_holders(s.vip) == 1 and watch.most_holders(VIP2) == 1
