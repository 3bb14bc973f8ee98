"""Helpers for the checks that run agents inside user-mode-linux: servers in the
lab's namespaces, client connections, and waits that follow what the agents
publish in etcd rather than guessing how long a start takes.

Timing in the guest (one CPU, every Python start reading its modules over
hostfs) varies a lot with the host's load, so no wait here is a bare sleep:

- an agent's start is over when its member key says it is eligible (an agent
  publishes that only once it is ready to campaign); START bounds it, with
  room for a machine twice as slow as the slowest start measured (see
  docs/ipvs.md, "Start-up in the guest");
- what follows an event the test can see (a member ready, a lease gone) is
  bounded from that event, by the lease TTL and REACT.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from support import netns, sh

from etcdha.lab.directors import DirectorLab

START = 60.0  # seconds from `etcdha agent start` to its member key saying eligible
REACT = 3.0  # seconds for the agents to act on a change they have seen in etcd


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
        lab.wait_for(lambda: all(daemons(lab, n) == d for n, d in want.items()), timeout, what)
    except AssertionError as e:
        seen = {n: sorted(daemons(lab, n)) for n in want}
        raise AssertionError(f"{e}; running: {seen}") from None


@contextlib.contextmanager
def logs_on_failure(lab: DirectorLab) -> Iterator[None]:
    """Print the end of every agent's log when the block fails."""
    try:
        yield
    except BaseException:
        for agent in lab.agents.values():
            print(f"--- agent {agent.node} log ---\n{agent.log()[-8000:]}")
        raise


def member(lab: DirectorLab, node: str) -> dict[str, Any] | None:
    out = lab.etcdctl("get", "--print-value-only", f"/etcdha/{lab.cluster}/members/{node}")
    if not out.strip():
        return None
    data: dict[str, Any] = json.loads(out)
    return data


def leaders(lab: DirectorLab) -> dict[str, str]:
    """group -> the node its leader key names."""
    out = lab.etcdctl("get", "--prefix", f"/etcdha/{lab.cluster}/leader/")
    lines = out.splitlines()
    return {
        key.rsplit("/", 1)[1]: json.loads(value)["node"]
        for key, value in zip(lines[::2], lines[1::2], strict=True)
    }


def wait_started(
    lab: DirectorLab, node: str, timeout: float = START, *, eligible: bool = False
) -> dict[str, Any]:
    """Wait until the agent last started on `node` has registered and finished
    starting (its member key no longer says "starting"), and with `eligible`
    until it says it may lead (it then campaigns where it should); its member
    value."""
    agent = lab.agents[node]

    def started() -> dict[str, Any] | None:
        if not agent.process.alive():
            raise AssertionError(f"the agent of {node} exited:\n{agent.log()[-3000:]}")
        data = member(lab, node)
        if not data or data.get("pid") != agent.process.pid or data.get("why") == "starting":
            return None
        return data if data.get("eligible") or not eligible else None

    what = "register as eligible" if eligible else "finish starting"
    found: dict[str, Any] = lab.wait_for(started, timeout, f"{node}'s agent to {what}", 0.2)
    return found


def wait_ready(lab: DirectorLab, node: str, timeout: float = START) -> float:
    """wait_started(eligible=True); the time it took."""
    t = time.monotonic()
    wait_started(lab, node, timeout, eligible=True)
    return time.monotonic() - t
