"""The lab's scenario: the seed's four-step test and more, with what the client must see.

Pure logic: the steps, their expectations, and the measures taken from what
the recorder saw (:mod:`etcdha.lab.recorder`). :mod:`etcdha.lab.labrun`
performs the steps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from etcdha.lab.recorder import Leadership, Request

ROUND_ROBIN = ("rs1", "rs2")
ERROR_OUTCOMES = ("refused", "reset", "timeout", "error")
WINDOW = 10  # requests (100 ms): in turn means every window shows each real


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    action: str  # what is done, as an operator would type or say it
    holder: str  # who must hold the VIP and DIP and lead, once settled
    client: tuple[str, ...]  # what every request must get once settled
    note: str = ""

    def expectation(self) -> str:
        what = {
            ROUND_ROBIN: "rs1 and rs2 in turn (round robin)",
            ("rs2",): "only rs2",
            ("fallback",): 'only the fallback "Sorry" page',
        }.get(self.client, " and ".join(self.client))
        return f"{self.holder} holds VIP and DIP; the client gets {what}"


def steps(first: str = "node1", second: str = "node2") -> tuple[Step, ...]:
    """The scenario; `kill` names the leader at that moment (``first``)."""
    return (
        Step(
            "both-up",
            "both directors up",
            f"(both agents started above: {first}, then {second})",
            first,
            ROUND_ROBIN,
            "seed step 1",
        ),
        Step(
            "standby",
            f"standby {first}",
            f"etcdha standby {first}",
            second,
            ROUND_ROBIN,
            "seed step 2 (hb_standby)",
        ),
        Step(
            "stop-rs1",
            "rs1 down",
            "stop rs1's web server",
            second,
            ("rs2",),
            "seed step 3: quiescent, rs1 keeps weight 0",
        ),
        Step(
            "stop-rs2",
            "rs2 down too",
            "stop rs2's web server",
            second,
            ("fallback",),
            "seed step 4: the director's own page",
        ),
        Step(
            "start-both",
            "both reals back",
            "start rs1's and rs2's web servers",
            second,
            ROUND_ROBIN,
        ),
        Step(
            "online",
            f"online {first}",
            f"etcdha online {first}",
            first,
            ROUND_ROBIN,
            "auto_failback on",
        ),
        Step(
            "kill",
            f"kill -9 {first}'s agent",
            f"kill -9 the agent of {first} (the leader)",
            second,
            ROUND_ROBIN,
            "the lease runs out; the fence guard drops the addresses first",
        ),
        Step(
            "restart",
            f"{first}'s agent restarted",
            f"etcdha agent start on {first} again",
            first,
            ROUND_ROBIN,
            "auto_failback on",
        ),
    )


def done_between(requests: Sequence[Request], start: float, end: float) -> list[Request]:
    """Requests sent in [start, end), in the order sent."""
    return [r for r in requests if start <= r.sent < end]


def matches(client: tuple[str, ...], seen: Sequence[Request]) -> bool:
    """Every request got one of the expected outcomes, and each expected one came."""
    outcomes = Counter(r.outcome for r in seen)
    if not seen or set(outcomes) != set(client):
        return False
    if client == ROUND_ROBIN:  # in turn: neither real gets much more than half
        return min(outcomes[c] for c in client) >= 0.35 * len(seen)
    return True


def longest_gap(seq: Sequence[Request]) -> tuple[float, float]:
    """The client-side gap: the longest stretch during which every request sent got no
    answer (neither a real's page nor the fallback), from the last request answered
    before it to the first answered after it, by send time. `seq` is in the order
    sent. Returns (length, when it began); (0, 0) when nothing failed."""
    best, began = 0.0, 0.0
    last_ok: float | None = None
    failing = False
    for r in seq:
        if not r.served:
            failing = True
            continue
        if failing and last_ok is not None and r.sent - last_ok > best:
            best, began = r.sent - last_ok, last_ok
        failing = False
        last_ok = r.sent
    if failing and last_ok is not None and seq[-1].sent - last_ok > best:
        best, began = seq[-1].sent - last_ok, last_ok
    return best, began


def final_run(seq: Sequence[Request], client: tuple[str, ...]) -> list[Request]:
    """The requests at the end of `seq` (in the order sent) that all got an
    expected outcome; with several expected, every ten in a row show each."""
    start = len(seq)
    while start > 0 and seq[start - 1].outcome in client:
        start -= 1
    run = list(seq[start:])
    if len(client) > 1:
        for i in range(len(run) - WINDOW, -1, -1):
            if {r.outcome for r in run[i : i + WINDOW]} != set(client):
                return run[i + 1 :]
    return run


@dataclass
class StepResult:
    step: Step
    started: float
    detected: float | None = None  # when the runner saw the expectation hold
    ended: float = 0.0
    vip: tuple[str, ...] = ()
    dip: tuple[str, ...] = ()
    leader: str | None = None
    settled: float | None = None  # the first request of the final run of expected outcomes
    client: dict[str, int] = field(default_factory=dict)
    steady: float = 0.0  # how long the final run lasted
    gap: float = 0.0
    gap_began: float = 0.0
    failed: int = 0
    requests: int = 0
    min_steady: float = 1.0

    @property
    def ok(self) -> bool:
        want = (self.step.holder,)
        return (
            self.settled is not None
            and self.steady >= self.min_steady
            and self.vip == want
            and self.dip == want
            and self.leader == self.step.holder
            and set(self.client) == set(self.step.client)
        )

    def observed(self) -> str:
        who = "+".join(self.vip) or "nobody"
        seen = ", ".join(f"{k} {v}" for k, v in sorted(self.client.items())) or "nothing"
        return f"{who} holds the VIP (DIP: {'+'.join(self.dip) or 'nobody'}); client: {seen}"


MARGIN = 0.1  # requests sent this close to the next action are left to it


def measure(result: StepResult, requests: Sequence[Request]) -> None:
    """Fill in what the client saw during the step; `requests` in the order sent,
    all of them finished."""
    seq = done_between(requests, result.started, result.ended - MARGIN)
    run = final_run(seq, result.step.client)
    good = bool(run) and matches(result.step.client, run)
    result.settled = run[0].sent if good else None
    result.steady = (result.ended - MARGIN - run[0].sent) if good else 0.0
    result.client = dict(Counter(r.outcome for r in run)) if good else {}
    if not good:  # say what came instead, over the step's last second
        tail = [r for r in seq if r.sent >= result.ended - MARGIN - 1.0]
        result.client = dict(Counter(r.outcome for r in tail))
    until = result.settled if result.settled is not None else result.ended
    result.failed = sum(1 for r in seq if r.sent < until and not r.served)
    result.requests = len(seq)
    result.gap, result.gap_began = longest_gap(
        [r for r in requests if r.sent < result.ended - MARGIN and r.sent >= result.started]
    )


def leader_at(changes: Sequence[Leadership], t: float) -> str | None:
    found = None
    for c in changes:
        if c.t > t:
            break
        found = c.leader
    return found


def leader_intervals(
    changes: Sequence[Leadership], end: float
) -> dict[str, list[tuple[float, float]]]:
    """Each node's terms as (from, to); an open term ends at `end`."""
    out: dict[str, list[tuple[float, float]]] = {}
    for i, c in enumerate(changes):
        if c.leader is None:
            continue
        until = changes[i + 1].t if i + 1 < len(changes) else end
        out.setdefault(c.leader, []).append((c.t, until))
    return out


def non_leader_answers(
    requests: Sequence[Request], leaders: Sequence[Leadership], end: float
) -> list[tuple[Request, str | None]]:
    """Answers taken by a director that was not the group's leader in etcd when it
    took them (with the leader then); see :func:`etcdha.lab.recorder.attribute`."""
    terms = leader_intervals(leaders, end)
    bad = []
    for r in requests:
        if r.director is None or r.taken is None:
            continue
        if not any(a <= r.taken <= b for a, b in terms.get(r.director, [])):
            bad.append((r, leader_at(leaders, r.taken)))
    return bad
