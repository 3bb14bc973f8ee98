"""The only module that talks to etcd (API v3 over gRPC, asyncio).

It uses the generated stubs and messages that the ``etcd3aio`` package ships and
owns everything around them:

* one gRPC channel per endpoint, with fail-over between endpoints: a call goes to
  the active endpoint; when that one is unreachable the next one becomes active.
  Hostnames, IPv4 and IPv6 literals all work (gRPC's resolver runs off the event
  loop);
* TLS with a CA and a client certificate; user/password authentication with the
  token sent as metadata and renewed when etcd says it is invalid;
* retries (``tenacity``) of transient failures for reads and for requests that
  provably never left this process; a write whose outcome is unknown is reported
  (``EtcdUnavailable.maybe_committed``), never sent twice;
* a lease keepalive primitive over one persistent LeaseKeepAlive stream, which
  returns when the keepalive was sent (CLOCK_BOOTTIME), for fencing;
* prefix watches that resume after a disconnect from the last delivered
  revision + 1 (no event missed, none repeated) and raise :class:`WatchCompacted`
  when that revision is gone;
* noticing a store that went back in time (restored from an older snapshot,
  rebuilt empty): every answer's header (cluster id, member id, revision, raft
  term) is checked against high-water marks. A linearizable answer (a read, a
  write) below them means the store went back; any other answer below them (a
  keepalive, a watch, a status, from a member that may lag) is a suspicion that
  one linearizable read settles, so normal operation costs no extra request.
  Then :attr:`Store.generation` goes up, :meth:`Store.on_went_back` listeners
  are called, and every watch raises :class:`StoreWentBack`: the caller reads
  everything again. :meth:`Store.history_state` / :meth:`Store.seed_history`
  carry the marks over to a later process (docs/etcd-restore.md).

Keys are ``str`` (UTF-8; undecodable bytes survive as surrogate escapes), values
``bytes``. The errors, the connection settings and the data types live in
etcd_errors, etcd_settings and etcd_types; this module re-exports them, so
callers import everything from here.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypeVar

import grpc
import grpc.aio
from etcd3aio import _protobuf as pb
from etcd3aio import prefix_range_end
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from etcdha import clock
from etcdha.etcd_errors import (
    EtcdAuthError,
    EtcdError,
    EtcdLeaseNotFound,
    EtcdUnavailable,
    StoreWentBack,
    WatchCompacted,
    _Retryable,
    _TokenInvalid,
)
from etcdha.etcd_settings import (
    DEFAULT_ENDPOINT,
    DEFAULT_PORT,
    Endpoint,
    EtcdSettings,
    _read_password,
    _read_tls_files,
    parse_endpoint,
    parse_endpoints,
)
from etcdha.etcd_types import (
    Compare,
    EndpointStatus,
    EventType,
    KeepaliveResult,
    KeyValue,
    Lease,
    Op,
    OpResult,
    TxnResult,
    WatchBatch,
    WatchEvent,
    _event,
    _kb,
    _kv,
    _op_result,
)

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_PORT",
    "Compare",
    "Endpoint",
    "EndpointStatus",
    "EtcdAuthError",
    "EtcdError",
    "EtcdLeaseNotFound",
    "EtcdSettings",
    "EtcdUnavailable",
    "EventType",
    "KeepaliveResult",
    "KeyValue",
    "Lease",
    "Op",
    "OpResult",
    "Store",
    "StoreWentBack",
    "TxnResult",
    "WatchBatch",
    "WatchCompacted",
    "WatchEvent",
    "parse_endpoint",
    "parse_endpoints",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")


# ---------------------------------------------------------------------------
# error classification

_NOT_SENT_MARKERS = (
    "failed to connect to all addresses",
    "errors resolving",
    "dns resolution failed",
    "name resolution",
    "etcdserver: no leader",
    "etcdserver: not capable",
)
_TOKEN_MARKERS = (
    "invalid auth token",
    "user name is empty",
    "revision of auth store is old",
    "auth token is expired",
)
_TLS_MARKERS = ("ssl", "tsi_", "handshake", "certificate")


def _not_sent(exc: Any) -> bool:
    """True when gRPC says the request never reached etcd's state machine."""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = (exc.details() or "").lower()
    return any(m in details for m in _NOT_SENT_MARKERS)


def _describe(exc: Any) -> str:
    details = exc.details() or ""
    hint = ""
    if any(m in details.lower() for m in _TLS_MARKERS):
        hint = " (TLS handshake failed: check the CA, client certificate and key)"
    return f"{exc.code().name}: {details}{hint}"


_BACKOFF = wait_exponential(multiplier=0.05, min=0.05, max=0.5)


# ---------------------------------------------------------------------------
# history: noticing a store that went back in time


@dataclass(frozen=True)
class _Marks:
    """The high-water marks as they were when a request was sent."""

    generation: int
    cluster_id: int
    revision: int
    raft_term: int


@dataclass(frozen=True)
class _Finding:
    """What an answer's header says: ``ok``, ``suspect`` or ``went back``.

    ``why``: a sentence saying what was seen against what had been seen before;
    ``shown``: the short form, what the answer showed (a suspicion's cause).
    """

    verdict: Literal["ok", "suspect", "went back"]
    why: str = ""
    shown: str = ""


_OK = _Finding("ok")


class _History:
    """What etcd has shown this Store so far, to notice a store that went back in time.

    Every answer's header is checked against the marks as they were when its
    request was sent (an answer to a request sent earlier than another one's may
    arrive later and show less without anything wrong):

    * ``cluster_id``: the cluster's, from the first linearizable answer (or seeded);
    * ``revision``: the highest revision etcd showed: any answer's header
      revision (every member's revision is one its cluster committed), a
      delivered watch event's revision;
    * ``raft_term``: the highest raft term of a linearizable answer (etcd 3.4
      reports the term of the last entry the member applied);
    * ``member_ids``: the member id that answered last on each endpoint.

    A linearizable answer (a read, a write, a lease grant or revocation) that
    shows another cluster id, a lower revision or a lower raft term means the
    store went back. Any other answer (lease keepalive and time-to-live,
    status, watch) comes from a member that may lag behind; there the same
    signs, or a new member id on an endpoint, are only suspicions that a
    linearizable read confirms or clears. After a rollback the marks restart
    from the new store's values and ``generation`` goes up by one.
    """

    def __init__(self) -> None:
        self.generation = 0
        self.cluster_id = 0
        self.revision = 0
        self.raft_term = 0
        self.member_ids: dict[str, int] = {}
        self.why = ""

    def marks(self) -> _Marks:
        return _Marks(self.generation, self.cluster_id, self.revision, self.raft_term)

    def state(self) -> dict[str, int]:
        return {
            "cluster_id": self.cluster_id,
            "revision": self.revision,
            "raft_term": self.raft_term,
        }

    def seed(self, state: Mapping[str, int]) -> None:
        values: dict[str, int] = {}
        for name in ("cluster_id", "revision", "raft_term"):
            value = state.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"history state: {name} must be a non-negative integer")
            values[name] = value
        if not values["cluster_id"]:
            return
        if values["cluster_id"] == self.cluster_id:
            self.revision = max(self.revision, values["revision"])
            self.raft_term = max(self.raft_term, values["raft_term"])
        else:
            self.cluster_id = values["cluster_id"]
            self.revision = values["revision"]
            self.raft_term = values["raft_term"]

    def check(
        self,
        endpoint: str,
        header: Any,
        before: _Marks,
        what: str,
        *,
        linearizable: bool,
        floor: int = 0,
    ) -> _Finding:
        """Check one answer's header; raise the marks when it is fine.

        ``floor``: for a watch's creation, the revision before the one it
        starts from. What a watch delivered is in the marks already, so a floor
        above them is where its caller asked it to start: being below it is a
        suspicion (a lagging member, or a start in the future).
        """
        cluster_id = int(header.cluster_id)
        if not cluster_id or before.generation != self.generation:
            # No header (an error answer), or sent before the last rollback: it
            # says nothing about the store as it is now.
            return _OK
        member_id = int(header.member_id)
        revision = int(header.revision)
        raft_term = int(header.raft_term)
        now: list[str] = []
        then: list[str] = []
        if self.cluster_id and cluster_id != self.cluster_id:
            now.append(f"cluster id {cluster_id:x}")
            then.append(f"cluster id {self.cluster_id:x}")
        if revision < before.revision:
            now.append(f"revision {revision}")
            then.append(f"revision {before.revision}")
        if raft_term < before.raft_term:
            now.append(f"raft term {raft_term}")
            then.append(f"raft term {before.raft_term}")
        known_member = self.member_ids.get(endpoint)
        self.member_ids[endpoint] = member_id
        if not linearizable and known_member is not None and member_id != known_member:
            # Judged once: the next answer from this endpoint compares with the new id.
            now.append(f"member id {member_id:x}")
            then.append(f"member id {known_member:x} on that endpoint")
        if not now and revision < floor:
            shown = f"{what} from {endpoint} showed revision {revision}"
            return _Finding("suspect", f"{shown}, below the watch's start at {floor + 1}", shown)
        if now:
            seen = f"{' and '.join(then)} had been seen"
            if linearizable:
                return _Finding(
                    "went back", f"{' and '.join(now)} on {what} from {endpoint} after {seen}"
                )
            shown = f"{what} from {endpoint} showed {' and '.join(now)}"
            return _Finding("suspect", f"{shown} after {seen}", shown)
        if linearizable:
            if not self.cluster_id:
                self.cluster_id = cluster_id
            self.raft_term = max(self.raft_term, raft_term)
        if cluster_id == self.cluster_id:
            self.revision = max(self.revision, revision)
        return _OK

    def saw_revision(self, generation: int, cluster_id: int, revision: int) -> None:
        """A revision a watch stream of ``cluster_id`` showed (an event, a header)."""
        if generation == self.generation and cluster_id == self.cluster_id:
            self.revision = max(self.revision, revision)

    def went_back(self, endpoint: str, header: Any, why: str) -> None:
        """Start again from the answer that showed the store went back."""
        self.generation += 1
        self.cluster_id = int(header.cluster_id)
        self.revision = int(header.revision)
        self.raft_term = int(header.raft_term)
        self.member_ids = {endpoint: int(header.member_id)}
        self.why = why


# ---------------------------------------------------------------------------
# the store

_READY = grpc.ChannelConnectivity.READY
_FAILED_STATES = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


class _Conn:
    """The channel and stubs of one endpoint (created on first use)."""

    def __init__(self, endpoint: Endpoint, credentials: Any, options: list[tuple[str, Any]]):
        self.endpoint = endpoint
        self._credentials = credentials
        self._options = options
        self._channel: Any = None
        self.ok = False  # connected since its last failure (for quieter logs)
        self.kv: Any = None
        self.lease: Any = None
        self.watch: Any = None
        self.auth: Any = None
        self.maintenance: Any = None

    @property
    def channel(self) -> Any:
        if self._channel is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(
                    self.endpoint.target, self._credentials, options=self._options
                )
            else:
                self._channel = grpc.aio.insecure_channel(
                    self.endpoint.target, options=self._options
                )
            self.kv = pb.KVStub(self._channel)
            self.lease = pb.LeaseStub(self._channel)
            self.watch = pb.WatchStub(self._channel)
            self.auth = pb.AuthStub(self._channel)
            self.maintenance = pb.MaintenanceStub(self._channel)
        return self._channel

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()


class _KeepaliveStream:
    """One LeaseKeepAlive stream; answers are matched to callers by lease id, in order.

    ``on_answer(answer, future)`` sees each answer before its waiter gets the TTL.
    """

    def __init__(
        self,
        conn: _Conn,
        call: Any,
        on_answer: Callable[[Any, asyncio.Future[int]], None] | None = None,
    ) -> None:
        self.conn = conn
        self.call = call
        self.on_answer = on_answer
        self.pending: dict[int, collections.deque[asyncio.Future[int]]] = {}
        self.write_lock = asyncio.Lock()
        self.error: BaseException | None = None
        self.abandoned = False
        self.reader = asyncio.create_task(self._read(), name="etcd-lease-keepalive-reader")

    @property
    def broken(self) -> bool:
        return self.abandoned or self.error is not None or self.reader.done()

    async def _read(self) -> None:
        try:
            while True:
                resp = await self.call.read()
                if resp is grpc.aio.EOF:
                    raise EtcdUnavailable("etcd closed the lease keepalive stream")
                # One answer per request, in order: it belongs to the oldest waiter
                # (even if that one has given up meanwhile).
                waiters = self.pending.get(int(resp.ID))
                if waiters:
                    fut = waiters.popleft()
                    if self.on_answer is not None:
                        self.on_answer(resp, fut)
                    if not fut.done():
                        fut.set_result(int(resp.TTL))
        except BaseException as exc:  # the stream is dead: fail everyone waiting
            self.error = exc
            for waiters in self.pending.values():
                for fut in waiters:
                    if not fut.done():
                        fut.set_exception(
                            exc
                            if isinstance(exc, Exception)
                            else EtcdUnavailable("the lease keepalive stream was closed")
                        )
            self.pending.clear()
            if isinstance(exc, asyncio.CancelledError):
                raise

    def abandon(self) -> None:
        """End the stream now (synchronously), failing every pending keepalive.

        Used when a caller gives up on an answer: a late answer must never be
        taken for the answer to a later keepalive, whose send time is later.
        """
        self.abandoned = True
        self.call.cancel()
        self.reader.cancel()

    async def close(self) -> None:
        self.abandon()
        await asyncio.wait([self.reader])


class Store:
    """Async etcd client: ``await Store.connect(settings)`` or ``async with Store(settings)``."""

    def __init__(self, settings: EtcdSettings | None = None) -> None:
        self.settings = settings or EtcdSettings()
        self._endpoints = self.settings.parsed_endpoints()
        self._conns: list[_Conn] = []
        self._active = 0
        self._user: str | None = None
        self._password: str | None = None
        self._token: str | None = None
        self._auth_disabled = False  # etcd said authentication is not enabled
        self._auth_lock = asyncio.Lock()
        self._keepalive: _KeepaliveStream | None = None
        self._keepalive_lock = asyncio.Lock()
        self._opened = False
        self._closed = False
        self._hist = _History()
        self._went_back_listeners: list[Callable[[str], None]] = []
        self._wakers: set[asyncio.Future[None]] = set()  # one per running watch
        self._checking: asyncio.Task[None] | None = None  # the linearizable read checking
        self._check_next: tuple[str, str, bytes] | None = None  # a suspicion raised meanwhile
        self._probe_key = b"\0"  # the last key read or written: readable with auth on
        self._keepalive_marks: dict[asyncio.Future[int], _Marks] = {}

    # -- lifecycle

    @classmethod
    async def connect(cls, settings: EtcdSettings | None = None) -> Store:
        """Open a store and check that an endpoint answers within ``dial_timeout``."""
        store = cls(settings)
        try:
            await store.open()
        except BaseException:
            await store.close()
            raise
        return store

    async def open(self) -> None:
        if self._opened:
            return
        s = self.settings
        tls_files = await asyncio.to_thread(_read_tls_files, s)
        ca, cert, key = tls_files
        any_tls = ca is not None or cert is not None
        creds = None
        if any_tls or any(e.scheme == "https" for e in self._endpoints):
            creds = grpc.ssl_channel_credentials(
                root_certificates=ca, private_key=key, certificate_chain=cert
            )
        options: list[tuple[str, Any]] = [
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.keepalive_time_ms", int(s.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(max(1.0, s.dial_timeout) * 1000)),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ]
        for ep in self._endpoints:
            use_tls = ep.scheme == "https" or (ep.scheme is None and any_tls)
            self._conns.append(_Conn(ep, creds if use_tls else None, options))
        if s.user:
            user, sep, password = s.user.partition(":")
            self._user = user
            if sep:
                self._password = password
            elif s.password_file is not None:
                self._password = await asyncio.to_thread(_read_password, s.password_file)
            else:
                self._password = ""
        self._opened = True
        try:
            await self.status(timeout=s.dial_timeout)
            if self._user is not None:
                await self._run(
                    "Auth.Authenticate",
                    lambda conn, t: self._authenticate(conn, t, None),
                    idempotent=True,
                    limit=s.dial_timeout,
                )
        except BaseException:
            # All or nothing: a failed open leaves the store as before, to open again.
            self._opened = False
            conns, self._conns = self._conns, []
            for conn in conns:
                await conn.close()
            raise
        if self._checking is not None:
            # The status answer looked older than a seeded history: settle it
            # before the caller's first request.
            await asyncio.wait([self._checking])

    async def close(self) -> None:
        self._closed = True
        if self._checking is not None and not self._checking.done():
            self._checking.cancel()
            await asyncio.wait([self._checking])
        if self._keepalive is not None:
            stream, self._keepalive = self._keepalive, None
            await stream.close()
        for conn in self._conns:
            await conn.close()

    async def __aenter__(self) -> Store:
        try:
            await self.open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def endpoint(self) -> str:
        """The endpoint requests currently go to."""
        return str(self._endpoints[self._active])

    # -- history

    @property
    def generation(self) -> int:
        """0 at start, +1 each time the store is found to have gone back in time."""
        return self._hist.generation

    def on_went_back(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(why)`` once per detected rollback.

        Called synchronously on the event loop, from inside the request that
        detected it, with one sentence saying what was seen. The callback must
        not block; an exception it raises is logged and ignored.
        """
        self._went_back_listeners.append(callback)

    def history_state(self) -> dict[str, int]:
        """The high-water marks: ``cluster_id``, ``revision``, ``raft_term``.

        Kept by the caller (e.g. in a file) and given to a later Store's
        :meth:`seed_history`, so that a restarted process notices a store that
        went back while it was not running.
        """
        return self._hist.state()

    def seed_history(self, state: Mapping[str, int]) -> None:
        """Start from the marks of :meth:`history_state` of an earlier Store.

        Call it before the first request (before :meth:`open` if possible). The
        first answer that shows another cluster id, or a lower revision or raft
        term, counts as the store having gone back: a cluster built anew since
        then (a new cluster id) counts too, which is harmless, since the caller
        reads everything again. Zeros (nothing known) leave the marks alone.
        """
        self._hist.seed(state)

    # -- history plumbing

    def _observe(
        self,
        conn: _Conn,
        header: Any,
        before: _Marks,
        what: str,
        *,
        linearizable: bool,
        key: bytes | None = None,
        floor: int = 0,
        cause: str = "",
    ) -> asyncio.Task[None] | None:
        """Check an answer's header against the marks as they were when it was sent.

        A linearizable answer that shows the store went back declares it at
        once (``cause``: the suspicion it was sent to check). A suspicion starts
        one linearizable read (returned, for callers that wait for the verdict)
        on ``key`` or the last key used.
        """
        found = self._hist.check(
            str(conn.endpoint), header, before, what, linearizable=linearizable, floor=floor
        )
        if found.verdict == "went back":
            why = f"{found.why}, checked after {cause}" if cause else found.why
            self._went_back(str(conn.endpoint), header, why)
        elif found.verdict == "suspect":
            key = key if key is not None else self._probe_key
            return self._suspect(found.why, found.shown, key)
        return None

    def _went_back(self, endpoint: str, header: Any, why: str) -> None:
        self._hist.went_back(endpoint, header, why)
        _log.warning(
            "etcd went back in time: %s; everything read from it before is stale"
            " (store generation %d)",
            why,
            self._hist.generation,
        )
        wakers, self._wakers = self._wakers, set()
        for waker in wakers:
            if not waker.done():
                waker.set_result(None)
        for callback in list(self._went_back_listeners):
            try:
                callback(why)
            except Exception:
                _log.exception("a listener of etcd going back in time failed")

    def _suspect(self, why: str, shown: str, key: bytes) -> asyncio.Task[None] | None:
        """Check a suspicion with one linearizable read on ``key`` (one at a time)."""
        if self._closed:
            return None
        _log.info("etcd may have gone back in time (%s); checking with a linearizable read", why)
        task = self._checking
        if task is not None and not task.done():
            # The read under way may have been sent before what raised this
            # suspicion: check once more after it.
            self._check_next = (why, shown, key)
            return task
        self._checking = asyncio.get_running_loop().create_task(
            self._check_history(why, shown, key), name="etcd-history-check"
        )
        return self._checking

    async def _check_history(self, why: str, shown: str, key: bytes) -> None:
        suspicion: tuple[str, str, bytes] | None = (why, shown, key)
        while suspicion is not None and not self._closed:
            why, shown, key = suspicion
            self._check_next = None
            generation = self._hist.generation
            try:
                await self._confirming_read(shown, key)
            except EtcdError as exc:
                _log.warning("could not check whether etcd went back in time (%s): %s", why, exc)
            else:
                if self._hist.generation != generation:
                    return
                _log.info("etcd did not go back in time: a linearizable read cleared %s", shown)
            suspicion = self._check_next

    async def _confirming_read(self, why: str, key: bytes) -> None:
        async def attempt(conn: _Conn, t: float) -> None:
            before = self._hist.marks()
            resp = await conn.kv.Range(
                pb.RangeRequest(key=key, count_only=True, limit=1),
                metadata=self._metadata(),
                timeout=t,
            )
            self._observe(
                conn, resp.header, before, "a linearizable read", linearizable=True, cause=why
            )

        await self._run("KV.Range", attempt, idempotent=True)

    def _read_answer(self, conn: _Conn, header: Any, before: _Marks, key: bytes) -> None:
        """Check a linearizable read's answer; ``key`` serves later checks."""
        self._probe_key = key
        self._observe(conn, header, before, "a linearizable read", linearizable=True)

    def _check_generation(self, generation: int) -> None:
        if self._hist.generation != generation:
            raise StoreWentBack(self._hist.why)

    # -- plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise EtcdError("the etcd store is closed")
        if not self._opened:
            raise EtcdError("the etcd store is not open")

    def _needs_token(self) -> bool:
        return self._user is not None and self._token is None and not self._auth_disabled

    def _metadata(self, *, stream: bool = False) -> tuple[tuple[str, str], ...] | None:
        md: list[tuple[str, str]] = []
        if self._token:
            md.append(("token", self._token))
        if stream:
            # Ask etcd to end the stream when its member loses the leader, so a
            # partitioned member does not keep a watch or keepalive silently stuck.
            md.append(("hasleader", "true"))
        return tuple(md) or None

    def _failed(self, conn: _Conn, why: str) -> None:
        """Move away from ``conn`` if it is still the active endpoint."""
        was_ok, conn.ok = conn.ok, False
        if len(self._conns) > 1 and self._conns[self._active] is conn:
            self._active = (self._active + 1) % len(self._conns)
            _log.log(
                logging.WARNING if was_ok else logging.DEBUG,
                "etcd endpoint %s failed (%s); switching to %s",
                conn.endpoint,
                why,
                self._conns[self._active].endpoint,
            )
        elif was_ok:
            _log.warning("etcd endpoint %s failed (%s)", conn.endpoint, why)

    async def _ready_conn(self, limit: float) -> _Conn:
        """The active endpoint once its channel is connected; else rotate and raise _Retryable."""
        conn = self._conns[self._active]
        channel = conn.channel
        try:
            async with asyncio.timeout(max(0.01, limit)):
                state = channel.get_state(try_to_connect=True)
                while state != _READY:
                    if state in _FAILED_STATES:
                        raise _Retryable(f"cannot connect to {conn.endpoint}")
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            self._failed(conn, "connect timed out")
            raise _Retryable(f"connecting to {conn.endpoint} timed out") from None
        except _Retryable:
            self._failed(conn, "cannot connect")
            raise
        conn.ok = True
        return conn

    def _map_error(self, exc: Any, conn: _Conn, op: str, idempotent: bool) -> EtcdError:
        """Turn a gRPC error into the exception to raise (``_Retryable`` = may retry)."""
        code = exc.code()
        details = exc.details() or ""
        low = details.lower()
        where = f"{op} on {conn.endpoint}"
        if any(m in low for m in _TOKEN_MARKERS):
            if self._user is None:
                return EtcdAuthError(
                    f"{where}: etcd requires authentication ({details}); give a user"
                )
            return _TokenInvalid(details)
        if code == grpc.StatusCode.UNAVAILABLE:
            self._failed(conn, details or "unavailable")
            if idempotent or _not_sent(exc):
                return _Retryable(f"{where}: {_describe(exc)}")
            return EtcdUnavailable(
                f"{where}: {_describe(exc)}; the write may or may not have been applied",
                maybe_committed=True,
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            self._failed(conn, "deadline exceeded")
            if idempotent:
                return _Retryable(f"{where}: no answer in time")
            return EtcdUnavailable(
                f"{where}: no answer in time; the write may or may not have been applied",
                maybe_committed=True,
            )
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return EtcdAuthError(f"{where}: permission denied ({details})")
        if code == grpc.StatusCode.UNAUTHENTICATED or "authentication failed" in low:
            return EtcdAuthError(f"{where}: {details}")
        if "lease not found" in low:
            return EtcdLeaseNotFound(f"{where}: {details}")
        if code == grpc.StatusCode.CANCELLED and self._closed:
            return EtcdError("the etcd store is closed")
        return EtcdError(f"{where}: {code.name}: {details}")

    async def _authenticate(self, conn: _Conn, limit: float, stale: str | None) -> None:
        """Get a token (unless another task replaced ``stale`` meanwhile)."""
        async with self._auth_lock:
            if self._token is not None and self._token != stale:
                return
            req = pb.AuthenticateRequest(name=self._user or "", password=self._password or "")
            try:
                resp = await conn.auth.Authenticate(req, timeout=limit)
            except grpc.aio.AioRpcError as exc:
                details = exc.details() or ""
                if "authentication is not enabled" in details:
                    _log.info("etcd has authentication disabled; continuing without a token")
                    self._token = None
                    self._auth_disabled = True
                    return
                err = self._map_error(exc, conn, "Auth.Authenticate", True)
                if isinstance(err, EtcdAuthError):
                    raise EtcdAuthError(
                        f"etcd refused user {self._user!r}: {details or 'authentication failed'}"
                    ) from None
                raise err from None
            self._token = str(resp.token)
            self._auth_disabled = False

    async def _run(
        self,
        op: str,
        attempt: Callable[[_Conn, float], Awaitable[T]],
        *,
        idempotent: bool,
        limit: float | None = None,
    ) -> T:
        """Run ``attempt(conn, per_try_timeout)`` with fail-over and retries.

        Reads are retried on any transient failure; writes only when the
        request provably did not reach etcd. A rejected auth token is renewed
        once per call.
        """
        self._check_open()
        budget = limit if limit is not None else self.settings.request_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        n = len(self._conns)
        reauthenticated = False

        def remaining() -> float:
            return deadline - loop.time()

        def wait(state: Any) -> float:
            return max(0.0, min(_BACKOFF(state), remaining()))

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _Retryable | _TokenInvalid) and remaining() > 0

        retrying = AsyncRetrying(
            retry=retry_if_exception(retryable),
            stop=stop_after_delay(budget),
            wait=wait,
            reraise=False,
        )
        try:
            async for try_ in retrying:
                with try_:
                    left = max(0.01, remaining())
                    conn = await self._ready_conn(min(left, self.settings.dial_timeout))
                    per_try = remaining() if n == 1 else min(remaining(), max(1.0, budget / 2))
                    per_try = max(0.01, per_try)
                    if self._needs_token():
                        await self._authenticate(conn, per_try, None)
                    token = self._token
                    try:
                        return await attempt(conn, per_try)
                    except grpc.aio.AioRpcError as exc:
                        err = self._map_error(exc, conn, op, idempotent)
                        if isinstance(err, _TokenInvalid):
                            if reauthenticated:
                                raise EtcdAuthError(f"{op}: {err}") from None
                            reauthenticated = True
                            await self._authenticate(conn, max(0.01, remaining()), token)
                        raise err from None
        except (RetryError, _Retryable, _TokenInvalid) as exc:
            last = exc.last_attempt.exception() if isinstance(exc, RetryError) else exc
            raise EtcdUnavailable(
                f"no etcd endpoint answered {op} within {budget:g}s"
                f" ({', '.join(str(e) for e in self._endpoints)}); last error: {last}"
            ) from None
        raise AssertionError("unreachable")

    # -- maintenance

    async def status(self, timeout: float | None = None) -> EndpointStatus:  # noqa: ASYNC109
        """Status of the endpoint in use (works without authentication)."""

        async def attempt(conn: _Conn, t: float) -> EndpointStatus:
            before = self._hist.marks()
            resp = await conn.maintenance.Status(pb.StatusRequest(), timeout=t)
            self._observe(conn, resp.header, before, "a status answer", linearizable=False)
            return EndpointStatus(
                endpoint=str(conn.endpoint),
                version=str(resp.version),
                member_id=int(resp.header.member_id),
                leader=int(resp.leader),
                revision=int(resp.header.revision),
                raft_term=int(resp.raftTerm),
                db_size=int(resp.dbSize),
            )

        return await self._run("Maintenance.Status", attempt, idempotent=True, limit=timeout)

    async def compact(self, revision: int, *, physical: bool = True) -> None:
        """Discard history before ``revision`` (watches older than it fail with WatchCompacted)."""

        async def attempt(conn: _Conn, t: float) -> None:
            await conn.kv.Compact(
                pb.CompactionRequest(revision=revision, physical=physical),
                metadata=self._metadata(),
                timeout=t,
            )

        await self._run("KV.Compact", attempt, idempotent=True)

    # -- KV

    async def get(self, key: str) -> KeyValue | None:
        async def attempt(conn: _Conn, t: float) -> KeyValue | None:
            before = self._hist.marks()
            resp = await conn.kv.Range(
                pb.RangeRequest(key=_kb(key)), metadata=self._metadata(), timeout=t
            )
            self._read_answer(conn, resp.header, before, _kb(key))
            return _kv(resp.kvs[0]) if resp.kvs else None

        return await self._run("KV.Range", attempt, idempotent=True)

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """All keys under ``prefix`` sorted by key, and the revision they were read at."""
        key = _kb(prefix)

        async def attempt(conn: _Conn, t: float) -> tuple[list[KeyValue], int]:
            before = self._hist.marks()
            resp = await conn.kv.Range(
                pb.RangeRequest(key=key, range_end=prefix_range_end(key)),
                metadata=self._metadata(),
                timeout=t,
            )
            self._read_answer(conn, resp.header, before, key)
            return [_kv(kv) for kv in resp.kvs], int(resp.header.revision)

        return await self._run("KV.Range", attempt, idempotent=True)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write ``key``; returns the revision of the write."""

        async def attempt(conn: _Conn, t: float) -> int:
            before = self._hist.marks()
            resp = await conn.kv.Put(
                pb.PutRequest(key=_kb(key), value=value, lease=lease),
                metadata=self._metadata(),
                timeout=t,
            )
            self._observe(conn, resp.header, before, "a write", linearizable=True)
            return int(resp.header.revision)

        return await self._run("KV.Put", attempt, idempotent=False)

    async def _delete_range(self, key: bytes, range_end: bytes) -> int:
        async def attempt(conn: _Conn, t: float) -> int:
            before = self._hist.marks()
            resp = await conn.kv.DeleteRange(
                pb.DeleteRangeRequest(key=key, range_end=range_end),
                metadata=self._metadata(),
                timeout=t,
            )
            self._observe(conn, resp.header, before, "a write", linearizable=True)
            return int(resp.deleted)

        return await self._run("KV.DeleteRange", attempt, idempotent=False)

    async def delete(self, key: str) -> bool:
        """Delete ``key``; True if it existed."""
        return await self._delete_range(_kb(key), b"") > 0

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        key = _kb(prefix)
        return await self._delete_range(key, prefix_range_end(key))

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """If all ``compares`` hold, run ``success``, else ``failure``, atomically.

        Never retried once sent: on a lost answer ``EtcdUnavailable`` has
        ``maybe_committed`` set and the caller re-reads.
        """
        request = pb.TxnRequest(
            compare=[c.to_protobuf() for c in compares],
            success=[o.to_protobuf() for o in success],
            failure=[o.to_protobuf() for o in failure],
        )
        read_only = all(o.kind == "get" for o in (*success, *failure))
        # A key this client may read (compares need read permission), for checks.
        readable = [c.key for c in compares] + [
            o.key for o in (*success, *failure) if o.kind == "get"
        ]

        async def attempt(conn: _Conn, t: float) -> TxnResult:
            before = self._hist.marks()
            resp = await conn.kv.Txn(request, metadata=self._metadata(), timeout=t)
            if readable:
                self._probe_key = _kb(readable[0])
            what = "a linearizable read" if read_only else "a transaction"
            self._observe(conn, resp.header, before, what, linearizable=True)
            return TxnResult(
                succeeded=bool(resp.succeeded),
                revision=int(resp.header.revision),
                responses=[_op_result(r) for r in resp.responses],
            )

        return await self._run("KV.Txn", attempt, idempotent=read_only)

    # -- leases

    async def grant(self, ttl: int) -> Lease:
        async def attempt(conn: _Conn, t: float) -> Lease:
            before = self._hist.marks()
            resp = await conn.lease.LeaseGrant(
                pb.LeaseGrantRequest(TTL=ttl), metadata=self._metadata(), timeout=t
            )
            self._observe(conn, resp.header, before, "a lease grant", linearizable=True)
            if resp.error:
                raise EtcdError(f"etcd refused a lease: {resp.error}")
            return Lease(id=int(resp.ID), ttl=int(resp.TTL))

        return await self._run("Lease.Grant", attempt, idempotent=False)

    async def revoke(self, lease_id: int) -> None:
        """Revoke a lease (deleting its keys). A lease that is already gone is fine."""

        async def attempt(conn: _Conn, t: float) -> None:
            before = self._hist.marks()
            resp = await conn.lease.LeaseRevoke(
                pb.LeaseRevokeRequest(ID=lease_id), metadata=self._metadata(), timeout=t
            )
            self._observe(conn, resp.header, before, "a lease revocation", linearizable=True)

        with contextlib.suppress(EtcdLeaseNotFound):
            await self._run("Lease.Revoke", attempt, idempotent=True)

    async def time_to_live(self, lease_id: int) -> int:
        """Remaining seconds of a lease, -1 if it does not exist."""

        async def attempt(conn: _Conn, t: float) -> int:
            before = self._hist.marks()
            resp = await conn.lease.LeaseTimeToLive(
                pb.LeaseTimeToLiveRequest(ID=lease_id), metadata=self._metadata(), timeout=t
            )
            self._observe(
                conn, resp.header, before, "a lease time-to-live answer", linearizable=False
            )
            return int(resp.TTL)

        return await self._run("Lease.TimeToLive", attempt, idempotent=True)

    async def _keepalive_stream(self, limit: float) -> _KeepaliveStream:
        async with self._keepalive_lock:
            stream = self._keepalive
            if stream is not None and not stream.broken:
                return stream
            if stream is not None:
                self._keepalive = None
                await stream.close()
            conn = await self._ready_conn(min(limit, self.settings.dial_timeout))
            if self._needs_token():
                await self._authenticate(conn, limit, None)
            call = conn.lease.LeaseKeepAlive(metadata=self._metadata(stream=True))

            def on_answer(resp: Any, fut: asyncio.Future[int]) -> None:
                before = self._keepalive_marks.pop(fut, None)
                if before is not None:  # else its caller gave up: nothing to compare with
                    self._observe(
                        conn, resp.header, before, "a lease keepalive answer", linearizable=False
                    )

            self._keepalive = _KeepaliveStream(conn, call, on_answer)
            return self._keepalive

    async def keepalive_once(
        self,
        lease_id: int,
        timeout: float | None = None,  # noqa: ASYNC109 (a gRPC deadline, not a sleep)
    ) -> KeepaliveResult:
        """Renew a lease once over the shared keepalive stream.

        Returns the TTL etcd granted (``<= 0``: the lease is gone) and the
        time (CLOCK_BOOTTIME) just before the request was sent. Raises
        ``EtcdUnavailable`` if no answer came within ``timeout`` (default:
        ``request_timeout``); a broken stream is reopened, on another
        endpoint if needed, by the next call.
        """
        self._check_open()
        budget = timeout if timeout is not None else self.settings.request_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        reauthenticated = False
        last: BaseException | None = None
        while loop.time() < deadline:
            stream: _KeepaliveStream | None = None
            fut: asyncio.Future[int] | None = None
            answered = False
            try:
                async with asyncio.timeout(max(0.01, deadline - loop.time())):
                    stream = await self._keepalive_stream(deadline - loop.time())
                    fut = loop.create_future()
                    stream.pending.setdefault(lease_id, collections.deque()).append(fut)
                    async with stream.write_lock:
                        self._keepalive_marks[fut] = self._hist.marks()
                        sent_at = clock.now()
                        await stream.call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
                    ttl = await fut
                    answered = True
                return KeepaliveResult(ttl=ttl, sent_at=sent_at)
            except TimeoutError:
                if stream is not None:
                    # A stream that stops answering is as good as dead: drop it so the
                    # next call opens a fresh one (on the next endpoint).
                    self._failed(stream.conn, "lease keepalive not answered")
                    await self._drop_keepalive(stream)
                raise EtcdUnavailable(
                    f"lease {lease_id:x} keepalive not answered within {budget:g}s"
                ) from last
            except _Retryable as exc:
                last = exc
            except grpc.aio.AioRpcError as exc:
                last = exc
                if stream is None:
                    raise EtcdUnavailable(f"lease keepalive: {_describe(exc)}") from None
                err = self._map_error(exc, stream.conn, "Lease.KeepAlive", True)
                await self._drop_keepalive(stream)
                if isinstance(err, _TokenInvalid):
                    if reauthenticated:
                        raise EtcdAuthError(f"Lease.KeepAlive: {err}") from None
                    reauthenticated = True
                    await self._authenticate(
                        stream.conn, max(0.01, deadline - loop.time()), self._token
                    )
                elif not isinstance(err, _Retryable):
                    raise err from None
            except (EtcdUnavailable, asyncio.InvalidStateError) as exc:
                # The stream ended under us: open a new one and send again.
                last = exc
                if stream is not None:
                    await self._drop_keepalive(stream)
            finally:
                if fut is not None:
                    self._keepalive_marks.pop(fut, None)
                if fut is not None and not answered:
                    # Timed out, cancelled or failed after (maybe) sending: its answer
                    # may still come, so this stream must not serve later keepalives.
                    fut.cancel()
                    if stream is not None:
                        stream.abandon()
            await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))
        raise EtcdUnavailable(
            f"lease {lease_id:x} keepalive not answered within {budget:g}s: {last}"
        )

    async def _drop_keepalive(self, stream: _KeepaliveStream) -> None:
        async with self._keepalive_lock:
            if self._keepalive is stream:
                self._keepalive = None
        await stream.close()

    # -- watch

    def watch_prefix(
        self,
        prefix: str,
        start_revision: int = 0,
        *,
        prev_kv: bool = False,
        generation: int | None = None,
    ) -> AsyncGenerator[WatchBatch, None]:
        """Watch every key under ``prefix`` from ``start_revision`` (0: from now).

        Yields one :class:`WatchBatch` per etcd response, including empty ones
        for progress notifications. After a disconnect it resumes from the
        last delivered revision + 1, on whichever endpoint answers, waiting as
        long as it takes; if that revision has been compacted meanwhile it
        raises :class:`WatchCompacted`.

        It raises :class:`StoreWentBack` when the store went back in time since
        the watch started (this call), whether this watch or another request of
        this Store noticed it, also while it waits for etcd. ``generation``: the
        :attr:`generation` that ``start_revision`` was read in (default: the
        current one), so that a rollback noticed between that read and this
        call counts too. Either way the caller reads everything again and
        watches from the revision it read.
        """
        gen = self._hist.generation if generation is None else generation
        return self._watch(prefix, start_revision, prev_kv, gen)

    async def _watch(
        self, prefix: str, start_revision: int, prev_kv: bool, gen: int
    ) -> AsyncGenerator[WatchBatch, None]:
        self._check_open()
        self._check_generation(gen)
        key = _kb(prefix)
        range_end = prefix_range_end(key)
        next_rev = start_revision
        backoff = 0.05
        outage_logged = False
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wakers.add(wake)
        try:
            while True:
                self._check_open()
                self._check_generation(gen)
                try:
                    conn = await self._ready_conn(self.settings.dial_timeout)
                    if self._needs_token():
                        await self._authenticate(conn, self.settings.request_timeout, None)
                except _Retryable as exc:
                    if not outage_logged:
                        _log.warning("watch on %s waits for etcd: %s", prefix, exc)
                        outage_logged = True
                    await asyncio.wait([wake], timeout=backoff)
                    backoff = min(backoff * 2, 1.0)
                    continue
                call = conn.watch.Watch(metadata=self._metadata(stream=True))
                token = self._token
                try:
                    before = self._hist.marks()
                    try:
                        await call.write(
                            pb.WatchRequest(
                                create_request=pb.WatchCreateRequest(
                                    key=key,
                                    range_end=range_end,
                                    start_revision=next_rev,
                                    prev_kv=prev_kv,
                                    progress_notify=True,
                                )
                            )
                        )
                    except grpc.aio.AioRpcError as exc:
                        # etcd ends a new stream at once when its member has no
                        # leader; gRPC may then report the write as INTERNAL
                        # instead of etcd's status (grpc/grpc#36066).
                        raise _Retryable(
                            f"the watch stream to {conn.endpoint} ended before its request"
                            f" was sent ({_describe(exc)})"
                        ) from None
                    first: Any = None  # the created answer's header
                    stream_rev = stream_term = 0  # the highest on this stream
                    while True:
                        resp = await self._read_or_wake(call, wake)
                        if resp is grpc.aio.EOF:
                            raise _Retryable("etcd closed the watch stream")
                        if resp.compact_revision:
                            raise WatchCompacted(int(resp.compact_revision))
                        if resp.canceled:
                            reason = str(resp.cancel_reason)
                            raise self._watch_canceled(reason, conn)
                        header = resp.header
                        if resp.created or first is None:
                            first = header
                            checking = self._observe(
                                conn,
                                header,
                                before,
                                "a watch's creation",
                                linearizable=False,
                                key=key,
                                floor=max(0, next_rev - 1),
                            )
                        else:
                            checking = self._check_watch_answer(
                                conn, header, first, stream_rev, stream_term, key, gen
                            )
                        stream_rev = max(stream_rev, int(header.revision))
                        stream_term = max(stream_term, int(header.raft_term))
                        if checking is not None:
                            # Settle it now: a watch below its resume point on a
                            # store that went back would stay silent.
                            await asyncio.wait(
                                [checking, wake], return_when=asyncio.FIRST_COMPLETED
                            )
                            self._check_generation(gen)
                        if outage_logged:
                            _log.info("watch on %s resumed at revision %d", prefix, next_rev)
                            outage_logged = False
                        backoff = 0.05
                        header_rev = int(header.revision)
                        if resp.created:
                            if next_rev == 0:
                                next_rev = header_rev + 1
                            continue
                        events = tuple(
                            _event(ev) for ev in resp.events if int(ev.kv.mod_revision) >= next_rev
                        )
                        if events:
                            last_rev = events[-1].kv.mod_revision
                            next_rev = last_rev + 1
                            self._hist.saw_revision(gen, int(first.cluster_id), last_rev)
                            yield WatchBatch(events, last_rev)
                            self._check_generation(gen)
                        elif not resp.events:
                            # Progress notification: etcd sends these only to watchers
                            # that have caught up, so everything up to header_rev is seen.
                            next_rev = max(next_rev, header_rev + 1)
                            yield WatchBatch((), next_rev - 1)
                            self._check_generation(gen)
                except (
                    grpc.aio.AioRpcError,
                    asyncio.InvalidStateError,
                    _Retryable,
                    _TokenInvalid,
                ) as exc:
                    err: EtcdError
                    if isinstance(exc, grpc.aio.AioRpcError):
                        err = self._map_error(exc, conn, "Watch", True)
                    elif isinstance(exc, asyncio.InvalidStateError):
                        err = _Retryable(f"the watch stream to {conn.endpoint} ended")
                    else:
                        err = exc
                    if isinstance(err, _TokenInvalid):
                        with contextlib.suppress(_Retryable):
                            await self._authenticate(conn, self.settings.request_timeout, token)
                    elif not isinstance(err, _Retryable):
                        raise err from None
                    elif not isinstance(exc, grpc.aio.AioRpcError):
                        self._failed(conn, str(err))
                    if not outage_logged:
                        _log.warning("watch on %s interrupted (%s); resuming", prefix, err)
                        outage_logged = True
                finally:
                    call.cancel()
                await asyncio.wait([wake], timeout=backoff)
                backoff = min(backoff * 2, 1.0)
        finally:
            self._wakers.discard(wake)
            wake.cancel()

    async def _read_or_wake(self, call: Any, wake: asyncio.Future[None]) -> Any:
        """The stream's next answer; StoreWentBack if the store went back meanwhile."""
        read = asyncio.ensure_future(call.read())
        try:
            await asyncio.wait([read, wake], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not read.done():
                read.cancel()
            elif not read.cancelled():
                read.exception()  # retrieved: raised below, or moot after a rollback
        if wake.done():
            raise StoreWentBack(self._hist.why)
        return read.result()

    def _check_watch_answer(
        self,
        conn: _Conn,
        header: Any,
        first: Any,
        stream_rev: int,
        stream_term: int,
        key: bytes,
        generation: int,
    ) -> asyncio.Task[None] | None:
        """Check an answer on an established watch stream against the stream itself.

        One member serves the stream: its cluster and member ids cannot change,
        its revision and raft term cannot go down. Comparing with the stream
        rather than the marks keeps a member that lags behind other members
        (normal, by a few milliseconds) from raising suspicions.
        """
        now: list[str] = []
        then: list[str] = []
        for name in ("cluster_id", "member_id"):
            value, was = int(getattr(header, name)), int(getattr(first, name))
            if value != was:
                label = name.replace("_", " ")
                now.append(f"{label} {value:x}")
                then.append(f"{label} {was:x}")
        if int(header.raft_term) < stream_term:
            now.append(f"raft term {int(header.raft_term)}")
            then.append(f"raft term {stream_term}")
        if int(header.revision) < stream_rev:
            now.append(f"revision {int(header.revision)}")
            then.append(f"revision {stream_rev}")
        if now:
            shown = f"a watch response from {conn.endpoint} showed {' and '.join(now)}"
            why = f"{shown} after {' and '.join(then)} had been seen on that stream"
            return self._suspect(why, shown, key)
        self._hist.saw_revision(generation, int(header.cluster_id), int(header.revision))
        return None

    def _watch_canceled(self, reason: str, conn: _Conn) -> EtcdError:
        low = reason.lower()
        if any(m in low for m in _TOKEN_MARKERS):
            return _TokenInvalid(reason)
        if "permission denied" in low:
            return EtcdAuthError(f"watch refused: {reason}")
        if "no leader" in low or not reason:
            return _Retryable(f"watch canceled by {conn.endpoint}: {reason or 'no reason'}")
        return EtcdError(f"watch canceled by {conn.endpoint}: {reason}")
