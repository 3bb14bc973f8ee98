"""Inside user-mode-linux: the group resource reconciles the kernel to config +
health, minimally, repairs drift, and never touches a foreign service."""

from __future__ import annotations

import asyncio
import textwrap
from typing import Any

from support import fresh_backend, in_uml, ipvsadm_save, sh

from etcdha import metrics
from etcdha.ipvs import OpKind, ServiceKey, desired, parse_ipvsadm
from etcdha.ipvs.reconcile import Feed, IPVSTable
from etcdha.spec import ClusterSpec, IPVSResource
from etcdha.spec_load import load_text

pytestmark = in_uml

SPEC = textwrap.dedent(
    """\
    nodes: [node1, node2]
    groups:
      - name: lvs
        node: node1
        resources: [ipvs]
    virtual_services:
      - address: 192.0.2.200:80
        scheduler: rr
        quiescent: true
        fallback: {address: "127.0.0.1:80"}
        reals:
          - {address: "198.51.100.12:80", forward: masq}
          - {address: "198.51.100.6:80", forward: masq}
      - address: 192.0.2.200:443
        persistence: {timeout: 10m}
        reals:
          - {address: "198.51.100.20->198.51.100.23:443", forward: masq, weight: 2}
      - fwmark: 5
        family: inet6
        reals: [{address: "2001:db8::5"}]
    """
)
WEB = "tcp-192.0.2.200-80"
RS1 = "198.51.100.12-80"
RS2 = "198.51.100.6-80"
VIP = ServiceKey.of_address("tcp", "192.0.2.200", 80)
FOREIGN_RULES = "-A -t 203.0.113.9:25 -s wlc\n-a -t 203.0.113.9:25 -r 203.0.113.10:25 -m -w 3\n"


def load(text: str) -> ClusterSpec:
    return load_text(text, "cluster.yaml").spec


def foreign_intact() -> None:
    saved = parse_ipvsadm(ipvsadm_save())
    foreign = parse_ipvsadm(FOREIGN_RULES)
    assert saved.only(foreign.keys()) == foreign


def kernel_ours(feed: Feed) -> Any:
    spec = feed.inputs.spec
    assert spec is not None
    want = desired(spec, "lvs", feed.inputs.verdicts, feed.inputs.drains)
    return parse_ipvsadm(ipvsadm_save()).only(want.keys()), want


async def settle(table: IPVSTable) -> None:
    """Wait for the reconcile that a feed change started."""
    for _ in range(200):
        await asyncio.sleep(0.02)
        if table._event is not None and not table._event.is_set() and not table._lock.locked():
            return
    raise AssertionError("no reconcile after the feed changed")


async def reported(statuses: list[dict[str, Any]], health_revision: int) -> dict[str, Any]:
    """The status recorded for `health_revision`: recorded after the reconcile's
    lock is released (the etcd write must not hold up the next reconcile)."""
    for _ in range(200):
        if statuses and statuses[-1]["health_revision"] == health_revision:
            return statuses[-1]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no status recorded for health revision {health_revision}")


def last_ops(table: IPVSTable) -> list[tuple[str, str]]:
    assert table.last is not None
    return [(o.kind.value, str(o.dest or o.service.key)) for o in table.last.ops]


async def test_reconciler_follows_inputs_repairs_drift_and_leaves_foreign_alone() -> None:
    with fresh_backend():
        sh("ipvsadm", "-A", "-t", "203.0.113.9:25", "-s", "wlc")
        sh("ipvsadm", "-a", "-t", "203.0.113.9:25", "-r", "203.0.113.10:25", "-m", "-w", "3")
        statuses: list[dict[str, Any]] = []

        async def on_applied(group: str, payload: dict[str, Any]) -> None:
            assert group == "lvs"
            statuses.append(payload)

        feed = Feed()
        feed.update(spec=load(SPEC), config_revision=10, health_revision=20)
        table = IPVSTable("lvs", feed, on_applied=on_applied)
        await table.start()
        try:
            have, want = kernel_ours(feed)
            assert have == want and len(want) == 3 and want.dest_count == 7
            foreign_intact()
            assert statuses[-1]["config_revision"] == 10 and statuses[-1]["services"] == 3
            assert [s["service"] for s in statuses[-1]["table"]] == [
                "tcp-192.0.2.200-80",
                "tcp-192.0.2.200-443",
                "fwm6-5",
            ]

            # a real goes down (quiescent): one edit in place
            feed.update(verdicts={(WEB, RS1): False}, health_revision=21)
            await settle(table)
            assert last_ops(table) == [("edit-dest", "198.51.100.12:80")]
            assert kernel_ours(feed)[0] == kernel_ours(feed)[1]
            await reported(statuses, 21)

            # both down: the fallback is added; one back: it goes again
            feed.update(verdicts={(WEB, RS1): False, (WEB, RS2): False}, health_revision=22)
            await settle(table)
            assert last_ops(table) == [
                ("add-dest", "127.0.0.1:80"),
                ("edit-dest", "198.51.100.6:80"),
            ]
            assert (await reported(statuses, 22))["fallback_active"] == [WEB]
            feed.update(verdicts={(WEB, RS2): False}, health_revision=23)
            await settle(table)
            assert last_ops(table) == [
                ("edit-dest", "198.51.100.12:80"),
                ("delete-dest", "127.0.0.1:80"),
            ]
            foreign_intact()

            # a drain: weight 0, without any health change
            feed.update(verdicts={}, health_revision=24)
            await settle(table)
            assert last_ops(table) == [("edit-dest", "198.51.100.6:80")]
            feed.update(drains={(WEB, RS1)}, drain_revision=30)
            await settle(table)
            assert last_ops(table) == [("edit-dest", "198.51.100.12:80")]
            feed.update(drains=set(), verdicts={}, drain_revision=31)
            await settle(table)
            have, want = kernel_ours(feed)
            assert have == want

            # drift by hand: a deleted destination and a changed weight come back
            sh("ipvsadm", "-d", "-t", "192.0.2.200:80", "-r", "198.51.100.6:80")
            sh("ipvsadm", "-e", "-t", "192.0.2.200:443", "-r", "198.51.100.21:443", "-m", "-w", "9")
            sh("ipvsadm", "-a", "-t", "192.0.2.200:80", "-r", "198.51.100.99:80", "-m")
            table._last_dump = 0.0
            await table.audit()
            assert sorted(last_ops(table)) == [
                ("add-dest", "198.51.100.6:80"),
                ("delete-dest", "198.51.100.99:80"),
                ("edit-dest", "198.51.100.21:443"),
            ]
            have, want = kernel_ours(feed)
            assert have == want
            foreign_intact()
            # nothing to do: no change at all, and audits are spaced out
            table._last_dump = 0.0
            await table.audit()
            assert last_ops(table) == []
            before = table._last_dump
            await table.audit()
            assert table._last_dump == before

            # drift the reconciler does not know of, then a feed change: its belief
            # of the kernel is wrong, the kernel refuses, it reads the table again
            sh("ipvsadm", "-d", "-t", "192.0.2.200:80", "-r", "198.51.100.6:80")
            feed.update(verdicts={(WEB, RS2): False}, health_revision=40)
            await settle(table)
            assert table.last is not None and table.last.dumped and table.last.errors == []
            assert last_ops(table) == [("add-dest", "198.51.100.6:80")]
            have, want = kernel_ours(feed)
            assert have == want
            feed.update(verdicts={}, health_revision=41)
            await settle(table)
            assert table.last is not None and not table.last.dumped
            assert last_ops(table) == [("edit-dest", "198.51.100.6:80")]

            # the config drops a service: it is deleted, the foreign one stays
            smaller = SPEC.replace("  - fwmark: 5\n    family: inet6\n", "  - fwmark: 6\n")
            smaller = smaller.replace('"2001:db8::5"', '"198.51.100.5"')
            feed.update(spec=load(smaller), config_revision=11)
            await settle(table)
            kinds = [k for k, _ in last_ops(table)]
            assert kinds == ["add-service", "add-dest", "delete-service"]
            assert ServiceKey.of_fwmark(5, 6) not in parse_ipvsadm(ipvsadm_save())
            foreign_intact()
            assert statuses[-1]["config_revision"] == 11
            changes = metrics.ipvs_rule_changes.labels("lvs", OpKind.EDIT_DEST.value)._value.get()
            assert changes >= 6
        finally:
            await table.stop()
        # stopping keeps a warm table
        have, want = kernel_ours(feed)
        assert have == want and len(have) == 3
        foreign_intact()

        # a standby's warm copy from the same inputs is a no-op now
        copy = IPVSTable("lvs", feed, role="standby")
        await copy.start()
        assert copy.last is not None and copy.last.ops == []
        await copy.stop()

        # a config without this group's services: stopping takes them away
        table = IPVSTable("lvs", feed)
        await table.start()
        feed.update(spec=load(SPEC.split("virtual_services:")[0] + "virtual_services: []\n"))
        await table.stop()
        assert parse_ipvsadm(ipvsadm_save()) == parse_ipvsadm(FOREIGN_RULES)


async def test_refused_change_is_reported_once_and_the_rest_applied() -> None:
    with fresh_backend():
        spec = load(
            textwrap.dedent(
                """\
                nodes: [n1]
                groups: [{name: lvs, node: n1, resources: [ipvs]}]
                virtual_services:
                  - {address: "192.0.2.1:80", scheduler: nosuchsched,
                     reals: [{address: "198.51.100.1:80"}]}
                  - {address: "192.0.2.2:80", reals: [{address: "198.51.100.2:80"}]}
                """
            )
        )
        feed = Feed()
        feed.update(spec=spec)
        table = IPVSTable("lvs", feed)
        await table.start()
        try:
            assert table.last is not None
            assert len(table.last.errors) == 2  # the service, then its destination
            assert ServiceKey.of_address("tcp", "192.0.2.2", 80) in parse_ipvsadm(ipvsadm_save())
            assert table._refused
        finally:
            await table.stop()


async def test_standby_copy_keeps_the_table_or_removes_it_when_warm_copy_is_off() -> None:
    with fresh_backend():
        sh("ipvsadm", "-A", "-t", "203.0.113.9:25", "-s", "wlc")
        sh("ipvsadm", "-a", "-t", "203.0.113.9:25", "-r", "203.0.113.10:25", "-m", "-w", "3")
        feed = Feed()
        spec = load(SPEC)
        feed.update(spec=spec)
        warm = IPVSTable("lvs", feed, settings=IPVSResource(), role="standby")
        await warm.start()
        try:
            have, want = kernel_ours(feed)
            assert have == want and len(have) == 3
        finally:
            await warm.stop()
        cold = IPVSTable("lvs", feed, settings=IPVSResource(warm_copy=False), role="standby")
        await cold.start()
        try:
            # the group's services go, a foreign one stays
            assert parse_ipvsadm(ipvsadm_save()) == parse_ipvsadm(FOREIGN_RULES)
        finally:
            await cold.stop()
