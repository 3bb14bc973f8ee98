"""Keyspace: key builders, segment encodings and the classifier (pure, no etcd)."""

from __future__ import annotations

import pytest

from etcdha.keyspace import (
    KeyKind,
    Keyspace,
    ParsedKey,
    RealId,
    ServiceId,
    canonical_address,
    event_id_time_ns,
    fwmark_segment,
    is_valid_name,
    new_event_id,
    parse_real_segment,
    parse_service_segment,
    real_segment,
    service_segment,
    validate_name,
)

# ---------------------------------------------------------------------------
# segment encodings


@pytest.mark.parametrize(
    ("proto", "address", "port", "segment"),
    [
        ("tcp", "192.0.2.200", 80, "tcp-192.0.2.200-80"),
        ("udp", "192.0.2.53", 53, "udp-192.0.2.53-53"),
        ("sctp", "198.51.100.9", 3868, "sctp-198.51.100.9-3868"),
        ("TCP", "192.0.2.1", 0, "tcp-192.0.2.1-0"),
        ("tcp", "2001:db8::1", 80, "tcp-2001.db8..1-80"),
        ("tcp", "2001:DB8:0:0:0:0:0:1", 443, "tcp-2001.db8..1-443"),
        ("udp", "::1", 53, "udp-..1-53"),
        ("tcp", "::", 80, "tcp-..-80"),
        ("tcp", "fe80::", 80, "tcp-fe80..-80"),
        ("tcp", "2001:db8:0:1:0:0:0:1", 80, "tcp-2001.db8.0.1..1-80"),
        ("tcp", "2001:db8:0:0:1:0:0:1", 80, "tcp-2001.db8..1.0.0.1-80"),
        ("tcp", "1:2:3:4:5:6:7:8", 80, "tcp-1.2.3.4.5.6.7.8-80"),
        ("tcp", "::ffff:192.0.2.1", 80, "tcp-..ffff.c000.201-80"),
        ("tcp", "[2001:db8::1]", 80, "tcp-2001.db8..1-80"),
    ],
)
def test_service_segment_round_trip(proto: str, address: str, port: int, segment: str) -> None:
    assert service_segment(proto, address, port) == segment
    parsed = parse_service_segment(segment)
    assert parsed.proto == proto.lower()
    assert parsed.port == port
    assert parsed.family == (6 if ":" in address else 4)
    assert parsed.address == canonical_address(address)[0]
    assert parsed.segment == segment
    assert str(parsed) == segment


@pytest.mark.parametrize(
    ("mark", "family", "segment"),
    [(1, 4, "fwm-1"), (4294967295, 4, "fwm-4294967295"), (7, 6, "fwm6-7")],
)
def test_fwmark_round_trip(mark: int, family: int, segment: str) -> None:
    assert fwmark_segment(mark, family) == segment
    parsed = parse_service_segment(segment)
    assert parsed == ServiceId("fwm", fwmark=mark, family=family)
    assert parsed.segment == segment


def test_ipv4_mapped_ipv6_is_written_in_hex() -> None:
    # A dotted IPv4 tail would be ambiguous once ':' becomes '.': always hex groups.
    assert service_segment("tcp", "::ffff:192.0.2.1", 80) == "tcp-..ffff.c000.201-80"
    assert parse_service_segment("tcp-..ffff.c000.201-80").address == "::ffff:c000:201"
    # Read back, a dotted-looking tail is simply more hex groups.
    assert parse_service_segment("tcp-..ffff.192.0.2.1-80").address == "::ffff:192:0:2:1"


def test_fwmark_default_family_is_ipv4() -> None:
    assert fwmark_segment(1) == "fwm-1"


@pytest.mark.parametrize(
    ("address", "port", "segment"),
    [
        ("192.0.2.12", 80, "192.0.2.12-80"),
        ("192.0.2.6", 0, "192.0.2.6-0"),
        ("2001:db8::5", 80, "2001.db8..5-80"),
        ("::1", 8080, "..1-8080"),
    ],
)
def test_real_segment_round_trip(address: str, port: int, segment: str) -> None:
    assert real_segment(address, port) == segment
    parsed = parse_real_segment(segment)
    assert parsed == RealId(canonical_address(address)[0], port, 6 if ":" in address else 4)
    assert parsed.segment == segment


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "tcp",
        "tcp-192.0.2.1",
        "icmp-192.0.2.1-80",
        "TCP-192.0.2.1-80",
        "tcp-192.0.2.1-65536",
        "tcp-192.0.2.1-080",
        "tcp-192.0.2.1--1",
        "tcp-192.0.2.1-",
        "tcp-192.0.2-80",
        "tcp-192.0.2.256-80",
        "tcp-192.000.2.1-80",
        "tcp-host.example-80",
        "tcp-2001.DB8..1-80",  # not canonical (upper case)
        "tcp-2001.db8.0.0.0.0.0.1-80",  # not canonical (not compressed)
        "tcp-2001.0db8..1-80",  # not canonical (leading zero)
        "tcp-2001:db8::1-80",
        "fwm-0",
        "fwm-4294967296",
        "fwm-01",
        "fwm-x",
        "fwm4-1",
        "fwm-1-2",
    ],
)
def test_parse_service_segment_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_service_segment(bad)


@pytest.mark.parametrize(
    "bad", ["", "192.0.2.1", "192.0.2.1-80-1", "192.0.2.1-99999", "x-80", "2001.db8..1-", "-80"]
)
def test_parse_real_segment_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_real_segment(bad)


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (service_segment, ("icmp", "192.0.2.1", 80)),
        (service_segment, ("tcp", "192.0.2.1", 70000)),
        (service_segment, ("tcp", "192.0.2.1", -1)),
        (service_segment, ("tcp", "www.example.org", 80)),
        (service_segment, ("tcp", "fe80::1%eth0", 80)),
        (service_segment, ("tcp", "192.0.2.0/24", 80)),
        (fwmark_segment, (0,)),
        (fwmark_segment, (2**32,)),
        (fwmark_segment, (1, 5)),
        (real_segment, ("192.0.2.1", 65536)),
        (real_segment, ("not-an-ip", 80)),
    ],
)
def test_encoders_reject_bad_input(call: object, args: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        call(*args)  # type: ignore[operator]


def test_segments_contain_no_slash_or_colon() -> None:
    for seg in (
        service_segment("tcp", "2001:db8:1:2:3:4:5:6", 65535),
        real_segment("2001:db8::ffff", 1),
        fwmark_segment(12, 6),
    ):
        assert "/" not in seg
        assert ":" not in seg


# ---------------------------------------------------------------------------
# names and event ids


@pytest.mark.parametrize("name", ["lvs1", "director-a", "a", "A.b_c-d", "0", "x" * 253])
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", ".a", "_a", "a/b", "..", "a b", "ä", "a:b", "x" * 254, "a\n"]
)
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(ValueError, match="node name"):
        validate_name(name, "node name")


def test_event_ids_sort_by_time() -> None:
    ids = [new_event_id(ns) for ns in (5, 10**9, 1_700_000_000_000_000_000, 10**19)]
    assert ids == sorted(ids)
    assert [event_id_time_ns(i) for i in ids] == [5, 10**9, 1_700_000_000_000_000_000, 10**19]
    now = new_event_id()
    assert is_valid_name(now)
    assert len(now) == 29
    assert event_id_time_ns("not-an-event-id") is None


def test_event_ids_are_unique_within_one_nanosecond() -> None:
    assert len({new_event_id(42) for _ in range(200)}) == 200


# ---------------------------------------------------------------------------
# key builders


def test_key_builders_default_prefix() -> None:
    ks = Keyspace()
    assert ks.root == "/etcdha/default/"
    assert ks.config() == "/etcdha/default/config"
    assert ks.member("lvs1") == "/etcdha/default/members/lvs1"
    assert ks.members_prefix() == "/etcdha/default/members/"
    assert ks.leader("lvs") == "/etcdha/default/leader/lvs"
    assert ks.leaders_prefix() == "/etcdha/default/leader/"
    svc = service_segment("tcp", "192.0.2.200", 80)
    real = real_segment("192.0.2.12", 80)
    assert ks.health("lvs1", svc, real) == (
        "/etcdha/default/health/lvs1/tcp-192.0.2.200-80/192.0.2.12-80"
    )
    assert ks.health_prefix() == "/etcdha/default/health/"
    assert ks.health_prefix("lvs1") == "/etcdha/default/health/lvs1/"
    assert ks.standby("lvs2") == "/etcdha/default/admin/standby/lvs2"
    assert ks.takeover("lvs") == "/etcdha/default/admin/takeover/lvs"
    assert ks.drain(svc, real) == "/etcdha/default/admin/drain/tcp-192.0.2.200-80/192.0.2.12-80"
    assert ks.admin_prefix() == "/etcdha/default/admin/"
    assert ks.standby_prefix() == "/etcdha/default/admin/standby/"
    assert ks.takeover_prefix() == "/etcdha/default/admin/takeover/"
    assert ks.drain_prefix() == "/etcdha/default/admin/drain/"
    assert ks.status_ipvs("lvs") == "/etcdha/default/status/lvs/ipvs"
    assert ks.status_prefix() == "/etcdha/default/status/"
    assert ks.event("00000000000000000001-abcdef01") == (
        "/etcdha/default/events/00000000000000000001-abcdef01"
    )
    assert ks.new_event(7).startswith("/etcdha/default/events/00000000000000000007-")
    assert ks.events_prefix() == "/etcdha/default/events/"


def test_key_builders_accept_ids_and_custom_prefix() -> None:
    ks = Keyspace("/lb/prod", "site-a")
    svc = ServiceId("tcp", "2001:db8::1", 80, family=6)
    real = RealId("2001:db8::5", 80, 6)
    assert (
        ks.health("chk", svc, real)
        == "/lb/prod/site-a/health/chk/tcp-2001.db8..1-80/2001.db8..5-80"
    )
    assert ks.drain(parse_service_segment("fwm-3"), "192.0.2.1-0") == (
        "/lb/prod/site-a/admin/drain/fwm-3/192.0.2.1-0"
    )


def test_key_builders_reject_bad_names_and_segments() -> None:
    ks = Keyspace()
    with pytest.raises(ValueError, match="node name"):
        ks.member("a/b")
    with pytest.raises(ValueError, match="group name"):
        ks.leader("")
    with pytest.raises(ValueError, match="checker name"):
        ks.health("../x", "tcp-192.0.2.1-80", "192.0.2.2-80")
    with pytest.raises(ValueError):
        ks.health("c", "tcp-192.0.2.1-80", "192.0.2.2:80")
    with pytest.raises(ValueError):
        ks.drain("tcp-192.0.2.1", "192.0.2.2-80")


@pytest.mark.parametrize(
    "prefix", ["", "/", "etcdha", "/etcdha/", "//etcdha", "/a//b", "/a/..", "/a b"]
)
def test_keyspace_rejects_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Keyspace(prefix)


@pytest.mark.parametrize("cluster", ["", "a/b", "-x"])
def test_keyspace_rejects_bad_cluster(cluster: str) -> None:
    with pytest.raises(ValueError, match="cluster"):
        Keyspace("/etcdha", cluster)


# ---------------------------------------------------------------------------
# classify


def test_classify_every_kind_round_trips() -> None:
    ks = Keyspace("/etcdha", "c1")
    svc6 = service_segment("tcp", "2001:db8::1", 80)
    real6 = real_segment("::1", 80)
    cases = {
        ks.config(): ParsedKey(KeyKind.CONFIG),
        ks.member("lvs1"): ParsedKey(KeyKind.MEMBER, ("lvs1",)),
        ks.leader("web"): ParsedKey(KeyKind.LEADER, ("web",)),
        ks.health("lvs1", svc6, real6): ParsedKey(KeyKind.HEALTH, ("lvs1", svc6, real6)),
        ks.health("c", "fwm6-9", "192.0.2.1-0"): ParsedKey(
            KeyKind.HEALTH, ("c", "fwm6-9", "192.0.2.1-0")
        ),
        ks.standby("lvs2"): ParsedKey(KeyKind.STANDBY, ("lvs2",)),
        ks.takeover("web"): ParsedKey(KeyKind.TAKEOVER, ("web",)),
        ks.drain("udp-192.0.2.53-53", "192.0.2.7-53"): ParsedKey(
            KeyKind.DRAIN, ("udp-192.0.2.53-53", "192.0.2.7-53")
        ),
        ks.status_ipvs("web"): ParsedKey(KeyKind.STATUS_IPVS, ("web",)),
        ks.event("00000000000000000001-abcdef01"): ParsedKey(
            KeyKind.EVENT, ("00000000000000000001-abcdef01",)
        ),
    }
    for key, expected in cases.items():
        assert ks.classify(key) == expected, key
        assert ks.classify(key.encode()) == expected, key


def test_parsed_key_accessors() -> None:
    ks = Keyspace()
    health = ks.classify(ks.health("chk1", "sctp-192.0.2.9-3868", "192.0.2.10-3868"))
    assert health is not None
    assert health.name == "chk1"
    assert health.service == ServiceId("sctp", "192.0.2.9", 3868)
    assert health.real == RealId("192.0.2.10", 3868)
    drain = ks.classify(ks.drain("fwm-1", "2001.db8..5-80"))
    assert drain is not None
    assert drain.name == ""
    assert drain.service == ServiceId("fwm", fwmark=1)
    assert drain.real == RealId("2001:db8::5", 80, 6)
    leader = ks.classify(ks.leader("web"))
    assert leader is not None
    assert leader.name == "web"
    assert leader.service is None
    assert leader.real is None


@pytest.mark.parametrize(
    "key",
    [
        # foreign: outside this cluster
        "/etcdha/other/config",
        "/etcdha/defaults/config",
        "/other/default/config",
        "/etcdha/default",
        "etcdha/default/config",
        "",
        # unknown or malformed under the prefix
        "/etcdha/default/",
        "/etcdha/default/config/x",
        "/etcdha/default/configs",
        "/etcdha/default/members/",
        "/etcdha/default/members/a/b",
        "/etcdha/default/members/-bad",
        "/etcdha/default/leader/",
        "/etcdha/default/leader/a b",
        "/etcdha/default/health/lvs1",
        "/etcdha/default/health/lvs1/tcp-192.0.2.1-80",
        "/etcdha/default/health/lvs1/tcp-192.0.2.1-80/192.0.2.2-80/extra",
        "/etcdha/default/health/lvs1/tcp-192.0.2.1-80/192.0.2.2",
        "/etcdha/default/health/lvs1/http-192.0.2.1-80/192.0.2.2-80",
        "/etcdha/default/health/.x/tcp-192.0.2.1-80/192.0.2.2-80",
        "/etcdha/default/admin/standby",
        "/etcdha/default/admin/standby/",
        "/etcdha/default/admin/reboot/lvs1",
        "/etcdha/default/admin/drain/tcp-192.0.2.1-80",
        "/etcdha/default/admin/drain/tcp-192.0.2.1-80/nope",
        "/etcdha/default/status/web",
        "/etcdha/default/status/web/ipvs/x",
        "/etcdha/default/status/web/other",
        "/etcdha/default/events/",
        "/etcdha/default/events/a/b",
        "/etcdha/default//config",
    ],
)
def test_classify_rejects_foreign_and_malformed(key: str) -> None:
    assert Keyspace().classify(key) is None


def test_classify_rejects_undecodable_bytes() -> None:
    assert Keyspace().classify(b"/etcdha/default/members/\xff") is None
