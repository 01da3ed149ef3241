"""Table tests of the MVCC store's etcd v3 semantics, on MemoryBackend and RocksBackend."""
from __future__ import annotations

import pytest

from actors.storage.backend import RocksBackend
from actors.storage.mvcc import MemoryBackend, MVCCStore
from protocol.errors import (
    Compacted,
    FutureRevision,
    KeyNotFound,
    LeaseNotFound,
)
from mvcc_kv import KV, n


@pytest.fixture
def kv(kv_backend):
    return KV(kv_backend)


def kvmap(key, value, create, mod, version, lease=0):
    return {"key": key, "value": value, "create_revision": create, "mod_revision": mod,
            "version": version, "lease": lease}


# --- revisions, versions, generations -----------------------------------------------------
def test_fresh_store(kv):
    s = kv.store
    assert (s.applied_index, s.current_revision, s.compact_revision, s.key_count()) == (0, 1, 0, 0)
    assert kv.get(b"a") == {"kvs": [], "more": False, "count": 0}


def test_put_revisions_and_versions(kv):
    r = kv.put(b"a", b"1")
    assert r.revision == 2 and r.response == {}
    kv.put(b"b", b"2")
    r = kv.put(b"a", b"3")
    assert r.revision == 4
    assert kv.get(b"a")["kvs"] == [kvmap(b"a", b"3", 2, 4, 2)]
    assert kv.get(b"b")["kvs"] == [kvmap(b"b", b"2", 3, 3, 1)]
    assert kv.store.key_count() == 2


def test_delete_ends_generation_and_recreate(kv):
    kv.put(b"a", b"1")            # rev 2
    kv.put(b"a", b"2")            # rev 3
    r = kv.ok("delete_range", key=b"a", prev_kv=True)   # rev 4
    assert r.revision == 4
    assert r.response == {"deleted": 1, "prev_kvs": [kvmap(b"a", b"2", 2, 3, 2)]}
    assert r.events[0].type == "DELETE"
    assert r.events[0].kv == kvmap(b"a", b"", 0, 4, 0)
    assert kv.get(b"a")["count"] == 0
    kv.put(b"a", b"3")            # rev 5: new generation
    assert kv.get(b"a")["kvs"] == [kvmap(b"a", b"3", 5, 5, 1)]
    assert kv.get(b"a", revision=3)["kvs"] == [kvmap(b"a", b"2", 2, 3, 2)]
    assert kv.get(b"a", revision=4)["kvs"] == []
    assert kv.store.key_count() == 1


def test_delete_nothing_keeps_revision(kv):
    kv.put(b"a")
    r = kv.ok("delete_range", key=b"b")
    assert r.revision == 2 and r.response == {"deleted": 0} and r.events == []
    r = kv.ok("delete_range", key=b"b", range_end=b"c", prev_kv=True)
    assert r.response == {"deleted": 0, "prev_kvs": []}
    assert kv.store.current_revision == 2


def test_delete_range_forms(kv):
    for k in (b"a", b"ab", b"b", b"c", b"d"):
        kv.put(k)
    assert kv.ok("delete_range", key=b"a", range_end=b"b").response == {"deleted": 2}
    assert kv.keys() == [b"b", b"c", b"d"]
    assert kv.ok("delete_range", key=b"c", range_end=b"\x00").response == {"deleted": 2}
    assert kv.keys() == [b"b"]
    r = kv.ok("delete_range", key=b"a", range_end=b"c")
    assert r.revision == 9 and len(r.events) == 1


def test_multi_delete_is_one_revision_with_subs(kv):
    kv.put(b"a")
    kv.put(b"b")
    r = kv.ok("delete_range", key=b"\x00", range_end=b"\x00")
    assert r.revision == 4
    assert [e.kv["mod_revision"] for e in r.events] == [4, 4]
    assert kv.store.events_between(3, 4)[0][0] == 4
    assert len(kv.store.events_between(3, 4)[0][1]) == 2


# --- put options ---------------------------------------------------------------------------
def test_put_prev_kv(kv):
    assert kv.put(b"a", b"1", prev_kv=True).response == {}
    r = kv.put(b"a", b"2", prev_kv=True)
    assert r.response == {"prev_kv": kvmap(b"a", b"1", 2, 2, 1)}
    assert r.events[0].prev_kv == kvmap(b"a", b"1", 2, 2, 1)


def test_put_ignore_value_and_lease(kv):
    r = kv.do("put", key=b"a", ignore_value=True)
    assert isinstance(r.error, KeyNotFound) and r.revision == 1
    r = kv.do("put", key=b"a", value=b"x", ignore_lease=True)
    assert isinstance(r.error, KeyNotFound)
    kv.put(b"a", b"1")
    r = kv.ok("put", key=b"a", ignore_value=True)
    assert kv.get(b"a")["kvs"] == [kvmap(b"a", b"1", 2, 3, 2)]
    kv.ok("put", key=b"a", value=b"2", ignore_lease=True)
    assert kv.get(b"a")["kvs"] == [kvmap(b"a", b"2", 2, 4, 3)]


def test_put_unknown_lease(kv):
    r = kv.do("put", key=b"a", value=b"1", lease=7)
    assert isinstance(r.error, LeaseNotFound)
    assert r.revision == 1 and kv.store.current_revision == 1
    assert kv.store.applied_index == 1  # the entry is applied, as a failure


# --- range -----------------------------------------------------------------------------------
@pytest.fixture
def abc(kv):
    kv.put(b"a", b"3")   # rev 2
    kv.put(b"b", b"1")   # rev 3
    kv.put(b"c", b"2")   # rev 4
    kv.put(b"b", b"4")   # rev 5: b version 2
    kv.put(b"d\x00", b"0")  # rev 6
    return kv


def test_range_forms(abc):
    assert abc.keys(b"a", b"c") == [b"a", b"b"]
    assert abc.keys(b"b", b"\x00") == [b"b", b"c", b"d\x00"]
    assert abc.keys(b"\x00", b"\x00") == [b"a", b"b", b"c", b"d\x00"]
    assert abc.keys(b"c", b"a") == []
    assert abc.keys(b"d", b"e") == [b"d\x00"]
    assert abc.get(b"d")["count"] == 0


def test_range_limit_more_count(abc):
    r = abc.store.range(n("range", key=b"a", range_end=b"\x00", limit=2))
    assert [kv["key"] for kv in r["kvs"]] == [b"a", b"b"]
    assert r["more"] is True and r["count"] == 4
    r = abc.store.range(n("range", key=b"a", range_end=b"\x00", limit=4))
    assert r["more"] is False and r["count"] == 4 and len(r["kvs"]) == 4
    r = abc.store.range(n("range", key=b"a", range_end=b"\x00", count_only=True))
    assert r == {"kvs": [], "more": False, "count": 4}
    r = abc.store.range(n("range", key=b"a", range_end=b"\x00", keys_only=True, limit=1))
    assert r["kvs"] == [kvmap(b"a", b"", 2, 2, 1)]


def test_paged_list_counts_every_key_after_the_page(kv):
    """A paged list (limit) counts the keys after its page by the backend's own count: the
    same count as reading them, with deleted keys and keys past range_end left out."""
    for i in range(60):
        kv.put(b"p/%03d" % i, b"v")
    kv.put(b"q", b"outside")
    kv.ok("delete_range", key=b"p/010", range_end=b"p/020")
    key, pages, seen = b"p/", 0, []
    while True:
        r = kv.store.range(n("range", key=key, range_end=b"p0", limit=7))
        seen += [x["key"] for x in r["kvs"]]
        assert r["count"] == 50 - (len(seen) - len(r["kvs"]))
        pages += 1
        if not r["more"]:
            break
        key = r["kvs"][-1]["key"] + b"\x00"
    assert len(seen) == 50 and pages == 8
    assert kv.store.range(n("range", key=b"p/", range_end=b"p0", count_only=True))["count"] == 50
    assert kv.store.range(n("range", key=b"p/", range_end=b"\x00", count_only=True))["count"] == 51
    assert kv.store.range(n("range", key=b"p/", range_end=b"\x00", limit=1))["count"] == 51


@pytest.mark.parametrize("order,target,expect", [
    ("NONE", "KEY", [b"a", b"b", b"c", b"d\x00"]),
    ("ASCEND", "KEY", [b"a", b"b", b"c", b"d\x00"]),
    ("DESCEND", "KEY", [b"d\x00", b"c", b"b", b"a"]),
    ("NONE", "VALUE", [b"d\x00", b"c", b"a", b"b"]),
    ("DESCEND", "VALUE", [b"b", b"a", b"c", b"d\x00"]),
    ("ASCEND", "MOD", [b"a", b"c", b"b", b"d\x00"]),
    ("DESCEND", "CREATE", [b"d\x00", b"c", b"b", b"a"]),
    ("DESCEND", "VERSION", [b"b", b"a", b"c", b"d\x00"]),  # stable: ties keep key order
    ("ASCEND", "VERSION", [b"a", b"c", b"d\x00", b"b"]),
])
def test_range_sort(abc, order, target, expect):
    assert abc.keys(sort_order=order, sort_target=target) == expect


def test_range_sort_with_limit(abc):
    r = abc.store.range(n("range", key=b"\x00", range_end=b"\x00", sort_order="DESCEND",
                          limit=2))
    assert [kv["key"] for kv in r["kvs"]] == [b"d\x00", b"c"]
    assert r["more"] is True and r["count"] == 4


def test_range_filters(abc):
    assert abc.keys(min_mod_revision=4) == [b"b", b"c", b"d\x00"]
    assert abc.keys(max_mod_revision=4) == [b"a", b"c"]
    assert abc.keys(min_create_revision=3, max_create_revision=4) == [b"b", b"c"]
    r = abc.store.range(n("range", key=b"\x00", range_end=b"\x00", min_mod_revision=4,
                          limit=1))
    assert [kv["key"] for kv in r["kvs"]] == [b"b"]
    assert r["count"] == 4 and r["more"] is True
    r = abc.store.range(n("range", key=b"\x00", range_end=b"\x00", min_mod_revision=6,
                          limit=1))
    assert r["more"] is False and r["count"] == 4


def test_range_past_revisions(abc):
    assert abc.keys(revision=1) == []
    assert abc.keys(revision=3) == [b"a", b"b"]
    assert abc.kvs(revision=4) == [kvmap(b"a", b"3", 2, 2, 1), kvmap(b"b", b"1", 3, 3, 1),
                                  kvmap(b"c", b"2", 4, 4, 1)]
    assert abc.get(b"b", revision=4)["kvs"] == [kvmap(b"b", b"1", 3, 3, 1)]
    assert abc.get(b"b", revision=5)["kvs"] == [kvmap(b"b", b"4", 3, 5, 2)]
    r = abc.store.range(n("range", key=b"a", range_end=b"\x00", revision=5, limit=1))
    assert r["count"] == 3 and r["more"] is True
    assert abc.keys(b"b", b"c", revision=5) == [b"b"]


def test_range_future_revision(abc):
    with pytest.raises(FutureRevision) as exc:
        abc.get(b"a", revision=7)
    assert exc.value.details == {"current_revision": 6}
    assert abc.get(b"a", revision=6)["count"] == 1


# --- compaction ----------------------------------------------------------------------------
def test_compaction(kv):
    kv.put(b"a", b"1")                     # 2
    kv.put(b"a", b"2")                     # 3
    kv.put(b"b", b"1")                     # 4
    kv.ok("delete_range", key=b"b")        # 5
    kv.put(b"c", b"1")                     # 6
    kv.put(b"a", b"3")                     # 7
    r = kv.ok("compact", revision=5)
    assert r.revision == 7 and r.response == {} and r.events == []
    assert kv.store.compact_revision == 5
    with pytest.raises(Compacted) as exc:
        kv.get(b"a", revision=4)
    assert exc.value.details == {"compact_revision": 5}
    assert kv.kvs(revision=5) == [kvmap(b"a", b"2", 2, 3, 2)]
    assert kv.keys(revision=6) == [b"a", b"c"]
    assert kv.kvs() == [kvmap(b"a", b"3", 2, 7, 3), kvmap(b"c", b"1", 6, 6, 1)]
    r = kv.do("compact", revision=5)
    assert isinstance(r.error, Compacted) and r.error.details == {"compact_revision": 5}
    r = kv.do("compact", revision=8)
    assert isinstance(r.error, FutureRevision) and r.error.details == {"current_revision": 7}
    # history is gone below the compact revision, events after it remain
    with pytest.raises(Compacted):
        kv.store.events_between(4, 7)
    evs = kv.store.events_between(5, 7)
    assert [rev for rev, _ in evs] == [6, 7]
    assert evs[1][1][0].prev_kv == kvmap(b"a", b"2", 2, 3, 2)
    kv.ok("compact", revision=7)
    assert kv.kvs(revision=7) == kv.kvs()
    assert kv.store.events_between(7, 7) == []


def test_compaction_removes_history_rows(kv):
    if not isinstance(kv.backend, MemoryBackend):
        pytest.skip("inspects MemoryBackend rows")
    for i in range(5):
        kv.put(b"k", b"%d" % i)
    kv.ok("delete_range", key=b"k")
    kv.put(b"j")
    kv.ok("compact", revision=kv.store.current_revision)
    assert kv.store.compaction_pending  # the apply is logical; the rows go in slices
    while kv.store.compact_step(2):
        pass
    assert not kv.store.compaction_pending
    assert list(kv.backend.iterate("rev", b"")) == []
    hist = list(kv.backend.iterate("hist", b""))
    assert len(hist) == 1  # only j's put survives; k ended with a tombstone
    assert kv.store.events_between(kv.store.current_revision, 100) == []


def test_compact_zero_and_first(kv):
    r = kv.do("compact", revision=0)
    assert isinstance(r.error, Compacted)
    kv.ok("compact", revision=1)
    assert kv.store.compact_revision == 1


# --- txn -------------------------------------------------------------------------------------
def test_txn_success_and_failure(kv):
    kv.put(b"a", b"1")  # 2
    txn = dict(compare=[{"key": b"a", "target": "VALUE", "result": "EQUAL", "value": b"1"}],
               success=[{"put": {"key": b"b", "value": b"x"}}, {"range": {"key": b"b"}},
                        {"put": {"key": b"c", "value": b"y", "prev_kv": True}}],
               failure=[{"range": {"key": b"a"}}])
    r = kv.ok("txn", **txn)
    assert r.revision == 3
    assert r.response["succeeded"] is True
    resps = r.response["responses"]
    assert resps[0] == {"put": {}}
    assert resps[1] == {"range": {"kvs": [kvmap(b"b", b"x", 3, 3, 1)], "more": False,
                                  "count": 1}}
    assert resps[2] == {"put": {}}
    assert [(e.kv["key"], e.kv["mod_revision"]) for e in r.events] == [(b"b", 3), (b"c", 3)]
    assert [len(evs) for _, evs in kv.store.events_between(2, 3)] == [2]
    r = kv.ok("txn", **txn)  # a is still 1 -> success again, but b/c now exist
    assert r.revision == 4
    kv.put(b"a", b"2")   # 5
    r = kv.ok("txn", **txn)
    assert r.response == {"succeeded": False, "responses": [
        {"range": {"kvs": [kvmap(b"a", b"2", 2, 5, 2)], "more": False, "count": 1}}]}
    assert r.revision == 5 and r.events == []  # a read-only branch writes nothing


def test_txn_empty(kv):
    r = kv.ok("txn")
    assert r.response == {"succeeded": True, "responses": []} and r.revision == 1


@pytest.mark.parametrize("target,field,result,operand,expect", [
    ("VERSION", "version", "EQUAL", 2, True),
    ("VERSION", "version", "GREATER", 1, True),
    ("VERSION", "version", "LESS", 2, False),
    ("VERSION", "version", "NOT_EQUAL", 2, False),
    ("CREATE", "create_revision", "EQUAL", 2, True),
    ("MOD", "mod_revision", "EQUAL", 3, True),
    ("MOD", "mod_revision", "LESS", 3, False),
    ("VALUE", "value", "EQUAL", b"v2", True),
    ("VALUE", "value", "GREATER", b"v1", True),
    ("VALUE", "value", "LESS", b"v1", False),
    ("LEASE", "lease", "EQUAL", 0, True),
])
def test_txn_compares_on_existing_key(kv, target, field, result, operand, expect):
    kv.put(b"a", b"v1")
    kv.put(b"a", b"v2")
    r = kv.ok("txn", compare=[{"key": b"a", "target": target, "result": result,
                               field: operand}])
    assert r.response["succeeded"] is expect


@pytest.mark.parametrize("target,field,result,operand,expect", [
    ("VERSION", "version", "EQUAL", 0, True),
    ("CREATE", "create_revision", "EQUAL", 0, True),
    ("MOD", "mod_revision", "LESS", 1, True),
    ("LEASE", "lease", "EQUAL", 0, True),
    ("VALUE", "value", "EQUAL", b"", False),
    ("VALUE", "value", "NOT_EQUAL", b"x", False),
])
def test_txn_compares_on_missing_key(kv, target, field, result, operand, expect):
    r = kv.ok("txn", compare=[{"key": b"zz", "target": target, "result": result,
                               field: operand}])
    assert r.response["succeeded"] is expect


def test_txn_range_compare(kv):
    kv.put(b"p/a", b"1")
    kv.put(b"p/b", b"1")
    kv.put(b"q", b"2")
    eq1 = {"key": b"p/", "range_end": b"p0", "target": "VALUE", "value": b"1"}
    assert kv.ok("txn", compare=[eq1]).response["succeeded"] is True
    kv.put(b"p/c", b"3")
    assert kv.ok("txn", compare=[eq1]).response["succeeded"] is False
    gt = {"key": b"p/", "range_end": b"p0", "target": "MOD", "result": "GREATER",
          "mod_revision": 1}
    assert kv.ok("txn", compare=[gt]).response["succeeded"] is True
    empty = {"key": b"x", "range_end": b"y", "target": "VERSION", "version": 0}
    assert kv.ok("txn", compare=[empty]).response["succeeded"] is True


def test_txn_nested_and_reads_own_writes(kv):
    kv.put(b"a", b"1")  # 2
    r = kv.ok("txn", success=[
        {"delete_range": {"key": b"a"}},
        {"put": {"key": b"b", "value": b"1"}},
        {"txn": {
            # nested compares see the state before the outer txn ran (etcd's compareToPath)
            "compare": [{"key": b"a", "target": "VERSION", "result": "EQUAL", "version": 1}],
            "success": [{"put": {"key": b"c", "value": b"2"}},
                        {"range": {"key": b"a", "range_end": b"\x00"}}],
            "failure": [{"put": {"key": b"d"}}],
        }},
        {"range": {"key": b"\x00", "range_end": b"\x00", "count_only": True}},
    ])
    assert r.revision == 3
    resp = r.response
    assert resp["responses"][0] == {"delete_range": {"deleted": 1}}
    nested = resp["responses"][2]["txn"]
    assert nested["succeeded"] is True
    assert [kv_["key"] for kv_ in nested["responses"][1]["range"]["kvs"]] == [b"b", b"c"]
    assert resp["responses"][3]["range"]["count"] == 2
    assert [(e.type, e.kv["key"]) for e in r.events] == [
        ("DELETE", b"a"), ("PUT", b"b"), ("PUT", b"c")]
    assert kv.keys() == [b"b", b"c"]
    (rev, evs), = kv.store.events_between(2, 3)
    assert rev == 3 and [(e.type, e.kv["key"]) for e in evs] == [
        ("DELETE", b"a"), ("PUT", b"b"), ("PUT", b"c")]


def test_txn_failure_inside_changes_nothing(kv):
    kv.put(b"a", b"1")
    r = kv.do("txn", success=[{"put": {"key": b"b"}}, {"put": {"key": b"c", "lease": 5}}])
    assert isinstance(r.error, LeaseNotFound)
    assert r.revision == 2 and kv.keys() == [b"a"]
    r = kv.do("txn", success=[{"put": {"key": b"b"}},
                              {"range": {"key": b"a", "revision": 1}}])
    assert r.error is None  # revision 1 is not compacted
    kv.ok("compact", revision=2)
    r = kv.do("txn", success=[{"put": {"key": b"x"}},
                              {"range": {"key": b"a", "revision": 1}}])
    assert isinstance(r.error, Compacted)
    assert b"x" not in kv.keys()
    r = kv.do("txn", success=[{"put": {"key": b"y"}},
                              {"put": {"key": b"zz", "ignore_value": True}}])
    assert isinstance(r.error, KeyNotFound) and b"y" not in kv.keys()


def test_txn_range_at_own_revision(kv):
    kv.put(b"a", b"1")  # 2
    r = kv.ok("txn", success=[{"put": {"key": b"a", "value": b"2"}},
                              {"range": {"key": b"a", "revision": 2}},
                              {"range": {"key": b"a", "revision": 3}}])
    assert r.response["responses"][1]["range"]["kvs"][0]["value"] == b"1"
    assert r.response["responses"][2]["range"]["kvs"][0]["value"] == b"2"
    r = kv.do("txn", success=[{"range": {"key": b"a", "revision": 4}}])
    assert isinstance(r.error, FutureRevision)


# --- apply: batches, replay, atomicity ------------------------------------------------------
def test_apply_batch_reads_earlier_entries_and_skips_applied(kv):
    ops = [(1, n("put", key=b"a", value=b"1")), (2, None),
           (3, n("put", key=b"a", value=b"2", prev_kv=True)),
           (4, n("txn", compare=[{"key": b"a", "target": "VALUE", "value": b"2"}],
                 success=[{"delete_range": {"key": b"a"}}])),
           (5, n("range", key=b"a"))]
    res = kv.store.apply(ops)
    assert [r.index for r in res] == [1, 2, 3, 4, 5]
    assert [r.revision for r in res] == [2, 2, 3, 4, 4]
    assert res[1].response is None and res[1].error is None
    assert res[2].response["prev_kv"]["value"] == b"1"
    assert res[3].response["succeeded"] is True
    assert res[4].response["count"] == 0
    assert kv.store.apply(ops) == []  # replay: nothing applied twice
    res = kv.store.apply(ops + [(6, n("put", key=b"b"))])
    assert [r.index for r in res] == [6] and res[0].revision == 5
    kv.restart()
    assert (kv.store.applied_index, kv.store.current_revision) == (6, 5)
    assert kv.keys() == [b"b"]


def test_apply_gap_is_a_bug(kv):
    with pytest.raises(AssertionError):
        kv.store.apply([(2, None)])


def test_failed_backend_write_changes_nothing():
    be = MemoryBackend()
    s = MVCCStore(be)
    be.fail_next_write = True
    with pytest.raises(IOError):
        s.apply([(1, n("put", key=b"a"))])
    assert (s.applied_index, s.current_revision) == (0, 1)
    res = s.apply([(1, n("put", key=b"a"))])
    assert res[0].revision == 2


def test_restart_keeps_state(kv):
    kv.put(b"a", b"1")
    kv.put(b"b", b"2")
    kv.ok("delete_range", key=b"a")
    kv.ok("compact", revision=3)
    h = kv.store.hash_kv()
    kv.restart()
    s = kv.store
    assert (s.applied_index, s.current_revision, s.compact_revision, s.key_count()) == (4, 4, 3, 1)
    assert kv.store.hash_kv() == h
    assert kv.keys() == [b"b"]


def test_hash_kv(kv):
    kv.put(b"a", b"1")
    h2 = kv.store.hash_kv()
    assert h2[1] == 2
    kv.put(b"b", b"1")
    assert kv.store.hash_kv(2) == h2
    assert kv.store.hash_kv()[0] != h2[0]
    kv.ok("compact", revision=2)
    assert kv.store.hash_kv(2) == h2  # compaction keeps the keyspace as of 2
    with pytest.raises(Compacted):
        kv.store.hash_kv(1)
    with pytest.raises(FutureRevision):
        kv.store.hash_kv(9)


def test_same_entries_same_hash_on_both_backends(tmp_path):
    ops = [n("put", key=b"k%d" % (i % 7), value=b"%d" % i) for i in range(40)]
    ops += [n("delete_range", key=b"k2", range_end=b"k5"), n("compact", revision=20)]
    stores = []
    rb = RocksBackend(tmp_path / "db")
    for be in (MemoryBackend(), rb):
        s = MVCCStore(be)
        s.apply([(i + 1, op) for i, op in enumerate(ops[:10])])
        s.apply([(i + 11, op) for i, op in enumerate(ops[10:])])
        stores.append(s)
    assert stores[0].hash_kv() == stores[1].hash_kv()
    assert stores[0].hash_kv(30) == stores[1].hash_kv(30)
    assert stores[0].events_between(20, 100) == stores[1].events_between(20, 100)
    rb.close()


def test_meta_values(kv):
    assert kv.store.get_meta("member_id") is None
    kv.store.put_meta("member_id", b"\x01")
    kv.restart()
    assert kv.store.get_meta("member_id") == b"\x01"
    assert kv.store.applied_index == 0


def test_keys_with_zero_bytes_order(kv):
    for k in (b"a", b"a\x00", b"a\x00\x00", b"a\x00b", b"a\x01", b"a\xff", b"\x00"):
        kv.put(k, k)
    kv.put(b"zz")
    want = sorted([b"a", b"a\x00", b"a\x00\x00", b"a\x00b", b"a\x01", b"a\xff", b"\x00"])
    rev = kv.store.current_revision - 1
    assert kv.keys(revision=rev) == want
    assert kv.keys(b"a\x00", b"a\x01", revision=rev) == [b"a\x00", b"a\x00\x00", b"a\x00b"]
    assert kv.keys(b"a\x00", b"a\x00\x00", revision=rev) == [b"a\x00"]
    assert kv.get(b"a\x00", revision=rev)["kvs"][0]["value"] == b"a\x00"
