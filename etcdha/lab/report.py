"""The lab's JSON report: each step's expected and observed outcome, the gaps,
and the raw timeline the chart is drawn from.

Times are seconds since the client started (``t0``, wall clock in ``started_at``).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from etcdha.lab.labrun import SEED_DEADTIME, LabRecord
from etcdha.lab.scenario import ERROR_OUTCOMES

REPORT_VERSION = 1


def _t(rec: LabRecord, t: float | None) -> float | None:
    return None if t is None else round(t - rec.t0, 3)


def build_report(rec: LabRecord) -> dict[str, Any]:
    steps = []
    for r in rec.results:
        steps.append(
            {
                "step": r.step.key,
                "title": r.step.title,
                "action": r.step.action,
                "note": r.step.note,
                "started": _t(rec, r.started),
                "ended": _t(rec, r.ended),
                "expected": {
                    "vip": r.step.holder,
                    "dip": r.step.holder,
                    "leader": r.step.holder,
                    "client": list(r.step.client),
                    "text": r.step.expectation(),
                },
                "observed": {
                    "vip": list(r.vip),
                    "dip": list(r.dip),
                    "leader": r.leader,
                    "client": r.client,
                    "text": r.observed(),
                },
                "settled_after_s": None if r.settled is None else round(r.settled - r.started, 3),
                "steady_s": round(r.steady, 3),
                "gap_s": round(r.gap, 3),
                "gap_began": _t(rec, r.gap_began) if r.gap else None,
                "failed_requests": r.failed,
                "requests": r.requests,
                "ok": r.ok,
            }
        )
    outcomes = Counter(r.outcome for r in rec.requests)
    served = [r for r in rec.requests if r.served]
    return {
        "version": REPORT_VERSION,
        "ok": rec.ok,
        "started_at": datetime.fromtimestamp(rec.t0, UTC).isoformat(timespec="milliseconds"),
        "duration_s": round(rec.ended - rec.t0, 3),
        "environment": {
            "kernel": rec.kernel,
            "user_mode_linux": rec.in_uml,
            "probe_interval_s": rec.options.interval,
            "deadtime_s": rec.options.deadtime,
            "seed_deadtime_s": SEED_DEADTIME,
            "lease_ttl_s": rec.lease_ttl,
            "note": f"Heartbeat's deadtime shortened from {SEED_DEADTIME} s to "
            f"{rec.options.deadtime} s for the demo",
        },
        "address_map": rec.address_map.splitlines(),
        "seed_changes": [
            {"file": c.file, "line": c.line, "seed": c.seed, "lab": c.lab} for c in rec.seed_changes
        ],
        "steps": steps,
        "gaps": [
            {"step": s["step"], "gap_s": s["gap_s"], "failed_requests": s["failed_requests"]}
            for s in steps
        ],
        "requests": {
            "total": len(rec.requests),
            "by_outcome": dict(sorted(outcomes.items())),
            "errors": sum(outcomes[e] for e in ERROR_OUTCOMES),
            "answered": len(served),
            "director_known": sum(1 for r in served if r.director),
        },
        "non_leader_answers": [
            {
                "sent": _t(rec, r.sent),
                "taken": _t(rec, r.taken),
                "outcome": r.outcome,
                "director": r.director,
                "leader": leader,
            }
            for r, leader in rec.non_leader
        ],
        "two_vip_holders": [_t(rec, t) for t, vip, _ in rec.holdings if len(vip) > 1],
        "timeline": {
            "holdings": [[_t(rec, t), list(v), list(d)] for t, v, d in rec.holdings],
            "leaders": [[_t(rec, t), leader] for t, leader in rec.leaders],
            "requests_columns": ["sent", "done", "outcome", "director", "taken", "port"],
            "requests": [
                [
                    _t(rec, r.sent),
                    _t(rec, r.done),
                    r.outcome,
                    r.director,
                    _t(rec, r.taken),
                    r.port,
                ]
                for r in rec.requests
            ],
        },
    }


def write_report(rec: LabRecord, path: Path) -> None:
    path.write_text(json.dumps(build_report(rec), indent=1) + "\n")
