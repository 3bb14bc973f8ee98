"""How to reach etcd: endpoints (parsed and checked), TLS files, credentials."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from etcdha.etcd_errors import EtcdError

DEFAULT_PORT = 2379
DEFAULT_ENDPOINT = "http://127.0.0.1:2379"

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\Z")


@dataclass(frozen=True)
class Endpoint:
    """One parsed endpoint; ``scheme`` is None when the URL had none."""

    scheme: str | None
    host: str
    port: int

    @property
    def target(self) -> str:
        """The gRPC target (its DNS resolver also takes IP literals)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.target}" if self.scheme else self.target


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``[http://|https://]host[:port]``; IPv6 literals in brackets. Port defaults to 2379."""
    raw = text.strip()
    if not raw:
        raise ValueError("empty etcd endpoint")
    scheme: str | None = None
    rest = raw
    if "://" in raw:
        scheme, _, rest = raw.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(
                f"etcd endpoint {raw!r}: unsupported scheme {scheme!r} (use http:// or https://)"
            )
    rest = rest.rstrip("/")
    if any(c in rest for c in "/?#@ "):
        raise ValueError(f"etcd endpoint {raw!r}: expected [scheme://]host[:port], nothing more")
    port_text = ""
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise ValueError(f"etcd endpoint {raw!r}: missing ']' after the IPv6 address")
        host, tail = rest[1:close], rest[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"etcd endpoint {raw!r}: {host!r} is not an IPv6 address") from None
        if tail:
            if not tail.startswith(":"):
                raise ValueError(f"etcd endpoint {raw!r}: expected ':port' after ']'")
            port_text = tail[1:]
    else:
        if rest.count(":") > 1:
            raise ValueError(
                f"etcd endpoint {raw!r}: write IPv6 addresses in brackets, e.g. [::1]:2379"
            )
        host, sep, port_text = rest.partition(":")
        if sep and not port_text:
            raise ValueError(f"etcd endpoint {raw!r}: empty port")
        if not host:
            raise ValueError(f"etcd endpoint {raw!r}: missing host")
        if not _HOSTNAME_RE.match(host):
            raise ValueError(f"etcd endpoint {raw!r}: {host!r} is not a valid host name")
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"etcd endpoint {raw!r}: port must be a number from 1 to 65535")
        port = int(port_text)
    return Endpoint(scheme, host, port)


def parse_endpoints(text: str) -> tuple[str, ...]:
    """Parse a comma-separated endpoint list (etcdctl's --endpoints form) into normalized URLs."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise ValueError("no etcd endpoint given")
    if any(not item for item in items):
        raise ValueError(f"empty entry in etcd endpoint list {text!r}")
    result: list[str] = []
    for item in items:
        normalized = str(parse_endpoint(item))
        if normalized in result:
            raise ValueError(f"etcd endpoint {item!r} is listed twice")
        result.append(normalized)
    return tuple(result)


@dataclass(frozen=True)
class EtcdSettings:
    """How to reach etcd. Field names follow etcdctl's flags.

    ``endpoints``: URLs such as ``http://127.0.0.1:2379``, ``https://etcd1:2379`` or
    ``[::1]:2379``; an endpoint without a scheme uses TLS when ``cacert`` or
    ``cert`` is set. ``user`` is ``name`` (password read from ``password_file``)
    or etcdctl's ``name:password``. Timeouts are in seconds: ``dial_timeout``
    bounds connecting, ``request_timeout`` each request including retries.
    """

    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    cacert: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None
    user: str | None = field(default=None, repr=False)
    password_file: str | Path | None = None
    dial_timeout: float = 2.0
    request_timeout: float = 5.0
    keepalive_time: float = 6.0

    def __post_init__(self) -> None:
        if isinstance(self.endpoints, str):
            raise TypeError("EtcdSettings.endpoints is a tuple; use parse_endpoints() for a string")
        if not self.endpoints:
            raise ValueError("no etcd endpoint given")
        for endpoint in self.endpoints:
            parse_endpoint(endpoint)
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        if self.password_file is not None and not self.user:
            raise ValueError("password_file needs a user")
        if self.dial_timeout <= 0 or self.request_timeout <= 0:
            raise ValueError("timeouts must be positive")
        # etcd refuses gRPC pings more often than every 5 s (--grpc-keepalive-min-time).
        if self.keepalive_time < 5:
            raise ValueError("keepalive_time must be at least 5 seconds")

    def parsed_endpoints(self) -> list[Endpoint]:
        return [parse_endpoint(e) for e in self.endpoints]


def _read_tls_files(
    s: EtcdSettings,
) -> tuple[bytes | None, bytes | None, bytes | None]:
    def read(path: str | Path | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise EtcdError(f"cannot read the {what} {path}: {exc.strerror}") from None

    return read(s.cacert, "CA certificate"), read(s.cert, "certificate"), read(s.key, "key")


def _read_password(path: str | Path) -> str:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise EtcdError(f"cannot read the password file {path}: {exc.strerror}") from None
    return text.rstrip("\r\n")
