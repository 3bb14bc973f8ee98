"""The fault matrix, reduced for CI: every fault once unloaded, and the faults of
each class again with both cores kept busy (`stress-ng --cpu 2`).

The same faults as `bench/faults.py` (etcdha/lab/faults.py): real etcd, real
agents, real namespaces, a client requesting the VIP every 10 ms, every
director's addresses read every 10 ms. Only the safety columns are asserted:
never two holders of an address, the stored config is the one applied, and the
service comes back (each fault's settle bound, tens of seconds). Stale IPVS
rules cannot be measured on a kernel without IPVS. Timings (gaps, failed
requests) are printed, not asserted.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence

import pytest

from etcdha.lab.faults import BY_NAME, Fault, format_table, run_faults

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

# Faults with the same needs share one lab (etcd, two agents, the client).
UNLOADED = (
    "kill9", "sigstop", "etcd-link", "public-link", "revoke", "key-delete", "etcd-restart",
    "compaction", "snapshot-restore", "twin", "restart-crash", "apply-failover",
    "etcd-member", "etcd-quorum", "director-death",
    "clock-step", "restart-planned", "flapping",
)  # fmt: skip
# One fault of each class with the hog, the kill, partition and revoke ones first.
LOADED = (
    "kill9", "etcd-link", "revoke", "key-delete", "etcd-restart", "twin", "restart-crash",
    "apply-failover", "director-death", "clock-step", "restart-planned", "flapping",
)  # fmt: skip


def check(results: Sequence[object]) -> None:
    from etcdha.lab.faults import FaultResult

    for r in results:
        assert isinstance(r, FaultResult)
        assert r.aborted is None, f"{r.name}: {r.aborted}"
        assert r.trials, f"{r.name}: no trial ran"
        assert r.max_holders <= 1, f"{r.name}: two holders: {r.dual_details}"
        assert r.dual_samples == 0, f"{r.name}: {r.dual_samples} samples with two holders"
        assert r.config_lost == 0, f"{r.name}: the stored config is not the applied one"
        assert r.unsettled == 0, f"{r.name}: the service did not come back: {r.problems}"
        assert not r.problems, f"{r.name}: {r.problems}"
        # The sampler really sampled: at least one read per 50 ms on average.
        seconds = sum(t.ended - t.started for t in r.trials)
        assert r.samples >= seconds / 0.05, f"{r.name}: {r.samples} samples in {seconds:.1f}s"


def run(names: Sequence[str], load: bool) -> None:
    faults: list[Fault] = [BY_NAME[n] for n in names]
    began = time.monotonic()
    results = run_faults(faults, lambda f: 1, load=load)
    print(format_table(results))
    print(f"{'loaded' if load else 'unloaded'}: {time.monotonic() - began:.0f} s")
    check(results)


@pytest.mark.timeout(900)
def test_every_fault_once_unloaded() -> None:
    run(UNLOADED, load=False)


@pytest.mark.timeout(900)
def test_each_class_again_with_both_cores_busy() -> None:
    if shutil.which("stress-ng") is None:
        message = "stress-ng is not installed (scripts/setup.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    run(LOADED, load=True)
