"""Addresses, gratuitous ARP / unsolicited neighbour advertisements, and ping.

Everything here is a coroutine and talks to the kernel over rtnetlink
(pyroute2's ``AsyncIPRoute``) or over non-blocking raw sockets driven by the
event loop; nothing sleeps in a blocking way.

Every function acts on the network namespace of the calling process. The
keyword ``netns=`` names another one (as ``ip netns`` names it, under
/run/netns); the lab and the tests use it to act inside their namespaces
without starting a process there. Opening a socket in another namespace forks
a short-lived helper (pyroute2 does the ``setns``), which costs a few
milliseconds; the agent itself never passes ``netns``.

Decisions worth knowing:

- :func:`resolve_interface` picks the interface the way Heartbeat's IPaddr
  did: the one whose configured subnet contains the address, with that
  subnet's prefix length unless the address carries its own. Host-only
  addresses (/32, /128) do not count as subnets. Two interfaces with a
  matching subnet are an error that asks for an explicit interface, rather
  than a guess.
- :func:`send_garp` sends, by default, the *request* form of gratuitous ARP:
  an ARP request to the broadcast address with sender IP = target IP = the
  address and a zero target hardware address. That is the "ARP Announcement"
  of RFC 5227, what the Linux kernel itself sends when an interface comes up,
  and (with an all-ones target hardware address, which receivers ignore) what
  keepalived and ``arping -U`` send. Linux receivers update an existing
  neighbour entry from either form; the *reply* form (target hardware address
  = sender's, as ``arping -A`` sends) is available with ``mode="reply"`` or
  ``mode="both"`` for old stacks that only learn from replies.
- :func:`send_unsolicited_na` sends ICMPv6 neighbour advertisements to ff02::1
  with hop limit 255, the Override flag and a target link-layer address
  option; the Router flag follows the interface's IPv6 forwarding setting (as
  keepalived does) unless given. A tentative or DAD-failed address is refused
  with a clear error: advertising it would be wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import secrets
import socket
import struct
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pyroute2 import AsyncIPRoute
from pyroute2 import netns as _pyroute2_netns
from pyroute2.netlink.exceptions import NetlinkError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# ifa_flags bits (linux/if_addr.h)
IFA_F_SECONDARY = 0x01
IFA_F_NODAD = 0x02
IFA_F_OPTIMISTIC = 0x04
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
IFA_F_TENTATIVE = 0x40
IFA_F_PERMANENT = 0x80

_IFF_UP = 0x1
_INFINITY_LFT = 0xFFFFFFFF
_ETH_P_ARP = 0x0806
_ETH_P_IP = 0x0800
_ARPOP_REQUEST = 1
_ARPOP_REPLY = 2
_ICMP_ECHO_REPLY = 0
_ICMP_ECHO_REQUEST = 8
_ICMPV6_ECHO_REQUEST = 128
_ICMPV6_ECHO_REPLY = 129
_ICMPV6_NA = 136
_NA_FLAG_ROUTER = 0x80000000
_NA_FLAG_OVERRIDE = 0x20000000
_ICMP_FILTER = 1  # SOL_RAW option for IPv4 raw ICMP sockets
_ICMP6_FILTER = 1  # IPPROTO_ICMPV6 option
_SOL_RAW = 255

GarpMode = Literal["request", "reply", "both"]


class NetworkError(RuntimeError):
    """An address or announcement operation could not be done; the message says why."""


class InterfaceNotFound(NetworkError):
    """The named interface does not exist (in the namespace asked about)."""

    def __init__(self, ifname: str, netns: str | None = None) -> None:
        where = f" in network namespace {netns}" if netns else ""
        super().__init__(f"interface {ifname!r} does not exist{where}")
        self.ifname = ifname


class ResolveError(NetworkError):
    """No interface, or more than one, could hold an address."""


@dataclass(frozen=True)
class AddressInfo:
    """One address configured on an interface, with the flags that matter."""

    ifname: str
    ip: str
    prefixlen: int
    label: str | None
    flags: int
    valid_lft: int | None  # seconds left; None = forever
    preferred_lft: int | None

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.ip).version

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(f"{self.ip}/{self.prefixlen}")

    @property
    def tentative(self) -> bool:
        """IPv6 duplicate address detection has not finished yet."""
        return bool(self.flags & IFA_F_TENTATIVE) and not self.dadfailed

    @property
    def dadfailed(self) -> bool:
        """IPv6 duplicate address detection found another holder of this address."""
        return bool(self.flags & IFA_F_DADFAILED)

    @property
    def secondary(self) -> bool:
        return bool(self.flags & IFA_F_SECONDARY)

    def __str__(self) -> str:
        state = " dadfailed" if self.dadfailed else " tentative" if self.tentative else ""
        return f"{self.ip}/{self.prefixlen} on {self.ifname}{state}"


@dataclass(frozen=True)
class LinkInfo:
    index: int
    ifname: str
    mac: bytes
    up: bool


# ---------------------------------------------------------------------------
# plumbing


@contextlib.asynccontextmanager
async def _rtnl(netns: str | None) -> AsyncIterator[Any]:
    """An rtnetlink socket in this namespace or in ``netns`` (never creating it)."""
    if netns is not None and not os.path.exists(os.path.join("/run/netns", netns)):  # noqa: ASYNC240 (a stat of tmpfs)
        raise NetworkError(f"network namespace {netns!r} does not exist")
    ipr = AsyncIPRoute(netns=netns, flags=0) if netns else AsyncIPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _open_socket(family: int, kind: int, proto: int, netns: str | None) -> socket.socket:
    if netns is None:
        sock = socket.socket(family, kind, proto)
    else:
        sock = _pyroute2_netns.create_socket(netns, family, kind, proto, flags=0)
    sock.setblocking(False)
    return sock


def _parse_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.split("/", 1)[0].split("%", 1)[0])
    except ValueError:
        raise NetworkError(f"{text!r} is not an IP address") from None


async def _links(ipr: Any) -> dict[int, LinkInfo]:
    links: dict[int, LinkInfo] = {}
    async for msg in await ipr.link("dump"):
        mac = msg.get("IFLA_ADDRESS") or "00:00:00:00:00:00"
        links[msg["index"]] = LinkInfo(
            index=msg["index"],
            ifname=msg.get("IFLA_IFNAME"),
            mac=bytes.fromhex(mac.replace(":", "")),
            up=bool(msg["flags"] & _IFF_UP),
        )
    return links


async def _link(ipr: Any, ifname: str, netns: str | None) -> LinkInfo:
    for link in (await _links(ipr)).values():
        if link.ifname == ifname:
            return link
    raise InterfaceNotFound(ifname, netns)


def _lft(value: int | None) -> int | None:
    return None if value is None or value == _INFINITY_LFT else int(value)


async def _addresses(ipr: Any, links: dict[int, LinkInfo]) -> list[AddressInfo]:
    result = []
    async for msg in await ipr.addr("dump"):
        link = links.get(msg["index"])
        if link is None:
            continue
        # IPv4 point-to-point peers aside, IFA_LOCAL is the address itself.
        ip = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        if ip is None:
            continue
        flags = msg.get("IFA_FLAGS")
        cache = msg.get("IFA_CACHEINFO") or {}
        result.append(
            AddressInfo(
                ifname=link.ifname,
                ip=str(ipaddress.ip_address(ip)),
                prefixlen=int(msg["prefixlen"]),
                label=msg.get("IFA_LABEL"),
                flags=int(flags if flags is not None else msg["flags"]),
                valid_lft=_lft(cache.get("ifa_valid")),
                preferred_lft=_lft(cache.get("ifa_preferred")),
            )
        )
    return result


# ---------------------------------------------------------------------------
# interfaces and addresses


async def interfaces_present(names: Iterable[str], *, netns: str | None = None) -> list[str]:
    """The names among ``names`` that are *missing* (empty list: all present)."""
    async with _rtnl(netns) as ipr:
        present = {link.ifname for link in (await _links(ipr)).values()}
    return [name for name in names if name not in present]


async def link_info(ifname: str, *, netns: str | None = None) -> LinkInfo:
    """Index, MAC address and admin state of one interface."""
    async with _rtnl(netns) as ipr:
        return await _link(ipr, ifname, netns)


async def all_addresses(*, netns: str | None = None) -> list[AddressInfo]:
    """Every address of every interface."""
    async with _rtnl(netns) as ipr:
        return await _addresses(ipr, await _links(ipr))


async def addresses_on(ifname: str, *, netns: str | None = None) -> list[AddressInfo]:
    """The addresses of one interface (IPv4 and IPv6, with their DAD state)."""
    async with _rtnl(netns) as ipr:
        link = await _link(ipr, ifname, netns)
        return await _addresses(ipr, {link.index: link})


async def address_state(ifname: str, ip: str, *, netns: str | None = None) -> AddressInfo | None:
    """The address as configured on ``ifname`` (any prefix length), or None."""
    wanted = _parse_ip(ip)
    for info in await addresses_on(ifname, netns=netns):
        if ipaddress.ip_address(info.ip) == wanted:
            return info
    return None


async def has_address(ifname: str, ip: str, *, netns: str | None = None) -> bool:
    """Whether ``ip`` (any prefix length) is on ``ifname``; False if the interface is missing."""
    try:
        return await address_state(ifname, ip, netns=netns) is not None
    except InterfaceNotFound:
        return False


async def add_address(
    ifname: str,
    ip: str,
    prefixlen: int,
    label: str | None = None,
    *,
    nodad: bool = False,
    valid_lft: int | None = None,
    preferred_lft: int | None = None,
    netns: str | None = None,
) -> bool:
    """Put ``ip/prefixlen`` on ``ifname``; True if added, False if it was already there.

    An address already present (with any prefix length) is left as it is; to
    refresh its lifetimes use :func:`refresh_address_lifetime`. IPv4 addresses
    get the subnet's broadcast address, as Heartbeat's IPaddr gave them.
    ``label`` (IPv4 only) must start with the interface name, e.g. ``eth0:0``.
    ``nodad`` skips IPv6 duplicate address detection.
    """
    addr = _parse_ip(ip)
    _check_prefix(addr, prefixlen)
    if label is not None:
        if addr.version != 4:
            raise NetworkError(f"label {label!r}: only IPv4 addresses carry labels")
        if not label.startswith(ifname) or len(label) > 15:
            raise NetworkError(
                f"label {label!r} for {ip} must start with the interface name {ifname!r} "
                "and be at most 15 characters (e.g. eth0:0)"
            )
    async with _rtnl(netns) as ipr:
        link = await _link(ipr, ifname, netns)
        existing = await _addresses(ipr, {link.index: link})
        if any(ipaddress.ip_address(a.ip) == addr for a in existing):
            return False
        spec: dict[str, Any] = {
            "index": link.index,
            "address": str(addr),
            "prefixlen": prefixlen,
        }
        if addr.version == 4:
            spec["broadcast"] = True
        if label is not None:
            spec["label"] = label
        if nodad and addr.version == 6:
            spec["flags"] = IFA_F_NODAD
        if valid_lft is not None:
            spec["valid_lft"] = int(valid_lft)
            spec["preferred_lft"] = int(preferred_lft if preferred_lft is not None else valid_lft)
        try:
            await ipr.addr("add", **spec)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise NetworkError(f"cannot add {addr}/{prefixlen} to {ifname}: {exc}") from exc
    return True


async def refresh_address_lifetime(
    ifname: str,
    ip: str,
    prefixlen: int,
    valid_lft: int,
    preferred_lft: int | None = None,
    *,
    netns: str | None = None,
) -> None:
    """Set new lifetimes on an address (adding it if absent), like ``ip addr replace``."""
    addr = _parse_ip(ip)
    _check_prefix(addr, prefixlen)
    async with _rtnl(netns) as ipr:
        link = await _link(ipr, ifname, netns)
        spec: dict[str, Any] = {
            "index": link.index,
            "address": str(addr),
            "prefixlen": prefixlen,
            "valid_lft": int(valid_lft),
            "preferred_lft": int(preferred_lft if preferred_lft is not None else valid_lft),
        }
        if addr.version == 4:
            spec["broadcast"] = True
        try:
            await ipr.addr("replace", **spec)
        except NetlinkError as exc:
            raise NetworkError(f"cannot refresh {addr}/{prefixlen} on {ifname}: {exc}") from exc


async def remove_address(
    ifname: str, ip: str, prefixlen: int | None = None, *, netns: str | None = None
) -> bool:
    """Take ``ip`` off ``ifname``; True if removed, False if it was not there.

    ``prefixlen`` None removes the address whatever its prefix length. A
    missing interface raises :class:`InterfaceNotFound` (the caller decides
    whether an interface that vanished means its addresses are gone).
    """
    addr = _parse_ip(ip)
    async with _rtnl(netns) as ipr:
        link = await _link(ipr, ifname, netns)
        present = [
            a
            for a in await _addresses(ipr, {link.index: link})
            if ipaddress.ip_address(a.ip) == addr and prefixlen in (None, a.prefixlen)
        ]
        if not present:
            return False
        for info in present:
            try:
                await ipr.addr("del", index=link.index, address=str(addr), prefixlen=info.prefixlen)
            except NetlinkError as exc:
                if exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                    return False
                raise NetworkError(
                    f"cannot remove {addr}/{info.prefixlen} from {ifname}: {exc}"
                ) from exc
    return True


async def remove_addresses(
    addresses: Iterable[tuple[str, str, int | None]], *, netns: str | None = None
) -> list[tuple[tuple[str, str, int | None], str]]:
    """Remove several ``(ifname, ip, prefixlen)`` at once, over one netlink socket.

    Returns each address with its outcome: ``"removed"``, ``"absent"`` (not
    there, or its interface is gone) or ``"failed: <reason>"``. Never raises
    for one address; the fence guard uses it to act fast at a deadline.
    """
    items = list(addresses)
    results: list[tuple[tuple[str, str, int | None], str]] = []
    async with _rtnl(netns) as ipr:
        links = await _links(ipr)
        by_name = {link.ifname: link for link in links.values()}
        current = await _addresses(ipr, links)
        for item in items:
            ifname, ip, prefixlen = item
            link = by_name.get(ifname)
            try:
                addr = _parse_ip(ip)
            except NetworkError as exc:
                results.append((item, f"failed: {exc}"))
                continue
            matches = [
                a
                for a in current
                if link is not None
                and a.ifname == ifname
                and ipaddress.ip_address(a.ip) == addr
                and prefixlen in (None, a.prefixlen)
            ]
            if link is None or not matches:
                results.append((item, "absent"))
                continue
            outcome = "absent"
            for info in matches:
                try:
                    await ipr.addr(
                        "del", index=link.index, address=str(addr), prefixlen=info.prefixlen
                    )
                    outcome = "removed"
                except NetlinkError as exc:
                    if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                        outcome = f"failed: {exc}"
            results.append((item, outcome))
    return results


async def wait_dad(
    ifname: str,
    ip: str,
    timeout: float = 5.0,  # noqa: ASYNC109 (bounds a polling loop)
    *,
    netns: str | None = None,
) -> AddressInfo:
    """Wait until IPv6 duplicate address detection of ``ip`` has finished.

    Returns the address's final state: check ``.dadfailed``. An IPv4 address,
    or one added with ``nodad``, is returned at once. Raises NetworkError if the
    address is not there, or still tentative after ``timeout`` (interface
    without carrier, for instance).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await address_state(ifname, ip, netns=netns)
        if info is None:
            raise NetworkError(f"{ip} is not on {ifname}")
        if not info.tentative:
            return info
        if loop.time() >= deadline:
            raise NetworkError(
                f"{ip} on {ifname} is still tentative after {timeout:g}s "
                "(duplicate address detection has not finished: is the link up?)"
            )
        await asyncio.sleep(0.05)


def _check_prefix(addr: IPAddress, prefixlen: int) -> None:
    limit = 32 if addr.version == 4 else 128
    if not 0 <= prefixlen <= limit:
        raise NetworkError(f"prefix length {prefixlen} is not valid for {addr}")


async def resolve_interface(
    address: str, explicit: str | None = None, *, netns: str | None = None
) -> tuple[str, int]:
    """The interface that should hold ``address`` and the prefix length to give it.

    ``address`` is ``ip`` or ``ip/prefix``; a written prefix is kept. Without
    ``explicit``, the interface is the one with a configured subnet containing
    the address (the longest such subnet gives the prefix length); with it,
    that interface is used and only the prefix length is looked up.
    """
    try:
        given = ipaddress.ip_interface(address) if "/" in address else None
    except ValueError:
        raise ResolveError(f"{address!r} is not an address (ip or ip/prefix)") from None
    ip = given.ip if given is not None else _parse_ip(address)
    prefix = given.network.prefixlen if given is not None else None
    hostlen = 32 if ip.version == 4 else 128

    async with _rtnl(netns) as ipr:
        links = await _links(ipr)
        if explicit is not None and explicit not in {li.ifname for li in links.values()}:
            raise InterfaceNotFound(explicit, netns)
        addresses = await _addresses(ipr, links)

    # per interface, the longest configured subnet that contains the address
    best: dict[str, int] = {}
    subnets: list[str] = []
    for info in addresses:
        iface = info.interface
        if iface.version != ip.version or info.prefixlen >= hostlen or info.dadfailed:
            continue
        subnets.append(f"{info.ifname} {iface.network}")
        if ip in iface.network and info.prefixlen > best.get(info.ifname, -1):
            best[info.ifname] = info.prefixlen

    if explicit is not None:
        if prefix is not None:
            return explicit, prefix
        if explicit in best:
            return explicit, best[explicit]
        raise ResolveError(
            f"cannot tell the prefix length of {ip} on {explicit}: no subnet of {explicit} "
            f"contains it; write the address as {ip}/<prefix>"
        )
    if len(best) == 1:
        ((ifname, found),) = best.items()
        return ifname, prefix if prefix is not None else found
    if not best:
        known = ", ".join(subnets) or "none"
        raise ResolveError(
            f"no interface has a subnet containing {ip} (subnets here: {known}); "
            "name the interface for this address in the config"
        )
    several = ", ".join(f"{name} (/{length})" for name, length in sorted(best.items()))
    raise ResolveError(
        f"{ip} is inside subnets of several interfaces: {several}; "
        "name the interface for this address in the config"
    )


# ---------------------------------------------------------------------------
# announcements


def _arp_frame(mac: bytes, ip: ipaddress.IPv4Address, op: int) -> bytes:
    broadcast = b"\xff" * 6
    target_mac = mac if op == _ARPOP_REPLY else b"\x00" * 6
    ether = broadcast + mac + struct.pack("!H", _ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, _ETH_P_IP, 6, 4, op)
    arp += mac + ip.packed + target_mac + ip.packed
    frame = ether + arp
    return frame + b"\x00" * (60 - len(frame))  # minimum Ethernet frame, without FCS


async def send_garp(
    ifname: str,
    ip: str,
    count: int = 5,
    interval: float = 0.2,
    *,
    mode: GarpMode = "request",
    netns: str | None = None,
) -> int:
    """Announce ``ip`` on ``ifname`` with gratuitous ARP; returns the frames sent.

    ``count`` rounds, ``interval`` seconds apart (the first at once); each round
    sends the request form, the reply form, or both (see the module docstring).
    """
    addr = _parse_ip(ip)
    if not isinstance(addr, ipaddress.IPv4Address):
        raise NetworkError(f"gratuitous ARP is for IPv4; use send_unsolicited_na for {addr}")
    link = await link_info(ifname, netns=netns)
    if not link.up:
        raise NetworkError(f"cannot announce {addr}: interface {ifname} is down")
    ops = {"request": [_ARPOP_REQUEST], "reply": [_ARPOP_REPLY], "both": [1, 2]}[mode]
    frames = [_arp_frame(link.mac, addr, op) for op in ops]
    loop = asyncio.get_running_loop()
    sent = 0
    sock = _open_socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ARP), netns)
    with sock:
        sock.bind((ifname, _ETH_P_ARP))
        for round_no in range(count):
            if round_no:
                await asyncio.sleep(interval)
            for frame in frames:
                try:
                    await loop.sock_sendall(sock, frame)
                except OSError as exc:
                    raise NetworkError(
                        f"gratuitous ARP for {addr} on {ifname} failed: {exc.strerror}"
                    ) from exc
                sent += 1
    return sent


def _ipv6_forwarding(ifname: str) -> bool:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/forwarding") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _na_packet(mac: bytes, target: ipaddress.IPv6Address, router: bool) -> bytes:
    flags = _NA_FLAG_OVERRIDE | (_NA_FLAG_ROUTER if router else 0)
    # checksum left 0: the kernel computes it for ICMPv6 raw sockets
    head = struct.pack("!BBHI", _ICMPV6_NA, 0, 0, flags) + target.packed
    option = struct.pack("!BB", 2, 1) + mac  # target link-layer address, 8 bytes
    return head + option


async def send_unsolicited_na(
    ifname: str,
    ip6: str,
    count: int = 5,
    interval: float = 0.2,
    *,
    router: bool | None = None,
    netns: str | None = None,
) -> int:
    """Announce ``ip6`` on ``ifname`` with unsolicited neighbour advertisements.

    Sent to ff02::1 from ``ip6`` itself, hop limit 255, Override set. ``router``
    None sets the Router flag when IPv6 forwarding is on for the interface
    (read in this process's namespace; with ``netns`` it defaults to False).
    Returns the number of advertisements sent.
    """
    addr = _parse_ip(ip6)
    if not isinstance(addr, ipaddress.IPv6Address):
        raise NetworkError(f"neighbour advertisements are for IPv6; use send_garp for {addr}")
    link = await link_info(ifname, netns=netns)
    if not link.up:
        raise NetworkError(f"cannot announce {addr}: interface {ifname} is down")
    state = await address_state(ifname, str(addr), netns=netns)
    if state is None:
        raise NetworkError(f"cannot announce {addr}: it is not on {ifname}")
    if state.dadfailed:
        raise NetworkError(
            f"not announcing {addr} on {ifname}: duplicate address detection failed "
            "(another host on the link holds it)"
        )
    if state.tentative:
        raise NetworkError(
            f"not announcing {addr} on {ifname} yet: duplicate address detection is running"
        )
    if router is None:
        router = _ipv6_forwarding(ifname) if netns is None else False
    packet = _na_packet(link.mac, addr, router)
    loop = asyncio.get_running_loop()
    sent = 0
    sock = _open_socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6, netns)
    with sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, link.index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        try:
            sock.bind((str(addr), 0, 0, link.index if addr.is_link_local else 0))
        except OSError as exc:
            raise NetworkError(f"cannot send from {addr} on {ifname}: {exc.strerror}") from exc
        for round_no in range(count):
            if round_no:
                await asyncio.sleep(interval)
            try:
                await loop.sock_sendto(sock, packet, ("ff02::1", 0, 0, link.index))
            except OSError as exc:
                raise NetworkError(
                    f"neighbour advertisement for {addr} on {ifname} failed: {exc.strerror}"
                ) from exc
            sent += 1
    return sent


# ---------------------------------------------------------------------------
# ping


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(int(word) for word in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo_request(v6: bool, ident: int, seq: int, payload: bytes) -> bytes:
    kind = _ICMPV6_ECHO_REQUEST if v6 else _ICMP_ECHO_REQUEST
    head = struct.pack("!BBHHH", kind, 0, 0, ident, seq)
    if v6:
        return head + payload  # the kernel fills in the ICMPv6 checksum
    checksum = _inet_checksum(head + payload)
    return struct.pack("!BBHHH", kind, 0, checksum, ident, seq) + payload


def _is_our_reply(v6: bool, data: bytes, ident: int, seq: int, payload: bytes) -> bool:
    if not v6:
        if len(data) < 20:
            return False
        data = data[(data[0] & 0x0F) * 4 :]  # IPv4 raw sockets include the IP header
    if len(data) < 8:
        return False
    kind, code, _sum, r_ident, r_seq = struct.unpack("!BBHHH", data[:8])
    wanted = _ICMPV6_ECHO_REPLY if v6 else _ICMP_ECHO_REPLY
    return (kind, code, r_ident, r_seq) == (wanted, 0, ident, seq) and data[8:] == payload


def _only_echo_replies(sock: socket.socket, v6: bool) -> None:
    """Let the kernel drop every ICMP type but echo reply before it reaches us."""
    if v6:
        words = [0xFFFFFFFF] * 8
        words[_ICMPV6_ECHO_REPLY >> 5] &= ~(1 << (_ICMPV6_ECHO_REPLY & 31))
        sock.setsockopt(socket.IPPROTO_ICMPV6, _ICMP6_FILTER, struct.pack("=8I", *words))
    else:
        mask = 0xFFFFFFFF & ~(1 << _ICMP_ECHO_REPLY)
        sock.setsockopt(_SOL_RAW, _ICMP_FILTER, struct.pack("=I", mask))


async def ping(address: str, timeout: float = 1.0, *, netns: str | None = None) -> bool:  # noqa: ASYNC109
    """One ICMP (or ICMPv6) echo request; True if the matching reply came within ``timeout``.

    Needs a raw socket (root or CAP_NET_RAW). An unreachable destination, a
    send error or silence all answer False.
    """
    addr = _parse_ip(address)
    v6 = addr.version == 6
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    ident = secrets.randbits(16)
    seq = secrets.randbits(16)
    payload = b"etcdha" + secrets.token_bytes(10)
    loop = asyncio.get_running_loop()
    target: tuple[Any, ...] = (address.split("/", 1)[0], 0) if v6 else (str(addr), 0)
    sock = _open_socket(family, socket.SOCK_RAW, proto, netns)
    with sock:
        _only_echo_replies(sock, v6)
        try:
            await loop.sock_sendto(sock, _echo_request(v6, ident, seq, payload), target)
        except OSError:
            return False
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data, source = await loop.sock_recvfrom(sock, 2048)
                    if _parse_ip(source[0]) == addr and _is_our_reply(
                        v6, data, ident, seq, payload
                    ):
                        return True
        except TimeoutError:
            return False
