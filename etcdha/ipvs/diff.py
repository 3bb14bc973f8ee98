"""The fewest kernel operations that turn the current table into the desired one.

Only services in ``managed`` (the services the config names now, plus those it
named before and dropped) are looked at; any other service in the kernel is
foreign and never touched. A destination whose weight, thresholds or
forwarding method changed is edited in place, so its established connections
stay; likewise a service's scheduler, flags and persistence.

Operations come in this order: add services, edit services, add destinations,
edit destinations, delete destinations, delete services. New reals are
therefore in place before old ones (or a fallback) leave.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from etcdha.ipvs.model import Dest, Service, ServiceKey, Table


class OpKind(StrEnum):
    ADD_SERVICE = "add-service"
    EDIT_SERVICE = "edit-service"
    ADD_DEST = "add-dest"
    EDIT_DEST = "edit-dest"
    DELETE_DEST = "delete-dest"
    DELETE_SERVICE = "delete-service"


ORDER = list(OpKind)


@dataclass(frozen=True)
class Op:
    kind: OpKind
    service: Service
    dest: Dest | None = None

    def __str__(self) -> str:
        if self.dest is None:
            return f"{self.kind} {self.service.key}"
        return f"{self.kind} {self.dest} of {self.service.key}"


def diff(current: Table, desired: Table, managed: Iterable[ServiceKey] = ()) -> list[Op]:
    """Operations turning `current` into `desired` for the services of `desired`
    and `managed`; services in neither are left as they are."""
    ops: dict[OpKind, list[Op]] = {k: [] for k in OpKind}
    for want in desired.sorted():
        key = want.service.key
        have = current.get(key)
        if have is None:
            ops[OpKind.ADD_SERVICE].append(Op(OpKind.ADD_SERVICE, want.service))
            for d in sorted(want.dests.values(), key=lambda d: d.key):
                ops[OpKind.ADD_DEST].append(Op(OpKind.ADD_DEST, want.service, d))
            continue
        if have.service != want.service:
            ops[OpKind.EDIT_SERVICE].append(Op(OpKind.EDIT_SERVICE, want.service))
        for dkey in sorted(want.dests):
            d = want.dests[dkey]
            old = have.dests.get(dkey)
            if old is None:
                ops[OpKind.ADD_DEST].append(Op(OpKind.ADD_DEST, want.service, d))
            elif old != d:
                ops[OpKind.EDIT_DEST].append(Op(OpKind.EDIT_DEST, want.service, d))
        for dkey in sorted(have.dests):
            if dkey not in want.dests:
                ops[OpKind.DELETE_DEST].append(
                    Op(OpKind.DELETE_DEST, want.service, have.dests[dkey])
                )
    for key in sorted(set(managed)):
        if key not in desired and key in current:
            ops[OpKind.DELETE_SERVICE].append(Op(OpKind.DELETE_SERVICE, current[key].service))
    return [op for kind in ORDER for op in ops[kind]]


def apply_ops(table: Table, ops: Iterable[Op]) -> Table:
    """`table` with `ops` applied (pure): what the kernel should hold afterwards."""
    out = Table(table)
    for op in ops:
        key = op.service.key
        if op.kind is OpKind.ADD_SERVICE:
            out.add(op.service)
        elif op.kind is OpKind.EDIT_SERVICE:
            out.add(op.service, out[key].dests.values())
        elif op.kind is OpKind.DELETE_SERVICE:
            out.remove(key)
        else:
            assert op.dest is not None
            dests = dict(out[key].dests)
            if op.kind is OpKind.DELETE_DEST:
                dests.pop(op.dest.key, None)
            else:
                dests[op.dest.key] = op.dest
            out.add(out[key].service, dests.values())
    return out
