"""Small asyncio helpers shared by the agent's parts."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait until it has ended, without swallowing a
    cancellation of the caller itself: `suppress(CancelledError)` around the
    wait would, and a TaskGroup stopping the caller then waits forever."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
