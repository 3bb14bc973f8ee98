"""The spec model and its loader: pure logic, no I/O beyond temp files."""

from __future__ import annotations

import json
import textwrap

import pytest

from etcdha.spec import AddressResource, ClusterSpec, Forward, IPVSResource, ScriptResource
from etcdha.spec_load import SpecInvalid, load_json, load_text, to_json, to_yaml
from etcdha.spec_types import expand_real, format_duration, parse_duration

GOOD = textwrap.dedent(
    """\
    nodes: [node1, node2]
    election:
      lease_ttl: 6s
      keepalive_interval: 500ms
      ping_nodes: [192.0.2.1, "2001:db8::1"]
    groups:
      - name: web
        node: node1
        resources:
          - address: 192.0.2.200/24
            interface: eth0
          - address: 2001:db8:1::200/64
          - ipvs
          - path: /etc/init.d/httpd
            args: [fast]
    virtual_services:
      - address: 192.0.2.200:80
        scheduler: rr
        persistence: {timeout: 10m, netmask: 255.255.255.0}
        fallback: {address: "127.0.0.1:80"}
        check: {type: negotiate, service: http, request: /test.html, receive: "^ok"}
        reals:
          - {address: "198.51.100.12:80", forward: masq}
          - {address: "198.51.100.20->198.51.100.23:80", forward: masq, weight: 3}
      - address: "[2001:db8:1::200]:443"
        reals:
          - {address: "[2001:db8:2::5]:443"}
      - fwmark: 7
        protocol: tcp
        reals:
          - {address: 198.51.100.30}
    """
)


def load(text: str) -> ClusterSpec:
    return load_text(text, "cluster.yaml").spec


def problems(text: str) -> list[str]:
    with pytest.raises(SpecInvalid) as e:
        load_text(text, "cluster.yaml")
    return [str(p) for p in e.value.problems]


def test_good_spec_loads_with_types_inferred() -> None:
    spec = load(GOOD)
    assert spec.node_names == ["node1", "node2"]
    assert spec.election.lease_ttl == 6.0
    assert spec.election.keepalive_interval == 0.5
    assert spec.election.ping_nodes == ["192.0.2.1", "2001:db8::1"]
    kinds = [type(r) for r in spec.groups[0].resources]
    assert kinds == [AddressResource, AddressResource, IPVSResource, ScriptResource]
    vs = spec.virtual_services[0]
    assert vs.persistence is not None and vs.persistence.timeout == 600.0
    assert vs.reals[1].weight == 3 and vs.reals[1].forward is Forward.masq
    assert spec.virtual_services[1].address == "[2001:db8:1::200]:443"
    assert spec.virtual_services[1].ip_family == 6
    assert spec.virtual_services[2].fwmark == 7
    assert spec.group_of(vs) is spec.groups[0]


def test_round_trips_through_yaml_and_json() -> None:
    spec = load(GOOD)
    assert load(to_yaml(spec)) == spec
    assert load(to_yaml(spec, minimal=False)) == spec
    assert load_json(to_json(spec), "etcd").spec == spec


def test_durations() -> None:
    assert parse_duration("2s") == 2.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1.5m") == 90.0
    assert parse_duration(3) == 3.0
    assert format_duration(0.5) == "500ms"
    assert format_duration(30.0) == "30s"
    assert format_duration(1.25) == "1250ms"
    for bad in ("2 parsecs", "-1s", True, "", "s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_real_range_expands() -> None:
    reals = expand_real("198.51.100.20->198.51.100.23:80")
    assert [str(ip) for ip, _ in reals] == [
        "198.51.100.20",
        "198.51.100.21",
        "198.51.100.22",
        "198.51.100.23",
    ]
    assert {port for _, port in reals} == {80}


def test_bad_real_names_line_and_path() -> None:
    text = GOOD.replace('"198.51.100.12:80"', '"198.51.100.300:80"')
    assert problems(text) == [
        "cluster.yaml:23: virtual_services[0].reals[0].address: "
        "'198.51.100.300:80' is not an IP:port"
    ]


def test_every_problem_is_reported_not_only_the_first() -> None:
    text = GOOD.replace("lease_ttl: 6s", "lease_ttl: soon").replace("scheduler: rr", "sched: rr")
    found = problems(text)
    assert any(
        p.startswith("cluster.yaml:3: election.lease_ttl: 'soon' is not a duration") for p in found
    )
    assert any(
        p.startswith("cluster.yaml:18: virtual_services[0].sched: unknown field") for p in found
    )


def test_cross_field_rules_name_the_reason() -> None:
    text = GOOD.replace("lease_ttl: 6s", "lease_ttl: 1s")
    found = problems(text)
    assert "cluster.yaml:3: election.lease_ttl: 1s is below etcd's minimum lease TTL of 2s" in found
    assert any(
        "keepalive_interval: 500ms must be above 0 and at most lease_ttl / 3" in p for p in found
    )


def test_duplicate_real_and_fallback_that_is_a_real() -> None:
    text = GOOD.replace('"198.51.100.20->198.51.100.23:80"', '"198.51.100.10->198.51.100.12:80"')
    text = text.replace('"127.0.0.1:80"', '"198.51.100.23:80"')
    found = problems(text)
    assert any(
        "cluster.yaml:24: virtual_services[0].reals[1].address: 198.51.100.12 port 80 is "
        "already reals[0]" in p
        for p in found
    ), found
    text = GOOD.replace('"127.0.0.1:80"', '"198.51.100.21:80"')
    assert any(
        "virtual_services[0].fallback.address: 198.51.100.21 port 80 is also reals[1]" in p
        for p in problems(text)
    )


def test_vip_held_by_no_group_is_a_warning_not_an_error() -> None:
    loaded = load_text(GOOD.replace("address: 192.0.2.200:80", "address: 192.0.2.201:80"), "c.yaml")
    assert [str(w) for w in loaded.warnings] == [
        "c.yaml:17: virtual_services[0].address: 192.0.2.201 is held by no group's address "
        "resource; it must then be managed elsewhere"
    ]


def test_mixed_families_and_unknown_node() -> None:
    text = GOOD.replace('"[2001:db8:2::5]:443"', '"198.51.100.5:443"').replace(
        "node: node1", "node: node9"
    )
    found = problems(text)
    assert "cluster.yaml:8: groups[0].node: 'node9' is not one of the nodes" in found
    assert any("reals[0].address: 198.51.100.5 is IPv4 but the service is IPv6" in p for p in found)


def test_duplicate_yaml_key_is_refused() -> None:
    found = problems("nodes: [a]\nnodes: [b]\n")
    assert found == ["cluster.yaml:2: not valid YAML: duplicate key 'nodes' (first on line 1)"]


def test_external_check_needs_a_command_in_the_checks_dir() -> None:
    text = GOOD.replace("check: {type: negotiate", "check: {type: external, command: /bin/x")
    assert any("must be a file name in the checks directory" in p for p in problems(text))


def test_json_schema_lists_fields() -> None:
    schema = ClusterSpec.model_json_schema()
    text = json.dumps(schema)
    for field in ("lease_ttl", "virtual_services", "failure_count", "fallback", "quiescent"):
        assert field in text


def test_every_groups_sync_daemon_names_the_same_interface_and_syncid() -> None:
    two = textwrap.dedent(
        """\
        nodes: [node1, node2]
        groups:
          - name: a
            node: node1
            resources:
              - {address: 192.0.2.200/24}
              - {type: ipvs, sync_daemon: {interface: eth1, syncid: 7}}
          - name: b
            node: node2
            resources:
              - {address: 192.0.2.201/24}
              - {type: ipvs, sync_daemon: {interface: eth1, syncid: 7}}
          - name: c
            node: node2
            resources:
              - {address: 192.0.2.202/24}
              - {type: ipvs}
        """
    )
    assert len(load(two).groups) == 3
    b = "{interface: eth1, syncid: 7}}\n  - name: c"
    found = problems(two.replace(b, "{interface: eth1, syncid: 8}}\n  - name: c"))
    assert found == [
        "cluster.yaml:12: groups[1].resources[1].sync_daemon: differs from "
        "groups[0].resources[1].sync_daemon (interface eth1, syncid 7): a director runs one "
        "master and one backup sync daemon for all its groups, so every group's sync_daemon "
        "names the same interface and syncid (a node's own name for the interface goes under "
        "its interfaces: sync)"
    ]
    assert len(problems(two.replace(b, "{interface: eth2, syncid: 7}}\n  - name: c"))) == 1
