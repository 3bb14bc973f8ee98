"""A table as ipvsadm rules (``ipvsadm-save -n`` style) and as JSON, both ways.

The rules are what ``ipvsadm-save -n`` prints and ``ipvsadm-restore`` reads::

    -A -t 192.0.2.200:80 -s rr -p 600 -M 255.255.255.0
    -a -t 192.0.2.200:80 -r 198.51.100.12:80 -m -w 1
    -A -f 1 -6 -s wlc
    -a -f 1 -6 -r [2001:db8::5]:0 -g -w 1

with one addition: destination thresholds as ``-x`` / ``-y``, which ipvsadm
1.31's save omits although restore accepts them. Services come sorted by key,
each followed by its destinations sorted by address and port.

The JSON form (``etcdha render --format json``, ``status/<group>/ipvs``) is a
list of services, each::

    {"service": "tcp-192.0.2.200-80", "family": "inet", "protocol": "tcp",
     "address": "192.0.2.200", "port": 80, "fwmark": null, "scheduler": "rr",
     "scheduler_flags": [], "one_packet": false,
     "persistence": {"timeout": 600, "netmask": "255.255.255.255"} or null,
     "persistence_engine": null,
     "destinations": [{"real": "198.51.100.12-80", "address": "198.51.100.12",
                       "port": 80, "forward": "masq", "weight": 1,
                       "upper_threshold": 0, "lower_threshold": 0}]}

(fwmark services have protocol, address and port null; forward is gate, masq,
ipip, or local / bypass for destinations made by other tools).
"""

from __future__ import annotations

import shlex
from typing import Any

from etcdha.ipvs.model import (
    DEFAULT_PERSISTENCE_TIMEOUT,
    F_ONEPACKET,
    F_PERSISTENT,
    Dest,
    Fwd,
    Service,
    ServiceKey,
    Table,
    canonical,
    endpoint_text,
    full_netmask,
    netmask_prefix,
    netmask_text,
    sched_flags_from_names,
)

_PROTO_OPTION = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
_FWD_OPTION = {Fwd.MASQ: "-m", Fwd.TUNNEL: "-i"}


def service_option(key: ServiceKey) -> str:
    """The service part of a rule: `-t 192.0.2.200:80`, `-f 1 -6`."""
    if key.is_fwmark:
        return f"-f {key.fwmark}" + (" -6" if key.family == 6 else "")
    return f"{_PROTO_OPTION[key.protocol]} {endpoint_text(key.address, key.port)}"


def service_rule(service: Service) -> str:
    parts = [f"-A {service_option(service.key)} -s {service.scheduler}"]
    if service.persistent:
        parts.append(f"-p {service.timeout}")
        if service.netmask != full_netmask(service.key.family):
            parts.append(f"-M {netmask_text(service.netmask, service.key.family)}")
    if service.pe:
        parts.append(f"--pe {service.pe}")
    if service.one_packet:
        parts.append("-o")
    if service.sched_flag_names:
        parts.append(f"-b {','.join(service.sched_flag_names)}")
    return " ".join(parts)


def dest_rule(key: ServiceKey, dest: Dest) -> str:
    parts = [
        f"-a {service_option(key)} -r {endpoint_text(dest.address, dest.port)}",
        _FWD_OPTION.get(dest.forward, "-g"),
        f"-w {dest.weight}",
    ]
    if dest.forward is Fwd.TUNNEL:
        parts.append("--tun-type ipip")
    if dest.upper:
        parts.append(f"-x {dest.upper}")
    if dest.lower:
        parts.append(f"-y {dest.lower}")
    return " ".join(parts)


def to_ipvsadm(table: Table) -> str:
    """The table as ipvsadm-restore input."""
    lines = []
    for entry in table.sorted():
        lines.append(service_rule(entry.service))
        for dkey in sorted(entry.dests):
            lines.append(dest_rule(entry.service.key, entry.dests[dkey]))
    return "".join(f"{line}\n" for line in lines)


# -- parsing


def _endpoint(text: str, default_port: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, default_port
    address, _ = canonical(host)
    return address, port


_OPTIONAL_VALUE = {"-p", "--persistent"}
_FLAGS = {"-6", "--ipv6", "-o", "--ops", "-g", "--gatewaying", "-m", "--masquerading", "-i"}
_FLAGS |= {"--ipip", "--tun-nocsum", "--tun-csum", "--tun-remcsum"}


def _options(tokens: list[str], line: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        name, eq, value = tok.partition("=")
        if eq and name.startswith("--"):
            opts[name] = value
        elif tok in _FLAGS:
            opts[tok] = ""
        elif tok in _OPTIONAL_VALUE:
            if i + 1 < len(tokens) and tokens[i + 1].isdigit():
                opts[tok] = tokens[i + 1]
                i += 1
            else:
                opts[tok] = str(DEFAULT_PERSISTENCE_TIMEOUT)
        elif tok.startswith("-") and i + 1 < len(tokens):
            opts[tok] = tokens[i + 1]
            i += 1
        else:
            raise ValueError(f"cannot read {tok!r} in rule {line!r}")
        i += 1
    return opts


def _get(opts: dict[str, str], *names: str) -> str | None:
    for n in names:
        if n in opts:
            return opts[n]
    return None


def _service_key(opts: dict[str, str], line: str) -> ServiceKey:
    for names, proto in (
        (("-t", "--tcp-service"), "tcp"),
        (("-u", "--udp-service"), "udp"),
        (("--sctp-service",), "sctp"),
    ):
        value = _get(opts, *names)
        if value is not None:
            address, port = _endpoint(value, 0)
            return ServiceKey.of_address(proto, address, port)
    mark = _get(opts, "-f", "--fwmark-service")
    if mark is not None:
        family = 6 if _get(opts, "-6", "--ipv6") is not None else 4
        return ServiceKey.of_fwmark(int(mark), family)
    raise ValueError(f"no service (-t, -u, --sctp-service or -f) in rule {line!r}")


def parse_ipvsadm(text: str) -> Table:
    """A table from ipvsadm rules (`ipvsadm-save -n` output, or to_ipvsadm's)."""
    table = Table()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = shlex.split(line)
        command, rest = tokens[0], tokens[1:]
        opts = _options(rest, line)
        key = _service_key(opts, line)
        if command in ("-A", "--add-service"):
            scheduler = _get(opts, "-s", "--scheduler") or "wlc"
            flags = 0
            timeout = 0
            netmask = full_netmask(key.family)
            persistent = _get(opts, "-p", "--persistent")
            if persistent is not None:
                flags |= F_PERSISTENT
                timeout = int(persistent)
                netmask = netmask_prefix(_get(opts, "-M", "--netmask"), key.family)
            if _get(opts, "-o", "--ops") is not None:
                flags |= F_ONEPACKET
            sched_flags = _get(opts, "-b", "--sched-flags")
            if sched_flags:
                flags |= sched_flags_from_names(scheduler, sched_flags.split(","))
            pe = _get(opts, "--pe") or ""
            table.add(Service(key, scheduler, flags, timeout, netmask, pe))
        elif command in ("-a", "--add-server"):
            real = _get(opts, "-r", "--real-server")
            if real is None:
                raise ValueError(f"no real server (-r) in rule {line!r}")
            address, port = _endpoint(real, key.port)
            if _get(opts, "-m", "--masquerading") is not None:
                forward = Fwd.MASQ
            elif _get(opts, "-i", "--ipip") is not None:
                forward = Fwd.TUNNEL
            else:
                forward = Fwd.ROUTE
            dest = Dest(
                address,
                port,
                forward,
                int(_get(opts, "-w", "--weight") or 1),
                int(_get(opts, "-x", "--u-threshold") or 0),
                int(_get(opts, "-y", "--l-threshold") or 0),
            )
            if key not in table:
                raise ValueError(f"rule {line!r} adds a server to a service not added before")
            table.add_dest(key, dest)
        else:
            raise ValueError(f"unsupported command {command!r} in rule {line!r}")
    return table


# -- JSON


def to_json(table: Table) -> list[dict[str, Any]]:
    out = []
    for entry in table.sorted():
        s = entry.service
        k = s.key
        out.append(
            {
                "service": k.segment,
                "family": "inet" if k.family == 4 else "inet6",
                "protocol": None if k.is_fwmark else k.protocol,
                "address": None if k.is_fwmark else k.address,
                "port": None if k.is_fwmark else k.port,
                "fwmark": k.fwmark if k.is_fwmark else None,
                "scheduler": s.scheduler,
                "scheduler_flags": s.sched_flag_names,
                "one_packet": s.one_packet,
                "persistence": (
                    {"timeout": s.timeout, "netmask": netmask_text(s.netmask, k.family)}
                    if s.persistent
                    else None
                ),
                "persistence_engine": s.pe or None,
                "destinations": [
                    {
                        "real": d.segment,
                        "address": d.address,
                        "port": d.port,
                        "forward": d.forward.spec_name,
                        "weight": d.weight,
                        "upper_threshold": d.upper,
                        "lower_threshold": d.lower,
                    }
                    for d in (entry.dests[x] for x in sorted(entry.dests))
                ],
            }
        )
    return out


_FWD_BY_NAME = {f.spec_name: f for f in Fwd}


def from_json(data: list[dict[str, Any]]) -> Table:
    table = Table()
    for s in data:
        family = 4 if s["family"] == "inet" else 6
        if s.get("fwmark"):
            key = ServiceKey.of_fwmark(int(s["fwmark"]), family)
        else:
            key = ServiceKey.of_address(s["protocol"], s["address"], int(s["port"]))
        flags = sched_flags_from_names(s["scheduler"], s.get("scheduler_flags", []))
        if s.get("one_packet"):
            flags |= F_ONEPACKET
        timeout, netmask = 0, -1
        if s.get("persistence"):
            flags |= F_PERSISTENT
            timeout = int(s["persistence"]["timeout"])
            netmask = netmask_prefix(str(s["persistence"]["netmask"]), family)
        service = Service(
            key, s["scheduler"], flags, timeout, netmask, s.get("persistence_engine") or ""
        )
        table.add(
            service,
            [
                Dest(
                    canonical(d["address"])[0],
                    int(d["port"]),
                    _FWD_BY_NAME[d["forward"]],
                    int(d["weight"]),
                    int(d.get("upper_threshold", 0)),
                    int(d.get("lower_threshold", 0)),
                )
                for d in s.get("destinations", [])
            ],
        )
    return table
