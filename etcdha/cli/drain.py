"""`etcdha drain` / `etcdha undrain`: take a real server out of new connections
(weight 0, established ones go on) and put it back, through admin/drain/ keys."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Annotated

import typer

from etcdha.cli.common import Conn, err, fail, out_json, with_conn
from etcdha.configdb import read_config, who
from etcdha.events import event_op, now_rfc3339
from etcdha.ipvs.desired import service_key
from etcdha.keyspace import (
    KeyKind,
    parse_real_segment,
    parse_service_segment,
    real_segment,
)
from etcdha.spec import ClusterSpec
from etcdha.spec_types import IPAddress, expand_real, join_host_port, parse_ip, split_host_port
from etcdha.store import Op, Store

RealArg = Annotated[
    str,
    typer.Argument(
        help="The real server: IP:port, [IPv6]:port, a bare IP (every port), or its "
        "keyspace segment (198.51.100.12-80).",
        show_default=False,
        metavar="REAL",
    ),
]
ServiceOpt = Annotated[
    str | None,
    typer.Option(
        "--service",
        "-s",
        help="Only in this virtual service: its segment (tcp-192.0.2.200-80, fwm-1) or "
        "VIP:port (default: every service that has the real).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print what changed as JSON.")]


@dataclass(frozen=True)
class RealPattern:
    ip: IPAddress
    port: int | None  # None: any port


def parse_real(text: str) -> RealPattern:
    try:
        rid = parse_real_segment(text)
        return RealPattern(ipaddress.ip_address(rid.address), rid.port)
    except ValueError:
        pass
    try:
        ip, port = split_host_port(text)
        return RealPattern(ip, port)
    except ValueError:
        pass
    try:
        return RealPattern(parse_ip(text), None)
    except ValueError:
        raise ValueError(f"{text!r} is not a real server (IP:port, [IPv6]:port or IP)") from None


def _service_matches(spec_segment: str, label_addr: str | None, wanted: str) -> bool:
    if wanted == spec_segment:
        return True
    if label_addr is None:
        return False
    try:
        ip, port = split_host_port(wanted)
    except ValueError:
        return False
    return label_addr == f"{ip}:{port}" or label_addr == f"[{ip}]:{port}"


def matching(spec: ClusterSpec, pattern: RealPattern, service: str | None) -> list[tuple[str, str]]:
    """(service segment, real segment) of every real of the config the pattern names."""
    if service is not None:
        try:
            parse_service_segment(service)
        except ValueError:
            try:
                split_host_port(service)
            except ValueError:
                raise ValueError(
                    f"{service!r} is not a service (tcp-192.0.2.200-80, fwm-1, or VIP:port)"
                ) from None
    out: list[tuple[str, str]] = []
    for vs in spec.virtual_services:
        seg = service_key(vs).segment
        if service is not None and not _service_matches(seg, vs.address, service):
            continue
        for real in vs.reals:
            for ip, port in expand_real(real.address):
                effective = port or (vs.port or 0)
                if ip != pattern.ip:
                    continue
                if pattern.port is not None and pattern.port not in (port, effective):
                    continue
                pair = (seg, real_segment(str(ip), port))
                if pair not in out:
                    out.append(pair)
    return out


def _report(pairs: list[tuple[str, str]], keys: list[str], verb: str, as_json: bool) -> None:
    if as_json:
        out_json(
            {
                verb: [
                    {"service": s, "real": r, "key": k}
                    for (s, r), k in zip(pairs, keys, strict=True)
                ]
            }
        )
    for (s, r), k in zip(pairs, keys, strict=True):
        err(f"{verb} {r} of {s} ({k})")


@with_conn
def drain(
    real: RealArg,
    service: ServiceOpt = None,
    reason: Annotated[str, typer.Option(help="Why, recorded in etcd and events.")] = "drain",
    as_json: JsonOpt = False,
    *,
    conn: Conn,
) -> None:
    """Drain REAL: the leader sets its weight to 0, so it gets no new connections
    while established ones go on, until `etcdha undrain`. Health checks go on too;
    a service whose every real is drained or down is served by its fallback."""
    try:
        pattern = parse_real(real)
    except ValueError as e:
        fail(str(e))

    async def body(store: Store) -> None:
        stored = await read_config(store, conn.keyspace)
        if stored is None or stored.spec is None:
            fail("no valid config in etcd; nothing to drain")
        try:
            pairs = matching(stored.spec, pattern, service)
        except ValueError as e:
            fail(str(e))
        if not pairs:
            where = f" of {service}" if service else ""
            fail(f"{real} is no real server{where} in the config")
        by = who()
        value = json.dumps({"reason": reason, "by": by, "at": now_rfc3339()}).encode()
        keys = [conn.keyspace.drain(s, r) for s, r in pairs]
        ops = [Op.put(k, value) for k in keys]
        ops.append(
            event_op(
                conn.keyspace,
                {
                    "type": "drain",
                    "reals": [{"service": s, "real": r} for s, r in pairs],
                    "reason": reason,
                    "by": by,
                },
            )
        )
        await store.txn([], ops)
        _report(pairs, keys, "drained", as_json)

    conn.run(body)


@with_conn
def undrain(
    real: RealArg,
    service: ServiceOpt = None,
    as_json: JsonOpt = False,
    *,
    conn: Conn,
) -> None:
    """Undrain REAL: its configured weight comes back (once its health allows)."""
    try:
        pattern = parse_real(real)
    except ValueError as e:
        fail(str(e))

    async def body(store: Store) -> None:
        kvs, _ = await store.get_prefix(conn.keyspace.drain_prefix())
        pairs: list[tuple[str, str]] = []
        for kv in kvs:
            parsed = conn.keyspace.classify(kv.key)
            if parsed is None or parsed.kind is not KeyKind.DRAIN:
                continue
            s, r = parsed.parts
            rid = parse_real_segment(r)
            if ipaddress.ip_address(rid.address) != pattern.ip:
                continue
            if pattern.port is not None and rid.port != pattern.port:
                sid = parse_service_segment(s)
                if not (rid.port == 0 and sid.port == pattern.port):
                    continue
            if service is not None:
                sid = parse_service_segment(s)
                label = None
                if sid.proto != "fwm":
                    label = join_host_port(ipaddress.ip_address(sid.address), sid.port)
                if not _service_matches(s, label, service):
                    continue
            pairs.append((s, r))
        if not pairs:
            err(f"{real} was not drained")
            if as_json:
                out_json({"undrained": []})
            return
        keys = [conn.keyspace.drain(s, r) for s, r in pairs]
        ops = [Op.delete(k) for k in keys]
        ops.append(
            event_op(
                conn.keyspace,
                {
                    "type": "undrain",
                    "reals": [{"service": s, "real": r} for s, r in pairs],
                    "by": who(),
                },
            )
        )
        await store.txn([], ops)
        _report(pairs, keys, "undrained", as_json)

    conn.run(body)
