"""The reconciler's inputs from etcd keys: config, health verdicts, drains.

:func:`inputs_from_kvs` turns the keys under ``<prefix>/<cluster>/`` (one
range read, or a watched view of them) into :class:`~etcdha.ipvs.reconcile.Inputs`:

- the spec from the ``config`` key (its mod revision is the config revision);
- one verdict per real from the ``health/`` keys under each service's health
  policy (etcdha.health): up -> True, down -> False; unknown (no live checker,
  or the leader's checker has not spoken) leaves the real out of the mapping,
  which the desired table reads as up;
- the ``admin/drain/`` keys.

Malformed keys are skipped and reported, never fatal.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from etcdha.configdb import parse_stored
from etcdha.health import DOWN, UP, health_report
from etcdha.ipvs.reconcile import Inputs
from etcdha.keyspace import KeyKind, Keyspace
from etcdha.store import KeyValue


@dataclass
class ReadInputs:
    inputs: Inputs
    problems: list[str] = field(default_factory=list)


def inputs_from_kvs(ks: Keyspace, kvs: Iterable[KeyValue], revision: int = 0) -> ReadInputs:
    """Inputs from the cluster's keys; `revision` is the etcd revision they were read at."""
    kv_list = list(kvs)
    problems: list[str] = []
    spec = None
    config_revision = 0
    for kv in kv_list:
        if kv.key == ks.config():
            stored = parse_stored(kv, ks)
            config_revision = kv.mod_revision
            if stored.problem is not None:
                problems.append(f"{kv.key}: the stored config is invalid: {stored.problem}")
            spec = stored.spec
    verdicts: dict[tuple[str, str], bool] = {}
    if spec is not None:
        reports, bad = health_report(ks, kv_list, spec)
        problems += bad
        for r in reports:
            if r.state in (UP, DOWN):
                verdicts[(r.service, r.real)] = r.state == UP
    drains: set[tuple[str, str]] = set()
    for kv in kv_list:
        parsed = ks.classify(kv.key)
        if parsed is not None and parsed.kind is KeyKind.DRAIN:
            drains.add((parsed.parts[0], parsed.parts[1]))
        elif kv.key.startswith(ks.drain_prefix()):
            problems.append(f"{kv.key}: not a drain key (admin/drain/<service>/<real>)")
    return ReadInputs(
        Inputs(spec, config_revision, verdicts, revision, frozenset(drains), revision), problems
    )
