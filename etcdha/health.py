"""Health aggregation: from the checkers' verdicts in etcd to one verdict per real.

Pure functions, no I/O. A checker is *live* for a real while its key
``health/<checker>/<service>/<real>`` exists (the key is bound to the checker's
lease, so it disappears when the checker does). Policies (``health_policy`` of
the cluster, overridden per virtual service):

* ``leader`` (default): the checker of the node leading the service's group
  decides, as ldirectord on the active director did. Without a leader, or
  while the leader's checker has no verdict for the real, the verdict is
  ``unknown``.
* ``majority``: up when more than half of the live checkers say up (a tie is
  down).
* ``all``: up when every live checker says up.
* ``any``: up when at least one live checker says up.

With no live checker the verdict is ``unknown``: the caller decides what that
means. ldirectord starts a real that is not in the kernel's table as down and
keeps one that is; the IPVS reconciler is expected to do the same.

Dynamic weights (external checks with dynamic_weight): ``leader`` takes the
leader's; the others take the lowest weight among the checkers that say up.

:func:`parse_health` reads health keys from etcd KeyValues, skipping and
reporting malformed ones; :func:`health_report` builds the per-real report of
``etcdha status`` from every key under the cluster prefix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from etcdha.configdb import parse_stored
from etcdha.keyspace import KeyKind, Keyspace, fwmark_segment, real_segment, service_segment
from etcdha.spec import ClusterSpec, HealthPolicy, VirtualService
from etcdha.spec_types import expand_real, split_host_port
from etcdha.store import KeyValue

__all__ = [
    "UNKNOWN",
    "HealthRecord",
    "RealReport",
    "Verdict",
    "aggregate",
    "by_real",
    "health_report",
    "leaders_from",
    "parse_health",
    "policy_for",
]

UP, DOWN, UNKNOWN = "up", "down", "unknown"
RealKey = tuple[str, str]  # (service segment, real segment)


@dataclass(frozen=True)
class HealthRecord:
    """One checker's verdict for one real, as read from etcd."""

    checker: str
    service: str  # segment, e.g. tcp-192.0.2.200-80
    real: str  # segment, e.g. 192.0.2.12-80
    state: str  # up or down
    since: str = ""
    detail: str = ""
    latency_ms: float | None = None
    weight: int | None = None
    mod_revision: int = 0

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "checker": self.checker,
            "state": self.state,
            "since": self.since,
            "detail": self.detail,
            "latency_ms": self.latency_ms,
        }
        if self.weight is not None:
            out["weight"] = self.weight
        return out


@dataclass(frozen=True)
class Verdict:
    state: str  # up, down or unknown
    reason: str
    weight: int | None = None  # a dynamic weight, when the deciding verdicts carry one
    records: tuple[HealthRecord, ...] = ()  # the live checkers' verdicts considered


def _record(checker: str, service: str, real: str, kv: KeyValue) -> HealthRecord:
    data = json.loads(kv.value)
    if not isinstance(data, dict):
        raise ValueError("the value is not a JSON object")
    state = data.get("state")
    if state not in (UP, DOWN):
        raise ValueError(f"state {state!r} is neither 'up' nor 'down'")
    since = data.get("since", "")
    detail = data.get("detail", "")
    latency = data.get("latency_ms")
    weight = data.get("weight")
    if not isinstance(since, str) or not isinstance(detail, str):
        raise ValueError("since and detail must be strings")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int | float)):
        raise ValueError(f"latency_ms {latency!r} is not a number")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int)):
        raise ValueError(f"weight {weight!r} is not an integer")
    if isinstance(weight, int) and weight < 0:
        raise ValueError(f"weight {weight} is negative")
    return HealthRecord(
        checker,
        service,
        real,
        state,
        since,
        detail,
        float(latency) if latency is not None else None,
        weight,
        kv.mod_revision,
    )


def parse_health(
    keyspace: Keyspace, kvs: Iterable[KeyValue]
) -> tuple[list[HealthRecord], list[str]]:
    """Health records among ``kvs`` (other keys are ignored) and a sentence for
    each malformed health key or value. Never raises."""
    records: list[HealthRecord] = []
    problems: list[str] = []
    health_root = keyspace.health_prefix()
    for kv in kvs:
        if not kv.key.startswith(health_root):
            continue
        parsed = keyspace.classify(kv.key)
        if parsed is None or parsed.kind is not KeyKind.HEALTH:
            problems.append(f"{kv.key}: not a health key (<checker>/<service>/<real>)")
            continue
        checker, service, real = parsed.parts
        try:
            records.append(_record(checker, service, real, kv))
        except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
            problems.append(f"{kv.key}: malformed verdict: {e}")
    return records, problems


def by_real(records: Iterable[HealthRecord]) -> dict[RealKey, list[HealthRecord]]:
    out: dict[RealKey, list[HealthRecord]] = {}
    for r in records:
        out.setdefault((r.service, r.real), []).append(r)
    for views in out.values():
        views.sort(key=lambda r: r.checker)
    return out


def _lowest_weight(records: Sequence[HealthRecord]) -> int | None:
    weights = [r.weight for r in records if r.state == UP and r.weight is not None]
    return min(weights) if weights else None


def aggregate(
    policy: HealthPolicy | str,
    records: Sequence[HealthRecord],
    leader: str | None = None,
) -> Verdict:
    """One real's verdict from its live checkers' ``records`` under ``policy``;
    ``leader`` is the node leading the service's group (``leader`` policy)."""
    policy = HealthPolicy(policy)
    live = tuple(sorted(records, key=lambda r: r.checker))
    if policy is HealthPolicy.leader:
        if leader is None:
            return Verdict(UNKNOWN, "no node leads the service's group", records=live)
        mine = next((r for r in live if r.checker == leader), None)
        if mine is None:
            return Verdict(UNKNOWN, f"the leader {leader} has no verdict yet", records=live)
        return Verdict(mine.state, f"leader {leader} says {mine.state}", mine.weight, live)
    if not live:
        return Verdict(UNKNOWN, "no live checker has a verdict", records=live)
    ups = sum(1 for r in live if r.state == UP)
    n = len(live)
    if policy is HealthPolicy.majority:
        up = ups * 2 > n
        reason = f"{ups} of {n} checkers say up"
    elif policy is HealthPolicy.all:
        up = ups == n
        reason = f"{ups} of {n} checkers say up (all needed)"
    else:
        up = ups > 0
        reason = f"{ups} of {n} checkers say up (one is enough)"
    return Verdict(UP if up else DOWN, reason, _lowest_weight(live) if up else None, live)


def policy_for(spec: ClusterSpec, vs: VirtualService) -> HealthPolicy:
    return vs.health_policy or spec.health_policy


def service_key(vs: VirtualService) -> str:
    if vs.fwmark is not None:
        return fwmark_segment(vs.fwmark, vs.ip_family)
    assert vs.address is not None
    ip, port = split_host_port(vs.address)
    return service_segment(vs.protocol.value, str(ip), port)


def leaders_from(keyspace: Keyspace, kvs: Iterable[KeyValue]) -> dict[str, str]:
    """{group: leading node} from the leader keys among ``kvs`` (malformed ones skipped)."""
    out: dict[str, str] = {}
    for kv in kvs:
        parsed = keyspace.classify(kv.key)
        if parsed is None or parsed.kind is not KeyKind.LEADER:
            continue
        try:
            node = json.loads(kv.value).get("node")
        except (ValueError, AttributeError):
            continue
        if isinstance(node, str):
            out[parsed.parts[0]] = node
    return out


# ---------------------------------------------------------------------------
# the report of `etcdha status`


@dataclass(frozen=True)
class RealReport:
    service: str  # segment
    real: str  # segment
    service_label: str  # "tcp 192.0.2.200:80", "" for a real no longer in the config
    real_label: str
    policy: str
    state: str  # the aggregated verdict: up, down, unknown
    reason: str
    weight: int | None
    since: str  # since when the deciding view(s) have said so ("" when unknown)
    detail: str  # the last detail of the deciding view (or of the latest one)
    views: list[dict[str, Any]] = field(default_factory=list)
    in_config: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "real": self.real,
            "service_label": self.service_label,
            "real_label": self.real_label,
            "policy": self.policy,
            "state": self.state,
            "reason": self.reason,
            "weight": self.weight,
            "since": self.since,
            "detail": self.detail,
            "in_config": self.in_config,
            "views": self.views,
        }


def _since_and_detail(
    verdict: Verdict, leader: str | None, policy: HealthPolicy
) -> tuple[str, str]:
    views = verdict.records
    if not views or verdict.state == UNKNOWN:
        latest = max(views, key=lambda r: r.mod_revision, default=None)
        return "", latest.detail if latest else ""
    if policy is HealthPolicy.leader:
        mine = next(r for r in views if r.checker == leader)
        return mine.since, mine.detail
    agreeing = [r for r in views if r.state == verdict.state] or list(views)
    # The verdict has held since the last of the agreeing views turned so.
    last = max(agreeing, key=lambda r: (r.since, r.mod_revision))
    return last.since, last.detail


def health_report(
    keyspace: Keyspace, kvs: Iterable[KeyValue], spec: ClusterSpec | None = None
) -> tuple[list[RealReport], list[str]]:
    """A report per real server from every key under the cluster prefix.

    ``spec``: the cluster spec (default: parsed from the config key among
    ``kvs``). Reals of the config come in its order; reals that only have
    health keys (left by a checker of an older config) follow. Returns the
    reports and the problems met (malformed keys, an unreadable config).
    """
    kv_list = list(kvs)
    problems: list[str] = []
    if spec is None:
        spec = _spec_from(keyspace, kv_list, problems)
    records, bad = parse_health(keyspace, kv_list)
    problems += bad
    views = by_real(records)
    leaders = leaders_from(keyspace, kv_list)
    reports: list[RealReport] = []
    seen: set[RealKey] = set()
    for vs in spec.virtual_services if spec else []:
        segment = service_key(vs)
        policy = policy_for(spec, vs) if spec else HealthPolicy.leader
        group = spec.group_of(vs) if spec else None
        leader = leaders.get(group.name) if group else None
        for real in vs.reals:
            for ip, port in expand_real(real.address):
                rk = (segment, real_segment(str(ip), port))
                if rk in seen:
                    continue
                seen.add(rk)
                label = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
                reports.append(_report(rk, vs.label, label, policy, views.get(rk, []), leader))
    for rk, recs in sorted(views.items()):
        if rk not in seen:
            policy = spec.health_policy if spec else HealthPolicy.leader
            reports.append(_report(rk, "", rk[1], policy, recs, None, in_config=False))
    return reports, problems


def _report(
    rk: RealKey,
    service_label: str,
    real_label: str,
    policy: HealthPolicy,
    recs: list[HealthRecord],
    leader: str | None,
    *,
    in_config: bool = True,
) -> RealReport:
    verdict = aggregate(policy, recs, leader)
    since, detail = _since_and_detail(verdict, leader, policy)
    return RealReport(
        service=rk[0],
        real=rk[1],
        service_label=service_label,
        real_label=real_label,
        policy=policy.value,
        state=verdict.state,
        reason=verdict.reason,
        weight=verdict.weight,
        since=since,
        detail=detail,
        views=[r.view() for r in recs],
        in_config=in_config,
    )


def _spec_from(
    keyspace: Keyspace, kvs: Sequence[KeyValue], problems: list[str]
) -> ClusterSpec | None:
    for kv in kvs:
        if kv.key == keyspace.config():
            stored = parse_stored(kv, keyspace)
            if stored.problem is not None:
                problems.append(f"{kv.key}: the stored config is invalid: {stored.problem}")
            return stored.spec
    return None


def summary(reports: Sequence[RealReport]) -> Mapping[str, int]:
    """How many reals are up, down and unknown."""
    out = {UP: 0, DOWN: 0, UNKNOWN: 0}
    for r in reports:
        out[r.state] = out.get(r.state, 0) + 1
    return out
