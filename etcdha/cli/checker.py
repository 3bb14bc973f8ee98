"""`etcdha checker start`: a checker-only worker, on any host that reaches the reals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from pathlib import Path
from typing import Annotated

import typer

from etcdha.cli.common import EXIT_CODES_HELP, Conn, Exit, fail, with_conn
from etcdha.keyspace import is_valid_name
from etcdha.store import EtcdError, EtcdUnavailable

# The checker (its probes, netlink for ping) is imported by the command that
# runs it: every other command starts faster without it.

app = typer.Typer(
    help="Run a checker-only worker: it probes the real servers of the stored config and "
    "publishes its verdicts under health/<name>/, bound to a lease of its own.\n\n"
    + EXIT_CODES_HELP,
    no_args_is_help=True,
)


async def _main(conn: Conn, name: str, checks_dir: Path, listen: tuple[str, int] | None) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    from etcdha.checker_worker import run_standalone

    with contextlib.suppress(asyncio.CancelledError):
        await run_standalone(
            conn.settings, conn.keyspace, name, checks_dir=checks_dir, listen=listen
        )


@app.command()
@with_conn
def start(
    name: Annotated[
        str | None,
        typer.Option(
            envvar="ETCDHA_CHECKER_NAME",
            help="Checker name: its keys are health/NAME/... (default: the host name).",
        ),
    ] = None,
    checks_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="ETCDHA_CHECKS_DIR",
            help="Where external checks live (default: /usr/lib/etcdha/checks, else the "
            "checks/ folder of a source checkout).",
        ),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(
            envvar="ETCDHA_CHECKER_LISTEN",
            help="host:port serving /metrics, /healthz and /readyz (default: none).",
        ),
    ] = None,
    *,
    conn: Conn,
) -> None:
    """Probe the real servers of the stored config until SIGTERM.

    Verdicts are written only when they change; stopping revokes the worker's
    lease, so its verdicts leave etcd with it. A name held by another live checker
    (a worker or an agent, whose checker is named after its node) is refused with
    exit code 1; one left by a crashed worker on this host is taken over.

    It runs on uvloop's event loop when uvloop is installed (ETCDHA_UVLOOP=0:
    the standard loop).
    """
    from etcdha.checker import CheckerNameInUse, default_checks_dir, loop_factory
    from etcdha.checker_worker import raise_fd_limit

    checker = name or socket.gethostname().split(".")[0]
    if not is_valid_name(checker):
        fail(f"--name: {checker!r} is not a valid checker name", Exit.USAGE)
    where: tuple[str, int] | None = None
    if listen is not None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            fail(f"--listen: {listen!r} is not host:port", Exit.USAGE)
        where = (host.strip("[]"), int(port))
    directory = checks_dir or default_checks_dir()
    if not directory.is_dir():
        fail(f"--checks-dir: {directory} is not a directory", Exit.USAGE)
    raise_fd_limit()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_main(conn, checker, directory, where))
    except CheckerNameInUse as e:
        fail(f"refusing to start: {e}")
    except EtcdUnavailable as e:
        fail(f"etcd unreachable: {e}", Exit.UNREACHABLE)
    except EtcdError as e:
        fail(f"etcd refused: {e}")
