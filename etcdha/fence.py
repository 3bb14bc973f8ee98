"""The fence guard: removes a group's addresses when its lease deadline passes.

The agent drops its addresses itself before its lease could expire in etcd.
That promise breaks if the agent cannot act: killed (kill -9, OOM) or frozen
(SIGSTOP, a stuck event loop), the kernel keeps the addresses. The guard is a
small separate process that the agent feeds with each new deadline; when a
deadline passes without a newer one, the guard removes that group's addresses
itself. It is started detached (its own session, its own process), so killing
or stopping the agent does not touch it, and it runs in the agent's network
namespace, which it inherits. Only a freeze of the whole machine is left
uncovered.

Running it::

    python -m etcdha.fence --socket /run/etcdha/fence.sock [--idle-exit 60]
    python -m etcdha.fence --socket /run/etcdha/fence.sock --status

The agent normally does not start it by hand: :class:`FenceClient` connects to
the socket and, if nothing answers there, starts a guard (:func:`spawn_guard`)
and connects again. One guard serves one socket path: a lock file next to the
socket (``<socket>.lock``) keeps a second guard from starting.

Protocol
--------

A unix stream socket carrying JSON lines: the client sends one JSON object per
line and reads one JSON object per line back, in order. Every request may
carry an ``"id"``, echoed in its reply. Replies have ``"ok": true`` or
``"ok": false`` with an ``"error"`` sentence; a bad request does not close the
connection.

``{"op": "hello", "agent": "node1", "pid": 1234}``
    Optional; names the client in the guard's log. Reply: ``pid`` (the
    guard's), ``version`` (protocol version, 2).

``{"op": "arm", "group": "web", "deadline": 81234.56, "addresses": [["eth0", "192.0.2.200", 24]]}``
    Arm or re-arm a group. ``deadline`` is a CLOCK_BOOTTIME value
    (:func:`etcdha.clock.now`; one clock for the whole system, so it means the
    same instant in both processes, and it keeps counting while the machine is
    suspended, as etcd's clock does). Version 1 guards took CLOCK_MONOTONIC
    values; the client converts for them. ``addresses`` are ``[ifname, ip, prefixlen]``
    triples and replace the group's previous list. Reply: ``remaining``
    (seconds) and ``was_expired``: true if the group's previous deadline ran
    out and the guard removed its addresses since the last arm (the agent
    then knows it no longer holds them). A deadline already past removes the
    addresses at once; the reply then has ``"expired": true``.

``{"op": "disarm", "group": "web"}``
    Forget a group without touching its addresses (the agent has released
    them itself). Disarming an unknown group is not an error.

``{"op": "status"}``
    Reply: ``pid``, ``version``, ``now`` (the guard's CLOCK_BOOTTIME),
    ``clients`` (connected now), ``groups`` (name -> ``deadline``,
    ``remaining``, ``addresses``), ``fired`` (the last removals: group,
    deadline, ``late_ms`` = how long after the deadline the addresses were
    gone, and per address whether it was ``removed``, ``absent`` or
    ``failed``).

Behaviour
---------

- A group whose deadline passes is disarmed and its addresses removed; the
  guard logs one sentence saying which, and why (no agent connected, or the
  connected agent did not renew). Removals that fail (not "already absent")
  are retried every second until they succeed or the group is re-armed.
- A group whose deadline passed while the agent that armed it stays
  connected (frozen: SIGSTOP, a stuck loop) stays fenced: whatever address of
  it shows up again (an add the agent had in flight when it froze) is removed
  at the next tick, until the agent re-arms or disarms the group or
  disconnects.
- A client that disconnects (crash, kill, planned restart) leaves its groups
  armed: a new agent that connects and re-arms before the deadline keeps the
  addresses without a gap.
- The guard only ever removes addresses, and only those it was told about.
- It exits by itself after ``--idle-exit`` seconds with no armed group and no
  connected client, and on SIGTERM/SIGINT (logging any groups left armed,
  whose addresses it then no longer guards).
- It asks the kernel's OOM killer to spare it (oom_score_adj -1000, best
  effort).
- The deadline is checked on a short timer (``--tick``, 50 ms by default)
  and at the deadline itself, so neither a long sleep nor a moved deadline
  delays a removal.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

# Not `network` here: it brings pyroute2, which only the guard needs (imported
# when it starts), not the agent's client nor a caller starting a guard.
from etcdha import clock

log = logging.getLogger("etcdha.fence")

PROTOCOL_VERSION = 2
DEFAULT_IDLE_EXIT = 60.0
DEFAULT_TICK = 0.05
_RETRY_INTERVAL = 1.0
_MAX_LINE = 1 << 20
_FIRED_HISTORY = 32

Address = tuple[str, str, int]


class AddressLike(Protocol):
    """Anything with ``ifname``, ``ip`` and ``prefixlen`` (e.g. the agent's held addresses)."""

    @property
    def ifname(self) -> str: ...
    @property
    def ip(self) -> str: ...
    @property
    def prefixlen(self) -> int: ...


def _as_address(item: Address | AddressLike) -> Address:
    if isinstance(item, tuple):
        ifname, ip, prefixlen = item
        return (str(ifname), str(ip), int(prefixlen))
    return (item.ifname, item.ip, int(item.prefixlen))


class FenceError(RuntimeError):
    """The guard could not be reached or refused a request."""


def _describe_addresses(addresses: Sequence[Address]) -> str:
    return ", ".join(f"{ip}/{plen} on {ifname}" for ifname, ip, plen in addresses) or "none"


def _parse_addresses(raw: Any) -> list[Address]:
    if not isinstance(raw, list):
        raise ValueError("addresses must be a list of [ifname, ip, prefixlen]")
    result: list[Address] = []
    for item in raw:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 3
            or not isinstance(item[0], str)
            or not isinstance(item[1], str)
            or isinstance(item[2], bool)
            or not isinstance(item[2], int)
        ):
            raise ValueError(f"address {item!r} is not [ifname, ip, prefixlen]")
        result.append((item[0], item[1], item[2]))
    return result


# ---------------------------------------------------------------------------
# the guard


@dataclass
class _Group:
    name: str
    deadline: float
    addresses: list[Address]
    conn: int = 0  # the connection that armed it


@dataclass
class _Enforced:
    """An expired group whose agent is still connected (frozen, say): whatever it
    might add back after resuming, before it learns of the deadline, goes again."""

    group: str
    addresses: list[Address]
    conn: int


@dataclass
class _Pending:
    """Addresses of an expired group still to be removed (a removal failed)."""

    group: str
    addresses: list[Address]
    next_try: float


@dataclass
class FenceGuard:
    """The guard's state and loop; :func:`main` runs one."""

    socket_path: str
    idle_exit: float = DEFAULT_IDLE_EXIT
    tick: float = DEFAULT_TICK
    netns: str | None = None  # for tests: act on a named namespace instead of our own
    groups: dict[str, _Group] = field(default_factory=dict)
    fired: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=_FIRED_HISTORY)
    )
    _pending: list[_Pending] = field(default_factory=list)
    _expired: set[str] = field(default_factory=set)  # expired and not re-armed or disarmed
    _enforced: dict[str, _Enforced] = field(default_factory=dict)
    _open: set[int] = field(default_factory=set)  # connections now open
    _next_conn: int = 0
    _clients: int = 0
    _idle_since: float = field(default_factory=clock.now)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    # -- the timer ---------------------------------------------------------

    async def run(self, ready: asyncio.Future[None] | None = None) -> None:
        """Serve the socket until idle for ``idle_exit`` seconds or :meth:`stop`."""
        from etcdha import network

        # one netlink round trip now, so that the first removal does not pay for warm-up
        await network.interfaces_present([], netns=self.netns)
        server = await asyncio.start_unix_server(
            self._serve, path=self.socket_path, limit=_MAX_LINE
        )
        os.chmod(self.socket_path, 0o600)
        self._idle_since = clock.now()  # idle from now, not from before the imports
        log.info("fence guard (pid %d) listening on %s", os.getpid(), self.socket_path)
        if ready is not None and not ready.done():
            ready.set_result(None)
        try:
            async with server:
                await self._timer()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            if self.groups:
                log.warning(
                    "fence guard stopping with groups still armed (%s): their addresses are "
                    "no longer guarded",
                    ", ".join(sorted(self.groups)),
                )

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def _timer(self) -> None:
        while not self._stop.is_set():
            now = clock.now()
            for group in [g for g in self.groups.values() if g.deadline <= now]:
                if self.groups.get(group.name) is group:  # not re-armed meanwhile
                    await self._expire(group)
            if self._pending and min(p.next_try for p in self._pending) <= now:
                await self._retry_pending()
            if self._enforced:
                await self._enforce()
            if self.groups or self._pending or self._clients:
                self._idle_since = now
            elif now - self._idle_since >= self.idle_exit:
                log.info(
                    "fence guard exiting: no group armed and no agent connected for %gs",
                    self.idle_exit,
                )
                return
            delay = self.tick
            if self.groups:
                delay = min(delay, min(g.deadline for g in self.groups.values()) - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(delay, 0.0)):
                    await self._wake.wait()

    async def _remove(self, addresses: Sequence[Address]) -> dict[str, list[Address]]:
        from etcdha import network  # loaded by run() already

        outcome: dict[str, list[Address]] = {"removed": [], "absent": [], "failed": []}
        try:
            # An address is the same address whatever its prefix length there.
            results = await network.remove_addresses(
                [(ifname, ip, None) for ifname, ip, _ in addresses], netns=self.netns
            )
        except Exception as exc:  # netlink itself failed: retry them all
            log.error("fence guard could not reach the kernel's address table: %s", exc)
            outcome["failed"] = list(addresses)
            return outcome
        for address, (_, result) in zip(addresses, results, strict=True):
            ifname, ip, prefixlen = address
            if result.startswith("failed"):
                log.error(
                    "fence guard could not remove %s/%s from %s: %s",
                    ip,
                    prefixlen,
                    ifname,
                    result.removeprefix("failed: "),
                )
            outcome[result.split(":")[0]].append(address)
        return outcome

    async def _enforce(self) -> None:
        """Remove again what an expired group's still-connected agent put back."""
        for entry in list(self._enforced.values()):
            if entry.conn not in self._open:
                del self._enforced[entry.group]
                continue
            outcome = await self._remove(entry.addresses)
            if outcome["removed"]:
                log.warning(
                    "fence: %s of group %r came back after its deadline (its agent, frozen "
                    "until now?); removed again",
                    _describe_addresses(outcome["removed"]),
                    entry.group,
                )

    async def _expire(self, group: _Group) -> None:
        if self.groups.get(group.name) is group:
            del self.groups[group.name]
        self._expired.add(group.name)
        if group.conn in self._open:
            self._enforced[group.name] = _Enforced(group.name, group.addresses, group.conn)
        outcome = await self._remove(group.addresses)
        late_ms = (clock.now() - group.deadline) * 1000.0
        why = (
            "the connected agent did not renew it (frozen, or cut off from etcd)"
            if self._clients
            else "no agent is connected to renew it (it exited or was killed)"
        )
        if outcome["removed"]:
            what = f"removed {_describe_addresses(outcome['removed'])}"
        else:
            what = "found nothing to remove"
        extra = ""
        if outcome["absent"]:
            extra += f"; already absent: {_describe_addresses(outcome['absent'])}"
        if outcome["failed"]:
            extra += f"; failed, retrying every {_RETRY_INTERVAL:g}s: "
            extra += _describe_addresses(outcome["failed"])
            self._pending.append(
                _Pending(group.name, outcome["failed"], clock.now() + _RETRY_INTERVAL)
            )
        log.warning(
            "fence: %s for group %r because its lease deadline passed %.1f ms ago and %s%s",
            what,
            group.name,
            late_ms,
            why,
            extra,
        )
        self.fired.append(
            {
                "group": group.name,
                "deadline": group.deadline,
                "late_ms": round(late_ms, 3),
                **{k: [list(a) for a in v] for k, v in outcome.items()},
            }
        )

    async def _retry_pending(self) -> None:
        now = clock.now()
        still: list[_Pending] = []
        for pending in self._pending:
            if pending.group in self.groups:
                continue  # re-armed since: the agent holds these addresses again
            if pending.next_try > now:
                still.append(pending)
                continue
            outcome = await self._remove(pending.addresses)
            done = outcome["removed"] + outcome["absent"]
            if done:
                log.warning(
                    "fence: removed %s of group %r on retry",
                    _describe_addresses(done),
                    pending.group,
                )
            if outcome["failed"]:
                still.append(_Pending(pending.group, outcome["failed"], now + _RETRY_INTERVAL))
        self._pending = still

    # -- the protocol ------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        self._next_conn += 1
        conn = self._next_conn
        self._open.add(conn)
        name = "an agent"
        spoke = False  # a bare connect (is a guard there?) is not worth a log line
        try:
            while True:
                request: Any = None
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, {"ok": False, "error": "request line too long"})
                    return
                except ConnectionError:
                    return
                if not line:
                    return
                spoke = True
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    reply = await self._handle(request, conn)
                    if request.get("op") == "hello":
                        agent = request.get("agent")
                        name = f"agent {agent}" if agent else "an agent"
                        name += f" (pid {request.get('pid')})"
                        log.info("fence guard: %s connected", name)
                except KeyError as exc:
                    reply = {"ok": False, "error": f"missing field {exc}"}
                except (ValueError, TypeError) as exc:
                    reply = {"ok": False, "error": str(exc)}
                if isinstance(request, dict) and "id" in request:
                    reply["id"] = request["id"]
                if not await self._reply(writer, reply):
                    return
        finally:
            self._clients -= 1
            self._open.discard(conn)
            self._idle_since = clock.now()
            if self.groups and spoke:
                log.info(
                    "fence guard: %s disconnected; keeping %s armed",
                    name,
                    ", ".join(
                        f"{g.name!r} ({g.deadline - clock.now():.2f}s left)"
                        for g in self.groups.values()
                    ),
                )
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._wake.set()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> bool:
        try:
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            return False
        return True

    async def _handle(self, request: dict[str, Any], conn: int = 0) -> dict[str, Any]:
        op = request.get("op")
        if op == "hello":
            return {"ok": True, "pid": os.getpid(), "version": PROTOCOL_VERSION}
        if op == "arm":
            group = request["group"]
            deadline = request["deadline"]
            if not isinstance(group, str) or not group:
                raise ValueError("group must be a non-empty string")
            if isinstance(deadline, bool) or not isinstance(deadline, int | float):
                raise ValueError("deadline must be a number (a CLOCK_BOOTTIME value)")
            addresses = _parse_addresses(request.get("addresses", []))
            entry = _Group(group, float(deadline), addresses, conn)
            was_expired = group in self._expired
            self._expired.discard(group)
            self._enforced.pop(group, None)
            self.groups[group] = entry
            self._pending = [p for p in self._pending if p.group != group]
            remaining = entry.deadline - clock.now()
            if remaining <= 0:
                await self._expire(entry)
                return {
                    "ok": True,
                    "expired": True,
                    "was_expired": was_expired,
                    "remaining": remaining,
                }
            self._wake.set()
            return {"ok": True, "was_expired": was_expired, "remaining": remaining}
        if op == "disarm":
            group = request["group"]
            if self.groups.pop(group, None) is not None:
                log.info("fence guard: group %r disarmed by the agent", group)
            self._expired.discard(group)
            self._enforced.pop(group, None)
            self._pending = [p for p in self._pending if p.group != group]
            return {"ok": True}
        if op == "status":
            now = clock.now()
            return {
                "ok": True,
                "pid": os.getpid(),
                "version": PROTOCOL_VERSION,
                "now": now,
                "clients": self._clients,
                "groups": {
                    g.name: {
                        "deadline": g.deadline,
                        "remaining": g.deadline - now,
                        "addresses": [list(a) for a in g.addresses],
                    }
                    for g in self.groups.values()
                },
                "fired": list(self.fired),
            }
        raise ValueError(f"unknown op {op!r} (hello, arm, disarm, status)")


def _lock_path(socket_path: str) -> str:
    return socket_path + ".lock"


def _take_lock(socket_path: str) -> int | None:
    """The guard's single-instance lock, or None if another guard holds it."""
    os.makedirs(os.path.dirname(os.path.abspath(socket_path)), mode=0o700, exist_ok=True)
    fd = os.open(_lock_path(socket_path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _spare_from_oom_killer() -> None:
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("-1000")


async def _serve_guard(guard: FenceGuard, notify_fd: int | None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, guard.stop)
    ready: asyncio.Future[None] = loop.create_future()
    task = asyncio.create_task(guard.run(ready))
    done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if notify_fd is not None:
        os.write(notify_fd, f"ready {os.getpid()}\n".encode() if ready in done else b"failed\n")
        os.close(notify_fd)
    await task


# ---------------------------------------------------------------------------
# the client


def guard_argv(
    socket_path: str,
    *,
    idle_exit: float = DEFAULT_IDLE_EXIT,
    log_file: str | None = None,
    log_format: str = "text",
    python: str = sys.executable,
) -> list[str]:
    argv = [
        python,
        "-m",
        "etcdha.fence",
        "--socket",
        socket_path,
        "--detach",
        "--idle-exit",
        str(idle_exit),
        "--log-format",
        log_format,
    ]
    if log_file:
        argv += ["--log-file", log_file]
    return argv


def start_guard(
    socket_path: str,
    *,
    idle_exit: float = DEFAULT_IDLE_EXIT,
    log_file: str | None = None,
    log_format: str = "text",
    python: str = sys.executable,
) -> subprocess.Popen[bytes]:
    """Start a detached guard on ``socket_path`` without waiting for it: a caller
    starts it early, goes on with its own start-up while the guard's Python
    starts, and later hands the process to :func:`await_guard` (or to
    :class:`FenceClient` as ``starting``).

    The guard runs in a new session, reparented away from the caller, in the
    caller's network namespace; its log goes to ``log_file`` or, by default,
    to the caller's stderr."""
    return subprocess.Popen(
        guard_argv(
            socket_path,
            idle_exit=idle_exit,
            log_file=log_file,
            log_format=log_format,
            python=python,
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )


async def await_guard(
    proc: subprocess.Popen[bytes],
    socket_path: str,
    # Bounds the start-up: a Python start on a loaded machine (or a slow root file
    # system) has been seen to take over 10 s; the agent holds nothing meanwhile.
    timeout: float = 30.0,  # noqa: ASYNC109
) -> int | None:
    """The pid of a guard :func:`start_guard` started, once it serves its socket;
    None if another guard already served it. Raises FenceError if it failed."""
    assert proc.stdout is not None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), proc.stdout
    )
    try:
        async with asyncio.timeout(timeout):
            # The detaching process prints one line and exits, which closes the pipe;
            # its exit status follows at once.
            out = await reader.read()
            await asyncio.to_thread(proc.wait)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        raise FenceError(
            f"the fence guard for {socket_path} did not start within {timeout:g}s"
        ) from None
    finally:
        transport.close()
    words = out.decode(errors="replace").split()
    if words[:1] == ["ready"] and len(words) > 1 and words[1].isdigit():
        return int(words[1])
    if words[:1] == ["busy"]:
        return None
    raise FenceError(f"the fence guard for {socket_path} failed to start (exit {proc.returncode})")


async def spawn_guard(
    socket_path: str,
    *,
    idle_exit: float = DEFAULT_IDLE_EXIT,
    log_file: str | None = None,
    log_format: str = "text",
    python: str = sys.executable,
    timeout: float = 30.0,  # noqa: ASYNC109
) -> int | None:
    """Start a detached guard on ``socket_path`` and wait until it serves it (see
    :func:`start_guard`); its pid, or None if one already serves it."""
    proc = start_guard(
        socket_path, idle_exit=idle_exit, log_file=log_file, log_format=log_format, python=python
    )
    return await await_guard(proc, socket_path, timeout)


def guard_paths(run_dir: str | os.PathLike[str], cluster: str, node: str) -> tuple[str, str]:
    """The socket and the log file of an agent's guard under its run directory."""
    base = os.path.join(os.fspath(run_dir), f"fence-{cluster}-{node}")
    return f"{base}.sock", f"{base}.log"


def guard_answers(socket_path: str) -> bool:
    """Whether a guard listens on ``socket_path`` now (a plain connect, no request)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(socket_path)
        except OSError:
            return False
    return True


class FenceClient:
    """The agent's connection to its fence guard (asyncio).

    Requests are serialised; if the connection breaks, the next request
    reconnects (starting a guard if none answers, when ``spawn`` is true) and
    re-arms every group this client has armed before sending itself. A
    :class:`FenceError` means the guard could not be reached: the caller's
    addresses are then not guarded.

    ``starting``: a guard the caller started earlier with :func:`start_guard`;
    the first connect waits for it instead of starting another.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        agent: str | None = None,
        spawn: bool = True,
        idle_exit: float = DEFAULT_IDLE_EXIT,
        log_file: str | None = None,
        timeout: float = 2.0,
        starting: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.socket_path = os.fspath(socket_path)
        self._starting = starting
        self.agent = agent
        self.spawn = spawn
        self.idle_exit = idle_exit
        self.log_file = log_file
        self.timeout = timeout
        self.guard_pid: int | None = None
        self.guard_version = PROTOCOL_VERSION
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._armed: dict[str, tuple[float, list[Address]]] = {}
        self._next_id = 0

    async def __aenter__(self) -> FenceClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        """Connect, starting a guard first if none answers on the socket."""
        async with self._lock:
            await self._connect()

    async def _open(self) -> bool:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(
                self.socket_path, limit=_MAX_LINE
            )
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        return True

    async def _connect(self) -> None:
        if self.connected:
            return
        starting, self._starting = self._starting, None
        if starting is not None:
            try:
                await await_guard(starting, self.socket_path)
            except FenceError as e:
                log.warning("%s; starting another", e)
        if not await self._open():
            if not self.spawn:
                raise FenceError(f"no fence guard answers on {self.socket_path}")
            await spawn_guard(self.socket_path, idle_exit=self.idle_exit, log_file=self.log_file)
            deadline = time.monotonic() + self.timeout
            while not await self._open():
                if time.monotonic() > deadline:
                    raise FenceError(f"the fence guard on {self.socket_path} does not answer")
                await asyncio.sleep(0.02)
        hello = await self._exchange({"op": "hello", "agent": self.agent, "pid": os.getpid()})
        self.guard_pid = hello.get("pid")
        version = hello.get("version")
        self.guard_version = version if isinstance(version, int) else 1
        now = clock.now()
        for group, (deadline, addresses) in list(self._armed.items()):
            if deadline > now:
                await self._exchange(self._arm_request(group, deadline, addresses))

    async def _exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._reader is not None and self._writer is not None
        self._next_id += 1
        request = {**request, "id": self._next_id}
        if request.get("op") == "arm" and self.guard_version < 2:
            # A guard of the previous version (left running across an upgrade)
            # counts on CLOCK_MONOTONIC.
            request["deadline"] = clock.monotonic_of(request["deadline"])
        self._writer.write(json.dumps(request).encode() + b"\n")
        async with asyncio.timeout(self.timeout):
            await self._writer.drain()
            while True:
                line = await self._reader.readline()
                if not line:
                    raise ConnectionResetError("the fence guard closed the connection")
                reply = json.loads(line)
                # The late answer to an earlier request that timed out: skip it.
                stale = isinstance(reply, dict) and isinstance(reply.get("id"), int)
                if not (stale and reply["id"] < self._next_id):
                    break
        if not isinstance(reply, dict) or reply.get("id") != self._next_id:
            raise FenceError(f"unexpected reply from the fence guard: {line!r}")
        if not reply.get("ok"):
            raise FenceError(f"the fence guard refused {request.get('op')}: {reply.get('error')}")
        return reply

    async def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            for attempt in (1, 2):
                try:
                    await self._connect()
                    return await self._exchange(request)
                except (OSError, TimeoutError, json.JSONDecodeError) as exc:
                    await self._drop()
                    if attempt == 2:
                        raise FenceError(
                            f"the fence guard on {self.socket_path} is unreachable: {exc}"
                        ) from exc
        raise AssertionError("unreachable")

    @staticmethod
    def _arm_request(group: str, deadline: float, addresses: Iterable[Address]) -> dict[str, Any]:
        return {
            "op": "arm",
            "group": group,
            "deadline": deadline,
            "addresses": [[i, ip, int(p)] for i, ip, p in addresses],
        }

    async def arm(
        self, group: str, deadline: float, addresses: Iterable[Address | AddressLike]
    ) -> dict[str, Any]:
        """Guard ``addresses`` of ``group`` until ``deadline`` (a :func:`etcdha.clock.now` value).

        ``addresses`` are ``(ifname, ip, prefixlen)`` tuples or objects with those
        attributes. The reply's ``was_expired`` tells whether the guard removed
        this group's addresses since the previous arm.
        """
        addrs = [_as_address(a) for a in addresses]
        self._armed[group] = (deadline, addrs)
        return await self._request(self._arm_request(group, deadline, addrs))

    async def disarm(self, group: str) -> None:
        """Stop guarding ``group``; its addresses are left as they are."""
        self._armed.pop(group, None)
        await self._request({"op": "disarm", "group": group})

    async def status(self) -> dict[str, Any]:
        return await self._request({"op": "status"})

    async def _drop(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def close(self) -> None:
        """Close the connection (no waiting); armed groups stay armed in the guard."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()

    async def aclose(self) -> None:
        """Close the connection and wait until it is closed."""
        async with self._lock:
            await self._drop()


# ---------------------------------------------------------------------------
# command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m etcdha.fence",
        description="Fence guard: removes a resource group's addresses when its lease "
        "deadline passes without renewal.",
    )
    parser.add_argument("--socket", required=True, help="unix socket path to serve")
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=DEFAULT_IDLE_EXIT,
        help="exit after this many seconds with no armed group and no client (default 60)",
    )
    parser.add_argument("--tick", type=float, default=DEFAULT_TICK, help=argparse.SUPPRESS)
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--log-file", help="append the log here instead of stderr")
    parser.add_argument(
        "--detach",
        action="store_true",
        help="fork into a new session, print 'ready PID' once serving, and return",
    )
    parser.add_argument(
        "--status", action="store_true", help="print the running guard's status as JSON"
    )
    return parser.parse_args(argv)


async def _print_status(socket_path: str) -> int:
    client = FenceClient(socket_path, spawn=False)
    try:
        print(json.dumps(await client.status(), indent=2))
    except FenceError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.status:
        return asyncio.run(_print_status(args.socket))

    from etcdha import logs

    notify_fd: int | None = None
    if args.detach:
        read_fd, notify_fd = os.pipe()
        if os.fork() > 0:
            os.close(notify_fd)
            with os.fdopen(read_fd) as pipe:
                line = pipe.readline().strip()
            with contextlib.suppress(BrokenPipeError):  # the caller may be gone
                print(line or "failed", flush=True)
            # At once: the caller waits for this process to end, and the interpreter's
            # own teardown (modules, threads) takes a while on a slow machine.
            os._exit(0 if line.startswith(("ready", "busy")) else 1)
        os.close(read_fd)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
    if args.log_file:
        fd = os.open(args.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    logs.setup(args.log_format)

    lock_fd = _take_lock(args.socket)
    if lock_fd is None:
        log.info("another fence guard already serves %s", args.socket)
        if notify_fd is not None:
            os.write(notify_fd, b"busy\n")
            os.close(notify_fd)
        return 0
    _spare_from_oom_killer()
    guard = FenceGuard(args.socket, idle_exit=args.idle_exit, tick=args.tick)
    try:
        asyncio.run(_serve_guard(guard, notify_fd))
    finally:
        os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
