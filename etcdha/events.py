"""Event records under events/<time-ordered id>: what happened, who, when, why."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from etcdha.keyspace import Keyspace, new_event_id
from etcdha.store import Op


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_op(ks: Keyspace, event: dict[str, Any]) -> Op:
    """A put of one event, to be committed in the same txn as the change it records."""
    record = {"at": now_rfc3339(), **event}
    return Op.put(ks.event(new_event_id()), json.dumps(record).encode())


def event_put(ks: Keyspace, event: dict[str, Any], lease: int) -> Op:
    """Like :func:`event_op`, bound to ``lease`` (events that expire with it)."""
    record = {"at": now_rfc3339(), **event}
    return Op.put(ks.event(new_event_id()), json.dumps(record).encode(), lease=lease)


def health_event_lines(data: dict[str, Any]) -> list[str]:
    """A health event as text: a head line, then one line per transition listed."""
    head = [str(data.get("at", "?")), "health", f"checker={data.get('checker', '?')}"]
    transitions = data.get("transitions")
    listed = (
        [t for t in transitions if isinstance(t, dict)] if isinstance(transitions, list) else []
    )
    more = data.get("more", 0) if isinstance(data.get("more"), int) else 0

    def one(t: dict[str, Any]) -> str:
        text = f"{t.get('service', '?')} real {t.get('real', '?')} {t.get('from', '?')}->"
        text += str(t.get("to", "?"))
        if t.get("detail"):
            text += f" ({t['detail']})"
        return text

    if len(listed) == 1 and not more:
        return [" ".join([*head, one(listed[0])])]
    counts = ", ".join(f"{data[k]} {k}" for k in ("down", "up") if isinstance(data.get(k), int))
    summary = f"{len(listed) + more} transitions" + (f" ({counts})" if counts else "")
    if more:
        summary += f", {more} not listed"
    return [" ".join([*head, summary]), *(f"    {t.get('at', '')} {one(t)}" for t in listed)]
