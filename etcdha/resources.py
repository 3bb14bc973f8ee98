"""A group's resources on the leader: addresses, scripts, and the IPVS seam.

Each resource starts idempotently, stops idempotently, and can audit itself
(re-adding an address someone removed). They are started in the group's
order and stopped in reverse by election.GroupRunner.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from etcdha import metrics, network, procs
from etcdha.spec import AddressResource, Announce, IPVSResource, Node, ScriptResource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldAddress:
    ifname: str
    ip: str
    prefixlen: int


class Resource(Protocol):
    def describe(self) -> str: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def audit(self) -> None: ...

    def fence_addresses(self) -> list[HeldAddress]: ...


class ResourceError(RuntimeError):
    pass


class AddressRuntime:
    """An address on an interface, announced with gratuitous ARP / unsolicited NA."""

    def __init__(self, spec: AddressResource, node: Node, announce: Announce) -> None:
        self.spec = spec
        self.announce_cfg = announce
        self.explicit = node.interfaces.get(spec.address, spec.interface)
        self.held: HeldAddress | None = None
        self._announcer: asyncio.Task[None] | None = None
        # Asked right before the address is added (at start or by an audit): its
        # runner says no once the fence deadline has passed, whatever was in
        # flight then (a start or an audit the process was frozen in).
        self.allowed: Callable[[], bool] = lambda: True

    def describe(self) -> str:
        where = self.held.ifname if self.held else (self.explicit or "its subnet's interface")
        return f"address {self.spec.address} on {where}"

    async def resolve(self) -> HeldAddress:
        if self.held is None:
            try:
                ifname, prefixlen = await network.resolve_interface(
                    self.spec.address, self.explicit
                )
            except (network.NetworkError, ValueError, OSError) as e:
                raise ResourceError(f"cannot place {self.spec.address}: {e}") from e
            ip = str(ipaddress.ip_interface(self.spec.address).ip)
            self.held = HeldAddress(ifname, ip, prefixlen)
        return self.held

    async def start(self) -> None:
        held = await self.resolve()
        if not self.allowed():
            raise ResourceError(
                f"not placing {held.ip} on {held.ifname}: the fence deadline has passed"
            )
        try:
            # Like keepalived, skip IPv6 duplicate address detection unless asked:
            # it would keep a moving VIP unusable for a second or more.
            await network.add_address(
                held.ifname, held.ip, held.prefixlen, label=self.spec.label, nodad=not self.spec.dad
            )
        except (network.NetworkError, OSError) as e:
            raise ResourceError(
                f"cannot add {held.ip}/{held.prefixlen} to {held.ifname}: {e}"
            ) from e
        self._start_announcing(held)

    def _start_announcing(self, held: HeldAddress) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
        self._announcer = asyncio.create_task(self._announce(held), name=f"announce {held.ip}")

    async def _announce(self, held: HeldAddress) -> None:
        cfg = self.announce_cfg
        kind = "na" if ":" in held.ip else "arp"
        while True:
            try:
                if kind == "na":
                    sent = await network.send_unsolicited_na(
                        held.ifname, held.ip, cfg.count, cfg.interval
                    )
                else:
                    sent = await network.send_garp(held.ifname, held.ip, cfg.count, cfg.interval)
                metrics.announcements.labels(kind).inc(sent)
            except (network.NetworkError, OSError) as e:
                log.warning("could not announce %s on %s: %s", held.ip, held.ifname, e)
            if cfg.repeat_every <= 0:
                return
            await asyncio.sleep(cfg.repeat_every)

    async def stop(self) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
            self._announcer = None
        await remove_held(await self.resolve())

    async def audit(self) -> None:
        held = await self.resolve()
        try:
            state = await network.address_state(held.ifname, held.ip)
        except (network.NetworkError, OSError) as e:
            raise ResourceError(f"cannot read the addresses of {held.ifname}: {e}") from e
        if state is None:
            if not self.allowed():
                return  # the fence deadline passed: the guard took it, and rightly
            log.warning(
                "%s/%d was removed from %s behind our back; adding it again and announcing it",
                held.ip,
                held.prefixlen,
                held.ifname,
            )
            await self.start()
        elif state.dadfailed:
            log.error(
                "%s on %s failed duplicate address detection: another host holds it",
                held.ip,
                held.ifname,
            )

    def fence_addresses(self) -> list[HeldAddress]:
        return [self.held] if self.held else []


async def remove_held(held: HeldAddress) -> None:
    """Take the address off its interface, whatever its prefix length there (an
    address is the same address with any prefix); gone already is fine."""
    try:
        await network.remove_address(held.ifname, held.ip, None)
    except network.InterfaceNotFound:
        return  # the interface went away, and its addresses with it
    except (network.NetworkError, OSError) as e:
        raise ResourceError(f"cannot remove {held.ip} from {held.ifname}: {e}") from e


LSB_NOT_RUNNING = 3


class ScriptRuntime:
    """A Heartbeat-style resource script: `path args... start|stop|status`."""

    def __init__(self, spec: ScriptResource) -> None:
        self.spec = spec

    def describe(self) -> str:
        return f"script {self.spec.path}"

    async def run(self, action: str) -> int:
        argv = [self.spec.path, *self.spec.args, action]
        try:
            done = await procs.run_bounded(argv, self.spec.timeout)
        except OSError as e:
            raise ResourceError(f"cannot run {' '.join(argv)}: {e.strerror}") from e
        if done.timed_out:
            raise ResourceError(
                f"{' '.join(argv)} did not finish within {self.spec.timeout:g}s; killed"
            )
        if done.code != 0 and action != "status":
            tail = done.stderr.strip().splitlines()[-1:] or [""]
            raise ResourceError(f"{' '.join(argv)} exited {done.code}: {tail[0][:200]}")
        return done.code or 0

    async def start(self) -> None:
        await self.run("start")

    async def stop(self) -> None:
        await self.run("stop")

    async def audit(self) -> None:
        # LSB: status exits 3 when the service is not running; restart it then.
        # Other codes (scripts without status) are left alone.
        if await self.run("status") == LSB_NOT_RUNNING:
            log.warning("%s reports it is not running; starting it again", self.describe())
            await self.start()

    def fence_addresses(self) -> list[HeldAddress]:
        return []


# The IPVS table is a resource too; the IPVS module registers its factory here.
IPVSFactory = Callable[[str, IPVSResource, Node], Resource]
_ipvs_factory: IPVSFactory | None = None


def register_ipvs(factory: IPVSFactory) -> None:
    global _ipvs_factory
    _ipvs_factory = factory


class _NoIPVS:
    """Stands in while no IPVS backend is registered: says so, touches nothing."""

    def __init__(self, group: str) -> None:
        self.group = group

    def describe(self) -> str:
        return "ipvs table (no IPVS backend in this build: left untouched)"

    async def start(self) -> None:
        log.warning(
            "group %s: no IPVS backend is registered; the IPVS table is left untouched", self.group
        )

    async def stop(self) -> None:
        return None

    async def audit(self) -> None:
        return None

    def fence_addresses(self) -> list[HeldAddress]:
        return []


ResourceSpec = AddressResource | IPVSResource | ScriptResource


def build_one(group: str, spec: ResourceSpec, node: Node, announce: Announce) -> Resource:
    if isinstance(spec, AddressResource):
        return AddressRuntime(spec, node, announce)
    if isinstance(spec, ScriptResource):
        return ScriptRuntime(spec)
    return _ipvs_factory(group, spec, node) if _ipvs_factory else _NoIPVS(group)
