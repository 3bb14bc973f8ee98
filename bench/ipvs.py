"""How fast the netlink backend changes a large IPVS table, against ipvsadm-restore.

Runs inside Debian's user-mode-linux (the host kernel may have no IPVS), in one
boot, so both sides share the same kernel, CPU and clock. That kernel has one
CPU and HZ=100, so the absolute figures say little about a real director: the
ratios are the result.

The table: 2,284 virtual services (TCP, masq reals) with 37,298 destinations
in all (16 or 17 each), on documentation addresses. Measured, each side
starting from the same kernel state:

1. from empty: our reconcile (dump, diff, apply) against `ipvsadm-restore` of
   the same rules (to_ipvsadm's text);
2. a reload changing 1 % of the destinations (weights, and some added and
   removed): our reconcile (which dumps the whole table first) against
   `ipvsadm -R` reading only the changed rules (-e/-a/-d lines), and against
   `ipvsadm-restore` of the whole table (which clears the table first: the
   flush-and-reload that the design rules out);
3. sustained destination operations per second: weight edits of every
   destination, ours in one apply against `ipvsadm -R` reading the -e lines,
   and against one ipvsadm process per edit (how ldirectord changes a weight),
   on a sample;
4. reading the whole table: our dump against `ipvsadm-save -n`;
5. the pure-Python parts on a table this size: desired() from a spec, diff();
6. one health change from the etcd write to the kernel, through the agent's
   path (bench/ipvs_latency.py, which also runs on its own).

    .venv/bin/python bench/ipvs.py            # boots UML, prints the figures
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable

from etcdha.ipvs import Dest, Fwd, Op, OpKind, Service, ServiceKey, Table, desired, diff
from etcdha.ipvs.netlink import NetlinkBackend
from etcdha.ipvs.text import dest_rule, service_option, to_ipvsadm
from etcdha.spec import ClusterSpec

SERVICES = 2_284
DESTINATIONS = 37_298
SAMPLE_PROCESSES = 300  # single ipvsadm invocations timed for the per-process rate


def build() -> Table:
    table = Table()
    per, extra = divmod(DESTINATIONS, SERVICES)
    for i in range(SERVICES):
        vip = f"203.0.113.{i % 250 + 1}"
        key = ServiceKey.of_address("tcp", vip, 1000 + i // 250)
        n = per + (1 if i < extra else 0)
        dests = [
            Dest(f"198.51.100.{j % 250 + 1}", 8000 + j // 250, Fwd.MASQ, 1 + (i + j) % 5)
            for j in range(n)
        ]
        table.add(Service(key, "wrr"), dests)
    assert len(table) == SERVICES and table.dest_count == DESTINATIONS
    return table


def spec_of(table: Table) -> ClusterSpec:
    """A cluster spec whose desired table is `table` (one group carrying it all)."""
    services = []
    for e in table.sorted():
        k = e.service.key
        services.append(
            {
                "address": f"{k.address}:{k.port}",
                "scheduler": e.service.scheduler,
                "reals": [
                    {"address": f"{d.address}:{d.port}", "forward": "masq", "weight": d.weight}
                    for d in e.dests.values()
                ],
            }
        )
    return ClusterSpec.model_validate(
        {
            "nodes": ["n1"],
            "groups": [{"name": "lvs", "node": "n1", "resources": ["ipvs"]}],
            "virtual_services": services,
        }
    )


def changed(table: Table, fraction: float, rng: random.Random) -> Table:
    """A copy with `fraction` of the destinations changed: mostly weights, some
    removed and as many new ones added."""
    out = Table(table)
    entries = list(out)
    todo = int(DESTINATIONS * fraction)
    for n in range(todo):
        entry = rng.choice(entries)
        key = entry.service.key
        dests = dict(out[key].dests)
        victim = rng.choice(sorted(dests))
        d = dests[victim]
        if n % 5 == 0:  # replace a destination
            del dests[victim]
            new = Dest(f"192.0.2.{n % 250 + 1}", 9000 + n // 250, Fwd.MASQ, 1)
            dests[new.key] = new
        else:
            dests[victim] = Dest(d.address, d.port, d.forward, d.weight % 9 + 1)
        out.add(entry.service, dests.values())
    return out


def restore_lines(ops: list[Op]) -> str:
    """The same operations as ipvsadm-restore input."""
    lines = []
    for op in ops:
        if op.kind is OpKind.ADD_DEST and op.dest is not None:
            lines.append(dest_rule(op.service.key, op.dest))
        elif op.kind is OpKind.EDIT_DEST and op.dest is not None:
            lines.append("-e" + dest_rule(op.service.key, op.dest)[2:])
        elif op.kind is OpKind.DELETE_DEST and op.dest is not None:
            d = op.dest
            addr = f"[{d.address}]" if ":" in d.address else d.address
            lines.append(f"-d {service_option(op.service.key)} -r {addr}:{d.port}")
        else:
            raise ValueError(f"not in this benchmark: {op}")
    return "".join(f"{line}\n" for line in lines)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def restore(text: str) -> None:
    """ipvsadm-restore: it clears the table (ipvsadm -C), then reads the rules."""
    subprocess.run(["ipvsadm-restore"], input=text, text=True, check=True)


def read_rules(text: str) -> None:
    """ipvsadm -R: the rules on top of the table as it is (what restore runs after -C)."""
    subprocess.run(["ipvsadm", "-R"], input=text, text=True, check=True)


def reconcile(b: NetlinkBackend, want: Table) -> list[Op]:
    ops = diff(b.dump(), want, want.keys())
    errors = b.apply(ops)
    if errors:
        raise RuntimeError(f"{len(errors)} refused, first: {errors[0]}")
    return ops


def line(what: str, ours: float, theirs: float, unit: str = "s") -> None:
    """One figure of each side and how many times faster ours is (a rate when
    the unit is /s, a duration otherwise)."""
    faster = ours / theirs if unit == "/s" else theirs / ours
    print(
        f"  {what:<58} ours {ours:10.3f} {unit:<2}  ipvsadm {theirs:10.3f} {unit:<2}  "
        f"ours {faster:5.1f}x as fast"
    )


def inside() -> None:
    rng = random.Random(2284)
    base = build()
    rules = to_ipvsadm(base)
    b = NetlinkBackend()
    print(
        f"kernel {os.uname().release} (user-mode-linux); table: {len(base)} services, "
        f"{base.dest_count} destinations, {len(rules.splitlines())} ipvsadm rules"
    )

    print("1. from empty")
    b.flush()
    ours = timed(lambda: reconcile(b, base))
    assert b.dump() == base
    b.flush()
    theirs = timed(lambda: restore(rules))
    assert b.dump() == base
    line("apply the whole table", ours, theirs)

    print("2. a reload changing 1 % of the destinations")
    target = changed(base, 0.01, rng)
    ops = diff(base, target, base.keys())
    kinds = {k.value: sum(1 for o in ops if o.kind is k) for k in OpKind}
    print("  changes: " + ", ".join(f"{n} {k}" for k, n in kinds.items() if n))
    with_dump = timed(lambda: reconcile(b, target))
    assert b.dump() == target
    dump_only = timed(b.dump)
    reconcile(b, base)
    ours = timed(lambda: b.apply(diff(base, target, base.keys())))
    assert b.dump() == target
    reconcile(b, base)
    theirs = timed(lambda: read_rules(restore_lines(ops)))
    assert b.dump() == target
    line("after a feed change (diff against the last reconcile + apply)", ours, theirs)
    line("at start or audit (dump + diff + apply)", with_dump, theirs)
    print(f"  (the dump of the whole table alone: {dump_only:.3f} s)")
    reconcile(b, base)

    def flush_and_restore() -> None:
        b.flush()
        restore(to_ipvsadm(target))

    theirs = timed(flush_and_restore)
    line("ours after a feed change, against ipvsadm-restore of all", ours, theirs)

    print("3. sustained destination operations")
    reconcile(b, base)
    edits = [
        Op(OpKind.EDIT_DEST, e.service, Dest(d.address, d.port, d.forward, d.weight % 9 + 1))
        for e in base
        for d in e.dests.values()
    ]
    ours = timed(lambda: b.apply(edits))
    reconcile(b, base)
    theirs = timed(lambda: read_rules(restore_lines(edits)))
    print(f"  {len(edits)} weight edits")
    line("operations per second, all in one batch", len(edits) / ours, len(edits) / theirs, "/s")
    sample = edits[:SAMPLE_PROCESSES]

    def one_process_each() -> None:
        for op in sample:
            assert op.dest is not None
            argv = ["ipvsadm", *("-e" + dest_rule(op.service.key, op.dest)[2:]).split()]
            subprocess.run(argv, check=True)

    per_process = timed(one_process_each)
    single = timed(lambda: [b.apply([op]) for op in sample])
    line(
        "one change at a time (ours: one apply each; ipvsadm: a process)",
        len(sample) / single,
        len(sample) / per_process,
        "/s",
    )

    print("4. reading the whole table")
    reconcile(b, base)
    ours = timed(b.dump)
    theirs = timed(lambda: subprocess.run(["ipvsadm-save", "-n"], capture_output=True, check=True))
    line("dump", ours, theirs)
    print("5. the desired table from a spec of this size (pure Python, no kernel)")
    spec = spec_of(base)
    first = timed(lambda: desired(spec, "lvs"))
    assert desired(spec, "lvs") == base
    down = {(e.service.key.segment, d.segment): False for e in target for d in e.dests.values()}
    down = dict(list(down.items())[:373])
    again = timed(lambda: desired(spec, "lvs", down))
    took_diff = timed(lambda: diff(base, target, base.keys()))
    print(f"  desired(): {first:.3f} s for a new config, {again:.3f} s after a health change")
    print(f"  diff() of two such tables: {took_diff:.3f} s")
    b.flush()
    b.close()
    print("6. ", end="")
    import ipvs_latency  # bench/ is this script's directory

    ipvs_latency.inside(50, [1, 1000])


def main() -> int:
    if os.environ.get("ETCDHA_IN_UML"):
        inside()
        return 0
    from etcdha.lab.uml import run_in_uml, unavailable

    reason = unavailable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 1
    result = run_in_uml(["python", os.path.abspath(__file__)], timeout=900, mem="2G")
    sys.stdout.write(result.output)
    return result.code


if __name__ == "__main__":
    sys.exit(main())
