"""``external``: a program from the checks directory, as ldirectord's checktype=external.

Called without a shell as ``CHECKS_DIR/command VIRTUAL_IP VIRTUAL_PORT REAL_IP
REAL_PORT`` (ldirectord's arguments; for a fwmark service the first is the mark
and the second 0), with stdin closed, in a session of its own, and killed with
its whole process group at the timeout (:func:`etcdha.procs.run_bounded`).

Exit 0 is up, anything else down (Nagios plugins: 0 OK; 1 WARNING, 2 CRITICAL,
3 UNKNOWN are down). With ``check.dynamic_weight`` (keepalived's misc_dynamic)
exit 1 is down and 2-255 up with weight ``code - 2``. The first line of its
standard output (else standard error) becomes the result's detail.

The rest of the check reaches it in the environment, never on the command line
(where `ps` would show a password): ETCDHA_CHECK_SERVICE, _REQUEST, _RECEIVE,
_LOGIN, _PASSWORD, _DATABASE, _SECRET, _TIMEOUT (seconds), _VIRTUALHOST and
_PORT (the port to probe: check.port, else the real's, else the service's).

It runs without the agent's network powers: CAP_NET_ADMIN and CAP_NET_RAW are
taken out of its bounding set and every capability out of its inheritable and
ambient sets (util-linux's ``setpriv``; a script may not reconfigure the
director's network or send raw packets).
"""

from __future__ import annotations

import os
import shutil
from functools import cache
from pathlib import Path

from etcdha import procs
from etcdha.probes import Result, Target, register

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SETPCAP = 8
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _caps(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


@cache
def drop_caps_prefix() -> tuple[str, ...]:
    """The setpriv command that runs a program without network capabilities."""
    setpriv = shutil.which("setpriv", path=SAFE_PATH)
    if setpriv is None:
        return ()
    argv = [setpriv, "--inh-caps=-all"]
    bounding = _caps("CapBnd")
    net = (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)
    if bounding & net and _caps("CapEff") & (1 << CAP_SETPCAP):
        argv.append("--bounding-set=-net_admin,-net_raw")
    return (*argv, "--")


def environment(target: Target) -> dict[str, str]:
    check = target.check
    env = {
        "PATH": SAFE_PATH,
        "LANG": "C.UTF-8",
        "ETCDHA_CHECK_TIMEOUT": f"{target.timeout:g}",
        "ETCDHA_CHECK_PORT": str(target.port),
    }
    for name, value in (
        ("SERVICE", check.service),
        ("REQUEST", target.request),
        ("RECEIVE", target.receive),
        ("LOGIN", check.login),
        ("PASSWORD", check.password),
        ("DATABASE", check.database),
        ("SECRET", check.secret),
        ("VIRTUALHOST", check.virtualhost),
    ):
        if value is not None:
            env[f"ETCDHA_CHECK_{name}"] = value
    return env


def command_name(target: Target) -> str:
    return target.check.command or target.check.service


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


@register("external")
async def external(target: Target) -> Result:
    name = command_name(target)
    if not name or "/" in name or name in (".", ".."):
        return Result(False, f"invalid check command {name!r}")
    path = target.checks_dir / name
    if not os.access(path, os.X_OK) or not path.is_file():
        return Result(False, f"no executable check {name!r} in {target.checks_dir}")
    argv = [
        *drop_caps_prefix(),
        str(path),
        target.virtual_address,
        str(target.virtual_port),
        target.address,
        str(target.real_port),
    ]
    # Its own limit, a little inside the probe's, so the group is killed and reaped here.
    done = await procs.run_bounded(argv, target.timeout * 0.95, environment(target), stdout=True)
    if done.timed_out:
        return Result(False, f"{name} killed after {target.timeout:g}s")
    code = done.code
    assert code is not None
    said = first_line(done.stdout) or first_line(done.stderr)
    detail = f"{name} exit {code}" + (f": {said}" if said else "")
    if code < 0:
        return Result(False, f"{name} killed by signal {-code}")
    if code == 0:
        return Result(True, detail)
    if target.check.dynamic_weight and code >= 2:
        return Result(True, detail, weight=code - 2)
    return Result(False, detail)
