"""The pure Lessor (actors/storage/lessor.py): time passed in, no I/O, so every rule of its
docstring is checked here with a fake clock."""

from actors.storage.lessor import Lessor, LessorConfig, Reply

# silence_s long: the tests below do not repeat the news of leadership (test_silence_demotes)
CFG = LessorConfig(tick_s=0.25, revokes_per_s=8, retry_s=3.0, checkpoint_margin_ms=1000,
                   checkpoint_batch=2, silence_s=1000.0)


def leader(now=0.0, leases=(), term=2, ready=5, applied=5):
    lessor = Lessor(CFG)
    assert lessor.leadership(now, True, term, ready) == []
    assert lessor.can_promote(applied)
    assert lessor.promote(now, leases) == []
    return lessor


def test_promote_only_once_caught_up_to_the_terms_start():
    lessor = Lessor(CFG)
    lessor.leadership(0.0, True, 3, 10)
    assert not lessor.can_promote(9)
    assert lessor.can_promote(10)
    lessor.promote(0.0, [])
    assert lessor.promoted_term == 3
    assert not lessor.can_promote(11)  # once per term
    lessor.leadership(1.0, True, 4, 20)  # a new term: demoted, promoted again when caught up
    assert lessor.promoted_term is None and lessor.can_promote(20)


def test_promote_uses_the_checkpointed_remaining_ttl_else_the_full_ttl():
    lessor = leader(100.0, [(1, 10, 0), (2, 10, 4000)])
    assert lessor.request(100.0, "a", "lease_timetolive", 1) == [Reply("a", "ttl", 1, 10, 10)]
    assert lessor.request(100.0, "b", "lease_timetolive", 2) == [Reply("b", "ttl", 2, 4, 10)]
    assert lessor.request(100.0, "c", "lease_timetolive", 3) == [Reply("c", "ttl", 3, -1, 0)]


def test_expiry_is_proposed_after_the_deadline_and_retried():
    lessor = leader(0.0, [(1, 5, 0), (2, 8, 0)])
    assert lessor.tick(4.9) == ([], [])
    assert lessor.tick(5.0) == ([], [{"op": "lease_expire", "id": 1}])
    assert lessor.tick(5.25) == ([], [])  # proposed; not again before retry_s
    assert lessor.tick(8.0) == ([], [{"op": "lease_expire", "id": 1}, {"op": "lease_expire", "id": 2}])
    lessor.applied(8.1, [{"op": "lease_expire", "id": 1}])
    assert lessor.tick(11.0) == ([], [{"op": "lease_expire", "id": 2}])


def test_expiry_rate_limit():
    lessor = leader(0.0, [(i, 5, 0) for i in range(1, 11)])
    _, ops = lessor.tick(6.0)  # bucket: 8/s * 0.25 s per tick
    assert [op["id"] for op in ops] == [1, 2]
    _, ops = lessor.tick(6.25)
    assert [op["id"] for op in ops] == [3, 4]


def test_keepalive_renews_and_refuses_an_expired_lease():
    lessor = leader(0.0, [(1, 5, 0)])
    assert lessor.request(4.0, "a", "lease_keepalive", 1) == [Reply("a", "keepalive", 1, 5)]
    assert lessor.tick(8.9) == ([], [])  # renewed at 4.0: deadline 9.0
    assert lessor.request(9.0, "b", "lease_keepalive", 1) == [Reply("b", "not_found", 1)]
    assert lessor.request(9.0, "c", "lease_keepalive", 7) == [Reply("c", "not_found", 7)]


def test_grant_and_revoke_through_the_log():
    lessor = leader(0.0)
    lessor.applied(1.0, [{"op": "lease_grant", "id": 5, "ttl": 3}])
    assert lessor.tick(3.9) == ([], [])
    assert lessor.tick(4.0)[1] == [{"op": "lease_expire", "id": 5}]
    lessor.applied(4.1, [{"op": "lease_revoke", "id": 5}])
    assert lessor.tick(7.5) == ([], [])


def test_a_follower_keeps_no_deadlines():
    lessor = Lessor(CFG)
    lessor.leadership(0.0, False, 2, 0)
    lessor.applied(0.0, [{"op": "lease_grant", "id": 5, "ttl": 3}])
    assert lessor.leases == {}
    assert lessor.tick(100.0) == ([], [])
    assert lessor.request(1.0, "a", "lease_keepalive", 5) == [Reply("a", "not_leader")]


def test_requests_are_held_until_promoted_or_until_someone_else_leads():
    lessor = Lessor(CFG)
    assert lessor.request(0.0, "a", "lease_keepalive", 1) == []  # no news yet: held
    lessor.leadership(0.1, True, 2, 5)
    assert lessor.request(0.1, "b", "lease_timetolive", 1) == []  # leading, not caught up
    assert lessor.promote(0.2, [(1, 5, 0)]) == [Reply("a", "keepalive", 1, 5), Reply("b", "ttl", 1, 5, 5)]
    other = Lessor(CFG)
    other.request(0.0, "c", "lease_keepalive", 1)
    assert other.leadership(0.1, False, 2, 0) == [Reply("c", "not_leader")]


def test_checkpoints_only_what_is_well_below_what_the_log_knows():
    lessor = leader(0.0, [(1, 10, 0), (2, 10, 0), (3, 10, 0), (4, 100, 0)])
    lessor.request(0.5, "a", "lease_keepalive", 2)  # renewed: 10.5
    ops = lessor.checkpoint_tick(1.2)
    # 1 and 3 have 8800 ms left, below 10000 - 1000; 2 has 9300; 4 has 98800 (below 99000)
    assert ops == [{"op": "lease_checkpoint", "checkpoints": [[1, 8800], [3, 8800]]},
                   {"op": "lease_checkpoint", "checkpoints": [[4, 98800]]}]
    assert lessor.checkpoint_tick(1.3) == []  # in flight
    lessor.applied(1.4, ops)
    # 1 and 3: 8100 is not 1000 below the stored 8800; 2 (never checkpointed): 8600 is
    assert lessor.checkpoint_tick(1.9) == [{"op": "lease_checkpoint", "checkpoints": [[2, 8600]]}]
    assert lessor.checkpoint_tick(5.0)[0]["checkpoints"][0] == [1, 5000]


def test_lost_checkpoints_are_reevaluated_after_retry():
    lessor = leader(0.0, [(1, 10, 0)])
    assert lessor.checkpoint_tick(2.0) == [{"op": "lease_checkpoint", "checkpoints": [[1, 8000]]}]
    assert lessor.checkpoint_tick(4.0) == []
    assert lessor.checkpoint_tick(5.0) == [{"op": "lease_checkpoint", "checkpoints": [[1, 5000]]}]


def test_keepalive_of_a_checkpointed_lease_waits_for_its_clear():
    """The rule that keeps a later leader from using a remaining TTL older than an
    acknowledged keep-alive."""
    lessor = leader(0.0, [(1, 10, 4000), (2, 10, 0)])
    assert lessor.request(1.0, "a", "lease_keepalive", 1) == []
    assert lessor.clear_proposals(1.0) == [{"op": "lease_checkpoint", "checkpoints": [[1, 0]]}]
    assert lessor.clear_proposals(1.1) == []  # proposed; again only after retry_s
    assert lessor.clear_proposals(4.0) == [{"op": "lease_checkpoint", "checkpoints": [[1, 0]]}]
    # a non-zero checkpoint in flight also makes the keep-alive wait
    lessor.checkpoint_tick(2.5)
    assert 2 in lessor.ckpt_inflight
    assert lessor.request(2.6, "b", "lease_keepalive", 2) == []
    replies = lessor.applied(4.1, [{"op": "lease_checkpoint", "checkpoints": [[2, 7500]]},
                                   {"op": "lease_checkpoint", "checkpoints": [[1, 0], [2, 0]]}])
    assert replies == [Reply("a", "keepalive", 1, 10), Reply("b", "keepalive", 2, 10)]
    assert lessor.request(4.2, "c", "lease_keepalive", 1) == [Reply("c", "keepalive", 1, 10)]


def test_time_to_live_reports_only_what_a_later_leader_honours():
    """While a keep-alive waits for its clear, a later leader would still use the
    checkpointed 4 s: time-to-live says so (the simulator's seed 982), and the renewal once
    the clear applied."""
    lessor = leader(0.0, [(1, 10, 4000)])
    assert lessor.request(1.0, "a", "lease_keepalive", 1) == []
    assert lessor.request(1.0, "t", "lease_timetolive", 1) == [Reply("t", "ttl", 1, 3, 10)]
    lessor.applied(1.5, [{"op": "lease_checkpoint", "checkpoints": [[1, 0]]}])
    assert lessor.request(1.5, "u", "lease_timetolive", 1) == [Reply("u", "ttl", 1, 9, 10)]


def test_a_lease_revoked_while_its_keepalive_waits_is_not_found():
    lessor = leader(0.0, [(1, 10, 4000)])
    lessor.request(1.0, "a", "lease_keepalive", 1)
    assert lessor.applied(1.5, [{"op": "lease_revoke", "id": 1}]) == [Reply("a", "not_found", 1)]
    assert lessor.clear_proposals(5.0) == []


def test_demotion_forgets_deadlines_and_answers_waiting_keepalives():
    lessor = leader(0.0, [(1, 10, 4000)])
    lessor.request(1.0, "a", "lease_keepalive", 1)
    assert lessor.leadership(1.5, False, 3, 0) == [Reply("a", "not_leader")]
    assert lessor.promoted_term is None and lessor.leases == {}
    assert lessor.clear_proposals(10.0) == [] and lessor.tick(100.0) == ([], [])


def test_silence_demotes():
    lessor = Lessor(LessorConfig(silence_s=3.0))
    lessor.leadership(0.0, True, 2, 5)
    lessor.promote(0.0, [(1, 10, 4000)])
    lessor.request(1.0, "a", "lease_keepalive", 1)
    assert lessor.tick(3.0) == ([], [])
    assert lessor.tick(3.1) == ([Reply("a", "not_leader")], [])
    assert not lessor.is_leader and lessor.promoted_term is None


def test_a_request_confirmed_in_another_term_is_not_answered():
    """With the term its read index was confirmed in, a lessor that has not yet heard it
    lost leadership refuses (tests/sim/leases.py KNOWN_BUG); without, it answers."""
    lessor = leader(0.0, [(1, 10, 0)], term=4)
    assert lessor.request(1.0, "a", "lease_keepalive", 1, term=5) == [Reply("a", "not_leader")]
    assert lessor.request(1.0, "b", "lease_keepalive", 1, term=4) == [Reply("b", "keepalive", 1, 10)]
    assert lessor.request(1.0, "c", "lease_keepalive", 1) == [Reply("c", "keepalive", 1, 10)]
    held = Lessor(CFG)
    held.leadership(0.0, True, 6, 5)
    assert held.request(0.0, "d", "lease_keepalive", 1, term=7) == []
    assert held.promote(0.1, [(1, 10, 0)]) == [Reply("d", "not_leader")]
