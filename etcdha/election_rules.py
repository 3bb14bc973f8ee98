"""Who should lead each resource group: pure decisions over a view of etcd.

The agent keeps a `ClusterView` of the member, leader and admin keys, and for
each group asks `decide()` what to do now. Nothing here performs I/O, so every
rule (preference, standby, takeover, auto_failback with its delay) is tested
without etcd.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from etcdha.spec import ClusterSpec, Group

# A less-preferred candidate waits this long per rank before campaigning for a
# vacant group, so that the most-preferred eligible node wins the race.
CAMPAIGN_STEP = 0.3


@dataclass(frozen=True)
class Member:
    node: str
    lease: int
    eligible: bool  # not in standby, interfaces present
    why: str | None = None
    ping_ok: bool = True  # reaches a ping node (or none are configured)


@dataclass(frozen=True)
class Leader:
    node: str
    lease: int
    term: int  # the leader key's create revision


@dataclass(frozen=True)
class FenceSeen:
    """A director's fence/<node> record as this agent last saw it: the groups
    whose addresses that director may have placed, with their terms.

    A director writes its record before it adds an address, refreshes it with
    every keepalive while it lists a group (each write guarded by the listed
    groups' leader keys, so it stops when a key is gone), and writes it without
    a group once that group's addresses are gone. Its fence deadline is never
    later than its last successful write + its lease TTL, so a record last
    seen written at `seen_at` bounds how long it may still hold what it lists.
    """

    node: str
    groups: Mapping[str, int]  # group -> term
    ttl: float  # the writer's lease TTL
    seen_at: float  # clock.now() when this agent last saw it written (or read it)
    trusted: bool = True  # False: read back from a store that went back in time
    present: bool = True  # False: deleted by hand; its last word still counts


@dataclass
class ClusterView:
    members: dict[str, Member] = field(default_factory=dict)
    leaders: dict[str, Leader] = field(default_factory=dict)
    standby: dict[str, str] = field(default_factory=dict)  # node -> reason
    takeover: dict[str, str] = field(default_factory=dict)  # group -> target node
    # When this agent saw each member become eligible (monotonic seconds).
    eligible_since: dict[str, float] = field(default_factory=dict)
    # When this agent saw each group without a leader (monotonic seconds).
    vacant_since: dict[str, float] = field(default_factory=dict)
    # The etcd revision of the latest change applied to each group's leader entry:
    # an older event arriving late (a local update ran ahead of the watch) is ignored.
    leader_revision: dict[str, int] = field(default_factory=dict)
    fences: dict[str, FenceSeen] = field(default_factory=dict)  # node -> its record
    # clock.now() when the store was last seen to go back in time (None: never):
    # records read back from it prove nothing until re-written or a TTL has passed.
    distrusted_since: float | None = None

    def note_member(self, member: Member, now: float) -> None:
        before = self.members.get(member.node)
        self.members[member.node] = member
        if member.eligible and not (before and before.eligible):
            self.eligible_since[member.node] = now
        elif not member.eligible:
            self.eligible_since.pop(member.node, None)

    def drop_member(self, node: str) -> None:
        self.members.pop(node, None)
        self.eligible_since.pop(node, None)

    def set_leader(self, group: str, leader: Leader | None, now: float, revision: int = 0) -> None:
        """Record a group's leader (None: vacant) as of etcd `revision` (0: unknown,
        applied anyway); a change older than the last one applied is ignored."""
        if revision:
            if revision < self.leader_revision.get(group, 0):
                return
            self.leader_revision[group] = revision
        if leader is None:
            if group in self.leaders or group not in self.vacant_since:
                self.vacant_since[group] = now
            self.leaders.pop(group, None)
        else:
            self.leaders[group] = leader
            self.vacant_since.pop(group, None)


@dataclass(frozen=True)
class Gate:
    """Whether a new leader may place its group's addresses now."""

    clear: bool
    reason: str
    retry_in: float | None = None  # look again after this long, even if nothing changes


def may_place(
    view: ClusterView,
    group: str,
    me: str,
    now: float,
    nodes: Iterable[str],
    ttl_floor: float,
) -> Gate:
    """May `me`, which holds `group`'s leader key, add the group's addresses now?

    Only once no other director may still hold them: every other director's
    fence record leaves the group out, or was last seen written longer than its
    lease TTL ago (its fence guard has removed the addresses by then). After
    the store went back in time, records read back from it prove nothing: a
    director whose record was not written again since counts as a holder until
    the longest TTL known (`ttl_floor` at least) has passed. `nodes`: the
    spec's directors.
    """
    ttl_max = max([ttl_floor, *(f.ttl for f in view.fences.values())])
    waits: list[tuple[float, str]] = []
    for seen in view.fences.values():
        if seen.node == me:
            continue
        if group in seen.groups:
            until = seen.seen_at + seen.ttl
            if until > now:
                what = "lists" if seen.present else "listed (before it was deleted)"
                waits.append(
                    (
                        until,
                        f"{seen.node} may still hold its addresses: its fence record {what} "
                        f"term {seen.groups[group]}",
                    )
                )
    since = view.distrusted_since
    if since is not None and since + ttl_max > now:
        unproven = sorted(
            {n for n in nodes if n != me}
            - {f.node for f in view.fences.values() if f.trusted and f.present}
            | {f.node for f in view.fences.values() if not f.trusted and f.node != me}
        )
        if unproven:
            waits.append(
                (
                    since + ttl_max,
                    f"etcd went back in time; {', '.join(unproven)} did not write its "
                    "fence record since",
                )
            )
    if not waits:
        return Gate(True, "no other director may hold its addresses")
    until, why = max(waits)
    return Gate(False, why, until - now)


class Action(StrEnum):
    follow = "follow"  # someone else leads, or we may not
    hold = "hold"  # we lead and should go on leading
    campaign = "campaign"  # the group is vacant and it is our turn
    wait = "wait"  # vacant, a more-preferred node gets the first try
    handover = "handover"  # we lead but should hand over gracefully


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    retry_in: float | None = None  # look again after this long, even if nothing changes


def preference(spec: ClusterSpec, group: Group) -> list[str]:
    """The group's preferred node first, then the order of `nodes`."""
    return [group.node] + [n for n in spec.node_names if n != group.node]


def candidates(spec: ClusterSpec, group: Group, view: ClusterView) -> list[str]:
    """Live, eligible members in the order they should lead this group.

    A takeover target comes first. Ping nodes count as Heartbeat's ipfail counts
    them: a member that reaches no ping node is passed over only while another
    eligible member does reach one, so a ping node that goes silent for every
    director does not take the service down with it.
    """
    order = [
        n
        for n in preference(spec, group)
        if (m := view.members.get(n)) and m.eligible and n not in view.standby
    ]
    target = view.takeover.get(group.name)
    if target in order:
        order.remove(target)
        order.insert(0, target)
    reaching = [n for n in order if view.members[n].ping_ok]
    return reaching or order


def decide(
    spec: ClusterSpec,
    group: Group,
    view: ClusterView,
    me: Member,
    now: float,
    handed_over_at: float | None = None,
) -> Decision:
    """What `me` (with its current, local verdict) should do about `group` now.

    `handed_over_at`: when `me` last handed this group over (None: never)."""
    view = _with(view, me)
    leader = view.leaders.get(group.name)
    if leader is not None and leader.node != me.node:
        return Decision(Action.follow, f"{leader.node} leads")
    order = candidates(spec, group, view)
    if leader is not None:
        return _as_leader(spec, group, view, me, order, now)
    if not me.eligible:
        return Decision(Action.follow, f"not eligible: {me.why}")
    if me.node not in order:
        return Decision(Action.follow, f"{me.why}; {order[0]} reaches a ping node")
    rank = order.index(me.node)
    if rank == 0:
        return Decision(Action.campaign, _campaign_reason(group, view, me.node))
    vacant_for = now - view.vacant_since.get(group.name, now)
    turn = rank * CAMPAIGN_STEP
    if handed_over_at is not None:
        # We just handed it to a more-preferred node that is alive and eligible: give
        # it a lease TTL to take it (a slow start must not bounce the group back to
        # us); if it dies meanwhile its member key goes and we rank first.
        turn = max(turn, handed_over_at + spec.election.lease_ttl - now + vacant_for)
    if vacant_for >= turn:
        return Decision(
            Action.campaign,
            f"{group.name} has been vacant {vacant_for:.1f}s; {', '.join(order[:rank])} "
            "did not take it",
        )
    return Decision(Action.wait, f"{order[0]} is preferred", turn - vacant_for)


def _with(view: ClusterView, me: Member) -> ClusterView:
    """The view with our own, fresher verdict in place of our member key."""
    if view.members.get(me.node) == me:
        return view
    return replace(view, members={**view.members, me.node: me})


def _campaign_reason(group: Group, view: ClusterView, me: str) -> str:
    if view.takeover.get(group.name) == me:
        return f"takeover of {group.name} requested"
    return f"{group.name} has no leader and {me} is the most-preferred eligible node"


def _as_leader(
    spec: ClusterSpec,
    group: Group,
    view: ClusterView,
    me: Member,
    order: list[str],
    now: float,
) -> Decision:
    if not me.eligible:
        return Decision(Action.handover, f"{me.node} is no longer eligible: {me.why}")
    if me.node not in order:
        return Decision(Action.handover, f"{me.why}, but {order[0]} reaches one")
    target = view.takeover.get(group.name)
    # A takeover towards a node that cannot lead is ignored, not obeyed.
    if target and target != me.node and target in order:
        return Decision(Action.handover, f"takeover by {target} requested")
    if spec.election.auto_failback and order[0] != me.node and target != me.node:
        best = order[0]
        prefs = preference(spec, group)
        if prefs.index(best) < prefs.index(me.node):
            since = view.eligible_since.get(best, now)
            if now - since >= spec.election.failback_delay:
                return Decision(
                    Action.handover,
                    f"auto_failback: {best} is preferred and has been eligible {now - since:.1f}s",
                )
            return Decision(
                Action.hold,
                f"auto_failback to {best} once failback_delay has passed",
                spec.election.failback_delay - (now - since),
            )
    return Decision(Action.hold, f"{me.node} leads {group.name}")
