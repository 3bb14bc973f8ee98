#!/usr/bin/env bash
# Runs etcdha's checks and test suite (all tiers) after installing what they need.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== ruff" >&2
.venv/bin/ruff check etcdha tests bench
.venv/bin/ruff format --check etcdha tests bench
echo "== mypy" >&2
.venv/bin/mypy
echo "== pytest" >&2
exec .venv/bin/pytest -q -ra "$@"
