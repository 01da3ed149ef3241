"""The whole simulator (tests/sim/full.py): Raft and MVCC under faults, membership changes and
leases at once, every checker of the three on. A lease's expiry is checked across leader
changes that removing the leader causes too.

More seeds: `make sim SEEDS=10000` (this and the plain simulator), or
`python -m tests.sim.run --leases --membership --seeds 10000`.
"""

import pytest

from tests.lanes import FAST
from tests.sim.full import FullSim
from tests.sim.sim import SimFailure

SEEDS = 60 if FAST else 150
CHUNK = 30


@pytest.mark.parametrize("lo", range(1000, 1000 + SEEDS, CHUNK), ids=lambda lo: f"seeds{lo}-{lo + CHUNK - 1}")
def test_full_sim_seeds(lo):
    failures = []
    totals = {"conf_changes": 0, "leader_removals": 0, "lease_acks": 0, "lease_expired": 0}
    for seed in range(lo, lo + CHUNK):
        try:
            stats = FullSim(seed, nodes=3 if seed % 2 == 0 else 5).run()
        except SimFailure as e:
            failures.append(str(e))
            continue
        for k in totals:
            totals[k] += stats[k]
    if failures:
        pytest.fail(f"{len(failures)} seed(s) failed:\n" + "\n".join(failures), pytrace=False)
    assert all(totals.values()), totals  # the seeds change members, remove leaders, expire leases


def test_same_seed_same_run():
    assert FullSim(5, nodes=5).run() == FullSim(5, nodes=5).run()
