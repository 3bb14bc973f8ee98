"""`etcdha lab` end to end: the command a user runs, on this machine.

The host kernel of CI has no IPVS, so `etcdha lab run` must move itself into
user-mode-linux and say so; there it builds the seed's topology, runs both
agents and the whole scenario with a client probing the VIP every 10 ms, and
writes the report and the chart. The checks below recompute each step's
observation from the report's raw timeline (what the client got, who held
the VIP, who led in etcd), rather than trusting its verdicts.

A second boot explores `etcdha lab shell` as its output suggests, then stops
it, and interrupts a run with Ctrl-C (SIGINT) inside the guest: nothing of
either may be left (namespaces, processes, files). A third interrupts a run
on the host.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from uml_support import need_uml

from etcdha.lab import launch, uml

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(660)]  # a lab run may take 600 s

EXPECTED = [
    ("both-up", "node1", {"rs1", "rs2"}),
    ("standby", "node2", {"rs1", "rs2"}),
    ("stop-rs1", "node2", {"rs2"}),
    ("stop-rs2", "node2", {"fallback"}),
    ("start-both", "node2", {"rs1", "rs2"}),
    ("online", "node1", {"rs1", "rs2"}),
    ("kill", "node2", {"rs1", "rs2"}),
    ("restart", "node1", {"rs1", "rs2"}),
]
TTL = 3.0  # the lab's default --deadtime


def _at(series: list[list[Any]], t: float) -> list[Any] | None:
    """The last entry of a time series at or before t."""
    found = None
    for entry in series:
        if entry[0] > t:
            break
        found = entry
    return found


def _netns() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], Path]:
    need_uml()
    out = tmp_path_factory.mktemp("lab")
    report, chart = out / "report.json", out / "chart.svg"
    done = subprocess.run(
        [sys.executable, "-m", "etcdha", "lab", "run", "--report", str(report),
         "--chart", str(chart)],
        capture_output=True, text=True, timeout=600, check=False,
        cwd=uml.PROJECT_ROOT,
    )  # fmt: skip
    output = done.stdout + done.stderr
    print(output)
    assert done.returncode == 0, output[-6000:]
    # The run's namespaces (eh<run id>-*) were the guest's, never the host's. (The
    # host's list as a whole may change meanwhile: other tests make namespaces.)
    run = re.search(r"seed topology, run (\w+):", output)
    assert run is not None, output[-3000:]
    assert [n for n in _netns() if n.startswith(f"eh{run[1]}-")] == []
    return output, json.loads(report.read_text()), chart


def test_the_lab_moves_into_user_mode_linux_and_says_so(
    lab_run: tuple[str, dict[str, Any], Path],
) -> None:
    output, report, _ = lab_run
    if launch.why_not_here() is not None:
        assert "running the lab inside user-mode-linux" in output
        assert report["environment"]["user_mode_linux"] is True
    # the mapping and the shortened deadtime are said
    assert "192.168.1.200" in output and "192.0.2.200" in output
    assert "deadtime is shortened from 30 s to 3 s" in output
    assert report["environment"]["deadtime_s"] == 3
    for line in ("step 1/8", "step 8/8", "VIP: node2   DIP: node2", "leader in etcd: node1"):
        assert line in output


def test_every_step_shows_the_client_what_it_should(
    lab_run: tuple[str, dict[str, Any], Path],
) -> None:
    _, report, _ = lab_run
    steps = report["steps"]
    assert [s["step"] for s in steps] == [key for key, _, _ in EXPECTED]
    timeline = report["timeline"]
    requests = timeline["requests"]
    for step, (key, holder, client) in zip(steps, EXPECTED, strict=True):
        assert step["ok"], step
        assert step["settled_after_s"] is not None, key
        settled = step["started"] + step["settled_after_s"]
        end = step["ended"] - 0.1
        assert end - settled >= 1.0, f"{key}: watched only {end - settled:.2f} s once settled"
        # from the raw timeline: every request once settled got an expected outcome
        seen = [r[2] for r in requests if settled <= r[0] < end]
        assert len(seen) >= 50, (key, len(seen))
        assert set(seen) == client, (key, sorted(set(seen)))
        if client == {"rs1", "rs2"}:  # round robin: both, about equally
            assert min(seen.count("rs1"), seen.count("rs2")) >= 0.35 * len(seen), key
        held = _at(timeline["holdings"], end)
        assert held is not None and held[1] == [holder] and held[2] == [holder], (key, held)
        leader = _at(timeline["leaders"], end)
        assert leader is not None and leader[1] == holder, (key, leader)
    assert report["ok"] is True


def test_no_request_is_taken_by_a_director_that_is_not_the_leader(
    lab_run: tuple[str, dict[str, Any], Path],
) -> None:
    _, report, _ = lab_run
    timeline = report["timeline"]
    leaders = timeline["leaders"]
    terms: dict[str, list[tuple[float, float]]] = {}
    for i, (t, node) in enumerate(leaders):
        if node:
            until = leaders[i + 1][0] if i + 1 < len(leaders) else float("inf")
            terms.setdefault(node, []).append((t, until))
    answered = [r for r in timeline["requests"] if r[2] in ("rs1", "rs2", "fallback")]
    known = [r for r in answered if r[3] is not None]
    assert len(known) >= 0.95 * len(answered), (len(known), len(answered))
    bad = [r for r in known if not any(a <= r[4] <= b for a, b in terms.get(r[3], []))]
    assert bad == [], bad[:10]
    assert report["non_leader_answers"] == []
    assert report["two_vip_holders"] == []
    # both directors took requests over the run
    assert {r[3] for r in known} == {"node1", "node2"}


def test_the_report_has_each_gap(lab_run: tuple[str, dict[str, Any], Path]) -> None:
    _, report, _ = lab_run
    gaps = {g["step"]: g for g in report["gaps"]}
    assert set(gaps) == {key for key, _, _ in EXPECTED}
    for g in gaps.values():
        assert isinstance(g["gap_s"], float | int) and g["gap_s"] >= 0
        assert isinstance(g["failed_requests"], int)
    # A killed leader's fence drops the VIP before its lease runs out and the other
    # takes it after: the client sees an interruption, shorter than a lease.
    assert 0.1 <= gaps["kill"]["gap_s"] <= TTL + 2, gaps["kill"]
    assert gaps["kill"]["failed_requests"] > 0


def test_the_chart_draws_the_lanes_and_the_steps(
    lab_run: tuple[str, dict[str, Any], Path],
) -> None:
    _, report, chart = lab_run
    root = ET.parse(chart).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    for lane in ("node1 holds VIP", "node2 holds VIP", "leader in etcd", "client got rs1",
                 'client got "Sorry"', "no answer"):  # fmt: skip
        assert lane in texts, lane
    for i, step in enumerate(report["steps"], start=1):
        assert any(t.startswith(f"{i}. {step['title']}") for t in texts), step["title"]
    assert any(t.startswith("gap ") for t in texts)
    rects = list(root.iter("{http://www.w3.org/2000/svg}rect"))
    colours = {r.get("fill") for r in rects}
    assert {"#1f77b4", "#ff7f0e", "#2ca02c", "#17becf", "#9467bd", "#d62728"} <= colours


# `etcdha lab shell --wait` in the guest (curl and ipvsadm as its output says,
# then Ctrl-C): nothing of it may be left. `lab run` shares its clean-up path
# (seed_import); Ctrl-C of a `lab run` on the host is the next test. Job
# control is on, because a background job of a non-interactive shell ignores
# SIGINT.
INTERRUPT = r"""
set -u -m
python=$ETCDHA_UML_PYTHON
before=$(ls /dev/shm | grep -c etcdha || true)
left() {
    echo "$1 netns: $(ip netns list | wc -l)"
    echo "$1 processes: $(ps -eo comm,args | grep -E '^etcd |-m etcdha' | grep -vc grep)"
    echo "$1 shm: $(( $(ls /dev/shm | grep -c etcdha || true) - before ))"
}
wait_for() {
    for i in $(seq 1 900); do grep -q "$1" "$2" && return 0; sleep 0.1; done
    return 1
}

$python -m etcdha lab shell --wait > /run/shell.out 2>&1 &
pid=$!
wait_for "Waiting; Ctrl-C" /run/shell.out && echo "shell: up"
eval "$(grep -o 'ip netns exec [^ ]*-client curl -s http://[0-9.]*/' /run/shell.out)" \
    > /run/page.html && echo "shell: curl $(grep -o '<h1>[a-z0-9]*</h1>' /run/page.html)"
eval "$(grep -o 'ip netns exec [^ ]*-node1 ipvsadm -Ln' /run/shell.out)" \
    | grep -q "192.0.2.200:80 rr" && echo "shell: ipvsadm shows the service"
kill -INT $pid
wait $pid
echo "shell: status $?"
tail -1 /run/shell.out
left shell
"""


def test_shell_and_ctrl_c_leave_nothing_behind() -> None:
    need_uml()
    result = uml.run_in_uml(INTERRUPT, timeout=360, mem="1536M")
    out = result.output
    print(out)
    assert result.code == 0, out
    assert "shell: up" in out
    assert "shell: curl <h1>rs1</h1>" in out or "shell: curl <h1>rs2</h1>" in out
    assert "shell: ipvsadm shows the service" in out
    assert "shell: status 130" in out
    for line in ("shell netns: 0", "shell processes: 0", "shell shm: 0"):
        assert line in out, line


def test_ctrl_c_on_the_host_stops_user_mode_linux_and_removes_its_files(
    tmp_path: Path,
) -> None:
    need_uml()
    if launch.why_not_here() is None:
        pytest.skip("this kernel runs the lab directly")
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where user-mode-linux keeps its run
    # Ctrl-C as a terminal gives it: SIGINT at its default, whatever this suite
    # inherited (a background job of a shell starts with SIGINT ignored, and so
    # would the lab, which would then never see the signal).
    proc = subprocess.Popen(
        [sys.executable, "-m", "etcdha", "lab", "run"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        cwd=uml.PROJECT_ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    seen = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "Building the seed topology" in line:  # the guest is up and working
                break
        running = [p for p in tmp_path.iterdir() if p.name.startswith("etcdha-uml-")]
        assert len(running) == 1, seen
        proc.send_signal(signal.SIGINT)
        # Usually a few seconds; a loaded host has taken over 30 s to end the guest.
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted; user-mode-linux is stopped" in rest
    assert list(tmp_path.iterdir()) == []
    # no process of that run is left (their command lines name its directory)
    leftovers = subprocess.run(
        ["pgrep", "-f", str(running[0])], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == ""
