"""Notify hooks (keepalived's notify_master/backup/fault): run in order, one at a
time, off the HA loop, each bounded by a timeout."""

from __future__ import annotations

import asyncio
import logging

from etcdha import procs

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, commands: list[str], timeout: float) -> None:
        self.commands = commands
        self.timeout = timeout
        self._queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()

    def __call__(self, group: str, state: str, reason: str) -> None:
        """Queue a notification; never waits."""
        if self.commands:
            self._queue.put_nowait((group, state, reason))

    async def run(self) -> None:
        while True:
            group, state, reason = await self._queue.get()
            for command in self.commands:
                await self._run_one(command, group, state, reason)

    async def _run_one(self, command: str, group: str, state: str, reason: str) -> None:
        try:
            done = await procs.run_bounded([command, group, state, reason], self.timeout)
        except OSError as e:
            log.error("notify hook %s could not start: %s", command, e.strerror)
            return
        if done.timed_out:
            log.error(
                "notify hook %s (%s %s) ran over %gs and was killed",
                command,
                group,
                state,
                self.timeout,
            )
        elif done.code != 0:
            log.warning("notify hook %s (%s %s) exited %d", command, group, state, done.code)
