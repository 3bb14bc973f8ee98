#!/usr/bin/env bash
# Installs everything etcdha's lab and tests need on a fresh Debian 12 machine:
# Debian packages (without starting their services) and a virtualenv in .venv.
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(etcd-server etcd-client user-mode-linux ipvsadm iproute2 iputils-ping procps psmisc
      openssl ca-certificates util-linux postgresql mariadb-server slapd stress-ng gcc libc6-dev)

missing=()
for p in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}" >&2
    # policy-rc.d 101 keeps apt from starting etcd (or any other service) as it installs.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PY" -m venv .venv
fi
stamp=.venv/.etcdha-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing Python packages into .venv" >&2
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
    touch "$stamp"
fi
