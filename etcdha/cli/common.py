"""What every command shares: exit codes, etcd connection flags, output."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import sys
import typing
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from etcdha.keyspace import Keyspace
from etcdha.store import EtcdAuthError, EtcdSettings, EtcdUnavailable, Store, parse_endpoints

T = TypeVar("T")


class Exit(IntEnum):
    OK = 0
    REFUSED = 1  # invalid input, failed check
    USAGE = 2
    CONFLICT = 3  # a concurrent change won
    UNREACHABLE = 4  # etcd did not answer


EXIT_CODES_HELP = (
    "Exit codes: 0 success, 1 refused (invalid input or failed check), 2 usage error, "
    "3 conflict (a concurrent change won), 4 etcd unreachable."
)


def err(message: str) -> None:
    """A diagnostic for people: stderr, never mixed with data on stdout."""
    typer.echo(message, err=True)


def fail(message: str, code: Exit = Exit.REFUSED) -> NoReturn:
    err(message)
    raise typer.Exit(int(code))


def out_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False))


@dataclass(frozen=True)
class Conn:
    """Where a command finds its cluster in etcd."""

    settings: EtcdSettings
    keyspace: Keyspace

    def run(self, body: Callable[[Store], Awaitable[T]]) -> T:
        """Connect, run `body`, close; etcd trouble becomes exit code 4."""

        async def main() -> T:
            async with await Store.connect(self.settings) as store:
                return await body(store)

        try:
            return run_async(main())
        except EtcdUnavailable as e:
            fail(f"etcd unreachable at {', '.join(self.settings.endpoints)}: {e}", Exit.UNREACHABLE)
        except EtcdAuthError as e:
            fail(f"etcd refused our credentials: {e}", Exit.REFUSED)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# Connection flags, named as etcdctl names them, each with an ETCDHA_* variable.
_CONN_PARAMS: list[inspect.Parameter] = [
    inspect.Parameter(
        "endpoints",
        inspect.Parameter.KEYWORD_ONLY,
        default="http://127.0.0.1:2379",
        annotation=Annotated[
            str,
            typer.Option(
                envvar="ETCDHA_ENDPOINTS",
                help="etcd endpoints, comma-separated URLs (http://host:2379,https://...).",
                rich_help_panel="etcd connection",
            ),
        ],
    ),
    *(
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None,
                typer.Option(
                    envvar=f"ETCDHA_{name.upper().replace('-', '_')}",
                    help=text,
                    rich_help_panel="etcd connection",
                ),
            ],
        )
        for name, text in (
            ("cacert", "CA bundle that signed the etcd servers' certificates (enables TLS)."),
            ("cert", "Client certificate for TLS client authentication."),
            ("key", "Private key of the client certificate."),
            ("password_file", "File holding the etcd password for --user (first line)."),
        )
    ),
    inspect.Parameter(
        "user",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                envvar="ETCDHA_USER",
                help="etcd user name (with --password-file).",
                rich_help_panel="etcd connection",
            ),
        ],
    ),
    inspect.Parameter(
        "cluster",
        inspect.Parameter.KEYWORD_ONLY,
        default="default",
        annotation=Annotated[
            str,
            typer.Option(
                envvar="ETCDHA_CLUSTER",
                help="Cluster name: keys live under <prefix>/<cluster>/.",
                rich_help_panel="etcd connection",
            ),
        ],
    ),
    inspect.Parameter(
        "prefix",
        inspect.Parameter.KEYWORD_ONLY,
        default="/etcdha",
        annotation=Annotated[
            str,
            typer.Option(
                envvar="ETCDHA_PREFIX",
                help="Key prefix shared by all etcdha clusters in this etcd.",
                rich_help_panel="etcd connection",
            ),
        ],
    ),
]
_CONN_NAMES = {p.name for p in _CONN_PARAMS}


def _build_conn(values: dict[str, Any]) -> Conn:
    try:
        endpoints = parse_endpoints(values["endpoints"])
    except ValueError as e:
        fail(f"--endpoints: {e}", Exit.USAGE)
    for flag in ("cacert", "cert", "key", "password_file"):
        path = values[flag]
        if path is not None and not path.is_file():
            fail(f"--{flag.replace('_', '-')}: {path} is not a readable file", Exit.USAGE)
    if (values["cert"] is None) != (values["key"] is None):
        fail("--cert and --key go together", Exit.USAGE)
    if values["password_file"] is not None and not values["user"]:
        fail("--password-file needs --user", Exit.USAGE)
    try:
        keyspace = Keyspace(values["prefix"], values["cluster"])
    except ValueError as e:
        fail(f"--prefix/--cluster: {e}", Exit.USAGE)
    settings = EtcdSettings(
        endpoints=endpoints,
        cacert=values["cacert"],
        cert=values["cert"],
        key=values["key"],
        user=values["user"],
        password_file=values["password_file"],
    )
    return Conn(settings, keyspace)


def with_conn(func: Callable[..., T]) -> Callable[..., T]:
    """Give a command the etcd connection flags; it receives them as `conn: Conn`."""
    sig = inspect.signature(func)
    # Resolve string annotations here: typer would look them up in this module.
    hints = typing.get_type_hints(func, include_extras=True)
    params = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in sig.parameters.values()
        if p.name != "conn"
    ]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        values = {name: kwargs.pop(name) for name in list(kwargs) if name in _CONN_NAMES}
        return func(*args, conn=_build_conn(values), **kwargs)

    wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[*params, *_CONN_PARAMS], return_annotation=hints.get("return", None)
    )
    return wrapper


def stdin_is_tty() -> bool:
    return sys.stdin.isatty()
