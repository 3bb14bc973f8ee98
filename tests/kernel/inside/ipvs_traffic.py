"""Inside user-mode-linux: real traffic through the VIP, as in the seed (NAT).

A client namespace reaches the VIP of a director namespace, whose IPVS table
the reconciler keeps from keys in a real etcd (config, health verdicts,
drains); two real servers in namespaces of their own route back through the
director's DIP. Checked: both reals answer; a down real (quiescent) gets weight
0 and no new connections while an established one goes on; the fallback
answers when every real is down; a drain works like a down real; and after
every step the kernel's table equals what `etcdha render` prints.
"""

from __future__ import annotations

import asyncio
import json
import socket
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import pytest
import typer
from support import in_uml, netns, sh
from typer.testing import CliRunner

from etcdha.cli import drain as drain_cli
from etcdha.cli import render as render_cli
from etcdha.configdb import apply_config
from etcdha.ipvs import parse_ipvsadm
from etcdha.ipvs.inputs import inputs_from_kvs
from etcdha.ipvs.netlink import NetlinkBackend
from etcdha.ipvs.reconcile import Feed, IPVSTable
from etcdha.keyspace import Keyspace
from etcdha.lab.etcd_process import EtcdProcess
from etcdha.lab.netns import Topology
from etcdha.spec_load import load_text
from etcdha.store import EtcdSettings, Store

pytestmark = in_uml

SPEC = textwrap.dedent(
    """\
    nodes: [node1, node2]
    groups:
      - name: lvs
        node: node1
        resources: [{address: 192.0.2.200/24}, {address: 198.51.100.200/24}, ipvs]
    virtual_services:
      - address: 192.0.2.200:80
        scheduler: rr
        quiescent: true
        fallback: {address: "127.0.0.1:80", forward: gate}
        reals:
          - {address: "198.51.100.12:80", forward: masq}
          - {address: "198.51.100.6:80", forward: masq}
    """
)
VIP = "192.0.2.200"
WEB = "tcp-192.0.2.200-80"
REALS = {"rs1": "198.51.100.12", "rs2": "198.51.100.6"}
SEGMENT = {"rs1": "198.51.100.12-80", "rs2": "198.51.100.6-80"}


def listener(ns: str, address: str, port: int) -> socket.socket:
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(64)
    s.setblocking(False)
    return s


async def line_server(name: str, sock: socket.socket) -> asyncio.Server:
    """Answers every line with its name: which server a connection reached."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readline():
                writer.write(f"{name}\n".encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, sock=sock)


class Client:
    def __init__(self, ns: str) -> None:
        self.ns = ns

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        with netns(self.ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.sock_connect(s, (VIP, 80)), 5)
        except BaseException:
            s.close()
            raise
        return await asyncio.open_connection(sock=s)

    @staticmethod
    async def ask(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> str:
        reader, writer = conn
        writer.write(b"hello\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 5)).decode().strip()

    async def who(self, n: int = 4) -> list[str]:
        """Which server each of `n` new connections reached."""
        out = []
        for _ in range(n):
            conn = await self.connect()
            try:
                out.append(await self.ask(conn))
            finally:
                conn[1].close()
        return out


@pytest.fixture
async def lab() -> AsyncIterator[dict[str, Any]]:
    topo = Topology(prefix="ip")
    servers: list[asyncio.Server] = []
    etcd = EtcdProcess("uml")
    try:
        for name, cidr, bridge in (
            ("client", "192.0.2.10/24", "pub"),
            ("dir", "192.0.2.200/24", "pub"),
            ("rs1", "198.51.100.12/24", "priv"),
            ("rs2", "198.51.100.6/24", "priv"),
        ):
            topo.connect(name, "eth0", bridge)
            topo.add_address(name, "eth0", cidr)
        topo.connect("dir", "eth1", "priv")
        topo.add_address("dir", "eth1", "198.51.100.200/24")
        topo.sysctl("dir", "net.ipv4.ip_forward", 1)
        for rs in REALS:
            topo.set_default_route(rs, "198.51.100.200")
            servers.append(await line_server(rs, listener(topo.ns(rs), REALS[rs], 80)))
        # the fallback: a server on the director itself, as the seed's httpd on 127.0.0.1
        servers.append(await line_server("Sorry", listener(topo.ns("dir"), "0.0.0.0", 80)))
        etcd.start()
        yield {"topo": topo, "etcd": etcd, "dir": topo.ns("dir"), "client": topo.ns("client")}
    finally:
        for s in servers:
            s.close()
        etcd.close()
        topo.close()


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("render")(render_cli.render)
    app.command("drain")(drain_cli.drain)
    app.command("undrain")(drain_cli.undrain)
    return app


async def run_cli(etcd: EtcdProcess, ks: Keyspace, *args: str) -> str:
    flags = ["--endpoints", etcd.endpoints[0], "--prefix", ks.prefix, "--cluster", ks.cluster]
    result = await asyncio.to_thread(CliRunner().invoke, cli(), [*args, *flags])
    assert result.exit_code == 0, result.output
    return str(result.stdout)


async def test_traffic_through_the_vip_follows_health_and_drains(lab: dict[str, Any]) -> None:
    etcd: EtcdProcess = lab["etcd"]
    ks = Keyspace("/etcdha", "uml")
    client = Client(lab["client"])
    dir_ns = lab["dir"]

    def backend() -> NetlinkBackend:
        with netns(dir_ns):
            return NetlinkBackend()

    async with Store(EtcdSettings(endpoints=etcd.endpoints)) as store:
        await apply_config(
            store, ks, load_text(SPEC, "c.yaml").spec, source="test", expect_revision=None
        )
        await store.put(ks.leader("lvs"), json.dumps({"node": "node1"}).encode())
        feed = Feed()
        table = IPVSTable("lvs", feed, backend_factory=backend)

        async def refresh() -> None:
            kvs, rev = await store.get_prefix(ks.root)
            read = inputs_from_kvs(ks, kvs, rev)
            assert read.problems == []
            i = read.inputs
            feed.update(
                spec=i.spec,
                config_revision=i.config_revision,
                verdicts=i.verdicts,
                health_revision=i.health_revision,
                drains=i.drains,
                drain_revision=i.drain_revision,
            )
            await table.sync("test")  # at once, rather than after the debounce
            kernel = sh("ip", "netns", "exec", dir_ns, "ipvsadm-save", "-n")
            rendered = await run_cli(etcd, ks, "render", "--group", "lvs")
            assert parse_ipvsadm(kernel) == parse_ipvsadm(rendered)

        async def verdict(real: str, up: bool) -> None:
            value = {"state": "up" if up else "down", "since": "", "detail": "test"}
            await store.put(ks.health("node1", WEB, SEGMENT[real]), json.dumps(value).encode())
            await refresh()

        await refresh()
        await table.start()
        try:
            assert sorted(await client.who(4)) == ["rs1", "rs1", "rs2", "rs2"]

            held = await client.connect()
            first = await client.ask(held)
            other = "rs2" if first == "rs1" else "rs1"

            # the held connection's real goes down: weight 0, no new connections,
            # the established one goes on
            await verdict(first, False)
            assert await client.who(4) == [other] * 4
            assert await client.ask(held) == first

            # every real down: the fallback answers new connections
            await verdict(other, False)
            assert await client.who(2) == ["Sorry"] * 2
            assert await client.ask(held) == first

            # one back: the fallback goes, the real answers
            await verdict(other, True)
            assert await client.who(3) == [other] * 3
            await verdict(first, True)
            assert sorted(await client.who(4)) == ["rs1", "rs1", "rs2", "rs2"]

            # a drain is a weight 0 too, through the CLI's keys
            await run_cli(etcd, ks, "drain", REALS[first] + ":80")
            await refresh()
            assert await client.who(4) == [other] * 4
            assert await client.ask(held) == first
            await run_cli(etcd, ks, "undrain", REALS[first])
            await refresh()
            assert sorted(await client.who(4)) == ["rs1", "rs1", "rs2", "rs2"]
            held[1].close()
        finally:
            await table.stop()
