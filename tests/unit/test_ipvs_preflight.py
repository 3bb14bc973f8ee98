"""Preflight of kernel settings against a fake /proc/sys tree."""

from __future__ import annotations

import textwrap
from pathlib import Path

from etcdha.ipvs.preflight import fix, preflight
from etcdha.spec_load import load_text

SPEC = textwrap.dedent(
    """\
    nodes: [n1]
    groups:
      - {name: web, node: n1, resources: [ipvs]}
    virtual_services:
      - address: 192.0.2.200:80
        quiescent: false
        persistence: {timeout: 60s}
        reals: [{address: "198.51.100.12:80", forward: masq}]
      - address: "[2001:db8::1]:80"
        quiescent: true
        reals: [{address: "[2001:db8::5]:80", forward: masq}]
    """
)


def fake_proc(root: Path, values: dict[str, str]) -> Path:
    for setting, value in values.items():
        path = root.joinpath(*setting.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return root


def test_findings_follow_the_config_and_fix_writes_them(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            "net.ipv4.ip_forward": "0",
            "net.ipv6.conf.all.forwarding": "1",
            "net.ipv4.vs.expire_nodest_conn": "0",
            "net.ipv4.vs.expire_quiescent_template": "0",
            "net.ipv4.vs.conntrack": "0",
            "net.ipv4.conf.all.rp_filter": "1",
            "net.ipv4.conf.eth0.rp_filter": "0",
            "net.ipv4.conf.lo.rp_filter": "0",
        },
    )
    spec = load_text(SPEC, "c.yaml").spec
    found = {f.setting: f for f in preflight(spec, "web", proc_sys=proc)}
    assert set(found) == {
        "net.ipv4.ip_forward",
        "net.ipv6.conf.all.forwarding",
        "net.ipv4.vs.expire_nodest_conn",
        "net.ipv4.vs.expire_quiescent_template",
        "net.ipv4.vs.conntrack",
        "net.ipv4.conf.eth0.rp_filter",
    }
    assert not found["net.ipv4.ip_forward"].ok
    assert found["net.ipv6.conf.all.forwarding"].ok
    assert found["net.ipv4.conf.eth0.rp_filter"].actual == "1"  # 'all' is strict
    assert not found["net.ipv4.vs.conntrack"].required
    assert "masq" in found["net.ipv4.ip_forward"].why
    assert found["net.ipv4.ip_forward"].to_json()["wanted"] == "1"

    after = {f.setting: f for f in fix(list(found.values()), proc_sys=proc)}
    assert all(f.ok for f in after.values()), [str(f) for f in after.values() if not f.ok]
    assert (proc / "net/ipv4/ip_forward").read_text().strip() == "1"
    assert (proc / "net/ipv4/conf/all/rp_filter").read_text().strip() == "2"
    assert all(f.ok for f in preflight(spec, "web", proc_sys=proc))


def test_nothing_needed_for_a_gate_only_quiescent_config(tmp_path: Path) -> None:
    spec = load_text(
        "nodes: [n1]\nvirtual_services:\n"
        "  - {address: '192.0.2.1:80', quiescent: true, reals: [{address: '198.51.100.1:80'}]}\n",
        "c.yaml",
    ).spec
    assert preflight(spec, None, proc_sys=fake_proc(tmp_path, {"net.ipv4.ip_forward": "0"})) == []
    # a missing setting (IPVS not loaded) is reported as missing, not ok
    loud = spec.model_copy(
        update={
            "virtual_services": [spec.virtual_services[0].model_copy(update={"quiescent": False})]
        }
    )
    (finding,) = preflight(loud, None, proc_sys=tmp_path)
    assert finding.actual is None and not finding.ok
