"""The fault matrix: faults injected into the seed topology while a client probes the VIP.

One implementation for `bench/faults.py` (the full matrix) and
`tests/netns/test_fault_matrix.py` (a reduced one in CI). A :class:`Fault`
is an injection, a recovery and what "settled" means afterwards; a trial is
inject, recover, then wait until settled. Trials of one fault reuse one lab
(:class:`FaultLab`: :class:`~etcdha.lab.directors.DirectorLab`, real etcd, real
agents, real namespaces), so a trial takes a few seconds.

While the trials run:

- every director's addresses are read every 10 ms (:class:`HolderSampler`):
  the VIP, the DIP and the extra address some faults add; a sample where one
  address has two holders is a dual-holder sample;
- a client in the client namespace requests ``http://VIP/`` every 10 ms
  (:mod:`etcdha.lab.prober`); the host kernel has no IPVS, so each director
  answers itself, with a page naming it (a responder on the VIP's port in its
  namespace), and the client sees which director took each request;
- the leader key is watched (:class:`LeaderTimeline`) to count answers from a
  director that etcd did not name as leader at the time;
- after each trial the stored config is compared with the one applied last.

Settled, unless a fault says more: etcd names a leader, that director and no
other holds every address of the group, both agents are up and registered
as eligible members, and the client's last 10 requests sent since the
recovery were all answered by that director.

Stale IPVS rules are reported as "n/a": the host kernel has no IPVS (see
docs/faults.md).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from etcdha.keyspace import Keyspace
from etcdha.lab.clock_offset import ClockOffset
from etcdha.lab.directors import DirectorLab, etcdha_argv
from etcdha.lab.netns import LabProcess, netns_exec_argv
from etcdha.lab.nsock import in_netns
from etcdha.lab.recorder import Request
from etcdha.lab.topology import CONTROL_IF, PRIVATE_IF, PUBLIC_IF
from etcdha.lab.webservers import WebServer, fallback_server, real_server

VIP = "192.0.2.200"
DIP = "198.51.100.200"
EXTRA = "192.0.2.201"  # added and removed again by the config apply fault
ADDRESSES = (VIP, DIP, EXTRA)
GROUP = "web"
NODES = ("node1", "node2")
KEYSPACE = Keyspace()
LEADER_KEY = KEYSPACE.leader(GROUP)
CONFIG_KEY = KEYSPACE.config()
MEMBERS = KEYSPACE.members_prefix()
SETTLE_RUN = 10  # requests in a row answered by the leader
AGENT_PORT = 9614  # the agents' HTTP listener (on 127.0.0.1 in each namespace)
T = TypeVar("T")
Say = Callable[[str], None]


def say_stdout(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def other(node: str) -> str:
    return NODES[1] if node == NODES[0] else NODES[0]


def spec_yaml(
    ttl: float = 2.0, keepalive: float = 0.5, *, extra: bool = False, reals: bool = False
) -> str:
    """The matrix's spec: the seed's group (VIP on eth0, DIP on eth1) with short
    timings, the ping node, and no auto_failback (so trials alternate leaders);
    `extra` adds a third address, `reals` a virtual service whose reals are checked."""
    resources = [
        f"{{address: {VIP}/24, interface: eth0}}",
        f"{{address: {DIP}/24, interface: eth1}}",
    ]
    if extra:
        resources.append(f"{{address: {EXTRA}/24, interface: eth0}}")
    text = f"""nodes: [node1, node2]
election:
  lease_ttl: {ttl:g}s
  keepalive_interval: {keepalive:g}s
  auto_failback: false
  ping_nodes: [192.0.2.1]
  ping_interval: 200ms
  ping_timeout: 200ms
  ping_failures: 3
groups:
  - name: web
    node: node1
    resources:
"""
    text += "".join(f"      - {r}\n" for r in resources)
    if reals:
        text += """virtual_services:
  - address: 192.0.2.200:8080
    check: {service: http, request: /test.html, receive: ok, interval: 1s, timeout: 500ms}
    reals:
      - {address: 198.51.100.12:80, forward: masq}
      - {address: 198.51.100.6:80, forward: masq}
"""
    return text


# ---------------------------------------------------------------------------
# observers


class HolderSampler:
    """Which directors hold each address, read every `interval` in a thread.

    One netlink socket per director's namespace, an RTM_GETADDR dump per read
    (a few hundred microseconds for both). Keeps one entry per sample
    (wall-clock time, most holders of any one address) and every change of
    holders, per address.
    """

    def __init__(self, lab: DirectorLab, ips: Sequence[str], interval: float = 0.01) -> None:
        self.lab = lab
        self.ips = tuple(ips)
        self.interval = interval
        self.times: list[float] = []
        self.most: list[int] = []
        self.changes: list[tuple[float, str, tuple[str, ...]]] = []
        self.current: dict[str, tuple[str, ...]] = {ip: () for ip in self.ips}
        self.max_pause = 0.0  # longest time between two samples
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="holders", daemon=True)

    def _run(self) -> None:
        sockets = {n: AddressDump(self.lab.seed.ns(n)) for n in self.lab.seed.nodes}
        previous: float | None = None
        try:
            while not self._stop.is_set():
                now = time.time()
                held: dict[str, list[str]] = {ip: [] for ip in self.ips}
                for node, sock in sockets.items():
                    for ip in sock.addresses():
                        if ip in held and node not in held[ip]:
                            held[ip].append(node)
                current = {ip: tuple(h) for ip, h in held.items()}
                for ip, holders in current.items():
                    if holders != self.current[ip]:
                        self.changes.append((now, ip, holders))
                self.current = current
                self.times.append(now)
                self.most.append(max(len(h) for h in current.values()))
                if previous is not None:
                    self.max_pause = max(self.max_pause, now - previous)
                previous = now
                self._stop.wait(self.interval)
        except Exception as e:  # recorded: a sampler that died must not pass for silence
            self.error = f"{type(e).__name__}: {e}"
        finally:
            for sock in sockets.values():
                sock.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def window(self, start: float, end: float) -> tuple[int, int, int]:
        """(samples, most holders at once, dual-holder samples) in [start, end)."""
        lo = bisect.bisect_left(self.times, start)
        hi = bisect.bisect_left(self.times, end)
        most = self.most[lo:hi]
        return len(most), max(most, default=0), sum(1 for m in most if m > 1)

    def moves(self, ip: str, start: float, end: float) -> int:
        """Changes of the holders of `ip` in [start, end)."""
        return sum(1 for t, i, _ in self.changes if i == ip and start <= t < end)

    def holders(self, ip: str = VIP) -> tuple[str, ...]:
        return self.current[ip]


class AddressDump:
    """A NETLINK_ROUTE socket made inside a namespace; :meth:`addresses` dumps its
    IPv4 addresses (RTM_GETADDR), parsed here without a netlink library."""

    RTM_NEWADDR = 20
    RTM_GETADDR = 22
    NLMSG_ERROR = 2
    NLMSG_DONE = 3
    IFA_ADDRESS = 1
    IFA_LOCAL = 2

    def __init__(self, ns: str) -> None:
        with in_netns(ns):
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def addresses(self) -> list[str]:
        self.seq += 1
        flags = 0x1 | 0x300  # NLM_F_REQUEST | NLM_F_DUMP
        request = struct.pack("=IHHII", 24, self.RTM_GETADDR, flags, self.seq, 0)
        request += struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 0)
        self.sock.send(request)
        found: list[str] = []
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    return found
                if seq == self.seq:
                    if kind == self.NLMSG_DONE:
                        return found
                    if kind == self.NLMSG_ERROR:
                        raise OSError("netlink error answering RTM_GETADDR")
                    if kind == self.RTM_NEWADDR:
                        found += self._parse(data[offset + 16 : offset + length])
                offset += (length + 3) & ~3

    def _parse(self, body: bytes) -> list[str]:
        local: str | None = None
        address: str | None = None
        offset = 8  # struct ifaddrmsg
        while offset + 4 <= len(body):
            rta_len, rta_type = struct.unpack_from("=HH", body, offset)
            if rta_len < 4:
                break
            value = body[offset + 4 : offset + rta_len]
            if rta_type == self.IFA_LOCAL and len(value) == 4:
                local = socket.inet_ntoa(value)
            elif rta_type == self.IFA_ADDRESS and len(value) == 4:
                address = socket.inet_ntoa(value)
            offset += (rta_len + 3) & ~3
        found = local or address
        return [found] if found else []

    def close(self) -> None:
        self.sock.close()


class LeaderTimeline:
    """The group's leader as etcd names it, from `etcdctl watch` (restarted when it
    ends, after a fresh read), each change timed when it arrived here."""

    def __init__(self, lab: DirectorLab) -> None:
        self.lab = lab
        self.changes: list[tuple[float, str | None]] = []
        self._times: list[float] = []  # of the changes, for led()
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, name="leader-watch", daemon=True)

    def _note(self, t: float, leader: str | None) -> None:
        if not self.changes or self.changes[-1][1] != leader:
            self.changes.append((t, leader))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = json.loads(self.lab.etcdctl("get", "-w", "json", LEADER_KEY))
            except Exception:
                self._stop.wait(0.2)
                continue
            kvs = out.get("kvs") or []
            self._note(time.time(), _leader_of(kvs[0].get("value", "")) if kvs else None)
            revision = int(out["header"]["revision"])
            argv = ["etcdctl", "--endpoints", self.lab.endpoints, *self.lab.tls_args()]
            argv += ["watch", "--rev", str(revision + 1), LEADER_KEY, "-w", "json"]
            self._proc = subprocess.Popen(
                netns_exec_argv(self.lab.seed.ns("etcd"), argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env={"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                start_new_session=True,
            )
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                seen = time.time()
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    for event in json.loads(line).get("Events") or []:
                        if event.get("type") == 1:
                            self._note(seen, None)
                        else:
                            self._note(seen, _leader_of(event["kv"].get("value", "")))
            self._proc.wait()
            self._stop.wait(0.1)

    def start(self) -> None:
        self._thread.start()

    def resync(self) -> None:
        """Read the key again and watch from there (after etcd was restarted or restored)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        self._stop.set()
        self.resync()
        self._thread.join(5.0)

    def led(self, node: str, start: float, end: float) -> bool:
        """Whether etcd named `node` leader at some moment of [start, end]."""
        if len(self._times) != len(self.changes):
            self._times = [t for t, _ in self.changes]
        times = self._times
        lo = bisect.bisect_right(times, start) - 1
        hi = bisect.bisect_right(times, end)
        return any(who == node for _, who in self.changes[max(0, lo) : hi])


def _leader_of(value: str) -> str | None:
    import base64

    try:
        node = json.loads(base64.b64decode(value) or b"{}").get("node")
    except ValueError:
        return None
    return str(node) if node else None


class Client:
    """The prober in the client namespace: a request to the VIP every 10 ms."""

    def __init__(self, lab: DirectorLab) -> None:
        self.requests: list[Request] = []
        self.process: LabProcess = lab.seed.topology.start(
            "client",
            sys.executable,
            "-m",
            "etcdha.lab.prober",
            "--vip",
            VIP,
            "--interval",
            "0.01",
            "--timeout",
            "1",
            stdout=subprocess.PIPE,
        )
        self._thread = threading.Thread(target=self._read, name="client", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        popen = self.process.popen
        assert popen is not None and popen.stdout is not None
        for line in popen.stdout:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                r = json.loads(line)
                self.requests.append(
                    Request(
                        float(r["sent"]),
                        float(r["done"]),
                        str(r["outcome"]),
                        detail=str(r.get("detail", "")),
                    )
                )

    def answered_by(self, node: str, after: float, run: int = SETTLE_RUN) -> bool:
        """The last `run` requests sent after `after` (and done) were all answered by `node`."""
        recent = [r for r in self.requests[-4 * run :] if r.sent >= after]
        recent.sort(key=lambda r: r.sent)
        tail = recent[-run:]
        return len(tail) == run and all(r.outcome == "fallback" and r.detail == node for r in tail)

    def stop(self) -> None:
        self.process.stop(timeout=3.0)  # the prober waits for requests in flight
        self._thread.join(5.0)


class CpuHog:
    """`stress-ng --cpu 2`: both cores kept busy."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["stress-ng", "--cpu", "2", "--quiet"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
                return

    def __enter__(self) -> CpuHog:
        self.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# the lab


@dataclass(frozen=True)
class LabNeeds:
    """What a fault needs of its lab; faults with equal needs can share one."""

    etcd_members: int = 1
    ttl: float = 2.0
    keepalive: float = 0.5
    clock: bool = False  # agents see a wall-clock offset the fault can step
    reals: bool = False  # real servers with web servers, checked by the agents


class FaultLab:
    """A DirectorLab with responders, both agents, the sampler, the leader
    timeline and the client; close it (or use `with`) to remove everything."""

    def __init__(self, needs: LabNeeds, say: Say = say_stdout) -> None:
        self.needs = needs
        self.say = say
        self.applied: str | None = None  # the config value stored by the last apply
        self.extra = False  # whether the applied spec has the extra address
        self.clocks: dict[str, ClockOffset] = {}
        self.ports: dict[str, int] = {}  # agents listening elsewhere than AGENT_PORT
        self.servers: dict[str, WebServer] = {}
        self.sampler: HolderSampler | None = None
        self.timeline: LeaderTimeline | None = None
        self.client: Client | None = None
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="responders", daemon=True
        )
        self._loop_thread.start()
        self.lab = DirectorLab(nodes=2, etcd_members=needs.etcd_members)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _start(self) -> None:
        lab, seed = self.lab, self.lab.seed
        self.servers = {n: fallback_server(n, seed.ns(n)) for n in seed.nodes}
        if self.needs.reals:
            self.servers["rs1"] = real_server("rs1", seed.ns("rs1"), seed.rs1)
            self.servers["rs2"] = real_server("rs2", seed.ns("rs2"), seed.rs2)
        for server in self.servers.values():
            self._call(server.start())
        if self.needs.clock:
            self.clocks = {n: ClockOffset(lab.work / f"clock-{n}") for n in seed.nodes}
        self.apply()
        self.sampler = HolderSampler(lab, ADDRESSES)
        self.sampler.start()
        self.start_agent("node1")
        self.wait(lambda: self.sampler_holders() == ("node1",), 30, "node1 to hold the VIP")
        self.start_agent("node2")
        self.timeline = LeaderTimeline(lab)
        self.timeline.start()
        self.client = Client(lab)
        self.wait(lambda: self.settled(0.0) is not None, 30, "the lab to settle")

    # -- actions

    def apply(self, extra: bool = False) -> None:
        n = self.needs
        self.lab.apply(spec_yaml(n.ttl, n.keepalive, extra=extra, reals=n.reals))
        self.extra = extra
        self.applied = self.stored_config()

    def start_agent(self, node: str, *extra: str, **kwargs: Any) -> None:
        env = self.clocks[node].env() if node in self.clocks else None
        if "--listen" not in extra:
            self.ports.pop(node, None)
        self.lab.start_agent(node, *extra, env=env, **kwargs)

    def server(self, name: str, up: bool) -> None:
        server = self.servers[name]
        self._call(server.start() if up else server.stop())

    def etcdha(self, *args: str, node: str = "node1") -> subprocess.CompletedProcess[str]:
        return self.lab.etcdha(*args, node=node, timeout=30)

    # -- observing

    def sampler_holders(self, ip: str = VIP) -> tuple[str, ...]:
        assert self.sampler is not None
        return self.sampler.holders(ip)

    def leader(self) -> str | None:
        """The leader etcd names now (None if none, or etcd does not answer)."""
        try:
            return self.lab.leader(GROUP)
        except Exception:
            return None

    def leader_lease(self) -> int | None:
        out = json.loads(self.lab.etcdctl("get", "-w", "json", LEADER_KEY))
        kvs = out.get("kvs") or []
        return int(kvs[0].get("lease", 0)) if kvs else None

    def eligible_members(self) -> set[str]:
        out = self.lab.etcdctl("get", "--prefix", "--print-value-only", MEMBERS, check=False)
        found = set()
        for line in out.splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                value = json.loads(line)
                if value.get("eligible"):
                    found.add(str(value.get("node", "")))
        return found

    def ready(self, node: str) -> bool:
        """The agent of `node` answers /readyz (it holds a live lease)."""
        with in_netns(self.lab.seed.ns(node)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(1.0)
            sock.connect(("127.0.0.1", self.ports.get(node, AGENT_PORT)))
            sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            return sock.recv(64).split(b" ")[1:2] == [b"200"]
        except (OSError, IndexError):
            return False
        finally:
            sock.close()

    def stored_config(self) -> str | None:
        try:
            out = self.lab.etcdctl("get", "--print-value-only", CONFIG_KEY).strip()
        except RuntimeError:
            return None
        return out or None

    def config_lost(self) -> bool:
        """The stored config differs from the one applied last (read with etcdctl;
        a store that does not answer for 10 s counts as lost)."""
        deadline = time.monotonic() + 10
        while True:
            stored = self.stored_config()
            if stored is not None or time.monotonic() > deadline:
                return stored != self.applied
            time.sleep(0.2)

    def agents_alive(self) -> bool:
        return all(self.lab.agents[n].process.alive() for n in self.lab.seed.nodes)

    def settled(self, after: float) -> str | None:
        """The leader, if the lab has settled on it (see the module's docstring)."""
        holders = self.sampler_holders()
        if len(holders) != 1:
            return None
        leader = self.leader()
        if leader is None or (leader,) != holders:
            return None
        if self.sampler_holders(DIP) != holders:
            return None
        if self.sampler_holders(EXTRA) != (holders if self.extra else ()):
            return None
        if not self.agents_alive() or self.eligible_members() != set(self.lab.seed.nodes):
            return None
        if not all(self.ready(n) for n in self.lab.seed.nodes):
            return None
        assert self.client is not None
        if not self.client.answered_by(leader, after):
            return None
        return leader

    @staticmethod
    def wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(interval)

    def wait_holder(self, node: str, timeout: float | None = None) -> None:
        """Wait until `node` alone holds the VIP (a takeover)."""
        limit = timeout if timeout is not None else self.needs.ttl * 3 + 10
        self.wait(lambda: self.sampler_holders() == (node,), limit, f"{node} to hold the VIP")

    # -- back to a known state after a trial that did not settle

    def repair(self) -> None:
        lab = self.lab
        for node in lab.seed.nodes:
            for ifname in (PUBLIC_IF, PRIVATE_IF, CONTROL_IF):
                with contextlib.suppress(Exception):
                    lab.seed.topology.restore(node, ifname)
            if node in self.clocks:
                self.clocks[node].set(0.0)
            agent = lab.agents[node]
            agent.process.signal(signal.SIGCONT)
        for member in lab.etcd:
            if not member.running:
                member.start(wait=False)
        lab.wait_etcd(60)
        if self.timeline is not None:
            self.timeline.resync()
        for name, server in self.servers.items():
            if not server.running:
                self.server(name, True)
        for node in lab.seed.nodes:
            if not lab.agents[node].process.alive():
                self.start_agent(node)

    # -- teardown

    def close(self) -> None:
        for part in (self.client, self.timeline, self.sampler):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                self._call(server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(5.0)
        self._loop.close()
        if hasattr(self, "lab"):
            self.lab.close()

    def __enter__(self) -> FaultLab:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------
# faults


@dataclass
class Trial:
    index: int
    leader: str  # who led when the trial began
    started: float = 0.0  # wall clock
    recovered: float = 0.0  # when the recovery was done
    ended: float = 0.0  # settled (or gave up)
    settled: bool = False
    new_leader: str | None = None
    config_lost: bool = False
    problems: list[str] = field(default_factory=list)
    # measured once the run is over
    requests: int = 0
    failed: int = 0
    gap: float = 0.0
    non_leader: int = 0
    samples: int = 0
    max_holders: int = 0
    dual_samples: int = 0
    moves: int = 0
    changes: list[tuple[float, str, tuple[str, ...]]] = field(default_factory=list)

    @property
    def other(self) -> str:
        return other(self.leader)


Action = Callable[[FaultLab, Trial], None]


def _nothing(fl: FaultLab, trial: Trial) -> None:
    pass


@dataclass(frozen=True)
class Fault:
    name: str
    klass: str  # kill, partition, revoke (the ones counted for the 1,000 trials), ...
    title: str
    inject: Action
    recover: Action = _nothing
    settled_too: Callable[[FaultLab, Trial], bool] | None = None  # besides the default
    settle_timeout: float = 30.0
    needs: LabNeeds = LabNeeds()


def _kill9(fl: FaultLab, t: Trial) -> None:
    fl.lab.kill_agent(t.leader)
    fl.wait_holder(t.other)


def _start_leader(fl: FaultLab, t: Trial) -> None:
    fl.start_agent(t.leader)


def _sigstop(fl: FaultLab, t: Trial) -> None:
    fl.lab.signal_agent(t.leader, signal.SIGSTOP)
    try:
        fl.wait_holder(t.other)
    finally:
        fl.lab.signal_agent(t.leader, signal.SIGCONT)


def _cut(ifname: str) -> Action:
    def inject(fl: FaultLab, t: Trial) -> None:
        fl.lab.seed.topology.cut(t.leader, ifname)
        try:
            fl.wait_holder(t.other)
        finally:
            fl.lab.seed.topology.restore(t.leader, ifname)

    return inject


def _revoke(fl: FaultLab, t: Trial) -> None:
    lease = fl.leader_lease()
    if lease is None:
        raise RuntimeError("no leader key to revoke the lease of")
    fl.lab.etcdctl("lease", "revoke", format(lease, "x"))


def _delete_key(fl: FaultLab, t: Trial) -> None:
    fl.lab.etcdctl("del", LEADER_KEY)


def _resync(fl: FaultLab) -> None:
    fl.lab.wait_etcd(60)
    if fl.timeline is not None:
        fl.timeline.resync()


def _etcd_restart(fl: FaultLab, t: Trial) -> None:
    fl.lab.etcd[0].stop()
    fl.lab.etcd[0].start(wait=False)
    _resync(fl)


def _etcd_member(fl: FaultLab, t: Trial) -> None:
    index = fl.lab.etcd_leader_index()
    fl.lab.etcd[index].kill()
    time.sleep(fl.needs.ttl * 2)
    fl.lab.etcd[index].start(wait=False)
    _resync(fl)


def _etcd_quorum(fl: FaultLab, t: Trial) -> None:
    lost = [fl.lab.etcd_leader_index()]
    lost.append((lost[0] + 1) % len(fl.lab.etcd))
    fl.lab.etcd[lost[0]].kill()
    time.sleep(0.5)  # one member lost first, then the quorum
    fl.lab.etcd[lost[1]].kill()
    # The leader cannot renew: it must drop the VIP at its deadline.
    fl.wait(lambda: fl.sampler_holders() == (), fl.needs.ttl + 5, "the VIP to be dropped")
    time.sleep(0.5)
    for index in lost:
        fl.lab.etcd[index].start(wait=False)
    _resync(fl)


def _director_death(fl: FaultLab, t: Trial) -> None:
    """The leading director loses power with the etcd member it hosts (member i
    runs on node i+1): its links go dead, its processes die, and its addresses
    go with the machine (a machine that is off holds nothing); the member is
    killed. Then it boots again: links, member, agent."""
    lab, topo = fl.lab, fl.lab.seed.topology
    index = lab.seed.nodes.index(t.leader)
    for ifname in (PUBLIC_IF, PRIVATE_IF, CONTROL_IF):
        topo.cut(t.leader, ifname)
    pids = topo.pids(t.leader)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for ip, ifname in ((VIP, PUBLIC_IF), (DIP, PRIVATE_IF), (EXTRA, PUBLIC_IF)):
        topo.exec(t.leader, "ip", "addr", "del", f"{ip}/24", "dev", ifname, check=False)
    lab.etcd[index].kill()
    fl.wait_holder(t.other)
    for ifname in (PUBLIC_IF, PRIVATE_IF, CONTROL_IF):
        topo.restore(t.leader, ifname)
    lab.etcd[index].start(wait=False)
    _resync(fl)
    fl.start_agent(t.leader)


def _compaction(fl: FaultLab, t: Trial) -> None:
    """Both agents frozen, the store written and compacted past what their watches
    saw, their connections to etcd cut (ss -K): they resume watching from a
    compacted revision. Then a standby proves the other still sees the keys."""
    lab = fl.lab
    for node in lab.seed.nodes:
        lab.signal_agent(node, signal.SIGSTOP)
    try:
        for _ in range(3):
            lab.etcdctl("put", "/etcdha-fault-matrix/filler", str(time.time()))
        revision = json.loads(lab.etcdctl("get", "-w", "json", "/etcdha-fault-matrix/filler"))
        lab.etcdctl("compact", str(revision["header"]["revision"]), "--physical")
        for node in lab.seed.nodes:
            lab.seed.topology.exec(node, "ss", "-K", "dst", lab.seed.etcd, check=False)
    finally:
        for node in lab.seed.nodes:
            lab.signal_agent(node, signal.SIGCONT)


def _standby_round(fl: FaultLab, t: Trial) -> None:
    leader = fl.leader() or t.leader
    fl.etcdha("standby", leader, node=leader)
    fl.wait_holder(other(leader))
    fl.etcdha("online", leader, node=leader)


def _snapshot_restore(fl: FaultLab, t: Trial) -> None:
    """A snapshot that names the leader; the group moves (standby, online); etcd
    restored from the snapshot goes back to a store naming the old leader."""
    lab = fl.lab
    snapshot = lab.work / "snapshot.db"
    with contextlib.suppress(FileNotFoundError):
        snapshot.unlink()
    lab.etcdctl("snapshot", "save", str(snapshot))
    fl.etcdha("standby", t.leader, node=t.leader)
    fl.wait_holder(t.other)
    fl.etcdha("online", t.leader, node=t.leader)
    member = lab.etcd[0]
    member.stop()
    member.restore(snapshot)
    member.start(wait=False)
    _resync(fl)


def _clock_target(fl: FaultLab, t: Trial) -> str:
    return t.leader if t.index % 2 == 0 else t.other


def _clock_forward(fl: FaultLab, t: Trial) -> None:
    fl.clocks[_clock_target(fl, t)].set(3600.0)
    time.sleep(fl.needs.ttl * 2)


def _clock_back(fl: FaultLab, t: Trial) -> None:
    fl.clocks[_clock_target(fl, t)].set(0.0)
    time.sleep(fl.needs.ttl * 2)


def _twin(fl: FaultLab, t: Trial) -> None:
    """A second agent under a live node name must refuse; under the name of an
    agent that lost its lease (frozen past it), it starts, and the old agent,
    resumed, must stop."""
    lab = fl.lab
    port = 9700 + t.index % 200
    result = lab.etcdha(
        "agent", "start", "--node", t.leader,
        "--run-dir", str(lab.work / f"twin-refused-{t.index}"),
        "--listen", f"127.0.0.1:{port}",
        node=t.leader, check=False, timeout=30,
    )  # fmt: skip
    if result.returncode != 1 or "already live" not in result.stderr:
        t.problems.append(
            f"a twin of the live {t.leader} exited {result.returncode}: {result.stderr[-300:]}"
        )
    target = t.leader if t.index % 2 == 0 else t.other
    old = lab.agents[target]
    member = KEYSPACE.member(target)
    old.process.signal(signal.SIGSTOP)
    try:
        fl.wait(
            lambda: not lab.etcdctl("get", member).strip(), fl.needs.ttl + 10, "the lease to expire"
        )
        fl.ports[target] = port
        fl.start_agent(
            target,
            "--listen",
            f"127.0.0.1:{port}",
            run_dir=lab.work / f"run-{target}-{t.index}",
            log_name=f"agent-{target}-{t.index}.log",
        )
        fl.wait(lambda: lab.etcdctl("get", member).strip(), 30, "the twin to register")
    finally:
        old.process.signal(signal.SIGCONT)
    t.recovered = time.time()
    try:
        fl.wait(lambda: not old.process.alive(), 15, "the old agent to stop")
    except TimeoutError:
        t.problems.append(f"the old agent of {target} did not stop once its twin registered")
        old.process.stop()


def _planned_restart(fl: FaultLab, t: Trial) -> None:
    agent = fl.lab.agents[t.leader]
    subprocess.run(
        netns_exec_argv(
            fl.lab.seed.ns(t.leader),
            etcdha_argv(
                "agent", "stop", "--restart", "--node", t.leader, "--run-dir", str(agent.run_dir)
            ),
        ),
        check=True,
        capture_output=True,
        timeout=30,
    )
    fl.start_agent(t.leader)


def _crash_restart(fl: FaultLab, t: Trial) -> None:
    fl.lab.kill_agent(t.leader)
    fl.start_agent(t.leader)


def _apply_during_failover(fl: FaultLab, t: Trial) -> None:
    fl.lab.kill_agent(t.leader)
    fl.apply(extra=not fl.extra)  # the extra address comes or goes meanwhile
    fl.wait_holder(t.other)


def _flap(fl: FaultLab, t: Trial) -> None:
    """rs1's web server stopped and started every 0.3 s for 3 s (its check runs every 1 s)."""
    for i in range(10):
        fl.server("rs1", i % 2 == 1)
        time.sleep(0.3)
    fl.server("rs1", True)


def _health_published(fl: FaultLab, t: Trial) -> bool:
    out = fl.lab.etcdctl("get", "--prefix", "--keys-only", KEYSPACE.root + "health/", check=False)
    return "198.51.100.12" in out


SHORT = LabNeeds()
ETCD3 = LabNeeds(etcd_members=3)
# A planned restart must finish (a Python start) within the lease TTL.
LONG = LabNeeds(ttl=6.0, keepalive=1.0)

FAULTS: tuple[Fault, ...] = (
    Fault("kill9", "kill", "kill -9 of the leading agent", _kill9, _start_leader),
    Fault("sigstop", "kill", "SIGSTOP of the leading agent (SIGCONT once replaced)", _sigstop),
    Fault("etcd-link", "partition", "the leader's link to etcd cut", _cut(CONTROL_IF)),
    Fault(
        "public-link", "partition", "the leader's public link cut (ping node lost)", _cut(PUBLIC_IF)
    ),
    Fault("revoke", "revoke", "the leader's lease revoked with etcdctl", _revoke),
    Fault("key-delete", "revoke", "the leader key deleted with etcdctl", _delete_key),
    Fault("etcd-restart", "etcd", "etcd restarted", _etcd_restart),
    Fault(
        "etcd-member", "etcd", "3-member etcd: its leader member killed", _etcd_member, needs=ETCD3
    ),
    Fault(
        "etcd-quorum",
        "etcd",
        "3-member etcd: one member lost, then quorum",
        _etcd_quorum,
        needs=ETCD3,
        settle_timeout=60.0,
    ),
    Fault(
        "director-death",
        "kill",
        "the leading director dies with the etcd member it hosts",
        _director_death,
        needs=ETCD3,
    ),
    Fault("compaction", "etcd", "compaction under the watches", _compaction, _standby_round),
    Fault(
        "snapshot-restore",
        "etcd",
        "etcd restored from an older snapshot",
        _snapshot_restore,
        settle_timeout=60.0,
    ),
    Fault(
        "clock-step",
        "clock",
        "a director's wall clock stepped by an hour, and back",
        _clock_forward,
        _clock_back,
        needs=LabNeeds(clock=True),
    ),
    Fault("twin", "twin", "two agents with one node name", _twin),
    Fault(
        "restart-planned",
        "restart",
        "the leading agent restarted (planned: stop --restart)",
        _planned_restart,
        needs=LONG,
    ),
    Fault("restart-crash", "restart", "the leading agent restarted after kill -9", _crash_restart),
    Fault(
        "apply-failover",
        "config",
        "a config apply during a failover (kill -9)",
        _apply_during_failover,
        _start_leader,
    ),
    Fault(
        "flapping",
        "checks",
        "a real server flapping faster than its check",
        _flap,
        settled_too=_health_published,
        needs=LabNeeds(reals=True),
    ),
)
BY_NAME = {f.name: f for f in FAULTS}
HEAVY_CLASSES = ("kill", "partition", "revoke")  # counted for the 1,000 trials


# ---------------------------------------------------------------------------
# running


@dataclass
class FaultResult:
    fault: Fault
    load: bool
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0
    max_holders: int = 0
    dual_samples: int = 0
    sampler_pause: float = 0.0
    aborted: str | None = None
    dual_details: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.fault.name + (" +load" if self.load else "")

    @property
    def gaps(self) -> list[float]:
        return [t.gap for t in self.trials]

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.trials)

    @property
    def non_leader(self) -> int:
        return sum(t.non_leader for t in self.trials)

    @property
    def config_lost(self) -> int:
        return sum(1 for t in self.trials if t.config_lost)

    @property
    def unsettled(self) -> int:
        return sum(1 for t in self.trials if not t.settled)

    @property
    def problems(self) -> list[str]:
        out = [f"trial {t.index + 1}: {p}" for t in self.trials for p in t.problems]
        return out + ([f"aborted: {self.aborted}"] if self.aborted else [])

    @property
    def safe(self) -> bool:
        return self.max_holders <= 1 and self.dual_samples == 0 and self.config_lost == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "fault": self.fault.name,
            "class": self.fault.klass,
            "title": self.fault.title,
            "load": self.load,
            "trials": len(self.trials),
            "gap_median": median(self.gaps),
            "gap_p99": percentile(self.gaps, 0.99),
            "failed_requests": self.failed,
            "requests": sum(t.requests for t in self.trials),
            "max_holders": self.max_holders,
            "dual_holder_samples": self.dual_samples,
            "samples": self.samples,
            "sampler_max_pause": round(self.sampler_pause, 4),
            "stale_ipvs_rules": None,
            "config_lost": self.config_lost,
            "non_leader_answers": self.non_leader,
            "unsettled": self.unsettled,
            "seconds": round(self.seconds, 1),
            "problems": self.problems,
            "dual_holders": self.dual_details,
            "per_trial": [
                {
                    "leader": t.leader,
                    "new_leader": t.new_leader,
                    "gap": round(t.gap, 4),
                    "failed": t.failed,
                    "settle": round(t.ended - t.started, 3),
                    "settled": t.settled,
                    "moves": t.moves,
                    "max_holders": t.max_holders,
                    "started": round(t.started, 3),
                    "holders": [
                        [round(when - t.started, 3), ip, list(h)] for when, ip, h in t.changes
                    ],
                    "problems": t.problems,
                }
                for t in self.trials
            ],
        }


def median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 4) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 4)


def _measure(fl: FaultLab, result: FaultResult, start: float, end: float) -> None:
    assert fl.client is not None and fl.sampler is not None and fl.timeline is not None
    requests = sorted(fl.client.requests, key=lambda r: r.sent)
    answers = sorted(r.done for r in requests if r.served)
    sent = [r.sent for r in requests]
    for t in result.trials:
        seq = requests[bisect.bisect_left(sent, t.started) : bisect.bisect_left(sent, t.ended)]
        t.requests = len(seq)
        t.failed = sum(1 for r in seq if not r.served)
        t.gap = client_gap(answers, t.started, t.ended)
        t.non_leader = sum(
            1 for r in seq if r.served and not fl.timeline.led(r.detail, r.sent - 0.1, r.done + 0.1)
        )
        t.samples, t.max_holders, t.dual_samples = fl.sampler.window(t.started, t.ended)
        t.moves = fl.sampler.moves(VIP, t.started, t.ended)
        t.changes = [c for c in fl.sampler.changes if t.started <= c[0] < t.ended]
    result.samples, result.max_holders, result.dual_samples = fl.sampler.window(start, end)
    result.sampler_pause = fl.sampler.max_pause
    result.dual_details = [
        time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when * 1000) % 1000:03d} {ip} {h}"
        for when, ip, h in fl.sampler.changes
        if len(h) > 1 and start <= when < end
    ]
    if fl.sampler.error:
        result.aborted = (result.aborted or "") + f" sampler failed: {fl.sampler.error}"


def client_gap(answers: Sequence[float], start: float, end: float) -> float:
    """The longest time the client went without an answer in [start, end]: between two
    answers in a row, by when they came back (a request sent while nobody held the
    VIP may still be answered once somebody does: its SYN waited for ARP), counted
    from the last answer before `start`. `answers`: when each answer came, sorted."""
    lo = bisect.bisect_left(answers, start)
    hi = bisect.bisect_right(answers, end)
    times = [*answers[max(0, lo - 1) : hi], end]
    return max((b - a for a, b in itertools.pairwise(times)), default=end - start)


def run_faults(
    faults: Iterable[Fault],
    trials: Callable[[Fault], int],
    *,
    load: bool = False,
    say: Say = say_stdout,
) -> list[FaultResult]:
    """Run each fault's trials; faults with the same needs share a lab (in the
    order their first one comes). `load` keeps both cores busy with
    `stress-ng --cpu 2` meanwhile."""
    batches: dict[LabNeeds, list[Fault]] = {}
    for fault in faults:
        batches.setdefault(fault.needs, []).append(fault)
    results: list[FaultResult] = []
    for batch in batches.values():
        results += _run_batch(batch, trials, load, say)
    return results


def _run_batch(
    batch: Sequence[Fault], trials: Callable[[Fault], int], load: bool, say: Say
) -> list[FaultResult]:
    results: list[FaultResult] = []
    with FaultLab(batch[0].needs, say) as fl, contextlib.ExitStack() as stack:
        if load:
            stack.enter_context(CpuHog())
        for fault in batch:
            results.append(_run_fault(fl, fault, trials(fault), load, say))
        # Requests need up to their timeout to come back: stop the client first.
        assert fl.client is not None and fl.timeline is not None and fl.sampler is not None
        fl.client.stop()
        fl.timeline.stop()
        fl.sampler.stop()
        for result in results:
            if result.trials:
                _measure(fl, result, result.trials[0].started, result.trials[-1].ended)
        if os.environ.get("ETCDHA_FAULT_LOGS"):
            _keep_logs(fl, Path(os.environ["ETCDHA_FAULT_LOGS"]), batch)
    return results


def _keep_logs(fl: FaultLab, where: Path, batch: Sequence[Fault]) -> None:
    where.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for path in fl.lab.work.glob("agent-*.log"):
        (where / f"{stamp}-{batch[0].name}-{path.name}").write_bytes(path.read_bytes())


def _run_fault(fl: FaultLab, fault: Fault, count: int, load: bool, say: Say) -> FaultResult:
    result = FaultResult(fault, load)
    began = time.monotonic()
    for i in range(count):
        trial = Trial(i, leader=fl.leader() or "node1")
        result.trials.append(trial)
        trial.started = time.time()
        try:
            fault.inject(fl, trial)
            fault.recover(fl, trial)
            trial.recovered = max(trial.recovered, time.time())
            trial.new_leader = fl.wait(
                partial(_settled, fl, fault, trial), fault.settle_timeout, "the lab to settle"
            )
            trial.settled = True
        except Exception as e:
            trial.problems.append(f"{type(e).__name__}: {e}")
        trial.ended = time.time()
        trial.config_lost = fl.config_lost()
        say(
            f"{result.name} trial {i + 1}/{count}: {trial.leader} -> {trial.new_leader or '?'}, "
            f"{'settled' if trial.settled else 'NOT settled'} after "
            f"{trial.ended - trial.started:.2f}s"
            + ("; CONFIG LOST" if trial.config_lost else "")
            + "".join(f"; {p}" for p in trial.problems)
        )
        if not trial.settled:
            try:
                fl.repair()
                fl.wait(lambda: fl.settled(time.time() - 1) is not None, 60, "a repaired lab")
                fl.applied = fl.applied if not trial.config_lost else fl.stored_config()
            except Exception as e:
                result.aborted = f"the lab did not recover after trial {i + 1}: {e}"
                say(f"{result.name}: {result.aborted}; its remaining trials are skipped")
                break
    result.seconds = time.monotonic() - began
    return result


def _settled(fl: FaultLab, fault: Fault, trial: Trial) -> str | None:
    leader = fl.settled(trial.recovered)
    if leader is None:
        return None
    if fault.settled_too is not None and not fault.settled_too(fl, trial):
        return None
    return leader


# ---------------------------------------------------------------------------
# the table


COLUMNS = (
    "fault",
    "trials",
    "gap median",
    "gap p99",
    "failed",
    "max holders",
    "dual samples",
    "stale rules",
    "config lost",
    "non-leader",
    "unsettled",
)


def rows(results: Sequence[FaultResult]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for r in results:
        out.append(
            (
                r.name,
                str(len(r.trials)),
                f"{median(r.gaps):.3f} s",
                f"{percentile(r.gaps, 0.99):.3f} s",
                str(r.failed),
                str(r.max_holders),
                str(r.dual_samples),
                "n/a",
                str(r.config_lost),
                str(r.non_leader),
                str(r.unsettled),
            )
        )
    return out


def totals(results: Sequence[FaultResult]) -> dict[str, Any]:
    return {
        "trials": sum(len(r.trials) for r in results),
        "kill_partition_revoke_trials": sum(
            len(r.trials) for r in results if r.fault.klass in HEAVY_CLASSES
        ),
        "failed_requests": sum(r.failed for r in results),
        "max_holders": max((r.max_holders for r in results), default=0),
        "dual_holder_samples": sum(r.dual_samples for r in results),
        "samples": sum(r.samples for r in results),
        "config_lost": sum(r.config_lost for r in results),
        "non_leader_answers": sum(r.non_leader for r in results),
        "unsettled": sum(r.unsettled for r in results),
        "seconds": round(sum(r.seconds for r in results), 1),
    }


def format_table(results: Sequence[FaultResult]) -> str:
    table = [COLUMNS, *rows(results)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        )
        for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    tot = totals(results)
    lines += [
        "",
        f"total: {tot['trials']} trials ({tot['kill_partition_revoke_trials']} kill, partition "
        f"and revoke), {tot['samples']} holder samples, {tot['dual_holder_samples']} with two "
        f"holders (most holders at once: {tot['max_holders']}), {tot['failed_requests']} "
        f"failed requests, config lost {tot['config_lost']} times, {tot['unsettled']} trials "
        f"unsettled, {tot['seconds']:.0f} s of trials",
    ]
    problems = [f"{r.name}: {p}" for r in results for p in r.problems]
    problems += [f"{r.name}: two holders at {d}" for r in results for d in r.dual_details]
    if problems:
        lines += ["", "problems:", *(f"  {p}" for p in problems)]
    return "\n".join(lines)
