"""Malformed inputs and the problem each must produce: file, line and message.

Self-contained (standard library only) so that any test tier can run the same
table: through the Python API (tests/unit/test_malformed.py) or through the
CLI against a real etcd. Kind "import" cases are legacy files keyed by their
usual names (ha.cf, haresources, ldirectord.cf): pass each one present to the
importer. Kind "spec" cases are a single cluster.yaml. `message` must appear in
"<field path or directive>: <message>" of one of the problems, whose file name
is `file` and whose line is `line` (None: the problem names no line).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # "import" or "spec"
    files: dict[str, str]
    message: str
    file: str
    line: int | None


HA_CF = """\
# /etc/ha.d/ha.cf
logfile /var/log/ha-log
keepalive 2
deadtime 30
udpport 694
mcast eth0 225.0.120.1 694 1 0
auto_failback on
node node1
node node2
ping 192.168.1.1
compression bz2
compression_threshold 2
"""

HARESOURCES = "node1 192.168.1.200/24/eth0 192.168.2.200/24/eth1 ldirectord::ldirectord.cf\n"

LDIRECTORD_CF = """\
checktimeout=3
checkinterval=1
quiescent=yes

virtual=192.168.1.200:80
\treal=192.168.2.12:80 masq
\treal=192.168.2.6:80 masq
\tservice=http
\trequest="test.html"
\treceive="ok"
\tscheduler=rr
"""

CLUSTER_YAML = """\
schema_version: 1
nodes:
- node1
- node2
election:
  lease_ttl: 30s
  ping_nodes: [192.168.1.1]
groups:
- name: web
  node: node1
  resources:
  - address: 192.168.1.200/24
    interface: eth0
  - address: 192.168.2.200/24
    interface: eth1
  - ipvs
virtual_services:
- address: 192.168.1.200:80
  scheduler: rr
  quiescent: true
  reals:
  - {address: 192.168.2.12:80, forward: masq}
  - {address: 192.168.2.6:80, forward: masq}
  fallback:
    address: 127.0.0.1:80
  check:
    service: http
    request: /test.html
    receive: ok
"""


def replace_line(text: str, number: int, new: str | None) -> str:
    """`text` with line `number` replaced by `new` (None: removed)."""
    lines = text.splitlines(keepends=True)
    lines[number - 1] = "" if new is None else new + "\n"
    return "".join(lines)


def legacy(
    ha_cf: str = HA_CF, haresources: str = HARESOURCES, ldirectord: str = LDIRECTORD_CF
) -> dict[str, str]:
    return {"ha.cf": ha_cf, "haresources": haresources, "ldirectord.cf": ldirectord}


def ld(text: str) -> dict[str, str]:
    return legacy(ldirectord=text)


def ld_line(number: int, new: str | None) -> dict[str, str]:
    return ld(replace_line(LDIRECTORD_CF, number, new))


def ld_add(*lines: str) -> dict[str, str]:
    return ld(LDIRECTORD_CF + "".join(line + "\n" for line in lines))


def hacf_line(number: int, new: str) -> dict[str, str]:
    return legacy(ha_cf=replace_line(HA_CF, number, new))


def yaml_line(number: int, new: str) -> dict[str, str]:
    return {"cluster.yaml": replace_line(CLUSTER_YAML, number, new)}


LD, HA, HR, Y = "ldirectord.cf", "ha.cf", "haresources", "cluster.yaml"

CASES: list[Case] = [
    # -- ldirectord.cf -------------------------------------------------------------------
    Case(
        "ld-real-bad-address",
        "import",
        ld_line(7, "\treal=192.168.2.300:80 masq"),
        "invalid address (192.168.2.300) for real server",
        LD,
        7,
    ),
    Case(
        "ld-unknown-forward-method",
        "import",
        ld_line(7, "\treal=192.168.2.6:80 nat"),
        "forward method must be gate, masq or ipip",
        LD,
        7,
    ),
    Case(
        "ld-weight-not-a-number",
        "import",
        ld_line(7, "\treal=192.168.2.6:80 masq heavy"),
        'Invalid real server line, around " heavy"',
        LD,
        7,
    ),
    Case(
        "ld-weight-beyond-ipvsadm",
        "import",
        ld_line(7, "\treal=192.168.2.6:80 masq 70000"),
        "ipvsadm accepts 0 to 65535",
        LD,
        7,
    ),
    Case(
        "ld-unknown-scheduler",
        "import",
        ld_line(11, "\tscheduler=fastest"),
        "'fastest' is not an IPVS scheduler",
        LD,
        11,
    ),
    Case(
        "ld-bogus-checktype",
        "import",
        ld_add("\tchecktype=bogus"),
        'checktype must be "connect", "negotiate"',
        LD,
        12,
    ),
    Case(
        "ld-negative-checkinterval",
        "import",
        ld_line(2, "checkinterval=-1"),
        "is not a whole number; ldirectord would read it as 1",
        LD,
        2,
    ),
    Case(
        "ld-zero-checkinterval",
        "import",
        ld_line(2, "checkinterval=0"),
        "invalid check interval value",
        LD,
        2,
    ),
    Case(
        "ld-virtual-line-missing",
        "import",
        ld("checktimeout=3\n\treal=192.168.2.12:80 masq\n"),
        "real= belongs in a virtual section, after a virtual= line",
        LD,
        2,
    ),
    Case(
        "ld-real-outside-virtual",
        "import",
        ld_add("real=192.168.2.20:80 masq"),
        'Unknown command "real=192.168.2.20:80 masq"',
        LD,
        12,
    ),
    Case(
        "ld-indented-too-little",
        "import",
        ld_line(8, "  service=http"),
        "indented by 4 or more spaces, or a tab",
        LD,
        8,
    ),
    Case(
        "ld-blank-line-ends-virtual",
        "import",
        ld_line(8, ""),
        "a blank line ended the virtual section above",
        LD,
        9,
    ),
    Case(
        "ld-unterminated-quote",
        "import",
        ld_line(9, '\trequest="test.html'),
        'ldirectord reads request only in double quotes: request="..."',
        LD,
        9,
    ),
    Case(
        "ld-connecttimeout",
        "import",
        ld_line(1, "connecttimeout=3"),
        "connecttimeout directive deprecated in favour of negotiatetimeout",
        LD,
        1,
    ),
    Case(
        "ld-timeout-deprecated",
        "import",
        ld_line(1, "timeout=3"),
        "timeout directive deprecated in favour of checktimeout and negotiatetimeout",
        LD,
        1,
    ),
    Case(
        "ld-checkcommand-outside-checks-dir",
        "import",
        ld_add("\tchecktype=external", '\tcheckcommand="/usr/local/bin/check_web"'),
        "copy it to /usr/lib/etcdha/checks and name it by file name",
        LD,
        13,
    ),
    Case(
        "ld-comment-after-global-yes",
        "import",
        ld_line(3, "quiescent=yes # keep weight 0"),
        "quiescent must be 'yes' or 'no'",
        LD,
        3,
    ),
    Case(
        "ld-ipv6-in-virtual",
        "import",
        ld_line(5, "virtual=[2001:db8::200]:80"),
        'please use "virtual6" instead',
        LD,
        5,
    ),
    Case(
        "ld-virtual-without-port-is-a-fwmark",
        "import",
        ld_line(5, "virtual=192.168.1.200"),
        "ldirectord reads this as firewall mark 192",
        LD,
        5,
    ),
    Case(
        "ld-duplicate-real",
        "import",
        ld_line(7, "\treal=192.168.2.12:80 masq"),
        "192.168.2.12 port 80 is already reals[0]",
        LD,
        7,
    ),
    Case(
        "ld-fallback-is-a-real",
        "import",
        ld_add("\tfallback=192.168.2.6:80 masq"),
        "the fallback serves only when every real is down",
        LD,
        12,
    ),
    Case(
        "ld-receive-untranslatable",
        "import",
        ld_line(10, '\treceive="\\p{Lu}k"'),
        "Unicode property",
        LD,
        10,
    ),
    Case(
        "ld-unknown-directive",
        "import",
        ld_add("\tcomment=the web site"),
        'Unknown command "comment=the web site"',
        LD,
        12,
    ),
    Case(
        "ld-real6-in-ipv4-virtual",
        "import",
        ld_line(7, "\treal6=[2001:db8::6]:80 masq"),
        'cannot specify "real6" here.  please use "real" instead',
        LD,
        7,
    ),
    Case(
        "ld-fwmark-protocol",
        "import",
        ld(replace_line(LDIRECTORD_CF, 5, "virtual=1") + "\tprotocol=tcp\n"),
        "protocol must be fwm if the virtual service is a fwmark",
        LD,
        12,
    ),
    Case(
        "ld-masq-real-without-port",
        "import",
        ld_line(7, "\treal=192.168.2.6 masq"),
        "with masq ldirectord sent traffic to port 0",
        LD,
        7,
    ),
    # -- ha.cf ---------------------------------------------------------------------------
    Case(
        "hacf-deadtime-below-lease-minimum",
        "import",
        hacf_line(4, "deadtime 1"),
        "below etcd's minimum of 2s",
        HA,
        4,
    ),
    Case(
        "hacf-keepalive-over-a-third-of-deadtime",
        "import",
        hacf_line(3, "keepalive 20"),
        "keepalive 20s is more than a third of deadtime 30s",
        HA,
        3,
    ),
    Case(
        "hacf-crm-on",
        "import",
        legacy(ha_cf=HA_CF + "crm on\n"),
        "this cluster was run by the CRM (Pacemaker)",
        HA,
        13,
    ),
    Case(
        "hacf-illegal-directive",
        "import",
        hacf_line(9, "nodes node2"),
        "Illegal directive [nodes] in ha.cf",
        HA,
        9,
    ),
    Case(
        "hacf-time-with-s-suffix",
        "import",
        hacf_line(4, "deadtime 30s"),
        "'30s' is not a time Heartbeat accepts",
        HA,
        4,
    ),
    Case(
        "hacf-respawn-other-program",
        "import",
        legacy(ha_cf=HA_CF + "respawn hacluster /usr/lib/heartbeat/dopd\n"),
        "Heartbeat kept this program running",
        HA,
        13,
    ),
    Case(
        "hacf-no-nodes",
        "import",
        {
            "ha.cf": replace_line(replace_line(HA_CF, 9, None), 8, None),
        },
        "no nodes defined",
        HA,
        None,
    ),
    Case(
        "hacf-bad-auto-failback",
        "import",
        hacf_line(7, "auto_failback maybe"),
        "Heartbeat takes on, off or legacy",
        HA,
        7,
    ),
    Case(
        "hacf-node-twice",
        "import",
        hacf_line(9, "node node1"),
        "node node1 is already declared on line 8",
        HA,
        9,
    ),
    # -- haresources ---------------------------------------------------------------------
    Case(
        "hares-unknown-node",
        "import",
        legacy(haresources="node3 192.168.1.200/24/eth0 ldirectord::ldirectord.cf\n"),
        "Bad nodename in haresources [node3]",
        HR,
        1,
    ),
    Case(
        "hares-ldirectord-file-missing",
        "import",
        legacy(haresources="node1 192.168.1.200/24/eth0 ldirectord::web.cf\n"),
        "ldirectord file web.cf is missing",
        HR,
        1,
    ),
    Case(
        "hares-compressed-ipv6",
        "import",
        legacy(haresources="node1 IPv6addr::2001:db8::200/64/eth0 ldirectord::ldirectord.cf\n"),
        "Heartbeat splits resource arguments at every '::'",
        HR,
        1,
    ),
    Case(
        "hares-comment-on-continued-line",
        "import",
        legacy(haresources="node1 192.168.1.200/24/eth0 \\\n  ldirectord::ldirectord.cf # LVS\n"),
        "a comment on a continued line",
        HR,
        2,
    ),
    Case(
        "hares-bad-address",
        "import",
        legacy(haresources="node1 192.168.1.300/24/eth0 ldirectord::ldirectord.cf\n"),
        "'192.168.1.300' is not an IP address",
        HR,
        1,
    ),
    Case(
        "hares-address-held-twice",
        "import",
        legacy(haresources="node1 192.168.1.200/24/eth0 \\\n 192.168.1.200/24/eth1 ldirectord\n"),
        "192.168.1.200 is already held by groups[0].resources[0]",
        HR,
        2,
    ),
    # -- cluster.yaml --------------------------------------------------------------------
    Case(
        "spec-real-not-an-ip-port",
        "spec",
        yaml_line(23, "  - {address: 192.168.2.300:80, forward: masq}"),
        "virtual_services[0].reals[1].address: '192.168.2.300:80' is not an IP:port",
        Y,
        23,
    ),
    Case(
        "spec-duplicate-key",
        "spec",
        yaml_line(20, "  scheduler: wrr"),
        "duplicate key 'scheduler' (first on line 19)",
        Y,
        20,
    ),
    Case(
        "spec-unknown-field",
        "spec",
        yaml_line(20, "  quiet: true"),
        "virtual_services[0].quiet: unknown field",
        Y,
        20,
    ),
    Case(
        "spec-bad-duration",
        "spec",
        yaml_line(6, "  lease_ttl: thirty seconds"),
        "election.lease_ttl: 'thirty seconds' is not a duration",
        Y,
        6,
    ),
    Case(
        "spec-lease-ttl-1s",
        "spec",
        yaml_line(6, "  lease_ttl: 1s"),
        "election.lease_ttl: 1s is below etcd's minimum lease TTL of 2s",
        Y,
        6,
    ),
    Case(
        "spec-duplicate-real",
        "spec",
        yaml_line(23, "  - {address: 192.168.2.12:80, forward: masq}"),
        "virtual_services[0].reals[1].address: 192.168.2.12 port 80 is already reals[0]",
        Y,
        23,
    ),
    Case(
        "spec-fallback-equal-to-a-real",
        "spec",
        yaml_line(25, "    address: 192.168.2.6:80"),
        "virtual_services[0].fallback.address: 192.168.2.6 port 80 is also reals[1]",
        Y,
        25,
    ),
    Case(
        "spec-group-node-unknown",
        "spec",
        yaml_line(10, "  node: node3"),
        "groups[0].node: 'node3' is not one of the nodes",
        Y,
        10,
    ),
    Case(
        "spec-bad-receive-regex",
        "spec",
        yaml_line(29, "    receive: '(ok'"),
        "virtual_services[0].check.receive: '(ok' is not a valid regular expression",
        Y,
        29,
    ),
]
