"""IPVS against a real etcd: the term-guarded status writer, the reconciler's inputs
from health and drain keys, and the render / drain / undrain commands."""

from __future__ import annotations

import asyncio
import json
import textwrap
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from etcdha.cli import drain as drain_cli
from etcdha.cli import render as render_cli
from etcdha.configdb import apply_config
from etcdha.ipvs import parse_ipvsadm
from etcdha.ipvs.inputs import inputs_from_kvs
from etcdha.ipvs.reconcile import write_status
from etcdha.keyspace import Keyspace
from etcdha.lab.etcd_process import EtcdServer
from etcdha.spec_load import load_text
from etcdha.store import Compare, Op, Store

pytestmark = pytest.mark.etcd

SPEC = textwrap.dedent(
    """\
    nodes: [node1, node2]
    groups:
      - name: lvs
        node: node1
        resources: [{address: 192.0.2.200/24}, ipvs]
      - name: mail
        node: node2
        resources: [{address: 192.0.2.25/24}, ipvs]
    virtual_services:
      - address: 192.0.2.200:80
        group: lvs
        scheduler: rr
        quiescent: true
        fallback: {address: "127.0.0.1:80"}
        reals:
          - {address: "198.51.100.12:80", forward: masq}
          - {address: "198.51.100.6:80", forward: masq}
      - address: 192.0.2.200:443
        group: lvs
        reals:
          - {address: "198.51.100.12:443", forward: masq}
      - address: 192.0.2.25:25
        group: mail
        reals: [{address: "198.51.100.12:25", forward: masq}]
    """
)
WEB = "tcp-192.0.2.200-80"


async def seed(store: Store, ks: Keyspace) -> None:
    spec = load_text(SPEC, "cluster.yaml").spec
    await apply_config(store, ks, spec, source="test", expect_revision=None)


async def put_json(store: Store, key: str, value: dict[str, Any]) -> None:
    await store.put(key, json.dumps(value).encode())


async def test_status_is_written_only_under_the_current_term(
    store: Store, keyspace: Keyspace
) -> None:
    ks = keyspace
    won = await store.txn(
        [Compare.create_revision(ks.leader("lvs"), "==", 0)],
        [Op.put(ks.leader("lvs"), b'{"node": "node1"}')],
    )
    term = won.revision
    assert await write_status(store, ks, "lvs", term, {"services": 1})
    kv = await store.get(ks.status_ipvs("lvs"))
    assert kv is not None and json.loads(kv.value) == {"services": 1}
    assert not await write_status(store, ks, "lvs", term - 1, {"services": 2})
    await store.delete(ks.leader("lvs"))
    await store.txn([], [Op.put(ks.leader("lvs"), b'{"node": "node2"}')])
    assert not await write_status(store, ks, "lvs", term, {"services": 3})
    kv = await store.get(ks.status_ipvs("lvs"))
    assert kv is not None and json.loads(kv.value) == {"services": 1}


async def test_inputs_follow_the_leaders_checker_and_drains(
    store: Store, keyspace: Keyspace
) -> None:
    ks = keyspace
    await seed(store, ks)
    await put_json(store, ks.leader("lvs"), {"node": "node1"})
    await put_json(store, ks.health("node1", WEB, "198.51.100.12-80"), {"state": "down"})
    await put_json(store, ks.health("node2", WEB, "198.51.100.12-80"), {"state": "up"})
    await put_json(store, ks.health("node1", WEB, "198.51.100.6-80"), {"state": "up", "weight": 5})
    await put_json(store, ks.drain(WEB, "198.51.100.6-80"), {"reason": "x"})
    await store.put(ks.drain_prefix() + "junk", b"{}")
    kvs, rev = await store.get_prefix(ks.root)
    read = inputs_from_kvs(ks, kvs, rev)
    i = read.inputs
    assert i.spec is not None and i.config_revision > 0
    assert i.verdicts == {(WEB, "198.51.100.12-80"): False, (WEB, "198.51.100.6-80"): True}
    assert i.drains == {(WEB, "198.51.100.6-80")}
    assert i.weights == {(WEB, "198.51.100.6-80"): 5}  # a dynamic weight (misc_dynamic)
    assert i.health_revision == rev
    assert any("junk" in p for p in read.problems)


# -- the commands


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("render")(render_cli.render)
    app.command("drain")(drain_cli.drain)
    app.command("undrain")(drain_cli.undrain)
    return app


def run(etcd: EtcdServer, ks: Keyspace, *args: str) -> Any:
    flags = ["--endpoints", etcd.endpoints[0], "--prefix", ks.prefix, "--cluster", ks.cluster]
    return CliRunner().invoke(cli(), [*args, *flags], catch_exceptions=False)


def in_etcd(etcd: EtcdServer, body: Any) -> Any:
    async def main() -> Any:
        async with Store(etcd.settings()) as store:
            return await body(store)

    return asyncio.run(main())


def test_render_drain_and_undrain(etcd: EtcdServer, keyspace: Keyspace) -> None:
    ks = keyspace
    r = run(etcd, ks, "render")
    assert r.exit_code == 1 and "no valid config" in r.output

    async def setup(store: Store) -> None:
        await seed(store, ks)
        await put_json(store, ks.leader("lvs"), {"node": "node1"})
        await put_json(store, ks.health("node1", WEB, "198.51.100.12-80"), {"state": "down"})

    in_etcd(etcd, setup)
    r = run(etcd, ks, "render", "--group", "lvs")
    assert r.exit_code == 0, r.output
    assert r.stdout == (
        "-A -t 192.0.2.200:80 -s rr\n"
        "-a -t 192.0.2.200:80 -r 198.51.100.12:80 -m -w 0\n"
        "-a -t 192.0.2.200:80 -r 198.51.100.6:80 -m -w 1\n"
        "-A -t 192.0.2.200:443 -s wrr\n"
        "-a -t 192.0.2.200:443 -r 198.51.100.12:443 -m -w 1\n"
    )
    assert len(parse_ipvsadm(run(etcd, ks, "render").stdout)) == 3
    assert run(etcd, ks, "render", "--group", "nope").exit_code == 1

    # drain the other real of the web service: nothing serves, the fallback comes
    r = run(etcd, ks, "drain", "198.51.100.6:80", "--reason", "kernel update", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["drained"] == [
        {"service": WEB, "real": "198.51.100.6-80", "key": ks.drain(WEB, "198.51.100.6-80")}
    ]
    r = run(etcd, ks, "render", "--group", "lvs", "--format", "json")
    data = json.loads(r.stdout)
    assert data["fallback_active"] == [WEB]
    web = next(s for s in data["services"] if s["service"] == WEB)
    assert [(d["real"], d["weight"]) for d in web["destinations"]] == [
        ("127.0.0.1-80", 1),
        ("198.51.100.12-80", 0),
        ("198.51.100.6-80", 0),
    ]
    states = {(x["service"], x["real"]): (x["up"], x["drained"]) for x in data["reals"]}
    assert states[(WEB, "198.51.100.6-80")] == (True, True)

    # a bare IP drains it in every service; --service narrows it
    r = run(etcd, ks, "drain", "198.51.100.12", "--service", "192.0.2.25:25")
    assert r.exit_code == 0, r.output
    assert "tcp-192.0.2.25-25" in r.output

    async def drains(store: Store) -> list[tuple[str, dict[str, Any]]]:
        kvs, _ = await store.get_prefix(ks.drain_prefix())
        return sorted((kv.key[len(ks.drain_prefix()) :], json.loads(kv.value)) for kv in kvs)

    found = in_etcd(etcd, drains)
    assert [k for k, _ in found] == [
        "tcp-192.0.2.200-80/198.51.100.6-80",
        "tcp-192.0.2.25-25/198.51.100.12-25",
    ]
    assert found[0][1]["reason"] == "kernel update"

    assert run(etcd, ks, "drain", "203.0.113.1:80").exit_code == 1
    assert run(etcd, ks, "drain", "not-an-address").exit_code == 1

    r = run(etcd, ks, "undrain", "198.51.100.6-80")
    assert r.exit_code == 0 and "undrained 198.51.100.6-80" in r.output
    r = run(etcd, ks, "undrain", "198.51.100.6:80")
    assert r.exit_code == 0 and "was not drained" in r.output
    assert (
        run(etcd, ks, "undrain", "198.51.100.12", "--service", "tcp-192.0.2.25-25").exit_code == 0
    )
    assert in_etcd(etcd, drains) == []

    async def events(store: Store) -> list[str]:
        kvs, _ = await store.get_prefix(ks.events_prefix())
        return [json.loads(kv.value)["type"] for kv in sorted(kvs, key=lambda kv: kv.key)]

    kinds = in_etcd(etcd, events)
    assert kinds.count("drain") == 2 and kinds.count("undrain") == 2
