"""This director's fence/<node> record: the groups whose addresses it may hold.

A leader whose key disappears without its cooperation (an operator's
``etcdctl del`` or ``lease revoke``, a restored or rebuilt etcd) may still
hold the group's addresses for a while: until it notices, or, if it is frozen
or cut off, until its fence deadline. A new leader must not add them before
then. This record is how it knows:

- it is written *before* any address of a group is added, listing the group
  with its term, and rewritten without the group once every address of it is
  gone (the acknowledgement a new leader waits for);
- while it lists groups, it is rewritten after every keepalive, in a txn
  guarded by each listed group's leader key (create revision = term, lease =
  ours): a write that fails names the groups whose key is gone, and the agent
  drops them at once;
- the director's fence deadline is never later than the send time of its last
  successful write + its lease TTL - its margin, so another director that saw
  the record written at `t` knows the addresses are gone by `t + TTL`.

The record is not bound to the lease: it must outlive a lease that was
revoked or expired, to say what its director may still hold. It is small
(node, lease, TTL, groups) and, while the director holds something, written
once per keepalive interval.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from etcdha import clock
from etcdha.keyspace import Keyspace
from etcdha.store import Compare, EtcdError, Op, Store


class FenceRecord:
    """Writes fence/<node>. `groups` is what this node may hold now (group ->
    term); `keys` the part of it whose leader key we still believe ours: the
    writes are guarded by those keys only, a group whose key is gone stays
    listed until its addresses are."""

    def __init__(
        self,
        store: Store,
        ks: Keyspace,
        node: str,
        lease: Callable[[], int],
        ttl: Callable[[], float],
        confirmed: Callable[[float | None], None],
    ) -> None:
        self.store = store
        self.ks = ks
        self.node = node
        self.lease = lease
        self.ttl = ttl
        # Told the send time of every successful write that lists groups (None once
        # the record lists none): the lease keeper bounds the fence deadline with it.
        self.confirmed = confirmed
        self.groups: dict[str, int] = {}
        self.keys: dict[str, int] = {}
        self.written: dict[str, int] | None = None  # what etcd holds, as far as we know
        self._lock = asyncio.Lock()

    def hold(self, group: str, term: int) -> None:
        """List `group` (written by the next write, before any address is placed)."""
        self.groups[group] = term
        self.keys[group] = term

    def lose_key(self, group: str) -> None:
        """The group's leader key is not ours any more; it stays listed."""
        self.keys.pop(group, None)

    def release(self, group: str) -> None:
        """Every address of `group` is gone: the next write leaves it out."""
        self.groups.pop(group, None)
        self.keys.pop(group, None)

    @property
    def key(self) -> str:
        return self.ks.fence(self.node)

    def value(self, groups: dict[str, int] | None = None) -> bytes:
        groups = self.groups if groups is None else groups
        record = {"node": self.node, "lease": self.lease(), "ttl": self.ttl(), "groups": groups}
        return json.dumps(record, sort_keys=True).encode()

    @property
    def settled(self) -> bool:
        """etcd holds what `groups` says (no acknowledgement pending)."""
        return self.written == self.groups

    def put_op(self) -> Op:
        """The write as one op of a caller's txn (the caller calls `wrote` on success)."""
        return Op.put(self.key, self.value())

    def wrote(self, groups: dict[str, int]) -> None:
        self.written = dict(groups)
        if not groups:
            self.confirmed(None)

    async def write(self) -> list[str]:
        """Write the record as `groups` says, guarded by the leader keys in `keys`.
        Returns the groups whose key is no longer ours (nothing was written then:
        the caller drops them, `lose_key`s them and writes again); raises
        EtcdError when etcd does not answer."""
        async with self._lock:
            groups, keys = dict(self.groups), dict(sorted(self.keys.items()))
            lease = self.lease()
            compares: list[Compare] = []
            for group, term in keys.items():
                key = self.ks.leader(group)
                compares += [
                    Compare.create_revision(key, "==", term),
                    Compare.lease(key, "==", lease),
                ]
            failure = [Op.get(self.ks.leader(g)) for g in keys]
            sent = clock.now()
            result = await self.store.txn(compares, [Op.put(self.key, self.value(groups))], failure)
            if result.succeeded:
                self.wrote(groups)
                if groups:
                    self.confirmed(sent)
                return []
            lost: list[str] = []
            for (group, term), answer in zip(keys.items(), result.responses, strict=True):
                kv = answer.kvs[0] if answer.kvs else None
                if kv is None or kv.create_revision != term or kv.lease != lease:
                    lost.append(group)
            if not lost:  # one txn compares and reads the same state: cannot happen
                raise EtcdError(f"etcd refused to write {self.key} without a reason")
            return lost
