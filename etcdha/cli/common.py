"""What every command shares: exit codes, etcd connection flags, output."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import socket
import ssl
import time
import typing
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

# gRPC's C core prints its own lines (TLS alerts, "Corruption detected", ...) on
# stderr around our one-sentence diagnostics; it reads this variable once, when
# grpc is first imported, which is just below. GRPC_VERBOSITY=ERROR shows them.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from etcdha.keyspace import Keyspace
from etcdha.store import (
    Endpoint,
    EtcdAuthError,
    EtcdError,
    EtcdSettings,
    EtcdUnavailable,
    Store,
    parse_endpoints,
)

T = TypeVar("T")


class Exit(IntEnum):
    OK = 0
    REFUSED = 1  # invalid input, failed check
    USAGE = 2
    CONFLICT = 3  # a concurrent change won
    UNREACHABLE = 4  # etcd did not answer


EXIT_CODES_HELP = (
    "Exit codes: 0 success, 1 refused (invalid input, failed check, or etcd refused our "
    "credentials or TLS certificate), 2 usage error, 3 conflict (a concurrent change won), "
    "4 etcd unreachable."
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
            causes, refused = diagnose(self.settings)
            where = ", ".join(self.settings.endpoints)
            if refused:
                fail(f"etcd at {where} refused the connection: {'; '.join(causes)}", Exit.REFUSED)
            found = f"{'; '.join(causes)}; " if causes else ""
            fail(f"etcd unreachable at {where}: {found}{e}", Exit.UNREACHABLE)
        except EtcdAuthError as e:
            fail(f"etcd refused our credentials: {e}", Exit.REFUSED)
        except EtcdError as e:
            fail(f"etcd at {', '.join(self.settings.endpoints)}: {e}", Exit.REFUSED)


# -- why an endpoint did not answer
#
# gRPC only says that a channel cannot connect. After a failure, each endpoint
# is probed once, the way the channel would have used it (TCP, then TLS with the
# same files), so that the message names the cause: nothing listening, no
# answer, a server certificate our CA did not sign, a TLS handshake refused for
# want of a client certificate, a TLS server reached with http://.

_PROBE_TIMEOUT = 1.0
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def diagnose(settings: EtcdSettings) -> tuple[list[str], bool]:
    """One sentence per endpoint with a cause found, and whether any is a TLS refusal
    (a matter of certificates, so exit code 1 rather than 4)."""
    endpoints = settings.parsed_endpoints()
    with ThreadPoolExecutor(max_workers=len(endpoints)) as pool:
        found = list(pool.map(lambda ep: _probe(ep, settings), endpoints))
    named = len(endpoints) > 1
    causes = [
        f"{ep}: {cause}" if named else cause
        for ep, (cause, _) in zip(endpoints, found, strict=True)
        if cause
    ]
    return causes, any(refused for _, refused in found)


def _uses_tls(ep: Endpoint, settings: EtcdSettings) -> bool:
    """As the store decides: https://, or no scheme with --cacert or --cert given."""
    return ep.scheme == "https" or (
        ep.scheme is None and (settings.cacert is not None or settings.cert is not None)
    )


def _probe(ep: Endpoint, settings: EtcdSettings) -> tuple[str, bool]:
    deadline = time.monotonic() + _PROBE_TIMEOUT
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=_PROBE_TIMEOUT)
    except ConnectionRefusedError:
        return "connection refused (nothing listens there)", False
    except TimeoutError:
        return f"no answer to a TCP connect within {_PROBE_TIMEOUT:g}s", False
    except OSError as e:
        return f"cannot connect: {e.strerror or e}", False
    with sock:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        if _uses_tls(ep, settings):
            return _probe_tls(ep, settings, sock)
        return _probe_plain(ep, sock)


def _probe_tls(ep: Endpoint, settings: EtcdSettings, sock: socket.socket) -> tuple[str, bool]:
    try:
        context = ssl.create_default_context(
            cafile=str(settings.cacert) if settings.cacert is not None else None
        )
        if settings.cert is not None and settings.key is not None:
            context.load_cert_chain(str(settings.cert), str(settings.key))
    except (OSError, ssl.SSLError) as e:
        return f"cannot use the TLS files (--cacert, --cert, --key): {e}", True
    context.set_alpn_protocols(["h2"])
    try:
        with context.wrap_socket(sock, server_hostname=ep.host) as tls:
            # With TLS 1.3 the server judges our certificate after the handshake:
            # its verdict arrives with the first read.
            tls.sendall(_H2_PREFACE)
            tls.recv(1)
    except ssl.SSLCertVerificationError as e:
        return (
            f"TLS handshake failed: the server's certificate was not accepted "
            f"({e.verify_message}); check --cacert",
            True,
        )
    except ssl.SSLError as e:
        reason = str(e.reason or e)
        if "ALERT" in reason.upper() and "CERTIFICATE" in reason.upper():
            if settings.cert is None:
                return (
                    "TLS handshake refused: etcd requires a client certificate; give --cert "
                    "and --key (or ETCDHA_CERT and ETCDHA_KEY)",
                    True,
                )
            return (
                f"TLS handshake refused: etcd did not accept the client certificate "
                f"{settings.cert} ({reason})",
                True,
            )
        return f"TLS handshake failed: {reason}", True
    except (TimeoutError, OSError):
        return "", False
    return "", False


def _probe_plain(ep: Endpoint, sock: socket.socket) -> tuple[str, bool]:
    """Does a plaintext endpoint answer HTTP/2, or is it a TLS server reached with http://?"""
    try:
        sock.sendall(_H2_PREFACE)
        if sock.recv(1):
            return "", False
    except (TimeoutError, OSError):
        return "", False
    # Closed at once: a TLS listener does that with plaintext. Confirm with a handshake.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((ep.host, ep.port), timeout=_PROBE_TIMEOUT) as again,
            context.wrap_socket(again, server_hostname=ep.host),
        ):
            pass
    except (OSError, ssl.SSLError):
        return "the endpoint closed the connection without answering", False
    return (
        f"the endpoint speaks TLS: write https://{ep.target} and give --cacert "
        "(and --cert/--key if it asks for a client certificate)",
        True,
    )


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# Connection flags, named as etcdctl names them, each with an ETCDHA_* variable.
def _conn_param(name: str, kind: object, default: object, text: str) -> inspect.Parameter:
    """One etcd connection flag, named as etcdctl names it, with its ETCDHA_* variable."""
    option = typer.Option(
        envvar=f"ETCDHA_{name.upper()}", help=text, rich_help_panel="etcd connection"
    )
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option]
    )


_CONN_PARAMS: list[inspect.Parameter] = [
    _conn_param(
        "endpoints",
        str,
        "http://127.0.0.1:2379",
        "etcd endpoints, comma-separated URLs (http://host:2379,https://...).",
    ),
    _conn_param(
        "cacert",
        Path | None,
        None,
        "CA bundle that signed the etcd servers' certificates (enables TLS).",
    ),
    _conn_param("cert", Path | None, None, "Client certificate for TLS client authentication."),
    _conn_param("key", Path | None, None, "Private key of the client certificate."),
    _conn_param(
        "password_file",
        Path | None,
        None,
        "File holding the etcd password for --user (first line).",
    ),
    _conn_param("user", str | None, None, "etcd user name (with --password-file)."),
    _conn_param(
        "dial_timeout",
        float,
        2.0,
        "Seconds to wait for etcd to connect and answer a first request, as etcdctl's "
        "--dial-timeout (a slow link or a loaded etcd host may need more).",
    ),
    _conn_param("cluster", str, "default", "Cluster name: keys live under <prefix>/<cluster>/."),
    _conn_param("prefix", str, "/etcdha", "Key prefix shared by all etcdha clusters in this etcd."),
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
    dial_timeout = values["dial_timeout"]
    if not 0 < dial_timeout <= 300:
        fail(f"--dial-timeout: {dial_timeout:g} is not a number of seconds in (0, 300]", Exit.USAGE)
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
        dial_timeout=dial_timeout,
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
