"""Real etcd processes for the tests and for ``etcdha lab``.

:class:`EtcdProcess` runs one member of the etcd binary, :class:`EtcdCluster` runs
several that form one cluster. Members listen on free loopback ports unless told
otherwise (``host=`` binds another address, ``wrapper=`` runs the binary through
e.g. ``ip netns exec NS``), keep their data on tmpfs so a slow disk does not cause
etcd elections, and can be stopped, killed, frozen and restarted on the same data;
a member's data can also be saved to a snapshot, restored from one or wiped.

:func:`make_pki` makes a throwaway CA with a server and a client certificate.
It shells out to ``openssl`` (installed by ``scripts/setup.sh``) so the lab needs
no Python dependency beyond the standard library. This module is the one place
that makes certificates.

The methods are synchronous (they poll for health with short sleeps); async code
calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from etcdha.store import EtcdSettings

DEFAULT_ETCD = "/usr/bin/etcd"
DEFAULT_ETCDCTL = "/usr/bin/etcdctl"
_LOG_TAIL_LINES = 30


class EtcdLabError(RuntimeError):
    """An etcd process of the lab could not be started or did not become healthy."""


# ---------------------------------------------------------------------------
# small helpers


def _clean_env() -> dict[str, str]:
    """The environment without ETCD_* / ETCDCTL_* variables that would change flags."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}


@functools.cache
def etcd_flags(binary: str = DEFAULT_ETCD) -> frozenset[str]:
    """The long flags that ``binary --help`` lists (cached per binary)."""
    try:
        out = subprocess.run(
            [binary, "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            env=_clean_env(),
            check=False,
        )
    except OSError as exc:
        raise EtcdLabError(f"cannot run {binary}: {exc}") from exc
    return frozenset(re.findall(r"(--[a-z0-9][a-z0-9-]*)", out.stdout + out.stderr))


_handed_out: set[tuple[str, int]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now and was not handed out before by this process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if (host, port) not in _handed_out:
            _handed_out.add((host, port))
            return port
    raise EtcdLabError(f"no free port on {host}")


def scratch_dir(prefix: str = "etcdha-lab-") -> Path:
    """A new private directory on tmpfs (/dev/shm) when there is one, else in the temp dir."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def url_host(host: str) -> str:
    """``host`` as written in a URL: IPv6 literals get brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------
# certificates


_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = etcdha-lab

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @alt_names

[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[alt_names]
"""


@dataclass(frozen=True)
class Pki:
    """Files of a throwaway certificate authority (PEM, EC P-256 keys)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    days: int = 7

    def issue_client(self, name: str, common_name: str) -> tuple[Path, Path]:
        """Issue another client certificate; returns (cert, key) paths.

        etcd takes the common name as the user name when a client authenticates
        with a certificate and auth is enabled.
        """
        return _issue(self, name, common_name, "v3_client")


def _openssl(args: Sequence[str], cwd: Path) -> None:
    try:
        subprocess.run(
            ["openssl", *args],
            cwd=cwd,
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError as exc:
        raise EtcdLabError("openssl is not installed (scripts/setup.sh installs it)") from exc
    except subprocess.CalledProcessError as exc:
        raise EtcdLabError(f"openssl {args[0]} failed: {exc.stderr.strip()}") from exc


_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _issue(pki: Pki, name: str, common_name: str, extensions: str) -> tuple[Path, Path]:
    d = pki.directory
    cert, key, csr = d / f"{name}.crt", d / f"{name}.key", d / f"{name}.csr"
    _openssl(
        [
            *("req", "-new", "-config", "openssl.cnf", *_EC_KEY),
            *("-keyout", key.name, "-out", csr.name, "-subj", f"/CN={common_name}"),
        ],
        d,
    )
    _openssl(
        [
            *("x509", "-req", "-in", csr.name, "-CA", pki.ca_cert.name, "-CAkey", pki.ca_key.name),
            *("-set_serial", f"0x{secrets.token_hex(8)}", "-days", str(pki.days)),
            *("-extfile", "openssl.cnf", "-extensions", extensions, "-out", cert.name),
        ],
        d,
    )
    csr.unlink()
    return cert, key


def make_pki(
    directory: Path,
    hosts: Sequence[str] = ("127.0.0.1", "::1", "localhost"),
    *,
    client_cn: str = "etcdha-client",
    days: int = 7,
) -> Pki:
    """Make a CA, a server certificate valid for ``hosts`` and one client certificate.

    ``hosts`` may mix IP addresses and DNS names; they become the server
    certificate's subject alternative names. The server certificate may also
    act as a client (etcd uses it so for its own gateway connections).
    """
    directory.mkdir(parents=True, exist_ok=True)
    alt: list[str] = []
    n_ip = n_dns = 0
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            n_dns += 1
            alt.append(f"DNS.{n_dns} = {host}")
        else:
            n_ip += 1
            alt.append(f"IP.{n_ip} = {host}")
    (directory / "openssl.cnf").write_text(_OPENSSL_CONFIG + "\n".join(alt) + "\n")
    _openssl(
        [
            *("req", "-x509", "-new", "-config", "openssl.cnf", "-extensions", "v3_ca", *_EC_KEY),
            *("-keyout", "ca.key", "-out", "ca.crt", "-days", str(days)),
            *("-subj", "/CN=etcdha lab CA"),
        ],
        directory,
    )
    pki = Pki(
        directory=directory,
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        days=days,
    )
    _issue(pki, "server", "etcd-server", "v3_server")
    _issue(pki, "client", client_cn, "v3_client")
    return pki


# ---------------------------------------------------------------------------
# processes


_live: set[EtcdProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(Exception):
            proc.kill()


class EtcdProcess:
    """One etcd member running as a child process.

    Arguments:
        name: member name (also names its log file).
        host: address the client and peer listeners bind to.
        client_port / peer_port: fixed ports; free ones are picked when omitted.
        base_dir: directory for ``data/`` and the log; a new one on tmpfs when
            omitted (then removed by :meth:`close`).
        tls: serve clients over TLS with this PKI's server certificate.
        client_cert_auth: with ``tls``, require a client certificate signed by the CA.
        initial_cluster: ``name=peer_url,...`` for a member of a larger cluster.
        progress_notify_interval: etcd's watch progress notification interval
            (e.g. ``"1s"``; etcd's default is 10 minutes).
        wrapper: command prefix, e.g. ``["ip", "netns", "exec", "ns1"]``.
    """

    def __init__(
        self,
        name: str = "etcd0",
        *,
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        base_dir: Path | None = None,
        tls: Pki | None = None,
        client_cert_auth: bool = True,
        initial_cluster: str | None = None,
        cluster_token: str = "etcdha-lab",
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        progress_notify_interval: str | None = None,
        binary: str = DEFAULT_ETCD,
        wrapper: Sequence[str] = (),
        extra_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.host = host
        self.client_port = client_port if client_port is not None else free_port(host)
        self.peer_port = peer_port if peer_port is not None else free_port(host)
        self._owns_dir = base_dir is None
        self.base_dir = base_dir if base_dir is not None else scratch_dir(f"etcdha-{name}-")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / f"{name}.log"
        self.tls = tls
        self.client_cert_auth = client_cert_auth
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.cluster_token = cluster_token
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.progress_notify_interval = progress_notify_interval
        self.binary = binary
        self.wrapper = tuple(wrapper)
        self.extra_args = tuple(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- addresses

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{url_host(self.host)}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.peer_port}"

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Client URLs, in the form ``etcdha --endpoints`` and etcdctl take."""
        return (self.client_url,)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The full command line :meth:`start` runs."""
        flags = etcd_flags(self.binary)
        args = [
            *self.wrapper,
            self.binary,
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.client_url,
            "--advertise-client-urls",
            self.client_url,
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            self.cluster_token,
            "--heartbeat-interval",
            str(self.heartbeat_ms),
            "--election-timeout",
            str(self.election_ms),
        ]
        if "--logger" in flags:
            args += ["--logger", "zap", "--log-outputs", "stderr"]
        if "--log-level" in flags:
            args += ["--log-level", "warn"]
        if "--unsafe-no-fsync" in flags:
            args.append("--unsafe-no-fsync")
        if (
            self.progress_notify_interval
            and "--experimental-watch-progress-notify-interval" in flags
        ):
            args += ["--experimental-watch-progress-notify-interval", self.progress_notify_interval]
        if self.tls is not None:
            args += [
                "--cert-file",
                str(self.tls.server_cert),
                "--key-file",
                str(self.tls.server_key),
                "--trusted-ca-file",
                str(self.tls.ca_cert),
            ]
            if self.client_cert_auth:
                args.append("--client-cert-auth")
        args += self.extra_args
        return args

    # -- lifecycle

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> None:
        """Start the member (on its existing data dir, if any); by default wait until healthy."""
        if self.running:
            raise EtcdLabError(f"etcd {self.name} is already running")
        self._close_log()
        self._log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_clean_env(),
            )
        except OSError as exc:
            self._close_log()
            raise EtcdLabError(f"cannot start {self.binary}: {exc}") from exc
        _live.add(self)
        if wait:
            self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Wait until the member answers /health with a leader; raise EtcdLabError if not."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                rc = None if self._proc is None else self._proc.returncode
                raise EtcdLabError(
                    f"etcd {self.name} is not running (exit code {rc}); log:\n"
                    + _tail(self.log_path)
                )
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise EtcdLabError(
                    f"etcd {self.name} not healthy after {timeout:.0f}s; log:\n"
                    + _tail(self.log_path)
                )
            time.sleep(0.05)

    def healthy(self, timeout: float = 1.0) -> bool:
        """One GET of /health: True when the member serves and sees a leader."""
        context: ssl.SSLContext | None = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            with urllib.request.urlopen(
                f"{self.client_url}/health", timeout=timeout, context=context
            ) as resp:
                body = json.loads(resp.read() or b"{}")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return isinstance(body, dict) and body.get("health") in ("true", True)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``. Keeps the data dir."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGCONT)  # a paused member must run to exit
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL (kill -9). Keeps the data dir."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        self._reap()

    def pause(self) -> None:
        """SIGSTOP: the member freezes with its sockets open."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self, *, wait: bool = True, timeout: float = 20.0) -> None:
        """Stop (if running) and start again on the same data dir and ports."""
        self.stop()
        self.start(wait=wait, timeout=timeout)

    def close(self) -> None:
        """Stop and remove the data dir if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)

    # -- data: snapshots, restores, rebuilds

    def snapshot(self, path: Path) -> None:
        """Save a snapshot of this running member's store to ``path`` (etcdctl snapshot save)."""
        if not self.running:
            raise EtcdLabError(f"etcd {self.name} must be running to take a snapshot")
        self.etcdctl("snapshot", "save", str(path))

    def restore(self, path: Path, token: str | None = None) -> None:
        """Replace this stopped member's data with the snapshot at ``path``.

        Runs ``etcdctl snapshot restore`` with the member's name, peer URL and
        initial cluster, as an operator restoring a backup would. The cluster
        token stays the member's own unless ``token`` is given; a new token gives
        the restored cluster a new cluster id (and the member a new member id),
        the same token keeps both. The member must be stopped; :meth:`start`
        then runs it on the restored data.
        """
        if self.running:
            raise EtcdLabError(f"etcd {self.name} must be stopped before a restore")
        if token is not None:
            self.cluster_token = token
        shutil.rmtree(self.data_dir, ignore_errors=True)
        run_etcdctl(
            self.endpoints,
            [
                *("snapshot", "restore", str(path)),
                *("--name", self.name, "--data-dir", str(self.data_dir)),
                *("--initial-cluster", self.initial_cluster),
                *("--initial-cluster-token", self.cluster_token),
                *("--initial-advertise-peer-urls", self.peer_url),
            ],
        )

    def wipe(self) -> None:
        """Delete this stopped member's data, so that :meth:`start` builds an empty store.

        With the same name, peer URL and token the rebuilt member gets the same
        member id and, alone in its cluster, the same cluster id; its revision
        starts again at 1. Wipe every member of a larger cluster before starting
        any of them again.
        """
        if self.running:
            raise EtcdLabError(f"etcd {self.name} must be stopped before its data is wiped")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _reap(self) -> None:
        _live.discard(self)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- etcdctl

    def etcdctl(
        self,
        *args: str,
        user: str | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run etcdctl (API v3) against this member; ``user`` is ``name:password``."""
        return run_etcdctl(
            self.endpoints, args, tls=self.tls, user=user, check=check, timeout=timeout
        )

    def __enter__(self) -> EtcdProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EtcdProcess {self.name} {self.client_url} {state}>"


def run_etcdctl(
    endpoints: Sequence[str],
    args: Sequence[str],
    *,
    tls: Pki | None = None,
    user: str | None = None,
    check: bool = True,
    timeout: float = 30.0,
    etcdctl: str = DEFAULT_ETCDCTL,
) -> subprocess.CompletedProcess[str]:
    """Run ``etcdctl`` (API v3) with the lab's endpoints and TLS files."""
    cmd = [etcdctl, "--endpoints", ",".join(endpoints), "--dial-timeout", "3s"]
    if tls is not None:
        cmd += [
            "--cacert",
            str(tls.ca_cert),
            "--cert",
            str(tls.client_cert),
            "--key",
            str(tls.client_key),
        ]
    if user is not None:
        cmd += ["--user", user]
    cmd += list(args)
    env = _clean_env()
    env["ETCDCTL_API"] = "3"
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if check and result.returncode != 0:
        raise EtcdLabError(
            f"etcdctl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


@dataclass(frozen=True)
class EtcdServer:
    """An etcd to connect to: its endpoints, and the process and PKI when the lab runs it."""

    endpoints: tuple[str, ...]
    process: EtcdProcess | None = None
    pki: Pki | None = None

    def settings(self, **overrides: Any) -> EtcdSettings:
        """Store settings for this etcd (with the PKI's client certificate); fields overridable."""
        base = EtcdSettings(endpoints=self.endpoints)
        if self.pki is not None:
            base = replace(
                base,
                cacert=self.pki.ca_cert,
                cert=self.pki.client_cert,
                key=self.pki.client_key,
            )
        return replace(base, **overrides)


class EtcdCluster:
    """``size`` etcd members forming one cluster (all on ``host`` unless ``hosts`` is given)."""

    def __init__(
        self,
        size: int = 3,
        *,
        host: str = "127.0.0.1",
        hosts: Sequence[str] | None = None,
        tls: Pki | None = None,
        base_dir: Path | None = None,
        name_prefix: str = "etcd",
        client_cert_auth: bool = True,
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        progress_notify_interval: str | None = None,
        binary: str = DEFAULT_ETCD,
    ) -> None:
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        if hosts is not None and len(hosts) != size:
            raise ValueError("hosts must name one address per member")
        self._owns_dir = base_dir is None
        self.base_dir = base_dir if base_dir is not None else scratch_dir("etcdha-cluster-")
        member_hosts = list(hosts) if hosts is not None else [host] * size
        names = [f"{name_prefix}{i}" for i in range(size)]
        peer_ports = [free_port(h) for h in member_hosts]
        initial = ",".join(
            f"{n}=http://{url_host(h)}:{p}"
            for n, h, p in zip(names, member_hosts, peer_ports, strict=True)
        )
        token = f"etcdha-lab-{secrets.token_hex(4)}"
        self.members: list[EtcdProcess] = [
            EtcdProcess(
                n,
                host=h,
                peer_port=p,
                base_dir=self.base_dir / n,
                tls=tls,
                initial_cluster=initial,
                cluster_token=token,
                client_cert_auth=client_cert_auth,
                heartbeat_ms=heartbeat_ms,
                election_ms=election_ms,
                progress_notify_interval=progress_notify_interval,
                binary=binary,
            )
            for n, h, p in zip(names, member_hosts, peer_ports, strict=True)
        ]
        self.tls = tls

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(m.client_url for m in self.members)

    def __iter__(self) -> Iterator[EtcdProcess]:
        return iter(self.members)

    def __getitem__(self, index: int) -> EtcdProcess:
        return self.members[index]

    def __len__(self) -> int:
        return len(self.members)

    def start(self, *, timeout: float = 30.0) -> None:
        """Start every member, then wait until each is healthy."""
        for member in self.members:
            if not member.running:
                member.start(wait=False)
        deadline = time.monotonic() + timeout
        for member in self.members:
            member.wait_healthy(max(1.0, deadline - time.monotonic()))

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def close(self) -> None:
        for member in self.members:
            member.close()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def etcdctl(
        self,
        *args: str,
        user: str | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        running = [m.client_url for m in self.members if m.running] or list(self.endpoints)
        return run_etcdctl(running, args, tls=self.tls, user=user, check=check, timeout=timeout)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EtcdCluster {', '.join(self.endpoints)}>"
