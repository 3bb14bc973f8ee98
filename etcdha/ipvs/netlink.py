"""The kernel's IPVS table over generic netlink (family "IPVS"), packed by hand.

Messages are built with `struct` on a raw AF_NETLINK / NETLINK_GENERIC socket:
a few microseconds per operation, and every command IPVS has (the sync daemon
included). Constants are those of include/uapi/linux/ip_vs.h.

:class:`NetlinkBackend` is synchronous and thread-safe (one lock per socket);
async callers run it with ``asyncio.to_thread``. :meth:`NetlinkBackend.apply`
sends many operations per system call (the kernel handles the messages of one
send in order, and answers only failures, plus an acknowledgement of the last
message), so a large change costs a few hundred system calls, not tens of
thousands.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from etcdha.ipvs.diff import Op, OpKind
from etcdha.ipvs.model import (
    F_HASHED,
    PROTOCOL_NAMES,
    PROTOCOL_NUMBERS,
    Dest,
    Fwd,
    Service,
    ServiceKey,
    Table,
    canonical,
)

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = ~(0x8000 | 0x4000)
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 1

# enum ipvs_cmds
CMD_NEW_SERVICE = 1
CMD_SET_SERVICE = 2
CMD_DEL_SERVICE = 3
CMD_GET_SERVICE = 4
CMD_NEW_DEST = 5
CMD_SET_DEST = 6
CMD_DEL_DEST = 7
CMD_GET_DEST = 8
CMD_NEW_DAEMON = 9
CMD_DEL_DAEMON = 10
CMD_GET_DAEMON = 11
CMD_SET_CONFIG = 12
CMD_GET_CONFIG = 13
CMD_GET_INFO = 15
CMD_FLUSH = 17

# IPVS_CMD_ATTR_*
CMD_ATTR_SERVICE = 1
CMD_ATTR_DEST = 2
CMD_ATTR_DAEMON = 3
CMD_ATTR_TIMEOUT_TCP = 4
CMD_ATTR_TIMEOUT_TCP_FIN = 5
CMD_ATTR_TIMEOUT_UDP = 6

# IPVS_SVC_ATTR_*
SVC_AF = 1
SVC_PROTOCOL = 2
SVC_ADDR = 3
SVC_PORT = 4
SVC_FWMARK = 5
SVC_SCHED_NAME = 6
SVC_FLAGS = 7
SVC_TIMEOUT = 8
SVC_NETMASK = 9
SVC_PE_NAME = 11

# IPVS_DEST_ATTR_*
DEST_ADDR = 1
DEST_PORT = 2
DEST_FWD_METHOD = 3
DEST_WEIGHT = 4
DEST_U_THRESH = 5
DEST_L_THRESH = 6
DEST_ACTIVE_CONNS = 7
DEST_INACT_CONNS = 8
DEST_PERSIST_CONNS = 9
DEST_ADDR_FAMILY = 11

# IPVS_DAEMON_ATTR_*
DAEMON_STATE = 1
DAEMON_MCAST_IFN = 2
DAEMON_SYNC_ID = 3
DAEMON_SYNC_MAXLEN = 4
DAEMON_MCAST_GROUP = 5
DAEMON_MCAST_GROUP6 = 6
DAEMON_MCAST_PORT = 7
DAEMON_MCAST_TTL = 8

# IPVS_INFO_ATTR_*
INFO_VERSION = 1
INFO_CONN_TAB_SIZE = 2

IP_VS_STATE_MASTER = 1
IP_VS_STATE_BACKUP = 2

_AF: dict[int, int] = {4: socket.AF_INET, 6: socket.AF_INET6}
_FAMILY: dict[int, int] = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}
_NLMSGHDR = struct.Struct("=IHHII")
_GENLHDR = struct.Struct("=BBH")
_NLATTR = struct.Struct("=HH")
_BATCH_BYTES = 96 * 1024  # one send: well below the socket's buffer
_BUFFER = 8 * 1024 * 1024
_APPLY_TIMEOUT = 60.0  # for one send's worth of operations
_RECV_SLICE = 1  # seconds a read blocks before the deadline is looked at again


class IPVSError(RuntimeError):
    """An IPVS request failed; `errno` says why (0 when it is not one request's)."""

    def __init__(self, message: str, err: int = 0) -> None:
        super().__init__(message)
        self.errno = err


class IPVSUnavailable(IPVSError):
    """The kernel has no IPVS (the ip_vs module is not loaded and could not be)."""


@dataclass(frozen=True)
class OpError:
    op: Op
    errno: int

    def __str__(self) -> str:
        return f"{self.op}: {os.strerror(self.errno)}"


@dataclass(frozen=True)
class DestStats:
    active: int
    inactive: int
    persistent: int


@dataclass(frozen=True)
class SyncDaemon:
    state: str  # master or backup
    interface: str
    syncid: int
    maxlen: int = 0
    group: str = ""
    port: int = 0
    ttl: int = 0


# -- attribute packing


def _attr(kind: int, payload: bytes) -> bytes:
    size = _NLATTR.size + len(payload)
    return _NLATTR.pack(size, kind) + payload + b"\0" * (-size & 3)


def _u8(kind: int, v: int) -> bytes:
    return _attr(kind, struct.pack("=B", v))


def _u16(kind: int, v: int) -> bytes:
    return _attr(kind, struct.pack("=H", v))


def _u32(kind: int, v: int) -> bytes:
    return _attr(kind, struct.pack("=I", v))


def _be16(kind: int, v: int) -> bytes:
    return _attr(kind, struct.pack("!H", v))


def _str(kind: int, v: str) -> bytes:
    return _attr(kind, v.encode() + b"\0")


def _nested(kind: int, payload: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, payload)


def _addr16(address: str, family: int) -> bytes:
    raw = socket.inet_pton(_AF[family], address)
    return raw + b"\0" * (16 - len(raw))


def _service_id(key: ServiceKey) -> bytes:
    if key.is_fwmark:
        return _u16(SVC_AF, _AF[key.family]) + _u32(SVC_FWMARK, key.fwmark)
    return (
        _u16(SVC_AF, _AF[key.family])
        + _u16(SVC_PROTOCOL, PROTOCOL_NUMBERS[key.protocol])
        + _attr(SVC_ADDR, _addr16(key.address, key.family))
        + _be16(SVC_PORT, key.port)
    )


def _netmask(service: Service) -> bytes:
    family = service.key.family
    if family == 4:
        mask = (0xFFFFFFFF << (32 - service.netmask)) & 0xFFFFFFFF if service.netmask else 0
        return _attr(SVC_NETMASK, struct.pack("!I", mask))
    return _u32(SVC_NETMASK, service.netmask)


def _service_full(service: Service) -> bytes:
    out = (
        _service_id(service.key)
        + _str(SVC_SCHED_NAME, service.scheduler)
        + _attr(SVC_FLAGS, struct.pack("=II", service.flags, 0xFFFFFFFF))
        + _u32(SVC_TIMEOUT, service.timeout)
        + _netmask(service)
    )
    if service.pe:
        out += _str(SVC_PE_NAME, service.pe)
    return out


def _dest_id(dest: Dest) -> bytes:
    return _attr(DEST_ADDR, _addr16(dest.address, dest.family)) + _be16(DEST_PORT, dest.port)


def _dest_full(dest: Dest) -> bytes:
    return (
        _dest_id(dest)
        + _u32(DEST_FWD_METHOD, int(dest.forward))
        + _u32(DEST_WEIGHT, dest.weight)
        + _u32(DEST_U_THRESH, dest.upper)
        + _u32(DEST_L_THRESH, dest.lower)
        + _u16(DEST_ADDR_FAMILY, _AF[dest.family])
    )


def op_payload(op: Op) -> tuple[int, bytes]:
    """(command, attributes) of one operation."""
    s = op.service
    if op.kind is OpKind.ADD_SERVICE:
        return CMD_NEW_SERVICE, _nested(CMD_ATTR_SERVICE, _service_full(s))
    if op.kind is OpKind.EDIT_SERVICE:
        return CMD_SET_SERVICE, _nested(CMD_ATTR_SERVICE, _service_full(s))
    if op.kind is OpKind.DELETE_SERVICE:
        return CMD_DEL_SERVICE, _nested(CMD_ATTR_SERVICE, _service_id(s.key))
    assert op.dest is not None
    svc = _nested(CMD_ATTR_SERVICE, _service_id(s.key))
    if op.kind is OpKind.ADD_DEST:
        return CMD_NEW_DEST, svc + _nested(CMD_ATTR_DEST, _dest_full(op.dest))
    if op.kind is OpKind.EDIT_DEST:
        return CMD_SET_DEST, svc + _nested(CMD_ATTR_DEST, _dest_full(op.dest))
    return CMD_DEL_DEST, svc + _nested(CMD_ATTR_DEST, _dest_id(op.dest))


# -- attribute parsing


def _attrs(data: bytes | memoryview, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    end = len(data) if end is None else end
    while offset + 4 <= end:
        size, kind = _NLATTR.unpack_from(data, offset)
        if size < 4:
            break
        out[kind & NLA_TYPE_MASK] = bytes(data[offset + 4 : offset + size])
        offset += (size + 3) & ~3
    return out


def _get_u16(a: dict[int, bytes], k: int, default: int = 0) -> int:
    return int(struct.unpack("=H", a[k][:2])[0]) if k in a else default


def _get_u32(a: dict[int, bytes], k: int, default: int = 0) -> int:
    return int(struct.unpack("=I", a[k][:4])[0]) if k in a else default


def _get_be16(a: dict[int, bytes], k: int) -> int:
    return int(struct.unpack("!H", a[k][:2])[0]) if k in a else 0


def _get_str(a: dict[int, bytes], k: int) -> str:
    return a[k].split(b"\0", 1)[0].decode() if k in a else ""


def _get_addr(raw: bytes, family: int) -> str:
    size = 4 if family == 4 else 16
    return canonical(socket.inet_ntop(_AF[family], raw[:size]))[0]


def parse_service(a: dict[int, bytes]) -> Service:
    family = _FAMILY.get(_get_u16(a, SVC_AF), 0)
    if family == 0:
        raise IPVSError(f"a service of unknown address family {_get_u16(a, SVC_AF)}")
    fwmark = _get_u32(a, SVC_FWMARK)
    if fwmark:
        key = ServiceKey.of_fwmark(fwmark, family)
    else:
        proto = _get_u16(a, SVC_PROTOCOL)
        key = ServiceKey(
            family,
            PROTOCOL_NAMES.get(proto, str(proto)),
            _get_addr(a[SVC_ADDR], family),
            _get_be16(a, SVC_PORT),
        )
    flags = struct.unpack("=II", a[SVC_FLAGS][:8])[0] if SVC_FLAGS in a else 0
    raw_mask = a.get(SVC_NETMASK, b"\xff\xff\xff\xff")[:4]
    if family == 4:
        netmask = bin(struct.unpack("!I", raw_mask)[0]).count("1")
    else:
        netmask = struct.unpack("=I", raw_mask)[0]
    return Service(
        key,
        _get_str(a, SVC_SCHED_NAME),
        flags & ~F_HASHED,
        _get_u32(a, SVC_TIMEOUT),
        netmask,
        _get_str(a, SVC_PE_NAME),
    )


def parse_dest(a: dict[int, bytes], family: int) -> tuple[Dest, DestStats]:
    family = _FAMILY.get(_get_u16(a, DEST_ADDR_FAMILY), family)
    fwd = _get_u32(a, DEST_FWD_METHOD) & 0x7
    dest = Dest(
        _get_addr(a[DEST_ADDR], family),
        _get_be16(a, DEST_PORT),
        Fwd(fwd) if fwd in Fwd._value2member_map_ else Fwd.ROUTE,
        _get_u32(a, DEST_WEIGHT),
        _get_u32(a, DEST_U_THRESH),
        _get_u32(a, DEST_L_THRESH),
    )
    stats = DestStats(
        _get_u32(a, DEST_ACTIVE_CONNS),
        _get_u32(a, DEST_INACT_CONNS),
        _get_u32(a, DEST_PERSIST_CONNS),
    )
    return dest, stats


# -- the socket


class _Genl:
    """One generic netlink socket talking to one family."""

    def __init__(self, name: str) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            self.sock.bind((0, 0))
            for opt, fallback in (
                (SO_SNDBUFFORCE, socket.SO_SNDBUF),
                (SO_RCVBUFFORCE, socket.SO_RCVBUF),
            ):
                try:
                    self.sock.setsockopt(socket.SOL_SOCKET, opt, _BUFFER)
                except OSError:
                    self.sock.setsockopt(socket.SOL_SOCKET, fallback, _BUFFER)
            with contextlib.suppress(OSError):
                self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.seq = 0
            self.buf = bytearray(1 << 20)
            # Blocking reads bounded by SO_RCVTIMEO: one system call per read
            # (a poll before each would double them; they are dear under UML).
            self.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", _RECV_SLICE, 0)
            )
            self.family = self._resolve(name)
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        return self.seq

    def pack(self, family: int, cmd: int, attrs: bytes, flags: int, version: int = 1) -> bytes:
        seq = self._next_seq()
        size = _NLMSGHDR.size + _GENLHDR.size + len(attrs)
        return (
            _NLMSGHDR.pack(size, family, flags | NLM_F_REQUEST, seq, 0)
            + _GENLHDR.pack(cmd, version, 0)
            + attrs
        )

    def messages(self, deadline: float) -> Iterator[tuple[int, int, int, memoryview]]:
        """(type, flags, seq, payload) of each message in one read; IPVSError
        (ETIMEDOUT) when nothing comes before `deadline` (monotonic)."""
        while True:
            try:
                n = self.sock.recv_into(self.buf)
                break
            except (BlockingIOError, TimeoutError):
                if time.monotonic() >= deadline:
                    raise IPVSError("the kernel did not answer in time", errno.ETIMEDOUT) from None
        view = memoryview(self.buf)[:n]
        offset = 0
        while offset + _NLMSGHDR.size <= n:
            size, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(view, offset)
            if size < _NLMSGHDR.size:
                break
            yield kind, flags, seq, view[offset + _NLMSGHDR.size : offset + size]
            offset += (size + 3) & ~3

    def request(
        self, family: int, cmd: int, attrs: bytes, dump: bool = False, timeout: float = 30.0
    ) -> list[bytes]:
        """Send one request; the genl payloads of its answers (all parts of a dump)."""
        flags = NLM_F_DUMP if dump else NLM_F_ACK
        msg = self.pack(family, cmd, attrs, flags)
        seq = self.seq
        self.sock.send(msg)
        deadline = time.monotonic() + timeout
        out: list[bytes] = []
        while True:
            for kind, _flags, mseq, payload in self.messages(deadline):
                if mseq != seq:
                    continue  # a late answer to an earlier request
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", payload)[0]
                    if err:
                        raise IPVSError(os.strerror(err), err)
                    return out  # the ack that ends a plain request
                if kind == NLMSG_DONE:
                    return out
                if kind != NLMSG_NOOP:
                    out.append(bytes(payload[_GENLHDR.size :]))

    def _resolve(self, name: str) -> int:
        try:
            replies = self.request(
                GENL_ID_CTRL, CTRL_CMD_GETFAMILY, _str(CTRL_ATTR_FAMILY_NAME, name)
            )
        except IPVSError as e:
            if e.errno == errno.ENOENT:
                raise IPVSUnavailable(f"the kernel has no generic netlink family {name}") from e
            raise
        for reply in replies:
            a = _attrs(reply)
            if CTRL_ATTR_FAMILY_ID in a:
                return _get_u16(a, CTRL_ATTR_FAMILY_ID)
        raise IPVSUnavailable(f"the kernel did not say the id of netlink family {name}")


def load_ip_vs() -> bool:
    """Ask modprobe for ip_vs (as ipvsadm does); True if it said yes."""
    modprobe = shutil.which("modprobe") or (
        "/sbin/modprobe" if os.path.exists("/sbin/modprobe") else None
    )
    if modprobe is None:
        return False
    try:
        done = subprocess.run(
            [modprobe, "-q", "ip_vs"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class NetlinkBackend:
    """The kernel's IPVS table: dump it, change it, run the sync daemon."""

    def __init__(self) -> None:
        try:
            self._genl = _Genl(IPVS_GENL_NAME)
        except IPVSUnavailable:
            if not load_ip_vs():
                raise IPVSUnavailable(
                    "the kernel has no IPVS: the ip_vs module is not loaded "
                    "(modprobe ip_vs) or not built"
                ) from None
            self._genl = _Genl(IPVS_GENL_NAME)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._genl.close()

    def __enter__(self) -> NetlinkBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self, cmd: int, attrs: bytes = b"", dump: bool = False, timeout: float = 30.0
    ) -> list[bytes]:
        with self._lock:
            return self._genl.request(self._genl.family, cmd, attrs, dump, timeout)

    # -- reading

    def services(self) -> list[Service]:
        out = []
        for reply in self._request(CMD_GET_SERVICE, dump=True):
            top = _attrs(reply)
            if CMD_ATTR_SERVICE in top:
                out.append(parse_service(_attrs(top[CMD_ATTR_SERVICE])))
        return out

    def dests(self, key: ServiceKey) -> list[tuple[Dest, DestStats]]:
        out = []
        try:
            replies = self._request(
                CMD_GET_DEST, _nested(CMD_ATTR_SERVICE, _service_id(key)), dump=True
            )
        except IPVSError as e:
            if e.errno == errno.ESRCH:  # gone between the two dumps
                return []
            raise
        for reply in replies:
            top = _attrs(reply)
            if CMD_ATTR_DEST in top:
                out.append(parse_dest(_attrs(top[CMD_ATTR_DEST]), key.family))
        return out

    def dump(self, only: Iterable[ServiceKey] | None = None) -> Table:
        """The kernel's table (or only the named services of it)."""
        wanted = None if only is None else set(only)
        table = Table()
        for service in self.services():
            if wanted is not None and service.key not in wanted:
                continue
            table.add(service, [d for d, _ in self.dests(service.key)])
        return table

    def info(self) -> tuple[str, int]:
        """(IPVS version "1.2.1", connection table size)."""
        replies = self._request(CMD_GET_INFO)
        a = _attrs(replies[0]) if replies else {}
        v = _get_u32(a, INFO_VERSION)
        return f"{v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}", _get_u32(a, INFO_CONN_TAB_SIZE)

    def timeouts(self) -> tuple[int, int, int]:
        """(tcp, tcpfin, udp) connection timeouts in seconds (ipvsadm -L --timeout)."""
        replies = self._request(CMD_GET_CONFIG)
        a = _attrs(replies[0]) if replies else {}
        return (
            _get_u32(a, CMD_ATTR_TIMEOUT_TCP),
            _get_u32(a, CMD_ATTR_TIMEOUT_TCP_FIN),
            _get_u32(a, CMD_ATTR_TIMEOUT_UDP),
        )

    # -- changing

    def apply(self, ops: Sequence[Op]) -> list[OpError]:
        """Apply `ops` in order; the ones the kernel refused (the rest still go)."""
        errors: list[OpError] = []
        with self._lock:
            g = self._genl
            start = 0
            while start < len(ops):
                chunk: list[bytes] = []
                by_seq: dict[int, Op] = {}
                size = 0
                end = start
                while True:
                    cmd, attrs = op_payload(ops[end])
                    size += _NLMSGHDR.size + _GENLHDR.size + len(attrs)
                    # The last message of each send asks for an ack: when it
                    # comes, the kernel has answered every message before it.
                    last = end + 1 == len(ops) or size > _BATCH_BYTES
                    chunk.append(g.pack(g.family, cmd, attrs, NLM_F_ACK if last else 0))
                    by_seq[g.seq] = ops[end]
                    end += 1
                    if last:
                        break
                final = g.seq
                g.sock.send(b"".join(chunk))
                deadline = time.monotonic() + _APPLY_TIMEOUT
                done = False
                while not done:
                    for kind, _flags, seq, payload in g.messages(deadline):
                        if kind != NLMSG_ERROR or seq not in by_seq:
                            continue
                        err = -struct.unpack_from("=i", payload)[0]
                        if err:
                            errors.append(OpError(by_seq[seq], err))
                        if seq == final:
                            done = True
                start = end
        return errors

    def flush(self) -> None:
        """Remove every service (ipvsadm -C). Only tests and the lab use it."""
        self._request(CMD_FLUSH)

    # -- the connection sync daemon

    def start_daemon(
        self,
        state: str,
        interface: str,
        syncid: int = 0,
        *,
        maxlen: int = 0,
        group: str | None = None,
        port: int = 0,
        ttl: int = 0,
    ) -> None:
        """Start the master or backup sync daemon (ipvsadm --start-daemon)."""
        attrs = (
            _u32(DAEMON_STATE, _daemon_state(state))
            + _str(DAEMON_MCAST_IFN, interface)
            + _u32(DAEMON_SYNC_ID, syncid)
        )
        if maxlen:
            attrs += _u16(DAEMON_SYNC_MAXLEN, maxlen)
        if group:
            text, family = canonical(group)
            if family == 4:
                attrs += _attr(DAEMON_MCAST_GROUP, socket.inet_pton(socket.AF_INET, text))
            else:
                attrs += _attr(DAEMON_MCAST_GROUP6, socket.inet_pton(socket.AF_INET6, text))
        if port:
            attrs += _u16(DAEMON_MCAST_PORT, port)
        if ttl:
            attrs += _u8(DAEMON_MCAST_TTL, ttl)
        self._request(CMD_NEW_DAEMON, _nested(CMD_ATTR_DAEMON, attrs))

    def stop_daemon(self, state: str) -> None:
        """Stop the master or backup sync daemon (ipvsadm --stop-daemon); no error
        when it was not running."""
        attrs = _nested(CMD_ATTR_DAEMON, _u32(DAEMON_STATE, _daemon_state(state)))
        try:
            self._request(CMD_DEL_DAEMON, attrs, timeout=2.0)
        except IPVSError as e:
            # A daemon thread stopped before it first ran makes kthread_stop()
            # return -EINTR, and netlink sends no ack for that: look instead.
            if e.errno == errno.ETIMEDOUT:
                if any(d.state == state for d in self.daemons()):
                    raise
            elif e.errno != errno.ESRCH:
                raise

    def daemons(self) -> list[SyncDaemon]:
        """The running sync daemons (ipvsadm -L --daemon)."""
        out = []
        for reply in self._request(CMD_GET_DAEMON, dump=True):
            top = _attrs(reply)
            if CMD_ATTR_DAEMON not in top:
                continue
            a = _attrs(top[CMD_ATTR_DAEMON])
            state = _get_u32(a, DAEMON_STATE)
            group = ""
            if DAEMON_MCAST_GROUP in a:
                group = socket.inet_ntop(socket.AF_INET, a[DAEMON_MCAST_GROUP][:4])
            elif DAEMON_MCAST_GROUP6 in a:
                group = canonical(socket.inet_ntop(socket.AF_INET6, a[DAEMON_MCAST_GROUP6][:16]))[0]
            out.append(
                SyncDaemon(
                    "master" if state == IP_VS_STATE_MASTER else "backup",
                    _get_str(a, DAEMON_MCAST_IFN),
                    _get_u32(a, DAEMON_SYNC_ID),
                    _get_u16(a, DAEMON_SYNC_MAXLEN),
                    group,
                    _get_u16(a, DAEMON_MCAST_PORT),
                    a[DAEMON_MCAST_TTL][0] if DAEMON_MCAST_TTL in a else 0,
                )
            )
        return out


def _daemon_state(state: str) -> int:
    if state == "master":
        return IP_VS_STATE_MASTER
    if state == "backup":
        return IP_VS_STATE_BACKUP
    raise ValueError(f"a sync daemon is 'master' or 'backup', not {state!r}")
