"""Inside user-mode-linux: preflight reads and sets the real /proc/sys; the sync
daemon helpers start, restart and stop the kernel's daemons."""

from __future__ import annotations

import textwrap

from support import fresh_backend, in_uml, sh

from etcdha.ipvs.preflight import fix, preflight
from etcdha.ipvs.syncd import ensure_sync_daemon, stop_sync_daemon, sync_daemons
from etcdha.spec_load import load_text

pytestmark = in_uml

SPEC = textwrap.dedent(
    """\
    nodes: [n1]
    groups: [{name: web, node: n1, resources: [ipvs]}]
    virtual_services:
      - address: 192.0.2.200:80
        persistence: {timeout: 60s}
        reals: [{address: "198.51.100.12:80", forward: masq}]
    """
)


def test_preflight_against_the_kernel_and_fix() -> None:
    with fresh_backend():
        sh("ip", "link", "add", "pf0", "type", "dummy")
        try:
            sh("sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv4.conf.pf0.rp_filter=1")
            spec = load_text(SPEC, "c.yaml").spec
            found = {f.setting: f for f in preflight(spec, "web")}
            assert found["net.ipv4.ip_forward"].actual == "0"
            assert found["net.ipv4.vs.expire_nodest_conn"].actual == "0"
            assert found["net.ipv4.vs.expire_quiescent_template"].actual == "0"
            assert found["net.ipv4.conf.pf0.rp_filter"].actual == "1"
            after = fix(list(found.values()))
            assert all(f.ok for f in after), [str(f) for f in after]
            assert sh("sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
            assert sh("sysctl", "-n", "net.ipv4.vs.expire_quiescent_template").strip() == "1"
            assert sh("sysctl", "-n", "net.ipv4.conf.pf0.rp_filter").strip() == "2"
            assert all(f.ok for f in preflight(spec, "web"))
        finally:
            sh("ip", "link", "del", "pf0", check=False)
            sh("sysctl", "-qw", "net.ipv4.ip_forward=0", check=False)


async def test_sync_daemon_helpers() -> None:
    with fresh_backend():
        sh("ip", "link", "add", "sd0", "type", "dummy")
        sh("ip", "link", "set", "sd0", "up")
        try:
            assert await ensure_sync_daemon("master", "sd0", 3) is True
            assert await ensure_sync_daemon("master", "sd0", 3) is False
            assert await ensure_sync_daemon("master", "sd0", 4) is True
            assert await ensure_sync_daemon("backup", "sd0", 4) is True
            running = {(d.state, d.interface, d.syncid) for d in await sync_daemons()}
            assert running == {("master", "sd0", 4), ("backup", "sd0", 4)}
            await stop_sync_daemon("master")
            await stop_sync_daemon("backup")
            await stop_sync_daemon("backup")
            assert await sync_daemons() == []
        finally:
            sh("ip", "link", "del", "sd0", check=False)
