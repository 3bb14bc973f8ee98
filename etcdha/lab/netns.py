"""Network namespaces, bridges and veth pairs for the lab and the tests.

A :class:`Topology` owns everything it creates and removes it all in
:meth:`Topology.close` (also on ``with`` exit, at interpreter exit, and when
called twice):

- every name carries the run id: namespaces are ``<prefix><run id>-<name>``
  (e.g. ``eh3fa9c1-node1``), so parallel runs never collide;
- bridges live in a dedicated *switch* namespace of the run
  (``<prefix><run id>-sw``), never in the host's root namespace: nothing the
  lab does can touch the host's own interfaces, and deleting the switch
  namespace takes every bridge and every switch-side veth end with it. The
  switch is pure layer 2 (IPv6 disabled there, no STP, no multicast
  snooping, so IPv6 neighbour discovery is flooded like ARP);
- a node is plugged into a bridge with a veth pair created *inside* the switch
  namespace, whose other end goes straight into the node's namespace under the
  name asked for (eth0, eth1, ...); the switch end is the node's "cable", which
  :meth:`Topology.cut` and :meth:`Topology.restore` unplug and plug back
  (the node sees carrier loss, its addresses stay);
- processes started with :meth:`Topology.start` / :meth:`Topology.astart` run
  in their own session; :meth:`Topology.close` stops them, then kills whatever
  else still runs inside the run's namespaces (``ip netns pids``: detached
  daemons included), then deletes the namespaces.

Building is synchronous: each step is one short ``ip`` command (a few ms).
Async code calls the builders through ``asyncio.to_thread``, or uses the
``a*`` variants to run commands and processes.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any

DEFAULT_PREFIX = "eh"
SWITCH = "sw"
_IFNAMSIZ = 15


class LabError(RuntimeError):
    """A lab command failed; the message has the command and its output."""


def new_run_id() -> str:
    """Six hex digits, different for every run."""
    return secrets.token_hex(3)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _describe(argv: Sequence[str], code: int, stdout: str, stderr: str) -> str:
    out = (stderr or stdout).strip()
    return f"`{' '.join(argv)}` exited {code}" + (f": {out}" if out else "")


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30.0, input: str | None = None
) -> CommandResult:
    """Run a command to completion (blocking); raise LabError on failure if ``check``."""
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise LabError(_describe(argv, proc.returncode, proc.stdout, proc.stderr))
    return result


async def arun(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,  # noqa: ASYNC109 (bounds a subprocess)
) -> CommandResult:
    """Run a command to completion without blocking the event loop."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout:g}s") from None
    code = proc.returncode if proc.returncode is not None else -1
    result = CommandResult(
        tuple(argv), code, out.decode(errors="replace"), err.decode("utf-8", "replace")
    )
    if check and code != 0:
        raise LabError(_describe(argv, code, result.stdout, result.stderr))
    return result


def netns_exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """``ip netns exec NS argv...``: runs argv inside NS (with NS's /etc/netns and /sys)."""
    return ["ip", "netns", "exec", ns, *argv]


def run_in(ns: str, argv: Sequence[str], **kwargs: Any) -> CommandResult:
    """:func:`run` inside the network namespace ``ns`` (full name)."""
    return run(netns_exec_argv(ns, argv), **kwargs)


async def arun_in(ns: str, argv: Sequence[str], **kwargs: Any) -> CommandResult:
    """:func:`arun` inside the network namespace ``ns`` (full name)."""
    return await arun(netns_exec_argv(ns, argv), **kwargs)


def list_namespaces() -> list[str]:
    """Names of the namespaces under /run/netns (what ``ip netns list`` shows)."""
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []


def namespace_pids(ns: str) -> list[int]:
    """Processes whose network namespace is ``ns``."""
    result = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in result.stdout.split() if p.isdigit()]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _kill_wait(pids: Sequence[int], timeout: float = 3.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)


@dataclass
class LabProcess:
    """A long-running process inside a namespace of a topology."""

    ns: str
    argv: tuple[str, ...]
    popen: subprocess.Popen[bytes] | None = None
    aproc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        if self.popen is not None:
            return self.popen.pid
        assert self.aproc is not None
        return self.aproc.pid

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return pid_alive(self.pid)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 2.0) -> None:
        """SIGTERM to its process group (after SIGCONT, in case it was stopped), then SIGKILL."""
        for sig in (signal.SIGCONT, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)

    async def astop(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109 (grace period)
        """:meth:`stop` without blocking; for asyncio processes also waits for the exit
        status, so their transports close while the loop still runs."""
        for sig in (signal.SIGCONT, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
        try:
            async with asyncio.timeout(timeout):
                await self._exited()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            await self._exited()

    async def _exited(self) -> None:
        if self.aproc is not None:
            await self.aproc.wait()
            return
        for _ in range(1000):  # 10 s, far beyond a SIGKILL
            if not self.alive():
                return
            await asyncio.sleep(0.01)


@dataclass
class _Port:
    ns: str
    ifname: str
    bridge: str
    switch_port: str


@dataclass(eq=False)
class Topology:
    """Namespaces, bridges and cables of one lab run; :meth:`close` removes them all."""

    run_id: str = field(default_factory=new_run_id)
    prefix: str = DEFAULT_PREFIX
    _namespaces: list[str] = field(default_factory=list, init=False)
    _bridges: list[str] = field(default_factory=list, init=False)
    _ports: dict[tuple[str, str], _Port] = field(default_factory=dict, init=False)
    _processes: list[LabProcess] = field(default_factory=list, init=False)
    _closed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if not self.run_id.isalnum():
            raise ValueError(f"run id {self.run_id!r} must be letters and digits")
        atexit.register(self.close)

    # -- names ---------------------------------------------------------------

    @property
    def name_prefix(self) -> str:
        return f"{self.prefix}{self.run_id}-"

    def ns(self, name: str) -> str:
        """Full namespace name for a short one (``node1`` -> ``eh3fa9c1-node1``)."""
        return name if name.startswith(self.name_prefix) else self.name_prefix + name

    @property
    def switch(self) -> str:
        return self.ns(SWITCH)

    @property
    def namespaces(self) -> list[str]:
        return list(self._namespaces)

    @property
    def processes(self) -> list[LabProcess]:
        return list(self._processes)

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"topology {self.run_id} is closed")

    # -- building ------------------------------------------------------------

    def add_namespace(self, name: str) -> str:
        """Create a namespace with its loopback up; returns the full name."""
        self._check_open()
        full = self.ns(name)
        if full in self._namespaces:
            return full
        run(["ip", "netns", "add", full])
        self._namespaces.append(full)
        run(["ip", "-n", full, "link", "set", "dev", "lo", "up"])
        return full

    def _ensure_switch(self) -> str:
        if self.switch not in self._namespaces:
            self.add_namespace(SWITCH)
            for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
                self.sysctl(SWITCH, key, "1")
        return self.switch

    def add_bridge(self, bridge: str) -> str:
        """A bridge (a layer-2 segment) in the switch namespace."""
        self._check_open()
        if len(bridge) > _IFNAMSIZ:
            raise ValueError(f"bridge name {bridge!r} is longer than {_IFNAMSIZ} characters")
        sw = self._ensure_switch()
        if bridge not in self._bridges:
            bridge_opts = ["stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"]
            run(["ip", "-n", sw, "link", "add", "name", bridge, "type", "bridge", *bridge_opts])
            run(["ip", "-n", sw, "link", "set", "dev", bridge, "up"])
            self._bridges.append(bridge)
        return bridge

    def connect(self, name: str, ifname: str, bridge: str, *, mac: str | None = None) -> str:
        """Plug namespace ``name`` into ``bridge`` as interface ``ifname`` (up).

        Returns the switch-side port name (what :meth:`cut` sets down).
        """
        self._check_open()
        ns = self.add_namespace(name)
        self.add_bridge(bridge)
        short = ns.removeprefix(self.name_prefix)
        port = f"{short}.{ifname}"
        if len(port) > _IFNAMSIZ or port in {p.switch_port for p in self._ports.values()}:
            port = f"p{len(self._ports)}.{ifname}"[:_IFNAMSIZ]
        peer = ["peer", "name", ifname] + (["address", mac] if mac else []) + ["netns", ns]
        run(["ip", "-n", self.switch, "link", "add", "name", port, "type", "veth", *peer])
        run(["ip", "-n", self.switch, "link", "set", "dev", port, "master", bridge, "up"])
        run(["ip", "-n", ns, "link", "set", "dev", ifname, "up"])
        self._ports[(ns, ifname)] = _Port(ns, ifname, bridge, port)
        return port

    def add_address(self, name: str, ifname: str, cidr: str, *, nodad: bool = False) -> None:
        """``ip addr add CIDR dev IFNAME`` in the namespace (``nodad`` for IPv6 skips DAD)."""
        extra = ["nodad"] if nodad and ":" in cidr else []
        brd = [] if ":" in cidr else ["broadcast", "+"]
        run(["ip", "-n", self.ns(name), "addr", "add", cidr, *brd, "dev", ifname, *extra])

    def add_route(
        self, name: str, destination: str, via: str | None = None, dev: str | None = None
    ) -> None:
        """``ip route replace DEST [via VIA] [dev DEV]`` in the namespace."""
        argv = ["ip", "-n", self.ns(name)]
        if ":" in destination or (via is not None and ":" in via):
            argv.append("-6")
        argv += ["route", "replace", destination]
        argv += ["via", via] if via else []
        argv += ["dev", dev] if dev else []
        run(argv)

    def set_default_route(self, name: str, via: str) -> None:
        self.add_route(name, "default", via)

    def sysctl(self, name: str, key: str, value: str | int) -> None:
        """Set a sysctl inside the namespace (``net.*`` keys are per namespace)."""
        run_in(self.ns(name), ["sysctl", "-q", "-w", f"{key}={value}"])

    def set_link(self, name: str, ifname: str, up: bool) -> None:
        """Set an interface of a namespace up or down (by its own name there)."""
        run(["ip", "-n", self.ns(name), "link", "set", "dev", ifname, "up" if up else "down"])

    def port(self, name: str, ifname: str) -> str:
        """Switch-side port name of a node's interface."""
        try:
            return self._ports[(self.ns(name), ifname)].switch_port
        except KeyError:
            raise LabError(f"{name} has no interface {ifname} plugged into a bridge") from None

    def cut(self, name: str, ifname: str) -> None:
        """Unplug a node's cable: its switch port goes down, the node sees no carrier."""
        run(["ip", "-n", self.switch, "link", "set", "dev", self.port(name, ifname), "down"])

    def restore(self, name: str, ifname: str) -> None:
        """Plug the cable back in."""
        run(["ip", "-n", self.switch, "link", "set", "dev", self.port(name, ifname), "up"])

    # -- commands and processes ---------------------------------------------

    def exec(
        self,
        name: str,
        *argv: str,
        check: bool = True,
        timeout: float = 30.0,
    ) -> CommandResult:
        """Run a command in the namespace to completion (blocking)."""
        return run_in(self.ns(name), argv, check=check, timeout=timeout)

    async def aexec(
        self,
        name: str,
        *argv: str,
        check: bool = True,
        timeout: float = 30.0,  # noqa: ASYNC109 (bounds a subprocess)
    ) -> CommandResult:
        """Run a command in the namespace to completion (asyncio)."""
        return await arun_in(self.ns(name), argv, check=check, timeout=timeout)

    def start(
        self,
        name: str,
        *argv: str,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> LabProcess:
        """Start a long-running process in the namespace, in a session of its own.

        :meth:`close` stops it (and anything else left in the namespace).
        """
        self._check_open()
        ns = self.ns(name)
        popen = subprocess.Popen(
            netns_exec_argv(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        proc = LabProcess(ns, tuple(argv), popen=popen)
        self._processes.append(proc)
        return proc

    async def astart(
        self,
        name: str,
        *argv: str,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> LabProcess:
        """:meth:`start` with asyncio's subprocess (``.aproc`` gives its pipes)."""
        self._check_open()
        ns = self.ns(name)
        aproc = await asyncio.create_subprocess_exec(
            *netns_exec_argv(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        proc = LabProcess(ns, tuple(argv), aproc=aproc)
        self._processes.append(proc)
        return proc

    def pids(self, name: str) -> list[int]:
        """Every process currently inside the namespace."""
        return namespace_pids(self.ns(name))

    # -- teardown ------------------------------------------------------------

    def close(self) -> None:
        """Stop processes, kill leftovers in the namespaces, delete the namespaces.

        Safe to call twice; every step is tried even if an earlier one fails.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for proc in reversed(self._processes):
            with contextlib.suppress(Exception):
                proc.stop(timeout=1.0)
        leftovers: list[int] = []
        for ns in self._namespaces:
            with contextlib.suppress(Exception):
                leftovers += namespace_pids(ns)
        if leftovers:
            _kill_wait(leftovers)
        errors = []
        for ns in reversed(self._namespaces):
            result = run(["ip", "netns", "del", ns], check=False)
            if not result.ok and ns in list_namespaces():
                errors.append(_describe(result.argv, result.returncode, "", result.stderr))
        self._namespaces.clear()
        self._ports.clear()
        self._bridges.clear()
        if errors:
            raise LabError("; ".join(errors))

    async def aclose(self) -> None:
        """:meth:`close` from async code: processes are stopped and reaped on the
        running loop, the rest runs in a thread."""
        if self._closed:
            return
        await asyncio.gather(*(proc.astop(timeout=1.0) for proc in self._processes))
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> Topology:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __enter__(self) -> Topology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
