"""The table a group should have: config + health verdicts + drains.

Inputs are kept plain so that any health aggregation can feed them:

- ``verdicts``: (service segment, real segment) -> True (up) / False (down),
  segments as the keyspace writes them (``tcp-192.0.2.200-80``,
  ``198.51.100.12-80``; a real's port as configured, 0 meaning the service's).
  A real with no verdict is up: a real is taken out only once a checker says it
  is down (ldirectord also starts with every real in the table).
- ``drains``: the (service segment, real segment) pairs under admin/drain/.
- ``weights``: dynamic weights (external checks with keepalived's misc_dynamic
  rule), same keys as verdicts; an up real with one gets it instead of its
  configured weight (0 keeps it in the table without new connections).

Rules, per virtual service of the group:

- an up real gets its configured weight;
- a down real gets weight 0 when the service is ``quiescent`` (its established
  connections go on), else it is left out;
- a drained real gets weight 0 (left out if it is also down and not quiescent);
- when no real is serving (up and not drained), the fallback server is added,
  and it goes again as soon as one is;
- ldirectord's address ranges (a->b:port) stand for each of their addresses;
- a gate or ipip destination gets the service's port, as ipvsadm gives it
  (those methods cannot change the port; only masq can).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace

from etcdha.ipvs.model import (
    F_ONEPACKET,
    F_PERSISTENT,
    Dest,
    Fwd,
    Service,
    ServiceKey,
    Table,
    canonical,
    netmask_prefix,
    sched_flags_from_names,
)
from etcdha.keyspace import real_segment
from etcdha.spec import ClusterSpec, VirtualService
from etcdha.spec_types import expand_real, split_host_port

log = logging.getLogger(__name__)

Verdicts = Mapping[tuple[str, str], bool]
Weights = Mapping[tuple[str, str], int]
Drains = Collection[tuple[str, str]]


def service_key(vs: VirtualService) -> ServiceKey:
    if vs.fwmark is not None:
        return ServiceKey.of_fwmark(vs.fwmark, vs.ip_family)
    assert vs.address is not None
    ip, port = split_host_port(vs.address)
    return ServiceKey.of_address(vs.protocol.value, str(ip), port)


def service_settings(vs: VirtualService) -> Service:
    key = service_key(vs)
    flags = 0
    for name in vs.scheduler_flags:
        try:
            flags |= sched_flags_from_names(vs.scheduler, [name])
        except ValueError as e:
            # The spec does not check flag names against the scheduler: skip, say so.
            log.warning("%s: %s; left out", vs.label, e)
    if vs.one_packet:
        flags |= F_ONEPACKET
    timeout, netmask = 0, -1
    if vs.persistence is not None:
        flags |= F_PERSISTENT
        timeout = max(1, round(vs.persistence.timeout))
        netmask = netmask_prefix(vs.persistence.netmask, key.family)
    return Service(key, vs.scheduler, flags, timeout, netmask)


def services_of(spec: ClusterSpec, group: str | None) -> list[VirtualService]:
    """The virtual services a group's ipvs resource carries (all of them for None)."""
    if group is None:
        return list(spec.virtual_services)
    out = []
    for vs in spec.virtual_services:
        g = spec.group_of(vs)
        if g is not None and g.name == group:
            out.append(vs)
    return out


@dataclass(frozen=True)
class RealState:
    """One real of one service, and what the rules made of it."""

    service: ServiceKey
    segment: str  # the real's keyspace segment (port as configured)
    dest: Dest  # as configured (its weight is the configured one)
    up: bool
    drained: bool
    weight: int | None  # in the table with this weight; None: left out

    @property
    def serving(self) -> bool:
        return self.up and not self.drained


@dataclass
class Plan:
    table: Table
    reals: list[RealState] = field(default_factory=list)
    fallback_active: list[ServiceKey] = field(default_factory=list)


def _dest_port(vs: VirtualService, port: int, forward: Fwd) -> int:
    """Port 0 means the service's. Direct routing and tunnelling cannot change the
    port, so ipvsadm (and so ldirectord) gives those destinations the service's
    port whatever was written; so do we, which keeps the table restorable."""
    if vs.port and (not port or forward is not Fwd.MASQ):
        return vs.port
    return port


@dataclass(frozen=True)
class _CompiledService:
    service: Service
    segment: str
    quiescent: bool
    reals: tuple[tuple[str, Dest], ...]  # (real segment, destination as configured)
    fallback: tuple[Dest, ...]


_compiled: dict[tuple[int, str | None], tuple[ClusterSpec, list[_CompiledService]]] = {}
_COMPILED_KEEP = 8


def compiled_reals(spec: ClusterSpec, group: str | None) -> int | None:
    """How many reals the group has, once this spec is compiled (planning it again
    then costs time in proportion); None before (the first plan parses it)."""
    hit = _compiled.get((id(spec), group))
    if hit is None or hit[0] is not spec:
        return None
    return sum(len(cs.reals) for cs in hit[1])


def _compile(spec: ClusterSpec, group: str | None) -> list[_CompiledService]:
    """What does not depend on health: parsed once per spec (a large config's
    addresses take seconds to parse on a slow machine, a health change must not)."""
    key = (id(spec), group)
    hit = _compiled.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    out = []
    for vs in services_of(spec, group):
        service = service_settings(vs)
        reals = []
        for real in vs.reals:
            forward = Fwd.from_spec(real.forward.value)
            for ip, port in expand_real(real.address):
                address, _ = canonical(str(ip))
                reals.append(
                    (
                        real_segment(str(ip), port),
                        Dest(
                            address,
                            _dest_port(vs, port, forward),
                            forward,
                            real.weight,
                            real.upper_threshold,
                            real.lower_threshold,
                        ),
                    )
                )
        fallback = []
        if vs.fallback is not None:
            fwd = Fwd.from_spec(vs.fallback.forward.value)
            for ip, port in expand_real(vs.fallback.address):
                address, _ = canonical(str(ip))
                fallback.append(Dest(address, _dest_port(vs, port, fwd), fwd, vs.fallback.weight))
        out.append(
            _CompiledService(
                service, service.key.segment, vs.quiescent, tuple(reals), tuple(fallback)
            )
        )
    if len(_compiled) >= _COMPILED_KEEP:
        _compiled.clear()
    _compiled[key] = (spec, out)
    return out


def plan(
    spec: ClusterSpec,
    group: str | None,
    verdicts: Verdicts | None = None,
    drains: Drains | None = None,
    weights: Weights | None = None,
) -> Plan:
    """The desired table, with the state of every real that led to it."""
    verdicts = verdicts or {}
    weights = weights or {}
    drained_set = set(drains or ())
    result = Plan(Table())
    for cs in _compile(spec, group):
        dests: list[Dest] = []
        serving = 0
        for rseg, configured in cs.reals:
            up = verdicts.get((cs.segment, rseg), True)
            drained = (cs.segment, rseg) in drained_set
            weight: int | None = weights.get((cs.segment, rseg), configured.weight)
            if not up:
                weight = 0 if cs.quiescent else None
            elif drained:
                weight = 0
            elif weight:
                serving += 1
            if weight == configured.weight:
                dests.append(configured)
            elif weight is not None:
                dests.append(replace(configured, weight=weight))
            result.reals.append(RealState(cs.service.key, rseg, configured, up, drained, weight))
        if serving == 0 and cs.fallback:
            dests.extend(cs.fallback)
            result.fallback_active.append(cs.service.key)
        result.table.add(cs.service, dests)
    return result


def desired(
    spec: ClusterSpec,
    group: str | None,
    verdicts: Verdicts | None = None,
    drains: Drains | None = None,
    weights: Weights | None = None,
) -> Table:
    """The table `group` should have (every service in the spec for group None)."""
    return plan(spec, group, verdicts, drains, weights).table


def named_services(spec: ClusterSpec, group: str | None) -> set[ServiceKey]:
    """The services the config gives this group: the only ones it may touch."""
    return {service_key(vs) for vs in services_of(spec, group)}
