"""Run a command inside Debian's user-mode-linux kernel and get its output back.

The host kernel of a test machine may lack IPVS; Debian's ``user-mode-linux``
package boots a real Linux kernel (with IPVS as modules) as an ordinary
process in about two seconds. :func:`run_in_uml` boots it with the host's
root file system mounted read-only through hostfs, runs one payload (an argv
or a shell script) as root inside, and returns its exit status and output::

    result = run_in_uml(["python", "-m", "etcdha.ipvs.netlink"], timeout=60)
    result.code, result.output

What the guest sees:

- ``/`` is the host's root, read-only (hostfs, ``ro``): the guest cannot write
  into the host's files. ``/proc``, ``/sys``, ``/dev`` (devtmpfs), ``/run``,
  ``/tmp`` and ``/dev/shm`` are the guest's own, so ``ip netns add`` and
  temporary files stay inside it.
- The run's directory on the host (a fresh temp dir, removed afterwards) is
  mounted read-write on ``/run/io`` (``$ETCDHA_UML_IO``): the output, the exit
  status, the boot steps' log, and whatever the payload leaves in
  ``$ETCDHA_UML_IO/files/`` (returned in :attr:`UmlResult.files`).
- The modules of /usr/lib/uml/modules/<release> are loaded by :mod:`etcdha.lab.kmod`
  (no kmod needed): :data:`DEFAULT_MODULES` before the payload, others on demand
  by the kernel through a modprobe stand-in (``/proc/sys/kernel/modprobe``).
- Loopback is up; there are no other network devices (the payload makes
  namespaces and veth pairs of its own).
- The payload runs in the project's directory with the project's Python
  (``python`` as argv[0] means that interpreter), ``ETCDHA_IN_UML=1``, and a
  guest-side ``timeout``, so an overrun still yields output and status 124.

Every exit path stops the UML process group and removes the run directory.
"""

from __future__ import annotations

import codecs
import compileall
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LINUX = "/usr/bin/linux"
UML_MODULES = "/usr/lib/uml/modules"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
KMOD = Path(__file__).resolve().with_name("kmod.py")
GUEST_IO = "/run/io"
TIMED_OUT = 124  # as coreutils' timeout

IPVS_SCHEDULERS = (
    "rr",
    "wrr",
    "lc",
    "wlc",
    "lblc",
    "lblcr",
    "dh",
    "sh",
    "sed",
    "nq",
    "fo",
    "ovf",
    "mh",
)
DEFAULT_MODULES: tuple[str, ...] = (
    "ipv6",
    "veth",
    "ip_vs",
    *(f"ip_vs_{s}" for s in IPVS_SCHEDULERS),
)
# Boot time and Python start over hostfs, on top of the payload's own timeout.
BOOT_ALLOWANCE = 30.0


class UmlError(RuntimeError):
    """The kernel did not boot, or died before the payload finished."""


@dataclass(frozen=True)
class UmlResult:
    code: int
    output: str
    elapsed: float = 0.0
    console: str = ""  # the kernel console (boot messages), for diagnosis
    files: dict[str, bytes] = field(default_factory=dict)

    def __iter__(self) -> Iterator[int | str]:
        """`code, output = run_in_uml(...)`."""
        return iter((self.code, self.output))


def unavailable() -> str | None:
    """Why user-mode-linux cannot run here, or None when it can."""
    if not os.access(LINUX, os.X_OK):
        return f"{LINUX} is missing (Debian's user-mode-linux; scripts/setup.sh installs it)"
    if not os.path.isdir(UML_MODULES):
        return f"{UML_MODULES} is missing (Debian's user-mode-linux package)"
    if not Path("/dev/shm").is_dir():
        return "/dev/shm is missing (user-mode-linux keeps its memory there)"
    return None


def compile_package() -> None:
    """Byte-compile etcdha's modules here, before the boot, where Python would
    cache them anyway (``__pycache__`` beside each module; skipped where the tree
    is not writable, and for modules already compiled).

    The guest's root is read-only, so a module without an up-to-date .pyc is
    compiled again by every Python process in the guest, on its one slow CPU:
    where nothing ever wrote them (PYTHONDONTWRITEBYTECODE=1, as many CI
    images set, or a fresh clone whose tests start in the guest), that was
    about 3 s of an agent's start (see docs/ipvs.md, "Start-up in the guest")."""
    with contextlib.suppress(OSError):
        compileall.compile_dir(PROJECT_ROOT / "etcdha", quiet=2)


def _tmp_setup(paths: Sequence[str]) -> str:
    """A fresh /tmp for the guest, unless the project itself lives under /tmp (a
    clone made there): covering it would hide the code; TMPDIR points elsewhere."""
    if any(os.path.abspath(p).startswith("/tmp/") for p in paths):
        return "mkdir -p /run/tmp && chmod 1777 /run/tmp; export TMPDIR=/run/tmp"
    return "step mount -t tmpfs -o mode=1777 tmpfs /tmp"


def _init_script(
    rundir: Path,
    payload_cmd: str,
    timeout: float,
    modules: Sequence[str],
    python: str,
    cwd: str,
    interactive: bool = False,
) -> str:
    q = shlex.quote
    io = GUEST_IO
    kmod = f"{q(python)} -S -I {q(str(KMOD))}"
    return f"""#!/bin/sh
# Generated by etcdha.lab.uml: the guest's init (PID 1).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
step() {{ "$@" || echo "init: failed: $*" >&2; }}
# Before anything else: the guest's own /proc, /sys, /dev and /run, so that
# nothing inside writes into the host's files through the hostfs root.
step mount -t proc proc /proc
step mount -t sysfs sysfs /sys
step mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p {io}
step mount -t hostfs -o {q(str(rundir))} hostfs {io}
exec 2>>{io}/setup.log
mountpoint -q /dev || step mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts /run/netns /run/lock
step mount -t tmpfs tmpfs /dev/shm
step mount -t devpts devpts /dev/pts
{_tmp_setup([python, cwd, str(PROJECT_ROOT)])}
hostname uml 2>/dev/null
step ip link set lo up
# Modules: the listed ones now, any other on the kernel's demand.
cat > /run/modprobe <<'EOF'
#!/bin/sh
for a; do name=$a; done
exec {kmod} "$name"
EOF
chmod 755 /run/modprobe
echo /run/modprobe > /proc/sys/kernel/modprobe
step {kmod} {" ".join(q(m) for m in modules)}
. {io}/env.sh
cd {q(cwd)} || echo "init: cannot cd to {cwd}" >&2
mkdir -p {io}/files
{_payload_line(io, payload_cmd, timeout, interactive)}
echo $? > {io}/status.tmp
sync
mv {io}/status.tmp {io}/status
sync
halt -f >/dev/null 2>&1 || poweroff -f >/dev/null 2>&1
"""


def _payload_line(io: str, payload_cmd: str, timeout: float, interactive: bool) -> str:
    if interactive:  # on the console, which is the host's terminal
        return f"timeout -k 5 {timeout:g} {payload_cmd} </dev/console >/dev/console 2>&1"
    return f"timeout -k 5 {timeout:g} {payload_cmd} >{io}/output 2>&1 </dev/null"


def run_in_uml(
    payload: Sequence[str] | str,
    timeout: float = 120.0,
    *,
    modules: Sequence[str] = DEFAULT_MODULES,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] = PROJECT_ROOT,
    mem: str = "1G",
    python: str = sys.executable,
    on_output: Callable[[str], None] | None = None,
    interactive: bool = False,
) -> UmlResult:
    """Boot UML, run `payload` inside (argv, or a shell script's text), return its
    exit status and combined stdout/stderr. `timeout` bounds the payload; the
    boot gets BOOT_ALLOWANCE on top. Raises UmlError if the kernel died first.

    `on_output`, if given, is called with each new piece of the payload's output
    while it runs (the guest writes it through hostfs; see :func:`_follow`).
    `interactive` gives the payload the guest's console, which is this process's
    stdin and stdout (the output is then not collected)."""
    reason = unavailable()
    if reason:
        raise UmlError(reason)
    compile_package()
    rundir = Path(tempfile.mkdtemp(prefix="etcdha-uml-"))
    proc: subprocess.Popen[bytes] | None = None
    start = time.monotonic()
    try:
        os.chmod(rundir, 0o700)
        if isinstance(payload, str):
            (rundir / "payload.sh").write_text(payload)
            shell = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"
            cmd = f"{shell} {GUEST_IO}/payload.sh"
        else:
            argv = list(payload)
            if not argv:
                raise ValueError("an empty argv")
            if argv[0] == "python":
                argv[0] = python
            cmd = " ".join(shlex.quote(a) for a in argv)
        guest_env = {
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "ETCDHA_IN_UML": "1",
            "ETCDHA_UML_IO": GUEST_IO,
            "ETCDHA_UML_FILES": f"{GUEST_IO}/files",
            "ETCDHA_UML_PYTHON": python,
            **(env or {}),
        }
        (rundir / "env.sh").write_text(
            "".join(f"export {k}={shlex.quote(v)}\n" for k, v in guest_env.items())
        )
        init = rundir / "init.sh"
        init.write_text(_init_script(rundir, cmd, timeout, modules, python, str(cwd), interactive))
        init.chmod(0o755)
        umid = rundir.name
        argv = [
            LINUX,
            f"mem={mem}",
            "root=/dev/root",
            "rootfstype=hostfs",
            "rootflags=/",
            "ro",
            "con=null",
            "con0=fd:0,fd:1" if interactive else "con0=null,fd:2",
            "ssl=null",
            "quiet",
            f"umid={umid}",
            f"uml_dir={rundir}",
            f"init={init}",
        ]
        host_env = {k: v for k, v in os.environ.items() if k != "TMPDIR"}
        with open(rundir / "console.log", "wb") as console:
            proc = subprocess.Popen(
                argv,
                stdin=None if interactive else subprocess.DEVNULL,
                stdout=None if interactive else console,
                stderr=console,
                start_new_session=True,
                env=host_env,
                cwd="/",
            )
            if on_output is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout + BOOT_ALLOWANCE)
            else:
                _follow(proc, rundir / "output", timeout + BOOT_ALLOWANCE, on_output)
        return _collect(rundir, time.monotonic() - start, killed=proc.poll() is None)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(rundir, ignore_errors=True)


def _follow(
    proc: subprocess.Popen[bytes], path: Path, timeout: float, on_output: Callable[[str], None]
) -> None:
    """Hand on what the guest appends to `path` until the kernel stops or `timeout`."""
    deadline = time.monotonic() + timeout
    offset = 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def drain() -> None:
        nonlocal offset
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return
        offset += len(data)
        text = decoder.decode(data)
        if text:
            on_output(text)

    while proc.poll() is None and time.monotonic() < deadline:
        drain()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.1)
    drain()


def _collect(rundir: Path, elapsed: float, *, killed: bool) -> UmlResult:
    def text(name: str) -> str:
        try:
            return (rundir / name).read_text(errors="replace")
        except OSError:
            return ""

    console = text("console.log")
    setup = text("setup.log").strip()
    output = text("output")
    if setup:
        output = "".join(f"[uml setup] {line}\n" for line in setup.splitlines()) + output
    files: dict[str, bytes] = {}
    outdir = rundir / "files"
    if outdir.is_dir():
        for p in sorted(outdir.rglob("*")):
            if p.is_file():
                files[str(p.relative_to(outdir))] = p.read_bytes()
    status = text("status").strip()
    if status.isdigit():
        return UmlResult(int(status), output, elapsed, console, files)
    if killed:
        return UmlResult(
            TIMED_OUT,
            output + f"\n[uml] the kernel was still running after {elapsed:.0f}s; killed\n",
            elapsed,
            console,
            files,
        )
    tail = "\n".join(console.splitlines()[-30:])
    raise UmlError(f"user-mode-linux stopped without a payload status; console:\n{tail}\n{output}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the UML process group we started (its helper processes included)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    else:
        # The kernel halted; stray helpers of its group (if any) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def pytest_argv(paths: Sequence[str], *args: str) -> list[str]:
    """argv for running pytest on `paths` inside UML (no cache: the root is read-only)."""
    return [
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "-rfE",
        *args,
        *paths,
    ]


def run_pytest_in_uml(
    paths: Sequence[str],
    timeout: float = 180.0,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> UmlResult:
    """Run pytest on test files inside one UML boot."""
    return run_in_uml(pytest_argv(paths, *args), timeout, env=env)


def main(argv: list[str]) -> int:
    """`python -m etcdha.lab.uml CMD...`: run a command inside UML, print its output."""
    if not argv:
        print("usage: python -m etcdha.lab.uml COMMAND [ARG...]", file=sys.stderr)
        return 2
    result = run_in_uml(argv, float(os.environ.get("ETCDHA_UML_TIMEOUT", "300")))
    sys.stdout.write(result.output)
    print(f"[uml] exit status {result.code} after {result.elapsed:.1f}s", file=sys.stderr)
    return result.code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
