"""Keeps an agent's ClusterView equal to what etcd holds, from a read and a watch.

Keys that are foreign, unknown or malformed are logged once and skipped:
nothing another program writes under the prefix can crash an agent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from etcdha.election_rules import ClusterView, FenceSeen, Leader, Member
from etcdha.keyspace import KeyKind, Keyspace
from etcdha.spec_load import Loaded, SpecInvalid, load_json
from etcdha.store import EventType, KeyValue, WatchEvent

log = logging.getLogger(__name__)


def json_object(kv: KeyValue) -> dict[str, Any] | None:
    """A value as the JSON object etcdha writes, or None for anything else."""
    try:
        data = json.loads(kv.value)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def fence_seen(node: str, kv: KeyValue, now: float, trusted: bool) -> FenceSeen | None:
    """A fence/<node> value as FenceSeen, or None if it is not what an agent writes."""
    data = json_object(kv)
    if data is None:
        return None
    groups, ttl = data.get("groups"), data.get("ttl")
    if not isinstance(groups, dict) or isinstance(ttl, bool) or not isinstance(ttl, int | float):
        return None
    if not all(isinstance(g, str) and type(t) is int for g, t in groups.items()) or ttl <= 0:
        return None
    return FenceSeen(node, dict(groups), float(ttl), now, trusted)


class ViewSync:
    def __init__(
        self,
        ks: Keyspace,
        view: ClusterView,
        now: Callable[[], float],
        on_config: Callable[[Loaded, int], None],
        on_member: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.ks = ks
        self.view = view
        self.now = now
        self.on_config = on_config
        self.on_member = on_member  # every member value an agent wrote, as read
        self._complained: set[str] = set()
        self.config_revision = 0
        self._not_viewed = (ks.health_prefix(), ks.events_prefix())

    def _complain(self, key: str, why: str) -> None:
        if key not in self._complained:
            self._complained.add(key)
            log.warning("ignoring %s: %s", key, why)

    def load(self, kvs: list[KeyValue], revision: int = 0, *, trusted: bool = True) -> None:
        """Replace the view with a full read at `revision` (start-up, after a
        compaction, or after the store went back in time: `trusted` False, and
        the fence records read prove nothing until written again)."""
        kinds = [self.ks.classify(kv.key) for kv in kvs]
        members = {p.name for p in kinds if p and p.kind is KeyKind.MEMBER}
        leaders = {p.name for p in kinds if p and p.kind is KeyKind.LEADER}
        fences = {p.name for p in kinds if p and p.kind is KeyKind.FENCE}
        if not trusted:
            # Revisions start again: what was applied before tells nothing now.
            self.view.leader_revision.clear()
            self.view.fences.clear()
        for node in list(self.view.members):
            if node not in members:
                self.view.drop_member(node)
        for group in list(self.view.leaders):
            if group not in leaders:
                self.view.set_leader(group, None, self.now(), revision)
        for node, seen in list(self.view.fences.items()):
            if node not in fences and seen.present:
                # Gone while we were not watching: it may have been written up to now.
                self.view.fences[node] = replace(seen, present=False, seen_at=self.now())
        self.view.standby.clear()
        self.view.takeover.clear()
        for kv in kvs:
            self.put(kv, trusted=trusted)

    def apply(self, event: WatchEvent) -> bool:
        """Follow one watch event; False when its key is none of the view's
        (health verdicts and events, most of the traffic with thousands of
        reals): then nothing needs deciding again."""
        if event.kv.key.startswith(self._not_viewed):
            return False
        if event.type is EventType.PUT:
            self.put(event.kv)
        else:
            self.delete(event.kv.key, event.kv.mod_revision)
        return True

    def put(self, kv: KeyValue, *, trusted: bool = True) -> None:
        parsed = self.ks.classify(kv.key)
        if parsed is None:
            if kv.key.startswith(self.ks.root):
                self._complain(kv.key, "not a key etcdha writes")
            return
        kind, name = parsed.kind, parsed.name
        if kind is KeyKind.CONFIG:
            self._config(kv)
        elif kind is KeyKind.MEMBER:
            data = json_object(kv)
            if data is None or not isinstance(data.get("eligible"), bool):
                self._complain(kv.key, "member value is not the JSON an agent writes")
                return
            if self.on_member is not None:
                self.on_member(name, data)
            why = data.get("why")
            ping_ok = data.get("ping_ok", True) is not False
            self.view.note_member(
                Member(name, kv.lease, data["eligible"], str(why) if why else None, ping_ok),
                self.now(),
            )
        elif kind is KeyKind.LEADER:
            data = json_object(kv)
            node = data.get("node") if data else None
            if not isinstance(node, str):
                self._complain(kv.key, "leader value has no node")
                return
            self.view.set_leader(
                name, Leader(node, kv.lease, kv.create_revision), self.now(), kv.mod_revision
            )
        elif kind is KeyKind.FENCE:
            seen = fence_seen(name, kv, self.now(), trusted)
            if seen is None:
                self._complain(kv.key, "fence record is not the JSON an agent writes")
                return
            self.view.fences[name] = seen
        elif kind is KeyKind.STANDBY:
            data = json_object(kv) or {}
            self.view.standby[name] = str(data.get("reason") or "standby")
        elif kind is KeyKind.TAKEOVER:
            data = json_object(kv) or {}
            target = data.get("target")
            if not isinstance(target, str):
                self._complain(kv.key, "takeover value has no target node")
                return
            self.view.takeover[name] = target

    def delete(self, key: str, revision: int = 0) -> None:
        parsed = self.ks.classify(key)
        if parsed is None:
            return
        kind, name = parsed.kind, parsed.name
        if kind is KeyKind.MEMBER:
            self.view.drop_member(name)
        elif kind is KeyKind.LEADER:
            self.view.set_leader(name, None, self.now(), revision)
        elif kind is KeyKind.FENCE:
            seen = self.view.fences.get(name)
            if seen is not None:
                log.warning(
                    "%s was deleted (by hand?); what it listed still counts until %s's "
                    "lease TTL has passed",
                    key,
                    name,
                )
                self.view.fences[name] = replace(seen, present=False)
        elif kind is KeyKind.STANDBY:
            self.view.standby.pop(name, None)
        elif kind is KeyKind.TAKEOVER:
            self.view.takeover.pop(name, None)
        elif kind is KeyKind.CONFIG:
            log.error("the config key was deleted; keeping the last config in force")

    def _config(self, kv: KeyValue) -> None:
        if kv.mod_revision == self.config_revision:
            return
        try:
            loaded = load_json(kv.value, f"etcd:{kv.key}@{kv.mod_revision}")
        except SpecInvalid as e:
            log.error(
                "the config stored at revision %d is not valid, keeping the last one: %s",
                kv.mod_revision,
                e,
            )
            return
        self.config_revision = kv.mod_revision
        self.on_config(loaded, kv.mod_revision)
