"""ldirectord.cf's virtual sections turned into spec data, with ldirectord's defaults.

Defaults come from the code of Debian 12's ldirectord, not its manual: global
values apply to every section; checktimeout and negotiatetimeout fall back on
each other before the built-in 5s and 30s (ld_setup); checkinterval inside a
section counts only with fork=yes; quiescent defaults to no; the check service
follows the port; the request defaults to "/".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from etcdha.legacy.common import Collector, Origin
from etcdha.legacy.ldirectord import (
    SERVICE_PORTS,
    SPEC_SERVICE,
    Built,
    LdFile,
    Value,
    Virtual,
    checks_command,
    resolve_host,
    resolve_port,
)
from etcdha.legacy.perlre import PerlRegexError, exact, translate
from etcdha.spec import default_check_service
from etcdha.spec_types import join_host_port

A = re.ASCII
REAL_RE = re.compile(
    r"(\d+\.\d+\.\d+\.\d+|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])"
    r"(->(\d+\.\d+\.\d+\.\d+|[A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]))?"
    r"(:(\d+|[A-Za-z0-9_-]+))?\s+(.*)",
    A,
)
REGEX_SERVICES = {"http", "https", "http_proxy", "ftp", "ldap", "simpletcp"}
BUILT_IN = {"http", "https", "simpletcp", "dns", "none"}
ALERTS = (
    "not needed: alert with Prometheus alerting rules on etcdha's metrics (reals down, "
    "fallback in use) instead of mail"
)
NOT_NEEDED = {
    "autoreload": "not needed: every agent reloads the config from etcd as soon as "
    "`etcdha config apply` stores it",
    "callback": "not needed: the config lives once, in etcd; there is nothing to copy to "
    "the other director",
    "logfile": "not needed: etcdha logs to stderr (journald under systemd); use "
    "--log-format json for machines",
    "supervised": "not needed: etcdha always runs in the foreground, under systemd",
    "fork": "not needed: etcdha's checker runs every check concurrently, each on its own interval",
    "emailalert": ALERTS,
    "emailalertfreq": ALERTS,
    "emailalertstatus": ALERTS,
    "emailalertfrom": ALERTS,
    "smtp": ALERTS,
    "readdquiescent": "not needed: etcdha keeps the IPVS table equal to the config, so a "
    "quiescent real is always there with weight 0; take a real out by hand with "
    "`etcdha drain`",
    "cleanstop": "not needed: etcdha removes the services it manages when they leave the "
    "config; a standby keeps a copy of the table, inert without the address, so a "
    "takeover only moves addresses",
    "monitorfile": "not needed: `etcdha events` lists every health transition",
    "load": "not needed: ldirectord reads it and never uses it",
}


def seconds(n: int) -> str:
    return f"{n}s"


@dataclass
class VirtualBuilder:
    ld: LdFile
    v: Virtual
    col: Collector
    checks_dir: PurePosixPath
    group: str | None
    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[tuple[str | int, ...], Origin] = field(default_factory=dict)
    ok: bool = True
    vport: int = 0
    protocol: str = "tcp"
    service: str = "none"
    portless: int = 0  # reals written without a port

    def value(self, name: str) -> Value | None:
        return self.v.values.get(name)

    def either(self, name: str) -> Value | None:
        """The section's value, else the global one."""
        return self.v.values.get(name) or self.ld.globals.get(name)

    def refuse(self, at: Origin, message: str) -> None:
        self.col.refuse(at, message)
        self.ok = False

    def put(self, path: tuple[str | int, ...], value: Any, at: Origin) -> None:
        target = self.data
        for part in path[:-1]:
            target = target.setdefault(str(part), {})
        target[str(path[-1])] = value
        self.origins[path] = at

    def build(self) -> Built | None:
        v = self.v
        self.origins[()] = v.at
        self.address()
        if not self.ok:
            return None
        if self.group is not None:
            self.data["group"] = self.group
        self.options()
        self.check()
        self.fallback()
        self.reals()
        self.check_port()
        return Built(self.data, self.origins, v.at) if self.ok else None

    def address(self) -> None:
        v = self.v
        if v.fwmark is not None:
            self.protocol = "fwm"
            self.put(("fwmark",), v.fwmark, v.at)
            if v.af == 6:
                self.data["family"] = "inet6"
            self.col.mapped(v.at, f"{v.at.directive}={v.fwmark} -> fwmark service {v.fwmark}")
            return
        assert v.ip_port is not None and v.host is not None and v.port_text is not None
        proto = "udp" if re.search(r":(53|domain)$", v.ip_port) else "tcp"
        if "protocol" in v.values:
            proto = v.values["protocol"][0]
            self.col.mapped(v.values["protocol"][1], f"protocol={proto}")
        self.protocol = proto
        ip, why = resolve_host(v.host, v.af)
        port = resolve_port(v.port_text)
        if ip is None:
            self.refuse(v.at, f"invalid address for virtual service (ldirectord's words): {why}")
            return
        if port is None:
            self.refuse(
                v.at,
                f"invalid address for virtual service (ldirectord's words): port "
                f"{v.port_text!r} is not a number below 65536 or a known service name",
            )
            return
        self.vport = port
        self.put(("address",), join_host_port(ip, port), v.at)
        self.put(("protocol",), proto, v.at)
        self.col.mapped(
            v.at, f"{v.at.directive}={v.ip_port} -> virtual service {proto} {ip}:{port}"
        )

    def options(self) -> None:
        scheduler = self.value("scheduler")
        if scheduler:
            self.put(("scheduler",), scheduler[0], scheduler[1])
            self.col.mapped(scheduler[1], f"scheduler={scheduler[0]} -> scheduler")
        persistent, netmask = self.value("persistent"), self.value("netmask")
        if persistent:
            self.put(("persistence", "timeout"), persistent[0], persistent[1])
            self.col.mapped(persistent[1], f"persistent={persistent[0]} -> persistence.timeout")
            if netmask:
                self.put(("persistence", "netmask"), netmask[0], netmask[1])
                self.col.mapped(netmask[1], f"netmask={netmask[0]} -> persistence.netmask")
        elif netmask:
            self.col.not_needed(
                netmask[1],
                "netmask without persistent: ldirectord passes it to ipvsadm only "
                "for persistent services, so it had no effect",
            )
        quiescent = self.either("quiescent")
        if quiescent:
            self.put(("quiescent",), quiescent[0] == "yes", quiescent[1])
            self.col.mapped(
                quiescent[1],
                f"quiescent={quiescent[0]} -> "
                + (
                    "a down real keeps weight 0"
                    if quiescent[0] == "yes"
                    else "a down real is removed"
                ),
            )
        ops = self.value("ops")
        if ops and ops[0] == "yes":
            if self.protocol == "udp":
                self.put(("one_packet",), True, ops[1])
            else:
                self.col.not_needed(ops[1], "ops=yes on a non-UDP service: ldirectord ignores it")
        command = self.either("fallbackcommand")
        if command:
            self.put(("fallback_command",), command[0], command[1])
            self.col.mapped(
                command[1],
                f"fallbackcommand -> fallback_command: `{command[0]} start` when every real is "
                "down, `stop` when one is up again",
            )
        for name in ("emailalert", "emailalertfreq", "emailalertstatus", "smtp", "monitorfile"):
            found = self.value(name)
            if found:
                self.col.not_needed(found[1], NOT_NEEDED[name])
        for name in ("cleanstop", "load"):
            found = self.value(name)
            if found:
                self.col.not_needed(found[1], NOT_NEEDED[name])

    # -- the check ---------------------------------------------------------------------

    def check(self) -> None:
        v = self.v
        service_value = self.value("service")
        if service_value:
            self.service = service_value[0]
            at = service_value[1]
        else:
            self.service = "none" if v.fwmark is not None else default_check_service(self.vport)
            at = v.at
        self.put(("check", "service"), SPEC_SERVICE.get(self.service, self.service), at)
        if self.service not in BUILT_IN:
            self.col.mapped(
                at,
                f"service={self.service}: checked by etcdha's {self.service!r} check "
                "(an external check of that name in the checks directory)",
            )
        elif self.service == "simpletcp":
            self.col.mapped(
                at, "service=simpletcp -> check.service tcp (send request, expect receive)"
            )
        elif service_value:
            self.col.mapped(at, f"service={self.service} -> check.service")
        self.checktype()
        self.timeouts()
        self.counts()
        self.request_receive()
        for name, key in (
            ("checkport", "port"),
            ("httpmethod", "http_method"),
            ("virtualhost", "virtualhost"),
            ("login", "login"),
            ("passwd", "password"),
            ("database", "database"),
            ("secret", "secret"),
        ):
            found = self.value(name)
            if found:
                self.put(("check", key), found[0], found[1])
                self.col.mapped(found[1], f"{name} -> check.{key}")
        if self.service == "ftp" and not self.value("login"):
            self.put(("check", "login"), "anonymous", v.at)
        if self.service == "ftp" and not self.value("passwd"):
            self.col.warn(
                v.at,
                "ftp check without passwd: ldirectord sent ldirectord@<its host name>; "
                "etcdha sends none unless check.password is set",
            )
        if self.service == "dns" and self.protocol == "tcp":
            self.col.warn(v.at, "a dns check on a tcp service: ldirectord asked over TCP")

    def checktype(self) -> None:
        found = self.value("checktype")
        kind, at = found if found else ("negotiate", self.v.at)
        if isinstance(kind, int):
            self.put(("check", "type"), "negotiate", at)
            if kind > 0:
                self.put(("check", "negotiate_every"), kind + 1, at)
                self.col.mapped(
                    at,
                    f"checktype={kind}: {kind} connect checks, then one negotiate check, as "
                    f"ldirectord -> check.negotiate_every {kind + 1}",
                )
            return
        if kind == "connect" and self.protocol == "udp":
            kind = "ping"
            self.col.mapped(at, "checktype=connect on a UDP service: ldirectord pings -> ping")
        if kind == "external-perl":
            kind = "external"
            self.col.mapped(
                at,
                "checktype=external-perl -> external: the script runs as a program with the "
                "same four arguments (ldirectord says such a script works as external too)",
            )
        self.put(("check", "type"), kind, at)
        if found:
            self.col.mapped(at, f"checktype={found[0]} -> check.type {kind}")
        command = self.value("checkcommand")
        if kind != "external":
            if command:
                self.col.not_needed(
                    command[1], "checkcommand is used only by external checks, as ldirectord"
                )
            return
        if command is None:
            self.put(("check", "type"), "on", at)
            self.col.mapped(
                at,
                "checktype=external without checkcommand: ldirectord ran /bin/true, which "
                "always passes -> check type on",
            )
            return
        name = checks_command(command[0], self.checks_dir)
        if name is None:
            self.refuse(
                command[1],
                f"checkcommand {command[0]} is outside the checks directory {self.checks_dir}: "
                f"copy it to {self.checks_dir} and name it by file name "
                f"(checkcommand={PurePosixPath(command[0]).name})",
            )
            return
        self.put(("check", "command"), name, command[1])
        if "/" not in command[0]:
            self.col.warn(
                command[1],
                f"checkcommand {name}: ldirectord looked it up in PATH; etcdha runs "
                f"{self.checks_dir}/{name}",
            )
        else:
            self.col.mapped(command[1], f"checkcommand -> check.command {name}")

    def timeouts(self) -> None:
        g, v = self.ld.globals, self.v.values
        chain_check = [v.get("checktimeout"), v.get("negotiatetimeout")]
        chain_check += [g.get("checktimeout"), g.get("negotiatetimeout")]
        chain_neg = [v.get("negotiatetimeout"), v.get("checktimeout")]
        chain_neg += [g.get("negotiatetimeout"), g.get("checktimeout")]
        for key, chain, default in (
            ("timeout", chain_check, 5),
            ("negotiate_timeout", chain_neg, 30),
        ):
            found = next((c for c in chain if c is not None), None)
            value, at = found if found else (default, self.v.at)
            self.put(("check", key), float(value), at)
        interval = g.get("checkinterval")
        value, at = interval if interval else (10, self.v.at)
        own = v.get("checkinterval")
        forked = g.get("fork", ("no", None))[0] == "yes"
        if own and forked:
            value, at = own
        elif own:
            self.col.warn(
                own[1],
                f"checkinterval in virtual service ignored when fork=no (ldirectord's words): "
                f"the check runs every {value}s",
            )
        self.put(("check", "interval"), float(value), at)

    def counts(self) -> None:
        for name, key in (("checkcount", "checkcount"), ("failurecount", "failure_count")):
            found = self.either(name)
            if found:
                self.put(("check", key), found[0], found[1])
        if self.value("checkcount"):
            self.col.warn(
                self.v.values["checkcount"][1],
                "checkcount is deprecated in ldirectord (see failurecount); it sets the "
                "ping attempts per check",
            )

    def request_receive(self) -> None:
        request = self.value("request")
        if request:
            mapped = self.request(request[0], request[1], per_real=False)
            if mapped is not None:
                self.put(("check", "request"), mapped, request[1])
                self.col.mapped(request[1], f"request={request[0]!r} -> check.request {mapped!r}")
        receive = self.value("receive")
        if receive:
            pattern = self.receive(receive[0], receive[1])
            if pattern is not None:
                self.put(("check", "receive"), pattern, receive[1])
                if pattern == receive[0]:
                    self.col.mapped(
                        receive[1], f"receive={receive[0]!r} -> check.receive (same in Python)"
                    )

    def request(self, text: str, at: Origin, *, per_real: bool) -> str | None:
        """The request as etcdha means it for this service (ldirectord adds a leading
        '/', which its checks other than HTTP and FTP take off again)."""
        stored = text if text.startswith("/") else "/" + text
        service = self.service
        if service in ("http", "https"):
            if per_real and re.search(f"{service}://", stored):
                self.refuse(
                    at,
                    f"request {text!r} is a URL: ldirectord then checked that URL instead of "
                    "the real server; etcdha checks each real at its own address: write the "
                    "path (and virtualhost= for the Host header)",
                )
                return None
            return stored
        if service == "ftp":
            return stored
        if service == "http_proxy":
            return stored[1:]
        if service in ("dns", "ldap", "mysql", "pgsql", "oracle"):
            return stored[1:]
        if service == "simpletcp":
            return stored[1:].replace("\\n", "\n")
        self.col.not_needed(at, f"request: ldirectord's {service} check does not use it")
        return None

    def receive(self, text: str, at: Origin) -> str | None:
        if self.service == "dns":
            self.col.mapped(
                at, "receive: ldirectord's dns check compares whole answers -> an exact pattern"
            )
            return exact(text)
        if self.service not in REGEX_SERVICES:
            self.col.not_needed(at, f"receive: ldirectord's {self.service} check does not use it")
            return None
        try:
            done = translate(text)
        except PerlRegexError as e:
            self.refuse(at, f"receive {text!r}: this Perl regular expression {e}")
            return None
        if done.changes:
            self.col.mapped(
                at,
                f"receive: Perl {text!r} -> Python {done.pattern!r} ({'; '.join(done.changes)})",
            )
        for doubt in done.doubts:
            self.col.warn(at, f"receive {text!r}: {doubt}")
        return done.pattern

    # -- fallback and reals ----------------------------------------------------------

    def fallback(self) -> None:
        own = self.value("fallback")
        name = "fallback6" if self.v.af == 6 else "fallback"
        found = own or self.ld.globals.get(name)
        if not found:
            return
        (host, port_text, forward), at = found
        ip, why = resolve_host(host, self.v.af)
        if ip is None:
            self.refuse(at, f"invalid address or could not resolve for fallback server: {why}")
            return
        port = self.vport if port_text is None else resolve_port(port_text)
        if port is None:
            self.refuse(at, "invalid port for fallback server (ldirectord's words)")
            return
        self.put(("fallback", "address"), join_host_port(ip, port), at)
        if forward != "gate":
            self.put(("fallback", "forward"), forward, at)
        self.col.mapped(at, f"{at.directive} -> fallback {join_host_port(ip, port)} {forward}")

    def reals(self) -> None:
        out: list[dict[str, Any]] = []
        for text, at in self.v.reals:
            real = self.real(text, at)
            if real is not None:
                self.origins[("reals", len(out))] = at
                self.origins[("reals", len(out), "address")] = at
                out.append(real)
        self.data["reals"] = out

    def real(self, text: str, at: Origin) -> dict[str, Any] | None:
        m = REAL_RE.search(text)
        if not m:
            self.refuse(at, "invalid address for real server (wrong format) (ldirectord's words)")
            return None
        first, last, port_text, flags = m.group(1), m.group(3), m.group(5), m.group(6)
        af = self.v.af
        ip1, why = resolve_host(first, af)
        if ip1 is None:
            self.refuse(at, f"invalid address ({first}) for real server: {why}")
            return None
        port = resolve_port(port_text or "0")
        if port is None:
            self.refuse(at, f"invalid port ({port_text}) for real server (could not resolve port)")
            return None
        ip2 = None
        if last is not None:
            if af == 6:
                self.refuse(at, "Address range for IPv6 is not supported yet (ldirectord's words)")
                return None
            ip2, why = resolve_host(last, af)
            if ip2 is None:
                self.refuse(at, f"invalid address ({last}) for real server: {why}")
                return None
            if int(ip2) < int(ip1):
                self.refuse(at, f"Invalid Range: {ip1}->{ip2}: the first address is above the last")
                return None
        fm = re.search(r"(\w+)(.*)", flags, A)
        if not fm or fm.group(1) not in ("gate", "masq", "ipip"):
            self.refuse(at, "forward method must be gate, masq or ipip (ldirectord's words)")
            return None
        forward, rest = fm.group(1), fm.group(2)
        weight = 1
        wm = re.match(r"\s+(\d+)(.*)", rest, A)
        if wm:
            weight, rest = int(wm.group(1)), wm.group(2)
        request = receive = None
        rm = re.match(r'\s+"(.*)"[, ]\s*"(.*)"(.*)', rest)
        if rm:
            request, receive, rest = rm.group(1), rm.group(2), rm.group(3)
        if rest.strip():
            self.refuse(at, f'Invalid real server line, around "{rest}" (ldirectord\'s words)')
            return None
        if weight > 65535:
            self.refuse(
                at,
                f"weight {weight}: ipvsadm accepts 0 to 65535, so ldirectord could not add "
                "this real",
            )
            return None
        if port == 0 and self.v.fwmark is None:
            if forward == "masq":
                self.refuse(
                    at,
                    f"real {text.split()[0]} has no port: with masq ldirectord sent traffic to "
                    "port 0; write the port",
                )
                return None
            port = self.vport
            self.col.mapped(
                at, f"real without a port: IPVS uses the virtual port {port} with {forward}"
            )
        if port_text is None:
            self.portless += 1

        def spelled(ip: Any) -> str:
            return join_host_port(ip, port) if port else str(ip)

        address = spelled(ip1) if ip2 is None else f"{ip1}->{spelled(ip2)}"
        real: dict[str, Any] = {"address": address, "forward": forward}
        if weight != 1:
            real["weight"] = weight
        if request is not None:
            mapped = self.request(request, at, per_real=True)
            if mapped is not None:
                real["request"] = mapped
        if receive is not None:
            pattern = self.receive(receive, at)
            if pattern is not None:
                real["receive"] = pattern
        said = f"real {address} {forward}, weight {weight}"
        if request is not None or receive is not None:
            said += ", with its own request and receive"
        self.col.mapped(at, said)
        return real

    def check_port(self) -> None:
        """ld_checkport(): a real written without a port is checked on the service's
        well-known port (80 for http, ...), not on the virtual port."""
        if not self.portless or self.value("checkport"):
            return
        known = SERVICE_PORTS.get(self.service)
        if known is None or known == self.vport:
            return
        if self.portless == len(self.data.get("reals", [])):
            self.put(("check", "port"), known, self.v.at)
            self.col.mapped(
                self.v.at,
                f"reals without a port were checked on port {known} ({self.service}'s), as "
                "ldirectord does -> check.port",
            )
        else:
            self.col.warn(
                self.v.at,
                f"ldirectord checked the reals written without a port on port {known}; "
                "etcdha checks each real on its own port: set checkport if that matters",
            )


def build_file(
    ld: LdFile, col: Collector, checks_dir: PurePosixPath, group: str | None
) -> list[Built]:
    for name, (_, at) in ld.globals.items():
        if name in NOT_NEEDED:
            col.not_needed(at, NOT_NEEDED[name])
    if "maintenancedir" in ld.globals:
        value, at = ld.globals["maintenancedir"]
        col.warn(
            at,
            f"maintenancedir: not needed: use `etcdha drain`. Reals in maintenance now (files "
            f"in {value}) must be drained after the import",
        )
    for name in ("checktimeout", "negotiatetimeout", "checkinterval", "failurecount", "checkcount"):
        if name in ld.globals:
            value, at = ld.globals[name]
            col.mapped(at, f"{name}={value} applies to every virtual service without its own")
    out: list[Built] = []
    seen: dict[tuple[Any, ...], Origin] = {}
    for v in ld.virtuals:
        builder = VirtualBuilder(ld, v, col, checks_dir, group)
        built = builder.build()
        if built is None:
            continue
        key = (built.data.get("fwmark"), v.af, built.data.get("address"), builder.protocol)
        if key in seen:
            col.refuse(
                v.at, f"duplicate virtual server (ldirectord's words): as on line {seen[key].line}"
            )
            continue
        seen[key] = v.at
        out.append(built)
    return out
