"""Where the lab runs: on this kernel when it has IPVS and we are root, else inside
user-mode-linux (which has IPVS as modules and makes us root in the guest).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from etcdha.lab import uml

PROC_IPVS = "/proc/net/ip_vs"


def ipvs_here() -> bool:
    """Whether this kernel has IPVS: /proc/net/ip_vs, after trying to load ip_vs."""
    if os.path.exists(PROC_IPVS):
        return True
    modprobe = shutil.which("modprobe")
    if os.geteuid() == 0 and modprobe:
        subprocess.run(
            [modprobe, "-q", "ip_vs"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    return os.path.exists(PROC_IPVS)


def why_not_here() -> str | None:
    """None when the lab can run on this kernel, else why not."""
    if os.environ.get("ETCDHA_IN_UML"):
        return None
    if not ipvs_here():
        return (
            f"this kernel ({os.uname().release}) has no IPVS "
            f"({PROC_IPVS} is missing and ip_vs does not load)"
        )
    if os.geteuid() != 0:
        return "network namespaces and IPVS need root here"
    return None


def _show(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run_inside_uml(argv: Sequence[str], files: dict[str, Path], timeout: float = 900.0) -> int:
    """Run `python -m etcdha ARGV` inside user-mode-linux with its output live on
    stdout; `files` maps a name the guest writes under $ETCDHA_UML_FILES to where
    it goes here."""
    reason = uml.unavailable()
    if reason:
        print(f"etcdha lab: cannot start user-mode-linux: {reason}", file=sys.stderr)
        return 1
    result = uml.run_in_uml(
        ["python", "-m", "etcdha", *argv],
        timeout,
        mem="1536M",
        on_output=_show,
    )
    for name, dest in files.items():
        data = result.files.get(name)
        if data is None:
            print(f"etcdha lab: the run left no {name}", file=sys.stderr)
            continue
        dest.write_bytes(data)
        print(f"wrote {dest}")
    if result.code == uml.TIMED_OUT:
        print(f"etcdha lab: stopped after {timeout:g} s inside user-mode-linux", file=sys.stderr)
    return result.code


def console_in_uml(argv: Sequence[str], timeout: float = 24 * 3600.0) -> int:
    """Run `python -m etcdha ARGV` inside user-mode-linux on its console, which is
    this terminal; Ctrl-C here stops the guest and everything in it."""
    reason = uml.unavailable()
    if reason:
        print(f"etcdha lab: cannot start user-mode-linux: {reason}", file=sys.stderr)
        return 1
    try:
        result = uml.run_in_uml(
            ["python", "-m", "etcdha", *argv], timeout, mem="1536M", interactive=True
        )
    except KeyboardInterrupt:
        print("\netcdha lab: interrupted; user-mode-linux is stopped.", file=sys.stderr)
        return 130
    return result.code
