"""etcdha.network against real interfaces in network namespaces (tier 3)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator

import pytest
from pyroute2 import netns as pyroute2_netns

from etcdha import network
from etcdha.lab.netns import Topology

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
VIP = "192.0.2.200"
VIP6 = "2001:db8:1::200"


@pytest.fixture
def lan() -> Iterator[Topology]:
    """Three namespaces on one bridge: a and b (directors), p (a peer that watches)."""
    with Topology() as topo:
        for name, host in (("a", 11), ("b", 12), ("p", 100)):
            topo.connect(name, "eth0", "br0")
            topo.add_address(name, "eth0", f"192.0.2.{host}/24")
            topo.add_address(name, "eth0", f"2001:db8:1::{host}/64", nodad=True)
        yield topo


async def _neighbour_mac(topo: Topology, name: str, ip: str) -> str | None:
    result = await topo.aexec(name, "ip", "neigh", "show", ip)
    words = result.stdout.split()
    return words[words.index("lladdr") + 1] if "lladdr" in words else None


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


class Capture:
    """Frames of one ethertype arriving on an interface of a namespace (AF_PACKET)."""

    def __init__(self, ns: str, ifname: str, ethertype: int) -> None:
        self.sock = pyroute2_netns.create_socket(
            ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype), flags=0
        )
        self.sock.bind((ifname, ethertype))
        self.sock.setblocking(False)
        self.frames: list[bytes] = []

    async def collect(self, seconds: float) -> list[bytes]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                while True:
                    self.frames.append(await loop.sock_recv(self.sock, 4096))
        except TimeoutError:
            pass
        return self.frames

    def close(self) -> None:
        self.sock.close()


async def test_resolve_interface_by_subnet(lan: Topology) -> None:
    a = lan.ns("a")
    lan.connect("a", "eth1", "br1")
    lan.add_address("a", "eth1", "198.51.100.11/24")

    assert await network.resolve_interface(VIP, None, netns=a) == ("eth0", 24)
    assert await network.resolve_interface("198.51.100.200", None, netns=a) == ("eth1", 24)
    # a written prefix is kept; an explicit interface wins
    assert await network.resolve_interface("192.0.2.200/25", None, netns=a) == ("eth0", 25)
    assert await network.resolve_interface("192.0.2.200/25", "eth1", netns=a) == ("eth1", 25)
    assert await network.resolve_interface(VIP6, None, netns=a) == ("eth0", 64)
    # the longest subnet of the interface gives the prefix
    lan.add_address("a", "eth0", "192.0.2.129/25")
    assert await network.resolve_interface(VIP, None, netns=a) == ("eth0", 25)

    with pytest.raises(network.ResolveError, match=r"203\.0\.113\.5"):
        await network.resolve_interface("203.0.113.5", None, netns=a)
    with pytest.raises(network.ResolveError, match="cannot tell the prefix length"):
        await network.resolve_interface(VIP, "eth1", netns=a)
    with pytest.raises(network.InterfaceNotFound, match="eth7"):
        await network.resolve_interface(VIP, "eth7", netns=a)
    # a second interface with a subnet containing the address: ambiguous
    lan.add_address("a", "eth1", "192.0.3.1/16")
    with pytest.raises(network.ResolveError, match=r"192\.0\.2\.200.*eth0.*eth1"):
        await network.resolve_interface(VIP, None, netns=a)


async def test_add_and_remove_are_idempotent(lan: Topology) -> None:
    a = lan.ns("a")
    assert await network.add_address("eth0", VIP, 24, label="eth0:vip", netns=a) is True
    assert await network.add_address("eth0", VIP, 24, label="eth0:vip", netns=a) is False
    assert await network.has_address("eth0", VIP, netns=a)
    info = await network.address_state("eth0", VIP, netns=a)
    assert info is not None
    assert (info.prefixlen, info.label, info.secondary) == (24, "eth0:vip", True)
    assert info.valid_lft is None
    assert any(x.ip == VIP for x in await network.addresses_on("eth0", netns=a))

    assert await network.remove_address("eth0", VIP, 24, netns=a) is True
    assert await network.remove_address("eth0", VIP, 24, netns=a) is False
    assert not await network.has_address("eth0", VIP, netns=a)
    # the director's own address, primary in the same subnet, is untouched
    assert await network.has_address("eth0", "192.0.2.11", netns=a)

    assert await network.add_address("eth0", VIP6, 64, nodad=True, netns=a) is True
    assert await network.add_address("eth0", VIP6, 64, nodad=True, netns=a) is False
    assert await network.remove_address("eth0", VIP6, netns=a) is True
    assert await network.remove_address("eth0", VIP6, netns=a) is False

    with pytest.raises(network.InterfaceNotFound, match="eth9"):
        await network.add_address("eth9", VIP, 24, netns=a)
    with pytest.raises(network.InterfaceNotFound, match="eth9"):
        await network.remove_address("eth9", VIP, 24, netns=a)
    assert not await network.has_address("eth9", VIP, netns=a)
    with pytest.raises(network.NetworkError, match="must start with the interface name"):
        await network.add_address("eth0", VIP, 24, label="vip", netns=a)
    assert await network.interfaces_present(["eth0", "lo", "eth9"], netns=a) == ["eth9"]


async def test_duplicate_ipv6_address_is_reported_dadfailed(lan: Topology) -> None:
    a, b = lan.ns("a"), lan.ns("b")
    await network.add_address("eth0", VIP6, 64, netns=a)
    first = await network.wait_dad("eth0", VIP6, timeout=5, netns=a)
    assert not first.dadfailed and not first.tentative

    await network.add_address("eth0", VIP6, 64, netns=b)
    second = await network.wait_dad("eth0", VIP6, timeout=5, netns=b)
    assert second.dadfailed
    assert "dadfailed" in str(second)
    listed = [x for x in await network.addresses_on("eth0", netns=b) if x.ip == VIP6]
    assert listed and listed[0].dadfailed
    with pytest.raises(network.NetworkError, match="duplicate address detection failed"):
        await network.send_unsolicited_na("eth0", VIP6, 1, 0.01, netns=b)


async def test_gratuitous_arp_moves_the_peers_neighbour_entry(lan: Topology) -> None:
    a, b, p = lan.ns("a"), lan.ns("b"), lan.ns("p")
    mac_a = (await network.link_info("eth0", netns=a)).mac
    mac_b = (await network.link_info("eth0", netns=b)).mac

    # Entries updated less than locktime ago ignore a different MAC, except (on recent
    # kernels) from gratuitous ARP; a zero locktime keeps the test independent of that.
    lan.sysctl("p", "net.ipv4.neigh.eth0.locktime", 0)
    # the peer learns the VIP at a, as it would from traffic
    await network.add_address("eth0", VIP, 24, netns=a)
    assert await network.ping(VIP, 1.0, netns=p)
    assert await _neighbour_mac(lan, "p", VIP) == _mac_text(mac_a)

    # failover: a lets go, b takes the VIP and announces it
    await network.remove_address("eth0", VIP, 24, netns=a)
    await network.add_address("eth0", VIP, 24, netns=b)
    capture = Capture(p, "eth0", ETH_P_ARP)
    try:
        collecting = asyncio.create_task(capture.collect(0.6))
        assert await network.send_garp("eth0", VIP, 3, 0.05, netns=b) == 3
        assert await network.send_garp("eth0", VIP, 1, 0.0, mode="reply", netns=b) == 1
        frames = await collecting
    finally:
        capture.close()

    vip = ipaddress.IPv4Address(VIP).packed
    announcements = []
    for frame in frames:
        dst, src = frame[0:6], frame[6:12]
        hrd, pro, hln, pln, op = struct.unpack("!HHBBH", frame[14:22])
        sha, spa, tha, tpa = frame[22:28], frame[28:32], frame[32:38], frame[38:42]
        if spa == vip and tpa == vip and src == mac_b:
            assert (dst, hrd, pro, hln, pln, sha) == (b"\xff" * 6, 1, 0x0800, 6, 4, mac_b)
            announcements.append((op, tha))
    assert announcements.count((1, b"\x00" * 6)) == 3  # request form, zero target MAC
    assert announcements.count((2, mac_b)) == 1  # reply form, target MAC = sender's
    assert await _neighbour_mac(lan, "p", VIP) == _mac_text(mac_b)


async def test_unsolicited_na_moves_the_peers_neighbour_entry(lan: Topology) -> None:
    a, b, p = lan.ns("a"), lan.ns("b"), lan.ns("p")
    mac_a = (await network.link_info("eth0", netns=a)).mac
    mac_b = (await network.link_info("eth0", netns=b)).mac

    await network.add_address("eth0", VIP6, 64, nodad=True, netns=a)
    assert await network.ping(VIP6, 1.0, netns=p)
    assert await _neighbour_mac(lan, "p", VIP6) == _mac_text(mac_a)

    await network.remove_address("eth0", VIP6, netns=a)
    await network.add_address("eth0", VIP6, 64, nodad=True, netns=b)
    capture = Capture(p, "eth0", ETH_P_IPV6)
    try:
        collecting = asyncio.create_task(capture.collect(0.5))
        assert await network.send_unsolicited_na("eth0", VIP6, 3, 0.05, router=True, netns=b) == 3
        frames = await collecting
    finally:
        capture.close()

    target = ipaddress.IPv6Address(VIP6).packed
    seen = 0
    for frame in frames:
        ip6 = frame[14:]
        if len(ip6) < 40 + 32 or ip6[6] != 58 or ip6[40] != 136:
            continue
        hop_limit, src, dst = ip6[7], ip6[8:24], ip6[24:40]
        flags = struct.unpack("!I", ip6[44:48])[0]
        option = ip6[64:72]
        assert frame[6:12] == mac_b
        assert hop_limit == 255
        assert src == target
        assert dst == ipaddress.IPv6Address("ff02::1").packed
        assert ip6[48:64] == target
        assert flags & 0x20000000  # override
        assert flags & 0x80000000  # router, as asked
        assert not flags & 0x40000000  # not solicited
        assert option == b"\x02\x01" + mac_b
        seen += 1
    assert seen == 3
    assert await _neighbour_mac(lan, "p", VIP6) == _mac_text(mac_b)


async def test_ping(lan: Topology) -> None:
    a = lan.ns("a")
    assert await network.ping("192.0.2.100", 1.0, netns=a)
    assert await network.ping("2001:db8:1::100", 1.0, netns=a)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await network.ping("192.0.2.99", 0.3, netns=a)  # nobody there
    assert 0.25 < loop.time() - started < 1.0
    assert not await network.ping("2001:db8:1::99", 0.3, netns=a)
    assert not await network.ping("198.51.100.1", 0.3, netns=a)  # no route
    lan.cut("p", "eth0")
    assert not await network.ping("192.0.2.100", 0.3, netns=a)
