"""What one checker checks, and what it knows of each real server.

:func:`jobs_from_spec` turns the spec into one :class:`Job` per real server
(ranges expanded); :class:`RealState` applies probe results to a real's verdict.

Verdicts (ldirectord's counters):

* A real has no verdict until its first check; the first result decides
  (up or down). ldirectord starts a real that is not already in the kernel's
  table as down and brings it up on the first good check; a new checker
  publishing "down" after one failed check, or "up" after one good one, is the
  same, without making a healthy real wait ``rise_count`` intervals on every
  agent restart.
* Then ``failure_count`` consecutive failures take an up real down, and
  ``rise_count`` consecutive successes bring a down real up; a result that
  agrees with the verdict resets the other counter.
* A dynamic weight (external checks with ``dynamic_weight``) that changes while
  the real is up is a new verdict too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdha import probes
from etcdha.events import now_rfc3339
from etcdha.keyspace import fwmark_segment, real_segment, service_segment
from etcdha.probes import Plan, Result, Target
from etcdha.spec import ClusterSpec, VirtualService
from etcdha.spec_types import expand_real, split_host_port

RealKey = tuple[str, str]  # (service segment, real segment)
NEVER = 10**9  # RealState.connects: no good negotiation yet, so negotiate next


@dataclass(frozen=True)
class Job:
    """One real server of one virtual service, as its check sees it."""

    key: RealKey
    service_label: str
    real_label: str
    target: Target
    plan: Plan
    interval: float
    failure_count: int
    rise_count: int
    weight: int  # the real's configured weight
    dynamic: bool
    labels: tuple[tuple[str, str], ...]  # node_exporter's IPVS label names


def _service_key(vs: VirtualService) -> tuple[str, str, int]:
    """(segment, virtual address text, virtual port)."""
    if vs.fwmark is not None:
        return fwmark_segment(vs.fwmark, vs.ip_family), str(vs.fwmark), 0
    assert vs.address is not None
    ip, port = split_host_port(vs.address)
    return service_segment(vs.protocol.value, str(ip), port), str(ip), port


def ipvs_labels(vs: VirtualService, address: str, port: int) -> tuple[tuple[str, str], ...]:
    """Labels as node_exporter's ipvs collector names them (node_ipvs_backend_*)."""
    if vs.fwmark is not None:
        local_address, local_port, proto, mark = "", "0", "FWM", str(vs.fwmark)
    else:
        assert vs.address is not None
        ip, vport = split_host_port(vs.address)
        local_address, local_port, proto, mark = str(ip), str(vport), vs.protocol.value.upper(), ""
    return (
        ("local_address", local_address),
        ("local_port", local_port),
        ("remote_address", address),
        ("remote_port", str(port)),
        ("proto", proto),
        ("local_mark", mark),
    )


def jobs_from_spec(spec: ClusterSpec, checks_dir: Path) -> dict[RealKey, Job]:
    """Every real server of every virtual service (ranges expanded), keyed by segments."""
    jobs: dict[RealKey, Job] = {}
    for vs in spec.virtual_services:
        segment, vaddr, vport = _service_key(vs)
        check = vs.check
        plan = probes.plan(check)
        for real in vs.reals:
            for ip, rport in expand_real(real.address):
                address = str(ip)
                port = check.port or rport or vport
                timeout = plan.timeout
                target = Target(
                    address=address,
                    port=port,
                    protocol="udp" if vs.protocol.value == "udp" else vs.protocol.value,
                    check=check,
                    request=real.request if real.request is not None else check.request,
                    receive=real.receive if real.receive is not None else check.receive,
                    timeout=timeout,
                    virtual_address=vaddr,
                    virtual_port=vport,
                    real_port=rport,
                    checks_dir=checks_dir,
                )
                key = (segment, real_segment(address, rport))
                jobs[key] = Job(
                    key=key,
                    service_label=vs.label,
                    real_label=f"[{address}]:{rport}" if ip.version == 6 else f"{address}:{rport}",
                    target=target,
                    plan=plan,
                    interval=max(check.interval, 0.05),
                    failure_count=check.failure_count,
                    rise_count=check.rise_count,
                    weight=real.weight,
                    dynamic=check.dynamic_weight,
                    labels=ipvs_labels(vs, address, port if vs.fwmark is None else rport),
                )
    return jobs


# ---------------------------------------------------------------------------
# verdicts


@dataclass
class RealState:
    """What one checker knows of one real server."""

    job: Job
    state: str | None = None  # None until the first check
    since: str = ""
    detail: str = ""
    latency_ms: float = 0.0
    weight: int | None = None
    successes: int = 0
    failures: int = 0
    checks: int = 0
    ups: int = 0  # checks that passed (etcdha_checks_total)
    connects: int = NEVER  # ldirectord's num_connects for negotiate_every
    _gauges: tuple[Any, Any] | None = field(default=None, repr=False)

    def value(self) -> bytes:
        data: dict[str, Any] = {
            "state": self.state,
            "since": self.since,
            "detail": self.detail,
            "latency_ms": self.latency_ms,
        }
        if self.job.dynamic and self.weight is not None:
            data["weight"] = self.weight
        return json.dumps(data, separators=(",", ":")).encode()

    def desired_weight(self) -> int:
        if self.state != "up":
            return 0
        return self.weight if self.weight is not None else self.job.weight

    def next_probe(self) -> tuple[str, float]:
        """Which probe this check runs (negotiate_every: ldirectord's combined check)."""
        plan = self.job.plan
        if plan.every <= 1 or self.connects >= plan.every - 1:
            return plan.probe, plan.timeout
        return "connect", plan.connect_timeout

    def observe(self, probe: str, result: Result) -> bool:
        """Apply one result; True when the verdict changed (a write is due)."""
        self.checks += 1
        if result.ok:
            self.ups += 1
        plan = self.job.plan
        if plan.every > 1:
            if probe == plan.probe and probe != "connect":
                if result.ok:
                    self.connects = 0
            elif result.ok:
                self.connects += 1
            else:
                self.connects = NEVER
        self.detail = result.detail
        self.latency_ms = result.latency_ms
        new_weight = result.weight if self.job.dynamic else None
        if self.state is None:
            return self._become("up" if result.ok else "down", new_weight)
        if result.ok:
            self.failures = 0
            self.successes += 1
            if self.state == "up":
                return self._reweigh(new_weight)
            if self.successes >= self.job.rise_count:
                return self._become("up", new_weight)
            return False
        self.successes = 0
        self.failures += 1
        if self.state == "down" or self.failures < self.job.failure_count:
            return False
        return self._become("down", None)

    def _become(self, state: str, weight: int | None) -> bool:
        self.state = state
        self.since = now_rfc3339()
        self.weight = weight
        self.successes = self.failures = 0
        return True

    def _reweigh(self, weight: int | None) -> bool:
        if weight == self.weight:
            return False
        self.weight = weight
        return True


def verdict_text(st: RealState) -> str:
    if st.state == "up" and st.weight is not None:
        return f"up (weight {st.weight})"
    return st.state or "unknown"
