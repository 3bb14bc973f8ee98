"""The fault matrix (prints figures; not a test): each fault repeated on the seed
topology while a client requests the VIP every 10 ms and every director's
addresses are read every 10 ms. See docs/faults.md.

Usage (as root):
    python bench/faults.py                          # every fault, 5 trials each
    python bench/faults.py --faults kill9,revoke --trials 20
    python bench/faults.py --heavy-trials 84 --both # the full matrix (see docs/faults.md)
    python bench/faults.py --load --json out.json   # with stress-ng --cpu 2 running

--heavy-trials sets the trial count of the kill, partition and revoke faults
(kill9, sigstop, director-death, etcd-link, public-link, revoke, key-delete).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from etcdha.lab.faults import (
    BY_NAME,
    FAULTS,
    HEAVY_CLASSES,
    Fault,
    format_table,
    run_faults,
    totals,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", default="", help="comma-separated names (default: all)")
    ap.add_argument("--trials", type=int, default=5, help="trials of each fault")
    ap.add_argument(
        "--heavy-trials",
        type=int,
        default=0,
        help="trials of each kill, partition and revoke fault (default: --trials)",
    )
    ap.add_argument("--load", action="store_true", help="keep both cores busy (stress-ng --cpu 2)")
    ap.add_argument("--both", action="store_true", help="every fault unloaded, then loaded")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--list", action="store_true", help="list the faults and exit")
    args = ap.parse_args()
    if args.list:
        for f in FAULTS:
            print(f"{f.name:<17} {f.klass:<10} {f.title}")
        return 0
    names = [n for n in args.faults.split(",") if n] or [f.name for f in FAULTS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown faults: {', '.join(unknown)} (see --list)")
    if (args.load or args.both) and shutil.which("stress-ng") is None:
        ap.error("stress-ng is missing (scripts/setup.sh installs it)")
    faults = [BY_NAME[n] for n in names]

    def trials(fault: Fault) -> int:
        if args.heavy_trials and fault.klass in HEAVY_CLASSES:
            return int(args.heavy_trials)
        return int(args.trials)

    began = time.monotonic()
    results = []
    for load in [False, True] if args.both else [args.load]:
        results += run_faults(faults, trials, load=load)
    print()
    print(format_table(results))
    print(f"wall time {time.monotonic() - began:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"results": [r.as_dict() for r in results], "totals": totals(results)}, indent=1
            )
        )
    return 0 if all(r.safe for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
