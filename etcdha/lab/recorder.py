"""What the lab records while the scenario runs, all on the wall clock of one machine.

* :class:`HoldSampler`: which director holds the VIP and the DIP, as each
  director's kernel reports address changes (`ip monitor address`).
* :class:`LeaderWatch`: the group's leader key in etcd, through `etcdctl
  watch`; a leadership starts at the ``since`` its leader wrote, and ends when
  the deletion (or lease expiry) reaches the watch.
* :class:`MemberWatch`: the directors' member keys (an agent's is "starting"
  until it can campaign, then says whether it may lead), through `etcdctl
  watch`, so the lab waits for an agent's start as an event.
* :class:`ProberFeed`: the client prober's outcomes (see :mod:`etcdha.lab.prober`),
  read from its stdout; :func:`attribute` adds which director took each one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from etcdha.lab.netns import LabProcess, Topology, netns_exec_argv


@dataclass(frozen=True)
class Holding:
    t: float
    vip: tuple[str, ...]
    dip: tuple[str, ...]


class HoldSampler:
    """Who holds ``vip`` and ``dip`` among the directors, from `ip monitor address`
    in each director's namespace: every change is recorded when the kernel
    reports it, at no polling cost."""

    def __init__(self, topology: Topology, nodes: Sequence[str], vip: str, dip: str) -> None:
        self.topology = topology
        self.nodes = tuple(nodes)
        self.vip = vip
        self.dip = dip
        self.changes: list[Holding] = []
        self._held: dict[str, set[str]] = {n: set() for n in self.nodes}
        self._procs: list[LabProcess] = []
        self._tasks: list[asyncio.Task[None]] = []

    def _note(self, t: float) -> None:
        state = (
            tuple(n for n in self.nodes if self.vip in self._held[n]),
            tuple(n for n in self.nodes if self.dip in self._held[n]),
        )
        if not self.changes or (self.changes[-1].vip, self.changes[-1].dip) != state:
            self.changes.append(Holding(t, *state))

    async def _follow(self, node: str, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            t = time.time()
            words = line.decode(errors="replace").split()
            if "inet" not in words:
                continue
            address = words[words.index("inet") + 1].split("/")[0]
            if address not in (self.vip, self.dip):
                continue
            if words[0] == "Deleted":
                self._held[node].discard(address)
            else:
                self._held[node].add(address)
            self._note(t)

    async def start(self) -> None:
        for node in self.nodes:
            proc = await self.topology.astart(
                node, "ip", "-o", "monitor", "address", stdout=asyncio.subprocess.PIPE
            )
            assert proc.aproc is not None and proc.aproc.stdout is not None
            self._procs.append(proc)
            self._tasks.append(asyncio.create_task(self._follow(node, proc.aproc.stdout)))
        for node in self.nodes:  # what was there before the monitors started
            shown = await self.topology.aexec(node, "ip", "-o", "-4", "addr", "show")
            for line in shown.stdout.splitlines():
                words = line.split()
                if "inet" in words:
                    self._held[node].add(words[words.index("inet") + 1].split("/")[0])
        self._note(time.time())

    async def stop(self) -> None:
        for proc in self._procs:
            await proc.astop(timeout=1.0)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def at(self, t: float) -> Holding | None:
        """The holders at ``t``."""
        found = None
        for h in self.changes:
            if h.t > t:
                break
            found = h
        return found


def _parse_since(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class Leadership:
    t: float
    leader: str | None
    seen: float  # when the watch delivered it


@dataclass
class LeaderWatch:
    """Leadership changes under the prefix ``key`` (one group), as `etcdctl watch` in
    namespace ``ns`` reports them."""

    ns: str
    endpoints: str
    key: str
    tls_args: list[str] = field(default_factory=list)
    changes: list[Leadership] = field(default_factory=list)
    _proc: asyncio.subprocess.Process | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        argv = ["etcdctl", "--endpoints", self.endpoints, *self.tls_args]
        argv += ["watch", "--prefix", self.key, "-w", "json"]
        self._proc = await asyncio.create_subprocess_exec(
            *netns_exec_argv(self.ns, argv),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={"ETCDCTL_API": "3", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            start_new_session=True,
        )
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            seen = time.time()
            with contextlib.suppress(ValueError, KeyError, TypeError):
                for event in json.loads(line).get("Events") or []:
                    self._apply(event, seen)

    def _apply(self, event: dict[str, object], seen: float) -> None:
        kv = event["kv"]
        assert isinstance(kv, dict)
        if event.get("type") == 1:  # DELETE, or the lease expired
            self.changes.append(Leadership(seen, None, seen))
            return
        value = json.loads(base64.b64decode(kv.get("value", "")) or b"{}")
        node = value.get("node")
        if self.changes and self.changes[-1].leader == node:
            return  # the same term rewritten
        since = min(_parse_since(value.get("since", "")) or seen, seen)
        if self.changes and self.changes[-1].leader is None and self.changes[-1].t > since:
            # The old key was gone before the new leader wrote its own: the deletion
            # reached the watch late.
            self.changes[-1] = replace(self.changes[-1], t=since)
        self.changes.append(Leadership(since, node, seen))

    def at(self, t: float) -> str | None:
        found = None
        for c in self.changes:
            if c.t > t:
                break
            found = c.leader
        return found

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass(frozen=True)
class MemberState:
    t: float  # when the watch delivered it
    node: str
    pid: int | None  # None: the key is gone (lease revoked or expired)
    eligible: bool = False
    why: str | None = None

    @property
    def ready(self) -> bool:
        """The agent runs its HA loop (its start-up is over), eligible or not."""
        return self.pid is not None and self.why != "starting"

    def describe(self) -> str:
        if self.pid is None:
            return "gone (its lease ended)"
        if self.why == "starting":
            return f"registered (pid {self.pid}), starting"
        return "ready, eligible" if self.eligible else f"ready, not eligible: {self.why}"


@dataclass
class MemberWatch:
    """The member keys under ``prefix`` (members/), as `etcdctl watch` in namespace
    ``ns`` reports them; ``changed`` is set on every change."""

    ns: str
    endpoints: str
    prefix: str
    tls_args: list[str] = field(default_factory=list)
    changes: list[MemberState] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _proc: asyncio.subprocess.Process | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        argv = ["etcdctl", "--endpoints", self.endpoints, *self.tls_args]
        argv += ["watch", "--prefix", self.prefix, "-w", "json"]
        self._proc = await asyncio.create_subprocess_exec(
            *netns_exec_argv(self.ns, argv),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={"ETCDCTL_API": "3", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            start_new_session=True,
        )
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            seen = time.time()
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                for event in json.loads(line).get("Events") or []:
                    kv = event["kv"]
                    node = base64.b64decode(kv["key"]).decode().rsplit("/", 1)[-1]
                    if event.get("type") == 1:
                        state = MemberState(seen, node, None)
                    else:
                        value = json.loads(base64.b64decode(kv.get("value", "")))
                        state = MemberState(
                            seen,
                            node,
                            int(value["pid"]),
                            value.get("eligible") is True,
                            value.get("why"),
                        )
                    before = self.now(node)
                    if before is None or (before.pid, before.eligible, before.why) != (
                        state.pid,
                        state.eligible,
                        state.why,
                    ):
                        self.changes.append(state)
                        self.changed.set()

    def now(self, node: str) -> MemberState | None:
        return next((c for c in reversed(self.changes) if c.node == node), None)

    async def wait_ready(self, node: str, pid: int, timeout: float) -> MemberState | None:  # noqa: ASYNC109
        """The state of `node`'s member key once the agent `pid` says it is ready
        and eligible; None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.now(node)
            if state is not None and state.pid == pid and state.ready and state.eligible:
                return state
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 1.0)):
                    await self.changed.wait()

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass(frozen=True)
class Request:
    sent: float
    done: float
    outcome: str
    director: str | None = None  # the director that took it (see attribute())
    taken: float | None = None  # when it did
    detail: str = ""
    port: int = 0  # the client's
    seq: int = -1  # the prober's request number, in the order sent

    @property
    def served(self) -> bool:
        return self.outcome in ("rs1", "rs2", "fallback")


@dataclass
class ProberFeed:
    """Reads the prober's JSON lines."""

    stream: asyncio.StreamReader
    requests: list[Request] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while line := await self.stream.readline():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                r = json.loads(line)
                self.requests.append(
                    Request(
                        float(r["sent"]),
                        float(r["done"]),
                        str(r["outcome"]),
                        detail=str(r.get("detail", "")),
                        port=int(r.get("port", 0)),
                        seq=int(r.get("seq", -1)),
                    )
                )

    def all_done_before(self, t: float) -> bool:
        """Whether every request sent before `t` has an outcome: seen once some
        request sent at or after `t` has one, and every request sent before it too."""
        after = [r.seq for r in self.requests if r.sent >= t]
        if not after:
            return False
        first = min(after)
        return len({r.seq for r in self.requests if 0 <= r.seq < first}) == first

    async def stop(self) -> None:
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 3.0)


def attribute(
    requests: Sequence[Request], syns: Sequence[tuple[int, str, float]], macs: dict[str, str]
) -> list[Request]:
    """Each request with the director that took it: the one whose private MAC sent
    its SYN to a real server (`syns`: client port, MAC, time, from
    :class:`~etcdha.lab.capture.SynCapture`), or the one named by the fallback page."""
    by_port: dict[int, list[tuple[float, str]]] = {}
    for port, mac, t in syns:
        by_port.setdefault(port, []).append((t, mac))
    out = []
    for r in requests:
        if r.outcome == "fallback":
            out.append(replace(r, director=r.detail or None, taken=r.done))
            continue
        seen = [(t, mac) for t, mac in by_port.get(r.port, []) if r.sent <= t <= r.done]
        if seen:
            t, mac = seen[0]
            out.append(replace(r, director=macs.get(mac, mac), taken=t))
        else:
            out.append(r)
    return out
