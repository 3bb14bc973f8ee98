"""How many real servers one checker sustains, and how fast a failure reaches etcd.

Part 1: HTTP negotiate checks (a new connection per check) at a 1 s interval
against N local servers: one listener per real, each on an address of its own
(127.1.x.y, port 8080, as real servers have addresses of their own and listen
on one port), served by a separate process so that its CPU is not the
checker's. (Listeners on ports of 127.0.0.1 would take thousands of ports of
the range the checker's own connections draw from, and make every connect
search that range longer.) For each N it prints
the checks per second done, the checker's CPU (share of one core, and
microseconds of it per check: what one core can sustain, 10^6 / that), its RSS
and the schedule slip (p50 / p99 / max). Nothing is published (no lease).

Part 2 (on the standard loop): 100 reals at a 1 s interval, publishing to a
local etcd member; one real fails and comes back (ROUNDS changes, each at a
random phase of its interval) in three ways: it answers 503, it refuses
connections, it accepts and never answers. Prints the time from the change on
the server to the verdict's watch event in etcd (expected: half the interval
on average, at most the interval, plus the check and the write; plus the
timeout for a real that hangs) against the goal: interval x failure_count +
100 ms, plus the timeout for one that hangs.

    .venv/bin/python bench/checks.py [N ...]   (default: 1000 2000 5000 10000; 0: part 2 only)

In part 1 both the checker and the servers run on uvloop when it is
installed, as `etcdha checker start` does; ETCDHA_UVLOOP=0 runs both on the
standard loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from etcdha.checker import Checker, freeze_gc, loop_factory
from etcdha.keyspace import Keyspace
from etcdha.lab.etcd_process import EtcdProcess
from etcdha.lab.realservers import HTTPBehaviour, start_http
from etcdha.spec import ClusterSpec
from etcdha.store import EtcdSettings, Store

DURATION = 20.0
WARMUP = 3.0
ROUNDS = 20

# The real servers: one listener per real, a fixed answer, on uvloop when it is
# installed (the lab's servers are richer and cost the machine more CPU).
SERVER = """
import asyncio, resource, sys
from etcdha.checker import loop_factory
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
ANSWER = b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\nConnection: close\\r\\n\\r\\nok\\n"
class Answer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.seen = transport, b""
    def data_received(self, data):
        self.seen += data
        if b"\\r\\n\\r\\n" in self.seen:
            self.transport.write(ANSWER)
            self.transport.close()
async def main():
    loop = asyncio.get_running_loop()
    addresses = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(int(sys.argv[1]))]
    servers = [await loop.create_server(Answer, a, 8080, backlog=1024) for a in addresses]
    print(" ".join(addresses), flush=True)
    await asyncio.Event().wait()
with asyncio.Runner(loop_factory=loop_factory()) as runner:
    runner.run(main())
"""


def spec_for(reals: list[str], interval: str = "1s") -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "nodes": ["bench"],
            "virtual_services": [
                {
                    "address": "192.0.2.200:80",
                    "check": {"interval": interval, "timeout": "1s", "receive": "ok"},
                    "reals": [{"address": r} for r in reals],
                }
            ],
        }
    )


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int | None = None) -> float:
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(n: int) -> dict[str, float]:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, str(n), stdout=subprocess.PIPE, limit=1 << 20
    )
    try:
        assert server.stdout is not None
        line = await server.stdout.readline()
        spec = spec_for([f"{a}:8080" for a in line.decode().split()])
        checker = Checker(Store(EtcdSettings()), Keyspace(), "bench", lambda: spec, lambda: 0)
        checker.update(spec)
        freeze_gc()
        task = asyncio.create_task(checker.run())
        try:
            await asyncio.sleep(WARMUP)
            checker.slips.clear()
            checks0 = sum(st.checks for st in checker.states.values())
            cpu0, scpu0, t0 = cpu_seconds(), cpu_seconds(server.pid), time.monotonic()
            await asyncio.sleep(DURATION)
            elapsed = time.monotonic() - t0
            cpu, scpu = cpu_seconds() - cpu0, cpu_seconds(server.pid) - scpu0
            checks = sum(st.checks for st in checker.states.values()) - checks0
            slips = checker.slip_percentiles()
            up = sum(1 for st in checker.states.values() if st.state == "up")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return {
            "reals": n,
            "checks_per_s": checks / elapsed,
            "cpu_core": cpu / elapsed,
            "server_cpu_core": scpu / elapsed,
            "rss_mib": rss_mib(),
            "slip_p50_ms": slips["p50"] * 1000,
            "slip_p99_ms": slips["p99"] * 1000,
            "slip_max_ms": slips["max"] * 1000,
            "up": up,
        }
    finally:
        server.kill()
        await server.wait()


FAILURES = {
    "503": "answers HTTP 503",
    "refused": "refuses connections (listener closed)",
    "hang": "accepts and never answers",
}


async def time_to_etcd(kind: str) -> tuple[list[float], list[float]]:
    """Seconds from a real failing (as ``kind`` says) to its down verdict's watch
    event in etcd, and from its return to the up verdict's."""
    etcd = EtcdProcess("bench", progress_notify_interval="1s")
    etcd.start()
    many = await start_http(ports=[0] * 99)
    one = await start_http(behaviour=HTTPBehaviour())
    port = one.ports[0]
    try:
        async with Store(EtcdSettings(endpoints=etcd.endpoints)) as store:
            ks = Keyspace("/etcdha", "bench")
            lease = (await store.grant(60)).id
            spec = spec_for([f"127.0.0.1:{p}" for p in (*many.ports, port)])
            checker = Checker(store, ks, "bench", lambda: spec, lambda: lease)
            key = checker.key(("tcp-192.0.2.200-80", f"127.0.0.1-{port}"))
            task = asyncio.create_task(checker.run())
            down: list[float] = []
            up: list[float] = []
            try:
                _, rev = await store.get_prefix(ks.root)
                watch = store.watch_prefix(key, rev + 1)

                async def next_value() -> dict[str, object]:
                    while True:  # skip progress notifications
                        batch = await anext(watch)
                        if batch.events:
                            value: dict[str, object] = json.loads(batch.events[-1].kv.value)
                            return value

                assert (await next_value())["state"] == "up"  # the first verdict
                for i in range(ROUNDS):
                    await asyncio.sleep(random.uniform(0.2, 1.2))  # any phase of the interval
                    want = "down" if i % 2 == 0 else "up"
                    changed = time.monotonic()
                    if kind == "503":
                        one.behaviour.status = 503 if want == "down" else 200
                    elif kind == "hang":
                        one.behaviour.mode = "silent" if want == "down" else "normal"
                    elif want == "down":
                        await one.close()
                    else:
                        one = await start_http(ports=[port])
                    value = await next_value()
                    (down if want == "down" else up).append(time.monotonic() - changed)
                    assert value["state"] == want
                await watch.aclose()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await store.revoke(lease)
        return down, up
    finally:
        await many.close()
        await one.close()
        etcd.close()


async def main(sizes: list[int]) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(
        f"HTTP negotiate, new connection per check, 1 s interval, {DURATION:g} s per size,"
        f" {loop} event loop, {os.cpu_count()} CPUs"
    )
    print(
        f"{'reals':>6} {'checks/s':>9} {'cpu':>6} {'us/check':>9} {'srv cpu':>8} {'rss MiB':>8} "
        f"{'slip p50':>9} {'p99':>8} {'max':>8} {'up':>6}"
    )
    for n in (s for s in sizes if s > 0):
        r = await throughput(n)
        print(
            f"{n:>6} {r['checks_per_s']:>9.0f} {r['cpu_core']:>6.2f} "
            f"{r['cpu_core'] / r['checks_per_s'] * 1e6:>9.0f} {r['server_cpu_core']:>8.2f} "
            f"{r['rss_mib']:>8.0f} {r['slip_p50_ms']:>7.1f}ms {r['slip_p99_ms']:>6.1f}ms "
            f"{r['slip_max_ms']:>6.0f}ms {r['up']:>6.0f}",
            flush=True,
        )


async def part2() -> None:
    print(
        f"\none real of 100 fails and returns {ROUNDS // 2} times each (1 s interval, 1 s"
        " timeout, failure_count 1) -> its verdict's watch event in etcd:"
    )
    for kind, what in FAILURES.items():
        down, up = await time_to_etcd(kind)
        goal = 1.0 + (1.0 if kind == "hang" else 0.0) + 0.1
        print(
            f"  {what:<38} down: mean {statistics.mean(down) * 1000:4.0f} ms,"
            f" max {max(down) * 1000:4.0f} ms (goal {goal * 1000:.0f} ms);"
            f" up: mean {statistics.mean(up) * 1000:4.0f} ms, max {max(up) * 1000:4.0f} ms",
            flush=True,
        )


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(main([int(a) for a in sys.argv[1:]] or [1000, 2000, 5000, 10000]))
    # The standard loop: part 2 serves its reals with the lab's servers, which
    # are written for asyncio's own transports.
    asyncio.run(part2())
