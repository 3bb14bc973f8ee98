"""The reconciler's inputs from etcd keys: config, health verdicts, drains.

:func:`inputs_from_kvs` turns the keys under ``<prefix>/<cluster>/`` (one
range read, or a watched view of them) into :class:`Inputs`:

- the spec from the ``config`` key (its mod revision is the config revision);
- one verdict per real from the ``health/`` keys under each service's health
  policy (etcdha.health): up -> True, down -> False; unknown (no live checker,
  or the leader's checker has not spoken) leaves the real out of the mapping,
  which the desired table reads as up;
- the ``admin/drain/`` keys.

Malformed keys are skipped and reported, never fatal.

:class:`InputsMirror` keeps those keys (config, health, leaders, drains) from
an agent's full read and watch, so the agent can recompute the inputs after
each change without reading etcd again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from etcdha.configdb import parse_stored
from etcdha.health import DOWN, UP, health_report
from etcdha.keyspace import KeyKind, Keyspace
from etcdha.spec import ClusterSpec
from etcdha.store import EventType, KeyValue, WatchEvent


@dataclass(frozen=True)
class Inputs:
    """What a group's IPVS table follows from (the reconciler's Feed holds one)."""

    spec: ClusterSpec | None = None
    config_revision: int = 0
    verdicts: Mapping[tuple[str, str], bool] = field(default_factory=dict)
    health_revision: int = 0
    drains: frozenset[tuple[str, str]] = frozenset()
    drain_revision: int = 0
    weights: Mapping[tuple[str, str], int] = field(default_factory=dict)  # dynamic ones


@dataclass
class ReadInputs:
    inputs: Inputs
    problems: list[str] = field(default_factory=list)


def inputs_from_kvs(
    ks: Keyspace,
    kvs: Iterable[KeyValue],
    revision: int = 0,
    *,
    spec: ClusterSpec | None = None,
    config_revision: int = 0,
) -> ReadInputs:
    """Inputs from the cluster's keys; `revision` is the etcd revision they were read at.
    `spec`: the config already parsed (its key among `kvs` is then not parsed again)."""
    kv_list = list(kvs)
    problems: list[str] = []
    for kv in kv_list:
        if spec is None and kv.key == ks.config():
            stored = parse_stored(kv, ks)
            config_revision = kv.mod_revision
            if stored.problem is not None:
                problems.append(f"{kv.key}: the stored config is invalid: {stored.problem}")
            spec = stored.spec
    verdicts: dict[tuple[str, str], bool] = {}
    weights: dict[tuple[str, str], int] = {}
    if spec is not None:
        reports, bad = health_report(ks, kv_list, spec)
        problems += bad
        for r in reports:
            if r.state in (UP, DOWN):
                verdicts[(r.service, r.real)] = r.state == UP
            if r.state == UP and r.weight is not None:
                weights[(r.service, r.real)] = r.weight
    drains: set[tuple[str, str]] = set()
    for kv in kv_list:
        parsed = ks.classify(kv.key)
        if parsed is not None and parsed.kind is KeyKind.DRAIN:
            drains.add((parsed.parts[0], parsed.parts[1]))
        elif kv.key.startswith(ks.drain_prefix()):
            problems.append(f"{kv.key}: not a drain key (admin/drain/<service>/<real>)")
    return ReadInputs(
        Inputs(spec, config_revision, verdicts, revision, frozenset(drains), revision, weights),
        problems,
    )


RELEVANT = frozenset({KeyKind.CONFIG, KeyKind.HEALTH, KeyKind.LEADER, KeyKind.DRAIN})


class InputsMirror:
    """The keys the reconciler's inputs come from, kept from a read and a watch."""

    def __init__(self, ks: Keyspace) -> None:
        self.ks = ks
        self.kvs: dict[str, KeyValue] = {}

    def _relevant(self, key: str) -> bool:
        parsed = self.ks.classify(key)
        if parsed is not None:
            return parsed.kind in RELEVANT
        # Malformed keys under these prefixes are kept, to be reported.
        return key.startswith((self.ks.health_prefix(), self.ks.drain_prefix()))

    def load(self, kvs: Iterable[KeyValue]) -> None:
        """Replace everything with a full read."""
        self.kvs = {kv.key: kv for kv in kvs if self._relevant(kv.key)}

    def apply(self, event: WatchEvent) -> bool:
        """Follow one watch event; True if it changed an input key."""
        key = event.kv.key
        if not self._relevant(key):
            return False
        if event.type is EventType.PUT:
            self.kvs[key] = event.kv
        else:
            self.kvs.pop(key, None)
        return True

    def snapshot(self) -> list[KeyValue]:
        return list(self.kvs.values())
