"""Lease keepalive latency while the agent's checker checks thousands of reals.

The agent's lease (etcdha.election.LeaseKeeper, TTL 3 s, a keepalive every
1 s, fence margin 0.5 s: the timings of the failover tests) is kept alive
against a local etcd member while a checker named like the agent checks N
HTTP reals every second (cheap servers on 127.1.x.y:8080 in other processes,
etcdha.lab.manyreals, niced +10: they stand for other machines) and publishes
its verdicts under the agent's lease:

- ``loop``: the checker runs on the agent's own event loop (the standard
  asyncio loop, as `etcdha agent start` runs), as agents did before
  etcdha/checker_process.py;
- ``process``: the checker runs in its own process (etcdha.checker_process),
  as the agent runs it now.

For each it prints, over the whole run (start-up included: the first checks of
every real come within the first second, and every verdict is written then):
keepalive round trips (send to the answer handled by the agent's loop;
etcdha_lease_keepalive_duration_seconds measures the same) p50 / p90 / p99 /
max against the goal of a tenth of the TTL; the failed keepalives; the least
time left before the fencing deadline (sampled every 10 ms by a thread; below
0: the addresses were due to go: the fence guard removes them at the
deadline); the agent's event loop lag (a 10 ms timer's lateness, p99 / max);
the checks done per second over the last two thirds of the run.

    .venv/bin/python bench/lease_checks.py [--duration S] [--modes loop,process] [N ...]
        (default: 10000 20000, both modes, 30 s each)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from etcdha import checker_process, clock, metrics
from etcdha.checker import Checker
from etcdha.checker_process import CheckerProcess
from etcdha.election import LeaseKeeper
from etcdha.keyspace import Keyspace
from etcdha.lab.etcd_process import EtcdProcess
from etcdha.lab.manyreals import ManyReals, ranges
from etcdha.spec import ClusterSpec
from etcdha.spec_load import to_json
from etcdha.store import EtcdSettings, Store

TTL = 3.0
KEEPALIVE = 1.0
MARGIN = 0.5
NODE = "node1"


def spec_for(reals: list[str]) -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "nodes": [NODE],
            "election": {
                "lease_ttl": f"{TTL:g}s",
                "keepalive_interval": f"{KEEPALIVE:g}s",
                "fence_margin": f"{MARGIN:g}s",
            },
            "virtual_services": [
                {
                    "address": "192.0.2.200:80",
                    "check": {"interval": "1s", "timeout": "1s", "receive": "ok"},
                    "reals": [{"address": r} for r in reals],
                }
            ],
        }
    )


def pick(data: list[float], q: float) -> float:
    data = sorted(data)
    return data[min(len(data) - 1, max(0, math.ceil(q * len(data)) - 1))] if data else math.nan


class Recorder:
    """Stands in for the keepalive histogram: keeps every round trip."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def observe(self, value: float) -> None:
        self.values.append(value)


async def loop_lag(out: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.01)
        out.append(loop.time() - t - 0.01)


async def checks_in_loop(checker: Checker) -> int:
    return sum(st.checks for st in checker.states.values())


async def checks_in_process(child: CheckerProcess) -> int:
    """Checks counted by the child (the count of its schedule slip histogram).
    Read twice a run: its exposition of every real takes the child seconds."""
    checker_process.SCRAPE_TIMEOUT = 60.0
    for line in (await child.exposition()).decode().splitlines():
        if line.startswith("etcdha_check_schedule_slip_seconds_count"):
            return int(float(line.split()[-1]))
    return 0


def watch_deadline(keeper: LeaseKeeper, least: list[float], stop: threading.Event) -> None:
    """The least time left before the fencing deadline, sampled every 10 ms by a
    thread (the event loop's own timers are what runs late)."""
    while not stop.wait(0.01):
        if keeper.deadline:
            least[0] = min(least[0], keeper.deadline - clock.now())


async def one_run(n: int, mode: str, duration: float) -> dict[str, float]:
    etcd = EtcdProcess("bench-lease")
    etcd.start()
    try:
        with ManyReals(n, nice=10), tempfile.TemporaryDirectory(prefix="etcdha-bench-") as run_dir:
            settings = EtcdSettings(endpoints=etcd.endpoints)
            ks = Keyspace("/etcdha", "bench")
            spec = spec_for(ranges(n))
            async with Store(settings) as store:
                await store.put(ks.config(), to_json(spec))
                recorder = Recorder()
                metrics.keepalive_duration = recorder  # type: ignore[assignment]

                async def renewed(deadline: float) -> None:
                    return None

                keeper = LeaseKeeper(store, TTL, KEEPALIVE, MARGIN, renewed)
                await keeper.grant()
                least = [math.inf]
                stop = threading.Event()
                sampler = threading.Thread(target=watch_deadline, args=(keeper, least, stop))
                sampler.start()
                lags: list[float] = []
                failures0 = metrics.keepalive_failures._value.get()
                tasks = [
                    asyncio.create_task(keeper.run()),
                    asyncio.create_task(loop_lag(lags)),
                ]
                count: Callable[[], Awaitable[int]]
                if mode == "loop":
                    checker = Checker(store, ks, NODE, lambda: spec, lambda: keeper.lease_id)
                    checker.update(spec)
                    tasks.append(asyncio.create_task(checker.run()))
                    count = functools.partial(checks_in_loop, checker)
                else:
                    child = CheckerProcess(
                        settings, ks, NODE, lambda: keeper.lease_id, Path(run_dir)
                    )
                    tasks.append(asyncio.create_task(child.run()))
                    count = functools.partial(checks_in_process, child)
                try:
                    await asyncio.sleep(duration / 3)
                    checks0, t0 = await count(), time.monotonic()
                    await asyncio.sleep(duration * 2 / 3)
                    checks, elapsed = await count() - checks0, time.monotonic() - t0
                finally:
                    stop.set()
                    sampler.join()
                    for task in tasks:
                        task.cancel()
                    for task in tasks:
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                failures = metrics.keepalive_failures._value.get() - failures0
                await keeper.revoke()
                ka = recorder.values
                return {
                    "keepalives": len(ka),
                    "p50": pick(ka, 0.5),
                    "p90": pick(ka, 0.9),
                    "p99": pick(ka, 0.99),
                    "max": max(ka) if ka else math.nan,
                    "failures": failures,
                    "least_left": least[0],
                    "lag_p99": pick(lags, 0.99),
                    "lag_max": max(lags) if lags else math.nan,
                    "checks_per_s": checks / elapsed,
                }
    finally:
        etcd.close()


async def main(sizes: list[int], modes: list[str], duration: float) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(
        f"lease TTL {TTL:g} s, keepalive every {KEEPALIVE:g} s, fence margin {MARGIN:g} s;"
        f" HTTP checks every 1 s; {duration:g} s per run from start-up; {os.cpu_count()} CPUs;"
        f" goal: keepalive p99 < {TTL / 10 * 1000:.0f} ms, never past the deadline"
    )
    print(
        f"{'reals':>6} {'checker':>8} {'n':>4} {'ka p50':>8} {'p90':>8} {'p99':>8} {'max':>8} "
        f"{'fail':>5} {'least left':>10} {'lag p99':>8} {'lag max':>8} {'checks/s':>9}"
    )
    for n in sizes:
        for mode in modes:
            r = await one_run(n, mode, duration)
            print(
                f"{n:>6} {mode:>8} {r['keepalives']:>4.0f} {r['p50'] * 1000:>6.1f}ms "
                f"{r['p90'] * 1000:>6.1f}ms {r['p99'] * 1000:>6.1f}ms {r['max'] * 1000:>6.0f}ms "
                f"{r['failures']:>5.0f} {r['least_left']:>9.2f}s {r['lag_p99'] * 1000:>6.0f}ms "
                f"{r['lag_max'] * 1000:>6.0f}ms {r['checks_per_s']:>9.0f}",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[10_000, 20_000])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--modes", default="loop,process")
    args = parser.parse_args()
    asyncio.run(main(args.sizes, args.modes.split(","), args.duration))
    sys.exit(0)
