"""The reference setup (Heartbeat v1 + ldirectord, LVS-NAT) rebuilt in network namespaces.

::

    client 192.0.2.100 ─┐                      public bridge 192.0.2.0/24
    ping   192.0.2.1   ─┼─ eth0 node1/node2[/node3] (VIP 192.0.2.200 on the leader)
                        │
    rs1 198.51.100.12  ─┼─ eth1 node1/node2[/node3] (DIP 198.51.100.200 on the leader)
    rs2 198.51.100.6   ─┘                      private bridge 198.51.100.0/24
                                               (real servers route via the DIP)
    etcd 203.0.113.1   ─── eth2 node1/node2[/node3]
                                               control bridge 203.0.113.0/24

The seed's addresses are mapped onto documentation ranges, keeping the host
part: 192.168.1.0/24 -> 192.0.2.0/24 (public), 192.168.2.0/24 ->
198.51.100.0/24 (private). :data:`ADDRESS_MAP` lists every address the lab
uses next to the seed's, and :func:`map_seed_address` translates one.

Heartbeat sent its heartbeats over eth0; here the directors reach etcd over a
third link of their own (eth2, 203.0.113.0/24), so a test can cut one
director's link to etcd (:meth:`SeedTopology.cut_control`) without touching
the public or private network. The etcd namespace has no route to the other
networks.

Directors have IPv4 forwarding on (as the seed's ``ip_forward=1``) and
``promote_secondaries`` on, so that removing one address of a subnet never
takes the others with it. Each director has a fixed address of its own on
every network (.11/.12/.13 public and control; .201/.202/.203 private, since
the seed's rs1 already is .12 there). The VIP and the DIP are not configured
by the topology: holding them is the agent's job.

With ``ipv6=True`` every host also gets an address in 2001:db8:1::/64
(public) and 2001:db8:2::/64 (private), with the same host digits (the VIP
is 2001:db8:1::200, rs1 2001:db8:2::12), added
without duplicate address detection so the lab is ready at once; directors
forward IPv6 and the real servers route via the IPv6 DIP.

Bridges live in the run's switch namespace (see :mod:`etcdha.lab.netns`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from types import TracebackType

from etcdha.lab.netns import Topology

PUBLIC_BRIDGE = "br-pub"
PRIVATE_BRIDGE = "br-priv"
CONTROL_BRIDGE = "br-ctl"

PUBLIC_IF = "eth0"
PRIVATE_IF = "eth1"
CONTROL_IF = "eth2"

SEED_PUBLIC = ipaddress.IPv4Network("192.168.1.0/24")
SEED_PRIVATE = ipaddress.IPv4Network("192.168.2.0/24")
PUBLIC = ipaddress.IPv4Network("192.0.2.0/24")
PRIVATE = ipaddress.IPv4Network("198.51.100.0/24")
CONTROL = ipaddress.IPv4Network("203.0.113.0/24")
PUBLIC6 = ipaddress.IPv6Network("2001:db8:1::/64")
PRIVATE6 = ipaddress.IPv6Network("2001:db8:2::/64")

_NETS = {"public": PUBLIC, "private": PRIVATE, "control": CONTROL}
_NETS6 = {"public": PUBLIC6, "private": PRIVATE6}
_SEED_TO_LAB = {SEED_PUBLIC: PUBLIC, SEED_PRIVATE: PRIVATE}

# host numbers (the last part of each address)
VIP_HOST = 200
DIP_HOST = 200
PING_HOST = 1
CLIENT_HOST = 100
TIME_SERVER_HOST = 118
RS1_HOST = 12
RS2_HOST = 6
ETCD_HOST = 1
_DIRECTOR_HOSTS = {"public": 11, "private": 201, "control": 11}
MAX_NODES = 3


def _host(net: ipaddress.IPv4Network | ipaddress.IPv6Network, host: int) -> str:
    """Host ``host`` of ``net``; in IPv6 the digits are read as hex, so .200 is ::200."""
    if net.version == 6:
        return str(net.network_address + int(str(host), 16))
    return str(net.network_address + host)


@dataclass(frozen=True)
class AddressMapping:
    """One address of the lab next to the seed's (None where the seed has none)."""

    role: str
    seed: str | None
    lab: str
    lab6: str | None = None
    note: str = ""


def _director_rows(nodes: int) -> list[AddressMapping]:
    rows = []
    for i in range(nodes):
        name = f"node{i + 1}"
        for net in ("public", "private", "control"):
            ip = _host(_NETS[net], _DIRECTOR_HOSTS[net] + i)
            ip6 = _host(_NETS6[net], _DIRECTOR_HOSTS[net] + i) if net in _NETS6 else None
            rows.append(AddressMapping(f"{name} {net}", None, ip, ip6, "the director's own"))
    return rows


def address_map(nodes: int = 2) -> tuple[AddressMapping, ...]:
    """Every address of the lab with ``nodes`` directors, with the seed's equivalent."""
    return (
        AddressMapping("public network", str(SEED_PUBLIC), str(PUBLIC), str(PUBLIC6)),
        AddressMapping(
            "VIP",
            "192.168.1.200",
            _host(PUBLIC, VIP_HOST),
            _host(PUBLIC6, VIP_HOST),
            "held by the leader on eth0",
        ),
        AddressMapping(
            "ping node",
            "192.168.1.1",
            _host(PUBLIC, PING_HOST),
            _host(PUBLIC6, PING_HOST),
            "ha.cf ping",
        ),
        AddressMapping(
            "time server",
            "192.168.1.118",
            _host(PUBLIC, TIME_SERVER_HOST),
            None,
            "not built",
        ),
        AddressMapping("client", None, _host(PUBLIC, CLIENT_HOST), _host(PUBLIC6, CLIENT_HOST)),
        AddressMapping("private network", str(SEED_PRIVATE), str(PRIVATE), str(PRIVATE6)),
        AddressMapping(
            "DIP",
            "192.168.2.200",
            _host(PRIVATE, DIP_HOST),
            _host(PRIVATE6, DIP_HOST),
            "held by the leader on eth1; the real servers' gateway",
        ),
        AddressMapping("rs1", "192.168.2.12", _host(PRIVATE, RS1_HOST), _host(PRIVATE6, RS1_HOST)),
        AddressMapping("rs2", "192.168.2.6", _host(PRIVATE, RS2_HOST), _host(PRIVATE6, RS2_HOST)),
        AddressMapping(
            "control network", None, str(CONTROL), None, "directors to etcd only (eth2)"
        ),
        AddressMapping("etcd", None, _host(CONTROL, ETCD_HOST)),
        *_director_rows(nodes),
    )


ADDRESS_MAP: tuple[AddressMapping, ...] = address_map(MAX_NODES)


def map_seed_address(text: str) -> str:
    """A seed address (``192.168.1.200``, ``192.168.2.12:80``, ``192.168.1.200/24``)
    moved to the lab's range with the same host part; other text is returned as is."""
    host, sep, rest = text.partition("/")
    port = ""
    if not sep and host.count(":") == 1:
        host, port = host.split(":")
        port = ":" + port
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        return text
    for seed, lab in _SEED_TO_LAB.items():
        if ip in seed:
            mapped = lab.network_address + (int(ip) - int(seed.network_address))
            return f"{mapped}{port}" + (f"/{rest}" if sep else "")
    return text


def format_address_map(rows: tuple[AddressMapping, ...] = ADDRESS_MAP) -> str:
    """The mapping as an aligned text table."""
    table = [("role", "seed", "lab", "lab IPv6", "note")]
    table += [(r.role, r.seed or "-", r.lab, r.lab6 or "-", r.note) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in table
    ).rstrip()


@dataclass
class SeedTopology:
    """The built lab: namespaces by role, the addresses, and the cables to cut."""

    topology: Topology
    nodes: tuple[str, ...]
    ipv6: bool = False
    mapping: tuple[AddressMapping, ...] = field(default=())

    vip: str = _host(PUBLIC, VIP_HOST)
    dip: str = _host(PRIVATE, DIP_HOST)
    vip6: str = _host(PUBLIC6, VIP_HOST)
    dip6: str = _host(PRIVATE6, DIP_HOST)
    ping_node: str = _host(PUBLIC, PING_HOST)
    client: str = _host(PUBLIC, CLIENT_HOST)
    rs1: str = _host(PRIVATE, RS1_HOST)
    rs2: str = _host(PRIVATE, RS2_HOST)
    etcd: str = _host(CONTROL, ETCD_HOST)
    prefixlen: int = 24
    prefixlen6: int = 64

    @property
    def run_id(self) -> str:
        return self.topology.run_id

    def ns(self, role: str) -> str:
        """Full namespace name of a role: client, node1..3, rs1, rs2, ping, etcd."""
        return self.topology.ns(role)

    def node_address(self, node: str, net: str = "public", version: int = 4) -> str:
        """A director's own address on ``public``, ``private`` or ``control``."""
        index = self.nodes.index(node)
        nets = _NETS if version == 4 else _NETS6
        return _host(nets[net], _DIRECTOR_HOSTS[net] + index)

    def cut_control(self, node: str) -> None:
        """Cut ``node``'s link to etcd (its eth2 loses carrier; nothing else changes)."""
        self.topology.cut(node, CONTROL_IF)

    def restore_control(self, node: str) -> None:
        self.topology.restore(node, CONTROL_IF)

    def describe(self) -> str:
        """Namespaces and the address map, for printing."""
        roles = ["client", "ping", *self.nodes, "rs1", "rs2", "etcd"]
        lines = [f"seed topology, run {self.run_id}:"]
        lines += [f"  {role:<7} {self.ns(role)}" for role in roles]
        lines += [f"  {'switch':<7} {self.topology.switch} (bridges)", ""]
        return "\n".join(lines) + format_address_map(self.mapping)

    def close(self) -> None:
        self.topology.close()

    def __enter__(self) -> SeedTopology:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def build_seed_topology(
    *, run_id: str | None = None, nodes: int = 2, ipv6: bool = False, prefix: str = "eh"
) -> SeedTopology:
    """Build the seed's network in namespaces (blocking, a fraction of a second).

    Everything is removed again if building fails half-way; otherwise the
    caller closes the returned :class:`SeedTopology` (or uses it in ``with``).
    """
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"nodes must be 1..{MAX_NODES}, not {nodes}")
    topo = Topology(run_id=run_id, prefix=prefix) if run_id else Topology(prefix=prefix)
    names = tuple(f"node{i + 1}" for i in range(nodes))
    seed = SeedTopology(topo, names, ipv6=ipv6, mapping=address_map(nodes))
    try:
        _build(seed)
    except BaseException:
        topo.close()
        raise
    return seed


def _plug(seed: SeedTopology, name: str, ifname: str, bridge: str, net: str, host: int) -> None:
    topo = seed.topology
    topo.connect(name, ifname, bridge)
    topo.add_address(name, ifname, f"{_host(_NETS[net], host)}/{_NETS[net].prefixlen}")
    if seed.ipv6 and net in _NETS6:
        six = _NETS6[net]
        topo.add_address(name, ifname, f"{_host(six, host)}/{six.prefixlen}", nodad=True)


def _build(seed: SeedTopology) -> None:
    topo = seed.topology
    for bridge in (PUBLIC_BRIDGE, PRIVATE_BRIDGE, CONTROL_BRIDGE):
        topo.add_bridge(bridge)

    for index, node in enumerate(seed.nodes):
        topo.add_namespace(node)
        for key in (
            "net.ipv4.ip_forward",
            "net.ipv4.conf.all.promote_secondaries",
            "net.ipv4.conf.default.promote_secondaries",
        ):
            topo.sysctl(node, key, 1)
        if seed.ipv6:
            topo.sysctl(node, "net.ipv6.conf.all.forwarding", 1)
        for net, ifname, bridge in (
            ("public", PUBLIC_IF, PUBLIC_BRIDGE),
            ("private", PRIVATE_IF, PRIVATE_BRIDGE),
            ("control", CONTROL_IF, CONTROL_BRIDGE),
        ):
            _plug(seed, node, ifname, bridge, net, _DIRECTOR_HOSTS[net] + index)

    _plug(seed, "client", "eth0", PUBLIC_BRIDGE, "public", CLIENT_HOST)
    _plug(seed, "ping", "eth0", PUBLIC_BRIDGE, "public", PING_HOST)
    for rs, host in (("rs1", RS1_HOST), ("rs2", RS2_HOST)):
        _plug(seed, rs, "eth0", PRIVATE_BRIDGE, "private", host)
        topo.set_default_route(rs, seed.dip)
        if seed.ipv6:
            topo.set_default_route(rs, seed.dip6)
    _plug(seed, "etcd", "eth0", CONTROL_BRIDGE, "control", ETCD_HOST)
