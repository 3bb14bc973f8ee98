"""Notify hooks (keepalived's notify_master/backup/fault): run in order, one at a
time, off the HA loop, each bounded by a timeout."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from etcdha import procs
from etcdha.spec import Notify

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, settings: Callable[[], Notify]) -> None:
        # Read at each notification, so a config change applies at once.
        self.settings = settings
        self._queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()

    def __call__(self, group: str, state: str, reason: str) -> None:
        """Queue a notification; never waits."""
        if self.settings().commands:
            self._queue.put_nowait((group, state, reason))

    async def run(self) -> None:
        while True:
            group, state, reason = await self._queue.get()
            settings = self.settings()
            for command in settings.commands:
                await self._run_one(command, group, state, reason, settings.timeout)

    async def _run_one(
        self, command: str, group: str, state: str, reason: str, limit: float
    ) -> None:
        try:
            done = await procs.run_bounded([command, group, state, reason], limit)
        except OSError as e:
            log.error("notify hook %s could not start: %s", command, e.strerror)
            return
        if done.timed_out:
            log.error(
                "notify hook %s (%s %s) ran over %gs and was killed",
                command,
                group,
                state,
                limit,
            )
        elif done.code != 0:
            log.warning("notify hook %s (%s %s) exited %d", command, group, state, done.code)
