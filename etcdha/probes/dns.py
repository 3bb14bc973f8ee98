"""``dns``: ask the real server for ``request`` of type ``dns_type``; expect ``receive``.

A minimal DNS client (RFC 1035) on a UDP datagram endpoint, or over TCP when
the virtual service is TCP (as ldirectord) or the UDP answer is truncated.

* Up when the answer is NOERROR with at least one record and, if ``receive``
  is set, the regular expression matches one answer record's data as text
  (A/AAAA: the address; CNAME, NS, PTR: the name without the final dot; MX:
  ``preference name``; TXT: the strings joined; SRV: ``priority weight port
  target``; SOA: ``mname rname serial ...``; others: hex).
* NXDOMAIN, SERVFAIL, REFUSED and other error codes are down, and so is a
  NOERROR answer without records of the type asked.
* A request that is an IP address and type A asks the PTR record of its
  reverse name, as ldirectord's Net::DNS search does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import secrets
import struct
from dataclasses import dataclass
from functools import cache

from etcdha.probes import Result, Target, register
from etcdha.probes._net import Datagram, close_stream, open_stream

TYPES = {
    "A": 1,
    "NS": 2,
    "CNAME": 5,
    "SOA": 6,
    "PTR": 12,
    "MX": 15,
    "TXT": 16,
    "AAAA": 28,
    "SRV": 33,
    "ANY": 255,
}
TYPE_NAMES = {v: k for k, v in TYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
CLASS_IN = 1


class DNSError(ValueError):
    pass


@dataclass(frozen=True)
class Record:
    name: str
    type: int
    text: str


@dataclass(frozen=True)
class Answer:
    id: int
    rcode: int
    truncated: bool
    question: tuple[str, int] | None
    records: tuple[Record, ...]


def type_code(name: str) -> int:
    upper = name.upper()
    if upper in TYPES:
        return TYPES[upper]
    if upper.startswith("TYPE") and upper[4:].isdigit():
        return int(upper[4:])
    raise DNSError(f"unknown DNS type {name!r}")


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        if not label:
            if name.strip(".") == "":
                break
            raise DNSError(f"empty label in {name!r}")
        raw = label.encode("idna") if not label.isascii() else label.encode()
        if len(raw) > 63:
            raise DNSError(f"label longer than 63 bytes in {name!r}")
        out += bytes([len(raw)]) + raw
    out += b"\0"
    if len(out) > 255:
        raise DNSError(f"name longer than 255 bytes: {name!r}")
    return bytes(out)


def build_query(name: str, qtype: int, ident: int) -> bytes:
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # RD set
    return header + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def _read_name(msg: bytes, pos: int) -> tuple[str, int]:
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if pos >= len(msg):
            raise DNSError("name runs past the message")
        length = msg[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(msg):
                raise DNSError("truncated compression pointer")
            if end < 0:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            jumps += 1
            if jumps > 64:
                raise DNSError("compression loop")
            continue
        if length & 0xC0:
            raise DNSError("unsupported label type")
        pos += 1
        if length == 0:
            break
        labels.append(msg[pos : pos + length].decode("ascii", "replace"))
        pos += length
    return ".".join(labels), (end if end >= 0 else pos)


def _rdata_text(msg: bytes, rtype: int, start: int, length: int) -> str:
    rdata = msg[start : start + length]
    if rtype == 1 and length == 4:
        return str(ipaddress.IPv4Address(rdata))
    if rtype == 28 and length == 16:
        return str(ipaddress.IPv6Address(rdata))
    if rtype in (2, 5, 12):
        return _read_name(msg, start)[0]
    if rtype == 15 and length >= 3:
        return f"{struct.unpack('!H', rdata[:2])[0]} {_read_name(msg, start + 2)[0]}"
    if rtype == 16:
        parts, i = [], 0
        while i < length:
            n = rdata[i]
            parts.append(rdata[i + 1 : i + 1 + n].decode("utf-8", "replace"))
            i += 1 + n
        return "".join(parts)
    if rtype == 33 and length >= 7:
        prio, weight, port = struct.unpack("!HHH", rdata[:6])
        return f"{prio} {weight} {port} {_read_name(msg, start + 6)[0]}"
    if rtype == 6:
        mname, pos = _read_name(msg, start)
        rname, pos = _read_name(msg, pos)
        numbers = struct.unpack("!IIIII", msg[pos : pos + 20])
        return " ".join([mname, rname, *(str(n) for n in numbers)])
    return rdata.hex()


def parse_answer(msg: bytes) -> Answer:
    """Parse a DNS response; DNSError for anything malformed."""
    if len(msg) < 12:
        raise DNSError(f"answer of {len(msg)} bytes is shorter than a DNS header")
    try:
        ident, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", msg[:12])
        if not flags & 0x8000:
            raise DNSError("not a response")
        pos = 12
        question = None
        for i in range(qd):
            qname, pos = _read_name(msg, pos)
            qtype, _qclass = struct.unpack("!HH", msg[pos : pos + 4])
            pos += 4
            if i == 0:
                question = (qname.lower(), qtype)
        records = []
        for _ in range(an):
            name, pos = _read_name(msg, pos)
            rtype, _rclass, _ttl, rdlen = struct.unpack("!HHIH", msg[pos : pos + 10])
            pos += 10
            if pos + rdlen > len(msg):
                raise DNSError("record data runs past the message")
            records.append(Record(name, rtype, _rdata_text(msg, rtype, pos, rdlen)))
            pos += rdlen
    except (struct.error, IndexError, UnicodeError) as exc:
        raise DNSError(f"malformed answer ({exc})") from None
    return Answer(ident, flags & 0xF, bool(flags & 0x0200), question, tuple(records))


def query_for(request: str | None, dns_type: str) -> tuple[str, int]:
    name = (request or "").strip()
    if not name:
        raise DNSError("a dns check needs a request (the name to ask for)")
    qtype = type_code(dns_type)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name.rstrip(".") or ".", qtype
    if qtype == TYPES["A"]:
        return address.reverse_pointer, TYPES["PTR"]
    return name, qtype


@cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)


def judge(answer: Answer, qtype: int, receive: str | None) -> Result:
    if answer.rcode != 0:
        return Result(False, RCODES.get(answer.rcode, f"rcode {answer.rcode}"))
    wanted = [r for r in answer.records if r.type == qtype or qtype == 255]
    if not wanted:
        kind = TYPE_NAMES.get(qtype, f"TYPE{qtype}")
        return Result(False, f"NOERROR without {kind} records")
    if receive is None:
        return Result(True, f"NOERROR {wanted[0].text}")
    pattern = _pattern(receive)
    for record in wanted:
        if pattern.search(record.text):
            return Result(True, f"NOERROR {record.text}")
    return Result(False, f"no answer matches {receive!r} (got {wanted[0].text})")


def _matches_query(answer: Answer, ident: int, name: str, qtype: int) -> bool:
    return answer.id == ident and (
        answer.question is None or answer.question == (name.lower().rstrip("."), qtype)
    )


@register("dns")
async def dns(target: Target) -> Result:
    try:
        name, qtype = query_for(target.request, target.check.dns_type)
    except DNSError as exc:
        return Result(False, str(exc))
    ident = secrets.randbits(16)
    query = build_query(name, qtype, ident)
    if target.protocol != "tcp":
        udp_answer = await _udp(target, query, ident, name, qtype)
        if not udp_answer.truncated:
            return judge(udp_answer, qtype, target.receive)
    answer = await _tcp(target, query)
    if answer.id != ident:
        return Result(False, "answer for another query")
    return judge(answer, qtype, target.receive)


async def _udp(target: Target, query: bytes, ident: int, name: str, qtype: int) -> Answer:
    endpoint = await Datagram.open(target)
    try:
        endpoint.send(query)
        while True:
            data = await endpoint.receive()
            try:
                answer = parse_answer(data)
            except DNSError:
                continue  # garbage: keep waiting for the real answer until the timeout
            if _matches_query(answer, ident, name, qtype):
                return answer
    finally:
        with contextlib.suppress(Exception):
            endpoint.close()


async def _tcp(target: Target, query: bytes) -> Answer:
    reader, writer = await open_stream(target)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return parse_answer(await reader.readexactly(length))
    except asyncio.IncompleteReadError:
        raise DNSError("connection closed before a full answer") from None
    finally:
        close_stream(writer)
