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
