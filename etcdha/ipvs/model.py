"""The IPVS table as plain values: services, their destinations, and a Table of both.

A service is identified by its :class:`ServiceKey`: (family, protocol, address,
port) or (family, firewall mark). Everything else about it (scheduler, flags,
persistence) can be changed in place in the kernel; so can a destination's
forwarding method, weight and thresholds. Addresses are kept in canonical text
(IPv6 compressed, as the keyspace writes them), so equal tables compare equal.

Values mirror the kernel's (include/uapi/linux/ip_vs.h): service flags, and
forwarding methods as the connection flags IPVS keeps per destination.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Final

from etcdha.keyspace import canonical_address, fwmark_segment, real_segment, service_segment

# IP_VS_SVC_F_*: service flags.
F_PERSISTENT: Final = 0x0001
F_HASHED: Final = 0x0002  # kernel-internal: set on every service in the table
F_ONEPACKET: Final = 0x0004
F_SCHED1: Final = 0x0008
F_SCHED2: Final = 0x0010
F_SCHED3: Final = 0x0020
SCHED_FLAGS: Final = F_SCHED1 | F_SCHED2 | F_SCHED3
KNOWN_FLAGS: Final = F_PERSISTENT | F_ONEPACKET | SCHED_FLAGS

# Scheduler flag names as ipvsadm spells them (-b): sh and mh name the first two.
_SCHED_FLAG_NAMES: Final[dict[str, tuple[str, str, str]]] = {
    "sh": ("sh-fallback", "sh-port", "flag-3"),
    "mh": ("mh-fallback", "mh-port", "flag-3"),
}
_GENERIC_FLAG_NAMES: Final = ("flag-1", "flag-2", "flag-3")
_FLAG_BITS: Final = (F_SCHED1, F_SCHED2, F_SCHED3)

PROTOCOLS: Final = ("tcp", "udp", "sctp")
PROTOCOL_NUMBERS: Final = {"tcp": 6, "udp": 17, "sctp": 132}
PROTOCOL_NAMES: Final = {v: k for k, v in PROTOCOL_NUMBERS.items()}

DEFAULT_PERSISTENCE_TIMEOUT: Final = 300  # ipvsadm's -p without a value


class Fwd(IntEnum):
    """IP_VS_CONN_F_* forwarding methods (the low three bits of a destination's flags)."""

    MASQ = 0  # NAT (ipvsadm -m)
    LOCAL = 1  # local node
    TUNNEL = 2  # IP-in-IP (ipvsadm -i)
    ROUTE = 3  # direct routing, "gate" (ipvsadm -g, the default)
    BYPASS = 4

    @property
    def spec_name(self) -> str:
        """The spec's and ldirectord's word: gate, masq, ipip (local, bypass otherwise)."""
        return {Fwd.MASQ: "masq", Fwd.TUNNEL: "ipip", Fwd.ROUTE: "gate"}.get(
            self, self.name.lower()
        )

    @classmethod
    def from_spec(cls, name: str) -> Fwd:
        return {"gate": cls.ROUTE, "masq": cls.MASQ, "ipip": cls.TUNNEL}[name]


def sched_flag_names(scheduler: str) -> tuple[str, str, str]:
    return _SCHED_FLAG_NAMES.get(scheduler, _GENERIC_FLAG_NAMES)


def sched_flags_from_names(scheduler: str, names: Iterable[str]) -> int:
    """Bits for ipvsadm's -b names; the scheduler decides which names it accepts."""
    own = sched_flag_names(scheduler)
    bits = 0
    for name in names:
        n = name.strip()
        if n in own:
            bits |= _FLAG_BITS[own.index(n)]
        elif n in _GENERIC_FLAG_NAMES:
            bits |= _FLAG_BITS[_GENERIC_FLAG_NAMES.index(n)]
        else:
            raise ValueError(
                f"unknown scheduler flag {n!r} for scheduler {scheduler!r} "
                f"(known: {', '.join(own)})"
            )
    return bits


def full_netmask(family: int) -> int:
    return 32 if family == 4 else 128


def netmask_prefix(text: str | None, family: int) -> int:
    """A persistence netmask as a prefix length: dotted IPv4 mask, or IPv6 prefix length."""
    if text is None or text == "":
        return full_netmask(family)
    if family == 4:
        if text.isdigit():
            value = int(text)
            if not 0 <= value <= 32:
                raise ValueError(f"{text!r} is not an IPv4 netmask")
            return value
        return ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
    if not text.isdigit() or not 1 <= int(text) <= 128:
        raise ValueError(f"{text!r} is not an IPv6 prefix length (1-128)")
    return int(text)


def netmask_text(prefix: int, family: int) -> str:
    """ipvsadm's spelling: dotted for IPv4, the prefix length for IPv6."""
    if family == 4:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)
    return str(prefix)


def canonical(address: str) -> tuple[str, int]:
    """(canonical text, family) of an address; brackets allowed."""
    return canonical_address(address.strip("[]"))


def endpoint_text(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True, order=True)
class ServiceKey:
    """What identifies a virtual service in the kernel."""

    family: int  # 4 or 6
    protocol: str  # tcp, udp, sctp; "" for a firewall-mark service
    address: str = ""  # canonical text; "" for a firewall-mark service
    port: int = 0
    fwmark: int = 0

    @classmethod
    def of_address(cls, protocol: str, address: str, port: int) -> ServiceKey:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        text, family = canonical(address)
        return cls(family, protocol, text, port, 0)

    @classmethod
    def of_fwmark(cls, fwmark: int, family: int = 4) -> ServiceKey:
        return cls(family, "", "", 0, fwmark)

    @property
    def is_fwmark(self) -> bool:
        return self.fwmark != 0

    @property
    def segment(self) -> str:
        """The service's keyspace segment (tcp-192.0.2.200-80, fwm-1, fwm6-1)."""
        if self.is_fwmark:
            return fwmark_segment(self.fwmark, self.family)
        return service_segment(self.protocol, self.address, self.port)

    def __str__(self) -> str:
        if self.is_fwmark:
            return f"fwmark {self.fwmark}" + (" (IPv6)" if self.family == 6 else "")
        return f"{self.protocol} {endpoint_text(self.address, self.port)}"


@dataclass(frozen=True)
class Service:
    """A virtual service's settings. Persistence timeout and netmask count only
    when the service is persistent; otherwise they are kept at 0 and the full mask."""

    key: ServiceKey
    scheduler: str = "wlc"
    flags: int = 0  # F_PERSISTENT | F_ONEPACKET | F_SCHED*; never F_HASHED
    timeout: int = 0  # persistence, seconds
    netmask: int = -1  # persistence granularity as a prefix length; -1: the full mask
    pe: str = ""  # persistence engine (sip), rarely used

    def __post_init__(self) -> None:
        flags = self.flags & ~F_HASHED
        object.__setattr__(self, "flags", flags)
        if not flags & F_PERSISTENT:
            object.__setattr__(self, "timeout", 0)
            object.__setattr__(self, "netmask", full_netmask(self.key.family))
        elif self.netmask < 0:
            object.__setattr__(self, "netmask", full_netmask(self.key.family))

    @property
    def persistent(self) -> bool:
        return bool(self.flags & F_PERSISTENT)

    @property
    def one_packet(self) -> bool:
        return bool(self.flags & F_ONEPACKET)

    @property
    def sched_flag_names(self) -> list[str]:
        names = sched_flag_names(self.scheduler)
        return [n for n, bit in zip(names, _FLAG_BITS, strict=True) if self.flags & bit]


@dataclass(frozen=True)
class Dest:
    """A destination (real server) of a service."""

    address: str  # canonical text
    port: int
    forward: Fwd = Fwd.ROUTE
    weight: int = 1
    upper: int = 0  # upper connection threshold, 0: none
    lower: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    @property
    def segment(self) -> str:
        return real_segment(self.address, self.port)

    def __str__(self) -> str:
        return endpoint_text(self.address, self.port)


DestKey = tuple[str, int]


@dataclass(frozen=True)
class VirtualServer:
    service: Service
    dests: Mapping[DestKey, Dest] = field(default_factory=dict)


class Table:
    """Services and their destinations, keyed by ServiceKey and (address, port)."""

    def __init__(self, entries: Iterable[VirtualServer] = ()) -> None:
        self._entries: dict[ServiceKey, VirtualServer] = {}
        for e in entries:
            self._entries[e.service.key] = e

    def add(self, service: Service, dests: Iterable[Dest] = ()) -> None:
        self._entries[service.key] = VirtualServer(service, {d.key: d for d in dests})

    def add_dest(self, key: ServiceKey, dest: Dest) -> None:
        entry = self._entries[key]
        self._entries[key] = VirtualServer(entry.service, {**entry.dests, dest.key: dest})

    def remove(self, key: ServiceKey) -> None:
        self._entries.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __getitem__(self, key: ServiceKey) -> VirtualServer:
        return self._entries[key]

    def get(self, key: ServiceKey) -> VirtualServer | None:
        return self._entries.get(key)

    def __iter__(self) -> Iterator[VirtualServer]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[ServiceKey]:
        return list(self._entries)

    def sorted(self) -> list[VirtualServer]:
        return [self._entries[k] for k in sorted(self._entries)]

    @property
    def dest_count(self) -> int:
        return sum(len(e.dests) for e in self._entries.values())

    def only(self, keys: Iterable[ServiceKey]) -> Table:
        """The part of this table with these services (others left out)."""
        return Table(self._entries[k] for k in keys if k in self._entries)

    def without_thresholds(self) -> Table:
        """Thresholds zeroed: what ipvsadm-save (1.31) shows, since it omits -x and -y."""
        return Table(
            VirtualServer(e.service, {k: replace(d, upper=0, lower=0) for k, d in e.dests.items()})
            for e in self._entries.values()
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Table):
            return NotImplemented
        if self._entries.keys() != other._entries.keys():
            return False
        return all(
            e.service == other._entries[k].service
            and dict(e.dests) == dict(other._entries[k].dests)
            for k, e in self._entries.items()
        )

    def __repr__(self) -> str:
        return f"Table({len(self)} services, {self.dest_count} destinations)"
