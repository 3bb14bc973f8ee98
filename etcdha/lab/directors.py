"""Directors in the seed topology: etcd on its control link, agents as real processes.

Used by the failover tests, the failover benchmark and `etcdha lab`. Every
agent runs `etcdha agent start` inside its node's namespace; etcd (one or
three members) runs in the etcd namespace and is reached over each
director's eth2, which a test can cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from etcdha.lab.etcd_process import EtcdProcess, Pki, make_pki, scratch_dir
from etcdha.lab.netns import LabProcess, netns_exec_argv
from etcdha.lab.topology import CONTROL, SeedTopology, build_seed_topology

CLIENT_PORT = 2379
PEER_PORT = 2380


def etcdha_argv(*args: str) -> list[str]:
    """Run the CLI with this interpreter, so a lab works from any virtualenv."""
    return [sys.executable, "-m", "etcdha", *args]


@dataclass
class Agent:
    node: str
    process: LabProcess
    log_path: Path
    run_dir: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class DirectorLab:
    """The seed topology plus etcd and agents. Close it (or use `with`) to remove all."""

    nodes: int = 2
    etcd_members: int = 1
    ipv6: bool = False
    tls: bool = False  # etcd over TLS with client certificates (also the directors' own)
    seed: SeedTopology = field(init=False)
    work: Path = field(init=False)
    etcd: list[EtcdProcess] = field(default_factory=list, init=False)
    agents: dict[str, Agent] = field(default_factory=dict, init=False)
    pki: Pki | None = field(default=None, init=False)
    cluster: str = "default"

    def __post_init__(self) -> None:
        self.work = scratch_dir("etcdha-directors-")
        self.seed = build_seed_topology(nodes=self.nodes, ipv6=self.ipv6)
        try:
            self._start_etcd()
        except BaseException:
            self.close()
            raise

    # -- etcd

    def _etcd_hosts(self) -> list[str]:
        return [str(CONTROL.network_address + 1 + i) for i in range(self.etcd_members)]

    def tls_args(self) -> list[str]:
        """etcd client flags; the lab's server certificate also serves as client (and
        directors' peer) certificate, as it carries both key usages."""
        if self.pki is None:
            return []
        return [
            "--cacert",
            str(self.pki.ca_cert),
            "--cert",
            str(self.pki.server_cert),
            "--key",
            str(self.pki.server_key),
        ]

    def _start_etcd(self) -> None:
        hosts = self._etcd_hosts()
        self.pki = make_pki(self.work / "pki", hosts) if self.tls else None
        for extra in hosts[1:]:
            self.seed.topology.add_address("etcd", "eth0", f"{extra}/{CONTROL.prefixlen}")
        initial = ",".join(f"etcd{i}=http://{h}:{PEER_PORT}" for i, h in enumerate(hosts))
        wrapper = ["ip", "netns", "exec", self.seed.ns("etcd")]
        for i, host in enumerate(hosts):
            member = EtcdProcess(
                f"etcd{i}",
                host=host,
                client_port=CLIENT_PORT,
                peer_port=PEER_PORT,
                base_dir=self.work / f"etcd{i}",
                initial_cluster=initial,
                cluster_token=f"lab-{self.seed.run_id}",
                wrapper=wrapper,
                tls=self.pki,
            )
            member.start(wait=False)
            self.etcd.append(member)
        self.wait_etcd()

    @property
    def endpoints(self) -> str:
        scheme = "https" if self.tls else "http"
        return ",".join(f"{scheme}://{h}:{CLIENT_PORT}" for h in self._etcd_hosts())

    def etcdctl(self, *args: str, check: bool = True, endpoints: str | None = None) -> str:
        argv = [
            "etcdctl",
            "--endpoints",
            endpoints or self.endpoints,
            "--dial-timeout",
            "2s",
            *self.tls_args(),
            *args,
        ]
        result = subprocess.run(
            netns_exec_argv(self.seed.ns("etcd"), argv),
            capture_output=True,
            text=True,
            timeout=30,
            env={"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def wait_etcd(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        running = [m.client_url for m in self.etcd if m.running]
        while True:
            try:
                self.etcdctl("endpoint", "health", endpoints=",".join(running))
                return
            except RuntimeError as e:
                if time.monotonic() > deadline:
                    logs = "\n".join(m.log_tail() for m in self.etcd)
                    raise RuntimeError(f"etcd did not become healthy: {e}\n{logs}") from e
            time.sleep(0.1)

    def _etcd_status(self) -> list[dict[str, Any]]:
        running = ",".join(m.client_url for m in self.etcd if m.running)
        out: list[dict[str, Any]] = json.loads(
            self.etcdctl("endpoint", "status", "-w", "json", endpoints=running)
        )
        return out

    def etcd_leader_index(self) -> int:
        status = self._etcd_status()
        leader = int(status[0]["Status"]["leader"])
        for entry in status:
            if int(entry["Status"]["header"]["member_id"]) == leader:
                host = entry["Endpoint"].split("//")[1].split(":")[0]
                return [m.host for m in self.etcd].index(host)
        raise RuntimeError("no etcd member reports itself as leader")

    def move_etcd_leader(self) -> None:
        """`etcdctl move-leader` to the next member (forces an etcd leader change)."""
        status = self._etcd_status()
        leader = int(status[0]["Status"]["leader"])
        ids = [int(e["Status"]["header"]["member_id"]) for e in status]
        endpoint = status[ids.index(leader)]["Endpoint"]
        target = ids[(ids.index(leader) + 1) % len(ids)]
        self.etcdctl("move-leader", format(target, "x"), endpoints=endpoint)

    # -- the CLI and agents

    def etcdha(
        self, *args: str, node: str = "node1", check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `etcdha ARGS --endpoints ...` inside a director's namespace."""
        # A generous first-contact budget: the one-CPU user-mode-linux guest, or a
        # loaded host, may keep etcd from answering for a few seconds.
        argv = etcdha_argv(
            *args, "--endpoints", self.endpoints, "--dial-timeout", "10", *self.tls_args()
        )
        result = subprocess.run(
            netns_exec_argv(self.seed.ns(node), argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"etcdha {' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}"
            )
        return result

    def apply(self, spec_yaml: str) -> None:
        path = self.work / "cluster.yaml"
        path.write_text(spec_yaml)
        self.etcdha("config", "apply", str(path))

    def start_agent(
        self,
        node: str,
        *extra: str,
        env: dict[str, str] | None = None,
        run_dir: Path | None = None,
        log_name: str | None = None,
    ) -> Agent:
        """Start `etcdha agent start --node NODE` in NODE's namespace; `env` adds
        variables to this process's environment for it; `run_dir` and `log_name`
        (a file in the lab's work dir) default to the node's own."""
        run_dir = run_dir or self.work / f"run-{node}"
        log_path = self.work / (log_name or f"agent-{node}.log")
        log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - the process writes it
        try:
            process = self.seed.topology.start(
                node,
                *etcdha_argv(
                    "agent",
                    "start",
                    "--node",
                    node,
                    "--endpoints",
                    self.endpoints,
                    "--run-dir",
                    str(run_dir),
                    *self.tls_args(),
                    *extra,
                ),
                stdout=log,
                stderr=log,
                env={**os.environ, **env} if env else None,
            )
        finally:
            log.close()
        agent = Agent(node, process, log_path, run_dir)
        self.agents[node] = agent
        return agent

    def signal_agent(self, node: str, sig: int) -> None:
        self.agents[node].process.signal(sig)

    def kill_agent(self, node: str) -> None:
        self.signal_agent(node, signal.SIGKILL)
        popen = self.agents[node].process.popen
        if popen is not None:
            popen.wait(5.0)

    # -- observing

    def addresses(self, node: str) -> set[str]:
        out = subprocess.run(
            netns_exec_argv(self.seed.ns(node), ["ip", "-j", "addr", "show"]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])}

    def holders(self, ip: str) -> list[str]:
        return [n for n in self.seed.nodes if ip in self.addresses(n)]

    def leader(self, group: str) -> str | None:
        out = self.etcdctl(
            "get", "--print-value-only", f"/etcdha/{self.cluster}/leader/{group}"
        ).strip()
        return json.loads(out)["node"] if out else None

    def mac(self, node: str, ifname: str = "eth0") -> str:
        out = subprocess.run(
            netns_exec_argv(self.seed.ns(node), ["ip", "-j", "link", "show", ifname]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return str(json.loads(out)[0]["address"])

    def neighbour_mac(self, ns_role: str, ip: str) -> str | None:
        out = subprocess.run(
            netns_exec_argv(self.seed.ns(ns_role), ["ip", "-j", "neigh", "show", ip]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        entries = json.loads(out or "[]")
        return str(entries[0]["lladdr"]) if entries and "lladdr" in entries[0] else None

    @staticmethod
    def wait_for(
        check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(interval)

    # -- teardown

    def close(self) -> None:
        for agent in self.agents.values():
            agent.process.stop(timeout=5.0)  # SIGCONT first, so a stopped agent exits too
        for member in self.etcd:
            member.close()
        if hasattr(self, "seed"):
            # Also ends the fence guards, which outlive their agents by design.
            self.seed.close()
        if not os.environ.get("ETCDHA_KEEP_LAB"):
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> DirectorLab:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AddressSampler:
    """Samples which directors hold an address, every `interval`, in a thread.

    One netlink socket per namespace, about 0.2 ms a read, so a 10 ms sampling
    period holds on a loaded 2-core machine; the thread takes the lowest
    real-time priority (as root), or CPU hogs delay its samples by 0.2 s and
    more. Records (monotonic time, holders) each time the set of holders changes.
    """

    def __init__(self, lab: DirectorLab, ip: str, interval: float = 0.01) -> None:
        self.lab = lab
        self.ip = ip
        self.interval = interval
        self.changes: list[tuple[float, tuple[str, ...]]] = []
        self.wall: list[float] = []  # wall-clock time of each change, to match logs
        self.samples = 0
        self.max_gap = 0.0  # longest time between two samples
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from pyroute2 import NetNS

        sockets = {n: NetNS(self.lab.seed.ns(n)) for n in self.lab.seed.nodes}
        # Linux sets the policy per thread (this one sleeps most of each period);
        # nothing it starts inherits it.
        with contextlib.suppress(OSError):
            policy = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
            os.sched_setscheduler(threading.get_native_id(), policy, os.sched_param(1))
        last: tuple[str, ...] | None = None
        previous = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                holders = tuple(
                    n
                    for n, sock in sockets.items()
                    if any(a.get_attr("IFA_ADDRESS") == self.ip for a in sock.get_addr())
                )
                self.samples += 1
                self.max_gap = max(self.max_gap, now - previous)
                previous = now
                if holders != last:
                    self.changes.append((now, holders))
                    self.wall.append(time.time())
                    last = holders
                self._stop.wait(self.interval)
        finally:
            for sock in sockets.values():
                sock.close()

    def start(self) -> AddressSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def __enter__(self) -> AddressSampler:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def overlaps(self) -> list[tuple[str, tuple[str, ...]]]:
        """Every sample that saw more than one holder (wall-clock time, holders)."""
        return [
            (time.strftime("%H:%M:%S", time.localtime(w)) + f".{int(w * 1000) % 1000:03d}", h)
            for (_, h), w in zip(self.changes, self.wall, strict=True)
            if len(h) > 1
        ]

    def first_time(self, node: str, after: float = 0.0) -> float | None:
        return next((t for t, h in self.changes if t >= after and node in h), None)

    def last_time(self, node: str, before: float | None = None) -> float | None:
        """When `node` was last seen holding the address (None if never)."""
        seen = None
        for i, (t, h) in enumerate(self.changes):
            if node in h and (before is None or t < before):
                nxt = self.changes[i + 1][0] if i + 1 < len(self.changes) else time.monotonic()
                seen = nxt
        return seen
