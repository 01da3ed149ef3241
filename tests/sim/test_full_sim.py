"""The whole simulator (tests/sim/full.py): Raft and MVCC under faults, membership changes and
leases at once, every checker of the three on. A lease's expiry is checked across leader
changes that removing the leader causes too.

More seeds: `make sim SEEDS=10000` (this and the plain simulator), or
`python -m tests.sim.run --leases --membership --seeds 10000`.
"""

import pytest

from tests.lanes import FAST
from tests.sim.full import FullSim
from tests.sim.sim import run_seeds

SEEDS = 60 if FAST else 150
CHUNK = 30


@pytest.mark.parametrize("lo", range(1000, 1000 + SEEDS, CHUNK), ids=lambda lo: f"seeds{lo}-{lo + CHUNK - 1}")
def test_full_sim_seeds(lo):
    totals = run_seeds(FullSim, range(lo, lo + CHUNK))
    # the seeds change members, remove leaders, acknowledge and expire leases
    for name in ("conf_changes", "leader_removals", "lease_acks", "lease_expired"):
        assert totals[name] > 0, (name, totals)


def test_same_seed_same_run():
    assert FullSim(5, nodes=5).run() == FullSim(5, nodes=5).run()
