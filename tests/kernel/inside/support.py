"""Helpers for the checks that run inside user-mode-linux.

Files in this folder are named without the test_ prefix, so the host's pytest
never collects them (the host kernel has no IPVS); the drivers in
tests/kernel/test_*.py name them explicitly to pytest inside UML.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from etcdha.ipvs.netlink import NetlinkBackend
from etcdha.lab.nsock import in_netns

in_uml = pytest.mark.skipif(
    not os.environ.get("ETCDHA_IN_UML"), reason="runs inside user-mode-linux only"
)


@contextmanager
def fresh_backend() -> Iterator[NetlinkBackend]:
    """The kernel's IPVS table through the netlink backend, empty before and after."""
    backend = NetlinkBackend()
    backend.flush()
    try:
        yield backend
    finally:
        backend.flush()
        backend.close()


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def ipvsadm_save() -> str:
    return sh("ipvsadm-save", "-n")


# Run the calling thread in a network namespace for a block (sockets made
# inside stay in that namespace afterwards).
netns = in_netns
