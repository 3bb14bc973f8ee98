"""IPVS against the real kernel: each driver boots user-mode-linux once and runs
a file of tests/kernel/inside/ there."""

from __future__ import annotations

import pytest
from uml_support import run_inside

pytestmark = pytest.mark.kernel


def test_netlink_operations_read_back_equal() -> None:
    result = run_inside("ipvs_netlink.py", args=["-s"])
    print(result.output)
