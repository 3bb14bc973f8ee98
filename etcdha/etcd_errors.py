"""The errors of etcdha.store: what can go wrong talking to etcd."""

from __future__ import annotations


class EtcdError(Exception):
    """Any failure talking to etcd."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered within the timeout.

    ``maybe_committed`` is True when a write was sent but its answer was lost:
    it may or may not have been applied, so re-read before deciding.
    """

    def __init__(self, message: str, *, maybe_committed: bool = False) -> None:
        super().__init__(message)
        self.maybe_committed = maybe_committed


class EtcdAuthError(EtcdError):
    """Authentication failed (wrong user or password) or permission denied."""


class EtcdLeaseNotFound(EtcdError):
    """The lease named in a request does not exist (expired or revoked)."""


class WatchCompacted(EtcdError):
    """The watch's start revision was compacted: re-read with get_prefix, then watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(
            f"the watched revision was compacted (oldest available: {compact_revision})"
        )
        self.compact_revision = compact_revision


class StoreWentBack(EtcdError):
    """etcd's store went back in time: restored from an older snapshot or rebuilt.

    Everything read before is stale: re-read with get_prefix, then watch again
    from the revision read. ``why`` is one sentence saying what was seen, e.g.
    "revision 57 on a linearizable read after 123 had been seen".
    """

    def __init__(self, why: str) -> None:
        super().__init__(f"etcd went back in time: {why}")
        self.why = why


class _Retryable(EtcdUnavailable):
    """Internal: a failure that the retry loop may try again (on another endpoint)."""


class _TokenInvalid(EtcdError):
    """Internal: etcd rejected the auth token; authenticate again and retry."""
