"""The IPVS connection sync daemon: the leader runs the master, standbys the backup,
so that connections survive a takeover (ipvsadm --start-daemon / --stop-daemon).

These run the netlink calls in a thread, so the event loop never waits on the
kernel stopping a daemon thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from etcdha.ipvs.netlink import NetlinkBackend, SyncDaemon

T = TypeVar("T")


def _with_backend(backend: NetlinkBackend | None, fn: Callable[[NetlinkBackend], T]) -> T:
    b = backend if backend is not None else NetlinkBackend()
    try:
        return fn(b)
    finally:
        if backend is None:
            b.close()


async def sync_daemons(backend: NetlinkBackend | None = None) -> list[SyncDaemon]:
    """The running sync daemons."""
    return await asyncio.to_thread(_with_backend, backend, lambda b: b.daemons())


async def ensure_sync_daemon(
    state: str,
    interface: str,
    syncid: int = 0,
    *,
    backend: NetlinkBackend | None = None,
) -> bool:
    """Have the `state` (master/backup) daemon run on `interface` with `syncid`;
    restarted when it runs with other settings. True if anything was started."""

    def run(b: NetlinkBackend) -> bool:
        running = [d for d in b.daemons() if d.state == state]
        if running and (running[0].interface, running[0].syncid) == (interface, syncid):
            return False
        if running:
            b.stop_daemon(state)
        b.start_daemon(state, interface, syncid)
        return True

    return await asyncio.to_thread(_with_backend, backend, run)


async def stop_sync_daemon(state: str, backend: NetlinkBackend | None = None) -> None:
    """Stop the `state` daemon; no error when it is not running."""
    await asyncio.to_thread(_with_backend, backend, lambda b: b.stop_daemon(state))
