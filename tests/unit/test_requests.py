"""Validation and normalization of client requests (SPEC sections 3 and 4)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import (
    DuplicateKey,
    InvalidArgument,
    KeyNotProvided,
    Malformed,
    QkvError,
    TooManyOps,
    UnknownOp,
)
from protocol.requests import Limits, is_write, normalize_request
from tests.lanes import examples

L = Limits()


def n(req, limits=L):
    return normalize_request(req, limits)


RANGE_DEFAULTS = {
    "op": "range", "key": b"k", "range_end": b"", "limit": 0, "revision": 0,
    "sort_order": "NONE", "sort_target": "KEY", "serializable": False, "keys_only": False,
    "count_only": False, "min_mod_revision": 0, "max_mod_revision": 0,
    "min_create_revision": 0, "max_create_revision": 0,
}
PUT_DEFAULTS = {"op": "put", "key": b"k", "value": b"", "lease": 0, "prev_kv": False,
                "ignore_value": False, "ignore_lease": False}
DELETE_DEFAULTS = {"op": "delete_range", "key": b"k", "range_end": b"", "prev_kv": False}


# --- normalization ---------------------------------------------------------------------------
def test_range_defaults_and_full():
    assert n({"op": "range", "key": b"k"}) == RANGE_DEFAULTS
    full = {"op": "range", "key": "k", "range_end": "\x00", "limit": 5, "revision": 3,
            "sort_order": "descend", "sort_target": "MOD", "serializable": True,
            "keys_only": True, "count_only": True, "min_mod_revision": 1,
            "max_mod_revision": 2, "min_create_revision": 3, "max_create_revision": 4}
    out = n(full)
    assert out == {**full, "key": b"k", "range_end": b"\x00", "sort_order": "DESCEND"}


def test_put_and_delete_defaults():
    assert n({"op": "put", "key": "k"}) == PUT_DEFAULTS
    assert n({"op": "put", "key": b"k", "value": "\u00e9", "lease": 7, "prev_kv": True}) == {
        **PUT_DEFAULTS, "value": "\u00e9".encode(), "lease": 7, "prev_kv": True}
    assert n({"op": "delete_range", "key": b"k"}) == DELETE_DEFAULTS
    assert n({"op": "put", "key": b"k", "ignore_value": True, "ignore_lease": True})[
        "ignore_value"] is True


def test_compact_status():
    assert n({"op": "compact", "revision": 5}) == {"op": "compact", "revision": 5,
                                                  "physical": False}
    assert n({"op": "compact", "revision": 5, "physical": True})["physical"] is True
    assert n({"op": "status"}) == {"op": "status"}


def test_txn_normalized_recursively():
    out = n({"op": "txn",
             "compare": [{"key": "a"}, {"key": b"b", "range_end": b"c", "target": "value",
                                         "result": "LESS", "value": "x"}],
             "success": [{"put": {"key": "a"}}, {"txn": {"success": [{"range": {"key": "z"}}]}}],
             "failure": [{"delete_range": {"key": "q"}}]})
    assert out["compare"] == [
        {"target": "VERSION", "result": "EQUAL", "key": b"a", "range_end": b"", "version": 0},
        {"target": "VALUE", "result": "LESS", "key": b"b", "range_end": b"c", "value": b"x"},
    ]
    assert out["success"][0] == PUT_DEFAULTS | {"key": b"a"}
    assert out["success"][1] == {"op": "txn", "compare": [], "failure": [],
                                 "success": [RANGE_DEFAULTS | {"key": b"z"}]}
    assert out["failure"] == [DELETE_DEFAULTS | {"key": b"q"}]
    assert n({"op": "txn"}) == {"op": "txn", "compare": [], "success": [], "failure": [], "max_txn_keys": 5_000}


@pytest.mark.parametrize("target,field,value", [
    ("VERSION", "version", 3), ("CREATE", "create_revision", 3), ("MOD", "mod_revision", 3),
    ("VALUE", "value", b"v"), ("LEASE", "lease", 3)])
def test_compare_targets(target, field, value):
    out = n({"op": "txn", "compare": [{"key": b"k", "target": target, field: value}]})
    assert out["compare"][0][field] == value


def test_is_write():
    assert [is_write(n(r)) for r in (
        {"op": "put", "key": b"k"}, {"op": "delete_range", "key": b"k"}, {"op": "txn"},
        {"op": "compact", "revision": 1}, {"op": "range", "key": b"k"}, {"op": "status"},
    )] == [True, True, True, True, False, False]


# --- error paths -----------------------------------------------------------------------------
@pytest.mark.parametrize("req,err", [
    ({}, UnknownOp),
    ({"op": "get"}, UnknownOp),
    ({"op": 1}, UnknownOp),
    ({"op": None}, UnknownOp),
    ([], Malformed),
    (None, Malformed),
    ({"op": "range"}, KeyNotProvided),
    ({"op": "range", "key": b""}, KeyNotProvided),
    ({"op": "range", "key": None}, InvalidArgument),
    ({"op": "put", "value": b"v"}, KeyNotProvided),
    ({"op": "delete_range", "key": ""}, KeyNotProvided),
    ({"op": "range", "key": 5}, InvalidArgument),
    ({"op": "range", "key": b"k", "limit": -1}, InvalidArgument),
    ({"op": "range", "key": b"k", "revision": -1}, InvalidArgument),
    ({"op": "range", "key": b"k", "limit": True}, InvalidArgument),
    ({"op": "range", "key": b"k", "limit": 1.0}, InvalidArgument),
    ({"op": "range", "key": b"k", "revision": 2**63}, InvalidArgument),
    ({"op": "range", "key": b"k", "keys_only": 1}, InvalidArgument),
    ({"op": "range", "key": b"k", "sort_order": "UP"}, InvalidArgument),
    ({"op": "range", "key": b"k", "sort_order": 1}, InvalidArgument),
    ({"op": "range", "key": b"k", "sort_target": "LEASE"}, InvalidArgument),
    ({"op": "range", "key": b"k", "bogus": 1}, InvalidArgument),
    ({"op": "range", "key": b"k", 3: 1}, InvalidArgument),
    ({"op": "range", "key": "\ud800"}, InvalidArgument),
    ({"op": "put", "key": b"k", "range_end": b"z"}, InvalidArgument),
    ({"op": "put", "key": b"k", "value": b"v", "ignore_value": True}, InvalidArgument),
    ({"op": "put", "key": b"k", "lease": 5, "ignore_lease": True}, InvalidArgument),
    ({"op": "put", "key": b"k", "lease": 2**64}, InvalidArgument),
    ({"op": "put", "key": b"k", "value": [1]}, InvalidArgument),
    ({"op": "compact"}, InvalidArgument),
    ({"op": "compact", "revision": -1}, InvalidArgument),
    ({"op": "compact", "revision": False}, InvalidArgument),
    ({"op": "status", "x": 1}, InvalidArgument),
    ({"op": "txn", "compare": {}}, InvalidArgument),
    ({"op": "txn", "success": [{"put": {"key": b"k"}, "range": {"key": b"k"}}]}, InvalidArgument),
    ({"op": "txn", "success": [{}]}, InvalidArgument),
    ({"op": "txn", "success": [[]]}, InvalidArgument),
    ({"op": "txn", "success": [{"compact": {"revision": 1}}]}, InvalidArgument),
    ({"op": "txn", "success": [{"put": None}]}, InvalidArgument),
    ({"op": "txn", "success": [{"put": {}}]}, KeyNotProvided),
    ({"op": "txn", "failure": [{"txn": {"success": [{"range": {"key": b""}}]}}]}, KeyNotProvided),
    ({"op": "txn", "compare": [{}]}, KeyNotProvided),
    ({"op": "txn", "compare": [{"key": b"k", "target": "VALUE", "version": 1}]}, InvalidArgument),
    ({"op": "txn", "compare": [{"key": b"k", "target": "VERSION", "version": b"1"}]},
     InvalidArgument),
    ({"op": "txn", "compare": [{"key": b"k", "result": "SAME"}]}, InvalidArgument),
    ({"op": "txn", "compare": [5]}, InvalidArgument),
    ({"op": "txn", "bogus": []}, InvalidArgument),
])
def test_errors(req, err):
    with pytest.raises(err) as exc:
        n(req)
    assert type(exc.value) is err


def test_too_many_ops():
    ops = [{"put": {"key": b"k%d" % i}} for i in range(129)]
    with pytest.raises(TooManyOps) as exc:
        n({"op": "txn", "success": ops})
    assert exc.value.details == {"limit": 128}
    n({"op": "txn", "success": ops[:128], "failure": ops[:128],
       "compare": [{"key": b"k"}] * 128})
    small = Limits(max_txn_ops=2)
    with pytest.raises(TooManyOps):
        n({"op": "txn", "compare": [{"key": b"k"}] * 3}, small)
    with pytest.raises(TooManyOps):
        n({"op": "txn", "failure": [{"txn": {"failure": [{"range": {"key": b"k"}}] * 3}}]},
          small)


def test_nesting_cap():
    req: dict = {"range": {"key": b"k"}}
    for _ in range(8):
        req = {"txn": {"success": [req]}}
    n({"op": "txn", **req["txn"]})  # 8 levels of txn in all
    with pytest.raises(InvalidArgument):
        n({"op": "txn", "success": [req]})
    deep: object = b"k"
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidArgument):
        n({"op": "txn", "success": [{"put": {"key": deep}}]})


# --- etcd's duplicate-key rule (v3rpc/key.go checkIntervals; cases from etcd's tests) ------
def put(k):
    return {"put": {"key": k}}


def dele(k, end=None):
    return {"delete_range": {"key": k, **({"range_end": end} if end else {})}}


def txn(success=(), failure=()):
    return {"txn": {"success": list(success), "failure": list(failure)}}


@pytest.mark.parametrize("success,dup", [
    ([put(b"a"), put(b"a")], True),
    ([put(b"a"), put(b"b")], False),
    ([put(b"a"), dele(b"a")], True),
    ([dele(b"a"), put(b"a")], True),
    ([put(b"b"), dele(b"a", b"c")], True),
    ([put(b"c"), dele(b"a", b"c")], False),
    ([put(b"z"), dele(b"a", b"\x00")], True),       # \x00 = every key >= a
    ([dele(b"a", b"c"), dele(b"b", b"d")], False),  # overlapping deletes are fine
    ([dele(b"a"), dele(b"a")], False),
    ([put(b"a"), txn([put(b"a")])], True),
    ([put(b"a"), txn(failure=[put(b"a")])], True),
    ([txn([put(b"a")], [put(b"a")])], False),       # then/else exclusive
    ([txn([put(b"a")]), txn([put(b"a")])], True),
    ([txn([put(b"a")]), txn(failure=[put(b"a")])], True),
    ([dele(b"a", b"c"), txn([put(b"b")])], True),
    ([txn([dele(b"a", b"c")]), put(b"b")], True),
    ([txn([put(b"a")], [dele(b"a")])], False),
    ([txn([dele(b"a")], [put(b"a")])], False),
    ([txn([txn([put(b"a")])]), put(b"a")], True),
    ([{"range": {"key": b"a"}}, put(b"a")], False),
])
def test_duplicate_key(success, dup):
    for branch in ("success", "failure"):
        req = {"op": "txn", branch: success}
        if dup:
            with pytest.raises(DuplicateKey):
                n(req)
        else:
            n(req)


def test_duplicate_key_branches_are_separate():
    n({"op": "txn", "success": [put(b"a")], "failure": [put(b"a")]})


# --- garbage ---------------------------------------------------------------------------------
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
    st.binary(max_size=8), st.text(max_size=8),
    st.sampled_from(["range", "put", "delete_range", "txn", "compact", "status", "key",
                     "NONE", "ASCEND", "VALUE", "EQUAL", "\x00", b"\x00"]),
)
field_names = st.sampled_from([
    "op", "key", "range_end", "value", "limit", "revision", "sort_order", "sort_target",
    "prev_kv", "lease", "ignore_value", "ignore_lease", "compare", "success", "failure",
    "target", "result", "version", "create_revision", "mod_revision", "physical", "count_only",
    "keys_only", "min_mod_revision", "put", "range", "txn", "delete_range", "bogus",
]) | st.integers() | st.binary(max_size=3)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(field_names, inner, max_size=4),
    max_leaves=20,
)
ops = st.sampled_from(["range", "put", "delete_range", "txn", "compact", "status", "nope"])
requests = st.one_of(
    values,
    st.builds(lambda op, rest: {**rest, "op": op}, ops,
              st.dictionaries(field_names, values, max_size=6)),
)


@settings(max_examples=examples(2000), deadline=None, suppress_health_check=list(HealthCheck))
@given(requests)
def test_garbage_only_raises_qkv_errors(req):
    try:
        out = n(req)
    except QkvError:
        return
    assert isinstance(out, dict) and out["op"] in ("range", "put", "delete_range", "txn",
                                                   "compact", "status")
    # normalization is idempotent on its own output shape for non-txn ops
    if out["op"] not in ("txn", "status"):
        assert n(out) == out


txn_ops = st.deferred(lambda: st.one_of(
    st.builds(lambda k: {"put": {"key": k}}, st.sampled_from([b"a", b"b", b"c"])),
    st.builds(lambda k, e: {"delete_range": {"key": k, "range_end": e}},
              st.sampled_from([b"a", b"b"]), st.sampled_from([b"", b"b", b"c", b"\x00"])),
    st.builds(lambda s, f: {"txn": {"success": s, "failure": f}},
              st.lists(txn_ops, max_size=3), st.lists(txn_ops, max_size=3)),
))


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(txn_ops, max_size=4))
def test_valid_shaped_txns_only_raise_duplicate_key(success):
    try:
        n({"op": "txn", "success": success})
    except DuplicateKey:
        pass
    except InvalidArgument as exc:
        assert "nested" in exc.message
