"""Failsafe promises kept in the run directory, and who a leader asks: real files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from etcdha import clock
from etcdha.failsafe import Directors, PromiseRecord
from etcdha.membership import boot_id
from etcdha.spec import Node


def record_at(tmp_path: Path) -> PromiseRecord:
    return PromiseRecord(tmp_path / "failsafe-default-node2.json", "node2")


def test_a_promise_is_written_before_it_binds_and_binds_the_next_agent(tmp_path: Path) -> None:
    first = record_at(tmp_path)
    first.record("node1", 5.0)
    written = json.loads(first.path.read_text())
    assert written["boot_id"] == boot_id()
    assert written["until"] == first.until
    assert written["for"] == 5.0
    assert not first.may_campaign()
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temp file left

    following = record_at(tmp_path)
    following.honour_earlier(fallback=30.0)
    assert following.until == first.until
    assert 4.0 < following.holds_back("web") <= 5.0


def test_a_later_promise_never_shortens_an_earlier_one(tmp_path: Path) -> None:
    promises = record_at(tmp_path)
    promises.record("node1", 5.0)
    until = promises.until
    promises.record("node3", 1.0)
    assert promises.until == until
    assert promises.length == 5.0
    assert json.loads(promises.path.read_text())["until"] == until


def test_an_ended_promise_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "failsafe-default-node2.json"
    ended = {"boot_id": boot_id(), "until": clock.now() - 1.0, "for": 5.0, "to": "node1"}
    path.write_text(json.dumps(ended))
    promises = record_at(tmp_path)
    promises.honour_earlier(fallback=30.0)
    assert promises.may_campaign()
    assert not path.exists()


def test_a_promise_from_another_boot_binds_for_its_whole_length_from_now(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "failsafe-default-node2.json"
    path.write_text(json.dumps({"boot_id": "another", "until": 3.0, "for": 4.0, "to": "node1"}))
    promises = record_at(tmp_path)
    before = clock.now()
    with caplog.at_level(logging.WARNING):
        promises.honour_earlier(fallback=30.0)
    assert before + 4.0 <= promises.until <= clock.now() + 4.0
    assert "before this machine last booted" in caplog.text
    rewritten = json.loads(path.read_text())
    assert rewritten["boot_id"] == boot_id() and rewritten["until"] == promises.until


def test_an_unreadable_record_binds_for_the_fallback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "failsafe-default-node2.json"
    path.write_text('{"until": ')
    promises = record_at(tmp_path)
    before = clock.now()
    with caplog.at_level(logging.WARNING):
        promises.honour_earlier(fallback=7.0)
    assert before + 7.0 <= promises.until <= clock.now() + 7.0
    assert "cannot be read" in caplog.text


def test_a_promise_that_cannot_be_written_is_not_made(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("")
    promises = PromiseRecord(tmp_path / "not-a-folder" / "failsafe-default-node2.json", "node2")
    with pytest.raises(OSError):
        promises.record("node1", 5.0)
    assert promises.may_campaign()
    assert promises.holds_back("web") == 0.0


def nodes(*pairs: tuple[str, str | None]) -> list[Node]:
    return [Node(name=name, peer=peer) for name, peer in pairs]


def test_the_spec_nodes_and_every_member_seen_are_asked() -> None:
    directors = Directors("node1")
    directors.note_member("node1", {"peer": "192.0.2.11:9615"})
    directors.note_member("node3", {"peer": "[2001:db8:1::13]:9615"})
    peers, unaskable = directors.to_ask(
        nodes(("node1", "192.0.2.11:9615"), ("node2", "192.0.2.12:9615"))
    )
    assert peers == {"node2": ("192.0.2.12", 9615), "node3": ("2001:db8:1::13", 9615)}
    assert unaskable == {}


def test_the_address_a_member_publishes_comes_before_the_specs() -> None:
    directors = Directors("node1")
    directors.note_member("node2", {"peer": "192.0.2.22:9700"})
    peers, _ = directors.to_ask(nodes(("node2", "192.0.2.12:9615")))
    assert peers == {"node2": ("192.0.2.22", 9700)}


def test_a_member_without_a_peer_address_cannot_be_asked() -> None:
    directors = Directors("node1")
    directors.note_member("node3", {"peer": None})
    directors.note_member("node4", {"peer": "somewhere"})
    directors.note_member("node2", {})  # an agent that publishes none: the spec's address
    peers, unaskable = directors.to_ask(nodes(("node2", "192.0.2.12:9615")))
    assert peers == {"node2": ("192.0.2.12", 9615)}
    assert unaskable == {
        "node3": "node3 is a member but publishes no peer address, and the config in force "
        "here gives it none",
        "node4": "node4's peer address 'somewhere' is not an IP:port",
    }
