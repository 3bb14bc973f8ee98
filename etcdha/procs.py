"""Running helper programs (scripts, hooks, checks) off the event loop's back:
no shell, their own session, and killed as a whole group when they overrun."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Finished:
    code: int | None  # None: killed at the timeout
    stderr: str
    stdout: str = ""  # only with run_bounded(..., stdout=True)

    @property
    def timed_out(self) -> bool:
        return self.code is None


def pid_running(pid: int) -> bool:
    """Alive and not a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def run_bounded(
    argv: list[str], limit: float, env: dict[str, str] | None = None, *, stdout: bool = False
) -> Finished:
    """Run argv (no shell) with stdin closed; kill its process group at the timeout.

    ``stdout``: keep the last 2000 characters of its standard output too.
    Raises OSError when it cannot start (missing, not executable)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env=env,
    )
    try:
        async with asyncio.timeout(limit):
            out, stderr = await proc.communicate()
    except TimeoutError:
        kill_group(proc.pid)
        await proc.wait()
        return Finished(None, "")
    finally:
        if proc.returncode is None:
            kill_group(proc.pid)
    return Finished(
        proc.returncode,
        stderr.decode(errors="replace")[-2000:],
        (out or b"").decode(errors="replace")[-2000:],
    )
