"""The checker's own tests: histories it must accept, and known non-linearizable
histories it must reject."""
from __future__ import annotations

import random

from linearizability import Op, check_history, check_key

K = b"k"


def put(c, t0, t1, value, rev, key=K, **kw):
    return Op(c, "put", key, t0, t1, value=value, revision=rev, **kw)


def get(c, t0, t1, found, rev=0, key=K):
    return Op(c, "get", key, t0, t1, found=found, revision=rev)


def test_sequential_history_is_linearizable():
    h = [put(1, 0, 1, b"a", 2), get(1, 2, 3, (b"a", 2, 1), 2), put(1, 4, 5, b"b", 3), get(2, 6, 7, (b"b", 3, 2), 3)]
    assert check_history(h) == []


def test_stale_read_after_an_acknowledged_put_is_rejected():
    h = [put(1, 0, 1, b"a", 2), get(2, 2, 3, None, 1)]
    assert check_history(h)


def test_a_lost_write_is_rejected():
    h = [put(1, 0, 1, b"a", 2), put(1, 2, 3, b"b", 3), get(2, 4, 5, (b"a", 2, 1), 3)]
    assert check_history(h)


def test_concurrent_read_may_see_old_or_new():
    for found in (None, (b"a", 2, 1)):
        h = [put(1, 0, 10, b"a", 2), get(2, 1, 2, found, 2)]
        assert check_key(K, h) is None


def test_uncertain_write_may_or_may_not_have_happened():
    seen = [put(1, 0, None, b"x", 0), get(2, 5, 6, (b"x", 7, 1), 7)]
    unseen = [put(1, 0, None, b"x", 0), get(2, 5, 6, None, 7)]
    assert check_history(seen) == [] and check_history(unseen) == []


def test_an_uncertain_write_cannot_appear_then_vanish():
    h = [put(1, 0, None, b"x", 0), get(2, 5, 6, (b"x", 7, 1), 7), get(2, 8, 9, None, 7)]
    assert check_history(h)


def test_a_definitely_failed_write_must_not_be_seen():
    h = [put(1, 0, 1, b"x", 0, ok=False), get(2, 2, 3, (b"x", 2, 1), 2)]
    assert check_history(h)


def test_two_cas_with_the_same_expectation_cannot_both_succeed():
    h = [put(1, 0, 1, b"a", 2),
         Op(2, "cas", K, 2, 5, value=b"b", expected_mod=2, succeeded=True, revision=3),
         Op(3, "cas", K, 2, 5, value=b"c", expected_mod=2, succeeded=True, revision=4)]
    assert check_history(h)


def test_cas_success_and_failure_consistent_with_state():
    h = [put(1, 0, 1, b"a", 2),
         Op(2, "cas", K, 2, 3, value=b"b", expected_mod=2, succeeded=True, revision=3),
         Op(3, "cas", K, 4, 5, value=b"c", expected_mod=2, succeeded=False, revision=3),
         get(1, 6, 7, (b"b", 3, 2), 3)]
    assert check_history(h) == []


def test_delete_count_must_match():
    assert check_history([Op(1, "delete", K, 0, 1, deleted=1, revision=2)])
    h = [put(1, 0, 1, b"a", 2), Op(1, "delete", K, 2, 3, deleted=1, revision=3), get(1, 4, 5, None, 3)]
    assert check_history(h) == []


def test_two_writes_sharing_a_revision_are_rejected():
    h = [put(1, 0, 1, b"a", 2, key=b"x"), put(2, 0, 1, b"b", 2, key=b"y")]
    assert any("share revision" in v.message for v in check_history(h))


def test_revision_order_must_follow_real_time_across_keys():
    h = [put(1, 0, 1, b"a", 10, key=b"x"), put(2, 2, 3, b"b", 9, key=b"y")]
    assert any("began after" in v.message for v in check_history(h))


def test_a_read_header_older_than_a_completed_write_is_stale():
    h = [put(1, 0, 1, b"a", 5, key=b"x"), get(2, 2, 3, None, 4, key=b"y")]
    assert any("stale read" in v.message for v in check_history(h))


def _random_linearizable_history(rng: random.Random, clients: int = 4, ops: int = 40) -> list[Op]:
    """Run a sequential KV at random linearization points inside random intervals."""
    history: list[Op] = []
    state: dict[bytes, tuple[bytes, int, int]] = {}
    rev = 1
    t = 0.0
    for i in range(ops):
        key = rng.choice([b"a", b"b"])
        t += rng.random()
        point = t
        invoked = point - rng.random() * 2
        completed = point + rng.random() * 2
        kind = rng.choice(["put", "get", "get", "delete", "cas"])
        if rng.random() < 0.1 and kind != "get":
            # an uncertain write that did take effect
            completed_or_none = None
        else:
            completed_or_none = completed
        c = rng.randrange(clients)
        if kind == "put":
            rev += 1
            old = state.get(key)
            state[key] = (b"v%d" % i, rev, (old[2] + 1) if old else 1)
            history.append(put(c, invoked, completed_or_none, b"v%d" % i, rev, key=key))
        elif kind == "get":
            history.append(get(c, invoked, completed, state.get(key), rev, key=key))
        elif kind == "delete":
            existed = key in state
            if existed:
                rev += 1
                del state[key]
            history.append(Op(c, "delete", key, invoked, completed_or_none, deleted=int(existed), revision=rev))
        else:
            expected = state[key][1] if key in state and rng.random() < 0.7 else rng.choice([0, 1, 3])
            matches = (state[key][1] if key in state else 0) == expected
            if matches:
                rev += 1
                old = state.get(key)
                state[key] = (b"c%d" % i, rev, (old[2] + 1) if old else 1)
            history.append(Op(c, "cas", key, invoked, completed_or_none, value=b"c%d" % i, expected_mod=expected,
                              succeeded=matches, revision=rev))
    return history


def test_random_linearizable_histories_are_accepted():
    rng = random.Random(7)
    for _ in range(200):
        h = _random_linearizable_history(rng)
        # The global checks assume non-overlapping real-time order implies revision order,
        # which this generator guarantees; per-key search must accept every history.
        assert check_history(h) == [], h


def test_a_random_history_with_one_corrupted_read_is_rejected():
    rng = random.Random(11)
    rejected = 0
    for _ in range(100):
        h = _random_linearizable_history(rng)
        reads = [op for op in h if op.kind == "get" and op.found is not None]
        if not reads:
            continue
        victim = rng.choice(reads)
        victim.found = (b"never-written", victim.found[1], victim.found[2])
        rejected += bool(check_history(h))
    assert rejected >= 90


def revoke(c, t0, t1, lease, rev, key=K):
    return Op(c, "revoke", key, t0, t1, lease=lease, revision=rev)


def test_revoke_deletes_only_a_key_its_lease_is_attached_to():
    attached = [put(1, 0, 1, b"a", 2, lease=7), revoke(1, 2, 3, 7, 3), get(2, 4, 5, None, 3)]
    assert check_history(attached) == []
    detached = [put(1, 0, 1, b"a", 2, lease=7), put(1, 2, 3, b"b", 3), revoke(1, 4, 5, 7, 4),
                get(2, 6, 7, (b"b", 3, 2), 4)]
    assert check_history(detached) == []


def test_a_key_surviving_the_revoke_of_its_lease_is_rejected():
    h = [put(1, 0, 1, b"a", 2, lease=7), revoke(1, 2, 3, 7, 3), get(2, 4, 5, (b"a", 2, 1), 3)]
    assert check_history(h)


def test_a_revoke_of_unknown_outcome_may_or_may_not_delete():
    for found in (None, (b"a", 2, 1)):
        h = [put(1, 0, 1, b"a", 2, lease=7), revoke(1, 2, None, 7, 0), get(2, 4, 5, found, 3)]
        assert check_history(h) == []


def test_writes_of_one_txn_share_a_revision_but_other_writes_may_not():
    txn = [put(1, 0, 1, b"a", 5, key=b"x", group=9), put(1, 0, 1, b"b", 5, key=b"y", group=9)]
    assert check_history(txn) == []
    two = [put(1, 0, 1, b"a", 5, key=b"x"), put(2, 0, 1, b"b", 5, key=b"y")]
    assert check_history(two)
