"""Kernel settings a director needs for the services its config gives it.

:func:`preflight` reads /proc/sys and returns one :class:`Finding` per setting
that matters for this config (those already right included, with ``ok``):

- ``net.ipv4.ip_forward`` (``net.ipv6.conf.all.forwarding`` for IPv6) = 1 when
  a real is masq (NAT): the director routes the replies back to the clients;
- ``net.ipv4.vs.expire_nodest_conn`` = 1 when a service is not quiescent: a
  real taken out on failure has its connections expired at once instead of
  leaving clients hanging on a dead server;
- ``net.ipv4.vs.expire_quiescent_template`` = 1 for persistent services: a
  real at weight 0 (quiescent and down, or drained) would otherwise keep
  getting the new connections of clients it already has a template for;
- ``net.ipv4.vs.conntrack`` = 1 when a real is masq (advised, for directors
  whose firewall filters by connection state): such rules then see IPVS
  connections instead of dropping them as invalid;
- ``rp_filter`` of each interface 0 or 2 (advised) when it is strict (1): strict
  reverse-path filtering drops client packets whose way back leaves by another
  interface, common on directors with a separate management network.

:func:`fix` writes the wanted values of the findings that are not ok.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from etcdha.ipvs.desired import services_of
from etcdha.spec import ClusterSpec, Forward

PROC_SYS = Path("/proc/sys")


@dataclass(frozen=True)
class Finding:
    setting: str  # sysctl name, e.g. net.ipv4.ip_forward
    wanted: tuple[str, ...]  # accepted values; the first is what fix() writes
    actual: str | None  # None: the setting does not exist (module not loaded)
    why: str
    required: bool = True  # False: advised only

    @property
    def ok(self) -> bool:
        return self.actual in self.wanted

    def to_json(self) -> dict[str, object]:
        return {
            "setting": self.setting,
            "wanted": " or ".join(self.wanted),
            "actual": self.actual,
            "ok": self.ok,
            "required": self.required,
            "why": self.why,
        }

    def __str__(self) -> str:
        actual = "missing" if self.actual is None else self.actual
        return f"{self.setting} is {actual}, wanted {' or '.join(self.wanted)}: {self.why}"


def _path(root: Path, setting: str) -> Path:
    return root.joinpath(*setting.split("."))


def _read(root: Path, setting: str) -> str | None:
    try:
        return _path(root, setting).read_text().strip()
    except OSError:
        return None


def preflight(
    spec: ClusterSpec, group: str | None = None, *, proc_sys: Path = PROC_SYS
) -> list[Finding]:
    """The settings this config needs (for one group's services, or all)."""
    services = services_of(spec, group)
    masq = {vs.ip_family for vs in services for r in vs.reals if r.forward is Forward.masq}
    findings: list[Finding] = []

    def add(setting: str, wanted: tuple[str, ...], why: str, required: bool = True) -> None:
        findings.append(Finding(setting, wanted, _read(proc_sys, setting), why, required))

    if 4 in masq:
        add(
            "net.ipv4.ip_forward",
            ("1",),
            "masq (NAT) reals answer through the director, which must route the replies",
        )
    if 6 in masq:
        add(
            "net.ipv6.conf.all.forwarding",
            ("1",),
            "IPv6 masq (NAT) reals answer through the director, which must route the replies",
        )
    if any(not vs.quiescent for vs in services):
        add(
            "net.ipv4.vs.expire_nodest_conn",
            ("1",),
            "reals that fail are removed (quiescent: no); their connections should end "
            "at once rather than hang",
        )
    if any(vs.persistence is not None for vs in services):
        add(
            "net.ipv4.vs.expire_quiescent_template",
            ("1",),
            "persistent services: a real at weight 0 (quiescent, or drained) must not keep "
            "the new connections of clients it has a persistence template for",
        )
    if masq:
        add(
            "net.ipv4.vs.conntrack",
            ("1",),
            "if the director's firewall filters by connection state, it drops IPVS NAT "
            "packets as invalid unless IPVS keeps conntrack entries for them (costs some "
            "speed; leave it 0 without such rules)",
            required=False,
        )
    if services:
        conf = proc_sys / "net" / "ipv4" / "conf"
        all_value = _read(proc_sys, "net.ipv4.conf.all.rp_filter") or "0"
        names = sorted(p.name for p in conf.iterdir()) if conf.is_dir() else []
        for name in names:
            if name in ("all", "default", "lo"):
                continue
            value = _read(proc_sys, f"net.ipv4.conf.{name}.rp_filter")
            if value is None:
                continue
            effective = str(max(int(value), int(all_value))) if value.isdigit() else value
            if effective == "1":
                findings.append(
                    Finding(
                        f"net.ipv4.conf.{name}.rp_filter",
                        ("2", "0"),
                        effective,
                        f"strict reverse-path filtering on {name} (the larger of 'all' and the "
                        "interface's value counts) drops client packets whose way back leaves "
                        "by another interface",
                        required=False,
                    )
                )
    return findings


def fix(findings: list[Finding], *, proc_sys: Path = PROC_SYS) -> list[Finding]:
    """Write the wanted value of every finding that is not ok; the findings as
    read back afterwards. A strict net.ipv4.conf.all.rp_filter is relaxed too,
    since it overrides the interfaces' own values."""
    out: list[Finding] = []
    for f in findings:
        if f.ok:
            out.append(f)
            continue
        if (
            f.setting.endswith(".rp_filter")
            and _read(proc_sys, "net.ipv4.conf.all.rp_filter") == "1"
        ):
            _write(proc_sys, "net.ipv4.conf.all.rp_filter", f.wanted[0])
        _write(proc_sys, f.setting, f.wanted[0])
        actual = _read(proc_sys, f.setting)
        if f.setting.endswith(".rp_filter") and actual is not None and actual.isdigit():
            all_value = _read(proc_sys, "net.ipv4.conf.all.rp_filter") or "0"
            actual = str(max(int(actual), int(all_value))) if all_value.isdigit() else actual
        out.append(Finding(f.setting, f.wanted, actual, f.why, f.required))
    return out


def _write(root: Path, setting: str, value: str) -> None:
    path = _path(root, setting)
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        raise PreflightError(f"cannot set {setting}: {e.strerror}") from e
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise PreflightError(f"cannot set {setting} to {value}: {e.strerror}") from e
    finally:
        os.close(fd)


class PreflightError(RuntimeError):
    pass
