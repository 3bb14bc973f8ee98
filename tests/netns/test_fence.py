"""The fence guard removing addresses at the deadline, in a namespace (tier 3).

The guard runs inside the namespace that holds the addresses (as it inherits
the agent's); the tests talk to it over its unix socket. "Agents" that get
killed or stopped are separate processes (fence_agent.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import AsyncIPRoute

from etcdha import clock
from etcdha.fence import FenceClient, FenceError
from etcdha.lab.netns import LabProcess, Topology, pid_alive

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

VIP = ("eth0", "192.0.2.200", 24)
DIP = ("eth1", "198.51.100.200", 24)
ADDRESSES = [VIP, DIP]
AGENT_SCRIPT = str(Path(__file__).with_name("fence_agent.py"))
# The guard itself reports within a few ms; the bound leaves room for a busy CI machine.
LATE_BOUND = 0.1


@dataclass
class Fenced:
    topo: Topology
    ns: str
    socket: str
    log: str


@pytest.fixture
async def fenced() -> AsyncIterator[Fenced]:
    """A director namespace holding a VIP on eth0 and a DIP on eth1, and a socket path."""
    directory = tempfile.mkdtemp(prefix="ehfence-")
    topo = Topology()
    try:
        topo.connect("d", "eth0", "pub")
        topo.connect("d", "eth1", "priv")
        topo.add_address("d", "eth0", "192.0.2.11/24")
        topo.add_address("d", "eth1", "198.51.100.11/24")
        for ifname, ip, plen in ADDRESSES:
            topo.add_address("d", ifname, f"{ip}/{plen}")
        log = os.path.join(directory, "guard.log")
        yield Fenced(topo, topo.ns("d"), os.path.join(directory, "fence.sock"), log)
        print(read_log(log))
    finally:
        await topo.aclose()
        shutil.rmtree(directory, ignore_errors=True)


def start_guard(f: Fenced, idle_exit: float = 10.0) -> LabProcess:
    with open(f.log, "ab") as log:
        return f.topo.start(
            "d",
            sys.executable,
            "-m",
            "etcdha.fence",
            "--socket",
            f.socket,
            "--idle-exit",
            str(idle_exit),
            stderr=log,
        )


async def connect(f: Fenced) -> FenceClient:
    client = FenceClient(f.socket, agent="pytest", spawn=False)
    deadline = clock.now() + 5
    while True:
        try:
            await client.connect()
            return client
        except FenceError:
            if clock.now() > deadline:
                raise
            await asyncio.sleep(0.02)


async def start_agent(f: Fenced, ttl: float, *extra: str) -> tuple[LabProcess, float, int]:
    """A separate agent process: returns it, the deadline it armed and the guard's pid."""
    specs = [f"{i}/{ip}/{p}" for i, ip, p in ADDRESSES]
    agent = await f.topo.astart(
        "d",
        sys.executable,
        AGENT_SCRIPT,
        f.socket,
        "web",
        str(ttl),
        *specs,
        "--log",
        f.log,
        *extra,
        stdout=subprocess.PIPE,
    )
    assert agent.aproc is not None and agent.aproc.stdout is not None
    async with asyncio.timeout(10):
        words = (await agent.aproc.stdout.readline()).decode().split()
    assert words[:1] == ["armed"], words
    return agent, float(words[1]), int(words[2])


async def present(ns: str) -> set[str]:
    wanted = {ip for _, ip, _ in ADDRESSES}
    async with AsyncIPRoute(netns=ns, flags=0) as ipr:
        return {
            msg.get("IFA_LOCAL") async for msg in await ipr.addr("dump") if msg.get("IFA_LOCAL")
        } & wanted


def read_log(path: str) -> str:
    return Path(path).read_text() if os.path.exists(path) else ""


async def log_says(path: str, text: str) -> bool:
    """Whether the guard's log gets ``text`` within a second (it logs just after acting)."""
    for _ in range(100):
        if text in read_log(path):
            return True
        await asyncio.sleep(0.01)
    return False


async def last_fired(client: FenceClient) -> dict[str, Any]:
    """The guard's record of its last removal, once it has written it."""
    for _ in range(100):
        status = await client.status()
        if status["fired"]:
            return dict(status["fired"][-1])
        await asyncio.sleep(0.01)
    raise AssertionError("the guard recorded no removal")


def exists(path: str) -> bool:
    return os.path.exists(path)


async def wait_gone(ns: str, timeout: float = 5.0) -> float:  # noqa: ASYNC109
    """Poll (every ~2 ms) until the VIP and DIP are both gone; returns when."""
    limit = clock.now() + timeout
    async with AsyncIPRoute(netns=ns, flags=0) as ipr:
        while True:
            found = {m.get("IFA_LOCAL") async for m in await ipr.addr("dump")}
            now = clock.now()  # after the answer: never earlier than the removal
            if not found & {ip for _, ip, _ in ADDRESSES}:
                return now
            assert now < limit, f"still present after {timeout}s: {found}"
            await asyncio.sleep(0.002)


async def sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - clock.now()))


async def test_guard_removes_addresses_at_the_deadline(fenced: Fenced) -> None:
    guard = start_guard(fenced)
    client = await connect(fenced)
    try:
        deadline = clock.now() + 0.6
        reply = await client.arm("web", deadline, ADDRESSES)
        assert reply["remaining"] > 0.5 and reply["was_expired"] is False
        await sleep_until(deadline - 0.1)
        assert await present(fenced.ns) == {"192.0.2.200", "198.51.100.200"}

        late = await wait_gone(fenced.ns) - deadline
        fired = await last_fired(client)
        status = await client.status()
        print(
            f"addresses gone {late * 1000:.1f} ms after the deadline (polled); "
            f"the guard reports {fired['late_ms']:.1f} ms"
        )
        assert 0 <= late < LATE_BOUND
        assert fired["late_ms"] < LATE_BOUND * 1000
        assert fired["group"] == "web" and sorted(map(tuple, fired["removed"])) == sorted(ADDRESSES)
        assert status["groups"] == {}
        assert guard.alive()
        assert await log_says(
            fenced.log,
            "removed 192.0.2.200/24 on eth0, 198.51.100.200/24 on eth1 for group 'web' "
            "because its lease deadline passed",
        )

        # the next arm learns that the guard took the addresses
        fenced.topo.add_address("d", "eth0", "192.0.2.200/24")
        reply = await client.arm("web", clock.now() - 1, ADDRESSES)
        assert reply["expired"] is True and reply["was_expired"] is True
        assert await present(fenced.ns) == set()
    finally:
        await client.aclose()


async def test_rearm_keeps_addresses_and_disarm_leaves_them(fenced: Fenced) -> None:
    start_guard(fenced)
    client = await connect(fenced)
    try:
        until = clock.now() + 1.0
        while clock.now() < until:
            await client.arm("web", clock.now() + 0.3, ADDRESSES)
            await asyncio.sleep(0.1)
            assert len(await present(fenced.ns)) == 2
        await client.disarm("web")
        await asyncio.sleep(0.5)
        assert len(await present(fenced.ns)) == 2
        status = await client.status()
        assert status["groups"] == {} and status["fired"] == []
        await client.disarm("never-armed")  # not an error
    finally:
        await client.aclose()


async def test_guard_outlives_a_killed_agent(fenced: Fenced) -> None:
    agent, deadline, guard_pid = await start_agent(fenced, 1.0)
    assert guard_pid != agent.pid and pid_alive(guard_pid)
    assert guard_pid in fenced.topo.pids("d")  # the agent started it, detached, in its netns
    agent.signal(signal.SIGKILL)
    assert agent.aproc is not None
    await agent.aproc.wait()

    assert deadline - clock.now() > 0.2, "the agent took too long to start"
    assert len(await present(fenced.ns)) == 2
    late = await wait_gone(fenced.ns) - deadline
    print(f"agent killed: addresses gone {late * 1000:.1f} ms after the deadline")
    assert 0 <= late < LATE_BOUND
    assert pid_alive(guard_pid)
    assert await log_says(fenced.log, "no agent is connected to renew it")

    # a new agent connects to the same guard and arms again
    client = await connect(fenced)
    try:
        assert client.guard_pid == guard_pid
        reply = await client.arm("web", clock.now() + 5, ADDRESSES)
        assert reply["was_expired"] is True
        await client.disarm("web")
    finally:
        await client.aclose()


async def test_new_agent_rearms_before_the_deadline(fenced: Fenced) -> None:
    agent, deadline, guard_pid = await start_agent(fenced, 1.0)
    agent.signal(signal.SIGKILL)
    client = await connect(fenced)
    try:
        assert client.guard_pid == guard_pid
        reply = await client.arm("web", clock.now() + 1.5, ADDRESSES)
        assert reply["was_expired"] is False
        await sleep_until(deadline + 0.3)
        assert len(await present(fenced.ns)) == 2  # kept across the "restart"
        await client.disarm("web")
    finally:
        await client.aclose()


async def test_guard_removes_addresses_of_a_stopped_agent(fenced: Fenced) -> None:
    agent, _, guard_pid = await start_agent(fenced, 0.6, "--renew-every", "0.1")
    assert agent.aproc is not None and agent.aproc.stdout is not None
    await agent.aproc.stdout.readline()  # renewing
    client = await connect(fenced)
    try:
        agent.signal(signal.SIGSTOP)
        await asyncio.sleep(0.05)
        deadline = (await client.status())["groups"]["web"]["deadline"]
        late = await wait_gone(fenced.ns) - deadline
        print(f"agent stopped: addresses gone {late * 1000:.1f} ms after the deadline")
        assert 0 <= late < LATE_BOUND
        assert await log_says(fenced.log, "the connected agent did not renew it")
        assert pid_alive(guard_pid)
    finally:
        agent.signal(signal.SIGCONT)
        await client.aclose()
    # resumed, the agent goes on renewing (and would learn the addresses were taken)
    async with asyncio.timeout(5):
        assert (await agent.aproc.stdout.readline()).startswith(b"renewed")


async def test_one_guard_per_socket_and_idle_exit(fenced: Fenced) -> None:
    guard = start_guard(fenced, idle_exit=0.5)
    client = await connect(fenced)  # a connected client keeps the guard from idling out
    try:
        second = fenced.topo.exec(
            "d",
            sys.executable,
            "-m",
            "etcdha.fence",
            "--socket",
            fenced.socket,
            "--detach",
            "--log-file",
            fenced.log,
        )
        assert second.stdout.strip() == "busy"
        assert guard.alive()
    finally:
        await client.aclose()
    for _ in range(100):
        if not guard.alive():
            break
        await asyncio.sleep(0.05)
    assert not guard.alive()
    assert not exists(fenced.socket)
    assert await log_says(fenced.log, "exiting: no group armed and no agent connected")


async def test_an_address_put_back_after_the_deadline_by_a_connected_agent_goes_again(
    fenced: Fenced,
) -> None:
    """A frozen agent resumed in the middle of an add (a start, an audit) puts an
    address back after its deadline: while it stays connected without re-arming,
    the guard removes it again; after a disarm it leaves addresses alone."""
    start_guard(fenced)
    client = await connect(fenced)
    try:
        deadline = clock.now() + 0.3
        await client.arm("web", deadline, ADDRESSES)
        await wait_gone(fenced.ns)
        fenced.topo.add_address("d", "eth0", "192.0.2.200/24")  # the late add
        put_back = clock.now()
        gone = await wait_gone(fenced.ns)
        assert gone - put_back < LATE_BOUND + 0.1, "the late address stayed"
        assert await log_says(fenced.log, "came back after its deadline")
        await client.disarm("web")
        fenced.topo.add_address("d", "eth0", "192.0.2.200/24")
        await asyncio.sleep(0.3)
        assert await present(fenced.ns) == {"192.0.2.200"}
    finally:
        await client.aclose()


async def test_a_guard_started_early_is_the_one_the_client_connects_to(tmp_path: Path) -> None:
    """`etcdha agent start` starts the guard before its own imports (start_guard)
    and hands the process to its client, which waits for it instead of starting
    another; a second guard on the same socket says busy and leaves."""
    from etcdha.fence import await_guard, guard_answers, guard_paths, start_guard

    sock, log = guard_paths(tmp_path, "default", "node1")
    assert not guard_answers(sock)
    proc = start_guard(sock, idle_exit=2.0, log_file=log)
    client = FenceClient(sock, agent="pytest", starting=proc, spawn=False)
    try:
        await client.connect()
        assert proc.returncode == 0, "the detaching process was waited for"
        status = await client.status()
        assert status["pid"] == client.guard_pid and pid_alive(status["pid"])
        await client.arm("web", clock.now() + 60, [])
        assert guard_answers(sock)
        second = start_guard(sock, idle_exit=2.0, log_file=log)
        assert await await_guard(second, sock) is None
        assert (await client.status())["pid"] == client.guard_pid
        await client.disarm("web")
    finally:
        await client.aclose()
    for _ in range(100):  # no client, no group: it leaves after idle_exit
        if not pid_alive(status["pid"]):
            break
        await asyncio.sleep(0.05)
    assert not pid_alive(status["pid"])
    # a bare connect (is a guard there?) while a group was armed is not logged
    assert "an agent disconnected" not in read_log(log)
