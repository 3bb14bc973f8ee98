"""IPVS against the real kernel: the driver boots user-mode-linux once and runs
files of tests/kernel/inside/ there (netlink operations, the reconciler,
preflight and the sync daemon)."""

from __future__ import annotations

import pytest
from uml_support import run_inside

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(400)]  # boot + a 300 s payload


def test_netlink_backend_and_reconciler_in_the_kernel() -> None:
    result = run_inside("ipvs_netlink.py", "ipvs_reconcile.py", "ipvs_settings.py", args=["-s"])
    print(result.output)


def test_traffic_through_the_vip_in_namespaces() -> None:
    result = run_inside("ipvs_traffic.py", args=["-s"])
    print(result.output)


def test_agents_drive_the_ipvs_table_and_the_sync_daemon() -> None:
    result = run_inside("agent_ipvs.py", args=["-s"], timeout=300)
    print(result.output)


def test_sync_daemon_roles_follow_each_nodes_groups() -> None:
    result = run_inside("agent_syncd.py", args=["-s"], timeout=300)
    print(result.output)
