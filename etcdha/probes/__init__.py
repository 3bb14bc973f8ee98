"""Built-in probes: one module per kind, each registered here by name.

A probe checks one real server once and answers a :class:`Result`. Probes are
asyncio coroutines that never block the event loop; :func:`run` bounds each one
by its target's timeout and turns every failure (an exception included) into a
down result, so a probe can never crash or stall the checker.

A probe may also register a direct form (:func:`register_direct`): a plain
function that starts the check and hands its result to a callback, bounded by
the target's timeout itself. The checker uses it where there is one (no task
per check: about half of a plain HTTP check's CPU); it answers None for a
target it does not handle (https, UDP), which then runs as a coroutine.

Names: ``connect``, ``http``, ``https``, ``tcp`` (ldirectord's simpletcp),
``dns``, ``ping``, ``external``, ``on``, ``off`` and ``none`` (ldirectord's
negotiate check of service none: always up). :func:`plan` tells which probe a
spec's check runs and with which timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from etcdha.spec import Check, CheckType

if TYPE_CHECKING:
    from etcdha.probes._engine import ProbeEngine

__all__ = [
    "DEFAULT_CHECKS_DIR",
    "DETAIL_MAX",
    "READ_LIMIT",
    "Cancellable",
    "DirectProbe",
    "Probe",
    "Result",
    "Target",
    "describe_error",
    "direct",
    "get",
    "names",
    "plan",
    "register",
    "register_direct",
    "run",
    "short",
]

DEFAULT_CHECKS_DIR = Path("/usr/lib/etcdha/checks")
DETAIL_MAX = 200
READ_LIMIT = 64 * 1024  # bytes of an answer a probe reads at most

BUILT_IN_SERVICES = {"http", "https", "http_proxy", "tcp", "simpletcp", "dns", "none"}


@dataclass(frozen=True)
class Result:
    ok: bool
    detail: str
    latency_ms: float = 0.0
    weight: int | None = None  # a dynamic weight (external checks with dynamic_weight)


@dataclass(frozen=True)
class Target:
    """One real server as one check sees it.

    ``port`` is the port to probe (the check's port, else the real's, else the
    virtual service's); ``real_port`` is the real's own. ``virtual_address`` is
    the VIP, or the firewall mark as text for fwmark services (as ldirectord
    passes it to external checks).
    """

    address: str
    port: int
    protocol: str = "tcp"  # tcp, udp or sctp
    check: Check = field(default_factory=Check)
    request: str | None = None
    receive: str | None = None
    timeout: float = 5.0
    virtual_address: str = ""
    virtual_port: int = 0
    real_port: int = 0
    checks_dir: Path = DEFAULT_CHECKS_DIR
    # What a probe derives from the target once (a request's bytes), kept for
    # its next checks; not part of the target's value.
    memo: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def hostport(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )


class Probe(Protocol):
    """A probe: ``await probe(target)`` checks the target once."""

    def __call__(self, target: Target, /) -> Awaitable[Result]: ...


class Cancellable(Protocol):
    def cancel(self) -> object: ...


class DirectProbe(Protocol):
    """``probe(engine, target, done)`` starts one check (on the event loop's
    :class:`ProbeEngine`); ``done(result)`` is called once (possibly before it
    returns) unless the returned handle is cancelled first. None: this target
    needs the coroutine form."""

    def __call__(
        self, engine: ProbeEngine, target: Target, done: Callable[[Result], None], /
    ) -> Cancellable | None: ...


_REGISTRY: dict[str, Probe] = {}
_DIRECT: dict[str, DirectProbe] = {}


def register(name: str) -> Callable[[Probe], Probe]:
    """Decorator: make a probe available under ``name``."""

    def add(probe: Probe) -> Probe:
        if name in _REGISTRY and _REGISTRY[name] is not probe:
            raise ValueError(f"a probe named {name!r} is already registered")
        _REGISTRY[name] = probe
        return probe

    return add


def register_direct(name: str) -> Callable[[DirectProbe], DirectProbe]:
    """Decorator: the direct form of the probe ``name`` (which must exist as a coroutine too)."""

    def add(probe: DirectProbe) -> DirectProbe:
        _DIRECT[name] = probe
        return probe

    return add


def direct(name: str) -> DirectProbe | None:
    return _DIRECT.get(name)


def get(name: str) -> Probe:
    """The probe registered as ``name``; KeyError names the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no probe named {name!r} (known: {', '.join(names())})") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def short(text: str, limit: int = DETAIL_MAX) -> str:
    """One line of at most ``limit`` characters, for a result's detail."""
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def run(name: str, target: Target) -> Result:
    """Run probe ``name`` against ``target``, bounded by ``target.timeout``.

    Never raises (cancellation aside): a timeout or any error is a down result.
    """
    probe = get(name)
    started = time.monotonic()
    try:
        async with asyncio.timeout(target.timeout):
            result = await probe(target)
    except TimeoutError:
        result = Result(False, f"timed out after {target.timeout:g}s")
    except Exception as exc:
        result = Result(False, describe_error(exc))
    latency = result.latency_ms or (time.monotonic() - started) * 1000.0
    return Result(result.ok, short(result.detail), round(latency, 3), result.weight)


@dataclass(frozen=True)
class Plan:
    """What a check runs: ``probe`` (``every`` > 1: one ``probe`` then connects)."""

    probe: str
    timeout: float
    every: int = 1
    connect_timeout: float = 5.0


def negotiate_probe(check: Check) -> str:
    service = check.service
    if service in ("http", "http_proxy"):
        return "http"
    if service == "https":
        return "https"
    if service in ("tcp", "simpletcp"):
        return "tcp"
    if service == "dns":
        return "dns"
    if service == "none" and not check.command:
        return "none"
    return "external"


def plan(check: Check) -> Plan:
    """The probe a check runs and its timeout, as ldirectord chooses them.

    connect, ping and external checks use ``timeout`` (ldirectord's
    checktimeout); negotiate checks use ``negotiate_timeout``. A negotiate check
    whose service is not built in (mysql, pgsql, smtp, ldap, ...) runs the
    external check of that name (or ``command``) from the checks directory.
    """
    kind = check.type
    if kind is CheckType.negotiate:
        return Plan(
            negotiate_probe(check),
            check.negotiate_timeout,
            every=check.negotiate_every,
            connect_timeout=check.timeout,
        )
    if kind is CheckType.connect:
        return Plan("connect", check.timeout)
    if kind is CheckType.ping:
        return Plan("ping", check.timeout * check.checkcount)
    if kind is CheckType.external:
        return Plan("external", check.timeout)
    return Plan(kind.value, check.timeout)


def _load() -> None:
    # Importing each module registers its probes.
    from etcdha.probes import (  # noqa: F401
        connect,
        dns,
        external,
        http,
        ping,
        static,
        tcp,
    )


_load()
