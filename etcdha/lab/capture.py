"""Which director took each client connection, seen from the real servers' side.

With LVS-NAT the director that schedules a connection rewrites the SYN's
destination and sends it to the real server from its own private interface:
the SYN's Ethernet source at the real server names that director. (The
client's side cannot tell: while ARP caches catch up after a takeover, frames
may pass through the previous director on their way.) A packet socket in each
real server's namespace, with a classic BPF filter that keeps only SYNs from
the client to port 80, records the client's port, the MAC and the time.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import threading
import time

from etcdha.lab.nsock import in_netns

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35  # SCM_TIMESTAMPNS: the kernel's receive time, as a timespec


def syn_filter(client: str, port: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF: IPv4 TCP from `client` to `port`, unfragmented, SYN without ACK."""
    ip = struct.unpack("!I", socket.inet_aton(client))[0]
    return [
        (0x28, 0, 0, 12),  # ldh [12]: ethertype
        (0x15, 0, 13, ETH_P_IP),
        (0x20, 0, 0, 26),  # ld [26]: source address
        (0x15, 0, 11, ip),
        (0x30, 0, 0, 23),  # ldb [23]: protocol
        (0x15, 0, 9, socket.IPPROTO_TCP),
        (0x28, 0, 0, 20),  # ldh [20]: fragment offset
        (0x45, 7, 0, 0x1FFF),
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf): IP header length
        (0x48, 0, 0, 16),  # ldh [x+16]: destination port
        (0x15, 0, 4, port),
        (0x50, 0, 0, 27),  # ldb [x+27]: TCP flags
        (0x54, 0, 0, 0x12),  # SYN and ACK bits
        (0x15, 0, 1, 0x02),  # SYN alone
        (0x06, 0, 0, 128),  # keep the first 128 bytes
        (0x06, 0, 0, 0),  # drop
    ]


class SynCapture:
    """SYNs from the client arriving in namespace `ns`: (client port, source MAC, time)."""

    def __init__(self, ns: str, ifname: str, client: str, port: int = 80) -> None:
        self.seen: list[tuple[int, str, float]] = []
        with in_netns(ns):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
        program = syn_filter(client, port)
        code = b"".join(struct.pack("HBBI", *insn) for insn in program)
        self._code = ctypes.create_string_buffer(code)  # must outlive the socket
        fprog = struct.pack("HL", len(program), ctypes.addressof(self._code))
        self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._sock.bind((ifname, 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        space = socket.CMSG_SPACE(struct.calcsize("qq"))
        while not self._stop.is_set():
            try:
                frame, ancillary, _, _ = self._sock.recvmsg(128, space)
            except TimeoutError:
                continue
            except OSError:
                return
            t = time.time()
            for level, kind, data in ancillary:  # when the frame arrived, not when read
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", data[: struct.calcsize("qq")])
                    t = sec + nsec / 1e9
            if len(frame) < 38:
                continue
            ihl = (frame[14] & 0x0F) * 4
            (sport,) = struct.unpack("!H", frame[14 + ihl : 16 + ihl])
            self.seen.append((sport, frame[6:12].hex(":"), t))

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        self._sock.close()
