"""The cluster spec: one validated description of a cluster, stored in etcd.

Field names are the YAML keys. Defaults follow ldirectord (Debian 12) and
Heartbeat v1 where they have one; docs/spec.md lists each and its origin.
Cross-field rules live in `ClusterSpec.check`, which returns warnings and
raises for errors, always naming the field path and the reason.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from etcdha.spec_types import (
    NAME_RE,
    Duration,
    Endpoint,
    HostAddress,
    InterfaceAddress,
    RealAddress,
    expand_real,
    format_duration,
    split_host_port,
)

SCHEMA_VERSION: Final = 1
MIN_LEASE_TTL = 2.0  # etcd refuses shorter leases with its default timings

Name = Annotated[str, Field(pattern=NAME_RE)]

# ldirectord's ld_port_to_service(): the check a virtual service on this port
# gets when its configuration names no `service` (any other port: none).
LDIRECTORD_PORT_SERVICES: Final[dict[int, str]] = {
    21: "ftp",
    25: "smtp",
    53: "dns",
    80: "http",
    110: "pop",
    119: "nntp",
    143: "imap",
    389: "ldap",
    443: "https",
    587: "submission",
    993: "imaps",
    995: "pops",
    1521: "oracle",
    1812: "radius",
    3128: "http_proxy",
    3306: "mysql",
    5060: "sip",
    5432: "pgsql",
}


def default_check_service(port: int | None) -> str:
    """The check service ldirectord gives a virtual service on `port` (None: fwmark)."""
    return LDIRECTORD_PORT_SERVICES.get(port, "none") if port else "none"


def default_protocol(port: int | None) -> Protocol:
    """ldirectord makes a virtual service on port 53 UDP unless told otherwise."""
    return Protocol.udp if port == 53 else Protocol.tcp


def _rebuild(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its keys in the model's field order."""
    return {k: data[k] for k in model.model_fields if k in data}


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Forward(StrEnum):
    gate = "gate"  # direct routing
    masq = "masq"  # NAT
    ipip = "ipip"  # tunnel


class Protocol(StrEnum):
    tcp = "tcp"
    udp = "udp"
    sctp = "sctp"


class CheckType(StrEnum):
    negotiate = "negotiate"
    connect = "connect"
    ping = "ping"
    external = "external"
    on = "on"
    off = "off"


class HealthPolicy(StrEnum):
    leader = "leader"
    majority = "majority"
    all = "all"
    any = "any"


class EtcdUnreachable(StrEnum):
    drop = "drop"
    failsafe = "failsafe"


class Node(Model):
    name: Name
    interfaces: dict[str, str] = Field(
        default_factory=dict,
        description="per-node interface overrides: address resource (ip/prefix) -> interface; "
        "'sync' -> the IPVS sync daemon's interface",
    )
    peer: Endpoint | None = Field(
        None,
        description="ip:port where the other directors reach this node's agent over mutual "
        "TLS (failsafe confirmations); required by etcd_unreachable: failsafe",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data


class Election(Model):
    lease_ttl: Duration = Field(
        10.0, description="leader lease TTL (Heartbeat's deadtime); at least 2s"
    )
    keepalive_interval: Duration = Field(
        2.0, description="lease keepalive period (Heartbeat's keepalive); at most lease_ttl / 3"
    )
    fence_margin: Duration = Field(
        0.5, description="addresses are dropped this long before the lease could expire"
    )
    auto_failback: bool = Field(True, description="the most-preferred eligible node leads")
    failback_delay: Duration = Field(
        0.0, description="a returning preferred node waits this long, eligible, before taking over"
    )
    ping_nodes: list[HostAddress] = Field(
        default_factory=list,
        description="at least one must answer ICMP echo for a node to be eligible",
    )
    ping_interval: Duration = 1.0
    ping_timeout: Duration = 1.0
    ping_failures: PositiveInt = Field(
        3, description="consecutive unanswered rounds before a node loses eligibility"
    )
    audit_interval: Duration = Field(
        2.0, description="how often the leader checks that its addresses are still there"
    )
    etcd_unreachable: EtcdUnreachable = Field(
        EtcdUnreachable.drop,
        description="drop: give up addresses at the fencing deadline; failsafe: keep them "
        "while every other director confirms it cannot reach etcd either",
    )


class Announce(Model):
    """Gratuitous ARP / unsolicited neighbour advertisement after taking an address."""

    count: PositiveInt = 5
    interval: Duration = 0.2
    repeat_every: Duration = Field(
        0.0, description="re-announce held addresses this often (0: only on takeover)"
    )


class Notify(Model):
    """Hooks run on each leadership change of a group, like keepalived's notify."""

    commands: list[str] = Field(
        default_factory=list,
        description="executables called in order, one at a time, as "
        "`command GROUP STATE REASON` (STATE: leader, backup, fault)",
    )
    timeout: Duration = Field(10.0, description="a hook still running then is killed")

    @field_validator("commands")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        for c in v:
            if not c.startswith("/"):
                raise ValueError(f"{c!r} is not an absolute path")
        return v


class AddressResource(Model):
    type: Literal["address"] = "address"
    address: InterfaceAddress
    interface: str | None = Field(
        None, description="default: the interface whose subnet contains the address, per node"
    )
    label: str | None = None
    dad: bool = Field(
        False,
        description="IPv6: run duplicate address detection before using the address "
        "(a takeover then waits for it; keepalived skips it too)",
    )


class SyncDaemon(Model):
    """The kernel's IPVS connection sync daemon (ipvsadm --start-daemon)."""

    interface: str = Field(
        description="where sync messages go (multicast 224.0.0.81), usually the link "
        "between the directors; a node's own name for it can be given in its "
        "interfaces: under the key 'sync'"
    )
    syncid: int = Field(
        0, ge=0, le=255, description="tells this cluster's sync messages from others' (0-255)"
    )


class IPVSResource(Model):
    type: Literal["ipvs"] = "ipvs"
    warm_copy: bool = Field(
        True,
        description="standbys keep the same table in their kernel, so a takeover only "
        "moves addresses; false: only the leader has it (standbys delete it)",
    )
    sync_daemon: SyncDaemon | None = Field(
        None,
        description="run the connection sync daemon, so established connections survive a "
        "failover: a director runs the master while it leads any group that has one, and the "
        "backup while any such group is led by another node (or by none), both at once when "
        "it leads one group and stands by for another; every group's sync_daemon must name "
        "the same interface and syncid, since the kernel runs one of each for all groups",
    )
    manage_sysctls: bool = Field(
        False,
        description="set the kernel settings the services need (ip_forward for masq, "
        "expire_nodest_conn, expire_quiescent_template); false: only report them",
    )


class ScriptResource(Model):
    """A Heartbeat-style resource script, called as `path [args...] start|stop|status`."""

    type: Literal["script"] = "script"
    path: str
    args: list[str] = Field(default_factory=list)
    timeout: Duration = 30.0

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"{v!r} is not an absolute path")
        return v


Resource = Annotated[AddressResource | IPVSResource | ScriptResource, Field(discriminator="type")]


def resource_type_of(data: Any) -> str | None:
    """A resource's type, written or inferred from its fields (`address:` -> address)."""
    if not isinstance(data, dict):
        return None
    if "type" in data:
        return str(data["type"])
    for key, kind in (("address", "address"), ("path", "script"), ("ipvs", "ipvs")):
        if key in data:
            return kind
    return None


class Group(Model):
    name: Name
    node: Name = Field(description="the preferred node (haresources' first field)")
    resources: list[Resource] = Field(
        default_factory=list,
        description="started in this order, stopped in reverse; `type` may be left out "
        "when the fields say it (address:, path:, or the bare string 'ipvs')",
    )

    @field_validator("resources", mode="before")
    @classmethod
    def _infer_types(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            if item == "ipvs":
                item = {"type": "ipvs"}
            elif isinstance(item, dict) and "type" not in item:
                kind = resource_type_of(item)
                if kind == "ipvs":
                    item = {k: v for k, v in item.items() if k != "ipvs"}
                item = {"type": kind, **item} if kind else item
            out.append(item)
        return out


class Check(Model):
    type: CheckType = Field(CheckType.negotiate, description="ldirectord's checktype")
    negotiate_every: PositiveInt = Field(
        1, description="ldirectord's checktype=N: negotiate every Nth check, connect otherwise"
    )
    service: str = Field(
        "none",
        description="what negotiate speaks: http, https, tcp (send/expect), dns, none, or the "
        "name of an external check (mysql, pgsql, smtp, ldap, ...)",
    )
    request: str | None = Field(
        None,
        description="HTTP path, tcp payload, or DNS name; unset: '/' for HTTP and nothing "
        "for the others (ldirectord's default request '/', which its non-HTTP checks strip)",
    )
    receive: str | None = Field(
        None, description="regular expression (Python syntax); unset: any answer passes"
    )
    http_method: Literal["GET", "HEAD"] = Field("GET", description="ldirectord's default")
    virtualhost: str | None = Field(
        None, description="HTTP Host header; unset: the real's address (as ldirectord)"
    )
    expected_status: list[int] = Field(
        default_factory=list, description="HTTP statuses that pass (default: any 2xx)"
    )
    dns_type: str = Field("A", description="ldirectord's DNS check asks for A records")
    verify_tls: bool = Field(False, description="ldirectord does not verify certificates")
    port: int | None = Field(None, ge=1, le=65535, description="probe this port, not the real's")
    command: str | None = Field(None, description="external check, a file in the checks dir")
    dynamic_weight: bool = Field(
        False,
        description="external checks: keepalived's misc_dynamic: exit 0 up, 1 down, 2-255 up "
        "with weight exit code - 2 (off: every non-zero exit is down, as ldirectord)",
    )
    login: str | None = None
    password: str | None = None
    database: str | None = None
    secret: str | None = None
    interval: Duration = Field(10.0, description="ldirectord's checkinterval (default 10)")
    timeout: Duration = Field(
        5.0,
        description="connect, ping and external checks (ldirectord's checktimeout); unset: "
        "negotiate_timeout when that is set, else 5s, as ldirectord",
    )
    negotiate_timeout: Duration = Field(
        30.0,
        description="negotiate checks (ldirectord's negotiatetimeout); unset: timeout when "
        "that is set, else 30s, as ldirectord",
    )
    failure_count: PositiveInt = Field(1, description="ldirectord's failurecount (default 1)")
    rise_count: PositiveInt = Field(
        1, description="successes that mark a real up (ldirectord: one)"
    )
    checkcount: PositiveInt = Field(1, description="ping attempts per check (ldirectord)")

    @model_validator(mode="before")
    @classmethod
    def _mutual_timeouts(cls, data: Any) -> Any:
        # ldirectord's ld_setup(): checktimeout and negotiatetimeout are each
        # other's default; the built-in 5s and 30s apply only when both are unset.
        if isinstance(data, dict):
            if "timeout" in data and "negotiate_timeout" not in data:
                data = {**data, "negotiate_timeout": data["timeout"]}
            elif "negotiate_timeout" in data and "timeout" not in data:
                data = {**data, "timeout": data["negotiate_timeout"]}
        return data

    @model_serializer(mode="wrap")
    def _keep_mutual_timeouts(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        # With defaults left out, a timeout equal to its built-in default would be
        # dropped and then read back as the other one: write it when that differs.
        data: dict[str, Any] = handler(self)
        if info.exclude_defaults and self.timeout != self.negotiate_timeout:
            if "timeout" in data and "negotiate_timeout" not in data:
                data["negotiate_timeout"] = format_duration(self.negotiate_timeout)
            elif "negotiate_timeout" in data and "timeout" not in data:
                data["timeout"] = format_duration(self.timeout)
            data = _rebuild(Check, data)
        return data

    @field_validator("receive")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            import re

            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"{v!r} is not a valid regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _command(self) -> Check:
        if self.type is CheckType.external and not self.command:
            raise ValueError("an external check needs 'command' (a script in the checks dir)")
        if self.command and "/" in self.command:
            raise ValueError(
                f"command {self.command!r} must be a file name in the checks directory, "
                "not a path (copy the script there)"
            )
        return self


class Real(Model):
    address: RealAddress
    forward: Forward = Field(Forward.gate, description="ipvsadm's default (-g)")
    weight: int = Field(1, ge=0, le=2**31 - 1, description="ldirectord's default")
    upper_threshold: int = Field(0, ge=0, description="0: no limit")
    lower_threshold: int = Field(0, ge=0)
    request: str | None = Field(None, description="overrides the check's request for this real")
    receive: str | None = None


class Fallback(Model):
    address: RealAddress
    forward: Forward = Field(Forward.gate, description="ldirectord's default")
    weight: int = Field(1, ge=0, description="ldirectord adds the fallback with weight 1")


class Persistence(Model):
    timeout: Duration = Field(300.0, description="ipvsadm's -p default")
    netmask: str | None = Field(
        None,
        description="IPv4 dotted netmask, or an IPv6 prefix length (ipvsadm's -M); unset: "
        "the kernel's default, one client address (/32, /128)",
    )


class VirtualService(Model):
    address: Endpoint | None = Field(None, description="VIP:port; omit for fwmark services")
    fwmark: int | None = Field(None, ge=1, le=2**32 - 1)
    family: Literal["inet", "inet6"] | None = Field(
        None, description="fwmark services only: address family (default inet)"
    )
    protocol: Protocol = Field(
        Protocol.tcp, description="unset: udp on port 53, else tcp (as ldirectord)"
    )
    group: Name | None = Field(
        None, description="the resource group whose ipvs resource carries it"
    )
    scheduler: str = Field("wrr", description="ldirectord's default scheduler")
    scheduler_flags: list[str] = Field(default_factory=list)
    one_packet: bool = Field(
        False, description="UDP one-packet scheduling (ipvsadm -o, ldirectord's ops=yes)"
    )
    persistence: Persistence | None = None
    quiescent: bool = Field(
        False,
        description="a down real keeps weight 0 instead of being removed; default no, as "
        "ldirectord's code does (its manual says yes)",
    )
    fallback: Fallback | None = None
    fallback_command: str | None = Field(
        None,
        min_length=1,
        description="shell command run with 'start' appended when every real is down and "
        "'stop' when one is up again (ldirectord's fallbackcommand)",
    )
    health_policy: HealthPolicy | None = None
    check: Check = Field(
        default_factory=Check,
        description="unset check.service: chosen by the port as ldirectord does (80 http, "
        "443 https, 53 dns, ...; none for other ports and fwmark services)",
    )
    reals: list[Real] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _ldirectord_defaults(cls, data: Any) -> Any:
        # ldirectord picks the protocol (udp on port 53) and the check's service
        # (by port) when its configuration names neither; so does the spec.
        if not isinstance(data, dict):
            return data
        port = _port_of(data.get("address"))
        out = dict(data)
        if "protocol" not in out and port == 53:
            out["protocol"] = Protocol.udp.value
        service = default_check_service(port)
        check = out.get("check", {})
        if isinstance(check, dict) and "service" not in check and service != "none":
            out["check"] = {**check, "service": service}
        elif isinstance(check, Check) and "service" not in check.model_fields_set:
            out["check"] = check.model_copy(update={"service": service})
        return out

    @model_serializer(mode="wrap")
    def _keep_derived_defaults(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        # With defaults left out, a value equal to the static default but not to
        # the port's derived default would read back differently: write it.
        data: dict[str, Any] = handler(self)
        if not info.exclude_defaults:
            return data
        port = _port_of(self.address)
        if "protocol" not in data and self.protocol is not default_protocol(port):
            data["protocol"] = self.protocol.value if info.mode_is_json() else self.protocol
        if self.check.service != default_check_service(port):
            check = data.get("check")
            if not isinstance(check, dict):
                check = {}
            if "service" not in check:
                data["check"] = _rebuild(Check, {**check, "service": self.check.service})
        return _rebuild(VirtualService, data)

    @model_validator(mode="after")
    def _address_or_fwmark(self) -> VirtualService:
        if (self.address is None) == (self.fwmark is None):
            raise ValueError("give exactly one of 'address' (ip:port) or 'fwmark'")
        if self.address is not None and self.family is not None:
            raise ValueError("'family' is for fwmark services; an address says its own")
        return self

    @property
    def ip_family(self) -> int:
        if self.address is not None:
            return split_host_port(self.address)[0].version
        return 6 if self.family == "inet6" else 4

    @property
    def port(self) -> int | None:
        """The virtual port; None for fwmark services."""
        return _port_of(self.address)

    @property
    def label(self) -> str:
        if self.fwmark is not None:
            return f"fwmark {self.fwmark}"
        return f"{self.protocol.value} {self.address}"


def _port_of(address: Any) -> int | None:
    if not isinstance(address, str):
        return None
    try:
        return split_host_port(address)[1]
    except ValueError:
        return None


class ClusterSpec(Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    nodes: list[Node] = Field(min_length=1, description="in order of preference")
    election: Election = Field(default_factory=Election)
    announce: Announce = Field(default_factory=Announce)
    notify: Notify = Field(default_factory=Notify)
    health_policy: HealthPolicy = HealthPolicy.leader
    groups: list[Group] = Field(default_factory=list)
    virtual_services: list[VirtualService] = Field(default_factory=list)

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def group_of(self, vs: VirtualService) -> Group | None:
        if vs.group is not None:
            return next((g for g in self.groups if g.name == vs.group), None)
        carriers = [g for g in self.groups if any(r.type == "ipvs" for r in g.resources)]
        return carriers[0] if len(carriers) == 1 else None

    def check(self) -> list[tuple[str, str]]:
        """Cross-field rules: raise SpecError for errors, return (path, warning)s."""
        errors: list[tuple[str, str]] = []
        warnings: list[tuple[str, str]] = []
        self._check_names(errors)
        self._check_election(errors)
        self._check_groups(errors)
        self._check_services(errors, warnings)
        if errors:
            raise SpecError(errors)
        return warnings

    def _check_names(self, errors: list[tuple[str, str]]) -> None:
        seen: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            if node.name in seen:
                errors.append(
                    (f"nodes[{i}].name", f"{node.name!r} is already nodes[{seen[node.name]}]")
                )
            seen.setdefault(node.name, i)
        groups: dict[str, int] = {}
        for i, g in enumerate(self.groups):
            if g.name in groups:
                errors.append(
                    (f"groups[{i}].name", f"{g.name!r} is already groups[{groups[g.name]}]")
                )
            groups.setdefault(g.name, i)
            if g.node not in seen:
                errors.append((f"groups[{i}].node", f"{g.node!r} is not one of the nodes"))

    def _check_election(self, errors: list[tuple[str, str]]) -> None:
        e = self.election
        if e.etcd_unreachable is EtcdUnreachable.failsafe:
            for i, node in enumerate(self.nodes):
                if node.peer is None:
                    errors.append(
                        (
                            f"nodes[{i}].peer",
                            f"{node.name} needs a peer address (ip:port): under "
                            "etcd_unreachable: failsafe the directors confirm to each other",
                        )
                    )
        if e.lease_ttl < MIN_LEASE_TTL:
            errors.append(
                (
                    "election.lease_ttl",
                    f"{format_duration(e.lease_ttl)} is below etcd's minimum lease TTL of 2s",
                )
            )
        if e.keepalive_interval <= 0 or e.keepalive_interval > e.lease_ttl / 3:
            errors.append(
                (
                    "election.keepalive_interval",
                    f"{format_duration(e.keepalive_interval)} must be above 0 and at most "
                    f"lease_ttl / 3 ({format_duration(round(e.lease_ttl / 3, 3))}), so that "
                    "two keepalives can be lost before the lease expires",
                )
            )
        if not 0 < e.fence_margin < e.lease_ttl - e.keepalive_interval:
            errors.append(
                (
                    "election.fence_margin",
                    f"{format_duration(e.fence_margin)} must be above 0 and below lease_ttl - "
                    "keepalive_interval, or the leader would fence itself between renewals",
                )
            )

    def _check_groups(self, errors: list[tuple[str, str]]) -> None:
        owners: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}
        sync: tuple[str, SyncDaemon] | None = None  # the first group's sync daemon
        for gi, g in enumerate(self.groups):
            ipvs = 0
            for ri, r in enumerate(g.resources):
                where = f"groups[{gi}].resources[{ri}]"
                if isinstance(r, AddressResource):
                    ip = ipaddress.ip_interface(r.address).ip
                    if ip in owners:
                        errors.append((f"{where}.address", f"{ip} is already held by {owners[ip]}"))
                    owners.setdefault(ip, where)
                elif isinstance(r, IPVSResource):
                    ipvs += 1
                    if r.sync_daemon is None:
                        continue
                    if sync is None:
                        sync = (f"{where}.sync_daemon", r.sync_daemon)
                    elif r.sync_daemon != sync[1]:
                        first = sync[1]
                        errors.append(
                            (
                                f"{where}.sync_daemon",
                                f"differs from {sync[0]} (interface {first.interface}, syncid "
                                f"{first.syncid}): a director runs one master and one backup "
                                "sync daemon for all its groups, so every group's sync_daemon "
                                "names the same interface and syncid (a node's own name for "
                                "the interface goes under its interfaces: sync)",
                            )
                        )
            if ipvs > 1:
                errors.append((f"groups[{gi}].resources", "a group holds one ipvs resource"))

    def held_addresses(self) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        return {
            ipaddress.ip_interface(r.address).ip
            for g in self.groups
            for r in g.resources
            if isinstance(r, AddressResource)
        }

    def _check_services(
        self, errors: list[tuple[str, str]], warnings: list[tuple[str, str]]
    ) -> None:
        held = self.held_addresses()
        services: dict[tuple[Any, ...], int] = {}
        ipvs_groups = [g.name for g in self.groups if any(r.type == "ipvs" for r in g.resources)]
        for si, vs in enumerate(self.virtual_services):
            where = f"virtual_services[{si}]"
            key: tuple[Any, ...] = (
                ("fwmark", vs.fwmark, vs.ip_family)
                if vs.fwmark is not None
                else (vs.protocol, vs.address)
            )
            if key in services:
                errors.append((where, f"{vs.label} is already virtual_services[{services[key]}]"))
            services.setdefault(key, si)
            if vs.group is not None and vs.group not in ipvs_groups:
                errors.append(
                    (f"{where}.group", f"{vs.group!r} is not a group with an ipvs resource")
                )
            elif vs.group is None and self.groups and len(ipvs_groups) > 1:
                errors.append(
                    (
                        f"{where}.group",
                        f"several groups carry an ipvs resource ({', '.join(ipvs_groups)}); "
                        "say which one carries this service",
                    )
                )
            if vs.address is not None:
                vip = split_host_port(vs.address)[0]
                if self.groups and vip not in held:
                    warnings.append(
                        (
                            f"{where}.address",
                            f"{vip} is held by no group's address resource; "
                            "it must then be managed elsewhere",
                        )
                    )
            if vs.persistence and vs.persistence.netmask:
                _check_netmask(vs, where, errors)
            if vs.one_packet and (vs.fwmark is not None or vs.protocol is not Protocol.udp):
                warnings.append(
                    (
                        f"{where}.one_packet",
                        "one-packet scheduling is for UDP services; IPVS ignores it here",
                    )
                )
            self._check_reals(vs, where, errors)

    @staticmethod
    def _check_reals(vs: VirtualService, where: str, errors: list[tuple[str, str]]) -> None:
        seen: dict[tuple[Any, int], int] = {}
        for ri, real in enumerate(vs.reals):
            for ip, port in expand_real(real.address):
                if ip.version != vs.ip_family:
                    errors.append(
                        (
                            f"{where}.reals[{ri}].address",
                            f"{ip} is IPv{ip.version} but the service is IPv{vs.ip_family} "
                            "(IPVS cannot mix families in one service)",
                        )
                    )
                    break
                if vs.fwmark is None and port == 0:
                    errors.append(
                        (
                            f"{where}.reals[{ri}].address",
                            f"{real.address!r} needs a port (only fwmark services may omit it)",
                        )
                    )
                    break
                if (ip, port) in seen:
                    errors.append(
                        (
                            f"{where}.reals[{ri}].address",
                            f"{ip} port {port} is already reals[{seen[(ip, port)]}] "
                            "(IPVS keeps one destination per address and port)",
                        )
                    )
                    break
                seen[(ip, port)] = ri
            if (
                real.lower_threshold
                and real.upper_threshold
                and real.lower_threshold > real.upper_threshold
            ):
                errors.append(
                    (
                        f"{where}.reals[{ri}].lower_threshold",
                        "must not exceed upper_threshold",
                    )
                )
        if vs.fallback is not None:
            for ip, port in expand_real(vs.fallback.address):
                if (ip, port) in seen:
                    errors.append(
                        (
                            f"{where}.fallback.address",
                            f"{ip} port {port} is also reals[{seen[(ip, port)]}]; the fallback "
                            "serves only when every real is down, so it cannot be one of them",
                        )
                    )
                elif ip.version != vs.ip_family:
                    errors.append((f"{where}.fallback.address", f"{ip} is not IPv{vs.ip_family}"))


def _check_netmask(vs: VirtualService, where: str, errors: list[tuple[str, str]]) -> None:
    assert vs.persistence is not None and vs.persistence.netmask is not None
    mask = vs.persistence.netmask
    try:
        if vs.ip_family == 4:
            ipaddress.IPv4Network(f"0.0.0.0/{mask}")
        elif not (mask.isdigit() and 1 <= int(mask) <= 128):
            raise ValueError
    except ValueError:
        errors.append(
            (
                f"{where}.persistence.netmask",
                f"{mask!r} is not a valid "
                + ("IPv4 netmask" if vs.ip_family == 4 else "IPv6 prefix length"),
            )
        )


class SpecError(ValueError):
    """Spec errors, each (field path, message); the loader adds file and line."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{p}: {m}" for p, m in errors))
