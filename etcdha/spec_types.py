"""Value types of the cluster spec: durations, endpoints, address ranges.

Each parser raises ValueError with a sentence that names the bad value, so that
the spec loader can prefix it with the file, line and field path.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
MAX_PORT = 65535


def parse_duration(value: Any) -> float:
    """Seconds from `2s`, `500ms`, `1.5m`, or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (write e.g. '2s' or '500ms')")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration (write e.g. '2s' or '500ms')")
    if seconds < 0:
        raise ValueError(f"{value!r} is negative; a duration must be >= 0")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 2s, 500ms, 1.5s."""
    ms = round(seconds * 1000, 3)
    if ms == int(ms) and int(ms) % 1000 != 0 and ms < 10_000:
        return f"{int(ms)}ms"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d+(\.\d+)?(ms|s|m|h)?$",
            "description": "a duration such as '2s' or '500ms'; a bare number is seconds",
        }
    ),
]


def parse_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def split_host_port(text: str, *, port_required: bool = True) -> tuple[IPAddress, int]:
    """`192.0.2.1:80`, `[2001:db8::1]:80`; IPv6 needs brackets when a port follows."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not an IP:port")
    s = text.strip()
    host, port_text = s, ""
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"{text!r} is not an IP:port (unclosed '[')")
        host, rest = s[1:end], s[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r} is not an IP:port")
            port_text = rest[1:]
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP:port") from None
    if not port_text:
        if port_required:
            raise ValueError(f"{text!r} is not an IP:port (the port is missing)")
        return address, 0
    if not port_text.isdigit() or not 0 <= int(port_text) <= MAX_PORT:
        raise ValueError(f"{text!r} is not an IP:port (port must be 0-65535)")
    return address, int(port_text)


def join_host_port(address: IPAddress, port: int) -> str:
    if address.version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def normalise_endpoint(value: Any, *, port_required: bool = True) -> str:
    address, port = split_host_port(value, port_required=port_required)
    return join_host_port(address, port)


def parse_real_range(text: str) -> tuple[IPAddress, IPAddress, int]:
    """ldirectord's `a.b.c.d->a.b.c.e:port` range form (IPv4 only, as ldirectord)."""
    first, _, rest = text.partition("->")
    last, port = split_host_port(rest, port_required=False)
    start = parse_ip(first)
    if start.version != 4 or last.version != 4:
        raise ValueError(f"{text!r}: an address range must be IPv4, as in ldirectord")
    if int(last) < int(start):
        raise ValueError(f"{text!r}: the range ends before it starts")
    if int(last) - int(start) > 1023:
        raise ValueError(f"{text!r}: a range may hold at most 1024 addresses")
    return start, last, port


def expand_real(text: str) -> list[tuple[IPAddress, int]]:
    """Every (address, port) a real entry stands for (one, or a range's members)."""
    if "->" in text:
        start, last, port = parse_real_range(text)
        return [(ipaddress.ip_address(i), port) for i in range(int(start), int(last) + 1)]
    return [split_host_port(text, port_required=False)]


def normalise_real(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an IP:port")
    if "->" in value:
        start, last, port = parse_real_range(value)
        return f"{start}->{join_host_port(last, port)}"
    return normalise_endpoint(value, port_required=False)


def normalise_interface_address(value: Any) -> str:
    """`192.0.2.200/24`, or a bare address whose prefix each node takes from the
    subnet of the interface that holds it (as Heartbeat's IPaddr does)."""
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an address (ip or ip/prefix)")
    text = value.strip()
    try:
        if "/" not in text:
            return str(ipaddress.ip_address(text))
        return str(ipaddress.ip_interface(text))
    except ValueError:
        raise ValueError(f"{value!r} is not an address (ip or ip/prefix)") from None


def _str_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "description": description})


Endpoint = Annotated[
    str,
    BeforeValidator(normalise_endpoint),
    _str_schema("IP:port, IPv6 as [addr]:port"),
]
RealAddress = Annotated[
    str,
    BeforeValidator(normalise_real),
    _str_schema(
        "IP:port, [IPv6]:port, IP (port 0, for fwmark), or ldirectord's a.b.c.d->a.b.c.e:port"
    ),
]
InterfaceAddress = Annotated[
    str,
    BeforeValidator(normalise_interface_address),
    _str_schema("ip/prefix (192.0.2.200/24, 2001:db8::200/64), or a bare ip"),
]
HostAddress = Annotated[
    str,
    BeforeValidator(lambda v: str(parse_ip(str(v)))),
    _str_schema("an IPv4 or IPv6 address"),
]

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
