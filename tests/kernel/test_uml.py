"""The user-mode-linux launcher itself: what the guest sees, what comes back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from uml_support import need_uml

from etcdha.lab import uml

pytestmark = pytest.mark.kernel

GUEST_CHECKS = r"""
set -u
echo "release $(uname -r)"
test -r /proc/net/ip_vs && echo "proc-ip-vs yes"
ipvsadm -Ln >/dev/null && echo "ipvsadm yes"
ipvsadm -A -t 192.0.2.200:80 -s lblcr && ipvsadm-save -n
ip netns add etcdha-uml-check && ip netns list
touch /etcdha-uml-probe 2>/dev/null && echo "root writable" || echo "root read-only"
stat -f -c %T /run "${TMPDIR:-/tmp}" /dev/shm | tr '\n' ' '; echo
ip link add etcdha-d0 type dummy && echo "dummy loaded on demand"
echo "in-uml $ETCDHA_IN_UML cwd $(pwd)"
echo shared > "$ETCDHA_UML_FILES/note.txt"
echo "to stderr" >&2
exit 7
"""


def test_guest_sees_its_own_kernel_ipvs_and_filesystems() -> None:
    need_uml()
    before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    result = uml.run_in_uml(GUEST_CHECKS, timeout=60)
    out = result.output
    assert result.code == 7, out
    releases = os.listdir(uml.UML_MODULES)
    assert f"release {releases[0]}" in out
    assert "proc-ip-vs yes" in out and "ipvsadm yes" in out
    assert "-A -t 192.0.2.200:80 -s lblcr" in out
    assert "dummy loaded on demand" in out  # through the modprobe stand-in
    assert "etcdha-uml-check" in out
    assert "root read-only" in out
    assert "tmpfs tmpfs tmpfs " in out
    assert f"in-uml 1 cwd {uml.PROJECT_ROOT}" in out
    assert "to stderr" in out
    assert result.files == {"note.txt": b"shared\n"}
    code, output = result
    assert (code, output) == (7, out)
    # Nothing of the guest's is left on the host.
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert "etcdha-uml-check" not in after - before
    assert not Path("/etcdha-uml-probe").exists()


def test_payload_overrun_is_cut_with_status_124_and_its_output() -> None:
    need_uml()
    result = uml.run_in_uml("echo started; sleep 60; echo never", timeout=1)
    assert result.code == uml.TIMED_OUT
    assert "started" in result.output and "never" not in result.output
    assert result.elapsed < 30
