"""What etcdha.store takes and returns: keys and values, leases, watch events,
transaction compares and operations, and their conversion from etcd's messages.

Keys are ``str`` (UTF-8; undecodable bytes survive as surrogate escapes), values
``bytes``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

from etcd3aio import _protobuf as pb
from etcd3aio import prefix_range_end

from etcdha.etcd_errors import EtcdError


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: int


@dataclass(frozen=True)
class KeepaliveResult:
    """Answer to one keepalive. ``ttl <= 0``: the lease is gone.

    ``sent_at`` is :func:`etcdha.clock.now` (CLOCK_BOOTTIME) taken just before the
    request was written, so ``sent_at + ttl`` never exceeds the true expiry.
    """

    ttl: int
    sent_at: float


class EventType(enum.Enum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True)
class WatchEvent:
    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


@dataclass(frozen=True)
class WatchBatch:
    """Events of one watch response (empty for a progress notification).

    ``revision``: every change under the watched prefix up to this revision
    has been delivered.
    """

    events: tuple[WatchEvent, ...]
    revision: int


@dataclass(frozen=True)
class EndpointStatus:
    endpoint: str
    version: str
    member_id: int
    leader: int
    revision: int
    raft_term: int
    db_size: int


CompareTarget = Literal["value", "version", "create_revision", "mod_revision", "lease"]
CompareOp = Literal["==", "!=", "<", ">"]

_COMPARE_RESULT = {"==": 0, ">": 1, "<": 2, "!=": 3}
_COMPARE_TARGET = {"version": 0, "create_revision": 1, "mod_revision": 2, "value": 3, "lease": 4}


def _kb(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def _ks(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Compare:
    """One txn guard, e.g. ``Compare.create_revision(key, "==", 0)``."""

    key: str
    target: CompareTarget
    op: CompareOp
    operand: bytes | int

    @classmethod
    def value(cls, key: str, op: CompareOp, value: bytes) -> Compare:
        return cls(key, "value", op, value)

    @classmethod
    def version(cls, key: str, op: CompareOp, version: int) -> Compare:
        return cls(key, "version", op, version)

    @classmethod
    def create_revision(cls, key: str, op: CompareOp, revision: int) -> Compare:
        return cls(key, "create_revision", op, revision)

    @classmethod
    def mod_revision(cls, key: str, op: CompareOp, revision: int) -> Compare:
        return cls(key, "mod_revision", op, revision)

    @classmethod
    def lease(cls, key: str, op: CompareOp, lease_id: int) -> Compare:
        return cls(key, "lease", op, lease_id)

    def to_protobuf(self) -> Any:
        if self.op not in _COMPARE_RESULT or self.target not in _COMPARE_TARGET:
            raise ValueError(f"bad comparison {self.target} {self.op}")
        msg = pb.Compare(key=_kb(self.key), result=_COMPARE_RESULT[self.op])
        msg.target = _COMPARE_TARGET[self.target]
        if self.target == "value":
            if not isinstance(self.operand, bytes):
                raise TypeError("a value comparison takes bytes")
            msg.value = self.operand
        else:
            if not isinstance(self.operand, int) or isinstance(self.operand, bool):
                raise TypeError(f"a {self.target} comparison takes an int")
            setattr(msg, self.target, self.operand)
        return msg


@dataclass(frozen=True)
class Op:
    """One txn operation: ``Op.put``, ``Op.delete``, ``Op.get``, ``Op.delete_range``, ..."""

    kind: Literal["put", "delete", "get"]
    key: str
    value: bytes = b""
    lease: int = 0
    range_end: bytes = b""

    @classmethod
    def put(cls, key: str, value: bytes, lease: int = 0) -> Op:
        return cls("put", key, value=value, lease=lease)

    @classmethod
    def delete(cls, key: str) -> Op:
        return cls("delete", key)

    @classmethod
    def delete_range(cls, key: str, range_end: str | bytes) -> Op:
        end = range_end if isinstance(range_end, bytes) else _kb(range_end)
        return cls("delete", key, range_end=end)

    @classmethod
    def delete_prefix(cls, prefix: str) -> Op:
        return cls("delete", prefix, range_end=prefix_range_end(_kb(prefix)))

    @classmethod
    def get(cls, key: str) -> Op:
        return cls("get", key)

    @classmethod
    def get_prefix(cls, prefix: str) -> Op:
        return cls("get", prefix, range_end=prefix_range_end(_kb(prefix)))

    def to_protobuf(self) -> Any:
        if self.kind == "put":
            return pb.RequestOp(
                request_put=pb.PutRequest(key=_kb(self.key), value=self.value, lease=self.lease)
            )
        if self.kind == "delete":
            return pb.RequestOp(
                request_delete_range=pb.DeleteRangeRequest(
                    key=_kb(self.key), range_end=self.range_end
                )
            )
        if self.kind == "get":
            return pb.RequestOp(
                request_range=pb.RangeRequest(key=_kb(self.key), range_end=self.range_end)
            )
        raise ValueError(f"unknown op kind {self.kind!r}")


@dataclass(frozen=True)
class OpResult:
    """Result of one txn operation: ``kvs`` for a get, ``deleted`` for a delete."""

    kind: Literal["put", "delete", "get"]
    kvs: list[KeyValue] = field(default_factory=list)
    deleted: int = 0


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[OpResult]


def _kv(msg: Any) -> KeyValue:
    return KeyValue(
        key=_ks(msg.key),
        value=bytes(msg.value),
        create_revision=int(msg.create_revision),
        mod_revision=int(msg.mod_revision),
        version=int(msg.version),
        lease=int(msg.lease),
    )


def _op_result(msg: Any) -> OpResult:
    which = msg.WhichOneof("response")
    if which == "response_range":
        return OpResult("get", kvs=[_kv(kv) for kv in msg.response_range.kvs])
    if which == "response_delete_range":
        return OpResult("delete", deleted=int(msg.response_delete_range.deleted))
    if which == "response_put":
        return OpResult("put")
    raise EtcdError(f"unexpected txn response {which!r}")


def _event(msg: Any) -> WatchEvent:
    prev = _kv(msg.prev_kv) if msg.HasField("prev_kv") else None
    etype = EventType.DELETE if int(msg.type) == 1 else EventType.PUT
    return WatchEvent(type=etype, kv=_kv(msg.kv), prev_kv=prev)
