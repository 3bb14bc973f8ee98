#!/usr/bin/env bash
# The main job: installs what it needs (scripts/setup.sh), then runs `etcdha lab run`:
# the Heartbeat + ldirectord reference setup of examples/heartbeat-ldirectord/ in
# network namespaces, imported with `etcdha config import` and applied to a fresh
# etcd, two agents, a client probing the VIP every 10 ms, and the whole failover
# scenario, with a live timeline and each client-side gap. On a kernel without
# IPVS the lab runs itself inside user-mode-linux and says so.
#
# The report and the chart land in the directory this is run from:
# etcdha-lab-report.json and etcdha-lab-chart.svg. Extra arguments go to
# `etcdha lab run` (see `--help`).
set -euo pipefail
out=$PWD
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# user-mode-linux keeps its run directory under TMPDIR: a directory of this run,
# so that the trap can stop a guest left running if the lab itself is killed.
# Not on /dev/shm: the guest has a /dev of its own and would not find its init there.
workdir=$(mktemp -d "${TMPDIR:-/tmp}/etcdha-lab.XXXXXX")
child=

cleanup() {
    local code=$?
    trap - EXIT INT TERM HUP
    if [ -n "$child" ]; then
        kill -TERM -- "-$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    # Only processes of this run: their command line names our work directory.
    for pid in $(pgrep -f -- "$workdir" 2>/dev/null || true); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$workdir"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# In a session of its own, in the background and waited for: a signal to this
# shell runs the trap at once, and the trap reaches everything the lab started.
TMPDIR=$workdir setsid .venv/bin/python -m etcdha lab run \
    --report "$out/etcdha-lab-report.json" --chart "$out/etcdha-lab-chart.svg" "$@" &
child=$!
wait "$child"
