#!/usr/bin/env bash
# The main job: installs what it needs (scripts/setup.sh), starts a throwaway
# etcd on a free loopback port with its data on tmpfs, imports the
# Heartbeat/ldirectord reference setup of examples/heartbeat-ldirectord/ with
# `etcdha config import`, applies it with `etcdha config apply` and prints
# `etcdha config show`. etcd is stopped and its data removed on every exit path.
# (The steps live in etcdha/lab/seed_import.py; the full failover lab comes later.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    workdir=$(mktemp -d /dev/shm/etcdha-lab.XXXXXX)
else
    workdir=$(mktemp -d)
fi
child=

cleanup() {
    local code=$?
    trap - EXIT INT TERM HUP
    # The Python step cleans up after itself; this covers it being killed outright
    # (its session also holds the etcdha commands it runs; etcd has a session of its own).
    if [ -n "$child" ]; then
        kill -TERM -- "-$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    if [ -s "$workdir/etcd.pid" ]; then
        pid=$(cat "$workdir/etcd.pid")
        # Only the etcd this run started: its command line names our work directory.
        if tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$workdir"; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    fi
    rm -rf "$workdir"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# In a session of its own, in the background and waited for: a signal to this
# shell runs the trap at once, and the trap reaches everything the step started.
setsid .venv/bin/python -m etcdha.lab.seed_import --workdir "$workdir" &
child=$!
wait "$child"
