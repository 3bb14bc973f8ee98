"""Helpers for the checks that run agents inside user-mode-linux: servers in the
lab's namespaces, client connections, and waits that follow events rather
than guessing how long a start takes.

Timing in the guest (one CPU, every Python start reading its modules over
hostfs) varies a lot with the host's load, so no wait here is a bare sleep:

- :class:`Watch` follows etcd's keys (`etcdctl watch`) and the directors'
  addresses (`ip monitor address`) as they change, each change with the time
  it was seen, without polling (a poll that starts a process is dear in the
  guest, and steals the CPU from the agents it waits for);
- an agent's start is over when its member key says so: "starting" until its
  HA loop runs, then eligible (or why not). START bounds it, with room for a
  machine twice as slow as the slowest start measured (see docs/ipvs.md,
  "Start-up in the guest");
- what follows an event the test saw (a member ready, a lease gone) is bounded
  from that event, by the lease TTL and REACT.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, TypeVar

import pytest
from support import netns, sh

from etcdha.lab.directors import DirectorLab
from etcdha.lab.netns import netns_exec_argv

T = TypeVar("T")

START = 60.0  # seconds from `etcdha agent start` to its member key saying it is ready
REACT = 3.0  # seconds for the agents to act on a change they have seen in etcd
POLL = 0.25  # seconds between looks at what no event reports (ipvsadm's daemons)


class Timeout(AssertionError):
    pass


class Watch:
    """etcd's keys under the cluster's prefix and who holds each of `addresses`,
    as they change: `etcdctl watch` and one `ip monitor address` per director,
    read by threads. Start it before the agents, so that it sees every change."""

    def __init__(self, lab: DirectorLab, addresses: Sequence[str]) -> None:
        self.lab = lab
        self.prefix = f"/etcdha/{lab.cluster}/"
        self.addresses = tuple(addresses)
        self.keys: dict[str, dict[str, Any]] = {}  # key -> its JSON value
        self.held: dict[str, set[str]] = {n: set() for n in lab.seed.nodes}
        self.holdings: list[tuple[float, str, tuple[str, ...]]] = []  # (t, address, holders)
        self.changed = threading.Condition()
        self._procs: list[subprocess.Popen[bytes]] = []
        ctl = ["etcdctl", "--endpoints", lab.endpoints, *lab.tls_args()]
        self._spawn(
            lab.seed.ns("etcd"), [*ctl, "watch", "--prefix", self.prefix, "-w", "json"], self._etcd
        )
        for node in lab.seed.nodes:
            self._spawn(lab.seed.ns(node), ["ip", "-o", "monitor", "address"], self._addr(node))
        for node in lab.seed.nodes:  # what was there before the monitors started
            shown = sh("ip", "netns", "exec", lab.seed.ns(node), "ip", "-o", "-4", "addr", "show")
            for line in shown.splitlines():
                self._address_line(node, line)

    def _spawn(self, ns: str, argv: list[str], read: Callable[[IO[bytes]], None]) -> None:
        env = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        proc = subprocess.Popen(
            netns_exec_argv(ns, argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
        )
        self._procs.append(proc)
        assert proc.stdout is not None
        threading.Thread(target=read, args=(proc.stdout,), daemon=True).start()

    def _etcd(self, out: IO[bytes]) -> None:
        for line in out:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                for event in json.loads(line).get("Events") or []:
                    kv = event["kv"]
                    key = base64.b64decode(kv["key"]).decode()
                    with self.changed:
                        if event.get("type") == 1:  # deleted, or its lease expired
                            self.keys.pop(key, None)
                        else:
                            value = base64.b64decode(kv.get("value", ""))
                            try:
                                self.keys[key] = json.loads(value)
                            except ValueError:
                                self.keys[key] = {"raw": value.decode(errors="replace")}
                        self.changed.notify_all()

    def _addr(self, node: str) -> Callable[[IO[bytes]], None]:
        def read(out: IO[bytes]) -> None:
            for line in out:
                self._address_line(node, line.decode(errors="replace"))

        return read

    def _address_line(self, node: str, line: str) -> None:
        words = line.split()
        if "inet" not in words:
            return
        address = words[words.index("inet") + 1].split("/")[0]
        if address not in self.addresses:
            return
        with self.changed:
            if words[0] == "Deleted":
                self.held[node].discard(address)
            else:
                self.held[node].add(address)
            holders = self.holders(address)
            last = [h for _, a, h in self.holdings if a == address]
            if not last or last[-1] != holders:
                self.holdings.append((time.monotonic(), address, holders))
            self.changed.notify_all()

    def close(self) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait()

    # -- what the watch knows (call with or without the lock: plain reads)

    def holders(self, address: str) -> tuple[str, ...]:
        return tuple(n for n in self.lab.seed.nodes if address in self.held[n])

    def member(self, node: str) -> dict[str, Any] | None:
        return self.keys.get(f"{self.prefix}members/{node}")

    def leaders(self) -> dict[str, str]:
        """group -> the node its leader key names."""
        lead = f"{self.prefix}leader/"
        return {
            k[len(lead) :]: str(v.get("node")) for k, v in self.keys.items() if k.startswith(lead)
        }

    def since(self, address: str, holders: tuple[str, ...]) -> float:
        """When (monotonic) `address` last came to be held by exactly `holders`."""
        return max(t for t, a, h in self.holdings if a == address and h == holders)

    def most_holders(self, address: str) -> int:
        """The most directors seen holding `address` at once."""
        return max((len(h) for _, a, h in self.holdings if a == address), default=0)

    def wait(self, check: Callable[[], T | None], timeout: float, what: str) -> T:
        """Wait until `check()` (run on every change) returns something true; that."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                value = check()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(
                        f"timed out after {timeout:g}s waiting for {what}; leaders "
                        f"{self.leaders()}, holders "
                        f"{ {a: self.holders(a) for a in self.addresses} }"
                    )
                self.changed.wait(left)


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
    """One client connection to a VIP, kept open."""

    def __init__(self, ns: str, vip: str) -> None:
        with netns(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect((vip, 80))
        self.lines = self.sock.makefile("rb")
        self.port = self.sock.getsockname()[1]

    def ask(self) -> str:
        self.sock.sendall(b"hello\n")
        return self.lines.readline().decode().strip()

    def close(self) -> None:
        self.lines.close()
        self.sock.close()


def kernel(lab: DirectorLab, node: str) -> str:
    return sh("ip", "netns", "exec", lab.seed.ns(node), "ipvsadm-save", "-n")


def daemons(lab: DirectorLab, node: str) -> set[tuple[str, str, int]]:
    """The node's running sync daemons as (state, interface, syncid), from ipvsadm."""
    out = sh("ip", "netns", "exec", lab.seed.ns(node), "ipvsadm", "-L", "--daemon")
    found = set()
    for line in out.splitlines():
        words = line.replace("(", " ").replace(")", " ").replace(",", " ").split()
        if len(words) > 1 and words[0] in ("master", "backup"):
            fields = dict(w.split("=", 1) for w in words if "=" in w)
            found.add((words[0], fields.get("mcast", "?"), int(fields.get("syncid", "-1"))))
    return found


def wait_daemons(
    lab: DirectorLab, want: dict[str, set[tuple[str, str, int]]], timeout: float, what: str
) -> None:
    """Wait until each node named in `want` runs exactly those sync daemons."""
    try:
        check = lambda: all(daemons(lab, n) == d for n, d in want.items())  # noqa: E731
        lab.wait_for(check, timeout, what, interval=POLL)
    except AssertionError as e:
        seen = {n: sorted(daemons(lab, n)) for n in want}
        raise AssertionError(f"{e}; running: {seen}") from None


@contextlib.contextmanager
def logs_on_failure(lab: DirectorLab, request: pytest.FixtureRequest) -> Iterator[None]:
    """Around a fixture's yield: print the end of every agent's log if the test
    failed (pytest counts the failure before the fixture's teardown)."""
    failed = request.session.testsfailed
    try:
        yield
    finally:
        if request.session.testsfailed > failed:
            for agent in lab.agents.values():
                print(f"--- agent {agent.node} log ---\n{agent.log()[-8000:]}")


def wait_started(
    watch: Watch, node: str, timeout: float = START, *, eligible: bool = False
) -> dict[str, Any]:
    """Wait until the agent last started on `node` has registered and finished
    starting (its member key no longer says "starting"), and with `eligible`
    until it says it may lead (it then campaigns where it should); its member
    value."""
    agent = watch.lab.agents[node]

    def started() -> dict[str, Any] | None:
        if not agent.process.alive():
            raise AssertionError(f"the agent of {node} exited:\n{agent.log()[-3000:]}")
        data = watch.member(node)
        if not data or data.get("pid") != agent.process.pid or data.get("why") == "starting":
            return None
        return data if data.get("eligible") or not eligible else None

    what = "say it is eligible" if eligible else "finish starting"
    # A dead agent is seen on the next change, or within a second.
    deadline = time.monotonic() + timeout
    while True:
        try:
            return watch.wait(started, min(1.0, deadline - time.monotonic()), what)
        except Timeout:
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {node}'s agent to {what}"
                ) from None


def wait_ready(watch: Watch, node: str, timeout: float = START) -> float:
    """wait_started(eligible=True); the time it took."""
    t = time.monotonic()
    wait_started(watch, node, timeout, eligible=True)
    return time.monotonic() - t
