"""Heartbeat's ha.cf, read as Heartbeat (3.0.6, Debian 12) reads it.

Each line: leading white space skipped, everything from `#` on dropped, then a
directive name and its values separated by white space or commas. Directives
that take one value per token (`node a b`, `ping x y`, `keepalive 2`) apply
each token in turn; whole-line ones (`respawn`, `stonith_host`, `ping_group`,
the media) take the rest of the line. Times are seconds unless suffixed `ms`
(or `us`), as cl_get_msec() reads them. An unknown directive is an error, as
for Heartbeat ("Illegal directive").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from etcdha.legacy.common import Collector, Origin, parse_ip, read_lines, valid_name
from etcdha.spec import MIN_LEASE_TTL

WHITESPACE = " \t\n\r\f"
DELIMS = re.compile(r"[, \t\n\r\f]+")
TRUE = {"true", "on", "yes", "y", "1"}
FALSE = {"false", "off", "no", "n", "0"}

# Heartbeat's defaults (config.c, init_config and the Directives table).
DEFAULT_KEEPALIVE_MS = 1000
DEFAULT_DEADTIME_MS = 30000

MEMBERSHIP = (
    "not needed: the directors no longer talk to each other; etcd carries membership "
    "and leadership. Protect etcd with TLS client certificates and RBAC"
)
LOGGING = (
    "not needed: etcdha logs one sentence per decision to stderr (journald under "
    "systemd); use --log-format json for machines"
)
NOT_NEEDED: dict[str, str] = {
    "udpport": MEMBERSHIP,
    "bcast": MEMBERSHIP,
    "mcast": MEMBERSHIP,
    "mcast6": MEMBERSHIP,
    "ucast": MEMBERSHIP,
    "ucast6": MEMBERSHIP,
    "serial": MEMBERSHIP,
    "baud": MEMBERSHIP,
    "hopfudge": MEMBERSHIP,
    "compression": "not needed: no heartbeat messages to compress; etcd carries the state",
    "compression_threshold": "not needed: no heartbeat messages to compress",
    "traditional_compression": "not needed: no heartbeat messages to compress",
    "msgfmt": "not needed: no heartbeat messages; etcd values are JSON",
    "max_rexmit_delay": "not needed: no heartbeat messages to retransmit",
    "hbgenmethod": "not needed: etcd's revisions order every change",
    "uuidfrom": "not needed: a director is known by its node name",
    "memreserve": "not needed: etcdha is an ordinary Python process",
    "realtime": "not needed: etcdha runs at normal priority; lease renewal has a margin",
    "rtprio": "not needed: etcdha runs at normal priority; lease renewal has a margin",
    "debug": "not needed: use --log-level debug",
    "coredumps": "not needed: core dumps follow the system's settings (systemd-coredump)",
    "coreroot": "not needed: core dumps follow the system's settings (systemd-coredump)",
    "log_badpack": "not needed: no heartbeat packets",
    "use_apphbd": "not needed: systemd supervises etcdha (Restart=, WatchdogSec=)",
    "env": "not needed: no respawned clients to pass environment to",
    "logfile": LOGGING,
    "debugfile": LOGGING,
    "logfacility": LOGGING,
    "use_logd": LOGGING,
    "conn_logd_time": LOGGING,
    "syslogmsgfmt": LOGGING,
    "apiauth": (
        "not needed: the Heartbeat API and its clients (ipfail, cl_status) are gone; etcd "
        "RBAC decides who may change the cluster's state"
    ),
    "cluster": "not needed: name the cluster with --cluster (ETCDHA_CLUSTER) instead",
    "quorum_server": "not needed: etcd's own quorum decides; there is no quorum server",
    "record_config_changes": "not needed: CRM only; `etcdha events` records changes",
    "record_pengine_inputs": "not needed: CRM only",
    "enable_config_writes": "not needed: CRM only; the config lives in etcd",
    "warntime": (
        "not needed: there are no late heartbeats to warn about; etcdha's metrics show "
        "lease renewals"
    ),
    "initdead": (
        "not needed: a starting director reads the current leader from etcd instead of "
        "waiting for silence"
    ),
}
ONE_VALUE_PER_TOKEN = {
    "node",
    "keepalive",
    "deadtime",
    "deadping",
    "auto_failback",
    "nice_failback",
    "crm",
    "autojoin",
    "ping",
    "ping6",
    "watchdog",
}
WHOLE_LINE = {"respawn", "failfast", "stonith", "stonith_host", "ping_group"}
LEGAL = set(NOT_NEEDED) | ONE_VALUE_PER_TOKEN | WHOLE_LINE


@dataclass
class Timed:
    ms: int
    at: Origin | None = None


@dataclass
class HaCf:
    source: str
    nodes: list[tuple[str, Origin]] = field(default_factory=list)
    auto_failback: bool = True
    keepalive: Timed = field(default_factory=lambda: Timed(DEFAULT_KEEPALIVE_MS))
    deadtime: Timed = field(default_factory=lambda: Timed(DEFAULT_DEADTIME_MS))
    deadping: Timed | None = None
    initdead: Timed | None = None
    ping_nodes: list[tuple[str, Origin]] = field(default_factory=list)
    ping_sets: int = 0  # `ping` nodes each count alone, a ping_group counts once
    ipfail: bool = False


def parse_msec(text: str) -> int | None:
    """cl_get_msec(): seconds, or `ms` / `us` suffixed; None if Heartbeat refuses it."""
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|msec|us|usec)?", text.strip(), re.I | re.A)
    if not m:
        return None
    value = float(m.group(1))
    unit = (m.group(2) or "s").lower()
    if unit.startswith("ms"):
        return int(value + 0.5)
    if unit.startswith("us"):
        return int(value / 1000 + 0.5)
    return int(value * 1000 + 0.5)


def seconds(ms: int) -> str:
    return f"{ms / 1000:g}s"


class HaCfParser:
    def __init__(self, path: Path, col: Collector) -> None:
        self.path = path
        self.col = col
        self.cf = HaCf(str(path))
        self.nice_failback_seen = False  # Heartbeat's global nice_failback flag

    def at(self, line: int | None, directive: str) -> Origin:
        return Origin(str(self.path), line, directive)

    def parse(self) -> HaCf | None:
        lines = read_lines(self.path, self.col, "ha.cf")
        if lines is None:
            return None
        for number, raw in enumerate(lines, 1):
            self.line(number, raw)
        self.finish()
        return self.cf

    def line(self, number: int, raw: str) -> None:
        bp = raw.lstrip(WHITESPACE).split("#", 1)[0]
        bp = re.split(r"[\r\n]", bp, maxsplit=1)[0]
        if not bp.strip(WHITESPACE):
            return
        directive = re.split(r"[ \t\n\r\f]", bp, maxsplit=1)[0]
        rest = bp[len(directive) :].lstrip(", \t\n\r\f")
        at = self.at(number, directive)
        if directive == "udp":  # Heartbeat's own alias
            directive = "bcast"
        if directive not in LEGAL:
            hint = " (hbaping is not built in Debian's Heartbeat)" if directive == "hbaping" else ""
            self.col.refuse(at, f"Illegal directive [{directive}] in ha.cf{hint}")
            return
        if directive in NOT_NEEDED:
            self.not_needed(directive, rest, at)
            return
        if directive in WHOLE_LINE:
            getattr(self, "d_" + directive)(rest, at)
            return
        tokens = [t for t in DELIMS.split(rest) if t]
        if not tokens:
            self.col.warn(at, f"{directive} has no value; Heartbeat ignores the line")
            return
        for token in tokens:
            getattr(self, "d_" + directive)(token, at)

    # -- directives that only need checking ------------------------------------

    def not_needed(self, directive: str, rest: str, at: Origin) -> None:
        if directive == "warntime":
            for token in DELIMS.split(rest):
                if token and (parse_msec(token) or 0) <= 0:
                    self.col.refuse(at, f"Warn time [{token}] is invalid (Heartbeat's words)")
                    return
        if directive == "initdead":
            for token in DELIMS.split(rest):
                if token:
                    ms = parse_msec(token)
                    if ms is None:
                        self.col.refuse(at, f"initdead {token!r} is not a time")
                        return
                    self.cf.initdead = Timed(ms, at)
        self.col.not_needed(at, NOT_NEEDED[directive])

    # -- one value per token -----------------------------------------------------

    def d_node(self, token: str, at: Origin) -> None:
        name = token.lower()  # Heartbeat lowercases node names (g_strdown)
        if not valid_name(name):
            self.col.refuse(
                at,
                f"node name {token!r} is not usable: etcdha names are 1-63 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit",
            )
            return
        for other, where in self.cf.nodes:
            if other == name:
                self.col.refuse(at, f"node {name} is already declared on line {where.line}")
                return
        self.cf.nodes.append((name, at))
        preference = "most preferred" if len(self.cf.nodes) == 1 else f"#{len(self.cf.nodes)}"
        self.col.mapped(at, f"node {name} -> nodes ({preference} in order of preference)")

    def time(self, token: str, at: Origin, *, positive: bool) -> int | None:
        ms = parse_msec(token)
        if ms is None or (positive and ms <= 0):
            self.col.refuse(
                at,
                f"{at.directive} {token!r} is not a time Heartbeat accepts (seconds, or a "
                "number suffixed ms)",
            )
            return None
        return ms

    def d_keepalive(self, token: str, at: Origin) -> None:
        ms = self.time(token, at, positive=True)
        if ms is not None:
            self.cf.keepalive = Timed(ms, at)
            self.col.mapped(at, f"keepalive {token} -> election.keepalive_interval {seconds(ms)}")

    def d_deadtime(self, token: str, at: Origin) -> None:
        ms = self.time(token, at, positive=False)
        if ms is not None:
            self.cf.deadtime = Timed(ms, at)
            self.col.mapped(
                at,
                f"deadtime {token} -> election.lease_ttl {seconds(ms)}: a leader that stops "
                "renewing loses the group after this long",
            )

    def d_deadping(self, token: str, at: Origin) -> None:
        ms = self.time(token, at, positive=False)
        if ms is not None:
            self.cf.deadping = Timed(ms, at)

    def boolean(self, token: str) -> bool | None:
        low = token.lower()
        return True if low in TRUE else False if low in FALSE else None

    def d_auto_failback(self, token: str, at: Origin) -> None:
        value = self.boolean(token)
        if value is None and token.lower() != "legacy":
            self.col.refuse(at, f"auto_failback {token!r}: Heartbeat takes on, off or legacy")
            return
        if value is None:  # legacy: resources go back to their node, as `on`
            self.cf.auto_failback = True
            self.nice_failback_seen = False
            self.col.warn(
                at,
                "auto_failback legacy -> election.auto_failback true: legacy also moved "
                "groups back to their preferred node, as on does",
            )
            return
        self.cf.auto_failback = value
        self.nice_failback_seen = True
        self.col.mapped(at, f"auto_failback {token} -> election.auto_failback {str(value).lower()}")

    def d_nice_failback(self, token: str, at: Origin) -> None:
        if self.boolean(token) is None:
            self.col.refuse(at, f"nice_failback {token!r} is not a boolean")
            return
        # config.c's set_nice_failback() looks at the flag an earlier auto_failback
        # line set, not at this value: after auto_failback on/off it means off,
        # otherwise legacy.
        self.cf.auto_failback = not self.nice_failback_seen
        self.col.warn(
            at,
            "nice_failback is obsolete; Heartbeat read it as auto_failback "
            + ("off" if self.nice_failback_seen else "legacy")
            + f" -> election.auto_failback {str(self.cf.auto_failback).lower()}",
        )

    def d_crm(self, token: str, at: Origin) -> None:
        low = token.lower()
        value = self.boolean(token)
        if value is False:
            self.col.not_needed(
                at, "crm off: Heartbeat v1 resource management (haresources), as imported"
            )
            return
        if value is None and low not in ("respawn", "minimal", "manual", "valgrind"):
            self.col.refuse(at, f"crm {token!r}: Heartbeat takes on, off, respawn or minimal")
            return
        self.col.refuse(
            at,
            f"crm {token}: this cluster was run by the CRM (Pacemaker), which ignores "
            "haresources; etcdha imports Heartbeat v1 resource management only. Describe the "
            "groups in cluster.yaml from the CIB by hand, or set crm off if haresources is "
            "what really ran",
        )

    def d_autojoin(self, token: str, at: Origin) -> None:
        low = token.lower()
        if low == "none":
            self.col.not_needed(at, "autojoin none: the nodes are the ones listed")
        elif low in ("other", "any"):
            self.col.refuse(
                at,
                f"autojoin {token}: R1 style resource management conflicts with autojoin "
                "set (Heartbeat refuses to start); list the nodes with node lines",
            )
        else:
            self.col.refuse(at, f"Invalid autojoin directive [{token}]")

    def d_ping(self, token: str, at: Origin) -> None:
        ip = parse_ip(token)
        if ip is None or (at.directive == "ping6") != (ip.version == 6):
            family = "IPv6" if at.directive == "ping6" else "IPv4"
            self.col.refuse(
                at,
                f"{at.directive} {token!r}: write the {family} address of the ping node (etcdha "
                "keeps addresses, so that every director pings the same host)",
            )
            return
        self.cf.ping_nodes.append((str(ip), at))
        self.cf.ping_sets += 1
        self.col.warn(at, ping_sentence(f"{at.directive} {ip}"))

    d_ping6 = d_ping

    def d_watchdog(self, token: str, at: Origin) -> None:
        self.col.warn(
            at,
            f"watchdog {token}: not used. etcdha does not reboot the machine; its fence guard, "
            "a separate process, removes the group's addresses when the agent stops renewing "
            "its lease (killed, hung or stopped). Use systemd's WatchdogSec= to restart a "
            "hung agent",
        )

    # -- whole line --------------------------------------------------------------

    def d_ping_group(self, rest: str, at: Origin) -> None:
        tokens = [t for t in DELIMS.split(rest) if t]
        if len(tokens) < 2:
            self.col.refuse(at, "ping_group needs a name and at least one address")
            return
        name, members = tokens[0], tokens[1:]
        good: list[str] = []
        for token in members:
            ip = parse_ip(token)
            if ip is None:
                self.col.refuse(
                    at, f"ping_group {name}: {token!r} is not an IP address (write the address)"
                )
                return
            good.append(str(ip))
        for address in good:
            self.cf.ping_nodes.append((address, at))
        self.cf.ping_sets += 1
        self.col.warn(at, ping_sentence(f"ping_group {name} ({', '.join(good)})"))

    def d_respawn(self, rest: str, at: Origin) -> None:
        parts = rest.split()
        command = " ".join(parts[1:])
        program = parts[1] if len(parts) > 1 else ""
        if program.rsplit("/", 1)[-1] == "ipfail":
            self.cf.ipfail = True
            self.col.not_needed(
                at,
                "ipfail: not needed: a director that reaches none of the ping nodes is not "
                "eligible and hands its groups over, as ipfail arranged",
            )
            return
        self.col.refuse(
            at,
            f"{at.directive} {command or rest}: Heartbeat kept this program running; etcdha "
            "runs no other programs. Run it as a systemd service of its own (Restart=always) "
            "and remove this line",
        )

    d_failfast = d_respawn

    def d_stonith(self, rest: str, at: Origin) -> None:
        self.col.warn(
            at,
            f"{at.directive}: not used. etcdha does not power off a peer: a leader that cannot "
            "renew its lease removes its own addresses before the lease can expire, and a "
            "fence guard outside the agent does the same if the agent is killed or hangs. A "
            "whole machine that freezes is not covered; keep a STONITH device outside etcdha "
            "if you need that",
        )

    d_stonith_host = d_stonith

    # -- after the last line -------------------------------------------------------

    def finish(self) -> None:
        cf = self.cf
        whole = self.at(None, "ha.cf")
        if not cf.nodes:
            self.col.refuse(whole, "no nodes defined (Heartbeat's words): add node lines")
        if cf.initdead is not None and cf.initdead.ms < cf.deadtime.ms:
            self.col.refuse(
                cf.initdead.at or whole,
                f"Initial dead time [{cf.initdead.ms}] is smaller than deadtime "
                f"[{cf.deadtime.ms}] (Heartbeat refuses to start)",
            )
        if cf.deadping is not None and cf.deadping.ms <= 2 * cf.keepalive.ms:
            self.col.refuse(
                cf.deadping.at or whole,
                f"Ping dead time [{cf.deadping.ms}] is too small compared to keepalive "
                f"[{cf.keepalive.ms}] (Heartbeat refuses to start)",
            )
        self.check_lease()
        if cf.ping_sets > 1:
            self.col.warn(
                cf.ping_nodes[0][1],
                "several ping nodes: Heartbeat's ipfail compared how many each director "
                "reached; etcdha counts a director eligible when any one of them answers (as "
                "one ping_group)",
            )
        if cf.deadping is not None and cf.ping_nodes:
            self.col.mapped(
                cf.deadping.at or whole,
                f"deadping -> ping nodes are given up after {seconds(cf.deadping.ms)} without "
                "an answer (election.ping_failures x ping_interval)",
            )

    def check_lease(self) -> None:
        cf = self.cf
        ttl, ka = cf.deadtime.ms / 1000, cf.keepalive.ms / 1000
        dead_at = cf.deadtime.at or self.at(None, "deadtime")
        if ttl < MIN_LEASE_TTL:
            self.col.refuse(
                dead_at,
                f"deadtime {seconds(cf.deadtime.ms)} would be a lease TTL below etcd's "
                f"minimum of {MIN_LEASE_TTL:g}s: set deadtime 2 or more (and keepalive at most "
                "a third of it)",
            )
            if cf.keepalive.at is None:
                return
        if ka > ttl / 3:
            fix = math.floor(ttl / 3 * 1000)
            heartbeat_too = (
                " (Heartbeat itself refuses a deadtime of twice the keepalive or less)"
                if cf.deadtime.ms <= 2 * cf.keepalive.ms
                else ""
            )
            self.col.refuse(
                cf.keepalive.at or dead_at,
                f"keepalive {seconds(cf.keepalive.ms)} is more than a third of deadtime "
                f"{seconds(cf.deadtime.ms)}: etcdha renews its lease every keepalive and must "
                "be able to miss two renewals before the lease (deadtime) runs out. Set "
                f"keepalive to at most {fix}ms, or deadtime to at least "
                f"{seconds(3 * cf.keepalive.ms)}{heartbeat_too}",
            )


def ping_sentence(what: str) -> str:
    return (
        f"{what} -> election.ping_nodes: the ping node (arbitration device) now gates "
        "eligibility: a director that reaches none of the ping nodes is not "
        "eligible and hands its groups over. Heartbeat v1 without ipfail only watched it and "
        "did not fail over on it, so behaviour changes (for the better)"
    )


def parse_hacf(path: Path, col: Collector) -> HaCf | None:
    return HaCfParser(path, col).parse()


def ping_timing(cf: HaCf) -> tuple[float, int]:
    """(ping_interval, ping_failures): Heartbeat pings every keepalive and gives a
    ping node up after deadping (default: deadtime) without an answer."""
    deadping = cf.deadping.ms if cf.deadping is not None else cf.deadtime.ms
    interval = cf.keepalive.ms / 1000
    return interval, max(1, round(deadping / cf.keepalive.ms))
