"""`etcdha agent start|stop`: the director agent."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Annotated

import typer

from etcdha import procs
from etcdha.cli.common import EXIT_CODES_HELP, Conn, Exit, err, fail, run_async, with_conn
from etcdha.store import EtcdUnavailable

app = typer.Typer(
    help="Run the director agent (one per director).\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
)

NodeOpt = Annotated[
    str | None,
    typer.Option(
        envvar="ETCDHA_NODE", help="This node's name, as in the config (default: hostname)."
    ),
]
RunDir = Annotated[
    Path,
    typer.Option(envvar="ETCDHA_RUN_DIR", help="Pid file and fence guard socket live here."),
]


def _pid_file(run_dir: Path, cluster: str, node: str) -> Path:
    return run_dir / f"agent-{cluster}-{node}.pid"


@app.command()
@with_conn
def start(
    node: NodeOpt = None,
    listen: Annotated[
        str,
        typer.Option(
            envvar="ETCDHA_LISTEN",
            help="host:port of the HTTP listener for /metrics, /healthz and /readyz.",
        ),
    ] = "127.0.0.1:9614",
    run_dir: RunDir = Path("/run/etcdha"),
    peer_cacert: Annotated[
        Path | None,
        typer.Option(
            envvar="ETCDHA_PEER_CACERT",
            help="CA that signed the directors' certificates, for failsafe confirmations "
            "between directors (default: --cacert).",
        ),
    ] = None,
    peer_cert: Annotated[
        Path | None,
        typer.Option(
            envvar="ETCDHA_PEER_CERT",
            help="This director's certificate for failsafe confirmations, used both to "
            "serve and to ask (default: --cert).",
        ),
    ] = None,
    peer_key: Annotated[
        Path | None,
        typer.Option(envvar="ETCDHA_PEER_KEY", help="Its private key (default: --key)."),
    ] = None,
    checks_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="ETCDHA_CHECKS_DIR",
            help="Where external check scripts live (default: /usr/lib/etcdha/checks, "
            "else the checks/ directory shipped with etcdha).",
        ),
    ] = None,
    *,
    conn: Conn,
) -> None:
    """Run this director's agent in the foreground until SIGTERM.

    It registers members/NODE under a lease, campaigns for each resource group,
    holds the group's addresses while it leads (announcing them with gratuitous
    ARP / unsolicited NA), and drops them before its lease can expire. If etcd
    does not answer or holds no config yet, it waits (holding nothing) and logs why.

    SIGTERM or SIGINT: hand every group over gracefully, then exit.
    SIGUSR1 (`etcdha agent stop --restart`): exit WITHOUT handing over, for an
    upgrade; an agent started again on this host within the lease TTL reclaims
    the lease and its groups, so the VIP does not move.
    """
    from etcdha.failsafe import TLSFiles
    from etcdha.fence import guard_answers, guard_paths, start_guard

    name = node or socket.gethostname()
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        fail(f"--listen: {listen!r} is not host:port", Exit.USAGE)
    files = (
        peer_cacert or conn.settings.cacert,
        peer_cert or conn.settings.cert,
        peer_key or conn.settings.key,
    )
    tls = TLSFiles(*(Path(f) for f in files)) if all(files) else None  # type: ignore[arg-type]
    run_dir.mkdir(parents=True, exist_ok=True)
    # The fence guard is a Python process of its own: started now, its start-up
    # overlaps the agent's (the imports below, etcd), unless one serves already
    # (it outlives its agent: a restart finds it).
    sock, guard_log = guard_paths(run_dir, conn.keyspace.cluster, name)
    guard = None if guard_answers(sock) else start_guard(sock, log_file=guard_log)

    # The agent pulls in netlink and more; other commands need not pay for it.
    from etcdha.agent import Agent, AgentOptions
    from etcdha.membership import StartupError, Superseded

    opts = AgentOptions(
        node=name,
        listen_host=host.strip("[]"),
        listen_port=int(port),
        run_dir=run_dir,
        peer_tls=tls,
        checks_dir=checks_dir,
        fence_guard=guard,
    )
    pid_file = _pid_file(run_dir, conn.keyspace.cluster, name)
    agent = Agent(conn.settings, conn.keyspace, opts)
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        run_async(agent.run())
    except StartupError as e:
        fail(f"refusing to start: {e}")
    except Superseded as e:
        fail(f"stopped: {e}")
    except EtcdUnavailable as e:
        fail(f"etcd unreachable: {e}", Exit.UNREACHABLE)
    finally:
        if pid_file.exists() and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink()


@app.command()
def stop(
    node: NodeOpt = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Planned restart: stop without handing over; start the agent again "
            "within the lease TTL and nothing moves.",
        ),
    ] = False,
    cluster: Annotated[
        str,
        typer.Option(
            envvar="ETCDHA_CLUSTER",
            help="Cluster name the agent was started with (its pid file is named after it).",
        ),
    ] = "default",
    run_dir: RunDir = Path("/run/etcdha"),
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the agent to exit.")] = 30.0,
) -> None:
    """Stop the agent running on this host (SIGTERM, or SIGUSR1 with --restart)."""
    name = node or socket.gethostname()
    pid_file = _pid_file(run_dir, cluster, name)
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        fail(f"no agent for node {name} here ({pid_file} is missing or unreadable)")
    os.kill(pid, signal.SIGUSR1 if restart else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not procs.pid_running(pid):
            err(f"agent {name} (pid {pid}) stopped")
            return
        time.sleep(0.05)
    fail(f"agent {name} (pid {pid}) still running after {timeout:g}s")
