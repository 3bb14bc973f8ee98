"""IPVS pure logic: the desired table, the diff, ipvsadm rules and JSON."""

from __future__ import annotations

import random
import textwrap

import pytest

from etcdha.ipvs import (
    Dest,
    Fwd,
    OpKind,
    Service,
    ServiceKey,
    Table,
    apply_ops,
    desired,
    diff,
    from_json,
    named_services,
    parse_ipvsadm,
    plan,
    to_ipvsadm,
    to_json,
)
from etcdha.ipvs.model import (
    F_ONEPACKET,
    F_PERSISTENT,
    F_SCHED1,
    F_SCHED2,
    netmask_prefix,
    sched_flags_from_names,
)
from etcdha.spec import ClusterSpec
from etcdha.spec_load import load_text

SEED = textwrap.dedent(
    """\
    nodes: [node1, node2]
    groups:
      - name: lvs
        node: node1
        resources:
          - address: 192.0.2.200/24
          - address: 198.51.100.200/24
          - ipvs
    virtual_services:
      - address: 192.0.2.200:80
        scheduler: rr
        quiescent: true
        fallback: {address: "127.0.0.1:80"}
        reals:
          - {address: "198.51.100.12:80", forward: masq}
          - {address: "198.51.100.6:80", forward: masq}
    """
)
WEB = "tcp-192.0.2.200-80"
RS1 = "198.51.100.12-80"
RS2 = "198.51.100.6-80"
VIP = ServiceKey.of_address("tcp", "192.0.2.200", 80)


def load(text: str) -> ClusterSpec:
    return load_text(text, "cluster.yaml").spec


def weights(table: Table, key: ServiceKey = VIP) -> dict[str, int]:
    return {str(d): d.weight for d in table[key].dests.values()}


# -- desired


def test_all_up_gives_configured_weights_and_no_fallback() -> None:
    t = desired(load(SEED), "lvs")
    assert t.keys() == [VIP]
    assert t[VIP].service == Service(VIP, "rr")
    assert weights(t) == {"198.51.100.12:80": 1, "198.51.100.6:80": 1}
    assert {d.forward for d in t[VIP].dests.values()} == {Fwd.MASQ}


def test_missing_verdict_counts_as_up() -> None:
    assert desired(load(SEED), "lvs", {(WEB, RS1): True}) == desired(load(SEED), "lvs", {})


def test_down_real_is_quiesced_when_quiescent_else_removed() -> None:
    spec = load(SEED)
    assert weights(desired(spec, "lvs", {(WEB, RS1): False})) == {
        "198.51.100.12:80": 0,
        "198.51.100.6:80": 1,
    }
    loud = load(SEED.replace("quiescent: true", "quiescent: false"))
    assert weights(desired(loud, "lvs", {(WEB, RS1): False})) == {"198.51.100.6:80": 1}


def test_fallback_comes_when_no_real_is_up_and_goes_when_one_recovers() -> None:
    spec = load(SEED)
    down = desired(spec, "lvs", {(WEB, RS1): False, (WEB, RS2): False})
    assert weights(down) == {"198.51.100.12:80": 0, "198.51.100.6:80": 0, "127.0.0.1:80": 1}
    assert down[VIP].dests[("127.0.0.1", 80)].forward is Fwd.ROUTE
    back = desired(spec, "lvs", {(WEB, RS1): True, (WEB, RS2): False})
    assert weights(back) == {"198.51.100.12:80": 1, "198.51.100.6:80": 0}
    loud = load(SEED.replace("quiescent: true", "quiescent: false"))
    assert weights(desired(loud, "lvs", {(WEB, RS1): False, (WEB, RS2): False})) == {
        "127.0.0.1:80": 1
    }


def test_drained_real_gets_weight_zero_and_counts_as_not_serving() -> None:
    spec = load(SEED.replace("quiescent: true", "quiescent: false"))
    t = desired(spec, "lvs", {}, {(WEB, RS1)})
    assert weights(t) == {"198.51.100.12:80": 0, "198.51.100.6:80": 1}
    # drained and down, not quiescent: out; nothing serves: the fallback comes
    p = plan(spec, "lvs", {(WEB, RS2): False, (WEB, RS1): False}, {(WEB, RS1)})
    assert weights(p.table) == {"127.0.0.1:80": 1}
    all_drained = plan(spec, "lvs", {}, {(WEB, RS1), (WEB, RS2)})
    assert all_drained.fallback_active == [VIP]
    assert weights(all_drained.table)["127.0.0.1:80"] == 1
    states = {r.segment: (r.up, r.drained, r.weight) for r in all_drained.reals}
    assert states == {RS1: (True, True, 0), RS2: (True, True, 0)}


def test_dynamic_weights_replace_the_configured_one_while_up() -> None:
    spec = load(SEED)
    t = desired(spec, "lvs", {}, (), {(WEB, RS1): 7})
    assert weights(t) == {"198.51.100.12:80": 7, "198.51.100.6:80": 1}
    # a down real is quiesced whatever its last dynamic weight
    t = desired(spec, "lvs", {(WEB, RS1): False}, (), {(WEB, RS1): 7})
    assert weights(t)["198.51.100.12:80"] == 0
    # weight 0 from the check keeps a real in without new connections; with every
    # real at 0 nothing serves, so the fallback comes
    p = plan(spec, "lvs", {}, (), {(WEB, RS1): 0, (WEB, RS2): 0})
    assert weights(p.table) == {"198.51.100.12:80": 0, "198.51.100.6:80": 0, "127.0.0.1:80": 1}
    assert p.fallback_active == [VIP]


def test_ranges_thresholds_persistence_fwmark_ipv6_and_flags() -> None:
    spec = load(
        textwrap.dedent(
            """\
            nodes: [n1]
            virtual_services:
              - address: 192.0.2.10:443
                scheduler: sh
                scheduler_flags: [sh-port, sh-fallback]
                persistence: {timeout: 10m, netmask: 255.255.255.0}
                reals:
                  - {address: "198.51.100.20->198.51.100.22:8443", forward: ipip, weight: 3,
                     upper_threshold: 100, lower_threshold: 10}
              - address: 192.0.2.53:53
                one_packet: true
                reals: [{address: "198.51.100.53:53"}]
              - fwmark: 7
                family: inet6
                persistence: {netmask: "64"}
                reals: [{address: "2001:db8::7"}]
              - address: "[2001:db8::1]:80"
                reals: [{address: "[2001:db8::5]:8080", forward: masq}]
            """
        )
    )
    t = desired(spec, None)
    https = t[ServiceKey.of_address("tcp", "192.0.2.10", 443)]
    assert https.service == Service(
        https.service.key, "sh", F_PERSISTENT | F_SCHED1 | F_SCHED2, 600, 24
    )
    # ipip cannot change the port: the service's, as ipvsadm gives it
    assert sorted(https.dests) == [(f"198.51.100.{i}", 443) for i in (20, 21, 22)]
    assert {(d.forward, d.weight, d.upper, d.lower) for d in https.dests.values()} == {
        (Fwd.TUNNEL, 3, 100, 10)
    }
    dns = t[ServiceKey.of_address("udp", "192.0.2.53", 53)]  # port 53: udp, as ldirectord
    assert dns.service.flags == F_ONEPACKET
    fwm = t[ServiceKey.of_fwmark(7, 6)]
    assert fwm.service.timeout == 300 and fwm.service.netmask == 64
    assert list(fwm.dests) == [("2001:db8::7", 0)]
    v6 = t[ServiceKey.of_address("tcp", "2001:db8::1", 80)]
    assert list(v6.dests) == [("2001:db8::5", 8080)]
    assert ServiceKey.of_fwmark(7, 6).segment == "fwm6-7"
    assert v6.service.key.segment == "tcp-2001.db8..1-80"


def test_real_without_port_and_verdict_key_use_the_configured_port() -> None:
    spec = load(
        textwrap.dedent(
            """\
            nodes: [n1]
            virtual_services:
              - fwmark: 3
                quiescent: true
                reals: [{address: "198.51.100.3"}]
            """
        )
    )
    t = desired(spec, None, {("fwm-3", "198.51.100.3-0"): False})
    assert weights(t, ServiceKey.of_fwmark(3)) == {"198.51.100.3:0": 0}


def test_services_are_filtered_by_group() -> None:
    spec = load(
        textwrap.dedent(
            """\
            nodes: [n1, n2]
            groups:
              - {name: a, node: n1, resources: [ipvs]}
              - {name: b, node: n2, resources: [ipvs]}
            virtual_services:
              - {address: "192.0.2.1:80", group: a, reals: [{address: "198.51.100.1:80"}]}
              - {address: "192.0.2.2:80", group: b, reals: [{address: "198.51.100.2:80"}]}
            """
        )
    )
    assert desired(spec, "a").keys() == [ServiceKey.of_address("tcp", "192.0.2.1", 80)]
    assert named_services(spec, "b") == {ServiceKey.of_address("tcp", "192.0.2.2", 80)}
    assert len(desired(spec, None)) == 2
    assert len(desired(spec, "c")) == 0


def test_netmask_and_flag_names() -> None:
    assert netmask_prefix("255.255.255.0", 4) == 24
    assert netmask_prefix(None, 6) == 128
    with pytest.raises(ValueError):
        netmask_prefix("129", 6)
    assert sched_flags_from_names("mh", ["mh-port"]) == F_SCHED2
    assert sched_flags_from_names("rr", ["flag-1"]) == F_SCHED1
    with pytest.raises(ValueError, match="unknown scheduler flag"):
        sched_flags_from_names("rr", ["sh-port"])
    # not persistent: timeout and mask do not count
    assert Service(VIP, "rr", 0, 600, 24) == Service(VIP, "rr")


# -- diff


def _table(*entries: tuple[Service, list[Dest]]) -> Table:
    t = Table()
    for s, ds in entries:
        t.add(s, ds)
    return t


A = Dest("198.51.100.12", 80, Fwd.MASQ, 1)
B = Dest("198.51.100.6", 80, Fwd.MASQ, 1)
FB = Dest("127.0.0.1", 80, Fwd.ROUTE, 1)
FOREIGN = ServiceKey.of_address("tcp", "203.0.113.9", 25)


def test_diff_from_empty_adds_services_before_their_destinations() -> None:
    want = _table((Service(VIP, "rr"), [A, B]))
    ops = diff(Table(), want)
    assert [o.kind for o in ops] == [OpKind.ADD_SERVICE, OpKind.ADD_DEST, OpKind.ADD_DEST]
    assert apply_ops(Table(), ops) == want
    assert diff(want, want) == []


def test_weight_change_is_one_edit_in_place() -> None:
    have = _table((Service(VIP, "rr"), [A, B]))
    want = _table((Service(VIP, "rr"), [Dest(A.address, 80, Fwd.MASQ, 0), B]))
    ops = diff(have, want)
    assert [(o.kind, o.dest) for o in ops] == [(OpKind.EDIT_DEST, want[VIP].dests[A.key])]


def test_forward_and_threshold_changes_edit_in_place_and_scheduler_edits_the_service() -> None:
    have = _table((Service(VIP, "rr"), [A]))
    want = _table(
        (Service(VIP, "wlc", F_PERSISTENT, 60), [Dest(A.address, 80, Fwd.ROUTE, 1, 5, 2)])
    )
    assert [o.kind for o in diff(have, want)] == [OpKind.EDIT_SERVICE, OpKind.EDIT_DEST]


def test_foreign_service_is_never_touched_but_dropped_managed_one_is_deleted() -> None:
    old = ServiceKey.of_address("tcp", "192.0.2.201", 80)
    have = _table(
        (Service(VIP, "rr"), [A]),
        (Service(FOREIGN, "wlc"), [B]),
        (Service(old, "rr"), [A]),
    )
    want = _table((Service(VIP, "rr"), [A]))
    assert diff(have, want) == []  # the others are not named: left alone
    ops = diff(have, want, managed={VIP, old})
    assert [(o.kind, o.service.key) for o in ops] == [(OpKind.DELETE_SERVICE, old)]


def test_drift_is_repaired_with_adds_before_deletes() -> None:
    have = _table((Service(VIP, "rr"), [A, FB]))  # someone deleted B; fallback left over
    want = _table((Service(VIP, "rr"), [A, B]))
    ops = diff(have, want)
    assert [(o.kind, str(o.dest)) for o in ops] == [
        (OpKind.ADD_DEST, "198.51.100.6:80"),
        (OpKind.DELETE_DEST, "127.0.0.1:80"),
    ]


def _random_table(rng: random.Random, keys: list[ServiceKey]) -> Table:
    t = Table()
    for key in keys:
        if rng.random() < 0.2:
            continue
        flags = rng.choice([0, F_PERSISTENT, F_SCHED1 | F_SCHED2])
        service = Service(key, rng.choice(["rr", "wlc", "sh"]), flags, rng.choice([60, 300]))
        dests = []
        for i in range(rng.randint(0, 6)):
            if rng.random() < 0.7:
                dests.append(
                    Dest(
                        f"198.51.100.{i + 1}",
                        0 if key.is_fwmark else 80,
                        rng.choice([Fwd.MASQ, Fwd.ROUTE, Fwd.TUNNEL]),
                        rng.randint(0, 3),
                        rng.choice([0, 50]),
                    )
                )
        t.add(service, dests)
    return t


def test_diff_then_apply_reaches_desired_on_random_tables() -> None:
    rng = random.Random(7)
    keys = [ServiceKey.of_address("tcp", f"192.0.2.{i}", 80) for i in range(1, 8)]
    keys.append(ServiceKey.of_fwmark(9))
    for _ in range(300):
        have = _random_table(rng, keys)
        want = _random_table(rng, keys)
        managed = set(keys[:-1])  # the fwmark service is foreign unless desired
        ops = diff(have, want, managed)
        after = apply_ops(have, ops)
        for key in keys:
            if key in want:
                assert after[key] == want[key]
            elif key in managed:
                assert key not in after
            else:
                assert after.get(key) == have.get(key)
        kinds = [o.kind for o in ops]
        assert kinds == sorted(kinds, key=list(OpKind).index)
        assert diff(after, want, managed) == []


# -- text


SAVED = textwrap.dedent(
    """\
    -A -t 192.0.2.200:80 -s rr -p 600
    -a -t 192.0.2.200:80 -r 198.51.100.12:80 -m -w 1
    -a -t 192.0.2.200:80 -r 198.51.100.13:80 -i -w 0 --tun-type ipip
    -a -t 192.0.2.200:80 -r 198.51.100.14:80 -g -w 5
    -A -t 192.0.2.201:80 -s rr -p 600 -M 255.255.255.0
    -A -u 192.0.2.203:53 -s sh -o -b sh-fallback,sh-port
    -A --sctp-service 192.0.2.205:3868 -s lc
    -A -t [2001:db8::1]:80 -s wrr
    -a -t [2001:db8::1]:80 -r [2001:db8::6]:80 -m -w 1
    -A -f 1 -s wlc
    -a -f 1 -r 198.51.100.14:0 -g -w 5
    -A -f 2 -6 -s wlc -p 60 -M 64
    -a -f 2 -6 -r [2001:db8::5]:0 -m -w 5
    """
)


def test_parse_real_ipvsadm_save_output_and_write_it_back_the_same() -> None:
    # SAVED is what ipvsadm-save -n printed in user-mode-linux (services reordered).
    t = parse_ipvsadm(SAVED)
    assert len(t) == 7 and t.dest_count == 6
    first = t[VIP]
    assert first.service == Service(VIP, "rr", F_PERSISTENT, 600)
    assert first.dests[("198.51.100.13", 80)] == Dest("198.51.100.13", 80, Fwd.TUNNEL, 0)
    udp = t[ServiceKey.of_address("udp", "192.0.2.203", 53)].service
    assert udp.flags == F_ONEPACKET | F_SCHED1 | F_SCHED2
    assert sorted(to_ipvsadm(t).splitlines()) == sorted(SAVED.splitlines())
    assert parse_ipvsadm(to_ipvsadm(t)) == t


def test_thresholds_are_written_and_read_back() -> None:
    t = _table((Service(VIP, "rr"), [Dest("198.51.100.12", 80, Fwd.MASQ, 2, 100, 10)]))
    text = to_ipvsadm(t)
    assert text == (
        "-A -t 192.0.2.200:80 -s rr\n"
        "-a -t 192.0.2.200:80 -r 198.51.100.12:80 -m -w 2 -x 100 -y 10\n"
    )
    assert parse_ipvsadm(text) == t
    assert parse_ipvsadm(text).without_thresholds()[VIP].dests[("198.51.100.12", 80)].upper == 0


def test_parse_long_options_defaults_and_errors() -> None:
    t = parse_ipvsadm(
        "--add-service --tcp-service 192.0.2.1:80 --persistent\n"
        "--add-server --tcp-service 192.0.2.1:80 --real-server 198.51.100.1\n"
    )
    key = ServiceKey.of_address("tcp", "192.0.2.1", 80)
    assert t[key].service == Service(key, "wlc", F_PERSISTENT, 300)
    assert t[key].dests[("198.51.100.1", 80)] == Dest("198.51.100.1", 80, Fwd.ROUTE, 1)
    with pytest.raises(ValueError, match="not added before"):
        parse_ipvsadm("-a -t 192.0.2.1:80 -r 198.51.100.1:80")
    with pytest.raises(ValueError, match="unsupported command"):
        parse_ipvsadm("-D -t 192.0.2.1:80")


def test_json_round_trip() -> None:
    t = parse_ipvsadm(SAVED)
    data = to_json(t)
    assert from_json(data) == t
    first = next(s for s in data if s["service"] == "tcp-192.0.2.200-80")
    assert first["persistence"] == {"timeout": 600, "netmask": "255.255.255.255"}
    assert first["destinations"][0] == {
        "real": "198.51.100.12-80",
        "address": "198.51.100.12",
        "port": 80,
        "forward": "masq",
        "weight": 1,
        "upper_threshold": 0,
        "lower_threshold": 0,
    }
    fwm = next(s for s in data if s["service"] == "fwm6-2")
    assert (fwm["protocol"], fwm["address"], fwm["port"], fwm["fwmark"]) == (None, None, None, 2)


def test_a_scheduler_flag_the_scheduler_lacks_is_left_out() -> None:
    spec = load(
        "nodes: [n1]\nvirtual_services:\n"
        "  - {address: '192.0.2.1:80', scheduler: rr, scheduler_flags: [sh-port, flag-2],\n"
        "     reals: [{address: '198.51.100.1:80'}]}\n"
    )
    (entry,) = list(desired(spec, None))
    assert entry.service.flags == F_SCHED2


def test_sync_daemon_roles_are_the_nodes_not_a_groups() -> None:
    from etcdha.ipvs.syncd import daemon_roles

    spec = load_text(
        textwrap.dedent(
            """\
            nodes:
              - node1
              - {name: node2, interfaces: {sync: bond1}}
            groups:
              - name: a
                node: node1
                resources: [{type: ipvs, sync_daemon: {interface: eth1, syncid: 7}}]
              - name: b
                node: node2
                resources: [{type: ipvs, sync_daemon: {interface: eth1, syncid: 7}}]
              - name: c
                node: node2
                resources: [ipvs]
            """
        ),
        "c.yaml",
    ).spec
    # leads a, stands by for b: both daemons (c has none and counts for neither)
    roles, why = daemon_roles(spec, "node1", {"a": True, "b": False, "c": True})
    assert roles == {"master": ("eth1", 7), "backup": ("eth1", 7)}
    assert why == {"master": ["a"], "backup": ["b"]}
    # leads every group with a daemon: the master only; a node's own interface name
    roles, _ = daemon_roles(spec, "node2", {"a": True, "b": True})
    assert roles == {"master": ("bond1", 7), "backup": None}
    # leads nothing (vacant groups count as led elsewhere): the backup only
    assert daemon_roles(spec, "node1", {})[0] == {"master": None, "backup": ("eth1", 7)}
    # not one of the config's nodes: none
    assert daemon_roles(spec, "node9", {"a": True})[0] == {"master": None, "backup": None}
