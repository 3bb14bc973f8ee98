"""Tier 4 helpers: tests that need IPVS run inside Debian's user-mode-linux kernel.

A test here is a small driver on the host: it boots UML once and runs pytest
on files of ``tests/kernel/inside/`` there (see etcdha.lab.uml; those files
have no test_ prefix, so the host never collects them), failing with
the inner output when the inner run fails. Each boot costs about 2 s plus a
Python start over hostfs, so drivers batch many checks into one boot.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from etcdha.lab import uml

INSIDE = Path(__file__).resolve().parent / "inside"


def need_uml() -> None:
    reason = uml.unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def run_inside(
    *files: str,
    timeout: float = 240.0,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> uml.UmlResult:
    """Run pytest on these files of tests/kernel/inside/ in one UML boot; fail
    with the inner output unless every inner test passed."""
    need_uml()
    paths = [str(INSIDE / f) for f in files]
    result = uml.run_pytest_in_uml(paths, timeout, ["-p", "no:randomly", *args], env)
    if result.code != 0:
        pytest.fail(
            f"inside user-mode-linux, pytest exited {result.code} after "
            f"{result.elapsed:.1f}s:\n{result.output}",
            pytrace=False,
        )
    return result
