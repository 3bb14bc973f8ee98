"""A wall-clock offset that chosen processes see, for the fault matrix's clock step.

CLOCK_REALTIME cannot be namespaced (``unshare --time`` covers only the
monotonic and boot clocks), and stepping the machine's own clock would step
it for every process on the machine, tests of other work included, with
nothing to put it back exactly. So the lab steps the clock of the agents
only: a small preloaded library (C source below, compiled once per lab with
the system's C compiler) adds an offset to every CLOCK_REALTIME read
(``clock_gettime``, ``gettimeofday``, ``time``) of the processes started with
:meth:`ClockOffset.env`, their children included (the fence guard). The
offset lives in a file of 8 bytes (nanoseconds, little-endian) that each
process maps shared, so :meth:`ClockOffset.set` steps the clock of running
processes at once, as ``date -s`` would. The monotonic and boot clocks are
left alone, as a real step leaves them.

Debian's libfaketime does the same with ``FAKETIME_DONT_FAKE_MONOTONIC=1``,
but its 0.9.10 makes Python's ``time.sleep`` fail with EINVAL then.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

ENV_FILE = "ETCDHA_CLOCK_OFFSET_FILE"

SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile int64_t *offset_ns;
static int (*real_clock_gettime)(clockid_t, struct timespec *);

static void setup(void) {
    if (!real_clock_gettime)
        real_clock_gettime =
            (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    if (offset_ns)
        return;
    const char *path = getenv("ETCDHA_CLOCK_OFFSET_FILE");
    if (!path)
        return;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    void *p = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p != MAP_FAILED)
        offset_ns = (volatile int64_t *)p;
}

__attribute__((constructor)) static void init(void) { setup(); }

static void shift(struct timespec *ts) {
    int64_t off = offset_ns ? __atomic_load_n(offset_ns, __ATOMIC_RELAXED) : 0;
    int64_t ns = (int64_t)ts->tv_nsec + off % 1000000000LL;
    ts->tv_sec += off / 1000000000LL + ns / 1000000000LL;
    ns %= 1000000000LL;
    if (ns < 0) {
        ns += 1000000000LL;
        ts->tv_sec -= 1;
    }
    ts->tv_nsec = ns;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_clock_gettime)
        setup();
    int r = real_clock_gettime(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE))
        shift(ts);
    return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
    (void)tz;
    struct timespec ts;
    int r = clock_gettime(CLOCK_REALTIME, &ts);
    if (r == 0 && tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return r;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t)
        *t = ts.tv_sec;
    return ts.tv_sec;
}
"""


class ClockOffsetUnavailable(RuntimeError):
    """No C compiler to build the preloaded library."""


class ClockOffset:
    """An offset file and the library that applies it, under ``directory``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.file = directory / "clock-offset"
        self.library = directory / "clock_offset.so"
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise ClockOffsetUnavailable("no C compiler (cc) to build the clock offset library")
        source = directory / "clock_offset.c"
        source.write_text(SOURCE)
        result = subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(self.library), str(source), "-ldl"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ClockOffsetUnavailable(f"cc failed: {result.stderr.strip()[-500:]}")
        self.set(0.0)

    def set(self, seconds: float) -> None:
        """Step the clock of every process started with :meth:`env` to now + ``seconds``."""
        data = struct.pack("<q", round(seconds * 1e9))
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)

    def env(self) -> dict[str, str]:
        """Variables that make a process (and its children) see the offset."""
        preload = os.environ.get("LD_PRELOAD", "")
        return {
            "LD_PRELOAD": f"{self.library} {preload}".strip(),
            ENV_FILE: str(self.file),
        }
