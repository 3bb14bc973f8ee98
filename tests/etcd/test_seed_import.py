"""`python -m etcdha.lab.seed_import` (what scripts/lab.sh runs) end to end: its own
etcd, the seed example imported, applied and shown, and nothing left behind on
success, on a failed step, or on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from etcdha.lab.etcd_process import DEFAULT_ETCD
from etcdha.lab.seed_import import EXAMPLES, SEED_FILES
from etcdha.legacy import import_legacy
from etcdha.spec_load import to_yaml

pytestmark = pytest.mark.etcd

UP = re.compile(r"^etcd is up at (http://127\.0\.0\.1:\d+) \(pid (\d+)\)\.$", re.M)
DATA = re.compile(r"^Starting a throwaway etcd on \S+, its data in (\S+) \(tmpfs", re.M)


@pytest.fixture(autouse=True)
def _etcd_binary() -> None:
    if not os.access(DEFAULT_ETCD, os.X_OK):
        message = f"{DEFAULT_ETCD} is not installed (scripts/setup.sh installs etcd-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def seed_import(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDHA_")}
    return subprocess.Popen(
        [sys.executable, "-m", "etcdha.lab.seed_import", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def assert_left_nothing(out: str) -> None:
    data = DATA.search(out)
    up = UP.search(out)
    assert data and up, out
    assert not Path(data.group(1)).exists(), f"{data.group(1)} is still there"
    assert not Path(data.group(1)).parent.exists(), "the work directory is still there"
    with pytest.raises(ProcessLookupError):
        os.kill(int(up.group(2)), 0)


def test_seed_example_is_imported_applied_and_shown() -> None:
    proc = seed_import()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err
    spec = import_legacy(*(EXAMPLES / name for name in SEED_FILES), root=EXAMPLES / "none").spec
    lines = out.splitlines(keepends=True)
    steps = [
        "Starting a throwaway etcd on ",
        "etcd is up at ",
        "Importing the Heartbeat and ldirectord files of ",
        "Applying the imported spec to etcd in one transaction: etcdha config apply ",
        "The config stored in etcd, as `etcdha config show --endpoints ",
    ]
    for line, step in zip(lines, steps, strict=False):
        assert line.startswith(step), out
    shown = "".join(lines[len(steps) : -2])
    assert shown == to_yaml(spec)
    assert lines[-2].startswith("Stopping etcd and removing ")
    assert lines[-1] == (
        "Done: the seed example is a cluster spec in etcd; etcd is stopped and its data gone.\n"
    )
    # The import's notes and the apply's sentence went to stderr.
    assert "ldirectord.cf:15: virtual: mapped: " in err
    assert re.search(
        r"^applied \S+cluster.yaml to /etcdha/default/config at revision \d+$", err, re.M
    )
    assert_left_nothing(out)


def test_a_failed_step_stops_and_cleans_up(tmp_path: Path) -> None:
    for name in SEED_FILES:
        (tmp_path / name).write_text((EXAMPLES / name).read_text())
    hacf = tmp_path / "ha.cf"
    hacf.write_text(hacf.read_text().replace("deadtime 30 ", "deadtime 30s "))
    proc = seed_import("--examples", str(tmp_path))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "Traceback" not in out + err
    assert "ha.cf:4: deadtime: deadtime '30s' is not a time Heartbeat accepts" in err
    assert out.splitlines()[-1] == "Stopped: etcdha config import failed with exit code 1."
    assert_left_nothing(out)


def test_sigterm_stops_etcd_and_removes_its_data() -> None:
    proc = seed_import()
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    while not UP.search(seen):
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, seen
        seen += line
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    out = seen + out
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "Traceback" not in out + err
    assert out.splitlines()[-1].startswith("Stopping etcd and removing ")
    assert_left_nothing(out)
