"""The external checks shipped in checks/, against real servers on loopback.

PostgreSQL (Debian's postgresql-15), MariaDB (mariadb-server) and OpenLDAP
(slapd) are the real daemons, each started in a scratch directory on a free
port and stopped at the end. SMTP uses a small server written here: Debian's
exim4 would replace the machine's MTA and needs its whole configuration and
spool to start, while the check only reads the greeting, says EHLO and QUIT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdha import probes
from etcdha.lab.etcd_process import free_port
from etcdha.probes import Target
from etcdha.spec import Check

pytestmark = pytest.mark.netns

CHECKS = Path(__file__).resolve().parents[2] / "checks"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def run_check(command: str, port: int, **check: object) -> probes.Result:
    c = Check(type="external", command=command, **check)
    t = Target(
        "127.0.0.1",
        port,
        check=c,
        request=c.request,
        receive=c.receive,
        timeout=5.0,
        virtual_address="192.0.2.200",
        virtual_port=port,
        real_port=port,
        checks_dir=CHECKS,
    )
    return asyncio.run(probes.run("external", t))


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def daemon(argv: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_port(port, proc)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        proc.wait()


@pytest.fixture
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="etcdha-checks-", dir="/dev/shm"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def need(*paths: str) -> None:
    for p in paths:
        if not (Path(p).exists() or shutil.which(p)):
            pytest.skip(f"{p} is not installed (scripts/setup.sh installs it)")


def test_scripts_are_executable_and_answer_usage() -> None:
    for name in ("mysql", "pgsql", "smtp", "ldap"):
        path = CHECKS / name
        assert os.access(path, os.X_OK), path
        done = subprocess.run([str(path)], capture_output=True, text=True, timeout=10)
        assert done.returncode == 3 and done.stdout.startswith("UNKNOWN"), done


def test_pgsql(scratch: Path) -> None:
    need(str(PG_BIN / "postgres"), "runuser")
    data, pwfile, port = scratch / "data", scratch / "pw", free_port()
    pwfile.write_text("s3cret\n")
    shutil.chown(scratch, "postgres")
    shutil.chown(pwfile, "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_pg, str(PG_BIN / "initdb"), "-D", str(data), "-U", "monitor", "-A", "scram-sha-256",
         f"--pwfile={pwfile}", "--no-sync", "--no-instructions"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = [*as_pg, str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k",
              str(scratch), "-c", "listen_addresses=127.0.0.1", "-F",
              # Shared memory segments in the data folder, which goes with the
              # test: a killed server leaves nothing behind in /dev/shm.
              "-c", "dynamic_shared_memory_type=mmap"]  # fmt: skip
    with daemon(server, port):
        ok = dict(login="monitor", password="s3cret", database="postgres", request="SELECT 1")
        r = run_check("pgsql", port, **ok)
        assert r.ok, r
        assert r.detail == "pgsql exit 0: OK - 127.0.0.1:" + f"{port}: 1 row(s)"
        r = run_check("pgsql", port, **{**ok, "password": "wrong"})
        assert not r.ok and "password authentication failed" in r.detail, r
        r = run_check("pgsql", port, **{**ok, "request": "SELECT 1 WHERE false"})
        assert not r.ok and "no rows" in r.detail, r
        r = run_check("pgsql", port, **{**ok, "request": "SELECT nonsense"})
        assert not r.ok and "nonsense" in r.detail, r
    assert not run_check("pgsql", port, **ok).ok  # stopped: down


def test_mysql(scratch: Path) -> None:
    need("mariadb-install-db", "mariadbd", "mariadb")
    data, sock, port = scratch / "data", scratch / "sock", free_port()
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
         "--auth-root-authentication-method=normal", "--skip-test-db"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    server = ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={sock}",
              f"--port={port}", "--bind-address=127.0.0.1", "--user=root", "--skip-log-bin",
              "--innodb-buffer-pool-size=16M", f"--pid-file={scratch}/pid"]  # fmt: skip
    with daemon(server, port):
        subprocess.run(
            ["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root", "-e",
             "CREATE USER 'monitor'@'%' IDENTIFIED BY 's3cret'; "
             "CREATE DATABASE pool; CREATE TABLE pool.up (n INT); INSERT INTO pool.up VALUES (1);"
             "GRANT SELECT ON pool.* TO 'monitor'@'%';"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        ok = dict(login="monitor", password="s3cret", database="pool", request="SELECT * FROM up")
        r = run_check("mysql", port, **ok)
        assert r.ok, r
        r = run_check("mysql", port, **{**ok, "password": "wrong"})
        assert not r.ok and "Access denied" in r.detail, r
        r = run_check("mysql", port, **{**ok, "request": "SELECT * FROM up WHERE n = 2"})
        assert not r.ok and "no rows" in r.detail, r
    assert not run_check("mysql", port, **ok).ok


def test_ldap(scratch: Path) -> None:
    need("slapd", "slapadd", "/usr/lib/ldap/back_mdb.so")
    port = free_port()
    (scratch / "db").mkdir()
    conf = scratch / "slapd.conf"
    conf.write_text(
        "include /etc/ldap/schema/core.schema\n"
        "modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
        f"pidfile {scratch}/slapd.pid\n"
        "database mdb\nsuffix \"dc=example,dc=org\"\n"
        "rootdn \"cn=admin,dc=example,dc=org\"\nrootpw s3cret\n"
        f"directory {scratch}/db\nmaxsize 10485760\n"
    )  # fmt: skip
    ldif = scratch / "base.ldif"
    ldif.write_text(
        "dn: dc=example,dc=org\nobjectClass: dcObject\nobjectClass: organization\n"
        "o: Example\ndc: example\n"
    )
    subprocess.run(["slapadd", "-f", str(conf), "-l", str(ldif)], check=True,
                   capture_output=True, timeout=30)  # fmt: skip
    with daemon(["slapd", "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/", "-d", "0"], port):
        r = run_check("ldap", port, request="dc=example,dc=org", receive="^dc=example")
        assert r.ok and r.detail.endswith("dc=example,dc=org"), r
        admin = dict(login="cn=admin,dc=example,dc=org", request="dc=example,dc=org")
        assert run_check("ldap", port, **admin, password="s3cret").ok
        r = run_check("ldap", port, **admin, password="wrong")
        assert not r.ok and "bind failed (49" in r.detail, r
        r = run_check("ldap", port, request="dc=nowhere,dc=org")
        assert not r.ok, r
        r = run_check("ldap", port, request="dc=example,dc=org", receive="^ou=")
        assert not r.ok and "does not match" in r.detail, r
    assert not run_check("ldap", port, request="dc=example,dc=org").ok


class _SMTP(asyncio.Protocol):
    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.greeting)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for line in data.decode().splitlines():
            verb = line.split(" ")[0].upper()
            if verb in ("EHLO", "HELO"):
                self.transport.write(b"250-test.example.org\r\n250 SIZE 1000\r\n")  # type: ignore[attr-defined]
            elif verb == "QUIT":
                self.transport.write(b"221 bye\r\n")  # type: ignore[attr-defined]
                self.transport.close()
            else:
                self.transport.write(b"500 what\r\n")  # type: ignore[attr-defined]


async def _smtp_cases() -> None:
    loop = asyncio.get_running_loop()
    good = await loop.create_server(lambda: _SMTP(b"220 test ESMTP\r\n"), "127.0.0.1", 0)
    busy = await loop.create_server(lambda: _SMTP(b"554 go away\r\n"), "127.0.0.1", 0)
    try:
        gport, bport = (s.sockets[0].getsockname()[1] for s in (good, busy))

        async def check(port: int) -> probes.Result:
            t = Target("127.0.0.1", port, check=Check(type="external", command="smtp"),
                       timeout=3.0, real_port=port, checks_dir=CHECKS)  # fmt: skip
            return await probes.run("external", t)

        r = await check(gport)
        assert r.ok and "answered EHLO" in r.detail, r
        r = await check(bport)
        assert not r.ok and r.detail.startswith("smtp exit 2: CRITICAL"), r
    finally:
        good.close()
        busy.close()
    r = await check(gport)
    assert not r.ok and "refused" in r.detail.lower(), r


def test_smtp() -> None:
    asyncio.run(_smtp_cases())
