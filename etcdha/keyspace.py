"""Keys of etcdha's keyspace in etcd: builders, a classifier and segment encodings.

Pure functions, no I/O. Every key lives under ``<prefix>/<cluster>/`` (prefix
``/etcdha`` and cluster ``default`` unless configured)::

    config
    members/<node>
    leader/<group>
    health/<checker>/<service>/<real>
    checkers/<checker>
    admin/standby/<node>
    admin/takeover/<group>
    admin/drain/<service>/<real>
    status/<group>/ipvs
    events/<event id>

Services and real servers are written as one path segment each (see
docs/keyspace.md)::

    tcp-192.0.2.200-80      udp-192.0.2.53-53      sctp-192.0.2.9-3868
    tcp-2001.db8..1-80      (IPv6: ':' written as '.', compressed form)
    fwm-1 / fwm6-1          (firewall-mark service, IPv4 / IPv6)
    192.0.2.12-80 / 2001.db8..5-80   (real servers)

Every encoder produces exactly one spelling per service or real, and every
parser accepts only that spelling, so equal services always share one key.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
import secrets
import time
from dataclasses import dataclass

__all__ = [
    "PROTOCOLS",
    "KeyKind",
    "Keyspace",
    "ParsedKey",
    "RealId",
    "ServiceId",
    "canonical_address",
    "event_id_time_ns",
    "fwmark_segment",
    "is_valid_name",
    "new_event_id",
    "parse_real_segment",
    "parse_service_segment",
    "real_segment",
    "service_segment",
    "validate_name",
]

NAME_MAX = 253
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_PREFIX_RE = re.compile(r"(/[A-Za-z0-9._-]+)+\Z")
_EVENT_ID_RE = re.compile(r"(\d{20})-([0-9a-f]{8})\Z")
_DECIMAL_RE = re.compile(r"(0|[1-9][0-9]*)\Z")

PROTOCOLS = ("tcp", "udp", "sctp")
FWMARK_MAX = 2**32 - 1


# ---------------------------------------------------------------------------
# names


def is_valid_name(name: str) -> bool:
    """True for a node, group, checker or cluster name: ``[A-Za-z0-9][A-Za-z0-9._-]*``."""
    return isinstance(name, str) and len(name) <= NAME_MAX and bool(_NAME_RE.match(name))


def validate_name(name: str, what: str = "name") -> str:
    """Return ``name`` if valid, else raise ValueError naming ``what`` it was meant to be."""
    if not is_valid_name(name):
        raise ValueError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-', starting with"
            f" a letter or digit, at most {NAME_MAX} characters (no '/')"
        )
    return name


# ---------------------------------------------------------------------------
# addresses, services, reals


def _ipv6_compressed(addr: ipaddress.IPv6Address) -> str:
    """RFC 5952 compressed hex form, always hexadecimal (no dotted IPv4 tail)."""
    groups = [format(int(g, 16), "x") for g in addr.exploded.split(":")]
    best_start, best_len, start = -1, 0, -1
    for i, g in enumerate([*groups, "end"]):
        if g == "0":
            if start < 0:
                start = i
        else:
            if start >= 0 and i - start > best_len:
                best_start, best_len = start, i - start
            start = -1
    if best_len < 2:
        return ":".join(groups)
    head = ":".join(groups[:best_start])
    tail = ":".join(groups[best_start + best_len :])
    return f"{head}::{tail}"


def canonical_address(address: str) -> tuple[str, int]:
    """Canonical text of an IP address and its family (4 or 6).

    IPv6 is written compressed and in hex (``2001:db8::1``, ``::ffff:c000:201``).
    Raises ValueError for anything else (names, zone ids, prefixes).
    """
    if not isinstance(address, str) or "%" in address or "/" in address:
        raise ValueError(f"not an IP address: {address!r}")
    try:
        ip = ipaddress.ip_address(address.strip("[]") if address.startswith("[") else address)
    except ValueError:
        raise ValueError(f"not an IP address: {address!r}") from None
    if isinstance(ip, ipaddress.IPv6Address):
        return _ipv6_compressed(ip), 6
    return str(ip), 4


def _address_segment(address: str) -> str:
    text, _family = canonical_address(address)
    return text.replace(":", ".")


def _parse_address_segment(text: str) -> tuple[str, int]:
    """Inverse of _address_segment; only the canonical spelling is accepted."""
    if not text:
        raise ValueError("empty address")
    if text.count(".") == 3 and ".." not in text:
        try:
            return str(ipaddress.IPv4Address(text)), 4
        except ValueError:
            pass
        if all(_DECIMAL_RE.match(p) for p in text.split(".")):
            raise ValueError(f"not an IPv4 address: {text!r}")
    try:
        ip = ipaddress.IPv6Address(text.replace(".", ":"))
    except ValueError:
        raise ValueError(f"not an encoded IP address: {text!r}") from None
    canonical = _ipv6_compressed(ip)
    if canonical.replace(":", ".") != text:
        raise ValueError(f"address {text!r} is not in canonical form {canonical!r}")
    return canonical, 6


def _port(port: int, what: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"invalid {what} {port!r}: must be 0-65535")
    return port


def _parse_port(text: str) -> int:
    if not _DECIMAL_RE.match(text):
        raise ValueError(f"invalid port {text!r}")
    return _port(int(text))


@dataclass(frozen=True)
class ServiceId:
    """A virtual service: ``proto`` tcp/udp/sctp with address and port, or ``fwm`` with a mark."""

    proto: str
    address: str = ""
    port: int = 0
    fwmark: int = 0
    family: int = 4

    @property
    def segment(self) -> str:
        if self.proto == "fwm":
            return fwmark_segment(self.fwmark, self.family)
        return service_segment(self.proto, self.address, self.port)

    def __str__(self) -> str:
        return self.segment


@dataclass(frozen=True)
class RealId:
    """A real server: address and port (0 = the service's port)."""

    address: str
    port: int
    family: int = 4

    @property
    def segment(self) -> str:
        return real_segment(self.address, self.port)

    def __str__(self) -> str:
        return self.segment


def service_segment(proto: str, address: str, port: int) -> str:
    """``tcp-192.0.2.200-80``, ``udp-...``, ``sctp-...``, IPv6 ``tcp-2001.db8..1-80``."""
    p = proto.lower() if isinstance(proto, str) else proto
    if p not in PROTOCOLS:
        raise ValueError(f"invalid protocol {proto!r}: use one of {', '.join(PROTOCOLS)}")
    return f"{p}-{_address_segment(address)}-{_port(port)}"


def fwmark_segment(mark: int, family: int = 4) -> str:
    """``fwm-1`` for an IPv4 firewall-mark service, ``fwm6-1`` for an IPv6 one."""
    if isinstance(mark, bool) or not isinstance(mark, int) or not 1 <= mark <= FWMARK_MAX:
        raise ValueError(f"invalid firewall mark {mark!r}: must be 1-{FWMARK_MAX}")
    if family not in (4, 6):
        raise ValueError(f"invalid address family {family!r}: must be 4 or 6")
    return f"fwm-{mark}" if family == 4 else f"fwm6-{mark}"


def real_segment(address: str, port: int) -> str:
    """``192.0.2.12-80``, IPv6 ``2001.db8..5-80``."""
    return f"{_address_segment(address)}-{_port(port)}"


def parse_service_segment(segment: str) -> ServiceId:
    """Inverse of :func:`service_segment` and :func:`fwmark_segment`; ValueError if malformed."""
    parts = segment.split("-")
    if len(parts) == 2 and parts[0] in ("fwm", "fwm6"):
        if not _DECIMAL_RE.match(parts[1]) or not 1 <= int(parts[1]) <= FWMARK_MAX:
            raise ValueError(f"invalid firewall mark in service {segment!r}")
        return ServiceId("fwm", fwmark=int(parts[1]), family=4 if parts[0] == "fwm" else 6)
    if len(parts) != 3 or parts[0] not in PROTOCOLS:
        raise ValueError(
            f"invalid service {segment!r}: expected <tcp|udp|sctp>-<address>-<port> or fwm-<mark>"
        )
    try:
        address, family = _parse_address_segment(parts[1])
        port = _parse_port(parts[2])
    except ValueError as exc:
        raise ValueError(f"invalid service {segment!r}: {exc}") from None
    return ServiceId(parts[0], address=address, port=port, family=family)


def parse_real_segment(segment: str) -> RealId:
    """Inverse of :func:`real_segment`; ValueError if malformed."""
    parts = segment.split("-")
    if len(parts) != 2:
        raise ValueError(f"invalid real server {segment!r}: expected <address>-<port>")
    try:
        address, family = _parse_address_segment(parts[0])
        port = _parse_port(parts[1])
    except ValueError as exc:
        raise ValueError(f"invalid real server {segment!r}: {exc}") from None
    return RealId(address, port, family)


def _service_text(service: str | ServiceId) -> str:
    if isinstance(service, ServiceId):
        return service.segment
    parse_service_segment(service)
    return service


def _real_text(real: str | RealId) -> str:
    if isinstance(real, RealId):
        return real.segment
    parse_real_segment(real)
    return real


# ---------------------------------------------------------------------------
# events


def new_event_id(now_ns: int | None = None) -> str:
    """A time-ordered id: 20-digit wall-clock nanoseconds, '-', 8 random hex digits.

    Ids sort lexicographically in time order (to the clock of whoever wrote them).
    """
    ns = time.time_ns() if now_ns is None else now_ns
    if ns < 0 or ns >= 10**20:
        raise ValueError("timestamp out of range")
    return f"{ns:020d}-{secrets.token_hex(4)}"


def event_id_time_ns(event_id: str) -> int | None:
    """The timestamp inside an id made by :func:`new_event_id`, or None for other ids."""
    m = _EVENT_ID_RE.match(event_id)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# keys


class KeyKind(enum.StrEnum):
    CONFIG = "config"
    MEMBER = "member"
    LEADER = "leader"
    HEALTH = "health"
    STANDBY = "standby"
    TAKEOVER = "takeover"
    DRAIN = "drain"
    STATUS_IPVS = "status_ipvs"
    EVENT = "event"
    CHECKER = "checker"
    FENCE = "fence"


@dataclass(frozen=True)
class ParsedKey:
    """A classified key. ``parts`` by kind:

    config: (); member, standby, fence: (node,); leader, takeover, status_ipvs: (group,);
    health: (checker, service, real); drain: (service, real); event: (event_id,);
    checker: (checker,).
    Services and reals stay as segments; :attr:`service` and :attr:`real` parse them.
    """

    kind: KeyKind
    parts: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The node, group, checker or event id the key is about ('' for config)."""
        return self.parts[0] if self.parts and self.kind != KeyKind.DRAIN else ""

    @property
    def service(self) -> ServiceId | None:
        if self.kind == KeyKind.HEALTH:
            return parse_service_segment(self.parts[1])
        if self.kind == KeyKind.DRAIN:
            return parse_service_segment(self.parts[0])
        return None

    @property
    def real(self) -> RealId | None:
        if self.kind == KeyKind.HEALTH:
            return parse_real_segment(self.parts[2])
        if self.kind == KeyKind.DRAIN:
            return parse_real_segment(self.parts[1])
        return None


# Keys made only of fixed words and names ("*"), in the order classify() tries them.
_NAMED_KEYS: tuple[tuple[tuple[str, ...], KeyKind], ...] = (
    (("config",), KeyKind.CONFIG),
    (("members", "*"), KeyKind.MEMBER),
    (("leader", "*"), KeyKind.LEADER),
    (("fence", "*"), KeyKind.FENCE),
    (("events", "*"), KeyKind.EVENT),
    (("checkers", "*"), KeyKind.CHECKER),
    (("status", "*", "ipvs"), KeyKind.STATUS_IPVS),
    (("admin", "standby", "*"), KeyKind.STANDBY),
    (("admin", "takeover", "*"), KeyKind.TAKEOVER),
)


class Keyspace:
    """Key builders for one cluster: ``Keyspace("/etcdha", "default").leader("lvs")``."""

    def __init__(self, prefix: str = "/etcdha", cluster: str = "default") -> None:
        if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
            raise ValueError(
                f"invalid key prefix {prefix!r}: it starts with '/', has no empty segment"
                " and no trailing '/' (e.g. /etcdha)"
            )
        if any(seg in (".", "..") for seg in prefix.split("/")):
            raise ValueError(f"invalid key prefix {prefix!r}: '.' and '..' are not segments")
        self.prefix = prefix
        self.cluster = validate_name(cluster, "cluster name")
        self.root = f"{prefix}/{cluster}/"

    def __repr__(self) -> str:
        return f"Keyspace(prefix={self.prefix!r}, cluster={self.cluster!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keyspace) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # -- keys and prefixes

    def config(self) -> str:
        return f"{self.root}config"

    def members_prefix(self) -> str:
        return f"{self.root}members/"

    def member(self, node: str) -> str:
        return self.members_prefix() + validate_name(node, "node name")

    def leaders_prefix(self) -> str:
        return f"{self.root}leader/"

    def leader(self, group: str) -> str:
        return self.leaders_prefix() + validate_name(group, "group name")

    def fences_prefix(self) -> str:
        return f"{self.root}fence/"

    def fence(self, node: str) -> str:
        """The groups whose addresses a node may hold (see docs/keyspace.md)."""
        return self.fences_prefix() + validate_name(node, "node name")

    def health_prefix(self, checker: str | None = None) -> str:
        """All health keys, or those of one checker (a prefix RBAC can grant)."""
        base = f"{self.root}health/"
        return base if checker is None else f"{base}{validate_name(checker, 'checker name')}/"

    def health(self, checker: str, service: str | ServiceId, real: str | RealId) -> str:
        return f"{self.health_prefix(checker)}{_service_text(service)}/{_real_text(real)}"

    def checkers_prefix(self) -> str:
        return f"{self.root}checkers/"

    def checker(self, name: str) -> str:
        """Who holds a checker name: one live checker per name (see docs/keyspace.md)."""
        return self.checkers_prefix() + validate_name(name, "checker name")

    def admin_prefix(self) -> str:
        return f"{self.root}admin/"

    def standby_prefix(self) -> str:
        return f"{self.root}admin/standby/"

    def standby(self, node: str) -> str:
        return self.standby_prefix() + validate_name(node, "node name")

    def takeover_prefix(self) -> str:
        return f"{self.root}admin/takeover/"

    def takeover(self, group: str) -> str:
        return self.takeover_prefix() + validate_name(group, "group name")

    def drain_prefix(self) -> str:
        return f"{self.root}admin/drain/"

    def drain(self, service: str | ServiceId, real: str | RealId) -> str:
        return f"{self.drain_prefix()}{_service_text(service)}/{_real_text(real)}"

    def status_prefix(self) -> str:
        return f"{self.root}status/"

    def status_ipvs(self, group: str) -> str:
        return f"{self.status_prefix()}{validate_name(group, 'group name')}/ipvs"

    def events_prefix(self) -> str:
        return f"{self.root}events/"

    def event(self, event_id: str) -> str:
        return self.events_prefix() + validate_name(event_id, "event id")

    def new_event(self, now_ns: int | None = None) -> str:
        """The key of a new event with a fresh time-ordered id."""
        return self.event(new_event_id(now_ns))

    # -- classification

    def classify(self, key: str | bytes) -> ParsedKey | None:
        """What ``key`` is, or None for keys outside this cluster, unknown or malformed."""
        if isinstance(key, bytes):
            try:
                key = key.decode("utf-8")
            except UnicodeDecodeError:
                return None
        if not key.startswith(self.root):
            return None
        head, *rest = key[len(self.root) :].split("/")
        if head == "health":  # first: most keys are verdicts (no named key starts so)
            if len(rest) == 3 and is_valid_name(rest[0]) and _valid_service_real(rest[1], rest[2]):
                return ParsedKey(KeyKind.HEALTH, (rest[0], rest[1], rest[2]))
            return None
        segs = (head, *rest)
        for pattern, kind in _NAMED_KEYS:
            if len(pattern) == len(segs) and all(
                p == s or (p == "*" and is_valid_name(s))
                for p, s in zip(pattern, segs, strict=True)
            ):
                return ParsedKey(
                    kind, tuple(s for p, s in zip(pattern, segs, strict=True) if p == "*")
                )
        if segs[:2] == ("admin", "drain") and len(segs) == 4:
            service, real = segs[2], segs[3]
            if _valid_service_real(service, real):
                return ParsedKey(KeyKind.DRAIN, (service, real))
        return None


@functools.lru_cache(maxsize=1 << 17)
def _valid_service_real(service: str, real: str) -> bool:
    # Cached: an agent classifies every health key its watch brings (one per
    # real and checker), and parsing both addresses costs about 40 us.
    try:
        parse_service_segment(service)
        parse_real_segment(real)
    except ValueError:
        return False
    return True
