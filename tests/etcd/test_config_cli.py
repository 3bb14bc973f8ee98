"""`etcdha config ...`, `etcdha status` and friends as a user runs them: as processes
of their own against a real etcd, each test in a cluster name of its own.

What must hold: the seed example survives import -> apply -> show unchanged;
every malformed input of tests/malformed_cases.py is refused with its file, line
and reason and leaves etcd exactly as it was; of concurrent guarded applies one
wins and the others exit 3; TLS works with flags and with ETCDHA_* variables and
a missing client certificate is named as the cause; foreign and malformed keys
are reported, never fatal; an unreachable etcd gives exit code 4 quickly; every
command and option explains itself in --help.

Most commands run as `python -m etcdha ...`. The long tables (the malformed
inputs, the unreachable etcd, the foreign keys) run through cli_batch.py, where
each command still gets a process, stdio and exit status of its own, forked
after one shared import, since some sixty cold starts of a second of CPU each
would dominate the run on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
from malformed_cases import CASES, CLUSTER_YAML, Case
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.testing import CliRunner

from etcdha.cli import app
from etcdha.configdb import ConfigConflict, apply_config, read_config
from etcdha.keyspace import Keyspace
from etcdha.lab.etcd_process import EtcdServer, free_port, run_etcdctl
from etcdha.legacy import import_legacy
from etcdha.spec import ClusterSpec
from etcdha.spec_load import load_file, load_json, load_text, to_data, to_json, to_yaml
from etcdha.store import KeyValue, Store

pytestmark = pytest.mark.etcd

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "heartbeat-ldirectord"
SEED_FLAGS = (
    *("--ha-cf", str(SEED / "ha.cf")),
    *("--haresources", str(SEED / "haresources")),
    *("--ldirectord", str(SEED / "ldirectord.cf")),
)
# At most this many CLI processes at once (CI machines have 2 cores).
WORKERS = 4
# A line that gRPC's C core logs by itself ("E1125 13:21:35.608958 ... file.cc:115] ...").
GRPC_NOISE = re.compile(r"^[EWID]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


# ---------------------------------------------------------------------------
# running the command line


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"etcdha {' '.join(self.args)}\n-> exit {self.code} after {self.seconds:.1f}s\n"
            f"--- stdout\n{self.out}--- stderr\n{self.err}"
        )


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without ETCDHA_* settings of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDHA_")}
    env.update(extra or {})
    return env


def etcdha(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Run:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "etcdha", *args],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        env=_env(env),
        timeout=timeout,
        check=False,
    )
    return Run(tuple(args), done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def etcdha_all(commands: Sequence[Sequence[str]], env: dict[str, str] | None = None) -> list[Run]:
    """Run independent commands side by side; results in the order given."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(lambda args: etcdha(*args, env=env), commands))


def etcdha_batch(commands: Sequence[Sequence[str]], jobs: int = WORKERS) -> list[Run]:
    """Many commands, each in its own process forked after one shared cold start
    (see cli_batch.py): for the long tables, where cold starts would dominate."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("cli_batch.py")), str(jobs)],
        input=json.dumps([list(c) for c in commands]),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=True,
    )
    return [
        Run(tuple(args), r["code"], r["out"], r["err"], r["seconds"])
        for args, r in zip(commands, json.loads(done.stdout), strict=True)
    ]


def assert_clean(run: Run) -> None:
    """No Python traceback and no gRPC log lines: only our own sentences."""
    for stream in (run.out, run.err):
        assert "Traceback (most recent call last)" not in stream, run
        assert not GRPC_NOISE.search(stream), run


def on(server: EtcdServer, cluster: str) -> list[str]:
    return ["--endpoints", ",".join(server.endpoints), "--cluster", cluster]


def new_cluster() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------
# reading etcd back


@dataclass(frozen=True)
class Snapshot:
    """The whole keyspace of an etcd: its revision and every key's value and metadata."""

    revision: int
    kvs: tuple[tuple[bytes, bytes, int, int, int, int], ...]  # key, value, mod, create, ver, lease

    def values(self, prefix: str) -> dict[bytes, bytes]:
        return {k: v for k, v, *_ in self.kvs if k.startswith(prefix.encode())}


def snapshot(server: EtcdServer) -> Snapshot:
    out = run_etcdctl(
        server.endpoints, ["get", "", "--from-key", "-w", "json"], tls=server.pki
    ).stdout
    data = json.loads(out)
    kvs = sorted(
        (
            base64.b64decode(kv["key"]),
            base64.b64decode(kv.get("value", "")),
            int(kv["mod_revision"]),
            int(kv["create_revision"]),
            int(kv["version"]),
            int(kv.get("lease", 0)),
        )
        for kv in data.get("kvs", [])
    )
    return Snapshot(int(data["header"]["revision"]), tuple(kvs))


def etcdctl_put(server: EtcdServer, key: str, value: str) -> None:
    """Put with etcdctl; ``str`` holding surrogate escapes reaches etcd as raw bytes."""
    run_etcdctl(server.endpoints, ["put", "--", key, value], tls=server.pki)


def with_store(server: EtcdServer, body: Callable[[Store], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        async with Store(server.settings()) as store:
            return await body(store)

    return asyncio.run(main())


def seed_spec() -> ClusterSpec:
    return import_legacy(
        SEED / "ha.cf", SEED / "haresources", SEED / "ldirectord.cf", root=SEED / "no-root"
    ).spec


def variant(scheduler: str) -> str:
    """CLUSTER_YAML (a valid spec) with another scheduler."""
    text = CLUSTER_YAML.replace("  scheduler: rr\n", f"  scheduler: {scheduler}\n")
    assert text != CLUSTER_YAML or scheduler == "rr"
    return text


# ---------------------------------------------------------------------------
# the seed example: import -> apply -> show gives back what was imported


def test_seed_round_trip(etcd: EtcdServer, tmp_path: Path) -> None:
    cluster = new_cluster()
    ks = Keyspace("/etcdha", cluster)
    spec_file = tmp_path / "cluster.yaml"

    imported = etcdha("config", "import", *SEED_FLAGS, "-o", str(spec_file))
    assert imported.code == 0, imported
    assert_clean(imported)
    assert imported.out == ""
    assert f"wrote {spec_file}" in imported.err
    text = spec_file.read_text()
    spec = load_file(spec_file).spec
    assert spec == seed_spec()
    assert text == to_yaml(spec)

    applied = etcdha("config", "apply", str(spec_file), *on(etcd, cluster))
    assert applied.code == 0, applied
    assert_clean(applied)
    match = re.search(
        rf"applied {re.escape(str(spec_file))} to {ks.config()} at revision (\d+)", applied.err
    )
    assert match, applied
    revision = int(match.group(1))
    assert applied.out.startswith(f"--- etcd:{ks.config()}\n+++ {spec_file}\n"), applied
    after_apply = snapshot(etcd)
    assert after_apply.revision == revision

    show, show_json, show_full = etcdha_all(
        [
            ["config", "show", *on(etcd, cluster)],
            ["config", "show", "--json", *on(etcd, cluster)],
            ["config", "show", "--full", *on(etcd, cluster)],
        ]
    )
    for run in (show, show_json, show_full):
        assert run.code == 0, run
        assert_clean(run)
    assert show.out == text  # byte for byte what the import wrote
    assert load_text(show_full.out, "full").spec == spec
    shown = json.loads(show_json.out)
    assert shown == {
        "key": ks.config(),
        "mod_revision": revision,
        "create_revision": revision,
        "valid": True,
        "problems": [],
        "config": to_data(spec),
    }

    # etcdctl sees the same: the config key holds the spec as JSON, next to one event.
    stored = after_apply.values(ks.root)
    assert stored[ks.config().encode()] == to_json(spec)
    events = {
        k: json.loads(v) for k, v in stored.items() if k.startswith(ks.events_prefix().encode())
    }
    assert set(stored) == {ks.config().encode(), *events}
    assert [e["type"] for e in events.values()] == ["config-applied"]
    listed = run_etcdctl(etcd.endpoints, ["get", "--prefix", "/etcdha/"]).stdout.splitlines()
    config_value = listed[listed.index(ks.config()) + 1]
    assert load_text(config_value, "etcdctl").spec == spec

    # The same file again: no change, and nothing written at all.
    again = etcdha("config", "apply", str(spec_file), *on(etcd, cluster))
    assert again.code == 0, again
    assert_clean(again)
    assert again.out == ""
    assert f"no change: {ks.config()} already holds this spec" in again.err
    assert snapshot(etcd) == after_apply

    # A changed file: diff shows the change; --exit-code says so with 1; nothing is written.
    changed = tmp_path / "changed.yaml"
    changed.write_text(text.replace("scheduler: rr", "scheduler: wlc"))
    diff, diff_code, same_code = etcdha_all(
        [
            ["config", "diff", str(changed), *on(etcd, cluster)],
            ["config", "diff", str(changed), "--exit-code", *on(etcd, cluster)],
            ["config", "diff", str(spec_file), "--exit-code", *on(etcd, cluster)],
        ]
    )
    for run in (diff, diff_code, same_code):
        assert_clean(run)
    assert diff.code == 0, diff
    assert "-  scheduler: rr\n+  scheduler: wlc\n" in diff.out, diff
    assert diff.out.startswith(f"--- etcd:{ks.config()}\n+++ {changed}\n")
    assert diff_code.code == 1, diff_code
    assert diff_code.out == diff.out
    assert same_code.code == 0, same_code
    assert same_code.out == ""
    assert "no differences" in same_code.err
    assert snapshot(etcd) == after_apply


# ---------------------------------------------------------------------------
# every malformed input of the table, through the CLI


@dataclass(frozen=True)
class CaseRuns:
    runs: list[Run]
    written: Path | None  # the `config import -o` file, if it was (wrongly) written


@dataclass(frozen=True)
class MalformedBatch:
    cluster: str
    before: Snapshot
    after: Snapshot
    results: dict[str, CaseRuns]


def _commands(case: Case, directory: Path, conn: list[str]) -> tuple[list[list[str]], Path | None]:
    directory.mkdir()
    for name, text in case.files.items():
        (directory / name).write_text(text)
    if case.kind == "spec":
        spec = str(directory / "cluster.yaml")
        return [["config", "validate", spec], ["config", "apply", spec, *conn]], None
    flags = {"ha.cf": "--ha-cf", "haresources": "--haresources", "ldirectord.cf": "--ldirectord"}
    args = ["config", "import"]
    for name in case.files:
        args += [flags[name], str(directory / name)]
    output = directory / "imported.yaml"
    return [[*args, "-o", str(output)]], output


@pytest.fixture(scope="module")
def malformed_batch(_shared_etcd: EtcdServer) -> Iterator[MalformedBatch]:
    """Every case run once, side by side, against a cluster that holds a valid config;
    the whole keyspace is read before the first and after the last."""
    server = _shared_etcd
    cluster = new_cluster()
    ks = Keyspace("/etcdha", cluster)
    valid = load_text(CLUSTER_YAML, "cluster.yaml").spec

    async def seed(store: Store) -> None:
        await apply_config(store, ks, valid, source="test", expect_revision=0)

    with_store(server, seed)
    with tempfile.TemporaryDirectory(prefix="etcdha-malformed-") as tmp:
        planned: list[tuple[str, int, Path | None]] = []
        commands: list[list[str]] = []
        for case in CASES:
            cmds, output = _commands(case, Path(tmp) / case.id, on(server, cluster))
            planned.append((case.id, len(cmds), output))
            commands += cmds
        before = snapshot(server)
        runs = etcdha_batch(commands)
        after = snapshot(server)
        results: dict[str, CaseRuns] = {}
        for case_id, n, output in planned:
            written = output if output is not None and output.exists() else None
            results[case_id] = CaseRuns(runs[:n], written)
            runs = runs[n:]
        yield MalformedBatch(cluster, before, after, results)
    run_etcdctl(server.endpoints, ["del", "--prefix", ks.root], check=False)


def _names_place_and_reason(case: Case, stderr: str) -> bool:
    where = f"/{case.file}:{case.line}: " if case.line else f"/{case.file}: "
    return any(
        line.startswith("error: ") and where in line and case.message in line.split(where, 1)[1]
        for line in stderr.splitlines()
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_refused_and_changes_nothing(
    case: Case, malformed_batch: MalformedBatch
) -> None:
    result = malformed_batch.results[case.id]
    assert len(result.runs) == (2 if case.kind == "spec" else 1)
    for run in result.runs:
        assert run.code == 1, run
        assert_clean(run)
        assert run.out == "", run
        assert _names_place_and_reason(case, run.err), (
            f"expected {case.file}:{case.line} and {case.message!r}\n{run}"
        )
        last = run.err.splitlines()[-1]
        assert "refused" in last and (
            "nothing was changed" in last or "nothing was written" in last
        )
    assert result.written is None, "a refused import wrote its output file"
    # The whole keyspace, every key, value and revision, as before the first case ran.
    assert malformed_batch.after == malformed_batch.before
    ks = Keyspace("/etcdha", malformed_batch.cluster)
    config = malformed_batch.after.values(ks.config())[ks.config().encode()]
    assert config == to_json(load_text(CLUSTER_YAML, "cluster.yaml").spec)


def test_malformed_table_covers_both_kinds() -> None:
    assert {c.kind for c in CASES} == {"spec", "import"}


# ---------------------------------------------------------------------------
# concurrent applies


def test_concurrent_guarded_applies_one_wins(etcd: EtcdServer, tmp_path: Path) -> None:
    cluster = new_cluster()
    ks = Keyspace("/etcdha", cluster)
    base = load_text(CLUSTER_YAML, "base").spec

    async def seed(store: Store) -> int:
        return (await apply_config(store, ks, base, source="base", expect_revision=0)).revision

    revision = with_store(etcd, seed)
    files = []
    for scheduler in ("wrr", "lc", "wlc", "sed"):
        path = tmp_path / f"{scheduler}.yaml"
        path.write_text(variant(scheduler))
        files.append(path)
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "etcdha", "config", "apply", str(path)),
                *("--expect-revision", str(revision), *on(etcd, cluster)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
            env=_env(),
        )
        for path in files
    ]
    runs = []
    for path, proc in zip(files, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        runs.append(Run((str(path),), proc.returncode, out, err, 0.0))
    for run in runs:
        assert_clean(run)
    winners = [r for r in runs if r.code == 0]
    assert len(winners) == 1, "\n".join(map(str, runs))
    for run in runs:
        if run.code != 0:
            assert run.code == 3, run
            assert run.out == ""
            # Lost either at the read (the revision moved on) or at the txn (it moved
            # between our read and our write); either way one sentence says so.
            assert run.err.startswith("conflict: the stored config "), run
            assert f"is at revision {revision + 1}, not {revision}. " in run.err or (
                "changed while we applied" in run.err and "nothing was written" in run.err
            ), run
            assert run.err.endswith(f"Review `etcdha config diff {run.args[0]}` and apply again.\n")
    winner = load_file(winners[0].args[0]).spec

    async def stored(store: Store) -> tuple[bytes, int]:
        current = await read_config(store, ks)
        assert current is not None
        kvs, _ = await store.get_prefix(ks.events_prefix())
        return current.kv.value, len(kvs)

    value, n_events = with_store(etcd, stored)
    assert load_json(value, "stored").spec == winner
    assert n_events == 2  # the base apply and the winner's


class ReadHook(Store):
    """A real Store that runs ``hook`` once, right after its next read of ``key``:
    the place between apply_config's read and its transaction."""

    def __init__(self, server: EtcdServer, key: str, hook: Callable[[], Awaitable[None]]) -> None:
        super().__init__(server.settings())
        self._key = key
        self._hook: Callable[[], Awaitable[None]] | None = hook

    async def get(self, key: str) -> KeyValue | None:
        kv = await super().get(key)
        if key == self._key and self._hook is not None:
            hook, self._hook = self._hook, None
            await hook()
        return kv


async def test_apply_loses_to_a_write_between_its_read_and_its_txn(
    etcd: EtcdServer, keyspace: Keyspace
) -> None:
    base = load_text(CLUSTER_YAML, "base").spec
    ours = load_text(variant("lc"), "ours").spec
    theirs = load_text(variant("wlc"), "theirs").spec
    async with Store(etcd.settings()) as other:
        first = await apply_config(other, keyspace, base, source="base", expect_revision=0)
        won: list[int] = []

        async def apply_theirs() -> None:
            result = await apply_config(
                other, keyspace, theirs, source="theirs", expect_revision=None
            )
            won.append(result.revision)

        async with ReadHook(etcd, keyspace.config(), apply_theirs) as racing:
            with pytest.raises(ConfigConflict) as conflict:
                await apply_config(racing, keyspace, ours, source="ours", expect_revision=None)
        assert won and won[0] > first.revision
        assert str(conflict.value) == (
            f"the stored config changed while we applied (revision {first.revision} -> "
            f"{won[0]}); nothing was written"
        )
        kvs, revision = await other.get_prefix(keyspace.root)
        assert revision == won[0]  # nothing at all was written after their apply
        config = next(kv for kv in kvs if kv.key == keyspace.config())
        assert config.value == to_json(theirs)
        assert config.mod_revision == won[0]
        assert len(kvs) == 3  # config, and the base's and theirs' events


async def test_apply_with_a_stale_expected_revision_writes_nothing(
    etcd: EtcdServer, keyspace: Keyspace
) -> None:
    base = load_text(CLUSTER_YAML, "base").spec
    async with Store(etcd.settings()) as a, Store(etcd.settings()) as b:
        first = await apply_config(a, keyspace, base, source="base", expect_revision=0)
        # Both read revision R; b applies first; a, still expecting R, must lose.
        second = await apply_config(
            b,
            keyspace,
            load_text(variant("wlc"), "b").spec,
            source="b",
            expect_revision=first.revision,
        )
        with pytest.raises(
            ConfigConflict, match=rf"at revision {second.revision}, not {first.revision}"
        ):
            await apply_config(
                a,
                keyspace,
                load_text(variant("lc"), "a").spec,
                source="a",
                expect_revision=first.revision,
            )
        _, revision = await a.get_prefix(keyspace.root)
        assert revision == second.revision


# ---------------------------------------------------------------------------
# TLS with a client certificate


def test_tls_with_flags_and_with_environment(etcd_tls: EtcdServer, tmp_path: Path) -> None:
    pki = etcd_tls.pki
    assert pki is not None
    spec_file = tmp_path / "cluster.yaml"
    spec_file.write_text(CLUSTER_YAML)
    expected = to_yaml(load_file(spec_file).spec)
    endpoint = etcd_tls.endpoints[0]
    flags = [
        *("--cacert", str(pki.ca_cert), "--cert", str(pki.client_cert)),
        *("--key", str(pki.client_key)),
    ]
    by_flags, by_env = new_cluster(), new_cluster()
    env = {
        "ETCDHA_ENDPOINTS": endpoint,
        "ETCDHA_CLUSTER": by_env,
        "ETCDHA_CACERT": str(pki.ca_cert),
        "ETCDHA_CERT": str(pki.client_cert),
        "ETCDHA_KEY": str(pki.client_key),
    }

    def steps(conn: list[str], env: dict[str, str] | None) -> list[Run]:
        return [
            etcdha("config", "apply", str(spec_file), *conn, env=env),
            etcdha("config", "show", *conn, env=env),
        ]

    with ThreadPoolExecutor(2) as pool:
        flag_runs = pool.submit(
            steps, ["--endpoints", endpoint, "--cluster", by_flags, *flags], None
        )
        env_runs = pool.submit(steps, [], env)
        runs = flag_runs.result() + env_runs.result()
    for run in runs:
        assert run.code == 0, run
        assert_clean(run)
    assert runs[1].out == expected
    assert runs[3].out == expected
    try:
        for cluster in (by_flags, by_env):
            value = run_etcdctl(
                etcd_tls.endpoints,
                ["get", f"/etcdha/{cluster}/config", "--print-value-only"],
                tls=pki,
            ).stdout.strip()
            assert value.encode() == to_json(load_file(spec_file).spec)
    finally:
        for cluster in (by_flags, by_env):
            run_etcdctl(etcd_tls.endpoints, ["del", "--prefix", f"/etcdha/{cluster}/"], tls=pki)


def test_tls_without_client_certificate_names_the_cause(etcd_tls: EtcdServer) -> None:
    pki = etcd_tls.pki
    assert pki is not None
    endpoint = etcd_tls.endpoints[0]
    before = snapshot(etcd_tls)
    no_cert, no_ca, plain = etcdha_all(
        [
            ["config", "show", "--endpoints", endpoint, "--cacert", str(pki.ca_cert)],
            ["status", "--endpoints", endpoint],
            ["status", "--endpoints", endpoint.replace("https://", "http://")],
        ]
    )
    for run in (no_cert, no_ca, plain):
        assert run.code == 1, run  # refused: a matter of certificates, not of reachability
        assert_clean(run)
        assert run.out == ""
        assert run.seconds < 10, run
        used = run.args[run.args.index("--endpoints") + 1]
        assert run.err.startswith(f"etcd at {used} refused the connection: "), run
    assert no_cert.err == (
        f"etcd at {endpoint} refused the connection: TLS handshake refused: etcd requires a "
        "client certificate; give --cert and --key (or ETCDHA_CERT and ETCDHA_KEY)\n"
    )
    assert "the server's certificate was not accepted" in no_ca.err
    assert "check --cacert" in no_ca.err
    assert f"the endpoint speaks TLS: write {endpoint}" in plain.err
    assert snapshot(etcd_tls) == before


# ---------------------------------------------------------------------------
# foreign and malformed keys


def test_foreign_and_malformed_keys_are_reported_never_fatal(etcd: EtcdServer) -> None:
    good, not_json, not_spec = new_cluster(), new_cluster(), new_cluster()
    valid = load_text(CLUSTER_YAML, "cluster.yaml").spec
    garbage = b"\xff\xfe\x80garbage\x01\x02".decode("utf-8", "surrogateescape")
    foreign: dict[str, list[str]] = {}
    malformed: dict[str, list[str]] = {}
    for cluster in (good, not_json, not_spec):
        root = f"/etcdha/{cluster}/"
        foreign[cluster] = [
            f"{root}bogus",
            f"{root}members/a/b",
            f"{root}health/chk1/tcp-192.0.2.1/192.0.2.12-80",
            f"{root}health/chk1/tcp-192.0.2.1-80/192.0.2.012-80",
        ]
        malformed[cluster] = [f"{root}members/x", f"{root}leader/y"]
        etcdctl_put(etcd, f"{root}bogus", "hello")
        etcdctl_put(etcd, f"{root}members/a/b", "{}")
        etcdctl_put(etcd, f"{root}members/x", "{not json")
        etcdctl_put(etcd, f"{root}leader/y", garbage)
        etcdctl_put(etcd, f"{root}health/chk1/tcp-192.0.2.1/192.0.2.12-80", '{"state": "up"}')
        etcdctl_put(etcd, f"{root}health/chk1/tcp-192.0.2.1-80/192.0.2.012-80", '{"state": "up"}')
        etcdctl_put(etcd, f"{root}events/00000000000000000001-0000000a", "not an event")
        etcdctl_put(etcd, f"{root}{garbage}", "binary key")
    etcdctl_put(etcd, f"/etcdha/{good}/config", to_json(valid).decode())
    etcdctl_put(etcd, f"/etcdha/{not_json}/config", "schema_version: 1\nnodes: [node1]\n")
    etcdctl_put(etcd, f"/etcdha/{not_spec}/config", '{"schema_version": 1, "nodes": []}')
    before = snapshot(etcd)

    reads = [["status"], ["status", "--json"], ["config", "show"], ["config", "show", "--json"]]
    reads.append(["events"])
    names = [(" ".join(r), c) for c in (good, not_json, not_spec) for r in reads]
    results = etcdha_batch([[*name.split(), *on(etcd, c)] for name, c in names])
    runs = {f"{name} {c}": run for (name, c), run in zip(names, results, strict=True)}
    for run in runs.values():
        assert_clean(run)
    assert snapshot(etcd) == before  # reading never repairs or deletes anything

    for cluster in (good, not_json, not_spec):
        status, status_json = runs[f"status {cluster}"], runs[f"status --json {cluster}"]
        for run in (status, status_json):
            assert run.code == 0, run
            for key in foreign[cluster][:-1]:
                assert f"warning: {key}: not a key etcdha writes; left alone" in run.err, run
            for key in malformed[cluster]:
                assert f"warning: {key}: value is not the JSON etcdha writes; ignored" in run.err
            assert "binary key" not in run.err
            assert f"/etcdha/{cluster}/\\udcff\\udcfe" in run.err  # the binary key, escaped
        report = json.loads(status_json.out)
        assert set(foreign[cluster]) < set(report["unknown_keys"])
        assert len(report["unknown_keys"]) == len(foreign[cluster]) + 1
        assert sorted(report["malformed_keys"]) == sorted(malformed[cluster])
        assert report["groups"].get("y") is None
        assert "x" not in report["members"]
        events = runs[f"events {cluster}"]
        assert events.code == 0, events
        assert "warning: " in events.err and "not JSON; skipped" in events.err

    assert runs[f"config show {good}"].code == 0
    assert runs[f"config show {good}"].out == to_yaml(valid)
    assert json.loads(runs[f"config show --json {good}"].out)["valid"] is True
    assert "config: revision" in runs[f"status {good}"].out

    for cluster, problem in ((not_json, "not valid JSON"), (not_spec, "nodes: ")):
        config_key = f"/etcdha/{cluster}/config"
        show, show_json = runs[f"config show {cluster}"], runs[f"config show --json {cluster}"]
        for run in (show, show_json):
            assert run.code == 1, run
            assert f"error: etcd:{config_key}: " in run.err and problem in run.err, run
            assert run.err.endswith(f"the config stored at {config_key} is not a valid spec\n")
        assert show.out == ""
        shown = json.loads(show_json.out)
        assert shown["valid"] is False and shown["problems"]
        status = runs[f"status {cluster}"]
        assert "NOT VALID" in status.out
        assert f"error: etcd:{config_key}: " in status.err
        report = json.loads(runs[f"status --json {cluster}"].out)
        assert report["config"]["valid"] is False

    # An invalid stored config is fixed by applying a valid one over it.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(CLUSTER_YAML)
        f.flush()
        repaired = etcdha("config", "apply", f.name, *on(etcd, not_json))
    assert repaired.code == 0, repaired
    assert etcdha("config", "show", *on(etcd, not_json)).out == to_yaml(valid)


# ---------------------------------------------------------------------------
# etcd unreachable


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_unreachable_etcd_exits_4_quickly(silent_endpoint: str, tmp_path: Path) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    spec_file = tmp_path / "cluster.yaml"
    spec_file.write_text(CLUSTER_YAML)
    etcd_commands = [
        ["status"],
        ["status", "--json"],
        ["config", "apply", str(spec_file)],
        ["config", "show"],
        ["config", "show", "--json"],
        ["config", "diff", str(spec_file)],
        ["standby", "node1"],
        ["online", "node1"],
        ["takeover", "node1"],
        ["events"],
    ]  # not `agent start`: an agent waits for etcd (tests/netns/test_failover.py)
    commands = []
    for listed in (refused, f"{refused},{silent_endpoint}"):
        commands += [[*c, "--endpoints", listed, "--cluster", "gone"] for c in etcd_commands]
    # Each command in its own process (forked after a shared start), and two cold
    # starts as a user runs them, which also pay for Python's start.
    runs = etcdha_batch(commands, jobs=len(commands))  # they wait more than they compute
    runs += etcdha_all([commands[0], commands[-1]])
    print("\n".join(f"{r.seconds:5.2f}s etcdha {' '.join(r.args)}" for r in runs))
    for run in runs:
        assert run.code == 4, run
        assert_clean(run)
        assert run.seconds < 8, run
        assert run.out == "", run
        assert run.err.startswith("etcd unreachable"), run
        for endpoint in run.args[-3].split(","):
            assert endpoint in run.err, run
    plain = [r for r in runs if r.args[-3] == refused]
    for run in plain:
        assert run.err.startswith(
            f"etcd unreachable at {refused}: connection refused (nothing listens there); "
        ), run


# ---------------------------------------------------------------------------
# --help everywhere


def _commands_of(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from _commands_of(sub, (*path, name))


def test_help_of_every_command_and_option() -> None:
    root = typer.main.get_command(app)
    commands = list(_commands_of(root))
    assert len(commands) > 10
    runner = CliRunner()
    for path, command in commands:
        shown = " ".join(("etcdha", *path))
        assert (command.help or "").strip(), f"{shown} has no help text"
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
        assert result.exit_code == 0, f"{shown} --help: {result.output}"
        for param in command.params:
            assert isinstance(param, TyperOption | TyperArgument), (shown, param)
            assert (param.help or "").strip(), f"{shown}: {param.name} has no help text"
    # The real entry point, as a user types it.
    top, config = etcdha_all([["--help"], ["config", "apply", "--help"]])
    for run in (top, config):
        assert run.code == 0, run
        assert_clean(run)
    assert "Exit codes: 0 success" in top.out
    for flag in ("--endpoints", "--cacert", "--cert", "--key", "--expect-revision"):
        assert flag in config.out
