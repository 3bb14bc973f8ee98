"""The agent: one per director, composing lease, view, eligibility and groups.

Level-triggered: any change in etcd, in eligibility or in time wakes one
reconcile pass that asks election_rules.decide() what each group needs and
does it. Stopping with SIGTERM hands every group over gracefully; SIGUSR1
stops without handing over (a planned restart: the next agent on this host
reclaims the lease and its leadership before the lease expires).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etcdha import __version__, clock, membership, metrics, network, resources
from etcdha.agent_ipvs import IPVSDuties
from etcdha.checker import CheckerNameInUse, claim_name, freeze_gc
from etcdha.checker_process import CheckerProcess
from etcdha.election import GroupRunner, LeaseKeeper, Phase
from etcdha.election_rules import Action, ClusterView, Leader, Member, decide, may_place
from etcdha.eligibility import Eligibility
from etcdha.events import now_rfc3339
from etcdha.failsafe import PROBE_LIMIT, Directors, Failsafe, PromiseRecord, TLSFiles
from etcdha.fence import FenceClient, FenceError, guard_paths
from etcdha.fence_record import FenceRecord
from etcdha.httpd import HTTPServer
from etcdha.keyspace import Keyspace
from etcdha.membership import (
    AlreadyRunning,
    Handoff,
    RunLock,
    StartupError,
    Superseded,
    boot_id,
    new_instance,
    register,
)
from etcdha.notify import Notifier
from etcdha.spec import ClusterSpec, EtcdUnreachable, Group
from etcdha.spec_load import Loaded
from etcdha.spec_types import split_host_port
from etcdha.store import (
    EtcdError,
    EtcdSettings,
    EtcdUnavailable,
    Op,
    Store,
    StoreWentBack,
    WatchCompacted,
)
from etcdha.view_sync import ViewSync

log = logging.getLogger(__name__)

KERNEL_CHECK = 30.0  # seconds between checks of the kernel settings IPVS needs
HISTORY_EVERY = 5.0  # seconds between saves of etcd's marks in the run directory


@dataclass
class AgentOptions:
    node: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 9614
    run_dir: Path = Path("/run/etcdha")
    tick: float = 1.0  # the HA loop runs at least this often
    peer_tls: TLSFiles | None = None  # for failsafe confirmations between directors
    checks_dir: Path | None = None  # external check scripts (default: see checker)
    fence_guard: subprocess.Popen[bytes] | None = None  # started early (fence.start_guard)


class Agent:
    def __init__(self, settings: EtcdSettings, ks: Keyspace, opts: AgentOptions) -> None:
        self.settings = settings
        self.ks = ks
        self.opts = opts
        self.node = opts.node
        self.view = ClusterView()
        self.spec: ClusterSpec | None = None
        self.config_revision = 0
        self.wake = asyncio.Event()
        self.stop_mode: str | None = None  # "handover" or "restart"
        self.stopped = asyncio.Event()
        self.last_pass = 0.0
        self.runners: dict[str, GroupRunner] = {}
        self._member_value: bytes = b""
        self._next_wake: float | None = None
        self._pending: list[Coroutine[Any, Any, object]] = []  # resource updates to run
        self.failsafe: Failsafe | None = None
        # failsafe: the promises this node made (they outlive this agent), and
        # every director a leader asks for one.
        self.promises = PromiseRecord(
            opts.run_dir / f"failsafe-{ks.cluster}-{opts.node}.json", opts.node
        )
        self.directors = Directors(opts.node)
        self.checker: CheckerProcess | None = None
        self._lease_timings: tuple[float, float, float] | None = None  # the lease's own
        self.ipvs: IPVSDuties | None = None
        self._kernel_checked = 0.0
        self._handed_over: dict[str, float] = {}  # group -> when we last handed it over
        self._gated: dict[str, str] = {}  # group -> why it waits (said once)
        self.instance = new_instance()  # tells this process from a twin anywhere
        self.lock = RunLock(opts.run_dir, ks.cluster, opts.node)
        self.handoff = Handoff(opts.run_dir, ks.cluster, opts.node)
        self.superseded: str | None = None  # why this agent stopped for a twin
        # etcd was seen to go back in time and has not been read again since: do
        # nothing but drop until then.
        self._went_back = False
        self._read_generation = 0  # the store's generation when we last read everything
        self._history_saved = 0.0
        self._put_member_soon = False
        self._refresh_due = asyncio.Event()  # a keepalive went through: refresh the record
        self._member_lock = asyncio.Lock()  # one write of members/<node> at a time
        self.history_file = opts.run_dir / f"etcd-{ks.cluster}.json"
        # Until the HA loop has run once, members/<node> says "starting", not eligible:
        # another node would hand a group over to us before we could campaign for it
        # (or while our loop is busy with its first look at every group).
        self._ready = False

    # -- start-up

    def _spec(self) -> ClusterSpec:
        assert self.spec is not None
        return self.spec

    def _on_config(self, loaded: Loaded, revision: int) -> None:
        first = self.spec is None
        self.spec = loaded.spec
        self.config_revision = revision
        if first:
            log.info("loaded config revision %d", revision)
        else:
            log.info("config revision %d is in force; re-evaluating every group", revision)
            e = loaded.spec.election
            if self._lease_timings not in (
                None,
                (e.lease_ttl, e.keepalive_interval, e.fence_margin),
            ):
                log.warning(
                    "the lease timings of the new config take effect when this agent "
                    "next starts (its lease was granted with the old ones)"
                )
            self._rebuild_runners()
            self._kernel_checked = 0.0
        if self.ipvs is not None:
            self.ipvs.config_changed()
        self.wake.set()

    async def _wait_for_etcd(self, store: Store) -> None:
        """Open the store, waiting for etcd: an agent booted before etcd (or
        during an outage) holds nothing meanwhile, so it may as well wait."""
        said: float | None = None
        while True:
            try:
                await store.open()
                if said is not None:
                    log.info("etcd answers: starting")
                return
            except EtcdUnavailable as e:
                if said is None or time.monotonic() - said >= 30.0:  # then every 30 s
                    log.warning("etcd unreachable, waiting for it (nothing is held): %s", e)
                    said = time.monotonic()
            await asyncio.sleep(1.0)

    async def _wait_for_config(self, store: Store, sync: ViewSync) -> int:
        said = False
        unreachable = False
        while True:
            self._read_generation = store.generation
            try:
                kvs, revision = await store.get_prefix(self.ks.root)
            except EtcdUnavailable as e:
                if not unreachable:  # once per outage, not every second
                    log.warning("etcd unreachable while reading the config, retrying: %s", e)
                unreachable = True
                await asyncio.sleep(1.0)
                continue
            unreachable = False
            sync.load(kvs, revision, trusted=not self._went_back)
            if self.spec is not None:
                return revision
            if not said:
                log.info("waiting for a config at %s (etcdha config apply FILE)", self.ks.config())
                said = True
            await asyncio.sleep(1.0)

    def _me(self) -> Member:
        v = self.eligibility.current()
        return Member(self.node, self.keeper.lease_id, v.eligible, v.why, v.ping_ok)

    def _member_data(self) -> dict[str, Any]:
        v = self.eligibility.current() if self._ready else None
        return {
            "node": self.node,
            "host": socket.gethostname(),
            "boot_id": boot_id(),
            "pid": os.getpid(),
            "instance": self.instance,
            "version": __version__,
            "lease": self.keeper.lease_id,
            "eligible": v.eligible if v else False,
            "why": v.why if v else "starting",
            "ping_ok": v.ping_ok if v else False,
            "listen": f"{self.opts.listen_host}:{self.opts.listen_port}",
            "peer": self.failsafe.address if self.failsafe else None,  # asked for failsafe
            "holding": {name: r.held() for name, r in sorted(self.runners.items()) if r.active},
            "config_revision": self.config_revision,
            "started": self.started_at,
            "kernel_settings": self.ipvs.member_data() if self.ipvs else [],
        }

    async def _register(self, store: Store) -> None:
        await register(
            store,
            self.ks,
            self.node,
            self.keeper,
            lambda: json.dumps(self._member_data()).encode(),
            self.handoff,
            self.instance,
        )

    # -- the loop

    async def run(self) -> None:
        self.started_at = now_rfc3339()
        self.opts.run_dir.mkdir(parents=True, exist_ok=True)
        self.lock.take()
        try:
            await self._run()
        finally:
            self.lock.release()
        if self.superseded is not None:
            raise Superseded(self.superseded)

    async def _run(self) -> None:
        store = Store(self.settings)
        store.on_went_back(self._on_went_back)
        # The marks of the etcd we talked to last time: a store that went back
        # while this agent was not running is noticed at once.
        state = self._load_history()
        if state:
            store.seed_history(state)
        await self._wait_for_etcd(store)
        async with store:
            self.store = store
            sync = ViewSync(
                self.ks, self.view, time.monotonic, self._on_config, self.directors.note_member
            )
            revision = await self._wait_for_config(store, sync)
            spec = self._spec()
            sock, guard_log = guard_paths(self.opts.run_dir, self.ks.cluster, self.node)
            self.fence = FenceClient(
                sock, agent=self.node, log_file=guard_log, starting=self.opts.fence_guard
            )
            await self.fence.connect()
            self._lease_timings = (
                spec.election.lease_ttl,
                spec.election.keepalive_interval,
                spec.election.fence_margin,
            )
            self.keeper = LeaseKeeper(
                store,
                spec.election.lease_ttl,
                spec.election.keepalive_interval,
                spec.election.fence_margin,
                self._renewed,
            )
            self.record = FenceRecord(
                store,
                self.ks,
                self.node,
                lambda: self.keeper.lease_id,
                lambda: self.keeper.ttl,
                self.keeper.confirmed,
            )
            own = self.view.fences.get(self.node)
            if own is not None:
                # An earlier run of this agent may have left these groups' addresses
                # in place (a planned restart): they stay listed until they are gone.
                self.record.groups = dict(own.groups)
                self.record.written = dict(own.groups)
            self.notifier = Notifier(lambda: self._spec().notify)
            self.eligibility = Eligibility(self.node, self._spec, self.view)
            # etcd answered a moment ago (the config read): from here on an outage
            # is waited out, never a reason to exit.
            while True:
                try:
                    await self._register(store)
                    # The agent's checker goes by the node's name: a checker-only
                    # worker already using it would make two checkers of one name.
                    await claim_name(store, self.ks, self.node, self.keeper.lease_id, "agent")
                    break
                except CheckerNameInUse:
                    with contextlib.suppress(EtcdError):
                        await self.keeper.revoke()  # members/<node> goes with it
                    raise
                except AlreadyRunning:
                    raise
                except EtcdError as e:
                    log.warning("cannot register %s yet (%s); trying again", self.node, e)
                    await asyncio.sleep(1.0)
            # A promise an earlier agent of this node made binds this one too. Read
            # once registered (no other live agent of this node on this host can
            # promise any more) and before the first campaign.
            self.promises.honour_earlier(spec.election.lease_ttl)
            # Other directors may ask for failsafe confirmations from now on, even if
            # etcd goes away before the rest of the start-up is done.
            await self._start_failsafe()
            self.ipvs = IPVSDuties(
                self.node, store, self.ks, self._term_of, lambda: self.keeper.lease_id
            )
            self.ipvs.install()
            self._rebuild_runners()
            await self._apply_pending()
            # Every agent checks the real servers too, under its own lease, so a
            # new leader starts with warm verdicts; in a process of its own, so the
            # checks never hold up the lease's keepalives (it follows the config
            # key itself).
            self.checker = CheckerProcess(
                self.settings,
                self.ks,
                self.node,
                lambda: self.keeper.lease_id,
                self.opts.run_dir,
                checks_dir=self.opts.checks_dir,
            )
            freeze_gc()
            kvs, revision = await self._read_all()
            self._load(sync, kvs, revision)
            await self._clear_leftovers()
            await self.eligibility.refresh()
            http = HTTPServer(
                self.opts.listen_host,
                self.opts.listen_port,
                self._healthz,
                self._readyz,
                self.checker.metrics,
            )
            try:
                await http.start()
            except OSError as e:
                raise StartupError(
                    f"cannot listen on {self.opts.listen_host}:{self.opts.listen_port} "
                    f"({e.strerror}); choose another --listen"
                ) from None
            self._install_signals()
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._lease_loop(), name="lease")
                    tg.create_task(self._watch(sync, revision), name="watch")
                    tg.create_task(self._eligibility_loop(), name="eligibility")
                    tg.create_task(self._fence_timer(), name="fence-timer")
                    tg.create_task(self._record_loop(), name="fence-record")
                    tg.create_task(self._audit_loop(), name="audit")
                    tg.create_task(self.notifier.run(), name="notify")
                    tg.create_task(self.checker.run(), name="checker")
                    tg.create_task(self._reconcile_loop(), name="reconcile")
                    tg.create_task(
                        self.ipvs.run_inputs(lambda: (self.spec, self.config_revision)),
                        name="ipvs-inputs",
                    )
                    tg.create_task(self._stop_when_asked(), name="stop")
            except* _Stop:
                pass
            finally:
                await http.close()
                if self.failsafe is not None:
                    await self.failsafe.close()
            await self._shutdown()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, mode in (
            (signal.SIGTERM, "handover"),
            (signal.SIGINT, "handover"),
            (signal.SIGUSR1, "restart"),
        ):
            loop.add_signal_handler(sig, self.request_stop, mode)

    def request_stop(self, mode: str) -> None:
        if self.stop_mode is None:
            log.info(
                "stopping: %s",
                "handing every group over"
                if mode == "handover"
                else "planned restart, keeping lease and addresses until the next agent",
            )
            self.stop_mode = mode
            self.stopped.set()

    async def _stop_when_asked(self) -> None:
        await self.stopped.wait()
        # A stop that takes long says what it waits for (each task's stack).
        asyncio.get_running_loop().call_later(STOP_REPORT_AFTER, _report_slow_stop)
        raise _Stop

    async def _shutdown(self) -> None:
        self._save_history(force=True)
        if self.stop_mode == "superseded":
            for runner in self.runners.values():
                if runner.term is not None or runner.phase is not Phase.idle:
                    await runner.fenced("another agent runs as this node now")
            with contextlib.suppress(EtcdError):
                await self.keeper.revoke()
            self.fence.close()
            return
        if self.stop_mode == "restart":
            # The IPVS table and its sync daemons stay, like the addresses.
            self.fence.close()
            return
        for runner in self.runners.values():
            if runner.term is not None or runner.phase is not Phase.idle:
                await runner.handover("the agent is shutting down")
        if self.ipvs is not None:
            # Standby copies stay in the kernel (warm for the next start); the
            # backup sync daemon goes with the agent.
            await self.ipvs.close(stop_daemons=True)
        with contextlib.suppress(EtcdError):
            await self.keeper.revoke()
        self.fence.close()

    def _rebuild_runners(self) -> None:
        spec = self._spec()
        node = next((n for n in spec.nodes if n.name == self.node), None)
        wanted = {g.name: g for g in spec.groups}
        for name in list(self.runners):
            if name not in wanted:
                runner = self.runners.pop(name)
                self._pending.append(runner.handover(f"group {name} is no longer in the config"))
        if node is None:
            return
        for g in spec.groups:
            runner = self.runners.get(g.name) or GroupRunner(
                g.name,
                self.node,
                self.store,
                self.ks,
                self.fence,
                self.notifier,
                self.record,
                lambda: self.keeper.deadline,
                self.wake.set,
            )
            self.runners[g.name] = runner
            keys: list[object] = [(r, node, spec.announce) for r in g.resources]

            def make(key: object, group: str = g.name) -> resources.Resource:
                assert isinstance(key, tuple)
                return resources.build_one(group, *key)

            self._pending.append(runner.update(keys, make))
        self.wake.set()

    async def _apply_pending(self) -> None:
        while self._pending:
            await self._pending.pop(0)

    async def _clear_leftovers(self) -> None:
        """Addresses of groups we do not lead must not linger from an earlier run.
        Which ones: the group's addresses in the config, and those the fence guard
        still has armed for it (an earlier run's, whatever the config says now);
        a group the earlier run's fence record lists is released once they are gone."""
        try:
            armed = (await self.fence.status()).get("groups") or {}
        except FenceError as e:
            log.warning("cannot ask the fence guard what it guards: %s", e)
            armed = {}
        names = set(self.runners) | set(self.record.groups) | set(armed)
        for name in sorted(names):
            leader = self.view.leaders.get(name)
            if leader and leader.node == self.node and leader.lease == self.keeper.lease_id:
                continue
            candidates: list[resources.HeldAddress] = []
            for item in (armed.get(name) or {}).get("addresses") or []:
                with contextlib.suppress(ValueError, TypeError):
                    ifname, ip, prefixlen = item
                    candidates.append(resources.HeldAddress(str(ifname), str(ip), int(prefixlen)))
            runner = self.runners.get(name)
            for r in runner.resources if runner else []:
                if isinstance(r, resources.AddressRuntime):
                    with contextlib.suppress(resources.ResourceError):
                        candidates.append(await r.resolve())
            gone = True
            for held in candidates:
                if not await _present(held):
                    continue
                log.warning(
                    "removing %s from %s: left from an earlier run, and %s does not lead %s",
                    held.ip,
                    held.ifname,
                    self.node,
                    name,
                )
                try:
                    await resources.remove_held(held)
                except resources.ResourceError as e:
                    log.error("group %s: %s", name, e)
                    gone = False
            if gone and name in self.record.groups:
                self.record.release(name)
            if gone and name in armed:
                with contextlib.suppress(FenceError):
                    await self.fence.disarm(name)
        await self._write_record()

    async def _write_record(self) -> None:
        """Keep fence/<node> true: refreshed while it lists groups (each write
        guarded by their leader keys), written once more after a group left it.
        A group whose key turns out gone is dropped at once."""
        if not self.record.groups and self.record.settled:
            return
        for _ in range(3):
            try:
                lost = await self.record.write()
            except EtcdError as e:
                log.warning("cannot write %s: %s", self.record.key, e)
                return
            if not lost:
                return
            for group in lost:
                self.record.lose_key(group)
                runner = self.runners.get(group)
                if runner is not None and (runner.term is not None or runner.may_hold):
                    await runner.deposed(
                        "its leader key is gone (deleted, or its lease revoked, behind our back)"
                    )
            self.wake.set()

    async def _renewed(self, deadline: float) -> None:
        """A keepalive was acknowledged: the guard gets the new deadline now, and
        the fence record is refreshed beside it (a slow etcd write must not hold
        the next keepalive back)."""
        await self._rearm()
        self._refresh_due.set()
        self._save_history()

    async def _rearm(self) -> None:
        for runner in self.runners.values():
            await runner.renew()

    async def _record_loop(self) -> None:
        """Refresh fence/<node> after each keepalive; the deadline it confirms goes
        to the guard at once."""
        while True:
            await self._refresh_due.wait()
            self._refresh_due.clear()
            before = self.keeper.deadline
            await self._write_record()
            if self.keeper.deadline != before:
                await self._rearm()

    async def _lease_loop(self) -> None:
        while True:
            await self.keeper.run()
            # The lease is gone in etcd: whatever we held is someone else's now.
            for runner in self.runners.values():
                if runner.term is not None or runner.phase is not Phase.idle:
                    await runner.fenced("the lease is gone in etcd")
            while True:
                try:
                    await self.keeper.grant()
                    await self._claim_member()
                    break
                except AlreadyRunning as e:
                    self._supersede(str(e))
                    return
                except EtcdError as e:
                    log.warning("cannot take a new lease yet: %s", e)
                    await asyncio.sleep(1.0)
            self.wake.set()

    async def _claim_member(self) -> None:
        async with self._member_lock:
            await self._claim_member_locked()

    async def _claim_member_locked(self) -> None:
        await membership.claim(
            self.store,
            self.ks,
            self.node,
            self.keeper,
            lambda: json.dumps(self._member_data()).encode(),
            self.handoff,
            self.instance,
        )
        self._member_value = b""

    def _supersede(self, why: str) -> None:
        """Another agent took this node's name while we had lost our lease: it is the
        node now. We hold nothing (the lease went, and our addresses with it)."""
        log.error("%s; this agent stops and leaves the node to it", why)
        self.superseded = why
        self.stop_mode = "superseded"
        self.stopped.set()

    async def _fence_timer(self) -> None:
        """Drop addresses at the deadline if no keepalive (or failsafe) moved it."""
        asked = 0.0
        while True:
            remaining = self.keeper.remaining()
            if remaining > 0 and clock.now() - asked > 0.5 and self._failsafe_due():
                asked = clock.now()
                await self._failsafe_extend(remaining)
                remaining = self.keeper.remaining()
            if remaining > 0:
                await asyncio.sleep(min(remaining, 0.1))
                continue
            holding = [r for r in self.runners.values() if r.may_hold]
            for runner in holding:
                log.error(
                    "group %s: no keepalive acknowledged in time; dropping its addresses "
                    "before the lease can expire in etcd",
                    runner.name,
                )
                await runner.fenced("lease renewal overdue (etcd unreachable?)")
            await asyncio.sleep(0.1)

    def _failsafe_due(self) -> bool:
        spec = self._spec()
        return (
            self.failsafe is not None
            and spec.election.etcd_unreachable is EtcdUnreachable.failsafe
            and self.keeper.unreachable()
            and any(r.may_hold for r in self.runners.values())
        )

    async def _failsafe_extend(self, remaining: float) -> None:
        assert self.failsafe is not None
        spec = self._spec()
        peers, unaskable = self.directors.to_ask(spec.nodes)
        until = await self.failsafe.confirm(
            peers, max(PROBE_LIMIT + 0.2, min(1.0, remaining - 0.2)), unaskable
        )
        if until is None:
            return
        deadline = until - spec.election.fence_margin
        if deadline > self.keeper.deadline:
            self.keeper.extend(deadline)
            log.warning(
                "failsafe: every other director confirms it cannot reach etcd either; "
                "keeping the addresses for %.1fs more",
                self.keeper.remaining(),
            )
            await self._rearm()

    async def _start_failsafe(self) -> None:
        spec = self._spec()
        me = next((n for n in spec.nodes if n.name == self.node), None)
        if me is None or me.peer is None:
            return
        if self.opts.peer_tls is None:
            log.error(
                "failsafe needs TLS material to authenticate directors (--peer-cacert, "
                "--peer-cert, --peer-key, or the etcd ones); this node will not confirm "
                "nor ask, so it behaves as under etcd_unreachable: drop"
            )
            return
        self.failsafe = Failsafe(
            self.node,
            self.opts.peer_tls,
            self.keeper.probe,
            lambda: self._spec().election.lease_ttl,
            self.promises,
        )
        ip, port = split_host_port(me.peer)
        try:
            await self.failsafe.serve(str(ip), port)
        except OSError as e:
            log.error("failsafe: cannot listen on %s: %s", me.peer, e.strerror)
            self.failsafe = None
            return
        await self._put_member()  # publishes the peer address leaders ask

    async def _watch(self, sync: ViewSync, revision: int) -> None:
        while True:
            try:
                async for batch in self.store.watch_prefix(
                    self.ks.root, revision + 1, generation=self._read_generation
                ):
                    viewed = False  # verdicts alone change no decision of the HA loop
                    for event in batch.events:
                        viewed |= sync.apply(event)
                        if self.ipvs is not None:
                            self.ipvs.apply(event, batch.revision)
                    revision = batch.revision
                    if viewed:
                        self.eligibility.poke()
                        self.wake.set()
                continue
            except StoreWentBack:
                await self._drop_everything()
            except WatchCompacted as e:
                log.warning(
                    "watch fell behind compaction (revision %d); re-reading everything",
                    e.compact_revision,
                )
            except EtcdError as e:
                # The stream broke in a way the store does not resume by itself
                # (etcd shutting down, say): re-read, then watch from there.
                log.warning("watch on %s broke (%s); re-reading everything", self.ks.root, e)
                await asyncio.sleep(0.5)
            kvs, revision = await self._read_all()
            self._load(sync, kvs, revision)
            self.eligibility.poke()
            self.wake.set()

    def _load(self, sync: ViewSync, kvs: list[Any], revision: int) -> None:
        """A full read into the view and the IPVS inputs. Read back from a store
        that went back in time, the fence records prove nothing until written
        again, and this node's member value and fence record are written anew."""
        trusted = not self._went_back
        sync.load(kvs, revision, trusted=trusted)
        if self.ipvs is not None:
            self.ipvs.load(kvs, revision)
        if not trusted:
            self.view.distrusted_since = clock.now()
            self._went_back = False
            self._member_value = b""
            self.record.written = None
            self._put_member_soon = True
            log.warning(
                "read everything again after etcd went back in time (revision %d); no "
                "director places addresses before the others wrote their fence records "
                "again or %.1fs have passed",
                revision,
                max(self.keeper.ttl, self._spec().election.lease_ttl),
            )
        self.wake.set()

    def _on_went_back(self, why: str) -> None:
        """The store saw etcd go back in time (restored from an older snapshot,
        rebuilt empty): nothing we remember from it holds."""
        log.error(
            "etcd went back in time (%s): this node drops every address it holds, reads "
            "everything again and forgets the terms it remembered",
            why,
        )
        self._went_back = True
        self.view.distrusted_since = clock.now()
        self.wake.set()

    async def _drop_everything(self) -> None:
        for runner in self.runners.values():
            runner.released_term = 0
            if runner.term is not None or runner.phase is not Phase.idle:
                await runner.fenced("etcd went back in time")
        self._handed_over.clear()
        self._gated.clear()
        # The checker process notices through its own etcd connection and
        # writes its verdicts again.

    def _load_history(self) -> dict[str, int]:
        try:
            data = json.loads(self.history_file.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and type(v) is int}

    def _save_history(self, force: bool = False) -> None:
        """Keep the store's marks for the next agent (a few bytes on /run, at most
        every few seconds)."""
        if not force and time.monotonic() - self._history_saved < HISTORY_EVERY:
            return
        self._history_saved = time.monotonic()
        tmp = self.history_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self.store.history_state()))
            tmp.replace(self.history_file)
        except OSError as e:
            log.warning("cannot keep etcd's marks in %s: %s", self.history_file, e)

    async def _read_all(self) -> tuple[list[Any], int]:
        while True:
            try:
                self._read_generation = self.store.generation
                return await self.store.get_prefix(self.ks.root)
            except EtcdError as e:
                log.warning("cannot re-read %s: %s", self.ks.root, e)
                await asyncio.sleep(0.5)

    async def _eligibility_loop(self) -> None:
        async def changed() -> None:
            while True:
                await self.eligibility.changed.wait()
                self.eligibility.changed.clear()
                await self._put_member()
                self.wake.set()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(changed())
            tg.create_task(self.eligibility.run())

    async def _put_member(self, force: bool = False) -> bool:
        """False if etcd did not take it."""
        value = json.dumps(self._member_data()).encode()
        if value == self._member_value and not force:
            return True
        metrics.eligible.set(1 if self.eligibility.current().eligible else 0)
        try:
            async with self._member_lock:
                lease = self.keeper.lease_id
                if await membership.update(self.store, self.ks, self.node, lease, value):
                    self._member_value = value
                elif self.keeper.alive():
                    # Not bound to our live lease: deleted by hand, or another agent's.
                    await self._claim_member_locked()
        except AlreadyRunning as e:
            self._supersede(str(e))
        except EtcdError as e:
            log.warning("could not update %s: %s", self.ks.member(self.node), e)
            return False
        return True

    async def _audit_loop(self) -> None:
        while True:
            await asyncio.sleep(self._spec().election.audit_interval)
            for runner in list(self.runners.values()):
                if runner.active and self.keeper.alive():
                    try:
                        await runner.audit()
                    except resources.ResourceError as e:
                        log.error("group %s: %s", runner.name, e)
            if self.ipvs is not None:
                await self.ipvs.audit()
                await self._check_kernel()

    async def _check_kernel(self) -> None:
        """The kernel settings the IPVS services need: at start, after a config
        change, and every KERNEL_CHECK seconds (someone may change them)."""
        if self.ipvs is None or time.monotonic() - self._kernel_checked < KERNEL_CHECK:
            return
        self._kernel_checked = time.monotonic()
        await self.ipvs.check_kernel(self._spec())
        await self._put_member()

    async def _reconcile_loop(self) -> None:
        while True:
            timeout = self.opts.tick
            if self._next_wake is not None:
                timeout = max(0.0, min(timeout, self._next_wake - time.monotonic()))
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for can swallow a
            # cancellation that arrives as the wait ends, and a stopping agent's
            # TaskGroup then waits for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
            self.wake.clear()
            self._next_wake = None
            await self._apply_pending()
            try:
                await self._reconcile()
            except EtcdError as e:
                log.warning("etcd did not answer during the HA loop: %s; trying again", e)
                self._schedule(0.2)
            self.last_pass = time.monotonic()
            metrics.ha_loop_last_run.set(time.time())
            if not self._ready:
                await self._publish_ready()

    async def _publish_ready(self) -> None:
        """After the HA loop's first pass: members/<node> stops saying "starting" and
        says whether we may lead (tried again after the next pass if etcd did not
        take it)."""
        self._ready = True
        if not await self._put_member():
            self._ready = False
            return
        log.info("%s is ready: its member key now says whether it may lead", self.node)

    def _schedule(self, delay: float) -> None:
        at = time.monotonic() + delay
        if self._next_wake is None or at < self._next_wake:
            self._next_wake = at

    async def _reconcile(self) -> None:
        if self._went_back:
            return  # the watch drops everything and reads again first
        if self._put_member_soon:
            self._put_member_soon = False
            await self._put_member(force=True)
            await self._write_record()
        spec = self._spec()
        now = time.monotonic()
        for group in spec.groups:
            runner = self.runners.get(group.name)
            if runner is None:
                continue
            await self._reconcile_group(spec, group, runner, now)
        # What we hold may have changed here or in a start task: members/<node>
        # says so (written only when its value changed).
        await self._put_member()
        if self.ipvs is not None:
            await self.ipvs.follow_roles(spec, {n: r.active for n, r in self.runners.items()})
            await self._check_kernel()

    async def _reconcile_group(
        self, spec: ClusterSpec, group: Group, runner: GroupRunner, now: float
    ) -> None:
        name = group.name
        leader = self.view.leaders.get(name)
        mine = (
            leader is not None
            and leader.node == self.node
            and (leader.lease == self.keeper.lease_id)
        )
        if runner.failure is not None:
            if await runner.handover(f"its resources failed to start: {runner.failure}"):
                self._handed_over[name] = now
            else:
                self._schedule(1.0)
            return
        if mine and leader is not None and leader.term <= runner.released_term:
            await runner.finish_release(leader.term)
            return
        if runner.term is not None and not (
            mine and leader and leader.term == runner.term.revision
        ):
            # Our term ended without us (the key deleted, its lease revoked, etcd
            # restored): the addresses go before anything else.
            why = (
                "its leader key is gone"
                if leader is None
                else f"its leader key is now {leader.node}'s (term {leader.term})"
            )
            await runner.deposed(f"{why}, without {self.node} handing it over")
        if leader is not None and leader.node == self.node and not mine:
            # A leader key from an earlier lease of ours; it goes with that lease.
            if runner.term is not None or runner.phase is not Phase.idle:
                await runner.deposed("our earlier lease still holds the key")
            return
        d = decide(spec, group, self.view, self._me(), now, self._handed_over.get(name))
        if d.retry_in is not None:
            self._schedule(d.retry_in)
        if d.action is Action.hold and leader is not None:
            if runner.adopt(leader.term) and self.keeper.alive():
                await self._start(runner)
        elif d.action is Action.handover:
            member = json.dumps(self._member_data()).encode()
            done = await runner.handover(
                d.reason,
                [Op.put(self.ks.member(self.node), member, lease=self.keeper.lease_id)],
            )
            if done:
                self._handed_over[name] = now
                # Our view still shows us leading until the watch catches up.
                self.view.set_leader(name, None, now)
            else:
                self._schedule(1.0)
        elif d.action is Action.campaign and (bound := self.promises.holds_back(name)):
            self._schedule(max(0.05, bound))
        elif d.action is Action.campaign and self.keeper.alive():
            won = await runner.campaign(self.keeper.lease_id, self.keeper.ttl, d.reason)
            if won and runner.term is not None:
                term = runner.term.revision
                self.view.set_leader(name, Leader(self.node, self.keeper.lease_id, term), now, term)
                await self._start(runner)
            else:
                self._schedule(0.05)
        elif d.action in (Action.follow, Action.wait) and (
            runner.term is not None or runner.phase is not Phase.idle
        ):
            await runner.deposed(d.reason)

    async def _start(self, runner: GroupRunner) -> None:
        """Place the group's addresses once no other director may hold them."""
        # An address of an earlier go could not be removed: try again first.
        if runner.phase is Phase.stopping and not await runner.deactivate(
            "released", "starting again"
        ):
            self._schedule(1.0)
            return
        if runner.phase not in (Phase.idle, Phase.gated) or runner.term is None:
            return
        term = runner.term.revision
        own = self.view.fences.get(self.node)
        if own is not None and own.trusted and own.groups.get(runner.name) == term:
            # This term's addresses were placed by us (an earlier run, before a
            # planned restart): the wait for the others was done then.
            runner.begin()
            return
        gate = may_place(
            self.view,
            runner.name,
            self.node,
            clock.now(),
            self._spec().node_names,
            max(self.keeper.ttl, self._spec().election.lease_ttl),
        )
        if not gate.clear:
            runner.phase = Phase.gated
            if self._gated.get(runner.name) != gate.reason:
                self._gated[runner.name] = gate.reason
                log.info(
                    "group %s: holding its leader key, not its addresses yet: %s "
                    "(at most %.1fs more)",
                    runner.name,
                    gate.reason,
                    gate.retry_in or 0.0,
                )
            if gate.retry_in is not None:
                self._schedule(min(gate.retry_in + 0.01, 1.0))
            return
        if self._gated.pop(runner.name, None) is not None:
            log.info("group %s: %s; placing its addresses", runner.name, gate.reason)
        runner.begin()

    def _term_of(self, group: str) -> int | None:
        runner = self.runners.get(group)
        if runner is None or runner.term is None:
            return None
        return runner.term.revision

    # -- health endpoints

    def _healthz(self) -> tuple[bool, str]:
        ttl = self._spec().election.lease_ttl if self.spec else 10.0
        age = time.monotonic() - self.last_pass
        if age <= ttl:
            return True, f"ok: HA loop ran {age:.1f}s ago"
        return False, f"HA loop last ran {age:.1f}s ago (more than the {ttl:g}s TTL)"

    def _readyz(self) -> tuple[bool, str]:
        if not self.keeper.alive():
            return False, "no live lease"
        return True, "ok"


STOP_REPORT_AFTER = 5.0  # seconds


def _report_slow_stop() -> None:
    tasks = [t for t in asyncio.all_tasks() if not t.done()]
    lines = []
    for task in tasks:
        frames = task.get_stack(limit=8)
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        lines.append(f"{task.get_name()}: {where or '(not started)'}")
    log.warning(
        "stopping has taken over %gs; still running: %s", STOP_REPORT_AFTER, "; ".join(lines)
    )


class _Stop(Exception):
    pass


async def _present(held: resources.HeldAddress) -> bool:
    return await network.has_address(held.ifname, held.ip)
