"""Failover and handover timings in the seed topology (prints figures; not a test).

For each trial it measures, on the system-wide monotonic clock:
  kill -9   from the SIGKILL of the leading agent until the VIP answers ARP
            from the new leader's MAC (a prober in the client namespace sends
            an ARP request every 10 ms);
  standby   from the commit of the standby key (a process on the control
            network writes it and notes when etcd acknowledged it) until the same;
  revoke    from an operator's `etcdctl lease revoke` of the leader's lease until
            the same (the new leader waits for the old one's fence record to
            let the group go: the price of never two holders);
  delete    from an operator's `etcdctl del` of the leader key until the same.

Usage (as root):  python bench/failover.py [--trials 20] [--ttl 2] [--only kill,revoke,...]

Goals: kill -9 p99 <= lease_ttl + 0.6 s; handover median <= 100 ms, p99 <= 300 ms.
For comparison, keepalived in the same topology (advert_int 1) moved the VIP
3.59 s after the master lost power and 0.62 s after a clean stop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import struct
import subprocess
import sys
import time

from etcdha.lab.directors import DirectorLab
from etcdha.lab.netns import netns_exec_argv

SPEC = """
nodes: [node1, node2]
election: {{lease_ttl: {ttl}s, keepalive_interval: {ka}s, fence_margin: {margin}s}}
groups:
  - name: web
    node: node1
    resources:
      - {{address: 192.0.2.200/24, interface: eth0}}
      - {{address: 198.51.100.200/24, interface: eth1}}
"""
VIP = "192.0.2.200"


def probe_arp(ifname: str, ip: str, mac: str, limit: float) -> None:
    """Child mode: ARP for `ip` every 10 ms; print when `mac` first answers."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    sock.bind((ifname, 0))
    sock.settimeout(0.01)
    own = sock.getsockname()[4]
    src_ip = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", ifname], capture_output=True, text=True, check=True
    ).stdout
    src = socket.inet_aton(json.loads(src_ip)[0]["addr_info"][0]["local"])
    want = bytes.fromhex(mac.replace(":", ""))
    frame = (
        b"\xff" * 6
        + own
        + b"\x08\x06"
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
        + own
        + src
        + b"\x00" * 6
        + socket.inet_aton(ip)
    )
    print("ready", flush=True)
    end = time.monotonic() + limit
    next_send = 0.0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_send:
            sock.send(frame)
            next_send = now + 0.01
        try:
            data = sock.recv(128)
        except TimeoutError:
            continue
        if data[12:14] == b"\x08\x06" and data[20:22] == b"\x00\x02" and data[22:28] == want:
            print(f"answered {time.monotonic():.6f}", flush=True)
            return
    print("timeout", flush=True)


def put_standby(endpoints: str, node: str) -> None:
    """Child mode: write the standby key; print when etcd acknowledged it."""
    from etcdha.keyspace import Keyspace
    from etcdha.store import EtcdSettings, Store, parse_endpoints

    async def main() -> None:
        async with await Store.connect(EtcdSettings(endpoints=parse_endpoints(endpoints))) as s:
            await s.get(Keyspace().config())  # connection warm before timing
            await s.put(Keyspace().standby(node), b'{"reason": "bench"}')
            print(f"committed {time.monotonic():.6f}", flush=True)

    asyncio.run(main())


def operator(endpoints: str, mode: str) -> None:
    """Child mode: revoke the leader's lease or delete its key, as an operator's
    etcdctl would; print when etcd acknowledged it."""
    from etcdha.keyspace import Keyspace
    from etcdha.store import EtcdSettings, Store, parse_endpoints

    async def main() -> None:
        async with await Store.connect(EtcdSettings(endpoints=parse_endpoints(endpoints))) as s:
            kv = await s.get(Keyspace().leader("web"))
            assert kv is not None, "nobody leads web"
            if mode == "revoke":
                await s.revoke(kv.lease)
            else:
                await s.delete(kv.key)
            print(f"committed {time.monotonic():.6f}", flush=True)

    asyncio.run(main())


def start_prober(lab: DirectorLab, mac: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        netns_exec_argv(
            lab.seed.ns("client"), [sys.executable, __file__, "--probe-arp", "eth0", VIP, mac]
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def answered_at(proc: subprocess.Popen[str]) -> float:
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    proc.wait(5)
    if not line or line[0] != "answered":
        raise RuntimeError("the VIP never answered from the new leader")
    return float(line[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def restore_node1(lab: DirectorLab) -> None:
    if not lab.agents["node1"].process.alive():
        lab.start_agent("node1")
    lab.etcdha("online", "node1", node="node2")
    lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 20, "node1 to lead again")
    lab.wait_for(lambda: lab.leader("web") == "node1", 5, "the leader key")
    time.sleep(0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--ttl", type=float, default=2.0)
    ap.add_argument("--only", default="kill,standby,revoke,delete", help="comma-separated")
    ap.add_argument("--probe-arp", nargs=3, metavar=("IFACE", "IP", "MAC"))
    ap.add_argument("--put-standby", nargs=2, metavar=("ENDPOINTS", "NODE"))
    ap.add_argument("--operator", nargs=2, metavar=("ENDPOINTS", "MODE"))
    args = ap.parse_args()
    if args.probe_arp:
        probe_arp(*args.probe_arp, limit=30.0)
        return 0
    if args.put_standby:
        put_standby(*args.put_standby)
        return 0
    if args.operator:
        operator(*args.operator)
        return 0

    ka = round(args.ttl / 4, 3)
    only = set(args.only.split(","))
    results: dict[str, list[float]] = {}
    with DirectorLab(nodes=2) as lab:
        lab.apply(SPEC.format(ttl=args.ttl, ka=ka, margin=min(0.5, args.ttl / 4)))
        lab.start_agent("node1")
        lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 10, "node1")
        lab.start_agent("node2")
        time.sleep(1.5)
        mac2 = lab.mac("node2")
        for mode in ("kill", "standby", "revoke", "delete"):
            if mode not in only:
                continue
            values = results.setdefault(mode, [])
            for i in range(args.trials):
                restore_node1(lab)
                prober = start_prober(lab, mac2)
                values.append(answered_at(prober) - act(lab, mode))
                print(f"{mode} trial {i + 1}: {values[-1] * 1000:.0f} ms", flush=True)
    print()
    print(f"lease_ttl {args.ttl:g}s, keepalive {ka:g}s, {args.trials} trials each")
    names = {
        "kill": ("kill -9 -> VIP answers ARP on the new leader", f"p99 <= {args.ttl + 0.6:g} s"),
        "standby": ("standby committed -> VIP answers ARP", "median <= 0.1 s, p99 <= 0.3 s"),
        "revoke": ("etcdctl lease revoke -> VIP answers ARP", f"within a keepalive ({ka:g} s)"),
        "delete": ("etcdctl del of the leader key -> VIP answers ARP", "no goal"),
    }
    for mode, values in results.items():
        name, goal = names[mode]
        print(
            f"{name}: median {statistics.median(values):.3f} s, p99 {pct(values, 0.99):.3f} s,"
            f" max {max(values):.3f} s  (goal: {goal})"
        )
    return 0


def act(lab: DirectorLab, mode: str) -> float:
    """Inject one fault against node1; returns when it happened (monotonic)."""
    if mode == "kill":
        killed = time.monotonic()
        lab.kill_agent("node1")
        return killed
    child = (
        ["--put-standby", lab.endpoints, "node1"]
        if mode == "standby"
        else ["--operator", lab.endpoints, mode]
    )
    done = subprocess.run(
        netns_exec_argv(lab.seed.ns("node2"), [sys.executable, __file__, *child]),
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.split()[1])


if __name__ == "__main__":
    sys.exit(main())
