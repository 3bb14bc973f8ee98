"""`etcdha lab run`: the seed's setup in namespaces, the scenario, a live timeline.

Builds the topology with etcd (:class:`~etcdha.lab.directors.DirectorLab`),
imports the seed's files with `etcdha config import` and applies them, starts
the web servers, the recorders and the client prober, performs each step of
:func:`etcdha.lab.scenario.steps` and waits until the client sees what it must,
then prints a summary. Everything it started is stopped and removed on every
exit path (the caller turns SIGTERM and SIGHUP into cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from etcdha.lab.capture import SynCapture
from etcdha.lab.directors import DirectorLab, etcdha_argv
from etcdha.lab.recorder import (
    HoldSampler,
    LeaderWatch,
    MemberWatch,
    ProberFeed,
    Request,
    attribute,
)
from etcdha.lab.scenario import (
    Step,
    StepResult,
    matches,
    measure,
    non_leader_answers,
    steps,
)
from etcdha.lab.seedfiles import SeedChange, write_lab_seed
from etcdha.lab.topology import format_address_map
from etcdha.lab.webservers import WebServer, fallback_server, real_server

SEED_DEADTIME = 30
NODEST = "net.ipv4.vs.expire_nodest_conn"
SETTLED_RUN = 30  # consecutive requests with the expected outcome: the step has settled


@dataclass
class LabOptions:
    deadtime: int = 3
    dwell: float = 1.5  # how long each settled step is watched
    settle_timeout: float = 30.0  # from the action (or the restarted agent's start) on
    start_timeout: float = 120.0  # for an agent's start, up to its member key saying ready
    interval: float = 0.01
    fail_fast: bool = False  # stop at the first step that is not as expected


@dataclass
class LabRecord:
    """Everything a run saw, for the summary, the report and the chart."""

    options: LabOptions
    t0: float = 0.0
    kernel: str = ""
    in_uml: bool = False
    lease_ttl: float = 0.0
    seed_changes: list[SeedChange] = field(default_factory=list)
    address_map: str = ""
    results: list[StepResult] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    holdings: list[tuple[float, tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)
    leaders: list[tuple[float, str | None]] = field(default_factory=list)
    non_leader: list[tuple[Request, str | None]] = field(default_factory=list)
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            len(self.results) == len(steps())
            and all(r.ok for r in self.results)
            and not self.non_leader
            and all(len(vip) <= 1 for _, vip, _ in self.holdings)
        )


Say = Callable[[str], None]


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class LabRun:
    def __init__(self, options: LabOptions, say: Say = _say) -> None:
        self.options = options
        self.say = say
        self.record = LabRecord(options)
        self.lab: DirectorLab | None = None
        self.servers: dict[str, WebServer] = {}
        self.sampler: HoldSampler | None = None
        self.watch: LeaderWatch | None = None
        self.members: MemberWatch | None = None
        self.feed: ProberFeed | None = None
        self.killed: str | None = None
        self.macs: dict[str, str] = {}
        self.captures: list[SynCapture] = []

    # -- output

    def rel(self, t: float) -> str:
        return f"[{t - self.record.t0:7.3f}]"

    def event(self, t: float, text: str) -> None:
        self.say(f"{self.rel(t)} {text}")

    # -- setup

    async def setup(self, client: bool = True) -> None:
        opts = self.options
        rec = self.record
        rec.kernel = platform.release()
        rec.in_uml = bool(os.environ.get("ETCDHA_IN_UML"))
        where = "user-mode-linux" if rec.in_uml else "this machine's kernel"
        self.say(
            f"etcdha lab: the Heartbeat + ldirectord reference setup on {where} "
            f"(Linux {rec.kernel}, IPVS from the kernel)."
        )
        self.say("Building the seed topology in network namespaces and starting etcd...")
        lab = self.lab = await asyncio.to_thread(DirectorLab)
        rec.address_map = format_address_map(lab.seed.mapping)
        self.say(lab.seed.describe())
        self.say("")

        seed_dir = lab.work / "seed"
        paths, rec.seed_changes = write_lab_seed(seed_dir, opts.deadtime)
        self.say("The seed's ha.cf, haresources and ldirectord.cf, as imported here:")
        for c in rec.seed_changes:
            self.say(f"  {c.file}:{c.line}: {c.seed}\n  {' ' * len(c.file)}  -> {c.lab}")
        self.say(
            f"NOTE: Heartbeat's deadtime is shortened from {SEED_DEADTIME} s to "
            f"{opts.deadtime} s for this demo (--deadtime), so the lease TTL is "
            f"{opts.deadtime} s: a killed leader is replaced after about that long."
        )
        spec = lab.work / "cluster.yaml"
        import_args = [
            "config", "import",
            "--ha-cf", str(paths["ha.cf"]),
            "--haresources", str(paths["haresources"]),
            "--ldirectord", str(paths["ldirectord.cf"]),
            "-o", str(spec),
        ]  # fmt: skip
        self.say(
            "$ etcdha config import --ha-cf ha.cf --haresources haresources "
            "--ldirectord ldirectord.cf -o cluster.yaml"
        )
        done = await asyncio.to_thread(
            subprocess.run, etcdha_argv(*import_args), capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"etcdha config import failed:\n{done.stderr}")
        self.say(f"  {done.stderr.strip().splitlines()[-1]}")
        self.say(f"$ etcdha config apply cluster.yaml --endpoints {lab.endpoints}")
        applied = await asyncio.to_thread(lab.etcdha, "config", "apply", str(spec))
        said = [line for line in applied.stderr.splitlines() if line.startswith("applied ")]
        self.say("  " + (said[-1] if said else "applied"))
        rec.lease_ttl = float(opts.deadtime)

        seed = lab.seed
        self.servers = {
            "rs1": real_server("rs1", seed.ns("rs1"), seed.rs1),
            "rs2": real_server("rs2", seed.ns("rs2"), seed.rs2),
            **{n: fallback_server(n, seed.ns(n)) for n in seed.nodes},
        }
        for server in self.servers.values():
            await server.start()
        self.say(
            'Web servers up: rs1 and rs2 serve / (naming themselves) and /test.html ("ok"); '
            'each director serves the "Sorry" fallback page on port 80.'
        )

        self.sampler = HoldSampler(seed.topology, seed.nodes, seed.vip, seed.dip)
        await self.sampler.start()
        self.watch = LeaderWatch(
            seed.ns("etcd"), lab.endpoints, f"/etcdha/{lab.cluster}/leader/", lab.tls_args()
        )
        await self.watch.start()
        self.members = MemberWatch(
            seed.ns("etcd"), lab.endpoints, f"/etcdha/{lab.cluster}/members/", lab.tls_args()
        )
        await self.members.start()
        # IPVS keeps a connection entry per client port; a half-open one (a SYN of
        # the handover window whose answer went astray) outlives the handover, and
        # a new SYN reusing its port goes to that entry's real server even at
        # weight 0. This makes IPVS schedule such a SYN afresh instead.
        for node in seed.nodes:
            await asyncio.to_thread(seed.topology.sysctl, node, NODEST, 1)
        self.say(
            f"Both directors: {NODEST}=1 (a reused client port is scheduled afresh "
            "rather than sent to the real server of an old entry at weight 0)."
        )
        await self.start_agents()
        if not client:
            return
        self.macs = {await asyncio.to_thread(lab.mac, n, "eth1"): n for n in seed.nodes}
        self.captures = [SynCapture(seed.ns(rs), "eth0", seed.client) for rs in ("rs1", "rs2")]
        for capture in self.captures:
            capture.start()
        prober = await seed.topology.astart(
            "client",
            sys.executable, "-m", "etcdha.lab.prober",
            "--vip", seed.vip, "--interval", str(opts.interval),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert prober.aproc is not None and prober.aproc.stdout is not None
        self.feed = ProberFeed(prober.aproc.stdout)
        self.feed.start()
        self.say(
            f"The client ({seed.client}) sends GET http://{seed.vip}/ every "
            f"{opts.interval * 1000:g} ms from now on; times below are seconds since it started."
        )
        self.say("")

    # -- the steps

    async def act(self, step: Step) -> None:
        lab = self.lab
        assert lab is not None
        if step.key == "both-up":
            return  # started before the client, see start_agents
        if step.key in ("standby", "online"):
            await asyncio.to_thread(lab.etcdha, step.key, "node1")
        elif step.key == "stop-rs1":
            await self.servers["rs1"].stop()
        elif step.key == "stop-rs2":
            await self.servers["rs2"].stop()
        elif step.key == "start-both":
            await self.servers["rs1"].start()
            await self.servers["rs2"].start()
        elif step.key == "kill":
            assert self.watch is not None
            self.killed = self.watch.changes[-1].leader if self.watch.changes else None
            if self.killed is None:
                raise RuntimeError("no leader to kill")
            await asyncio.to_thread(lab.kill_agent, self.killed)
        elif step.key == "restart":
            node = self.killed or "node1"
            await asyncio.to_thread(lab.start_agent, node)
            # The agent's start (a Python start in a slow guest) is not the
            # failback: the settle timeout counts from when it says it is ready.
            took = await self.agent_ready(node)
            self.event(time.time(), f"{node}'s agent is up and eligible after {took:.1f} s")

    async def start_agents(self) -> None:
        """The preferred node first, as an operator starting Heartbeat would, then the
        other once the first is ready; both before the client starts, so that a slow
        machine (user-mode-linux has one CPU) starts them unhurried."""
        lab = self.lab
        assert lab is not None
        for node in lab.seed.nodes:
            self.say(f"$ etcdha agent start --node {node} --endpoints {lab.endpoints}")
            await asyncio.to_thread(lab.start_agent, node)
            took = await self.agent_ready(node)
            self.say(f"  {node}'s agent is up and eligible after {took:.1f} s")

    async def agent_ready(self, node: str) -> float:
        """Wait until the agent just started on `node` says, in its member key, that
        it is ready and eligible; how long that took. Raises if it exits or takes
        longer than the start timeout."""
        lab = self.lab
        assert lab is not None and self.members is not None
        agent = lab.agents[node]
        t = time.monotonic()
        deadline = t + self.options.start_timeout
        while time.monotonic() < deadline:
            if await self.members.wait_ready(node, agent.process.pid, 1.0) is not None:
                return time.monotonic() - t
            if not agent.process.alive():
                self.agent_logs()
                raise RuntimeError(f"the agent of {node} exited while starting")
        self.agent_logs()
        raise RuntimeError(
            f"the agent of {node} did not say it is ready within {self.options.start_timeout:g} s"
        )

    def _all_ready(self) -> bool:
        assert self.lab is not None and self.members is not None
        for node in self.lab.seed.nodes:
            state = self.members.now(node)
            if state is None or not (state.ready and state.eligible):
                return False
        return True

    async def settle(self, step: Step, started: float) -> float | None:
        """Wait until the step's expectation holds (holders, leader, the client's
        last requests); return when it was seen (None after the timeout)."""
        assert self.sampler and self.watch and self.feed and self.lab
        want = (step.holder,)
        needs_members = step.key in ("both-up", "restart")
        deadline = time.monotonic() + self.options.settle_timeout
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            held = self.sampler.changes[-1] if self.sampler.changes else None
            leader = self.watch.changes[-1].leader if self.watch.changes else None
            if held is None or held.vip != want or held.dip != want or leader != step.holder:
                continue
            recent = sorted(
                (r for r in self.feed.requests if r.sent >= started), key=lambda r: r.sent
            )
            tail = recent[-SETTLED_RUN:]
            if len(tail) < SETTLED_RUN or not matches(step.client, tail):
                continue
            if needs_members and not self._all_ready():
                continue
            return time.time()
        return None

    async def run_step(self, index: int, step: Step) -> StepResult:
        assert self.sampler and self.watch and self.feed
        total = len(steps())
        started = time.time()
        self.event(started, f"step {index}/{total} {step.title}: {step.action}")
        self.say(f"{' ' * 10}expect: {step.expectation()}")
        result = StepResult(step, started, min_steady=self.options.dwell * 0.8)
        await self.act(step)
        result.detected = await self.settle(step, started)
        if result.detected is not None:
            self.event(result.detected, f"as expected; watching it for {self.options.dwell:g} s")
            await asyncio.sleep(self.options.dwell)
        else:
            self.event(time.time(), f"NOT as expected after {self.options.settle_timeout:g} s")
        result.ended = time.time()
        # Requests still in flight belong to this step: the next action (stopping
        # a server, say) must not cut them. Under load an answer can take
        # hundreds of ms; the prober gives each request 1 s.
        for _ in range(100):  # up to 5 s
            if self.feed.all_done_before(result.ended):
                break
            await asyncio.sleep(0.05)
        held = self.sampler.at(result.ended)
        result.vip, result.dip = (held.vip, held.dip) if held else ((), ())
        result.leader = self.watch.at(result.ended)
        seen = [r for r in self.feed.requests if r.sent >= (result.detected or started)]
        counts = Counter(r.outcome for r in seen)
        self.event(
            result.ended,
            f"VIP {'+'.join(result.vip) or '-'}, DIP {'+'.join(result.dip) or '-'}, "
            f"leader {result.leader or '-'}; the client got "
            + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing"),
        )
        self.say("")
        return result

    # -- the live timeline

    async def monitor(self) -> None:
        assert self.sampler and self.watch and self.feed and self.members
        seen_holdings = seen_leaders = seen_members = 0
        client_state = ""
        while True:
            await asyncio.sleep(0.025)
            batch: list[tuple[float, str]] = []
            for h in self.sampler.changes[seen_holdings:]:
                batch.append(
                    (h.t, f"VIP: {'+'.join(h.vip) or '-'}   DIP: {'+'.join(h.dip) or '-'}")
                )
            seen_holdings = len(self.sampler.changes)
            for c in self.watch.changes[seen_leaders:]:
                batch.append((c.t, f"leader in etcd: {c.leader or '-'}"))
            seen_leaders = len(self.watch.changes)
            for m in self.members.changes[seen_members:]:
                if m.t >= self.record.t0:
                    batch.append((m.t, f"{m.node}'s agent: {m.describe()}"))
            seen_members = len(self.members.changes)
            recent = self.feed.requests[-10:]
            if recent:
                state = " ".join(sorted({r.outcome for r in recent}))
                if state != client_state:
                    client_state = state
                    batch.append((recent[-1].done, f"client gets: {state}"))
            for t, text in sorted(batch):
                self.event(t, text)

    # -- the whole run

    async def run(self) -> LabRecord:
        rec = self.record
        monitor: asyncio.Task[None] | None = None
        try:
            await self.setup()
            rec.t0 = time.time()
            monitor = asyncio.create_task(self.monitor())
            for i, step in enumerate(steps(), start=1):
                result = await self.run_step(i, step)
                rec.results.append(result)
                if result.detected is None:
                    self.agent_logs()
                    if self.options.fail_fast:
                        break
        finally:
            if monitor is not None:
                monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await monitor
            rec.ended = time.time()
            await self.teardown()
        self.summarise()
        return rec

    def agent_logs(self, lines: int = 25) -> None:
        """The end of each agent's log, to see why a step went wrong."""
        if self.lab is None:
            return
        for node, agent in self.lab.agents.items():
            tail = agent.log().splitlines()[-lines:]
            self.say(f"--- the last {len(tail)} lines of {node}'s agent log:")
            for line in tail:
                self.say(f"    {line}")
        self.say("")

    async def teardown(self) -> None:
        rec = self.record
        if self.lab is not None and self.feed is not None:
            for proc in self.lab.seed.topology.processes:
                if proc.argv[1:3] == ("-m", "etcdha.lab.prober"):
                    await proc.astop(timeout=3.0)
            await self.feed.stop()
            syns = [s for capture in self.captures for s in capture.seen]
            rec.requests = attribute(
                sorted(self.feed.requests, key=lambda r: r.sent), syns, self.macs
            )
        for capture in self.captures:
            await asyncio.to_thread(capture.close)
        if self.sampler is not None:
            await self.sampler.stop()
            rec.holdings = [(h.t, h.vip, h.dip) for h in self.sampler.changes]
        if self.members is not None:
            await self.members.stop()
        if self.watch is not None:
            await self.watch.stop()
            rec.leaders = [(c.t, c.leader) for c in self.watch.changes]
            rec.non_leader = non_leader_answers(rec.requests, self.watch.changes, math.inf)
        for result in rec.results:
            measure(result, rec.requests)
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                await server.stop()
        if self.lab is not None:
            await asyncio.to_thread(self.lab.close)

    def summarise(self) -> None:
        rec = self.record
        self.say(
            "Summary. gap: the longest stretch in which every request sent went unanswered "
            "(from the last answered request to the next); failed: requests without an "
            "answer before the step settled; settled: from the action to the first of the "
            "requests that all got what they should."
        )
        self.say(
            f"  {'step':<24} {'holder':<7} {'the client got, once settled':<30} "
            f"{'gap':>7} {'failed':>6} {'settled':>8}  result"
        )
        for r in rec.results:
            seen = ", ".join(f"{k} {v}" for k, v in sorted(r.client.items()))
            settled = f"{r.settled - r.started:7.2f}s" if r.settled is not None else "   never"
            self.say(
                f"  {r.step.title:<24} {'+'.join(r.vip) or '-':<7} {seen:<30} "
                f"{r.gap:>6.3f}s {r.failed:>6} {settled}  {'ok' if r.ok else 'NOT AS EXPECTED'}"
            )
        outcomes = Counter(r.outcome for r in rec.requests)
        known = sum(1 for r in rec.requests if r.served and r.director)
        served = sum(1 for r in rec.requests if r.served)
        self.say(
            f"Requests: {len(rec.requests)} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))})."
        )
        self.say(
            f"Answers by a director that was not the leader in etcd: {len(rec.non_leader)} "
            f"(which director took the request is known for {known} of {served} answers: "
            "the MAC its SYN reached a real server from, or the fallback page's name)."
        )
        for bad, leader in rec.non_leader[:5]:
            self.say(
                f"  +{bad.sent - rec.t0:.3f} s: {bad.outcome} taken by {bad.director} at "
                f"+{(bad.taken or 0) - rec.t0:.3f} s; the leader then: {leader or '-'}"
            )
        errors = Counter(r.detail for r in rec.requests if r.outcome == "error")
        for detail, n in errors.most_common(3):
            self.say(f"  error {detail!r}: {n}")
        two = [h for h in rec.holdings if len(h[1]) > 1]
        self.say(f"Moments with two VIP holders: {len(two)}.")
        self.say("Result: " + ("every step as expected." if rec.ok else "NOT AS EXPECTED."))


async def run_lab(options: LabOptions, say: Say = _say) -> LabRecord:
    return await LabRun(options, say).run()


async def run_shell(options: LabOptions, command: list[str] | None, say: Say = _say) -> int:
    """Build and start everything, print how to look around, run `command` (an
    interactive shell) or wait until cancelled; then remove it all."""
    run = LabRun(options, say)
    try:
        await run.setup(client=False)
        assert run.lab is not None
        lab, seed = run.lab, run.lab.seed
        ns = seed.ns
        env = {
            **os.environ,
            "ETCDCTL_API": "3",
            "ETCDCTL_ENDPOINTS": lab.endpoints,
            "ETCDHA_ENDPOINTS": lab.endpoints,
            "LAB_CLIENT": ns("client"),
            "LAB_NODE1": ns("node1"),
            "LAB_NODE2": ns("node2"),
            "LAB_RS1": ns("rs1"),
            "LAB_RS2": ns("rs2"),
            "LAB_ETCD": ns("etcd"),
        }
        etcdha = f"{sys.executable} -m etcdha"
        tries = [
            f"ip netns exec {ns('client')} curl -s http://{seed.vip}/",
            f"ip netns exec {ns('node1')} ipvsadm -Ln",
            f"ip netns exec {ns('node2')} ipvsadm -Ln",
            f"ip netns exec {ns('node1')} ip -br addr",
            f"ip netns exec {ns('etcd')} etcdctl get --prefix /etcdha/",
            f"ip netns exec {ns('node1')} {etcdha} status",
            f"ip netns exec {ns('node1')} {etcdha} standby node1",
        ]
        say("")
        say("The lab is up. Things to try ($LAB_CLIENT, $LAB_NODE1... name the namespaces;")
        say("ETCDCTL_ENDPOINTS and ETCDHA_ENDPOINTS are set in the shell):")
        for line in tries:
            say(f"  {line}")
        for node, agent in lab.agents.items():
            say(f"  less {agent.log_path}    ({node}'s agent log)")
        if command:
            if Path(command[0]).name == "bash":  # a prompt that says where you are
                rc = lab.work / "bashrc"
                rc.write_text('[ -f ~/.bashrc ] && . ~/.bashrc\nPS1="(etcdha lab) $PS1"\n')
                command = [command[0], "--rcfile", str(rc), *command[1:]]
            say(f"Starting {command[0]}; leave it (exit or Ctrl-D) to remove the lab.")
            proc = await asyncio.create_subprocess_exec(*command, env=env)
            return await proc.wait()
        say("Waiting; Ctrl-C (or SIGTERM) removes the lab.")
        await asyncio.Event().wait()
        return 0
    finally:
        await run.teardown()
        say("The lab is removed: namespaces, processes and files.")
