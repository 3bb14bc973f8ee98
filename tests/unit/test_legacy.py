"""Import of ha.cf, haresources and ldirectord.cf: the seed field by field, each
directive family, the notes, the refusals, and the spec defaults ldirectord sets."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from etcdha.legacy import ImportRefused, ImportResult, import_legacy
from etcdha.legacy.hacf import parse_msec
from etcdha.legacy.perlre import PerlRegexError, translate
from etcdha.spec import (
    AddressResource,
    Check,
    CheckType,
    Forward,
    IPVSResource,
    Protocol,
    ScriptResource,
    VirtualService,
)
from etcdha.spec_load import load_text, to_yaml

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "heartbeat-ldirectord"
HA_CF = "node node1 node2\nkeepalive 2\ndeadtime 30\n"


def seed(tmp_path: Path) -> ImportResult:
    return import_legacy(SEED / "ha.cf", SEED / "haresources", None, root=tmp_path / "root")


def run(
    tmp_path: Path,
    *,
    ha_cf: str | None = HA_CF,
    haresources: str | None = None,
    ldirectord: str | None = None,
    checks_dir: Path | None = None,
) -> ImportResult:
    paths: dict[str, Path | None] = {}
    for name, text in (("ha.cf", ha_cf), ("haresources", haresources), ("ld.cf", ldirectord)):
        if text is None:
            paths[name] = None
            continue
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        paths[name] = path
    return import_legacy(
        paths["ha.cf"], paths["haresources"], paths["ld.cf"], checks_dir, root=tmp_path / "root"
    )


def refused(
    tmp_path: Path,
    *,
    ha_cf: str | None = HA_CF,
    haresources: str | None = None,
    ldirectord: str | None = None,
) -> list[str]:
    with pytest.raises(ImportRefused) as e:
        run(tmp_path, ha_cf=ha_cf, haresources=haresources, ldirectord=ldirectord)
    return [f"{Path(p.source).name}:{p.line}: {p.path}: {p.message}" for p in e.value.problems]


def notes(result: ImportResult, kind: str | None = None) -> list[str]:
    return [
        f"{Path(n.source).name}:{n.line}: {n.directive}: {n.message}"
        for n in result.notes
        if kind is None or n.kind == kind
    ]


GROUP = "node1 192.0.2.200/24 ldirectord::ld.cf\n"


def run_ld(tmp_path: Path, body: str, checks_dir: Path | None = None) -> ImportResult:
    """ldirectord.cf text imported into one group of node1."""
    return run(tmp_path, haresources=GROUP, ldirectord=body, checks_dir=checks_dir)


# -- the seed ------------------------------------------------------------------------------


def test_seed_imports_field_by_field(tmp_path: Path) -> None:
    result = seed(tmp_path)
    spec = result.spec
    assert spec.node_names == ["node1", "node2"]
    e = spec.election
    assert (e.lease_ttl, e.keepalive_interval, e.auto_failback) == (30.0, 2.0, True)
    assert e.ping_nodes == ["192.168.1.1"]
    assert (e.ping_interval, e.ping_failures) == (2.0, 15)  # deadping defaults to deadtime
    [group] = spec.groups
    assert (group.name, group.node) == ("192.168.1.200", "node1")
    vip, dip, ipvs = group.resources
    assert isinstance(vip, AddressResource) and isinstance(dip, AddressResource)
    assert (vip.address, vip.interface) == ("192.168.1.200/24", "eth0")
    assert (dip.address, dip.interface) == ("192.168.2.200/24", "eth1")
    assert isinstance(ipvs, IPVSResource)
    [vs] = spec.virtual_services
    assert (vs.address, vs.protocol, vs.scheduler, vs.group) == (
        "192.168.1.200:80",
        Protocol.tcp,
        "rr",
        "192.168.1.200",
    )
    assert vs.quiescent is True
    assert [(r.address, r.forward, r.weight) for r in vs.reals] == [
        ("192.168.2.12:80", Forward.masq, 1),
        ("192.168.2.6:80", Forward.masq, 1),
    ]
    assert vs.fallback is not None
    assert (vs.fallback.address, vs.fallback.forward) == ("127.0.0.1:80", Forward.gate)
    c = vs.check
    assert (c.type, c.service, c.request, c.receive, c.port) == (
        CheckType.negotiate,
        "http",
        "/test.html",
        "ok",
        80,
    )
    assert (c.interval, c.timeout, c.negotiate_timeout, c.failure_count) == (1.0, 3.0, 3.0, 1)
    assert result.warnings == []


def test_seed_notes_say_what_is_not_needed_and_what_changes(tmp_path: Path) -> None:
    result = seed(tmp_path)
    kinds = {n.kind for n in result.notes}
    assert kinds <= {"mapped", "not-needed", "warning"}
    not_needed = notes(result, "not-needed")
    for directive in ("logfile", "udpport", "mcast", "compression", "compression_threshold"):
        assert any("ha.cf:" in n and f": {directive}: " in n for n in not_needed), directive
    assert any(": mcast: " in n and "TLS client certificates and RBAC" in n for n in not_needed)
    assert any("ldirectord.cf:6: autoreload:" in n for n in not_needed)
    assert any("ldirectord.cf:8: logfile:" in n for n in not_needed)
    [ping] = [n for n in notes(result, "warning") if ": ping: " in n]
    assert "gates eligibility" in ping and "did not fail over on it" in ping


def test_seed_with_the_ldirectord_file_given_reads_the_same(tmp_path: Path) -> None:
    given = import_legacy(
        SEED / "ha.cf", SEED / "haresources", SEED / "ldirectord.cf", root=tmp_path / "r"
    )
    assert given.spec == seed(tmp_path).spec


def test_doc_shows_the_seed_yaml_as_imported_now(tmp_path: Path) -> None:
    doc = (REPO / "docs" / "import.md").read_text()
    m = re.search(r"<!-- seed-yaml -->\n```yaml\n(.*?)```", doc, re.S)
    assert m, "docs/import.md lost its seed YAML block"
    assert m.group(1) == to_yaml(seed(tmp_path).spec)


def test_imported_yaml_loads_back_to_the_same_spec(tmp_path: Path) -> None:
    spec = seed(tmp_path).spec
    assert load_text(to_yaml(spec), "cluster.yaml").spec == spec


# -- ha.cf -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [("2", 2000), ("1500ms", 1500), ("0.5", 500), ("250 ms", 250), ("2000us", 2), ("x", None)],
)
def test_heartbeat_times_are_seconds_unless_suffixed(text: str, ms: int | None) -> None:
    assert parse_msec(text) == ms


def test_hacf_nodes_times_and_failback(tmp_path: Path) -> None:
    r = run(
        tmp_path,
        ha_cf="node Node1, node2 node3  # three\nkeepalive 500ms\ndeadtime 4\n"
        "auto_failback off\ncrm off\nudp eth0\nwarntime 2\ninitdead 60\n",
    )
    assert r.spec.node_names == ["node1", "node2", "node3"]
    assert (r.spec.election.keepalive_interval, r.spec.election.lease_ttl) == (0.5, 4.0)
    assert r.spec.election.auto_failback is False
    assert any(": bcast: " not in n and ": udp: " in n for n in notes(r, "not-needed"))
    assert any(": crm: " in n for n in notes(r, "not-needed"))


def test_hacf_defaults_are_heartbeats(tmp_path: Path) -> None:
    r = run(tmp_path, ha_cf="node a b\n")
    assert (r.spec.election.lease_ttl, r.spec.election.keepalive_interval) == (30.0, 1.0)
    assert r.spec.election.auto_failback is True  # legacy, Heartbeat's default, fails back


def test_hacf_legacy_and_nice_failback(tmp_path: Path) -> None:
    r = run(tmp_path, ha_cf=HA_CF + "auto_failback legacy\n")
    assert r.spec.election.auto_failback is True
    r = run(tmp_path, ha_cf=HA_CF + "auto_failback on\nnice_failback on\n")
    assert r.spec.election.auto_failback is False


def test_hacf_ping_group_ping6_deadping_and_ipfail(tmp_path: Path) -> None:
    r = run(
        tmp_path,
        ha_cf=HA_CF + "ping_group gw 192.0.2.1 192.0.2.2\nping6 2001:db8::1\ndeadping 10\n"
        "respawn hacluster /usr/lib/heartbeat/ipfail\napiauth ipfail uid=hacluster\n",
    )
    e = r.spec.election
    assert e.ping_nodes == ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
    assert (e.ping_interval, e.ping_failures) == (2.0, 5)
    assert any("ipfail" in n for n in notes(r, "not-needed"))
    assert any("any one of them answers" in n for n in notes(r, "warning"))


def test_hacf_stonith_and_watchdog_are_warnings(tmp_path: Path) -> None:
    r = run(tmp_path, ha_cf=HA_CF + "stonith_host * baytech 10.0.0.3 x y\nwatchdog /dev/watchdog\n")
    warned = notes(r, "warning")
    assert any("stonith_host" in n and "STONITH" in n for n in warned)
    assert any("watchdog" in n and "fence guard" in n for n in warned)


def test_hacf_refusals_all_at_once(tmp_path: Path) -> None:
    found = refused(
        tmp_path,
        ha_cf="node a\nnode b\nkeepalive 2\ndeadtime 5\nautojoin any\nbogus 1\n"
        "failfast hacluster /usr/bin/x\nping gw.example\ninitdead 1\n",
    )
    text = "\n".join(found)
    assert "ha.cf:3: keepalive: keepalive 2s is more than a third of deadtime 5s" in text
    assert "ha.cf:5: autojoin: autojoin any: R1 style resource management conflicts" in text
    assert "ha.cf:6: bogus: Illegal directive [bogus]" in text
    assert "ha.cf:7: failfast:" in text
    assert "ha.cf:8: ping: ping 'gw.example': write the IPv4 address" in text
    assert "ha.cf:9: initdead: Initial dead time [1000] is smaller than deadtime [5000]" in text


def test_no_nodes_anywhere_is_refused(tmp_path: Path) -> None:
    found = refused(tmp_path, ha_cf=None, ldirectord="checktimeout=3\n")
    assert any("no node is named" in p for p in found)


# -- haresources ---------------------------------------------------------------------------


def test_address_forms(tmp_path: Path) -> None:
    r = run(
        tmp_path,
        haresources="node1 192.0.2.10 192.0.2.11/24 IPaddr::192.0.2.12/255.255.255.0/eth0 \\\n"
        "  IPaddr2::192.0.2.13/24/eth0:web/192.0.2.255 192.0.2.14/24/192.0.2.255 \\\n"
        "  IPv6addr::2001:db8:0:0:0:0:0:20/64/eth1\n",
    )
    got = [(x.address, x.interface, x.label) for x in r.spec.groups[0].resources]  # type: ignore[union-attr]
    assert got == [
        ("192.0.2.10", None, None),
        ("192.0.2.11/24", None, None),
        ("192.0.2.12/24", "eth0", None),
        ("192.0.2.13/24", "eth0", "eth0:web"),
        ("192.0.2.14/24", None, None),
        ("2001:db8::20/64", "eth1", None),
    ]
    assert r.spec.groups[0].name == "192.0.2.10"


def test_scripts_resolve_as_heartbeat_does(tmp_path: Path) -> None:
    resource_d = tmp_path / "root" / "etc" / "ha.d" / "resource.d"
    resource_d.mkdir(parents=True)
    (resource_d / "httpd").write_text("#!/bin/sh\n")
    r = run(
        tmp_path,
        haresources="node2 Filesystem::/dev/sda1::/data::ext4 httpd squid::fast\n"
        "node1 192.0.2.30 MailTo::root@example.org\n",
    )
    fs, httpd, squid = r.spec.groups[0].resources
    assert isinstance(fs, ScriptResource) and isinstance(httpd, ScriptResource)
    assert (fs.path, fs.args) == ("/etc/ha.d/resource.d/Filesystem", ["/dev/sda1", "/data", "ext4"])
    assert httpd.path == "/etc/ha.d/resource.d/httpd"
    assert isinstance(squid, ScriptResource)
    assert (squid.path, squid.args) == ("/etc/init.d/squid", ["fast"])
    assert [g.name for g in r.spec.groups] == ["Filesystem-dev-sda1-data-ext4", "192.0.2.30"]
    assert [g.node for g in r.spec.groups] == ["node2", "node1"]


def test_without_hacf_the_preferred_nodes_are_the_nodes(tmp_path: Path) -> None:
    r = run(tmp_path, ha_cf=None, haresources="NodeB 192.0.2.40\nnodea 192.0.2.41\n")
    assert r.spec.node_names == ["nodeb", "nodea"]
    assert any("no ha.cf" in n for n in notes(r, "warning"))


def test_haresources_refusals(tmp_path: Path) -> None:
    found = refused(
        tmp_path,
        haresources="node1 2001:db8::1\nnode1 /usr/local/bin/x\nnode2 192.0.2.9/24/eth0/192.0.2.7\n"
        "node2 192.0.2.50 ldirectord::a.cf::b\n",
    )
    text = "\n".join(found)
    assert "haresources:1: 2001:db8::1: 2001:db8::1: Heartbeat reads this as script" in text
    assert "haresources:2: /usr/local/bin/x:" in text
    assert "not the subnet's highest address (192.0.2.255)" in text
    assert "ldirectord takes one argument" in text


# -- ldirectord.cf -----------------------------------------------------------------------------


def test_globals_are_defaults_a_virtual_overrides(tmp_path: Path) -> None:
    r = run_ld(
        tmp_path,
        (
            """\
            negotiatetimeout=20
            failurecount=3
            quiescent=no
            fallback=127.0.0.1 masq
            virtual=192.0.2.200:443
            \treal=198.51.100.1:443 masq 5
            \tquiescent=yes
            \tchecktimeout=4
            virtual=192.0.2.200:25
            \treal=198.51.100.1:25 gate
            \tfailurecount=2
            """
        ),
    )
    https, smtp = r.spec.virtual_services
    assert https.check.service == "https" and smtp.check.service == "smtp"
    assert (https.check.timeout, https.check.negotiate_timeout) == (4.0, 4.0)
    assert (smtp.check.timeout, smtp.check.negotiate_timeout) == (20.0, 20.0)
    assert (https.check.failure_count, smtp.check.failure_count) == (3, 2)
    assert (https.quiescent, smtp.quiescent) == (True, False)
    assert https.fallback is not None and smtp.fallback is not None
    assert (https.fallback.address, smtp.fallback.address) == ("127.0.0.1:443", "127.0.0.1:25")
    assert https.reals[0].weight == 5
    assert https.scheduler == "wrr"
    assert all(vs.group == "192.0.2.200" for vs in r.spec.virtual_services)


def test_ldirectord_code_defaults_not_its_manual(tmp_path: Path) -> None:
    r = run_ld(tmp_path, ("virtual=192.0.2.200:80\n\treal=198.51.100.1:80 gate\n"))
    [vs] = r.spec.virtual_services
    assert vs.quiescent is False  # the manual says yes; the code says no
    assert (vs.check.interval, vs.check.timeout, vs.check.negotiate_timeout) == (10.0, 5.0, 30.0)
    assert (vs.check.type, vs.check.service, vs.check.request) == (
        CheckType.negotiate,
        "http",
        None,
    )


def test_checkinterval_in_a_virtual_counts_only_with_fork(tmp_path: Path) -> None:
    body = "checkinterval=5\n{fork}virtual=192.0.2.200:80\n\treal=198.51.100.1:80\tgate\n"
    body += "\tcheckinterval=2\n"
    r = run_ld(tmp_path, (body.format(fork="")))
    assert r.spec.virtual_services[0].check.interval == 5.0
    assert any("ignored when fork=no" in n for n in notes(r, "warning"))
    r = run_ld(tmp_path, (body.format(fork="fork=yes\n")))
    assert r.spec.virtual_services[0].check.interval == 2.0


def test_protocols_fwmarks_ipv6_and_ranges(tmp_path: Path) -> None:
    r = run_ld(
        tmp_path,
        (
            """\
            fallback6=[::1]:53
            virtual=192.0.2.200:domain
            \treal=198.51.100.10->198.51.100.12:53 ipip 2
            \tchecktype=connect
            \tops=yes
            virtual=7
            \treal=198.51.100.20 gate
            \tservice=http
            \tpersistent=600
            \tnetmask=255.255.255.0
            virtual6=[2001:db8::200]:53
            \treal6=[2001:db8::5]:53 masq
            virtual6=8
            \treal6=[2001:db8::6] gate
            """
        ),
    )
    dns, fwm, dns6, fwm6 = r.spec.virtual_services
    assert (dns.address, dns.protocol, dns.one_packet) == ("192.0.2.200:53", Protocol.udp, True)
    assert dns.check.type is CheckType.ping  # connect on UDP is a ping, as ldirectord
    assert (dns.reals[0].address, dns.reals[0].forward, dns.reals[0].weight) == (
        "198.51.100.10->198.51.100.12:53",
        Forward.ipip,
        2,
    )
    assert (fwm.fwmark, fwm.check.service, fwm.check.port) == (7, "http", 80)
    assert fwm.persistence is not None
    assert (fwm.persistence.timeout, fwm.persistence.netmask) == (600.0, "255.255.255.0")
    assert (dns6.address, dns6.check.service) == ("[2001:db8::200]:53", "dns")
    assert dns6.fallback is not None and dns6.fallback.address == "[::1]:53"
    assert (fwm6.fwmark, fwm6.family, fwm6.reals[0].address) == (8, "inet6", "[2001:db8::6]:0")


def test_checks_request_receive_and_commands(tmp_path: Path) -> None:
    checks = tmp_path / "checks"
    r = run_ld(
        tmp_path,
        checks_dir=checks,
        body=(
            f"""\
            virtual=192.0.2.200:80
            \treal=198.51.100.1:80 masq 1 "alive.html", "^OK\\z"
            \treal=198.51.100.2:80 masq
            \tchecktype=3
            \thttpmethod=head
            \tvirtualhost="www.example.org"
            \treceive="[[:digit:]]+ items"
            virtual=192.0.2.200:8000
            \treal=198.51.100.1:8000 masq
            \tchecktype=external-perl
            \tcheckcommand="{checks}/check_app"
            virtual=192.0.2.200:9000
            \treal=198.51.100.1:9000 masq
            \tservice=simpletcp
            \trequest="PING\\n"
            \treceive="PONG"
            virtual=192.0.2.200:53
            \treal=198.51.100.1:53 gate
            \trequest="192.0.2.1"
            \treceive="ns.example.org"
            """
        ),
    )
    web, app, tcp, dns = r.spec.virtual_services
    assert (web.check.type, web.check.negotiate_every) == (CheckType.negotiate, 4)
    assert (web.check.http_method, web.check.virtualhost) == ("HEAD", "www.example.org")
    assert web.check.receive == "[0-9]+ items"
    assert (web.reals[0].request, web.reals[0].receive) == ("/alive.html", "^OK\\Z")
    assert (app.check.type, app.check.command) == (CheckType.external, "check_app")
    assert (tcp.check.service, tcp.check.request, tcp.check.receive) == ("tcp", "PING\n", "PONG")
    assert dns.check.request == "192.0.2.1" and dns.check.receive == r"^ns\.example\.org$"


def test_not_needed_ldirectord_directives(tmp_path: Path) -> None:
    r = run_ld(
        tmp_path,
        (
            """\
            autoreload=yes
            callback="/usr/local/sbin/sync-config"
            logfile="/var/log/ldirectord.log"
            supervised=yes
            emailalert="ops@example.org"
            emailalertstatus=starting,running
            readdquiescent=yes
            cleanstop=no
            maintenancedir=/etc/ha.d/maint
            virtual=192.0.2.200:80
            \treal=198.51.100.1:80 gate
            \tmonitorfile="/var/log/ld-web.log"
            \tfallbackcommand="/usr/local/sbin/sorry"
            """
        ),
    )
    text = "\n".join(notes(r))
    for directive, replacement in [
        ("autoreload", "config apply"),
        ("callback", "nothing to copy"),
        ("logfile", "--log-format json"),
        ("supervised", "foreground"),
        ("emailalert", "Prometheus alerting rules"),
        ("readdquiescent", "etcdha drain"),
        ("cleanstop", "inert without the address"),
        ("maintenancedir", "etcdha drain"),
        ("monitorfile", "etcdha events"),
    ]:
        assert re.search(f": {directive}: .*{re.escape(replacement)}", text), directive
    assert r.spec.virtual_services[0].fallback_command == "/usr/local/sbin/sorry"


def test_every_ldirectord_problem_is_reported(tmp_path: Path) -> None:
    found = refused(
        tmp_path,
        haresources=GROUP,
        ldirectord=(
            """\
            checkcount=0
            emailalertstatus=none,running
            virtual=192.0.2.200:80
            \treal=198.51.100.1:80 masq
            \tpersistent=0
            \tnetmask=24
            \tchecktype=external
            \tcheckcommand=/usr/local/lib/check_web
            \treceive="(?{ 1 })"
            \tlogin=admin
            virtual=www.example.org:80
            \treal=198.51.100.1:80 masq
            """
        ),
    )
    text = "\n".join(found)
    assert "ld.cf:1: checkcount: invalid check count value" in text
    assert 'ld.cf:2: emailalertstatus: invalid email alert status: "running" specified with' in text
    assert "ld.cf:5: persistent: persistent=0: ipvsadm refuses it" in text
    assert "ld.cf:6: netmask: invalid netmask: dotted quad notation is required" in text
    assert "ld.cf:8: checkcommand: checkcommand /usr/local/lib/check_web is outside" in text
    assert "ld.cf:9: receive:" in text and "embedded code" in text
    assert 'ld.cf:10: login: Unknown command "login=admin"' in text
    assert "ld.cf:11: virtual: invalid address for virtual service" in text
    assert "host name" in text


def test_execute_imports_the_other_file_into_the_same_group(tmp_path: Path) -> None:
    (tmp_path / "mail.cf").write_text("virtual=192.0.2.200:25\n\treal=198.51.100.9:25 gate\n")
    r = run_ld(
        tmp_path,
        ("execute=mail.cf\nvirtual=192.0.2.200:80\n\treal=198.51.100.9:80 gate\n"),
    )
    assert [vs.address for vs in r.spec.virtual_services] == ["192.0.2.200:80", "192.0.2.200:25"]
    assert {vs.group for vs in r.spec.virtual_services} == {"192.0.2.200"}


def test_a_file_no_resource_names_is_refused(tmp_path: Path) -> None:
    found = refused(
        tmp_path,
        haresources="node1 192.0.2.200\n",
        ldirectord="virtual=192.0.2.200:80\n\treal=198.51.100.9:80 gate\n",
    )
    assert any("no ldirectord resource in haresources names this file" in p for p in found)


# -- Perl regular expressions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("perl", "python"),
    [
        ("ok", "ok"),
        (r"ok\z", r"ok\Z"),
        (r"ok\Z", r"ok(?=\n?\Z)"),
        (r"^HTTP/1\.[01] 200", r"^HTTP/1\.[01] 200"),
        (r"a\h+b", "a[\\t \\xa0\\u1680\\u180e\\u2000-\\u200a\\u202f\\u205f\\u3000]+b"),
        (r"(?<n>ab)\k<n>", "(?P<n>ab)(?P=n)"),
        (r"x++y(?>z)", r"x++y(?>z)"),
        (r"(?#comment)ok", "ok"),
        (r"(?i)ok", "(?i)ok"),
        (r"(?^i:ok)", "(?i-msx:ok)"),
        (r"[[:alnum:]_]", "[a-zA-Z0-9_]"),
        (r"\x{41}\e\cA", r"\x41\x1b\x01"),
        (r"\Kok", "ok"),
        (r"(a)\g{-1}", r"(a)\1"),
    ],
)
def test_perl_patterns_become_python(perl: str, python: str) -> None:
    assert translate(perl).pattern == python


@pytest.mark.parametrize(
    "perl", [r"\p{L}", r"(?R)", r"a(?i)b", r"(?{ 1 })", r"(*FAIL)", r"(?|a)", r"[a", "a\\"]
)
def test_untranslatable_perl_patterns_are_refused(perl: str) -> None:
    with pytest.raises(PerlRegexError):
        translate(perl)


def test_perl_dollar_means_what_python_dollar_means() -> None:
    pattern = re.compile(translate("ok$").pattern)
    assert pattern.search("ok\n") and pattern.search("ok") and not pattern.search("ok\nx")


# -- spec defaults that follow ldirectord's code -------------------------------------------------


def test_spec_defaults_follow_ldirectord() -> None:
    web = VirtualService(address="192.0.2.1:80")
    dns = VirtualService(address="192.0.2.1:53")
    fwm = VirtualService(fwmark=3)
    assert (web.quiescent, web.check.service, web.protocol) == (False, "http", Protocol.tcp)
    assert (dns.check.service, dns.protocol) == ("dns", Protocol.udp)
    assert fwm.check.service == "none"
    assert (Check(timeout=3).negotiate_timeout, Check(negotiate_timeout=7).timeout) == (3, 7)


@pytest.mark.parametrize(
    "data",
    [
        {"address": "192.0.2.1:53", "protocol": "tcp"},
        {"address": "192.0.2.1:80", "check": {"service": "none"}},
        {"address": "192.0.2.1:80", "check": {"timeout": 30, "negotiate_timeout": 5}},
        {"address": "192.0.2.1:80", "check": {"timeout": 4}},
    ],
)
def test_derived_defaults_survive_a_minimal_yaml_round_trip(data: dict[str, object]) -> None:
    vs = VirtualService.model_validate(data)
    dumped = vs.model_dump(mode="json", exclude_defaults=True)
    assert VirtualService.model_validate(dumped) == vs


def test_group_names_stay_valid_whatever_the_first_resource(tmp_path: Path) -> None:
    found = refused(tmp_path, haresources="node1 192.0.2.20>/24/eth0\nnode2 _x::a\n")
    assert any("'192.0.2.20>' is not an IP address" in p for p in found)
    r = run(tmp_path, haresources="node1 _x::a@b\nnode2 _x::a@c\n")
    assert [g.name for g in r.spec.groups] == ["x-a-b", "x-a-c"]


def test_a_comment_after_yes_in_a_section_leaves_a_blank_ldirectord_rejects(
    tmp_path: Path,
) -> None:
    found = refused(
        tmp_path,
        haresources=GROUP,
        ldirectord="virtual=192.0.2.200:80\n\treal=198.51.100.1:80 gate\n\tquiescent=yes # w0\n",
    )
    assert any("ld.cf:3: quiescent: quiescent must be 'yes' or 'no'" in p for p in found)
    assert any("no blank may follow the value" in p for p in found)
