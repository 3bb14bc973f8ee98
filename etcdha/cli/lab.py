"""`etcdha lab`: the Heartbeat + ldirectord reference setup, failing over on one machine."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from etcdha.lab import launch, uml

T = TypeVar("T")

app = typer.Typer(
    help="The seed's Heartbeat + ldirectord setup (two LVS-NAT directors, two real servers, "
    "a client) in network namespaces with etcd and two agents, on this kernel when it has "
    "IPVS and you are root, else inside user-mode-linux (it says which).",
    no_args_is_help=True,
)

DEADTIME = typer.Option(
    "--deadtime",
    min=2,
    max=60,
    help="Heartbeat's deadtime to import, in seconds (the seed says 30; the lab shortens "
    "it so a killed leader is replaced briskly, and says so). It becomes the lease TTL.",
)


def _run_cancellable(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro`; SIGTERM and SIGHUP cancel it like Ctrl-C, so every cleanup runs."""

    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, task.cancel)
        return await coro

    try:
        return asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("etcdha lab: interrupted; everything it started is removed.", file=sys.stderr)
        raise typer.Exit(130) from None
    except (RuntimeError, OSError) as e:  # a step that could not be done at all
        print(f"etcdha lab: stopped: {e}; everything it started is removed.", file=sys.stderr)
        raise typer.Exit(1) from None


def _say_uml(reason: str) -> None:
    print(
        f"etcdha lab: {reason}; running the lab inside user-mode-linux "
        f"({uml.LINUX}), which has IPVS. Its output follows.",
        flush=True,
    )


@app.command("run")
def run(
    report: Annotated[
        Path | None,
        typer.Option(
            help="Write the JSON report here: each step's expected and observed "
            "outcome, the gaps, the raw timeline."
        ),
    ] = None,
    chart: Annotated[
        Path | None,
        typer.Option(help="Draw VIP ownership and every request over time here (SVG)."),
    ] = None,
    deadtime: Annotated[int, DEADTIME] = 3,
    dwell: Annotated[
        float, typer.Option(min=0.5, help="How long each step is watched once settled (s).")
    ] = 1.5,
) -> None:
    """Run the whole scenario: both directors up; `etcdha standby node1`; stop rs1's web
    server; stop rs2's too; start both; `etcdha online node1`; kill -9 the leading agent;
    start it again. A client sends a request through the VIP every 10 ms throughout;
    the timeline, each step's client-side gap and a summary are printed.

    Exit status 0 when every step showed the client what it should, 1 otherwise."""
    reason = launch.why_not_here()
    if reason is not None:
        _say_uml(reason)
        argv = ["lab", "run", "--deadtime", str(deadtime), "--dwell", str(dwell)]
        files: dict[str, Path] = {}
        guest_files = f"{uml.GUEST_IO}/files"
        if report is not None:
            argv += ["--report", f"{guest_files}/report.json"]
            files["report.json"] = report
        if chart is not None:
            argv += ["--chart", f"{guest_files}/chart.svg"]
            files["chart.svg"] = chart
        try:
            code = launch.run_inside_uml(argv, files)
        except KeyboardInterrupt:
            print("etcdha lab: interrupted; user-mode-linux is stopped.", file=sys.stderr)
            raise typer.Exit(130) from None
        raise typer.Exit(code)

    from etcdha.lab.chart import write_chart
    from etcdha.lab.labrun import LabOptions, run_lab
    from etcdha.lab.report import write_report

    rec = _run_cancellable(run_lab(LabOptions(deadtime=deadtime, dwell=dwell)))
    # Inside user-mode-linux the files go to the host, which names where it put them.
    say = not os.environ.get("ETCDHA_IN_UML")
    if report is not None:
        write_report(rec, report)
        if say:
            print(f"wrote {report}")
    if chart is not None:
        write_chart(rec, chart)
        if say:
            print(f"wrote {chart}")
    raise typer.Exit(0 if rec.ok else 1)


@app.command("shell")
def shell(
    deadtime: Annotated[int, DEADTIME] = 3,
    wait: Annotated[
        bool, typer.Option("--wait", help="Do not start a shell; wait for Ctrl-C or SIGTERM.")
    ] = False,
) -> None:
    """Build the lab, start etcd, both agents and the web servers, print how to look
    around (curl from the client's namespace, ipvsadm, etcdctl), and open a shell
    ($SHELL) there; leaving the shell removes everything.

    Inside user-mode-linux (on a kernel without IPVS) the shell is the guest's console."""
    reason = launch.why_not_here()
    if reason is not None:
        _say_uml(reason)
        print("Type `exit` to leave and stop user-mode-linux.", flush=True)
        code = launch.console_in_uml(["lab", "shell", "--deadtime", str(deadtime)])
        raise typer.Exit(code)

    from etcdha.lab.labrun import LabOptions, run_shell

    command = None
    if not wait and (sys.stdin.isatty() or os.environ.get("ETCDHA_IN_UML")):
        command = [os.environ.get("SHELL") or shutil.which("bash") or "/bin/sh", "-i"]
    code = _run_cancellable(run_shell(LabOptions(deadtime=deadtime), command))
    raise typer.Exit(code)
