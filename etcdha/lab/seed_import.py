"""The seed example end to end: Heartbeat/ldirectord files in, cluster spec in etcd out.

    python -m etcdha.lab.seed_import [--examples DIR] [--workdir DIR]

Starts a throwaway etcd on a free loopback port with its data on tmpfs, runs
`etcdha config import` on the ha.cf, haresources and ldirectord.cf of
examples/heartbeat-ldirectord/, `etcdha config apply` on the result and prints
`etcdha config show`; then stops etcd and removes its data, whichever way the
run ends (success, a failed step, Ctrl-C, SIGTERM, SIGHUP). Each step is one
sentence on stdout; the etcdha commands run as a user would run them, and
their diagnostics appear on stderr.

`--workdir` (used by scripts/lab.sh) names an existing directory for the spec
file, etcd's data and `etcd.pid`, so that a shell trap can still stop etcd and
remove everything if this process itself is killed with SIGKILL.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from etcdha.lab.etcd_process import EtcdLabError, EtcdProcess, scratch_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "heartbeat-ldirectord"
SEED_FILES = ("ha.cf", "haresources", "ldirectord.cf")


class StepFailed(Exception):
    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what} failed with exit code {code}")
        self.code = code


def say(sentence: str) -> None:
    print(sentence, flush=True)


def _shown(path: Path) -> str:
    """A path as short as it can be said: relative to the current directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def etcdha(args: Sequence[str], *, quiet_stdout: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `etcdha ARGS` with this interpreter; stdout shown unless ``quiet_stdout``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDHA_")}
    done = subprocess.run(
        [sys.executable, "-m", "etcdha", *args],
        stdout=subprocess.PIPE if quiet_stdout else None,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise StepFailed(f"etcdha {args[0]} {args[1]}", done.returncode)
    return done


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Turned into SystemExit so that every `finally` below runs.
    raise SystemExit(128 + signum)


def _hold_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def run(examples: Path, workdir: Path) -> None:
    """The steps; etcd is stopped and its data removed before this returns or raises."""
    missing = [name for name in SEED_FILES if not (examples / name).is_file()]
    if missing:
        raise StepFailed(f"finding {', '.join(missing)} in {examples}", 1)
    etcd_dir = workdir / "etcd"
    pid_file = workdir / "etcd.pid"
    etcd = EtcdProcess("lab-seed", base_dir=etcd_dir)
    say(
        f"Starting a throwaway etcd on {etcd.client_url}, "
        f"its data in {etcd_dir} (tmpfs, removed at the end)."
    )
    try:
        etcd.start()
        pid_file.write_text(f"{etcd.pid}\n")
        say(f"etcd is up at {etcd.client_url} (pid {etcd.pid}).")
        conn = ["--endpoints", etcd.client_url]

        spec = workdir / "cluster.yaml"
        import_args = ["config", "import"]
        for flag, name in zip(
            ("--ha-cf", "--haresources", "--ldirectord"), SEED_FILES, strict=True
        ):
            import_args += [flag, _shown(examples / name)]
        import_args += ["-o", str(spec)]
        say(
            f"Importing the Heartbeat and ldirectord files of {_shown(examples)} "
            f"(each directive's fate is noted on stderr): etcdha {shlex.join(import_args)}"
        )
        etcdha(import_args)

        apply_args = ["config", "apply", str(spec), *conn]
        say(
            "Applying the imported spec to etcd in one transaction: "
            f"etcdha {shlex.join(apply_args)}"
        )
        etcdha(apply_args, quiet_stdout=True)  # its diff against nothing is the whole spec

        show_args = ["config", "show", *conn]
        say(f"The config stored in etcd, as `etcdha {shlex.join(show_args)}` prints it:")
        etcdha(show_args)
    finally:
        _hold_signals()  # a second Ctrl-C or SIGTERM must not cut the clean-up short
        say(f"Stopping etcd and removing {etcd_dir}.")
        etcd.stop()
        shutil.rmtree(etcd_dir, ignore_errors=True)
        pid_file.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m etcdha.lab.seed_import",
        description="Import the Heartbeat/ldirectord seed example into a throwaway etcd "
        "and show the stored cluster spec.",
    )
    parser.add_argument(
        "--examples",
        type=Path,
        default=EXAMPLES,
        help="directory holding ha.cf, haresources and ldirectord.cf "
        "(default: the repository's examples/heartbeat-ldirectord)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="existing directory for the spec, etcd's data and etcd.pid "
        "(default: a new one on tmpfs, removed at the end)",
    )
    args = parser.parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    workdir: Path = args.workdir if args.workdir is not None else scratch_dir("etcdha-lab-seed-")
    try:
        run(args.examples.resolve(), workdir)
    except StepFailed as e:
        say(f"Stopped: {e}.")
        return e.code
    except EtcdLabError as e:
        say(f"Stopped: etcd did not start: {e}")
        return 1
    except KeyboardInterrupt:
        say("Interrupted.")
        return 130
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    say("Done: the seed example is a cluster spec in etcd; etcd is stopped and its data gone.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
