"""The checker's pure parts: jobs from the spec, counters, negotiate_every, the CLI's usage."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from etcdha.checker import RealState, jobs_from_spec
from etcdha.cli import checker as checker_cli
from etcdha.probes import Result, plan
from etcdha.spec import Check, ClusterSpec

SPEC = ClusterSpec.model_validate(
    {
        "nodes": ["n1"],
        "virtual_services": [
            {
                "address": "192.0.2.200:80",
                "check": {"request": "/alive", "receive": "ok", "negotiate_every": 3},
                "reals": [
                    {"address": "192.0.2.10->192.0.2.12:8080"},
                    {"address": "192.0.2.20:80", "request": "/other", "receive": "yes"},
                ],
            },
            {
                "fwmark": 7,
                "check": {"type": "connect", "port": 443},
                "reals": [{"address": "198.51.100.5"}],
            },
            {
                "address": "[2001:db8::1]:53",
                "check": {"type": "external", "command": "probe-dns", "dynamic_weight": True},
                "reals": [{"address": "[2001:db8::5]:53", "weight": 4}],
            },
        ],
    }
)


def test_jobs_expand_ranges_and_apply_overrides() -> None:
    jobs = jobs_from_spec(SPEC, Path("/checks"))
    assert [k for k in jobs] == [
        ("tcp-192.0.2.200-80", "192.0.2.10-8080"),
        ("tcp-192.0.2.200-80", "192.0.2.11-8080"),
        ("tcp-192.0.2.200-80", "192.0.2.12-8080"),
        ("tcp-192.0.2.200-80", "192.0.2.20-80"),
        ("fwm-7", "198.51.100.5-0"),
        ("udp-2001.db8..1-53", "2001.db8..5-53"),
    ]
    first = jobs[("tcp-192.0.2.200-80", "192.0.2.10-8080")]
    assert (first.plan.probe, first.target.port, first.target.request) == ("http", 8080, "/alive")
    other = jobs[("tcp-192.0.2.200-80", "192.0.2.20-80")].target
    assert (other.request, other.receive) == ("/other", "yes")
    fwm = jobs[("fwm-7", "198.51.100.5-0")]
    assert (fwm.plan.probe, fwm.target.port, fwm.target.virtual_address) == ("connect", 443, "7")
    assert dict(fwm.labels)["proto"] == "FWM" and dict(fwm.labels)["local_mark"] == "7"
    ext = jobs[("udp-2001.db8..1-53", "2001.db8..5-53")]
    assert ext.dynamic and ext.weight == 4 and ext.target.protocol == "udp"
    assert dict(ext.labels) == {
        "local_address": "2001:db8::1",
        "local_port": "53",
        "remote_address": "2001:db8::5",
        "remote_port": "53",
        "proto": "UDP",
        "local_mark": "",
    }


def test_plans_follow_ldirectord() -> None:
    assert plan(Check(service="mysql")).probe == "external"
    assert plan(Check(service="none")).probe == "none"
    assert plan(Check(service="simpletcp")).probe == "tcp"
    assert plan(Check(type="ping", timeout=2, checkcount=3)).timeout == 6
    p = plan(Check(service="http", timeout=2, negotiate_timeout=9))
    assert (p.timeout, p.connect_timeout) == (9, 2)


def test_counters() -> None:
    job = next(iter(jobs_from_spec(SPEC, Path("/c")).values()))
    st = RealState(job.__class__(**{**job.__dict__, "failure_count": 2, "rise_count": 3}))
    good, bad = Result(True, "ok"), Result(False, "no")
    trail = []
    for r in (bad, good, good, good, bad, good, bad, bad, good, good, good):
        st.observe("http", r)
        trail.append(st.state)
    # first result decides; then 3 to rise, 2 consecutive to fall
    assert trail == ["down", "down", "down", "up", "up", "up", "up", "down", "down", "down", "up"]
    assert st.desired_weight() == 1


def test_negotiate_every_is_ldirectords_combined_check() -> None:
    job = next(iter(jobs_from_spec(SPEC, Path("/c")).values()))  # negotiate_every 3
    st = RealState(job)
    seen = []
    outcomes = [True, True, True, True, True, False, True, False, True, True]
    for ok in outcomes:
        probe, _timeout = st.next_probe()
        seen.append(probe)
        st.observe(probe, Result(ok, ""))
    assert seen == [
        "http",  # the first check negotiates
        "connect",
        "connect",
        "http",  # every third
        "connect",
        "connect",  # fails ...
        "http",  # ... so the next negotiates
        "connect",  # fails
        "http",
        "connect",
    ]


def test_cli_usage_errors() -> None:
    app = typer.Typer()
    app.add_typer(checker_cli.app, name="checker")
    runner = CliRunner()
    result = runner.invoke(app, ["checker", "start", "--name", "-bad"])
    assert result.exit_code == 2 and "not a valid checker name" in result.output
    result = runner.invoke(app, ["checker", "start", "--name", "w1", "--listen", "nowhere"])
    assert result.exit_code == 2 and "not host:port" in result.output
    result = runner.invoke(app, ["checker", "start", "--checks-dir", "/nonexistent/dir"])
    assert result.exit_code == 2 and "not a directory" in result.output


def test_the_checker_process_reads_its_config_line_and_leaves_what_follows() -> None:
    # The agent may write a lease update right behind the config (a lease lost
    # and granted again while the child starts): both lines arrive in one read.
    import os

    from etcdha.checker_process import _read_line

    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b'{"conf": 1}\n{"lease": 7}\n')
        assert _read_line(read_end) == b'{"conf": 1}\n'
        assert os.read(read_end, 100) == b'{"lease": 7}\n'
    finally:
        os.close(read_end)
        os.close(write_end)
