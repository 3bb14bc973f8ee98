"""Run many `etcdha` command lines, each in a process of its own, after one cold start.

    python tests/etcd/cli_batch.py [JOBS] < commands.json > results.json

stdin: a JSON list of argument lists (what follows `etcdha`). stdout: a JSON
list, in the same order, of {"code", "out", "err", "seconds"}.

This interpreter imports the command line once, then forks one child per
command: the child sets sys.argv and calls the same `etcdha.cli.main()` that
`python -m etcdha` calls, with its own stdin (/dev/null), stdout and stderr,
and its exit status is the command's. Only the import (about a second of CPU
per cold start) is shared, so a table of some sixty commands costs seconds
instead of a minute. Nothing here talks to etcd before forking, so no gRPC
channel or thread crosses a fork.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path


def _child(args: list[str], out: Path, err: Path) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        for fd, path in ((1, out), (2, err)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        sys.argv = ["etcdha", *args]
        from etcdha.cli import main

        try:
            main()
            code = 0
        except SystemExit as e:  # as the interpreter turns SystemExit into a status
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_all(commands: list[list[str]], jobs: int) -> list[dict[str, object]]:
    import etcdha.cli  # noqa: F401  (the one cold start the children share)

    results: list[dict[str, object]] = [{} for _ in commands]
    running: dict[int, tuple[int, Path, Path, float]] = {}
    with tempfile.TemporaryDirectory(prefix="etcdha-cli-batch-") as tmp:
        following = 0
        while following < len(commands) or running:
            while following < len(commands) and len(running) < jobs:
                out = Path(tmp) / f"{following}.out"
                err = Path(tmp) / f"{following}.err"
                sys.stdout.flush()
                sys.stderr.flush()
                started = time.monotonic()
                pid = os.fork()
                if pid == 0:
                    _child(commands[following], out, err)
                running[pid] = (following, out, err, started)
                following += 1
            pid, status = os.wait()
            index, out, err, started = running.pop(pid)
            results[index] = {
                "code": os.waitstatus_to_exitcode(status),
                "out": out.read_text(errors="replace"),
                "err": err.read_text(errors="replace"),
                "seconds": time.monotonic() - started,
            }
    return results


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    commands = json.load(sys.stdin)
    json.dump(run_all(commands, jobs), sys.stdout)


if __name__ == "__main__":
    main()
