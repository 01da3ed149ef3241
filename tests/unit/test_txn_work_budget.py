"""Work per request at apply (issue 12 item 3, SPEC `txn`): the keys a txn examines are
bounded by the entry's `max_txn_keys`; past it the txn fails as a whole with
`too_many_ops`, changes nothing, and the same on every member. Also the pending-write
index of the store's `_View` against a plain model."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.runtime.entry import InvalidEntry
from actors.runtime.entry_ops import validate_entry_op
from actors.storage.mvcc import MemoryBackend, MVCCStore
from actors.storage.mvcc.store import _View
from protocol.errors import TooManyOps
from protocol.requests import Limits, normalize_request
from tests.lanes import examples


def txn(limit: int | None, compare=(), success=(), failure=()) -> dict:
    op = normalize_request({"op": "txn", "compare": list(compare), "success": list(success),
                            "failure": list(failure)}, Limits(max_txn_keys=limit or 1))
    if limit is None:
        del op["max_txn_keys"]  # an entry written before the rule
    return op


def put_op(key: bytes, value: bytes = b"v") -> dict:
    return normalize_request({"op": "put", "key": key, "value": value}, Limits())


def rng(key: bytes, end: bytes, **kw) -> dict:
    return {"range": {"key": key, "range_end": end, **kw}}


def cmp_range(key: bytes, end: bytes) -> dict:
    return {"key": key, "range_end": end, "target": "VERSION", "result": "GREATER", "version": 0}


def loaded(n: int, versions: int = 1) -> MVCCStore:
    store = MVCCStore(MemoryBackend())
    entries = []
    for v in range(versions):
        for i in range(n):
            entries.append((len(entries) + 1, put_op(b"k/%04d" % i, b"v%d" % v)))
    store.apply(entries)
    return store


def rows(store: MVCCStore) -> dict:
    data = store.backend._data  # MemoryBackend rows, every column family
    return {cf: dict(d) for cf, d in data.items()}


def apply_one(store: MVCCStore, op: dict):
    (res,) = store.apply([(store.applied_index + 1, op)])
    return res


# --- what counts -------------------------------------------------------------------------
def test_range_compare_counts_every_key_of_its_range():
    store = loaded(10)
    assert apply_one(store, txn(10, [cmp_range(b"k/", b"k0")])).error is None
    res = apply_one(store, txn(9, [cmp_range(b"k/", b"k0")]))
    assert isinstance(res.error, TooManyOps)
    assert res.error.details == {"limit": 9} and "--max-txn-keys" in res.error.message


def test_budget_is_summed_over_compares_ranges_deletes_and_nested_txns():
    store = loaded(10)
    # compare over 10 + range over 10 (count past its limit too) + delete of 5
    # + a nested txn's single-key compare (1) and single-key range (1) = 27
    ops = dict(
        compare=[cmp_range(b"k/", b"k0")],
        success=[rng(b"k/", b"k0", limit=1), {"delete_range": {"key": b"k/0000", "range_end": b"k/0005"}},
                 {"txn": {"compare": [{"key": b"k/0007"}], "failure": [{"range": {"key": b"k/0008"}}]}}],
    )
    before = rows(store)
    res = apply_one(store, txn(26, **ops))
    assert isinstance(res.error, TooManyOps)
    assert rows(store)["key"] == before["key"] and store.current_revision == 11
    res = apply_one(store, txn(27, **ops))
    assert res.error is None and res.response["succeeded"]
    assert res.response["responses"][0]["range"]["count"] == 10
    assert res.response["responses"][1]["delete_range"]["deleted"] == 5


def test_ranges_at_an_older_revision_count_every_version_they_step_over():
    store = loaded(5, versions=3)  # 15 stored versions, revisions 2..16
    old = rng(b"k/", b"k0", revision=8)
    assert apply_one(store, txn(15, success=[old])).error is None
    assert isinstance(apply_one(store, txn(14, success=[old])).error, TooManyOps)


def test_only_the_executed_branch_counts():
    """A single-key compare and a single-key range: 2; the failure branch's range is not run."""
    store = loaded(10)
    heavy = rng(b"k/", b"k0")
    res = apply_one(store, txn(2, compare=[{"key": b"k/0001", "target": "VERSION", "result": "EQUAL",
                                           "version": 1}],
                               success=[{"range": {"key": b"k/0002"}}], failure=[heavy]))
    assert res.error is None


def test_entries_without_the_field_have_no_limit():
    store = loaded(50)
    res = apply_one(store, txn(None, [cmp_range(b"k/", b"k0")] * 3, [rng(b"k/", b"k0")]))
    assert res.error is None


# --- a refused txn changes nothing, the same on every member --------------------------------
def test_refused_txn_leaves_no_partial_writes_and_the_batch_goes_on():
    store = loaded(20)
    before = rows(store)
    rev = store.current_revision
    bad = txn(10, success=[{"put": {"key": b"new1", "value": b"x"}},
                           {"delete_range": {"key": b"k/0000", "range_end": b"k/0003"}},
                           {"put": {"key": b"new2", "value": b"x"}},
                           {"delete_range": {"key": b"k/0005", "range_end": b"k0"}}])  # 3 + 15 > 10
    i = store.applied_index
    results = store.apply([(i + 1, put_op(b"before")), (i + 2, bad), (i + 3, put_op(b"after"))])
    assert [r.error is None for r in results] == [True, False, True]
    assert isinstance(results[1].error, TooManyOps) and results[1].events == []
    assert results[1].revision == rev + 1 and results[2].revision == rev + 2
    after = rows(store)
    assert set(after["key"]) - set(before["key"]) == {b"before", b"after"}
    assert all(after["key"][k] == v for k, v in before["key"].items())
    assert store.key_count() == 22


def test_two_members_give_the_same_results():
    def run() -> tuple:
        store = loaded(30)
        i = store.applied_index
        wipe = [{"delete_range": {"key": b"k/", "range_end": b"k0"}}]
        entries = [(i + 1, txn(25, [cmp_range(b"k/", b"k0")])),            # 30 > 25
                   (i + 2, txn(59, [cmp_range(b"k/", b"k0")], wipe)),      # 30 + 30 > 59
                   (i + 3, txn(60, [cmp_range(b"k/", b"k0")], wipe)),      # 60: deletes all
                   (i + 4, txn(1, [cmp_range(b"k/", b"k0")], wipe))]       # nothing left: 0
        results = store.apply(entries)
        return ([(r.revision, r.error and r.error.to_wire(), r.response) for r in results],
                rows(store), store.hash_kv())

    first, second = run(), run()
    assert first == second
    outcome = [e and e["code"] for _, e, _ in first[0]]
    assert outcome == ["too_many_ops", "too_many_ops", None, None]
    assert first[0][2][2]["responses"][0]["delete_range"]["deleted"] == 30


# --- the entry check ----------------------------------------------------------------------
def test_entry_check_takes_max_txn_keys_at_the_top_only():
    op = txn(100, success=[{"txn": {"success": [{"put": {"key": b"a"}}]}}])
    validate_entry_op(op)
    validate_entry_op(txn(None))
    for bad in (0, -1, True, "5", 2**63):
        with pytest.raises(InvalidEntry):
            validate_entry_op(dict(op, max_txn_keys=bad))
    nested = dict(op, success=[dict(op["success"][0], max_txn_keys=5)])
    with pytest.raises(InvalidEntry):
        validate_entry_op(nested)


def test_gateway_limits_go_into_the_entry():
    assert normalize_request({"op": "txn"}, Limits(max_txn_keys=77))["max_txn_keys"] == 77
    with pytest.raises(Exception):  # a client cannot set it
        normalize_request({"op": "txn", "max_txn_keys": 10**9}, Limits())


# --- the pending-write index of _View -------------------------------------------------------
KEYS = [b"a", b"b", b"ba", b"c", b"d", b"e"]
view_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.sampled_from([None, b"1", b"2"])),
    st.tuples(st.just("iter"), st.sampled_from(KEYS), st.sampled_from([*KEYS, None]), st.booleans()),
    st.tuples(st.just("push")), st.tuples(st.just("commit")), st.tuples(st.just("discard")),
), max_size=40)


@settings(max_examples=examples(400), deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), st.just(b"0")), view_ops)
def test_view_iterate_matches_a_plain_model(base, ops):
    backend = MemoryBackend()
    backend.write([("c", k, v) for k, v in base.items()])
    view = _View(backend)
    model = [dict(base)]  # layer 0 = backend + the call's writes; one dict per layer

    def visible() -> dict:
        out: dict = {}
        for layer in model:
            out.update(layer)
        return {k: v for k, v in out.items() if v is not None}

    for op in ops:
        if op[0] == "put":
            view.put("c", op[1], op[2])
            model[-1][op[1]] = op[2]
        elif op[0] == "push":
            view.push()
            model.append({})
        elif op[0] in ("commit", "discard"):
            if len(model) == 1:
                continue
            getattr(view, op[0])()
            top = model.pop()
            if op[0] == "commit":
                model[-1].update(top)
        else:
            _, start, end, reverse = op
            want = sorted(((k, v) for k, v in visible().items() if k >= start and (end is None or k < end)),
                          reverse=reverse)
            assert list(view.iterate("c", start, end, reverse)) == want
    while len(model) > 1:
        view.commit()
        top = model.pop()
        model[-1].update(top)
    got = dict(base)
    for _cf, k, v in view.batch():
        got[k] = v
    assert {k: v for k, v in got.items() if v is not None} == visible()
