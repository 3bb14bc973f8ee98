"""The failover lab's pure parts: the seed files it imports, what it measures from the
client's requests, who took them, the chart."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from etcdha.lab.chart import render_chart
from etcdha.lab.labrun import LabOptions, LabRecord
from etcdha.lab.prober import classify
from etcdha.lab.recorder import Leadership, Request, attribute
from etcdha.lab.scenario import (
    StepResult,
    final_run,
    longest_gap,
    measure,
    non_leader_answers,
    steps,
)
from etcdha.lab.seedfiles import write_lab_seed
from etcdha.lab.webservers import fallback_page, real_index

STEP = 0.01


def reqs(start: float, outcomes: list[str]) -> list[Request]:
    """One request every 10 ms from `start`, each answered 2 ms later."""
    return [Request(start + i * STEP, start + i * STEP + 0.002, o) for i, o in enumerate(outcomes)]


def test_seed_files_keep_everything_but_addresses_and_the_deadtime(tmp_path: Path) -> None:
    paths, changes = write_lab_seed(tmp_path, deadtime=3)
    ha_cf = paths["ha.cf"].read_text()
    assert "\ndeadtime 3 " in ha_cf and "shortened from 30" in ha_cf
    assert "\nkeepalive 1 " in ha_cf
    assert "ping 192.0.2.1" in ha_cf and "192.168." not in ha_cf
    assert "auto_failback on" in ha_cf and "mcast eth0 225.0.120.1 694 1 0" in ha_cf
    haresources = paths["haresources"].read_text()
    assert "node1 192.0.2.200/24/eth0 198.51.100.200/24/eth1 ldirectord::" in haresources
    ld = paths["ldirectord.cf"].read_text()
    assert "real=198.51.100.12:80 masq" in ld and "fallback=127.0.0.1:80 gate" in ld
    assert {c.file for c in changes} == {"ha.cf", "haresources", "ldirectord.cf"}
    assert all("192.168." not in c.lab for c in changes)


def test_the_client_tells_the_pages_apart() -> None:
    assert classify(real_index("rs2", "198.51.100.6").encode()) == ("rs2", "")
    assert classify(fallback_page("node2").encode()) == ("fallback", "node2")
    assert classify(b"HTTP/1.1 500 oops")[0] == "error"


def test_gap_is_the_longest_stretch_of_unanswered_requests_by_send_time() -> None:
    seq = reqs(10.0, ["rs1", "rs2"] * 5 + ["timeout"] * 30 + ["rs1", "rs2"] * 5)
    gap, began = longest_gap(seq)
    assert abs(gap - 0.31) < 1e-6  # last answered at 10.09, next at 10.40
    assert abs(began - 10.09) < 1e-6
    # every other request refused: no stretch without an answer longer than one step
    gap, _ = longest_gap(reqs(0.0, ["refused", "rs2"] * 20))
    assert abs(gap - 2 * STEP) < 1e-6
    assert longest_gap(reqs(0.0, ["rs1"] * 10)) == (0.0, 0.0)


def test_round_robin_settles_once_both_reals_answer_in_turn() -> None:
    seq = reqs(0.0, ["fallback"] * 5 + ["rs2"] * 20 + ["rs1", "rs2"] * 30)
    run = final_run(seq, ("rs1", "rs2"))
    # from the first ten in a row that show both: within a window of the alternation
    assert 60 < len(run) < 60 + 10
    assert {r.outcome for r in run[:10]} == {"rs1", "rs2"}
    assert {r.outcome for r in seq[-len(run) - 1 : -len(run) + 9]} == {"rs2"}
    assert final_run(seq, ("fallback",)) == []


def test_a_step_is_as_expected_only_if_the_end_is_steady() -> None:
    standby = steps()[1]
    good = reqs(0.0, ["rs1", "rs2"] * 10 + ["timeout"] * 20 + ["rs1", "rs2"] * 100)
    result = StepResult(standby, 0.0, ended=2.5, vip=("node2",), dip=("node2",), leader="node2")
    measure(result, good)
    assert result.ok, result
    assert result.failed == 20 and result.client == {"rs1": 100, "rs2": 100}
    assert abs(result.settled - 0.4) < 1e-6 if result.settled is not None else False

    late = reqs(0.0, ["rs1", "rs2"] * 100 + ["timeout"] * 20 + ["rs1", "rs2"] * 10)
    result = StepResult(standby, 0.0, ended=2.5, vip=("node2",), dip=("node2",), leader="node2")
    measure(result, late)
    assert not result.ok  # steady for 0.2 s only

    result = StepResult(standby, 0.0, ended=2.5, vip=("node1",), dip=("node1",), leader="node1")
    measure(result, good)
    assert not result.ok  # the wrong director holds the VIP


def test_requests_taken_outside_the_takers_term_are_found() -> None:
    leaders = [
        Leadership(0.0, "node1", 0.0),
        Leadership(5.0, None, 5.0),
        Leadership(5.1, "node2", 5.1),
    ]
    macs = {"02:00:00:00:00:01": "node1", "02:00:00:00:00:02": "node2"}
    requests = [
        Request(4.0, 4.01, "rs1", port=1000),
        Request(5.2, 5.25, "rs2", port=1001),
        Request(5.3, 5.31, "rs1", port=1002),
        Request(5.4, 5.41, "fallback", detail="node2"),
    ]
    syns = [
        (1000, "02:00:00:00:00:01", 4.005),
        (1001, "02:00:00:00:00:01", 5.21),  # node1 after its term
        (1002, "02:00:00:00:00:02", 5.305),
        (1002, "02:00:00:00:00:01", 1.0),  # the same port long before: not this request
    ]
    taken = attribute(requests, syns, macs)
    assert [r.director for r in taken] == ["node1", "node1", "node2", "node2"]
    bad = non_leader_answers(taken, leaders, end=float("inf"))
    assert [(r.port, leader) for r, leader in bad] == [(1001, "node2")]


def test_chart_draws_lanes_steps_and_gaps() -> None:
    rec = LabRecord(LabOptions(), t0=100.0, lease_ttl=3.0, ended=110.0)
    rec.holdings = [(95.0, (), ()), (96.0, ("node1",), ("node1",)), (104.0, ("node2",), ())]
    rec.leaders = [(95.9, "node1"), (103.9, None), (103.95, "node2")]
    rec.requests = [
        Request(100.0 + i * STEP, 100.002 + i * STEP, o, "node1" if i < 400 else "node2")
        for i, o in enumerate((["rs1", "rs2"] * 200) + ["timeout"] * 50 + ["rs2"] * 500)
    ]
    first = StepResult(steps()[0], 100.0, ended=103.0)
    second = StepResult(steps()[1], 103.0, ended=110.0, gap=0.5, gap_began=103.99, settled=104.5)
    rec.results = [first, second]
    root = ET.fromstring(render_chart(rec))
    texts = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "node1 holds VIP" in texts and "leader in etcd" in texts and "no answer" in texts
    assert any(t.startswith("1. both directors up") for t in texts)
    assert any(t.startswith("2. standby node1") for t in texts)
    assert "gap 0.50 s" in texts
    fills = [r.get("fill") for r in root.iter("{http://www.w3.org/2000/svg}rect")]
    assert "#d62728" in fills and "#2ca02c" in fills and "#ff7f0e" in fills
    assert fills.count("#f2c94c") == 2  # the second step settling, and its legend


async def test_the_feed_knows_when_every_request_sent_before_a_moment_has_ended() -> None:
    # async: a StreamReader belongs to a running loop
    import asyncio

    from etcdha.lab.recorder import ProberFeed

    feed = ProberFeed(asyncio.StreamReader())
    answer = [  # (seq, sent, done): seq 1 is slow, its answer comes last
        (0, 10.00, 10.01),
        (2, 10.02, 10.03),
        (3, 10.03, 10.04),
        (1, 10.01, 10.50),
    ]
    seen = []
    for seq, sent, done in answer:
        feed.requests.append(Request(sent, done, "rs1", seq=seq))
        seen.append(feed.all_done_before(10.025))
    # nothing sent at or after the moment had ended yet, then seq 1 was missing
    assert seen == [False, False, False, True]
