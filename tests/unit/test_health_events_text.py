"""How `etcdha events` writes health events, and the key a checker name lives under."""

from __future__ import annotations

import pytest

from etcdha.events import health_event_lines
from etcdha.keyspace import KeyKind, Keyspace


def transition(real: str, to: str, detail: str = "") -> dict[str, str]:
    return {
        "service": "tcp 192.0.2.200:80",
        "real": real,
        "from": "up" if to == "down" else "down",
        "to": to,
        "at": "2026-01-01T12:00:00.100Z",
        "detail": detail,
    }


def test_one_transition_is_one_line() -> None:
    event = {
        "at": "2026-01-01T12:00:00.118Z",
        "type": "health",
        "checker": "node1",
        "transitions": [transition("192.0.2.12:80", "down", "503 Service Unavailable")],
        "down": 1,
        "up": 0,
    }
    assert health_event_lines(event) == [
        "2026-01-01T12:00:00.118Z health checker=node1 tcp 192.0.2.200:80 real 192.0.2.12:80"
        " up->down (503 Service Unavailable)"
    ]


def test_many_transitions_head_line_and_one_line_each() -> None:
    event = {
        "at": "2026-01-01T12:00:10.000Z",
        "type": "health",
        "checker": "w1",
        "transitions": [
            transition("192.0.2.12:80", "down", "timed out"),
            transition("192.0.2.13:80", "up"),
        ],
        "more": 40,
        "down": 30,
        "up": 12,
    }
    lines = health_event_lines(event)
    assert lines[0] == (
        "2026-01-01T12:00:10.000Z health checker=w1 42 transitions (30 down, 12 up), 40 not listed"
    )
    assert lines[1:] == [
        "    2026-01-01T12:00:00.100Z tcp 192.0.2.200:80 real 192.0.2.12:80 up->down (timed out)",
        "    2026-01-01T12:00:00.100Z tcp 192.0.2.200:80 real 192.0.2.13:80 down->up",
    ]


@pytest.mark.parametrize(
    "event",
    [
        {"type": "health"},
        {"type": "health", "transitions": "nonsense", "more": "x"},
        {"type": "health", "transitions": [1, None, {"real": 5}]},
    ],
)
def test_malformed_health_events_still_print(event: dict[str, object]) -> None:
    lines = health_event_lines(event)
    assert lines and lines[0].startswith("? health checker=?")


def test_checker_name_key() -> None:
    ks = Keyspace()
    assert ks.checker("w1") == "/etcdha/default/checkers/w1"
    parsed = ks.classify("/etcdha/default/checkers/w1")
    assert parsed is not None and (parsed.kind, parsed.name) == (KeyKind.CHECKER, "w1")
    assert ks.classify("/etcdha/default/checkers/-bad") is None
    assert ks.classify("/etcdha/default/checkers/w1/extra") is None
    with pytest.raises(ValueError, match="checker name"):
        ks.checker("a/b")
