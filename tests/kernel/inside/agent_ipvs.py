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
- after kill -9 of the leading agent, the other takes over, its table was
  already there, and an established connection goes on through it; after the
  preferred node returns (auto_failback), the connection still goes on.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from support import in_uml, netns, sh

from etcdha.ipvs import parse_ipvsadm
from etcdha.lab.directors import DirectorLab

pytestmark = in_uml

GROUP = "lvs"
TTL = 2.0


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


class LineServer:
    """Answers every line with its name, in a namespace, on threads."""

    def __init__(self, ns: str, name: str, address: str, port: int = 80) -> None:
        self.name = name
        with netns(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed: new connections are refused, established ones go on
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            try:
                for _ in lines:
                    conn.sendall(f"{self.name}\n".encode())
            except OSError:
                pass

    def close(self) -> None:
        # shutdown wakes the thread blocked in accept(); close alone would not
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Held:
    """One client connection to the VIP, kept open."""

    def __init__(self, ns: str, vip: str) -> None:
        with netns(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect((vip, 80))
        self.lines = self.sock.makefile("rb")

    def ask(self) -> str:
        self.sock.sendall(b"hello\n")
        return self.lines.readline().decode().strip()

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


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

    def stop_real(self, name: str) -> None:
        self.servers[name].close()

    def start_real(self, name: str) -> None:
        self.servers[name] = LineServer(self.lab.seed.ns(name), name, self.reals[name])

    def close(self) -> None:
        for server in [*self.servers.values(), *self.sorry]:
            server.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    with DirectorLab() as lab:
        rig = Rig(lab)
        try:
            yield rig
        except BaseException:
            for agent in lab.agents.values():
                print(f"--- agent {agent.node} log ---\n{agent.log()[-6000:]}")
            raise
        finally:
            rig.close()


def kernel(lab: DirectorLab, node: str) -> str:
    return sh("ip", "netns", "exec", lab.seed.ns(node), "ipvsadm-save", "-n")


def daemons(lab: DirectorLab, node: str) -> str:
    return sh("ip", "netns", "exec", lab.seed.ns(node), "ipvsadm", "-L", "--daemon")


def weights(lab: DirectorLab, node: str) -> dict[str, int]:
    """real ip -> weight in the node's kernel table (the fallback as 127.0.0.1)."""
    table = parse_ipvsadm(kernel(lab, node))
    return {d.address: d.weight for entry in table.sorted() for d in entry.dests.values()}


def member(lab: DirectorLab, node: str) -> dict[str, object]:
    out = lab.etcdctl("get", "--print-value-only", f"/etcdha/default/members/{node}")
    data: dict[str, object] = json.loads(out)
    return data


def test_agents_keep_the_ipvs_table_and_connections_survive_failover(rig: Rig) -> None:
    lab = rig.lab
    s = lab.seed
    client = s.ns("client")
    # node2 starts with forwarding off: the config lets the agents manage it
    sh("ip", "netns", "exec", s.ns("node2"), "sysctl", "-qw", "net.ipv4.ip_forward=0")
    lab.apply(spec(lab))
    lab.start_agent("node1")
    lab.wait_for(lambda: lab.holders(s.vip) == ["node1"], 15, "node1 to hold the VIP")
    lab.start_agent("node2")

    # Every real up (or not yet checked): the desired table does not change, so
    # one render serves (each CLI run costs a Python start in the guest).
    rendered = parse_ipvsadm(lab.etcdha("render", "--group", GROUP).stdout)

    def equal_to_render(node: str) -> bool:
        return parse_ipvsadm(kernel(lab, node)) == rendered

    lab.wait_for(lambda: equal_to_render("node1"), 10, "node1's table to equal render")
    lab.wait_for(lambda: equal_to_render("node2"), 10, "node2's warm copy to equal render")
    assert weights(lab, "node1") == {s.rs1: 1, s.rs2: 1}

    # status/<group>/ipvs and `etcdha status`
    def in_sync() -> bool:
        report = json.loads(lab.etcdha("status", "--json").stdout)
        return bool(report["groups"][GROUP]["ipvs"]["in_sync"])

    lab.wait_for(in_sync, 10, "etcdha status to report the applied table in sync")
    status = json.loads(
        lab.etcdctl("get", "--print-value-only", f"/etcdha/default/status/{GROUP}/ipvs")
    )
    assert status["services"] == 1 and status["destinations"] == 2
    assert status["refused"] == []
    assert "ipvs: desired 1 services, 2 destinations, applied at" in lab.etcdha("status").stdout

    # sync daemons, kernel settings
    lab.wait_for(lambda: "master" in daemons(lab, "node1"), 10, "node1's master sync daemon")
    lab.wait_for(lambda: "backup" in daemons(lab, "node2"), 10, "node2's backup sync daemon")
    assert "master" not in daemons(lab, "node2")
    assert "eth1" in daemons(lab, "node1") and "syncid=7" in daemons(lab, "node1")
    forward = sh("ip", "netns", "exec", s.ns("node2"), "sysctl", "-n", "net.ipv4.ip_forward")
    assert forward.strip() == "1", "the agent sets ip_forward for masq reals"
    assert "set net.ipv4.ip_forward to 1" in lab.agents["node2"].log()
    reported = lab.wait_for(
        lambda: member(lab, "node1").get("kernel_settings"), 10, "kernel settings in members/"
    )
    assert [k["setting"] for k in reported] == ["net.ipv4.vs.conntrack"]
    assert reported[0]["required"] is False

    # traffic: round robin, then health through the checkers
    assert sorted(who(client, s.vip, 4)) == ["rs1", "rs1", "rs2", "rs2"]
    held = Held(client, s.vip)
    first = held.ask()
    other = "rs2" if first == "rs1" else "rs1"
    ip = rig.reals
    # the other real's server stops: weight 0 on the leader and on the standby
    rig.stop_real(other)
    lab.wait_for(
        lambda: weights(lab, "node1").get(ip[other]) == 0, 5, f"{other} at weight 0 on node1"
    )
    lab.wait_for(
        lambda: weights(lab, "node2").get(ip[other]) == 0, 5, f"{other} at weight 0 on node2"
    )
    assert who(client, s.vip, 3) == [first] * 3
    # every real down: the fallback answers new connections, the held one goes on
    rig.stop_real(first)
    lab.wait_for(lambda: weights(lab, "node1").get("127.0.0.1") == 1, 5, "the fallback on node1")
    assert who(client, s.vip, 2) == ["Sorry"] * 2
    assert held.ask() == first
    # both back: round robin again
    rig.start_real(first)
    rig.start_real(other)
    lab.wait_for(
        lambda: weights(lab, "node1") == {s.rs1: 1, s.rs2: 1}, 5, "both reals back on node1"
    )
    assert sorted(who(client, s.vip, 4)) == ["rs1", "rs1", "rs2", "rs2"]
    for _ in range(5):
        assert held.ask() == first

    # kill -9 the leading agent: node2 takes over with the table it already had,
    # and the established connection goes on through it (sync daemon)
    time.sleep(1.5)  # the master sends its connection updates about once a second
    synced = sh("ip", "netns", "exec", s.ns("node2"), "ipvsadm", "-L", "-n", "-c")
    assert ip[first] in synced, f"node2's backup daemon has the connection:\n{synced}"
    killed = time.monotonic()
    lab.kill_agent("node1")
    lab.wait_for(lambda: lab.holders(s.vip) == ["node2"], TTL + 2, "node2 to hold the VIP")
    assert time.monotonic() - killed <= TTL + 2
    assert held.ask() == first, "the established connection continues on the new leader"
    lab.wait_for(lambda: "master" in daemons(lab, "node2"), 5, "node2's master sync daemon")
    assert "backup" not in daemons(lab, "node2")
    lab.wait_for(
        lambda: (
            json.loads(lab.etcdha("status", "--json").stdout)["groups"][GROUP]["leader"] == "node2"
            and in_sync()
        ),
        10,
        "node2's status in sync",
    )
    assert sorted(who(client, s.vip, 4)) == ["rs1", "rs1", "rs2", "rs2"]
    assert held.ask() == first

    # node1 returns: auto_failback hands the group back; the connection goes on
    lab.start_agent("node1")
    lab.wait_for(lambda: lab.holders(s.vip) == ["node1"], 15, "node1 to hold the VIP again")
    lab.wait_for(lambda: "master" in daemons(lab, "node1"), 5, "node1's master sync daemon")
    lab.wait_for(lambda: "backup" in daemons(lab, "node2"), 5, "node2's backup sync daemon")
    assert held.ask() == first, "the established connection survives the failback too"
    held.close()
    assert equal_to_render("node1") and equal_to_render("node2")
