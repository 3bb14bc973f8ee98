"""Inside user-mode-linux: every netlink operation the backend uses, read back
through our own dump and through ipvsadm-save, and restorable by ipvsadm-restore."""

from __future__ import annotations

import errno
import glob
import os
import subprocess
import time

from support import fresh_backend, in_uml, ipvsadm_save, sh

from etcdha.ipvs import Dest, Fwd, Op, OpKind, Service, ServiceKey, Table, diff, parse_ipvsadm
from etcdha.ipvs.model import F_ONEPACKET, F_PERSISTENT, F_SCHED1, F_SCHED2, F_SCHED3
from etcdha.ipvs.netlink import NetlinkBackend
from etcdha.ipvs.text import to_ipvsadm

pytestmark = in_uml

FORWARDS = (Fwd.MASQ, Fwd.ROUTE, Fwd.TUNNEL)


def schedulers() -> list[str]:
    """Every scheduler module of Debian's UML kernel (ftp and pe_sip are not schedulers)."""
    release = os.uname().release
    paths = glob.glob(f"/usr/lib/uml/modules/{release}/kernel/net/netfilter/ipvs/ip_vs_*.ko")
    names = sorted(os.path.basename(p)[len("ip_vs_") : -len(".ko")] for p in paths)
    return [n for n in names if n not in ("ftp", "pe_sip")]


def assert_kernel_has(backend: NetlinkBackend, want: Table) -> None:
    assert backend.dump() == want
    assert parse_ipvsadm(ipvsadm_save()) == want.without_thresholds()


def rich_table() -> Table:
    t = Table()
    for i, sched in enumerate(schedulers()):
        key = ServiceKey.of_address("tcp", f"192.0.2.{i + 1}", 80)
        flags = {"sh": F_SCHED1 | F_SCHED2, "mh": F_SCHED2}.get(sched, 0)
        t.add(
            Service(key, sched, flags),
            [
                Dest(
                    f"198.51.100.{j + 1}",
                    8080 if fwd is Fwd.MASQ else 80,
                    fwd,
                    j + 1,
                    100 * j,
                    10 * j,
                )
                for j, fwd in enumerate(FORWARDS)
            ],
        )
    persist = ServiceKey.of_address("tcp", "192.0.2.100", 443)
    t.add(Service(persist, "wlc", F_PERSISTENT, 600, 24), [Dest("198.51.100.10", 443)])
    udp = ServiceKey.of_address("udp", "192.0.2.53", 53)
    t.add(Service(udp, "rr", F_ONEPACKET), [Dest("198.51.100.53", 53, Fwd.MASQ)])
    sctp = ServiceKey.of_address("sctp", "192.0.2.99", 3868)
    t.add(Service(sctp, "lc"), [Dest("198.51.100.99", 3868, Fwd.MASQ)])
    t.add(Service(ServiceKey.of_fwmark(1), "wrr"), [Dest("198.51.100.7", 0, Fwd.ROUTE, 4)])
    t.add(
        Service(ServiceKey.of_fwmark(2, 6), "sh", F_PERSISTENT | F_SCHED1, 60, 64),
        [Dest("2001:db8::5", 0, Fwd.MASQ, 5)],
    )
    v6 = ServiceKey.of_address("tcp", "2001:db8::1", 80)
    t.add(
        Service(v6, "rr", F_PERSISTENT, 300, 48),
        [Dest("2001:db8::6", 8080, Fwd.MASQ), Dest("2001:db8::7", 80, Fwd.TUNNEL, 2)],
    )
    return t


def test_every_scheduler_forward_method_persistence_fwmark_and_ipv6_read_back_equal() -> None:
    assert len(schedulers()) >= 13, schedulers()
    with fresh_backend() as b:
        want = rich_table()
        assert b.apply(diff(Table(), want)) == []
        assert_kernel_has(b, want)
        # and ipvsadm-restore reads our rules into the same table
        rules = to_ipvsadm(want)
        b.flush()
        subprocess.run(["ipvsadm-restore"], input=rules, text=True, check=True)
        assert to_ipvsadm(b.dump()) == rules


def test_edits_in_place_and_deletes() -> None:
    with fresh_backend() as b:
        base = rich_table()
        b.apply(diff(Table(), base))
        key = ServiceKey.of_address("tcp", "192.0.2.1", 80)
        entry = base[key]
        changed = Table(base)
        dests = list(entry.dests.values())
        changed.add(
            Service(key, "wlc", F_PERSISTENT | F_SCHED3, 120, 16),
            [
                Dest(dests[0].address, dests[0].port, dests[0].forward, 0),  # weight 0
                Dest(dests[1].address, dests[1].port, Fwd.MASQ, 9, 7, 3),  # forward, weight
                Dest("198.51.100.200", 8080, Fwd.MASQ),  # dests[2] replaced
            ],
        )
        persist = ServiceKey.of_address("tcp", "192.0.2.100", 443)
        changed.add(Service(persist, "wlc"), base[persist].dests.values())  # persistence off
        changed.remove(ServiceKey.of_fwmark(1))
        managed = set(base.keys())
        ops = diff(b.dump(), changed, managed)
        assert [o.kind.value for o in ops] == [
            "edit-service",
            "edit-service",
            "add-dest",
            "edit-dest",
            "edit-dest",
            "delete-dest",
            "delete-service",
        ]
        assert b.apply(ops) == []
        assert_kernel_has(b, changed)
        assert diff(b.dump(), changed, managed) == []


def test_refused_operations_are_reported_and_the_rest_still_applied() -> None:
    with fresh_backend() as b:
        missing = Service(ServiceKey.of_address("tcp", "192.0.2.250", 80), "rr")
        present = Service(ServiceKey.of_address("tcp", "192.0.2.251", 80), "rr")
        ops = [
            Op(OpKind.ADD_DEST, missing, Dest("198.51.100.1", 80)),
            Op(OpKind.ADD_SERVICE, present),
            Op(OpKind.ADD_SERVICE, present),
            Op(OpKind.ADD_SERVICE, Service(ServiceKey.of_fwmark(5), "nosuchsched")),
            Op(OpKind.ADD_DEST, present, Dest("198.51.100.1", 80)),
        ]
        errors = b.apply(ops)
        assert [(e.op, e.errno) for e in errors] == [
            (ops[0], errno.ESRCH),
            (ops[2], errno.EEXIST),
            (ops[3], errno.ENOENT),
        ]
        assert b.dump().keys() == [present.key]
        assert len(b.dump()[present.key].dests) == 1


def test_large_batches_cross_send_boundaries() -> None:
    with fresh_backend() as b:
        want = Table()
        for i in range(200):
            key = ServiceKey.of_address("tcp", f"192.0.2.{i % 250 + 1}", 1000 + i)
            want.add(
                Service(key, "wrr"),
                [Dest(f"198.51.100.{j + 1}", 80, Fwd.MASQ, 1) for j in range(20)],
            )
        ops = diff(Table(), want)
        assert len(ops) == 4200
        started = time.monotonic()
        assert b.apply(ops) == []
        took = time.monotonic() - started
        assert b.dump() == want
        print(f"4200 operations applied in {took:.3f}s")


def test_sync_daemon_master_and_backup_start_read_and_stop() -> None:
    with fresh_backend() as b:
        sh("ip", "link", "add", "sync0", "type", "dummy")
        sh("ip", "link", "set", "sync0", "up")
        try:
            b.start_daemon("master", "sync0", 7)
            b.start_daemon("backup", "lo", 7, port=8849)
            daemons = {d.state: d for d in b.daemons()}
            assert daemons["master"].interface == "sync0" and daemons["master"].syncid == 7
            assert daemons["backup"].interface == "lo" and daemons["backup"].port == 8849
            listed = sh("ipvsadm", "-L", "--daemon")
            assert "master sync daemon (mcast=sync0, syncid=7" in listed
            assert "backup sync daemon (mcast=lo, syncid=7" in listed
            time.sleep(0.2)
            b.stop_daemon("master")
            assert [d.state for d in b.daemons()] == ["backup"]
            b.stop_daemon("backup")
            b.stop_daemon("backup")  # not running: no error
            assert b.daemons() == []
            assert sh("ipvsadm", "-L", "--daemon").strip() == ""
            # stopping right after starting (the thread may not have run yet)
            b.start_daemon("master", "sync0", 8)
            b.stop_daemon("master")
            assert b.daemons() == []
        finally:
            sh("ip", "link", "del", "sync0", check=False)


def test_info_and_timeouts() -> None:
    with fresh_backend() as b:
        version, size = b.info()
        assert version == "1.2.1" and size == 4096
        assert b.timeouts() == (900, 120, 300)
