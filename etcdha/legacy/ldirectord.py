"""ldirectord.cf, read as Debian 12's ldirectord (resource-agents 4.12.0) reads it.

The rules of its read_config():

* Outside a virtual section a directive starts in column 0 (`name=value`, blanks
  around `=` allowed); a line that is blank or starts with optional blanks and
  `#` is skipped. Nothing else is cut: `quiescent=yes # note` is an error there,
  while a number keeps working because only its first digits are read.
* `virtual=` (or `virtual6=`) opens a section; every following line indented
  by at least 4 spaces (a tab counts as 4) belongs to it. In the section
  anything from `#` on is cut first (also inside quotes), and a line that
  starts with optional blanks and `#` is skipped. The first line that is not
  indented, or is blank, ends the section and is read as a top-level line.
* Global values are defaults for every virtual service, wherever in the file
  they stand; a value inside a section overrides them for that service.
* request, receive, login, passwd, database, secret, callback and logfile take
  their value in double quotes only.

A directive ldirectord would reject is refused with its own reason. Some that it
accepts are refused too because they did not do what they seem to (a number
that is not a number, `virtual=192.0.2.1` read as firewall mark 192, a scheduler
the kernel does not have); each such message says what ldirectord did.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from etcdha.legacy.common import (
    Collector,
    Origin,
    leading_zero_octet,
    parse_ip,
    read_lines,
)

A = re.ASCII
CHECKTYPES = ("connect", "negotiate", "ping", "off", "on", "external", "external-perl")
SERVICES = [
    "dns",
    "ftp",
    "http",
    "https",
    "http_proxy",
    "imap",
    "imaps",
    "ldap",
    "nntp",
    "mysql",
    "none",
    "oracle",
    "pop",
    "pops",
    "radius",
    "pgsql",
    "sip",
    "smtp",
    "submission",
    "simpletcp",
]
SERVICE_ERROR = (
    "service must be dns, ftp, http, https, http_proxy, imap, imaps, ldap, nntp, mysql, "
    "none, oracle, pop, pops, radius, pgsql, simpletcp, sip, smtp or submission"
)
CHECKTYPE_ERROR = (
    'checktype must be "connect", "negotiate", "on", "off", "ping", "external", '
    '"external-perl" or a positive number'
)
# ld_service_to_port(): the port a check uses for a real written without one.
SERVICE_PORTS = {
    "ftp": 21,
    "smtp": 25,
    "dns": 53,
    "http": 80,
    "pop": 110,
    "nntp": 119,
    "imap": 143,
    "ldap": 389,
    "https": 443,
    "submission": 587,
    "imaps": 993,
    "pops": 995,
    "oracle": 1521,
    "radius": 1812,
    "http_proxy": 3128,
    "mysql": 3306,
    "sip": 5060,
    "pgsql": 5432,
}
# Port names from the IANA registry, used before getservbyname() so that the
# result does not depend on this machine's /etc/services.
PORT_NAMES = {
    "ftp": 21,
    "ssh": 22,
    "telnet": 23,
    "smtp": 25,
    "domain": 53,
    "http": 80,
    "www": 80,
    "pop3": 110,
    "nntp": 119,
    "ntp": 123,
    "imap": 143,
    "imap2": 143,
    "snmp": 161,
    "ldap": 389,
    "https": 443,
    "submission": 587,
    "ldaps": 636,
    "imaps": 993,
    "pop3s": 995,
    "ms-sql-s": 1433,
    "radius": 1812,
    "nfs": 2049,
    "mysql": 3306,
    "sip": 5060,
    "postgresql": 5432,
    "http-alt": 8080,
    "webcache": 8080,
}
# The schedulers of Linux 6.1's IPVS (ldirectord accepts any [a-z]+; ipvsadm then
# fails to create the service when the kernel has no such scheduler).
SCHEDULERS = {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf"}
SCHEDULERS |= {"mh", "twos"}
ALERT_STATES = {"all", "none", "starting", "running", "stopping", "reloading"}
REGEX_SERVICES = {"http", "https", "http_proxy", "ftp", "ldap", "simpletcp"}
UNUSED_RECEIVE = {"mysql", "pgsql", "oracle", "smtp", "submission", "pop", "pops", "imap"}
UNUSED_RECEIVE |= {"imaps", "nntp", "radius", "sip", "none"}
SPEC_SERVICE = {"simpletcp": "tcp"}

Value = tuple[Any, Origin]


@dataclass
class Virtual:
    at: Origin
    af: int
    ip_port: str | None
    host: str | None
    port_text: str | None
    fwmark: int | None
    values: dict[str, Value] = field(default_factory=dict)
    reals: list[tuple[str, Origin]] = field(default_factory=list)


@dataclass
class Built:
    """One virtual service as spec data, with the origin of each field path."""

    data: dict[str, Any]
    origins: dict[tuple[str | int, ...], Origin]
    at: Origin


@dataclass
class LdFile:
    source: str
    globals: dict[str, Value] = field(default_factory=dict)
    virtuals: list[Virtual] = field(default_factory=list)
    executes: list[tuple[str, Origin]] = field(default_factory=list)


def hint_cr(value: str) -> str:
    if value.endswith("\r"):
        return " (the line ends with a carriage return: save the file with Unix line ends)"
    return ""


def resolve_port(text: str) -> int | None:
    """ld_getservbyname(): a number 0-65535, or a service name."""
    if re.fullmatch(r"[0-9]+", text, A):
        n = int(text)
        return n if n < 65536 else None
    if text in PORT_NAMES:
        return PORT_NAMES[text]
    try:
        return socket.getservbyname(text)
    except OSError:
        return None


class LdParser:
    """Reads one ldirectord.cf into an LdFile (syntax and values as ldirectord checks them)."""

    def __init__(self, path: Path, col: Collector) -> None:
        self.path = path
        self.col = col
        self.file = LdFile(str(path))

    def at(self, line: int | None, directive: str) -> Origin:
        return Origin(str(self.path), line, directive)

    def parse(self) -> LdFile | None:
        lines = read_lines(self.path, self.col, "ldirectord.cf")
        if lines is None:
            return None
        i = 0
        ended_by_blank = False
        while i < len(lines):
            line = lines[i]
            m = re.match(r"virtual(6)?\s*=\s*(.*)", line, A)
            if m:
                i = self.virtual(lines, i, m)
                ended_by_blank = i < len(lines) and not lines[i].strip()
                continue
            i += 1
            if not line.strip() or re.match(r"\s*#", line):
                continue
            self.top(line, i, after_blank=ended_by_blank)
        return self.file

    # -- the top level ---------------------------------------------------------------

    def top(self, line: str, number: int, *, after_blank: bool) -> None:
        m = re.match(r"([A-Za-z_0-9]+)\s*=\s*(.*)", line, A)
        name = m.group(1) if m else line.split("=", 1)[0].strip()
        value = m.group(2) if m else ""
        at = self.at(number, name)
        handler = GLOBALS.get(name) if m else None
        if name == "supervised" and re.fullmatch(r"supervised\s*", line, A):
            self.col.warn(at, "bare supervised: ldirectord asks to write supervised=yes")
            self.file.globals["supervised"] = ("yes", at)
            return
        if handler is None:
            if m and name == "timeout":
                self.col.refuse(
                    at,
                    "timeout directive deprecated in favour of checktimeout and "
                    "negotiatetimeout (ldirectord refuses it)",
                )
                return
            self.col.refuse(
                at, f'Unknown command "{line.strip()}"' + self.why_unknown(line, after_blank)
            )
            return
        handler(self, value, at)

    def why_unknown(self, line: str, after_blank: bool) -> str:
        stripped = line.strip()
        name = re.split(r"\s*=", stripped, maxsplit=1)[0]
        if line[:1] in " \t" and re.match(r"[a-z6]+\s*=", stripped, A):
            if not self.file.virtuals:
                return f" ({name}= belongs in a virtual section, after a virtual= line)"
            if after_blank:
                return " (a blank line ended the virtual section above: remove it)"
            return " (lines of a virtual section are indented by 4 or more spaces, or a tab)"
        if name in VIRTUAL_ONLY:
            return f" ({name}= belongs in a virtual section, indented under a virtual= line)"
        if name in QUOTED:
            return f' (ldirectord reads {name} only in double quotes: {name}="...")'
        return hint_cr(line)

    def number(self, value: str, at: Origin, reason: str, *, zero: bool = False) -> int | None:
        """A value ldirectord reads with /(\\d+)/: refused unless it is a plain number."""
        m = re.search(r"\d+", value, A)
        if not m or (not zero and int(m.group()) == 0):
            self.col.refuse(at, f"{reason}: {at.directive}={value.strip()!r}")
            return None
        n = int(m.group())
        if not re.fullmatch(r"\s*\d+\s*(#.*)?", value, A):
            self.col.refuse(
                at,
                f"{at.directive}={value.strip()!r} is not a whole number; ldirectord would "
                f"read it as {n}: write {n} if that is what you mean",
            )
            return None
        return n

    def yes_no(self, value: str, at: Origin) -> str | None:
        if value in ("yes", "no"):
            return value
        extra = ""
        if "#" in value:
            extra = " (no comment may follow a value outside a virtual section)"
        elif value.strip() in ("yes", "no"):
            extra = " (no blank may follow the value; a comment after it leaves one)"
        self.col.refuse(
            at, f"{at.directive} must be 'yes' or 'no' (ldirectord's words){extra}{hint_cr(value)}"
        )
        return None

    def g_connecttimeout(self, value: str, at: Origin) -> None:
        self.col.refuse(
            at, "connecttimeout directive deprecated in favour of negotiatetimeout (ldirectord)"
        )

    def g_yes_no(self, value: str, at: Origin) -> None:
        v = self.yes_no(value, at)
        if v is not None:
            self.file.globals[at.directive] = (v, at)

    def g_fallback(self, value: str, at: Origin) -> None:
        parsed = parse_fallback(value)
        if isinstance(parsed, str):
            self.col.refuse(at, parsed)
            return
        self.file.globals[at.directive] = (parsed, at)

    def g_fallbackcommand(self, value: str, at: Origin) -> None:
        if not value:
            self.col.refuse(at, "invalid fallback command (ldirectord's words)")
            return
        self.file.globals["fallbackcommand"] = (value, at)

    def g_quoted(self, value: str, at: Origin) -> None:
        m = re.match(r'"(.*)"', value)
        if not m:
            self.col.refuse(
                at,
                f'Unknown command "{at.directive}={value}" (ldirectord reads {at.directive} '
                f'only in double quotes: {at.directive}="...")',
            )
            return
        self.file.globals[at.directive] = (m.group(1), at)

    def g_execute(self, value: str, at: Origin) -> None:
        self.file.executes.append((value.strip(), at))

    def g_supervised(self, value: str, at: Origin) -> None:
        if value not in ("yes", "no"):
            self.col.refuse(at, "supervised must be 'yes' or 'no' (ldirectord's words)")
            return
        self.file.globals["supervised"] = (value, at)

    def g_emailalert(self, value: str, at: Origin) -> None:
        address = read_emailalert(value)
        if address is None:
            self.col.refuse(at, "no email address specified (ldirectord's words)")
            return
        self.file.globals[at.directive] = (address, at)

    def g_emailalertfreq(self, value: str, at: Origin) -> None:
        if not re.match(r"\d+", value, A):
            self.col.refuse(at, "invalid email alert frequency (ldirectord's words)")
            return
        self.file.globals[at.directive] = (value, at)

    def g_emailalertstatus(self, value: str, at: Origin) -> None:
        problem = check_alert_status(value)
        if problem:
            self.col.refuse(at, problem)
            return
        self.file.globals[at.directive] = (value, at)

    def g_emailalertfrom(self, value: str, at: Origin) -> None:
        if not value:
            self.col.refuse(at, "no email from address specified (ldirectord's words)")
            return
        self.file.globals[at.directive] = (value, at)

    def g_smtp(self, value: str, at: Origin) -> None:
        if not re.match(r"[0-9A-Za-z._+-]+", value, A):
            self.col.refuse(at, "invalid SMTP server address (ldirectord's words)")
            return
        self.file.globals[at.directive] = (value, at)

    def g_maintenancedir(self, value: str, at: Origin) -> None:
        if not value:
            self.col.refuse(at, "maintenance directory not specified (ldirectord's words)")
            return
        self.file.globals[at.directive] = (value, at)

    # -- a virtual section -------------------------------------------------------------

    def virtual(self, lines: list[str], i: int, m: re.Match[str]) -> int:
        af = 6 if m.group(1) else 4
        vattr = m.group(2)
        at = self.at(i + 1, "virtual6" if af == 6 else "virtual")
        v = self.virtual_address(vattr, af, at)
        j = i + 1
        while j < len(lines):
            raw = lines[j]
            if re.match(r"\s*#", raw):
                j += 1
                continue
            text = raw.split("#", 1)[0].replace("\t", "    ")
            body = re.match(r" {4,}(.+)", text)
            if not body:
                break
            j += 1
            if v is not None:
                self.virtual_line(v, body.group(1), self.at(j, ""), raw)
        if v is not None:
            self.file.virtuals.append(v)
        return j

    def virtual_address(self, vattr: str, af: int, at: Origin) -> Virtual | None:
        m4 = re.match(r"(\d+\.\d+\.\d+\.\d+):([0-9A-Za-z_-]+)", vattr, A)
        mh = re.match(r"([0-9A-Za-z._+-]+):([0-9A-Za-z_-]+)", vattr, A)
        mf = re.match(r"(\d+)", vattr, A)
        m6 = re.match(r"\[([0-9A-Fa-f:]+)\]:([0-9A-Za-z_-]+)", vattr, A)
        if m4 and af == 4:
            host, port = m4.group(1), m4.group(2)
            rest = vattr[m4.end() :]
        elif mh:
            host, port = mh.group(1), mh.group(2)
            rest = vattr[mh.end() :]
        elif mf:
            rest = vattr[mf.end() :]
            if rest.strip() and not rest.strip().startswith("#"):
                self.col.refuse(
                    at,
                    f"virtual={vattr.strip()}: ldirectord reads this as firewall mark "
                    f"{mf.group(1)} (it takes the leading digits when no :port follows); "
                    "write address:port, or the mark alone",
                )
                return None
            return Virtual(at, af, None, None, None, int(mf.group(1)))
        elif m6 and af == 4:
            self.col.refuse(
                at, 'cannot specify an IPv6 address here. please use "virtual6" instead.'
            )
            return None
        elif m6:
            host, port = m6.group(1), m6.group(2)
            if parse_ip(host) is None:
                self.col.refuse(at, "invalid ipv6 address for virtual server (ldirectord)")
                return None
            rest = vattr[m6.end() :]
        else:
            self.col.refuse(
                at, f"invalid address for virtual server (ldirectord's words): {vattr.strip()!r}"
            )
            return None
        if rest.strip() and not rest.strip().startswith("#"):
            self.col.warn(at, f"{rest.strip()!r} after the address is ignored, as by ldirectord")
        ip_port = f"[{host}]:{port}" if m6 and not (m4 or mh) else f"{host}:{port}"
        return Virtual(at, af, ip_port, host, port, None)

    def virtual_line(self, v: Virtual, rcmd: str, line_at: Origin, raw: str) -> None:
        for pattern, name, handler in VIRTUAL_DIRECTIVES:
            m = re.match(pattern, rcmd, A)
            if m:
                at = Origin(line_at.source, line_at.line, name)
                handler(self, v, m, at)
                return
        name = re.split(r"[\s=]", rcmd, maxsplit=1)[0] or rcmd
        at = Origin(line_at.source, line_at.line, name)
        hint = ""
        if name in QUOTED:
            hint = f' (ldirectord reads {name} only in double quotes: {name}="...")'
        elif '"' in raw and "#" in raw:
            hint = " (ldirectord cuts a line at '#', even inside quotes)"
        elif name in GLOBAL_ONLY:
            hint = f" ({name}= is a global directive: write it before the first virtual=)"
        elif not rcmd.strip():
            hint = " (a line of blanks inside a virtual section)"
        else:
            hint = hint_cr(raw)
        self.col.refuse(at, f'Unknown command "{raw.strip()}"{hint}')

    def v_real(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        six = m.group(2) is not None
        if six != (v.af == 6):
            want = "real6" if v.af == 6 else "real"
            self.col.refuse(at, f'cannot specify "{m.group(1)}" here.  please use "{want}" instead')
            return
        v.reals.append((m.group(3), Origin(at.source, at.line, m.group(1))))

    def v_yes_no(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        value = self.yes_no(m.group(1), at)
        if value is not None:
            v.values[at.directive] = (value, at)

    def v_checktype(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        value = m.group(1)
        digits = re.search(r"\d+", value, A)
        word = re.search(r"[\w-]+", value, A)
        if digits:
            if not re.fullmatch(r"\s*\d+\s*", value, A):
                self.col.refuse(
                    at,
                    f"checktype={value.strip()!r}: ldirectord would read it as the number "
                    f"{digits.group()}; write checktype={digits.group()} if that is what you mean",
                )
                return
            v.values["checktype"] = (int(digits.group()), at)
        elif word and word.group() in CHECKTYPES:
            v.values["checktype"] = (word.group(), at)
        else:
            self.col.refuse(at, f"{CHECKTYPE_ERROR} (ldirectord's words): {value.strip()!r}")

    def v_checkport(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        n = self.number(m.group(1), at, "invalid port", zero=True)
        if n is None:
            return
        if not 0 < n < 65536:
            self.col.refuse(at, "checkport must be in range 1..65536 (ldirectord's words)")
            return
        v.values["checkport"] = (n, at)

    def v_connecttimeout(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        self.g_connecttimeout(m.group(1), at)

    def v_load(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        if not re.search(r"\w+", m.group(1), A):
            self.col.refuse(at, "invalid string for load testing (ldirectord's words)")
            return
        v.values["load"] = (m.group(1), at)

    def v_scheduler(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        found = re.search(r"[a-z]+", m.group(1), A)
        if not found:
            self.col.refuse(
                at,
                "invalid scheduler, should be only lowercase letters (a-z) (ldirectord's words)",
            )
            return
        name = found.group()
        if name != m.group(1).strip():
            self.col.refuse(
                at,
                f"scheduler={m.group(1).strip()!r}: ldirectord would take {name!r} from it; "
                f"write scheduler={name} if that is what you mean",
            )
            return
        if name not in SCHEDULERS:
            self.col.refuse(
                at,
                f"scheduler {name!r} is not an IPVS scheduler (ldirectord passes any name on, "
                f"and ipvsadm then fails to create the service); use one of "
                f"{', '.join(sorted(SCHEDULERS))}",
            )
            return
        v.values["scheduler"] = (name, at)

    def v_persistent(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        n = self.number(m.group(1), at, "invalid persistent timeout", zero=True)
        if n is None:
            return
        if not 1 <= n <= 2678400:
            self.col.refuse(
                at,
                f"persistent={n}: ipvsadm refuses it (the timeout is 1 to 2678400 seconds), "
                "so ldirectord's service was never created",
            )
            return
        v.values["persistent"] = (n, at)

    def v_netmask(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        value = m.group(1)
        if v.af == 6:
            if not re.fullmatch(r"\d+", value, A) or not 1 <= int(value) <= 128:
                self.col.refuse(
                    at,
                    "invalid netmask: a prefix length between 1 and 128 is required "
                    "(ldirectord's words)",
                )
                return
        elif not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", value, A):
            self.col.refuse(
                at, "invalid netmask: dotted quad notation is required (ldirectord's words)"
            )
            return
        v.values["netmask"] = (value, at)

    def v_protocol(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        word = re.search(r"\w+", m.group(1), A)
        if not word:
            self.col.refuse(at, "invalid protocol (ldirectord's words)")
            return
        name = word.group()
        if v.fwmark is not None:
            if name != "fwm":
                self.col.refuse(
                    at,
                    "protocol must be fwm if the virtual service is a fwmark (a number) "
                    "(ldirectord's words)",
                )
            return
        if name not in ("tcp", "udp"):
            self.col.refuse(
                at,
                "protocol must be tcp or udp if the virtual service is an address and port "
                "(ldirectord's words)",
            )
            return
        v.values["protocol"] = (name, at)

    def v_ops(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        if m.group(1) not in ("yes", "no"):
            self.col.refuse(at, "ops must be 'yes' or 'no' (ldirectord's words)")
            return
        v.values["ops"] = (m.group(1), at)

    def v_service(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        word = re.search(r"\w+", m.group(1), A)
        if not word or word.group() not in SERVICES:
            self.col.refuse(at, f"{SERVICE_ERROR} (ldirectord's words): {m.group(1).strip()!r}")
            return
        v.values["service"] = (word.group(), at)

    def v_httpmethod(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        word = re.search(r"\w+", m.group(1), A)
        if not word or word.group().upper() not in ("GET", "HEAD"):
            self.col.refuse(at, "httpmethod must be GET or HEAD (ldirectord's words)")
            return
        v.values["httpmethod"] = (word.group().upper(), at)

    def v_virtualhost(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        found = re.match(r'"?([^"]*)"?', m.group(1))
        v.values["virtualhost"] = (found.group(1) if found else "", at)

    def v_fallback(self, v: Virtual, m: re.Match[str], at: Origin) -> None:
        six = m.group(2) is not None
        if six != (v.af == 6):
            want = "fallback6" if v.af == 6 else "fallback"
            self.col.refuse(at, f'cannot specify "{m.group(1)}" here.  please use "{want}" instead')
            return
        parsed = parse_fallback(m.group(3))
        if isinstance(parsed, str):
            self.col.refuse(at, parsed)
            return
        v.values["fallback"] = (parsed, Origin(at.source, at.line, m.group(1)))


Handler = Callable[[LdParser, str, Origin], None]
VirtualHandler = Callable[[LdParser, Virtual, re.Match[str], Origin], None]


def g_number(reason: str, *, warn: str = "") -> Handler:
    def handle(parser: LdParser, value: str, at: Origin) -> None:
        n = parser.number(value, at, reason)
        if n is not None:
            parser.file.globals[at.directive] = (n, at)
            if warn:
                parser.col.warn(at, warn)

    return handle


def v_quoted(reason: str) -> VirtualHandler:
    def handle(parser: LdParser, v: Virtual, m: re.Match[str], at: Origin) -> None:
        if not m.group(1):
            parser.col.refuse(at, f"{reason} (ldirectord's words)")
            return
        v.values[at.directive] = (m.group(1), at)

    return handle


def v_number(reason: str, *, zero: bool = False) -> VirtualHandler:
    def handle(parser: LdParser, v: Virtual, m: re.Match[str], at: Origin) -> None:
        n = parser.number(m.group(1), at, reason, zero=zero)
        if n is not None:
            v.values[at.directive] = (n, at)

    return handle


def v_text(reason: str) -> VirtualHandler:
    def handle(parser: LdParser, v: Virtual, m: re.Match[str], at: Origin) -> None:
        text = m.group(1) if m.group(1) is not None else m.group(2)
        if not text:
            parser.col.refuse(at, f"{reason} (ldirectord's words)")
            return
        v.values[at.directive] = (text, at)

    return handle


def v_store(check: Handler) -> VirtualHandler:
    """A per-virtual directive checked as its global namesake is."""

    def handle(parser: LdParser, v: Virtual, m: re.Match[str], at: Origin) -> None:
        before = len(parser.col.problems)
        saved = parser.file.globals.get(at.directive)
        check(parser, m.group(1), at)
        if len(parser.col.problems) == before:
            v.values[at.directive] = parser.file.globals[at.directive]
        if saved is None:
            parser.file.globals.pop(at.directive, None)
        else:
            parser.file.globals[at.directive] = saved

    return handle


def parse_fallback(value: str) -> tuple[str, str | None, str] | str:
    """parse_fallback(): (host, port text or None, forward), or ldirectord's complaint."""
    tokens = value.split()
    if not tokens:
        return "invalid fallback server: an address is missing"
    if len(tokens) >= 2:
        hostport, fwd = tokens[-2], tokens[-1]
        if fwd not in ("gate", "masq", "ipip"):
            return "forward method must be gate, masq or ipip (ldirectord's words)"
    else:
        hostport, fwd = tokens[0], "gate"
    m = re.search(r":(\d+|[A-Za-z0-9_-]+)$", hostport, A)
    if m:
        return hostport[: m.start()], m.group(1), fwd
    return hostport, None, fwd


def read_emailalert(value: str) -> str | None:
    m = re.fullmatch(r'"([^"]*)"', value)
    address = m.group(1) if m else value
    return address or None


def check_alert_status(value: str) -> str | None:
    states = re.split(r"\s*,\s*", value)
    for s in states:
        if s not in ALERT_STATES:
            return f'invalid email alert status at: "{s}" (ldirectord\'s words)'
    if "none" in states and len(states) > 1:
        other = next(s for s in states if s != "none")
        return f'invalid email alert status: "{other}" specified with "none" (ldirectord)'
    return None


GLOBALS: dict[str, Handler] = {
    "checktimeout": g_number("invalid check timeout value"),
    "connecttimeout": LdParser.g_connecttimeout,
    "negotiatetimeout": g_number("invalid negotiate timeout value"),
    "checkinterval": g_number("invalid check interval value"),
    "checkcount": g_number(
        "invalid check count value",
        warn="checkcount is deprecated in ldirectord (see failurecount); it sets the ping "
        "attempts per check",
    ),
    "failurecount": g_number("invalid failure count value"),
    "fallback": LdParser.g_fallback,
    "fallback6": LdParser.g_fallback,
    "fallbackcommand": LdParser.g_fallbackcommand,
    "autoreload": LdParser.g_yes_no,
    "callback": LdParser.g_quoted,
    "logfile": LdParser.g_quoted,
    "execute": LdParser.g_execute,
    "fork": LdParser.g_yes_no,
    "supervised": LdParser.g_supervised,
    "quiescent": LdParser.g_yes_no,
    "readdquiescent": LdParser.g_yes_no,
    "emailalert": LdParser.g_emailalert,
    "emailalertfreq": LdParser.g_emailalertfreq,
    "emailalertstatus": LdParser.g_emailalertstatus,
    "emailalertfrom": LdParser.g_emailalertfrom,
    "cleanstop": LdParser.g_yes_no,
    "smtp": LdParser.g_smtp,
    "maintenancedir": LdParser.g_maintenancedir,
}
QUOTED = {"request", "receive", "login", "passwd", "database", "secret", "callback", "logfile"}
GLOBAL_ONLY = {
    "autoreload",
    "callback",
    "logfile",
    "execute",
    "fork",
    "supervised",
    "readdquiescent",
    "emailalertfrom",
    "maintenancedir",
}
VIRTUAL_ONLY = {
    "real",
    "real6",
    "request",
    "receive",
    "checktype",
    "checkcommand",
    "checkport",
    "login",
    "passwd",
    "database",
    "secret",
    "load",
    "scheduler",
    "persistent",
    "netmask",
    "protocol",
    "ops",
    "service",
    "httpmethod",
    "virtualhost",
    "monitorfile",
}

VIRTUAL_DIRECTIVES: list[tuple[str, str, VirtualHandler]] = [
    (r"(real(6)?)\s*=\s*(.*)", "real", LdParser.v_real),
    (r'request\s*=\s*"(.*)"', "request", v_quoted("no request string specified")),
    (r'receive\s*=\s*"(.*)"', "receive", v_quoted("invalid receive string")),
    (r"checktype\s*=\s*(.*)", "checktype", LdParser.v_checktype),
    (
        r'checkcommand\s*=\s*(?:"(.*)"|(.*))',
        "checkcommand",
        v_text("invalid check command"),
    ),
    (r"checktimeout\s*=\s*(.*)", "checktimeout", v_number("invalid check timeout")),
    (r"connecttimeout\s*=\s*(.*)", "connecttimeout", LdParser.v_connecttimeout),
    (
        r"negotiatetimeout\s*=\s*(.*)",
        "negotiatetimeout",
        v_number("invalid negotiate timeout"),
    ),
    (r"checkcount\s*=\s*(.*)", "checkcount", v_number("invalid check count")),
    (
        r"failurecount\s*=\s*(.*)",
        "failurecount",
        v_number("invalid failure count"),
    ),
    (
        r"checkinterval\s*=\s*(.*)",
        "checkinterval",
        v_number("invalid checkinterval"),
    ),
    (r"checkport\s*=\s*(.*)", "checkport", LdParser.v_checkport),
    (r'login\s*=\s*"(.*)"', "login", v_quoted("invalid login string")),
    (r'passwd\s*=\s*"(.*)"', "passwd", v_quoted("invalid password")),
    (r'database\s*=\s*"(.*)"', "database", v_quoted("invalid database")),
    (r'secret\s*=\s*"(.*)"', "secret", v_quoted("invalid secret")),
    (r'load\s*=\s*"(.*)"', "load", LdParser.v_load),
    (r"scheduler\s*=\s*(.*)", "scheduler", LdParser.v_scheduler),
    (r"persistent\s*=\s*(.*)", "persistent", LdParser.v_persistent),
    (r"netmask\s*=\s*(.*)", "netmask", LdParser.v_netmask),
    (r"protocol\s*=\s*(.*)", "protocol", LdParser.v_protocol),
    (r"ops\s*=\s*(.*)", "ops", LdParser.v_ops),
    (r"service\s*=\s*(.*)", "service", LdParser.v_service),
    (r"httpmethod\s*=\s*(.*)", "httpmethod", LdParser.v_httpmethod),
    (r"virtualhost\s*=\s*(.*)", "virtualhost", LdParser.v_virtualhost),
    (r"(fallback(6)?)\s*=\s*(.*)", "fallback", LdParser.v_fallback),
    (
        r'fallbackcommand\s*=\s*(?:"(.*)"|(.*))',
        "fallbackcommand",
        v_text("invalid fallback command"),
    ),
    (r"quiescent\s*=\s*(.*)", "quiescent", LdParser.v_yes_no),
    (r"emailalert\s*=\s*(.*)", "emailalert", v_store(LdParser.g_emailalert)),
    (
        r"emailalertfreq\s*=\s*(\d*.*)",
        "emailalertfreq",
        v_store(LdParser.g_emailalertfreq),
    ),
    (
        r"emailalertstatus\s*=\s*(.*)",
        "emailalertstatus",
        v_store(LdParser.g_emailalertstatus),
    ),
    (
        r'monitorfile\s*=\s*(?:"(.*)"|(.*))',
        "monitorfile",
        v_text("unable to open monitorfile"),
    ),
    (r"cleanstop\s*=\s*(.*)", "cleanstop", LdParser.v_yes_no),
    (r"smtp\s*=\s*(.*)", "smtp", v_store(LdParser.g_smtp)),
]


def parse_ldirectord(path: Path, col: Collector) -> LdFile | None:
    return LdParser(path, col).parse()


def checks_command(command: str, checks_dir: PurePosixPath) -> str | None:
    """The file name of `command` if it is a file directly in `checks_dir`."""
    p = PurePosixPath(command)
    if "/" not in command:
        return command
    if p.is_absolute() and PurePosixPath(*_normal(p).parts[:-1]) == _normal(checks_dir):
        return p.name
    return None


def _normal(p: PurePosixPath) -> PurePosixPath:
    parts: list[str] = []
    for part in p.parts:
        if part == "..":
            if len(parts) > 1:
                parts.pop()
        elif part != ".":
            parts.append(part)
    return PurePosixPath(*parts)


def ipv4_problem(text: str) -> str:
    if leading_zero_octet(text):
        return (
            f"{text} has a leading zero, which ldirectord's resolver reads as octal; "
            "write the address without leading zeros"
        )
    return f"{text} is not an IPv4 address"


def resolve_host(
    text: str, af: int
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address | None, str]:
    """An address for `text` (an IP, or localhost) and, when there is none, why."""
    host = text.strip("[]")
    if host == "localhost":
        return ipaddress.ip_address("127.0.0.1" if af == 4 else "::1"), ""
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", host, A):
        ip = parse_ip(host) if not leading_zero_octet(host) else None
        if ip is None:
            return None, ipv4_problem(host)
    else:
        ip = parse_ip(host)
    if ip is None:
        return None, (
            f"{host!r} is a host name; etcdha keeps addresses, so that every director "
            "uses the same one: write its IP address"
        )
    if ip.version != af:
        return None, f"{ip} is IPv{ip.version}, but this is an IPv{af} service"
    return ip, ""
