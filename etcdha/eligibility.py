"""May this node lead? Not in standby, its interfaces present, a ping node answering."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from etcdha import network
from etcdha.election_rules import ClusterView
from etcdha.spec import AddressResource, ClusterSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    eligible: bool  # not in standby, interfaces present
    why: str | None  # the first problem, ping included
    ping_ok: bool


class Eligibility:
    def __init__(self, node: str, spec: Callable[[], ClusterSpec], view: ClusterView) -> None:
        self.node = node
        self.spec = spec
        self.view = view
        self.missed_rounds = 0  # consecutive ping rounds with no answer at all
        self.interface_problem: str | None = None
        self.changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._last: Verdict | None = None

    def current(self) -> Verdict:
        spec = self.spec()
        ping_ok = not spec.election.ping_nodes or self.missed_rounds < spec.election.ping_failures
        if self.node in self.view.standby:
            return Verdict(False, f"standby: {self.view.standby[self.node]}", ping_ok)
        if self.node not in spec.node_names:
            return Verdict(False, "not one of the config's nodes", ping_ok)
        if self.interface_problem:
            return Verdict(False, self.interface_problem, ping_ok)
        if not ping_ok:
            return Verdict(
                True,
                f"no ping node answers ({', '.join(spec.election.ping_nodes)}) for "
                f"{self.missed_rounds} rounds",
                False,
            )
        return Verdict(True, None, True)

    async def check_interfaces(self) -> str | None:
        spec = self.spec()
        node = next((n for n in spec.nodes if n.name == self.node), None)
        if node is None:
            return None
        for group in spec.groups:
            for r in group.resources:
                if not isinstance(r, AddressResource):
                    continue
                explicit = node.interfaces.get(r.address, r.interface)
                try:
                    await network.resolve_interface(r.address, explicit)
                except (network.NetworkError, ValueError, OSError) as e:
                    return f"cannot place {r.address} of group {group.name}: {e}"
        return None

    async def ping_round(self) -> None:
        spec = self.spec()
        targets = spec.election.ping_nodes
        if not targets:
            self.missed_rounds = 0
            return
        answers = await asyncio.gather(
            *(network.ping(t, spec.election.ping_timeout) for t in targets),
            return_exceptions=True,
        )
        if any(a is True for a in answers):
            self.missed_rounds = 0
        else:
            self.missed_rounds += 1

    async def refresh(self) -> bool:
        """Re-evaluate; True if the verdict changed (and say why in the log)."""
        self.interface_problem = await self.check_interfaces()
        verdict = self.current()
        if verdict != self._last:
            if self._last is not None or verdict.why:
                if verdict.why is None:
                    log.info("%s is eligible to lead again", self.node)
                else:
                    log.warning("%s may not lead: %s", self.node, verdict.why)
            self._last = verdict
            self.changed.set()
            return True
        return False

    def poke(self) -> None:
        """Re-evaluate now (standby set or cleared), without waiting for a ping round."""
        self._poke.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._pinger())
            while True:
                await self._poke.wait()
                self._poke.clear()
                await self.refresh()

    async def _pinger(self) -> None:
        while True:
            await self.ping_round()
            self.poke()
            await asyncio.sleep(self.spec().election.ping_interval)
