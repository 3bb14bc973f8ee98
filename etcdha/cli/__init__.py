"""The `etcdha` command line (typer)."""

from __future__ import annotations

from typing import Annotated

import typer

from etcdha import __version__, logs
from etcdha.cli import admin, agent, checker, config, drain, lab, render, status
from etcdha.cli.common import EXIT_CODES_HELP

app = typer.Typer(
    help="etcdha: high availability for Linux Virtual Server directors on etcd leases.\n\n"
    "Directors compete for leased leader keys in etcd; the leader holds the VIP, the DIP "
    "and the IPVS table. The cluster spec, health verdicts and leadership all live under "
    "<prefix>/<cluster>/ in etcd, readable with etcdctl.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
app.add_typer(config.app, name="config")
app.add_typer(agent.app, name="agent")
app.add_typer(checker.app, name="checker")
app.add_typer(lab.app, name="lab")
app.command("status")(status.status)
app.command("standby")(admin.standby)
app.command("online")(admin.online)
app.command("takeover")(admin.takeover)
app.command("events")(admin.events)
app.command("render")(render.render)
app.command("drain")(drain.drain)
app.command("undrain")(drain.undrain)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"etcdha {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    log_format: Annotated[
        logs.LogFormat,
        typer.Option(
            envvar="ETCDHA_LOG_FORMAT",
            help="Logs on stderr: 'text' (one sentence per decision) or 'json' (one object "
            "per line).",
        ),
    ] = "text",
    log_level: Annotated[
        str, typer.Option(envvar="ETCDHA_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    logs.setup(log_format, log_level)


def main() -> None:
    app()
