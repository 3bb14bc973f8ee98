"""TCP exchanges for probes on one epoll set of their own, driven by callbacks.

A plain HTTP, tcp or connect check is: open a connection, send a few bytes,
read until the answer can be judged, close. Done through the event loop's
transports, each check costs a task, futures, a timeout handle and the loop's
registration and removal of the socket in its own epoll set; that is about
two thirds of a check's CPU. Here a check is one small object: a non-blocking
socket, registered once in this engine's epoll set (which the event loop
watches as a single file descriptor), unregistered by its close, and a
deadline in one heap served by one timer. The request goes out right after
``connect`` when the handshake has already completed (it has, for a nearby
server, most of the time); otherwise once the socket is writable.

Callers give a ``parse`` function that judges what was read so far (or says
"more"), and a ``done`` callback that gets exactly one :class:`Result`, unless
the exchange is cancelled first. Nothing here blocks: every socket call is
non-blocking and a server that never answers costs one heap entry until its
deadline.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import select
import socket
import struct
import time
from collections.abc import Callable

from etcdha.probes import READ_LIMIT, Cancellable, Result, Target, describe_error, short

log = logging.getLogger(__name__)

__all__ = ["Exchange", "Parse", "ProbeEngine", "engine_for", "exchange"]

# What was read so far and whether the peer is done sending (end of stream, or
# the error that ended it) -> the verdict, or None to read more.
Parse = Callable[[bytes, bool, "OSError | None"], "Result | None"]
Done = Callable[[Result], None]

# An answer that keeps coming without the parser deciding (tiny chunks, endless
# headers) is judged on what came once it reaches this size.
BUFFER_LIMIT = 8 * READ_LIMIT
IDLE_CLOSE = 10.0  # seconds without exchanges before the epoll set is closed
_EVENTS_PER_WAKE = 512
_NO_LINGER = struct.pack("ii", 1, 0)
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT


class Exchange:
    """One connection of one check."""

    __slots__ = (
        "buffer",
        "deadline",
        "done",
        "engine",
        "fd",
        "finished",
        "parse",
        "pending",
        "reading",
        "shut_write",
        "sock",
        "started",
        "timeout",
    )

    def __init__(
        self,
        engine: ProbeEngine,
        sock: socket.socket,
        request: bytes,
        parse: Parse | None,
        done: Done,
        shut_write: bool,
        timeout: float,
    ) -> None:
        self.engine = engine
        self.sock = sock
        self.fd = sock.fileno()
        self.pending = request  # bytes still to send
        self.parse = parse
        self.done = done
        self.shut_write = shut_write
        self.buffer = b""
        self.reading = False  # registered for input (the request is out)
        self.started = time.monotonic()
        self.timeout = timeout
        self.deadline = 0.0
        self.finished = False

    def cancel(self) -> None:
        """Drop the exchange without a result (its check was withdrawn)."""
        if not self.finished:
            self.finished = True
            self.done = _dropped
            self.engine._forget(self)


class ProbeEngine:
    """Runs exchanges for one event loop; see the module's text."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll: select.epoll | None = None
        self._open: dict[int, Exchange] = {}
        self._deadlines: dict[float, collections.deque[Exchange]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_busy = 0.0

    def start(
        self,
        target: Target,
        request: bytes,
        parse: Parse | None,
        done: Done,
        *,
        shut_write: bool = False,
        timeout: float | None = None,
    ) -> Cancellable:
        """Connect to ``target``, send ``request``, read until ``parse`` decides.

        ``parse`` None: up as soon as the connection is established (the
        connect check). ``shut_write``: shut the sending side once the request
        is out (ldirectord's simpletcp). ``done`` may be called before this
        returns (a refused connection to a local address is known at once).
        """
        family = socket.AF_INET6 if ":" in target.address else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            # Closed with a reset, as load balancers' checks do: no TIME_WAIT piles up.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
        except OSError as exc:  # out of descriptors or memory: this check fails, not the caller
            done(Result(False, short(describe_error(exc))))
            return _NOT_STARTED
        ex = Exchange(
            self,
            sock,
            request,
            parse,
            done,
            shut_write,
            target.timeout if timeout is None else timeout,
        )
        try:
            epoll = self._epoll or self._open_epoll()
            err = sock.connect_ex((target.address, target.port))
        except OSError as exc:
            self._finish(ex, Result(False, describe_error(exc)))
            return ex
        if err not in (0, errno.EINPROGRESS):
            self._finish(ex, Result(False, _errno_text(err)))
            return ex
        self._open[ex.fd] = ex
        self._deadline(ex)
        if parse is None or not self._send(ex):
            epoll.register(ex.fd, _OUT)  # not connected yet (or the request is long)
        elif not ex.finished:
            ex.reading = True
            epoll.register(ex.fd, _IN)
        return ex

    # -- the connection's steps

    def _send(self, ex: Exchange) -> bool:
        """Send what is left of the request; True when it is all out (or the
        exchange ended on an error), False while the socket must get writable."""
        try:
            while ex.pending:
                sent = ex.sock.send(ex.pending)
                ex.pending = ex.pending[sent:]
            if ex.shut_write:
                ex.sock.shutdown(socket.SHUT_WR)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                return False  # the handshake is still under way
            self._finish(ex, Result(False, describe_error(exc)))
        return True

    def _writable(self, ex: Exchange) -> None:
        err = ex.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._finish(ex, Result(False, _errno_text(err)))
            return
        if ex.parse is None:
            try:
                ex.sock.getpeername()  # a readiness left from an earlier socket of this number?
            except OSError:
                return
            self._finish(ex, Result(True, "connected"))
            return
        if self._send(ex) and not ex.finished:
            assert self._epoll is not None
            ex.reading = True
            self._epoll.modify(ex.fd, _IN)

    def _readable(self, ex: Exchange) -> None:
        error: OSError | None = None
        try:
            data = ex.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return  # a stale readiness (the descriptor's number was reused)
        except OSError as exc:
            data, error = b"", exc
        if data:
            ex.buffer += data
        eof = not data or len(ex.buffer) >= BUFFER_LIMIT
        assert ex.parse is not None
        try:
            result = ex.parse(ex.buffer, eof, error)
        except Exception as exc:  # a parser's bug must not stop the others' checks
            log.exception("probe answer parser failed")
            result = Result(False, describe_error(exc))
        if result is None and eof:
            result = Result(False, describe_error(error) if error else "connection closed")
        if result is not None:
            self._finish(ex, result)

    def _finish(self, ex: Exchange, result: Result) -> None:
        if ex.finished:
            return
        ex.finished = True
        self._forget(ex)
        latency = round((time.monotonic() - ex.started) * 1000.0, 3)
        done, ex.done = ex.done, _dropped  # no cycle through the caller's callback
        try:
            done(Result(result.ok, short(result.detail), latency, result.weight))
        except Exception:
            log.exception("probe result callback failed")

    def _forget(self, ex: Exchange) -> None:
        if self._open.get(ex.fd) is ex:
            del self._open[ex.fd]
        ex.sock.close()  # also leaves the epoll set
        if not self._open:
            self._last_busy = self.loop.time()
            if self._idle_timer is None:
                self._idle_timer = self.loop.call_later(IDLE_CLOSE, self._close_if_idle)

    # -- the loop's side

    def _open_epoll(self) -> select.epoll:
        epoll = select.epoll()
        self.loop.add_reader(epoll.fileno(), self._on_events)
        self._epoll = epoll
        return epoll

    def _on_events(self) -> None:
        if self._epoll is None:
            return
        # Level-triggered: what is left beyond this batch wakes the loop again.
        for fd, _ in self._epoll.poll(0, _EVENTS_PER_WAKE):
            ex = self._open.get(fd)
            if ex is None:
                continue
            if ex.reading:
                self._readable(ex)
            else:
                self._writable(ex)

    def _deadline(self, ex: Exchange) -> None:
        # One queue per timeout value: its deadlines come in order, so a queue
        # is cheaper than a heap (thousands of exchanges a second).
        ex.deadline = when = self.loop.time() + ex.timeout
        queue = self._deadlines.get(ex.timeout)
        if queue is None:
            queue = self._deadlines[ex.timeout] = collections.deque()
        queue.append(ex)
        if when < self._timer_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._expire)
        self._timer_at = when

    def _expire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        now = self.loop.time()
        upcoming = float("inf")
        for timeout, queue in list(self._deadlines.items()):
            while queue and (queue[0].finished or queue[0].deadline <= now):
                ex = queue.popleft()
                if not ex.finished:
                    self._finish(ex, Result(False, f"timed out after {ex.timeout:g}s"))
            if queue:
                upcoming = min(upcoming, queue[0].deadline)
            else:
                del self._deadlines[timeout]
        if upcoming < self._timer_at:
            self._arm(upcoming)

    def _close_if_idle(self) -> None:
        self._idle_timer = None
        if self._open:
            return
        idle = self.loop.time() - self._last_busy
        if idle < IDLE_CLOSE:
            self._idle_timer = self.loop.call_later(IDLE_CLOSE - idle, self._close_if_idle)
            return
        self.close()

    def close(self) -> None:
        """Drop every exchange (no results) and the epoll set."""
        for ex in list(self._open.values()):
            ex.cancel()
        self._deadlines.clear()
        for timer in (self._timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._timer, self._timer_at, self._idle_timer = None, float("inf"), None
        if self._epoll is not None:
            if not self.loop.is_closed():
                self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None


def _dropped(result: Result) -> None:
    pass


class _NotStarted:
    def cancel(self) -> None:
        pass


_NOT_STARTED = _NotStarted()


def _errno_text(err: int) -> str:
    if err == errno.ECONNREFUSED:
        return "connection refused"
    return os.strerror(err).lower()


_ENGINES: dict[int, ProbeEngine] = {}


def engine_for(loop: asyncio.AbstractEventLoop | None = None) -> ProbeEngine:
    """The engine of ``loop`` (default: the running one), created on first use."""
    loop = loop or asyncio.get_running_loop()
    engine = _ENGINES.get(id(loop))
    if engine is None or engine.loop is not loop:
        for key, other in list(_ENGINES.items()):
            if other.loop.is_closed():  # a finished loop's engine: let it go
                other.close()
                del _ENGINES[key]
        engine = _ENGINES[id(loop)] = ProbeEngine(loop)
    return engine


async def exchange(
    target: Target,
    request: bytes,
    parse: Parse | None,
    *,
    shut_write: bool = False,
) -> Result:
    """:meth:`ProbeEngine.start` for a coroutine: cancelling it drops the exchange."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Result] = loop.create_future()

    def done(result: Result) -> None:
        if not answer.done():
            answer.set_result(result)

    ex = engine_for(loop).start(target, request, parse, done, shut_write=shut_write)
    try:
        return await answer
    finally:
        ex.cancel()
