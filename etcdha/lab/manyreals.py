"""Thousands of cheap HTTP real servers on loopback addresses of their own.

One listener per real on ``127.1.x.y:8080`` (x = i // 250, y = i % 250 + 1),
as real servers have addresses of their own and listen on one port (listeners
on ports of 127.0.0.1 would take the ports a checker's own connections draw
from). Each answers any request with a fixed ``200 ok`` and closes. Every
address of 127.0.0.0/8 is local in any namespace whose loopback is up, so
nothing needs to be configured.

:class:`ManyReals` runs them in child processes of ``PER_PROCESS`` listeners
each (a listener is a descriptor: a process's limit is often 20,000), on
uvloop when it is installed; ``python -m etcdha.lab.manyreals FIRST COUNT`` is
one such process (a third argument: its niceness), which prints ``ready`` once every listener is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import cast

PORT = 8080
PER_PROCESS = 10_000
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


def address(i: int) -> str:
    """The loopback address of real number ``i`` (0-based; up to 64,000 reals)."""
    return f"127.1.{i // 250}.{i % 250 + 1}"


def addresses(count: int) -> list[str]:
    return [f"{address(i)}:{PORT}" for i in range(count)]


def ranges(count: int) -> list[str]:
    """The same reals as ldirectord's ranges (``a.b.c.d->a.b.c.e:port``), one per
    250: a spec that lists 20,000 reals one by one takes about 6 MB in etcd, over
    the 1.5 MiB etcd accepts in one request by default."""
    return [
        f"{address(first)}->{address(min(first + 250, count) - 1)}:{PORT}"
        for first in range(0, count, 250)
    ]


class ManyReals:
    """``count`` HTTP listeners in child processes; ``close()`` (or ``with``) ends them.

    ``wrapper`` prefixes each command (``ip netns exec NS``, say); ``nice``: their
    niceness (real servers beside a director under test stand for other machines,
    whose CPU is not the director's)."""

    def __init__(
        self, count: int, wrapper: Sequence[str] = (), timeout: float = 120.0, nice: int = 0
    ) -> None:
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for first in range(0, count, PER_PROCESS):
                n = min(PER_PROCESS, count - first)
                argv = [
                    *wrapper,
                    sys.executable,
                    "-m",
                    "etcdha.lab.manyreals",
                    str(first),
                    str(n),
                    str(nice),
                ]
                self.procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE))
            deadline = time.monotonic() + timeout
            for proc in self.procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()  # bounded by the process: it exits on error
                if line.strip() != b"ready" or time.monotonic() > deadline:
                    raise RuntimeError(f"real servers did not start (said {line!r})")
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in self.procs:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    def __enter__(self) -> ManyReals:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Answer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.seen = b""

    def data_received(self, data: bytes) -> None:
        self.seen += data
        if b"\r\n\r\n" in self.seen:
            self.transport.write(ANSWER)
            self.transport.close()


async def _serve(first: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(_Answer, address(i), PORT, backlog=1024)
        for i in range(first, first + count)
    ]
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for server in servers:
            server.close()


def main(argv: Sequence[str]) -> None:
    from etcdha.checker import loop_factory

    first, count = int(argv[0]), int(argv[1])
    if len(argv) > 2:
        os.nice(int(argv[2]))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(first, count))


if __name__ == "__main__":
    main(sys.argv[1:])
