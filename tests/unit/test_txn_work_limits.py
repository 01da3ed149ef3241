"""Work per request (issue 12 item 3, SPEC `txn`): the whole-tree rule and the duplicate-key
check at the gateway (protocol/requests.py)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import requests as R
from protocol.errors import DuplicateKey, TooManyOps
from protocol.requests import Limits, normalize_request
from tests.lanes import examples


def put(k: bytes) -> dict:
    return {"put": {"key": k}}


def nested(levels: int, per_level: int, tag: bytes = b"") -> dict:
    """A chain of `levels` txns, each with `per_level` puts of its own keys."""
    inner: dict | None = None
    for lvl in range(levels):
        ops = [put(b"%s%d/%d" % (tag, lvl, i)) for i in range(per_level)]
        if inner is not None:
            ops.append({"txn": inner})
        inner = {"success": ops}
    assert inner is not None
    return inner


# --- the whole-tree rule -------------------------------------------------------------------
def test_tree_at_the_limit_passes_and_one_more_is_refused():
    limit = 128 * R.TXN_TREE_FACTOR
    tree = nested(8, 127)  # 8 x 127 puts + 7 nested txns = 1023 items, 128 at most per list
    innermost = tree
    for _ in range(7):
        innermost = innermost["success"][-1]["txn"]
    innermost["success"].append(put(b"last"))  # 1024
    normalize_request({"op": "txn", **tree}, Limits())
    tree["compare"] = [{"key": b"c"}]  # 1025 in all, every list within the per-level rule
    with pytest.raises(TooManyOps) as exc:
        normalize_request({"op": "txn", **tree}, Limits())
    assert exc.value.details == {"limit": limit}
    assert "--max-txn-ops" in exc.value.message and str(limit) in exc.value.message


def test_tree_limit_follows_max_txn_ops():
    small = Limits(max_txn_ops=2)  # whole tree: 16
    normalize_request({"op": "txn", "compare": [{"key": b"c"}], **nested(8, 1)}, small)  # 8 + 7 + 1 = 16
    with pytest.raises(TooManyOps) as exc:
        normalize_request({"op": "txn", "compare": [{"key": b"c"}] * 2, **nested(8, 1)}, small)  # 17
    assert exc.value.details == {"limit": 16}


def test_tree_is_refused_before_the_rest_is_looked_at():
    """The refusal comes when the count passes the limit: items after that point are never
    normalized (here they are garbage that would give invalid_argument)."""
    garbage = {"put": {"key": b"k", "value": 5}}
    level = [{"txn": {"success": [put(b"%d/%d" % (j, i)) for i in range(128)]}} for j in range(9)]
    level.append({"txn": {"success": [garbage] * 128}})
    with pytest.raises(TooManyOps):
        normalize_request({"op": "txn", "success": level}, Limits())


def test_the_issue_request_is_refused():
    """The issue's 916 KiB txn: a binary tree of 127 txns, 64 range deletes and 62 puts
    in each (16,256 ops)."""
    count = [0]

    def node(level: int) -> dict:
        n = count[0]
        count[0] += 1
        ops: list = [{"delete_range": {"key": b"d%03d/%02d" % (n, i), "range_end": b"d%03d/%02dz" % (n, i)}}
                     for i in range(64)]
        ops += [put(b"p%03d/%02d" % (n, i)) for i in range(62)]
        if level < 6:
            ops += [{"txn": node(level + 1)}, {"txn": node(level + 1)}]
        return {"success": ops}

    with pytest.raises(TooManyOps):
        normalize_request({"op": "txn", **node(0)}, Limits())


def test_nesting_depth_stays_eight():
    normalize_request({"op": "txn", **nested(R.MAX_TXN_DEPTH, 1)}, Limits())
    with pytest.raises(R.InvalidArgument, match="nested more than 8 levels"):
        normalize_request({"op": "txn", **nested(R.MAX_TXN_DEPTH + 1, 1)}, Limits())


# --- the duplicate-key rule with sorted intervals ------------------------------------------
class _NaiveDels:
    """The former linear implementation, as the reference."""

    def __init__(self, intervals):
        self.intervals = intervals

    def contains(self, k: bytes) -> bool:
        return any(s <= k and (e is None or k < e) for s, e in self.intervals)


keys = st.lists(st.sampled_from([b"\x00", b"a", b"b", b"c"]), min_size=1, max_size=3).map(b"".join)


@settings(max_examples=examples(500), deadline=None)
@given(st.lists(st.tuples(keys, st.one_of(st.none(), keys)), max_size=12), st.lists(keys, max_size=20),
       st.integers(0, 12))
def test_dels_contains_matches_the_linear_scan(intervals, probes, split):
    dels = R._Dels()
    added = []
    for i, (s, e) in enumerate(intervals):
        if e is not None and e <= s:
            continue  # add_delete never adds an empty interval
        dels.add(s, e)
        added.append((s, e))
        if i == split:  # ask between two changes too
            for k in probes:
                assert dels.contains(k) == _NaiveDels(added).contains(k)
    for k in probes:
        assert dels.contains(k) == _NaiveDels(added).contains(k)


def test_duplicate_rule_across_many_nested_deletes():
    """Deletes of many nested txns, then a put inside one of them at the top: refused."""
    inner = [{"txn": {"success": [{"delete_range": {"key": b"d%03d" % j, "range_end": b"d%03dz" % j}}]}}
             for j in range(100)]
    normalize_request({"op": "txn", "success": [*inner, put(b"e")]}, Limits())
    with pytest.raises(DuplicateKey):
        normalize_request({"op": "txn", "success": [*inner, put(b"d050x")]}, Limits())
    with pytest.raises(DuplicateKey):
        normalize_request({"op": "txn", "success": [*inner[:50], {"txn": {"success": [put(b"d007m")]}},
                                                    *inner[50:]]}, Limits())
