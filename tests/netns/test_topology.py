"""The seed topology in namespaces comes up, routes as the seed does, and goes away (tier 3)."""

from __future__ import annotations

import os
import subprocess

import pytest

from etcdha import network
from etcdha.lab.netns import LabError, Topology, list_namespaces, pid_alive, run
from etcdha.lab.topology import (
    ADDRESS_MAP,
    build_seed_topology,
    format_address_map,
    map_seed_address,
)

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def root_interfaces() -> set[str]:
    """Interface names of the namespace this test runs in (the host's, usually)."""
    out = run(["ip", "-o", "link", "show"]).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_address_map_follows_the_seed() -> None:
    assert map_seed_address("192.168.1.200") == "192.0.2.200"
    assert map_seed_address("192.168.1.200/24") == "192.0.2.200/24"
    assert map_seed_address("192.168.2.12:80") == "198.51.100.12:80"
    assert map_seed_address("192.168.2.6") == "198.51.100.6"
    assert map_seed_address("10.1.2.3") == "10.1.2.3"
    rows = {row.role: row for row in ADDRESS_MAP}
    assert (rows["VIP"].seed, rows["VIP"].lab, rows["VIP"].lab6) == (
        "192.168.1.200",
        "192.0.2.200",
        "2001:db8:1::200",
    )
    assert rows["DIP"].lab == "198.51.100.200" and rows["ping node"].lab == "192.0.2.1"
    labs = [row.lab for row in ADDRESS_MAP]
    assert len(labs) == len(set(labs)), "two roles share an address"
    assert "192.168.2.12" in format_address_map()


async def test_seed_topology_routes_like_the_seed_and_is_removed() -> None:
    before = root_interfaces()
    seed = build_seed_topology(nodes=2, ipv6=True)
    ours = set(seed.topology.namespaces)
    try:
        topo = seed.topology
        assert ours <= set(list_namespaces())
        assert {
            seed.ns(r) for r in ("client", "node1", "node2", "rs1", "rs2", "ping", "etcd")
        } <= ours
        assert root_interfaces() <= before, "something was created in the root namespace"

        client, node1, etcd = seed.ns("client"), seed.ns("node1"), seed.ns("etcd")
        assert await network.ping(seed.ping_node, 1.0, netns=client)
        assert await network.ping("2001:db8:1::1", 1.0, netns=client)
        assert await network.ping(seed.etcd, 1.0, netns=node1)
        assert await network.ping(seed.rs1, 1.0, netns=node1)

        # etcd is on its own network: no route to the public or private one
        for target in (seed.ping_node, seed.vip, seed.rs1):
            result = await topo.aexec("etcd", "ip", "route", "get", target, check=False)
            assert not result.ok and "unreachable" in result.stderr
        assert not await network.ping(seed.ping_node, 0.2, netns=etcd)

        # directors forward; real servers route via the DIP; the client reaches the VIP on-link
        for node in ("node1", "node2"):
            out = await topo.aexec(node, "sysctl", "-n", "net.ipv4.ip_forward")
            assert out.stdout.strip() == "1"
        for rs in ("rs1", "rs2"):
            assert (
                f"default via {seed.dip} dev eth0" in (await topo.aexec(rs, "ip", "route")).stdout
            )
            routes6 = (await topo.aexec(rs, "ip", "-6", "route")).stdout
            assert f"default via {seed.dip6} dev eth0" in routes6
        route = await topo.aexec("client", "ip", "route", "get", seed.vip)
        assert "dev eth0" in route.stdout and "via" not in route.stdout

        # the VIP on node1 answers the client
        ifname, prefixlen = await network.resolve_interface(seed.vip, None, netns=node1)
        assert (ifname, prefixlen) == ("eth0", 24)
        await network.add_address(ifname, seed.vip, prefixlen, netns=node1)
        assert await network.ping(seed.vip, 1.0, netns=client)

        # cutting node1's control link leaves node2 and the public net alone
        seed.cut_control("node1")
        assert not await network.ping(seed.etcd, 0.3, netns=node1)
        assert await network.ping(seed.etcd, 1.0, netns=seed.ns("node2"))
        assert await network.ping(seed.vip, 1.0, netns=client)
        seed.restore_control("node1")
        assert await network.ping(seed.etcd, 2.0, netns=node1)

        # processes: one tracked, one detached inside a namespace
        tracked = topo.start("rs1", "sleep", "600")
        topo.exec("rs2", "sh", "-c", "setsid sleep 600 >/dev/null 2>&1 < /dev/null &")
        detached = topo.pids("rs2")
        assert tracked.alive() and detached
        assert "node1" in seed.describe() and seed.run_id in seed.describe()
    finally:
        await seed.topology.aclose()

    assert not ours & set(list_namespaces())
    assert not tracked.alive()
    assert not any(pid_alive(pid) for pid in detached)
    assert root_interfaces() <= before
    seed.close()  # a second close is harmless


def test_topology_close_is_complete_and_idempotent() -> None:
    with Topology() as topo:
        topo.connect("a", "eth0", "br0")
        topo.connect("b", "eth0", "br0")
        topo.add_address("a", "eth0", "192.0.2.1/24")
        topo.add_address("b", "eth0", "192.0.2.2/24")
        topo.exec("a", "ping", "-c", "1", "-W", "1", "192.0.2.2")
        proc = topo.start("b", "sleep", "600", stdout=subprocess.DEVNULL)
        names = topo.namespaces
    assert not set(names) & set(list_namespaces())
    assert not proc.alive()
    topo.close()
    with pytest.raises(LabError, match="closed"):
        topo.add_namespace("c")


def test_failed_build_leaves_nothing() -> None:
    before = set(list_namespaces())
    with pytest.raises(ValueError):
        build_seed_topology(nodes=4)
    topo = Topology()
    try:
        topo.connect("a", "eth0", "br0")
        with pytest.raises(LabError, match="eth0"):
            topo.connect("a", "eth0", "br0")  # the name is taken in that namespace
    finally:
        topo.close()
    assert set(list_namespaces()) <= before
