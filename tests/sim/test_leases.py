"""Leases in the deterministic simulator (tests/sim/leases.py): the real Lessor on every
node, clients granting, keeping alive, abandoning and revoking leases through Raft, leader
changes, crashes, and lessors that pause and see their clock jump. Checker: no lease
expires before TTL after its client sent its last acknowledged grant or keep-alive.

More seeds: `python tests/sim/run.py --leases --seeds 10000`; one seed:
`.venv/bin/python -m tests.sim.run --leases --seed N --nodes 3 --verbose`.
"""

import pytest

from actors.storage.lessor import Lessor, Reply
from tests.sim.leases import LeaseSim
from tests.sim.sim import SimFailure, first_failure, run_seeds

SEEDS = 250
CHUNK = 50
STEPS = 200  # safety-phase steps of the suite's seeds (20 s of sim time; run.py draws 300-600)


@pytest.mark.parametrize("lo", range(0, SEEDS, CHUNK), ids=lambda lo: f"seeds{lo}-{lo + CHUNK - 1}")
def test_lease_seeds(lo):
    totals = run_seeds(LeaseSim, range(lo, lo + CHUNK), steps=STEPS)
    # The seeds exercise what the checker is about, not only quiet runs.
    for name in ("lease_acks", "lease_held_acks", "lease_ttls", "lease_expired", "lease_expired_new_term",
                 "lease_checkpoints", "lease_promotions", "lessor_pauses", "lease_revokes"):
        assert totals[name] > 0, (name, totals)


def test_same_seed_same_run():
    assert LeaseSim(11, nodes=5).run() == LeaseSim(11, nodes=5).run()


def _first_failure(limit: int, nodes: int | None = None) -> SimFailure | None:
    e = first_failure(LeaseSim, limit, nodes)  # run.py's seeds
    assert e is None or (("expired early" in str(e) or "but its expiry had applied" in str(e))
                         and "--leases" in str(e)), e
    return e


def test_planted_bug_new_leader_expires_before_remaining_ttl(monkeypatch):
    """A new leader that gives each lease only half its remaining TTL is caught."""
    monkeypatch.setattr(Lessor, "promoted_deadline", staticmethod(
        lambda now, ttl, remaining_ms: now + (remaining_ms / 1000.0 if remaining_ms else ttl) / 2))
    assert _first_failure(1000) is not None


def test_planted_bug_keepalive_not_waiting_for_its_clearing_checkpoint(monkeypatch):
    """Acknowledging a keep-alive while the log holds an older remaining TTL (the rule etcd
    #9888's checkpoints need) is caught: a later leader promotes with that stale TTL."""
    request = Lessor.request

    def eager(self, now, waiter, op, lease_id, term=None):
        lease = self.leases.get(lease_id)
        if self.promoted and op == "lease_keepalive" and lease is not None and lease.deadline > now:
            lease.deadline = now + lease.ttl
            return [Reply(waiter, "keepalive", lease_id, lease.ttl)]
        return request(self, now, waiter, op, lease_id, term)

    monkeypatch.setattr(Lessor, "request", eager)
    assert _first_failure(1000, nodes=3) is not None  # 3 nodes: faster seeds, caught sooner


def test_a_stale_lessor_is_caught(monkeypatch):
    """Planted bug (the storage actor before this simulator found it): keep-alives reach the
    lessor without the term their read index was confirmed in, and leadership moves while
    the leader's lessor is paused; a stale lessor acknowledges a keep-alive the new leader
    then expires."""
    init = LeaseSim.__init__

    def moving(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.p_pause, self.p_move_on_pause, self.read_terms = 0.02, 0.5, False

    monkeypatch.setattr(LeaseSim, "__init__", moving)
    assert _first_failure(1000, nodes=None) is not None


def test_read_terms_close_it(monkeypatch):
    """The same scenario with the term passed, as the actors do: no seed fails."""
    init = LeaseSim.__init__

    def moving(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.p_pause, self.p_move_on_pause = 0.02, 0.5

    monkeypatch.setattr(LeaseSim, "__init__", moving)
    for seed in range(20):  # without the term, seed 8 fails (test_a_stale_lessor_is_caught)
        LeaseSim(seed, nodes=3 if seed % 2 == 0 else 5).run()


def test_time_to_live_reports_only_durable_renewals(monkeypatch):
    """Planted bug (the Lessor's rule before this simulator found it): time-to-live reports
    a renewal still waiting for its clearing checkpoint; seed 982 then sees the lease
    expire after a leader change before the TTL it was told."""
    request = Lessor.request

    def unconfirmed(self, now, waiter, op, lease_id, term=None):
        out = request(self, now, waiter, op, lease_id, term)
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.confirmed = lease.deadline
        return out

    init = LeaseSim.__init__

    def with_terms(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.read_terms = True

    monkeypatch.setattr(Lessor, "request", unconfirmed)
    monkeypatch.setattr(LeaseSim, "__init__", with_terms)
    with pytest.raises(SimFailure):
        LeaseSim(982, nodes=5).run()
