"""The whole simulator: Raft and MVCC (sim.py) with membership changes (membership.py) and
leases (leases.py) at once, so a lease's expiry is checked across leader changes caused by
adding, promoting and removing members too (`run.py --leases --membership`, `make sim`)."""
from __future__ import annotations

from .leases import LeaseSim
from .membership import MembershipSim


class FullSim(LeaseSim, MembershipSim):
    def start_born(self) -> None:
        before = set(self.ids)
        super().start_born()
        for i in self.ids:
            if i not in before:
                self.lease_node(i)
