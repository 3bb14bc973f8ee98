"""The agent's checker, in a process of its own.

A checker of thousands of reals keeps a core busy; on the agent's event loop
its checks delayed the lease keepalives behind them, past the fencing deadline
at 20,000 reals (docs/decisions/0007-checker-process.md). So the agent runs
its checker as a child process:

- started by :meth:`CheckerProcess.run` (a task of the agent: the agent's
  election never waits for it), at a lower CPU priority (``NICE``), with
  ``nice -n 10 python -m etcdha.checker_process --name NODE --pipe FD``; it
  runs the code of ``etcdha checker start`` (:mod:`etcdha.checker_worker`'s config reading and
  following, :class:`~etcdha.checker.Checker`, uvloop when installed) on an
  etcd connection of its own;
- its verdicts stay bound to the agent's lease: the agent writes what the child
  needs as JSON lines on a pipe, first the etcd settings, names and the lease
  id, then every new lease id. The child holds no lease of its own and never
  revokes one; when the pipe closes (the agent stopped, crashed, or was killed)
  it exits, so no checker outlives its agent;
- its name registration (``checkers/<node>``) names the agent's pid, as the
  agent itself registers it;
- a new child (after a planned restart of the agent, or a crash of the child,
  which the agent logs and restarts) carries on from the verdicts under the
  lease (:meth:`Checker.adopt`): nothing flaps and nothing is written again;
- its metrics are served on a unix socket in the agent's run directory
  (``checker-<cluster>-<node>.sock``: connect, read to the end); the agent
  appends them to its own /metrics (:meth:`CheckerProcess.metrics`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from etcdha import logs, metrics
from etcdha.etcd_settings import EtcdSettings
from etcdha.keyspace import Keyspace

log = logging.getLogger("etcdha.checker_process")  # also when run as __main__

NICE = 10  # the child's niceness above the agent's: under contention the lease path goes first
LEASE_POLL = 0.2  # seconds between looks at the agent's lease id
RESTART_FIRST = 1.0  # seconds before a crashed child is started again; doubles up to
RESTART_MAX = 30.0
STABLE = 60.0  # a child that ran this long resets the delay
# Seconds to read the child's metrics (Prometheus's own default timeout is 10 s):
# a busy child at its lower priority can take seconds to write those of 20,000 reals.
SCRAPE_TIMEOUT = 8.0


class CheckerProcess:
    """The agent's side: start the child, keep it fed with lease ids, restart it."""

    def __init__(
        self,
        settings: EtcdSettings,
        keyspace: Keyspace,
        name: str,
        lease_id_getter: Callable[[], int],
        run_dir: Path,
        *,
        checks_dir: Path | None = None,
        nice: int = NICE,
        python: str = sys.executable,
    ) -> None:
        self.settings = settings
        self.ks = keyspace
        self.name = name
        self.lease_id_getter = lease_id_getter
        self.socket_path = run_dir / f"checker-{keyspace.cluster}-{name}.sock"
        self.checks_dir = checks_dir
        self.nice = nice
        self.python = python
        self.pid: int | None = None  # the running child's
        self.starts = 0

    async def run(self) -> None:
        """Run the child until cancelled, starting a new one whenever it exits."""
        delay = RESTART_FIRST
        while True:
            started = time.monotonic()
            try:
                code = await self._run_once()
                why = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
            except OSError as e:
                why = f"could not start: {e}"
            if time.monotonic() - started >= STABLE:
                delay = RESTART_FIRST
            log.error(
                "the checker process %s; starting another in %.0fs (verdicts under the lease "
                "stay until then)",
                why,
                delay,
            )
            self.pid = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX)

    def _nice_prefix(self) -> list[str]:
        """Niced from its first instruction (a Python start is a second or two of
        CPU, and the agent, or a second one starting, goes first); without
        coreutils' nice the child lowers its own priority once it runs."""
        nice = shutil.which("nice")
        return [nice, "-n", str(self.nice)] if nice else []

    def _config(self, lease: int) -> dict[str, Any]:
        settings = {
            k: (os.fspath(v) if isinstance(v, Path) else v)
            for k, v in asdict(self.settings).items()
        }
        fmt, level = logs.current()
        return {
            "settings": settings,
            "prefix": self.ks.prefix,
            "cluster": self.ks.cluster,
            "name": self.name,
            "checks_dir": os.fspath(self.checks_dir) if self.checks_dir else None,
            "socket": os.fspath(self.socket_path),
            "agent_pid": os.getpid(),
            "lease": lease,
            "nice": 0 if shutil.which("nice") else self.nice,
            "log_format": fmt,
            "log_level": level,
        }

    async def _run_once(self) -> int:
        loop = asyncio.get_running_loop()
        read_end, write_end = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._nice_prefix(),
                self.python,
                "-m",
                "etcdha.checker_process",
                "--name",
                self.name,
                "--pipe",
                str(read_end),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                pass_fds=(read_end,),
                # Signals to the agent's process group are the agent's: the child
                # goes when the pipe closes, whatever way the agent stops.
                start_new_session=True,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self.pid = proc.pid
        self.starts += 1
        exited = asyncio.ensure_future(proc.wait())
        pipe = os.fdopen(write_end, "wb", buffering=0)
        try:
            transport, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, pipe)
        except BaseException:
            pipe.close()
            exited.cancel()
            proc.kill()
            raise
        try:
            lease = self.lease_id_getter()
            transport.write(json.dumps(self._config(lease)).encode() + b"\n")
            log.info(
                "checker process started (pid %d, nice +%d, lease %x)", proc.pid, self.nice, lease
            )
            while not exited.done():
                await asyncio.wait({exited}, timeout=LEASE_POLL)
                now = self.lease_id_getter()
                if now != lease and not exited.done():
                    lease = now
                    transport.write(json.dumps({"lease": lease}).encode() + b"\n")
            return exited.result()
        finally:
            # The child sees the end of the pipe and exits by itself. Not waited
            # for: a stopping agent hands its groups over right after this.
            transport.close()
            if not exited.done():
                exited.cancel()

    async def exposition(self) -> bytes:
        """The child's metrics (empty while it starts or when it does not answer)."""
        try:
            async with asyncio.timeout(SCRAPE_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(self.socket_path)
                try:
                    return await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            return b""

    async def metrics(self) -> bytes:
        """The agent's /metrics: its own metrics, then its checker's."""
        return metrics.exposition(checker=False) + await self.exposition()


# ---------------------------------------------------------------------------
# the child


class _AgentGone(Exception):
    pass


def _read_line(fd: int) -> bytes:
    """The first line on the pipe, read before the event loop starts. A byte at
    a time: a lease update may follow at once, and it belongs to the loop's reader."""
    data = bytearray()
    while not data.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            raise _AgentGone
        data += byte
    return bytes(data)


async def _follow_agent(fd: int, lease: list[int]) -> None:
    """New lease ids from the agent, until the pipe closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    while line := await reader.readline():
        message = json.loads(line)
        if isinstance(message, dict) and isinstance(message.get("lease"), int):
            lease[0] = message["lease"]
    raise _AgentGone


async def _serve_metrics(path: str) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(metrics.checker_exposition())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # an earlier child's
    return await asyncio.start_unix_server(answer, path=path)


async def _check(conf: dict[str, Any], lease: list[int]) -> None:
    from etcdha.checker import Checker, freeze_gc
    from etcdha.checker_worker import follow_config, loop_name, wait_for_config
    from etcdha.spec import ClusterSpec
    from etcdha.store import EtcdError, Store

    settings = EtcdSettings(
        **{**conf["settings"], "endpoints": tuple(conf["settings"]["endpoints"])}
    )
    ks = Keyspace(conf["prefix"], conf["cluster"])
    name = conf["name"]
    async with await Store.connect(settings) as store:
        current, revision = await wait_for_config(store, ks)
        checker = Checker(
            store,
            ks,
            name,
            lambda: current,
            lambda: lease[0],
            checks_dir=Path(conf["checks_dir"]) if conf["checks_dir"] else None,
            role="agent",
            owner_pid=conf["agent_pid"],
        )
        # etcd went back in time (restored, rebuilt): what it holds of our verdicts
        # may be old; write them all again.
        store.on_went_back(lambda why: checker.republish())

        def new_spec(spec: ClusterSpec) -> None:
            nonlocal current
            current = spec
            checker.update(spec)

        checker.update(current)
        if lease[0]:
            try:
                await checker.adopt(lease[0])
            except EtcdError as e:
                log.warning("cannot read the verdicts left under lease %x: %s", lease[0], e)
        freeze_gc()
        server = await _serve_metrics(conf["socket"])
        log.info(
            "checker process of agent %s (pid %d): %d real servers, %s event loop",
            name,
            conf["agent_pid"],
            len(checker.states),
            loop_name(),
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(follow_config(store, ks, revision, new_spec), name="config")
                tg.create_task(checker.run(), name="checker")
        finally:
            server.close()


async def _child(conf: dict[str, Any], fd: int) -> None:
    lease = [int(conf["lease"])]
    work = asyncio.create_task(_check(conf, lease))
    agent = asyncio.create_task(_follow_agent(fd, lease))
    try:
        await asyncio.wait({work, agent}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, agent):
            task.cancel()
        for task in (work, agent):
            with contextlib.suppress(asyncio.CancelledError, _AgentGone):
                await task


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m etcdha.checker_process")
    parser.add_argument("--name", required=True, help="the agent's node name")
    parser.add_argument("--pipe", type=int, required=True, help="descriptor the agent writes to")
    args = parser.parse_args(argv)
    # A terminal's ^C goes to the agent, which then closes the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conf = json.loads(_read_line(args.pipe))
    except _AgentGone:
        return
    logs.setup(conf["log_format"], conf["log_level"])
    if conf.get("nice"):
        with contextlib.suppress(OSError):
            os.nice(conf["nice"])
    from etcdha.checker import loop_factory
    from etcdha.checker_worker import raise_fd_limit

    raise_fd_limit()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_child(conf, args.pipe))


if __name__ == "__main__":
    main()
