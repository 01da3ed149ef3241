"""Pure parts of maintenance: durations and retention, the compactors, alarm rules and
alarm state in the MVCC store, the corruption verdict."""
from __future__ import annotations

import pytest

from actors.gateway.corruption import find_corrupt, pick_revision
from actors.storage.compactor import (
    PeriodicCompactor, RevisionCompactor, make_compactor, parse_duration, parse_retention,
)
from actors.storage.mvcc import MemoryBackend, MVCCStore
from actors.storage.mvcc import alarms
from nodes.config import ConfigError, load_config
from protocol import errors
from protocol.requests import Limits, normalize_request


# --- durations and retention --------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [
    ("60s", 60), ("500ms", 0.5), ("1h30m", 5400), ("1.5s", 1.5), ("0", 0), ("2", 2), ("10us", 1e-5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "1h 2m", "-5s", "nan", "5s3"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_retention_like_etcd():
    assert parse_retention("periodic", "1") == 3600  # a bare integer is hours
    assert parse_retention("periodic", "30m") == 1800
    assert parse_retention("revision", "1000") == 1000
    with pytest.raises(ValueError):
        parse_retention("revision", "1h")
    with pytest.raises(ValueError):
        parse_retention("sometimes", "1")
    assert make_compactor("periodic", "0") is None and make_compactor("revision", "0") is None


def test_config_flags():
    cfg = load_config({"corrupt-check-time": "250ms", "auto-compaction-mode": "revision",
                       "auto-compaction-retention": "100"}, env={})
    assert (cfg.corrupt_check_time, cfg.auto_compaction_mode, cfg.auto_compaction_retention) == (
        0.25, "revision", "100")
    assert load_config({}, env={}).corrupt_check_time == 60.0  # on by default
    with pytest.raises(ConfigError, match="--corrupt-check-time"):
        load_config({"corrupt-check-time": "soon"}, env={})
    with pytest.raises(ConfigError, match="--auto-compaction-retention"):
        load_config({"auto-compaction-mode": "revision", "auto-compaction-retention": "1h"}, env={})


# --- compactors -----------------------------------------------------------------------------
def test_revision_compactor_keeps_the_last_n():
    c = RevisionCompactor(retention=10, interval_s=300)
    assert c.tick(0, 100, 0, True) is None  # arms the first check
    assert c.tick(299, 100, 0, True) is None
    assert c.tick(300, 100, 0, True) == 90
    assert c.tick(600, 100, 90, True) is None  # nothing new: same target
    assert c.tick(900, 105, 90, False) is None  # not the leader
    assert c.tick(1200, 130, 90, True) == 120
    assert RevisionCompactor(10, 1).tick(0, 5, 0, True) is None
    c = RevisionCompactor(10, 1)
    c.tick(0, 5, 0, True)
    assert c.tick(1, 5, 0, True) is None  # current - retention <= 0


def test_periodic_compactor_compacts_a_period_back():
    c = PeriodicCompactor(period_s=10)  # samples every 1 s, keeps 11 samples
    assert c.retry_s == 1 and c.retentions == 11
    rev = 1
    out = []
    for t in range(0, 40):
        rev += 5  # 5 revisions a second
        got = c.tick(float(t), rev, 0, True)
        if got is not None:
            out.append((t, got, rev))
    # first at 10 s (a period after start), then every period, each about a period back
    assert [t for t, _, _ in out] == [10, 20, 30]
    for _t, got, now_rev in out:
        assert now_rev - 55 <= got <= now_rev - 45


def test_periodic_compactor_over_an_hour_and_followers():
    c = PeriodicCompactor(period_s=5 * 3600)
    assert c.compact_interval_s == 3600 and c.retry_s == 360 and c.retentions == 51
    f = PeriodicCompactor(period_s=10)
    for t in range(0, 30):
        assert f.tick(float(t), t, 0, False) is None  # a follower samples, never compacts
    assert f.tick(30.0, 30, 0, True) is not None  # once it leads, at once (a period has passed)


# --- alarms ----------------------------------------------------------------------------------
def _op(req: dict) -> dict:
    return normalize_request(req, Limits())


def test_alarm_refusals():
    nospace = frozenset({(7, alarms.NOSPACE)})
    corrupt = frozenset({(7, alarms.CORRUPT)})
    put = _op({"op": "put", "key": "k", "value": "v"})
    delete = _op({"op": "delete_range", "key": "k"})
    txn_put = _op({"op": "txn", "compare": [], "success": [], "failure": [
        {"txn": {"compare": [], "success": [{"put": {"key": "k", "value": "v"}}],
                         "failure": []}}]})
    txn_del = _op({"op": "txn", "success": [{"delete_range": {"key": "k"}}]})
    txn_read = _op({"op": "txn", "success": [{"range": {"key": "k"}}]})
    compact = _op({"op": "compact", "revision": 1})
    grant = _op({"op": "lease_grant", "ttl": 10})
    assert isinstance(alarms.refusal(nospace, put), errors.NoSpace)
    assert isinstance(alarms.refusal(nospace, txn_put), errors.NoSpace)  # nested put
    assert isinstance(alarms.refusal(nospace, grant), errors.NoSpace)
    for op in (delete, txn_del, txn_read, compact):
        assert alarms.refusal(nospace, op) is None
    for op in (put, delete, txn_put, txn_del, compact, grant, {"op": "lease_expire", "id": 1}):
        assert isinstance(alarms.refusal(corrupt, op), errors.Corrupt)
    for op in (txn_read, {"op": "lease_checkpoint", "checkpoints": []},
               {"op": "alarm_disarm", "member_id": 0, "alarm": ""}):
        assert alarms.refusal(corrupt, op) is None
    assert alarms.refusal(frozenset(), put) is None
    assert alarms.adds_data(put) and alarms.adds_data(txn_put) and alarms.adds_data(grant)
    assert not alarms.adds_data(delete) and not alarms.adds_data(txn_read)


def test_alarm_set_operations():
    s, new = alarms.activate(frozenset(), 1, alarms.NOSPACE)
    assert new == [(1, "NOSPACE")]
    s, new = alarms.activate(s, 1, alarms.NOSPACE)
    assert new == []
    s, _ = alarms.activate(s, 2, alarms.CORRUPT)
    s2, gone = alarms.deactivate(s, 0, "CORRUPT")
    assert gone == [(2, "CORRUPT")] and s2 == {(1, "NOSPACE")}
    s3, gone = alarms.deactivate(s, 0, "")
    assert s3 == frozenset() and len(gone) == 2
    assert alarms.parse_alarm_key(alarms.alarm_key(2**64 - 1, "CORRUPT")) == (2**64 - 1, "CORRUPT")


def test_alarm_state_in_the_store_survives_reopen():
    be = MemoryBackend()
    store = MVCCStore(be)
    res = store.apply([(1, {"op": "alarm_activate", "member_id": 5, "alarm": "NOSPACE"}),
                       (2, _op({"op": "put", "key": "k", "value": "v"})),
                       (3, _op({"op": "delete_range", "key": "x"}))])
    assert res[0].response == {"alarms": [{"member_id": 5, "alarm": "NOSPACE"}]}
    assert isinstance(res[1].error, errors.NoSpace) and res[1].revision == 1
    assert res[2].error is None
    reopened = MVCCStore(be)
    assert reopened.alarms == {(5, "NOSPACE")}
    res = reopened.apply([(4, _op({"op": "alarm_disarm", "member_id": 0, "alarm": ""})),
                          (5, _op({"op": "put", "key": "k", "value": "v"}))])
    assert res[0].response == {"alarms": [{"member_id": 5, "alarm": "NOSPACE"}]}
    assert res[1].error is None and res[1].revision == 2
    assert MVCCStore(be).alarms == frozenset()


def test_alarm_requests_normalized():
    assert _op({"op": "alarm_list"}) == {"op": "alarm_list"}
    assert _op({"op": "alarm_disarm", "alarm": "nospace"}) == {"op": "alarm_disarm", "member_id": 0,
                                                              "alarm": "NOSPACE"}
    assert _op({"op": "defragment"}) == {"op": "defragment"}
    for bad in ({"op": "alarm_disarm", "alarm": "FIRE"}, {"op": "alarm_disarm", "member_id": -1},
                {"op": "alarm_list", "x": 1}):
        with pytest.raises(errors.InvalidArgument):
            _op(bad)
    assert _op({"op": "alarm_activate", "member_id": 1, "alarm": "nospace"}) == {
        "op": "alarm_activate", "member_id": 1, "alarm": "NOSPACE"}


# --- corruption verdict --------------------------------------------------------------------
def test_pick_revision():
    assert pick_revision({1: (10, 0), 2: (12, 5), 3: (11, 0)}) == 10
    assert pick_revision({1: (10, 0), 2: (12, 11)}) is None  # member 2 compacted past 10
    assert pick_revision({1: (10, 0)}) is None


def test_find_corrupt():
    assert find_corrupt({1: 5, 2: 5, 3: 5}, 3, leader=1) == []
    assert find_corrupt({1: 5, 2: 5, 3: 6}, 3, leader=1) == [3]
    assert find_corrupt({1: 6, 2: 5, 3: 5}, 3, leader=1) == [1]  # the leader is the odd one
    assert find_corrupt({1: 5, 3: 6}, 3, leader=1) == [3]  # no majority: against the leader
    assert find_corrupt({1: 1, 2: 2, 3: 3}, 3, leader=2) == [1, 3]
