"""Shared fixtures: real etcd (tier 2) and a connected Store.

* ``etcd``: one member shared by the whole session and wiped (all keys deleted)
  after each test. It is testcontainers' etcd container when a Docker engine
  answers, else the local etcd binary (set ETCDHA_TEST_ETCD=binary to force it).
* ``etcd_process``: a fresh local member for one test, for tests that stop,
  kill or reconfigure it (auth, restart).
* ``etcd_tls``: a local member serving TLS that requires a client certificate.
* ``etcd_cluster3``: three local members forming one cluster, for one test.
* ``keyspace`` / ``prefix``: a cluster name and key prefix unique to the test.
* ``store``: a Store connected to ``etcd``.

Members keep their data on tmpfs and use short raft timers (see
etcdha.lab.etcd_process).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from etcdha.keyspace import Keyspace
from etcdha.lab.directors import DirectorLab
from etcdha.lab.etcd_process import (
    DEFAULT_ETCD,
    EtcdCluster,
    EtcdProcess,
    EtcdServer,
    Pki,
    make_pki,
    run_etcdctl,
    scratch_dir,
)
from etcdha.store import Store

ETCD_IMAGE = "quay.io/coreos/etcd:v3.5.17"
# etcd's default is 10 minutes; a short interval lets tests see progress notifications.
PROGRESS_INTERVAL = "1s"


def _need_etcd_binary() -> None:
    if not os.access(DEFAULT_ETCD, os.X_OK):
        message = f"{DEFAULT_ETCD} is not installed (scripts/setup.sh installs etcd-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _docker_answers() -> bool:
    if os.environ.get("ETCDHA_TEST_ETCD", "") == "binary":
        return False
    try:
        import docker  # type: ignore[import-untyped,unused-ignore]

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def _etcd_container() -> Iterator[EtcdServer]:
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(ETCD_IMAGE)
        .with_exposed_ports(2379)
        .with_command(
            "etcd --name t --data-dir /tmp/etcd"
            " --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://0.0.0.0:2379"
            " --heartbeat-interval 50 --election-timeout 500 --unsafe-no-fsync"
            f" --experimental-watch-progress-notify-interval {PROGRESS_INTERVAL}"
        )
    )
    with container:
        url = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(2379)}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
                    if b'"true"' in resp.read():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd container at {url} did not become healthy")
            time.sleep(0.1)
        yield EtcdServer(endpoints=(url,))


@pytest.fixture(scope="session")
def _shared_etcd() -> Iterator[EtcdServer]:
    if _docker_answers():
        with _etcd_container() as server:
            yield server
        return
    _need_etcd_binary()
    proc = EtcdProcess("shared", progress_notify_interval=PROGRESS_INTERVAL)
    proc.start()
    try:
        yield EtcdServer(endpoints=proc.endpoints, process=proc)
    finally:
        proc.close()


@pytest.fixture
def etcd(_shared_etcd: EtcdServer) -> Iterator[EtcdServer]:
    """The session's etcd member; every key is deleted after the test."""
    yield _shared_etcd
    run_etcdctl(_shared_etcd.endpoints, ["del", "", "--from-key"], check=False)


@pytest.fixture
def etcd_process() -> Iterator[EtcdServer]:
    """A fresh local etcd member of this test's own, to stop, kill or restart."""
    _need_etcd_binary()
    proc = EtcdProcess("solo", progress_notify_interval=PROGRESS_INTERVAL)
    proc.start()
    try:
        yield EtcdServer(endpoints=proc.endpoints, process=proc)
    finally:
        proc.close()


@pytest.fixture(scope="session")
def _pki() -> Iterator[Pki]:
    directory = scratch_dir("etcdha-pki-")
    try:
        yield make_pki(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_tls(_pki: Pki) -> Iterator[EtcdServer]:
    """A local member serving https that requires a client certificate of ``pki``."""
    _need_etcd_binary()
    proc = EtcdProcess("tls", tls=_pki, client_cert_auth=True)
    proc.start()
    try:
        yield EtcdServer(endpoints=proc.endpoints, process=proc, pki=_pki)
    finally:
        proc.close()


@pytest.fixture
def etcd_cluster3() -> Iterator[EtcdCluster]:
    """Three local members forming one cluster."""
    _need_etcd_binary()
    cluster = EtcdCluster(3, progress_notify_interval=PROGRESS_INTERVAL)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def keyspace() -> Keyspace:
    """A keyspace with a cluster name unique to the test."""
    return Keyspace("/etcdha-test", f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def prefix(keyspace: Keyspace) -> str:
    """A key prefix unique to the test (ends with '/')."""
    return keyspace.root


@pytest.fixture
async def store(etcd: EtcdServer) -> AsyncIterator[Store]:
    """A Store connected to ``etcd``."""
    async with Store(etcd.settings()) as connected:
        yield connected


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"report_{report.when}", report)


def directors(request: pytest.FixtureRequest, **kwargs: Any) -> Iterator[DirectorLab]:
    """A DirectorLab whose agents' logs are printed when the test fails."""
    with DirectorLab(**kwargs) as lab:
        yield lab
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            for name, agent in lab.agents.items():
                print(f"----- agent {name} log (last 60 lines) -----")
                print("\n".join(agent.log().splitlines()[-60:]))


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[DirectorLab]:
    """Two directors in the seed topology, one etcd member on the control link."""
    yield from directors(request, nodes=2)


@pytest.fixture
def lab3(request: pytest.FixtureRequest) -> Iterator[DirectorLab]:
    """Two directors, a three-member etcd cluster."""
    yield from directors(request, nodes=2, etcd_members=3)
