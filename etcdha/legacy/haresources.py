"""Heartbeat's haresources, read as its ResourceManager script reads it.

One group per logical line: a comment (`#` to the end) is cut from the first
physical line, a line ending in `\\` is joined to the next (the backslash and
newline removed, nothing else), the first field is the preferred node
(lowercased) and the rest are resources, started left to right. A resource
that looks like an IP address (`[0-9]*.[0-9]*.[0-9]*.[0-9]*`) means
`IPaddr::<it>`; otherwise `script::arg1::arg2` runs the script found first in
/etc/ha.d/resource.d, then /etc/init.d, as `script arg1 arg2 start`. Heartbeat
splits the arguments at every `::`, which is why a compressed IPv6 address
cannot be written there.

Group names are derived from the line's first resource, which is the key
Heartbeat itself uses for a group: an address resource gives its address
(`192.0.2.200`, IPv6 with `:` as `.`), a script its name and arguments with
every character outside [A-Za-z0-9._-] made `-` (`ldirectord-web.cf`), cut to
63 characters; a name taken twice gets `-2`, `-3`, ... appended.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etcdha.legacy.common import (
    Collector,
    Origin,
    leading_zero_octet,
    parse_ip,
    read_lines,
    valid_name,
)

HA_DIR = Path("/etc/ha.d")
RESOURCE_DIR = HA_DIR / "resource.d"
INIT_DIR = Path("/etc/init.d")
DEFAULT_LDIRECTORD_CF = "ldirectord.cf"

# The resource scripts Debian 12's heartbeat package installs in /etc/ha.d/resource.d.
HEARTBEAT_SCRIPTS = frozenset(
    [
        "AudibleAlarm",
        "Delay",
        "Filesystem",
        "ICP",
        "IPaddr",
        "IPaddr2",
        "IPsrcaddr",
        "IPv6addr",
        "LVM",
        "LinuxSCSI",
        "MailTo",
        "OCF",
        "Raid1",
        "SendArp",
        "ServeRAID",
        "WAS",
        "WinPopup",
        "Xinetd",
        "apache",
        "db2",
        "ids",
        "portblock",
        "ldirectord",
    ]
)


@dataclass
class ResourceDraft:
    data: dict[str, Any]
    at: Origin
    ldirectord: str | None = None  # the config name ldirectord was given


@dataclass
class GroupDraft:
    name: str
    node: str
    at: Origin
    key: str
    resources: list[ResourceDraft] = field(default_factory=list)


def isip(token: str) -> bool:
    return fnmatch.fnmatchcase(token, "[0-9]*.[0-9]*.[0-9]*.[0-9]*")


def group_name(key: str, taken: set[str]) -> str:
    script, _, _ = key.partition("::")
    if script in ("IPaddr", "IPaddr2", "IPv6addr") or isip(key):
        base = key.split("::", 1)[-1].split("/", 1)[0].replace(":", ".")
    else:
        base = key.replace("::", "-")
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base)
    base = re.sub(r"-{2,}", "-", base)
    base = re.sub(r"^[^A-Za-z0-9]+", "", base).rstrip("-.")[:63] or "group"
    name, n = base, 1
    while name in taken or not valid_name(name):
        n += 1
        name = f"{base[: 63 - len(str(n)) - 1]}-{n}"
    return name


class HaresourcesParser:
    def __init__(self, path: Path, col: Collector, nodes: list[str] | None, root: Path) -> None:
        self.path = path
        self.col = col
        self.nodes = nodes
        self.root = root
        self.groups: list[GroupDraft] = []
        self.keys: dict[str, int] = {}

    def at(self, line: int | None, directive: str) -> Origin:
        return Origin(str(self.path), line, directive)

    def parse(self) -> list[GroupDraft] | None:
        lines = read_lines(self.path, self.col, "haresources")
        if lines is None:
            return None
        i = 0
        while i < len(lines):
            first = i + 1
            text = lines[i].split("#", 1)[0]
            chars: list[tuple[str, int]] = []
            while True:
                if text.endswith("\\") and i + 1 < len(lines):
                    chars.extend((c, i + 1) for c in text[:-1])
                    i += 1
                    text = lines[i]
                    if "#" in text:
                        self.col.refuse(
                            self.at(i + 1, "#"),
                            "a comment on a continued line: Heartbeat cuts comments only "
                            "from the first line of a group, so it would read the words "
                            "after '#' as resources; remove the comment",
                        )
                    continue
                chars.extend((c, i + 1) for c in text)
                break
            i += 1
            tokens = _tokens(chars)
            if tokens:
                self.group(tokens, first)
        return self.groups

    def group(self, tokens: list[tuple[str, int]], first: int) -> None:
        (node_text, node_line), resources = tokens[0], tokens[1:]
        node = node_text.lower()
        at = self.at(node_line, node)
        if self.nodes is not None and node not in self.nodes:
            self.col.refuse(
                at,
                f"Bad nodename in haresources [{node}]: it is not one of ha.cf's nodes "
                f"({', '.join(self.nodes) or 'none'})",
            )
            return
        if not valid_name(node):
            self.col.refuse(at, f"node name {node!r} is not usable as an etcdha name")
            return
        if not resources:
            self.col.refuse(at, f"the line names node {node} but no resources")
            return
        key = resources[0][0]
        if key in self.keys:
            self.col.refuse(
                self.at(resources[0][1], key),
                f"{key} already starts the group on line {self.keys[key]}: Heartbeat names "
                "a group by its first resource, which must be unique",
            )
            return
        self.keys[key] = first
        taken = {g.name for g in self.groups}
        group = GroupDraft(group_name(key, taken), node, at, key)
        self.col.mapped(
            at,
            f"group {group.name} (named after its first resource {key}), preferred node "
            f"{node}; resources start left to right and stop right to left",
        )
        for token, line in resources:
            draft = self.resource(token, self.at(line, token))
            if draft is not None:
                group.resources.append(draft)
        self.groups.append(group)

    def resource(self, token: str, at: Origin) -> ResourceDraft | None:
        canon = "IPaddr::" + token if isip(token) else token
        script, sep, rest = canon.partition("::")
        args = [a for a in rest.split("::") if a] if sep else []
        if script in ("IPaddr", "IPaddr2", "IPv6addr"):
            return self.address(script, args, rest, at)
        if script == "ldirectord":
            return self.ldirectord(args, at)
        bare = parse_ip(token.split("/", 1)[0])
        if bare is not None and bare.version == 6:
            self.col.refuse(
                at,
                f"{token}: Heartbeat reads this as script {script!r} with arguments "
                f"{args}; write the address as IPv6addr::<address>/<prefix> with the "
                "address in full (no '::')",
            )
            return None
        if "/" in script or not script:
            self.col.refuse(
                at,
                f"resource {token!r}: Heartbeat looks scripts up by name in "
                "/etc/ha.d/resource.d and /etc/init.d, so a path cannot work; name the script",
            )
            return None
        return self.script(script, args, at)

    def address(self, script: str, args: list[str], rest: str, at: Origin) -> ResourceDraft | None:
        if "::" in rest:
            self.col.refuse(
                at,
                f"{script}::{rest}: Heartbeat splits resource arguments at every '::', so the "
                f"script would get {args}; write the IPv6 address in full (no '::')",
            )
            return None
        if len(args) != 1:
            self.col.refuse(at, f"{script} needs one argument, ip[/prefix[/interface]]")
            return None
        base, _, tail = args[0].partition("/")
        fields = [f for f in tail.split("/")] if tail else []
        netmask = fields[0] if fields else ""
        nic = fields[1] if len(fields) > 1 else ""
        broadcast = ""
        if nic[:1].isdigit():  # the wrappers read a third field that starts with a digit
            broadcast, nic = nic, ""
        elif nic:
            broadcast = fields[2] if len(fields) > 2 else ""
        ip = parse_ip(base)
        if ip is None or (script != "IPv6addr" and leading_zero_octet(base)):
            self.col.refuse(at, f"{script}: {base!r} is not an IP address")
            return None
        if (script == "IPv6addr") != (ip.version == 6):
            want = "IPv6addr" if ip.version == 6 else "IPaddr or IPaddr2"
            self.col.refuse(at, f"{script} cannot hold {ip}: write {want}")
            return None
        prefix = None
        if netmask:
            prefix = _prefix(netmask, ip.version)
            if prefix is None:
                self.col.refuse(at, f"{script}: {netmask!r} is not a netmask or prefix length")
                return None
        address = f"{ip}/{prefix}" if prefix is not None else str(ip)
        data: dict[str, Any] = {"type": "address", "address": address}
        said = [f"address {address}"]
        if nic:
            iface, _, label = nic.partition(":")
            data["interface"] = iface
            said.append(f"interface {iface}")
            if label:
                data["label"] = nic
                said.append(f"label {nic}")
        else:
            said.append("interface: the one whose subnet holds it, on each node")
        if broadcast:
            if prefix is None or ip.version != 4:
                self.col.refuse(at, f"{script}: a broadcast address needs an IPv4 /prefix")
                return None
            default = ipaddress.ip_interface(address).network.broadcast_address
            if parse_ip(broadcast) != default:
                self.col.refuse(
                    at,
                    f"{script}: broadcast {broadcast} is not the subnet's highest address "
                    f"({default}), which etcdha always uses; change the subnet or drop it",
                )
                return None
            said.append(f"broadcast {broadcast} (the default)")
        if prefix is None:
            said.append("prefix: that of the interface's subnet, as Heartbeat's IPaddr")
        self.col.mapped(at, f"{script} -> address resource: {', '.join(said)}")
        return ResourceDraft(data, at)

    def ldirectord(self, args: list[str], at: Origin) -> ResourceDraft | None:
        if len(args) > 1:
            self.col.refuse(
                at, "ldirectord takes one argument, its configuration file (ldirectord::file)"
            )
            return None
        config = args[0] if args else DEFAULT_LDIRECTORD_CF
        self.col.mapped(
            at,
            f"ldirectord::{config} -> ipvs resource: its virtual services are imported "
            "into this group",
        )
        return ResourceDraft({"type": "ipvs"}, at, ldirectord=config)

    def script(self, script: str, args: list[str], at: Origin) -> ResourceDraft | None:
        in_resource_d = self.root / RESOURCE_DIR.relative_to("/") / script
        in_init_d = self.root / INIT_DIR.relative_to("/") / script
        if in_resource_d.is_file():
            path, why = RESOURCE_DIR / script, "it is there"
        elif in_init_d.is_file():
            path, why = INIT_DIR / script, "it is not in resource.d and is in /etc/init.d"
        elif script in HEARTBEAT_SCRIPTS:
            path, why = RESOURCE_DIR / script, "Heartbeat ships it there"
        else:
            path, why = INIT_DIR / script, "it is not a Heartbeat script, so an init script"
        shown = " ".join([str(path), *args])
        self.col.mapped(
            at,
            f"script resource: `{shown} start|stop|status` (Heartbeat looks in "
            f"/etc/ha.d/resource.d, then /etc/init.d; {path.parent} because {why})",
        )
        return ResourceDraft({"type": "script", "path": str(path), "args": args}, at)


def _tokens(chars: list[tuple[str, int]]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    word = ""
    line = 0
    for c, n in chars:
        if c in " \t\r\f\v":
            if word:
                out.append((word, line))
                word = ""
            continue
        if not word:
            line = n
        word += c
    if word:
        out.append((word, line))
    return out


def _prefix(netmask: str, version: int) -> int | None:
    if netmask.isdigit():
        n = int(netmask)
        return n if 0 <= n <= (32 if version == 4 else 128) else None
    if version == 4:
        try:
            return ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
        except ValueError:
            return None
    return None


def parse_haresources(
    path: Path, col: Collector, nodes: list[str] | None, root: Path
) -> list[GroupDraft] | None:
    return HaresourcesParser(path, col, nodes, root).parse()
