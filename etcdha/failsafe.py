"""etcd_unreachable: failsafe — keep the VIP while every other director confirms,
agent to agent, that it cannot reach etcd either and will not take over.

Patroni's failsafe_mode is the model. When its keepalives fail and its
fencing deadline nears, a leader asks every other director (HTTPS with mutual
TLS, certificates from the cluster's CA) for a promise. A director promises
only if its own keepalives are failing too; a promise means "I will not
campaign for the next `lease_ttl` seconds". With a promise from every other
director the leader moves its deadline to the earliest promise's end
(measured from when it sent the request, so never later than the promise)
minus the fence margin, and re-arms its fence guard. One refusal, or one
director that does not answer, and the leader drops at its deadline as
under `drop`.

Why it is safe: nobody else can lead while every other director has promised
not to campaign, and the leader stops holding before the first promise ends;
when etcd comes back, a promise still binds its director until it ends.

A promise binds the director, not one agent process: it is written to the run
directory (`PromiseRecord`) before it is answered, and the next agent of the
node reads it before its first campaign. "Every other director" is every node
of the leader's spec with a peer address and every director it has seen
registered under members/<node> (`Directors`), since its spec may be older
than the one in etcd.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etcdha import clock
from etcdha.membership import boot_id
from etcdha.spec import Node
from etcdha.spec_types import split_host_port

log = logging.getLogger(__name__)

PATH = "/failsafe"
PROBE_LIMIT = 0.3  # how long a director tries etcd before it confirms it cannot reach it


@dataclass(frozen=True)
class TLSFiles:
    cacert: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.cacert))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.cacert))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        # Peers are known by the CA that signed them, not by host names.
        ctx.check_hostname = False
        return ctx


def _clock_time(at: float) -> str:
    """A clock.now() value as the wall-clock time it falls on, for logs."""
    wall = time.time() + (at - clock.now())
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1000) % 1000:03d}"


def _write_atomically(path: Path, data: bytes) -> None:
    """Temp file, fsync, rename, fsync of the folder: a reader finds the old
    record or the new one, never part of one, even after a crash.

    Runs on the event loop: a few bytes written to the run directory, a tmpfs
    under /run by default, where the fsyncs return at once. It also keeps two
    answers from interleaving their writes."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class PromiseRecord:
    """The promises this node made, kept where its next agent finds them.

    A promise binds the director, not one agent process: it is written (with
    its end on CLOCK_BOOTTIME and the boot id) before it is answered, and an
    agent that starts reads it before its first campaign. CLOCK_BOOTTIME
    starts again at a reboot: a record from another boot cannot tell how long
    ago it was made, so it binds for its whole length from the reading.
    """

    def __init__(self, path: Path, node: str) -> None:
        self.path = path
        self.node = node
        self.until = 0.0  # clock.now() value; we may not campaign before it
        self.length = 0.0  # the longest promise that binds until then, seconds
        self._said: set[tuple[str, float]] = set()  # (group, until) already logged

    def may_campaign(self) -> bool:
        return clock.now() >= self.until

    def holds_back(self, group: str) -> float:
        """Seconds a campaign for `group` must still wait (0.0: it may go ahead)."""
        left = self.until - clock.now()
        if left <= 0:
            return 0.0
        if (group, self.until) not in self._said:
            self._said.add((group, self.until))
            log.info(
                "group %s: not campaigning before %s, bound by a failsafe promise",
                group,
                _clock_time(self.until),
            )
        return left

    def record(self, requester: str, duration: float) -> None:
        """Keep a promise of `duration` seconds from now; OSError if it cannot be
        written, and then it must not be made."""
        now = clock.now()
        length = max(duration, self.length if self.until > now else 0.0)
        until = max(self.until, now + duration)
        self._write(until, length, requester)
        self.until, self.length = until, length

    def _write(self, until: float, length: float, to: str) -> None:
        data = {
            "node": self.node,
            "to": to,
            "boot_id": boot_id(),
            "until": until,  # CLOCK_BOOTTIME seconds of that boot
            "for": length,
        }
        _write_atomically(self.path, json.dumps(data).encode() + b"\n")

    def honour_earlier(self, fallback: float) -> None:
        """Bind this agent by the promises an earlier agent of this node made.

        `fallback` (the lease TTL) is how long to wait when the record cannot
        be read: it may hold a promise whose length it no longer tells."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except OSError as e:
            text, unreadable = "", e.strerror or str(e)
        else:
            unreadable = ""
        now = clock.now()
        data: Any = None
        if not unreadable:
            try:
                data = json.loads(text)
            except ValueError:
                data = None
        fields = _record_fields(data)
        if fields is None:
            until, length, to = now + fallback, fallback, "?"
            log.warning(
                "failsafe: the record of an earlier promise, %s, cannot be read (%s); this "
                "agent may not campaign for one lease TTL, until %s",
                self.path,
                unreadable or "not the JSON an agent writes",
                _clock_time(until),
            )
        else:
            made_boot, ends, length, to = fields
            current_boot = boot_id()
            if made_boot == current_boot and current_boot:
                if ends <= now:
                    log.info(
                        "failsafe: the promise an earlier agent made to %s ended at %s; "
                        "removing its record",
                        to,
                        _clock_time(ends),
                    )
                    self.path.unlink(missing_ok=True)
                    return
                # Never longer than the promise itself from now, whatever the file says.
                until = min(ends, now + length)
                log.warning(
                    "failsafe: an earlier agent of %s promised %s not to campaign; this agent "
                    "may not campaign until %s (%.1fs from now)",
                    self.node,
                    to,
                    _clock_time(until),
                    until - now,
                )
            else:
                until = now + length
                log.warning(
                    "failsafe: an earlier agent of %s promised %s not to campaign for %.1fs "
                    "before this machine last booted, when cannot be told, so this agent may "
                    "not campaign until %s, that whole length from now",
                    self.node,
                    to,
                    length,
                    _clock_time(until),
                )
        if until > self.until:
            self.until, self.length = until, max(length, self.length)
        if fields is not None and fields[0] == boot_id():
            return
        try:
            # As this boot's record: an agent started again before it ends honours it.
            self._write(self.until, self.length, to)
        except OSError as e:
            log.warning(
                "failsafe: cannot rewrite %s (%s); the next agent will wait again",
                self.path,
                e.strerror or e,
            )


def _record_fields(data: object) -> tuple[str, float, float, str] | None:
    """(boot id, until, length, to) of a record as `PromiseRecord` writes it."""
    if not isinstance(data, dict):
        return None
    made_boot, until, length = data.get("boot_id"), data.get("until"), data.get("for")
    if not isinstance(made_boot, str):
        return None
    if not isinstance(until, int | float) or not isinstance(length, int | float):
        return None
    if not (math.isfinite(until) and math.isfinite(length) and length > 0):
        return None
    return made_boot, float(until), float(length), str(data.get("to", "?"))


class Directors:
    """Every director a leader must ask for a promise.

    The nodes of its spec with a peer address, and every director whose agent
    it has seen registered under members/<node> (the spec in force here may be
    older than the one in etcd), at the peer address that agent publishes. A
    member stays on the list after its key goes: a director cut from etcd
    loses its key but may campaign as soon as it reaches etcd again.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self._members: dict[str, str | None] = {}  # node -> its published peer address

    def note_member(self, name: str, data: Mapping[str, object]) -> None:
        peer = data.get("peer")
        self._members[name] = peer if isinstance(peer, str) else None

    def to_ask(self, nodes: Iterable[Node]) -> tuple[dict[str, tuple[str, int]], dict[str, str]]:
        """({director: (host, port)} to ask, {director: why it cannot be asked})."""
        configured = {n.name: n.peer for n in nodes if n.peer is not None}
        peers: dict[str, tuple[str, int]] = {}
        unaskable: dict[str, str] = {}
        for name in sorted((configured.keys() | self._members.keys()) - {self.node}):
            text = self._members.get(name) or configured.get(name)
            if text is None:
                unaskable[name] = (
                    f"{name} is a member but publishes no peer address, and the config "
                    "in force here gives it none"
                )
                continue
            try:
                ip, port = split_host_port(text)
            except ValueError:
                unaskable[name] = f"{name}'s peer address {text!r} is not an IP:port"
                continue
            peers[name] = (str(ip), port)
        return peers, unaskable


class Failsafe:
    """Both sides: answering other leaders, and asking on our own behalf."""

    def __init__(
        self,
        node: str,
        tls: TLSFiles,
        reaches_etcd: Callable[[float], Awaitable[bool]],
        promise_for: Callable[[], float],
        promises: PromiseRecord,
    ) -> None:
        self.node = node
        self.tls = tls
        self.reaches_etcd = reaches_etcd
        self.promise_for = promise_for
        self.promises = promises
        self.address: str | None = None  # host:port we answer on, once we do
        self._server: asyncio.Server | None = None

    # -- answering

    async def serve(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._handle, host, port, ssl=self.tls.server_context()
        )
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.info("failsafe: answering other directors on %s (mutual TLS)", self.address)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def answer(self, requester: str) -> dict[str, object]:
        if requester == self.node:
            return {"node": self.node, "promise": False, "why": "that is my own name"}
        # Confirm directly: one bounded attempt to reach etcd now.
        if await self.reaches_etcd(PROBE_LIMIT):
            return {"node": self.node, "promise": False, "why": "I can reach etcd"}
        duration = self.promise_for()
        try:
            # Kept before it is answered: an agent started after this one dies
            # is bound by it too.
            self.promises.record(requester, duration)
        except OSError as e:
            why = f"I cannot record a promise in {self.promises.path.parent} ({e.strerror or e})"
            log.error("failsafe: refused %s a promise: %s", requester, why)
            return {"node": self.node, "promise": False, "why": why}
        log.warning(
            "failsafe: promised %s not to campaign for %.1fs: neither of us reaches etcd",
            requester,
            duration,
        )
        return {"node": self.node, "promise": True, "for": duration}

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = (await reader.readline()).decode("latin-1").split()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = min(int(value.strip() or 0), 4096)
                body = json.loads(await reader.readexactly(length)) if length else {}
            reply: dict[str, object]
            if request[:2] != ["POST", PATH] or not isinstance(body, dict):
                status, reply = 404, {"error": "not found"}
            else:
                status, reply = 200, await self.answer(str(body.get("node", "")))
            data = json.dumps(reply).encode()
            writer.write(
                f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, ssl.SSLError, IndexError):
            pass
        finally:
            writer.close()

    # -- asking

    async def _ask(self, peer: str, host: str, port: int, limit: float) -> tuple[str, float]:
        """(peer, promised seconds) or raise with the reason."""
        body = json.dumps({"node": self.node}).encode()
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=self.tls.client_context()
            )
            try:
                writer.write(
                    f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                raw = await reader.read(8192)
            finally:
                writer.close()
        reply = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        if not reply.get("promise"):
            raise RuntimeError(f"{peer} refused: {reply.get('why', 'no reason given')}")
        return peer, float(reply["for"])

    async def confirm(
        self,
        peers: dict[str, tuple[str, int]],
        limit: float,
        unaskable: Mapping[str, str] | None = None,
    ) -> float | None:
        """Ask every peer; the clock.now() value until which all promised, or None.

        A director that cannot be asked (`unaskable`: name -> why) can never
        confirm: then nobody is asked (a promise would bind them for nothing)."""
        if unaskable:
            log.warning(
                "failsafe: no confirmation is possible (%s); the VIP goes at the deadline",
                "; ".join(unaskable.values()),
            )
            return None
        if not peers:
            return None
        sent = clock.now()
        results = await asyncio.gather(
            *(self._ask(name, host, port, limit) for name, (host, port) in peers.items()),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            log.warning(
                "failsafe: no confirmation from every director (%s); the VIP goes at the deadline",
                "; ".join(str(f) or type(f).__name__ for f in failures),
            )
            return None
        promised = [r for r in results if isinstance(r, tuple)]
        return sent + min(duration for _, duration in promised)
