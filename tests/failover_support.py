"""Shared pieces of the failover tests: the spec, starting agents, assertions."""

from __future__ import annotations

import json
import subprocess

from etcdha.lab.directors import AddressSampler, DirectorLab
from etcdha.lab.netns import netns_exec_argv

VIP = "192.0.2.200"
DIP = "198.51.100.200"
TTL = 3.0


def spec(
    ttl: float = TTL, keepalive: float = 1.0, extra_election: str = "", groups: str | None = None
) -> str:
    return f"""
nodes: [node1, node2]
election:
  lease_ttl: {ttl}s
  keepalive_interval: {keepalive}s
  ping_nodes: [192.0.2.1]
  ping_interval: 200ms
  ping_timeout: 200ms
  ping_failures: 3
{extra_election}
groups:
{
        groups
        or '''  - name: web
    node: node1
    resources:
      - {address: 192.0.2.200/24, interface: eth0}
      - {address: 198.51.100.200}'''
    }
"""


def start_both(lab: DirectorLab, spec_yaml: str | None = None) -> None:
    lab.apply(spec_yaml or spec())
    lab.start_agent("node1")
    lab.wait_for(lambda: lab.holders(VIP) == ["node1"], 10, "node1 to hold the VIP")
    lab.start_agent("node2")
    lab.wait_for(
        lambda: lab.leader("web") == "node1" and _member_count(lab) == 2, 10, "both members"
    )


def _member_count(lab: DirectorLab) -> int:
    """Members whose agent is up and running (they publish their eligibility then)."""
    out = lab.etcdctl("get", "--prefix", "--print-value-only", "/etcdha/default/members/")
    values = [json.loads(line) for line in out.splitlines() if line.strip()]
    return len([v for v in values if v.get("eligible")])


def assert_clean_handoff(sampler: AddressSampler, old: str, new: str) -> None:
    """Never two holders, and the old leader's address gone before the new one's."""
    assert sampler.overlaps() == [], f"two holders seen: {sampler.changes}"
    order = [h for _, h in sampler.changes]
    assert (new,) in order, order
    first_new = order.index((new,))
    assert (old,) in order[:first_new]
    assert order[first_new - 1] == (), f"{old} still held it when {new} took it: {order}"
    assert sampler.max_gap < 0.2, f"sampling stalled for {sampler.max_gap:.3f}s"


def client_ping(lab: DirectorLab, ip: str) -> None:
    subprocess.run(
        netns_exec_argv(lab.seed.ns("client"), ["ping", "-c1", "-W1", ip]),
        capture_output=True,
        check=True,
    )
