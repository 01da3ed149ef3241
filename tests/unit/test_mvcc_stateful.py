"""The MVCC store against a plain model: one dict snapshot of the keyspace per revision.

Ops are queued and applied in random batch sizes (with random replay of the last batch,
as after a crash); the store is reopened from its backend mid-run; every read at any
revision (compacted and future ones too) and the event history are checked against the
model.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from actors.storage.backend import RocksBackend
from actors.storage.mvcc import MemoryBackend, MVCCStore
from protocol.errors import Compacted, DuplicateKey, FutureRevision
from protocol.requests import Limits, normalize_request
from tests.lanes import examples

KEYS = [b"a", b"a\x00", b"b", b"c", b"d"]
keys = st.sampled_from(KEYS)
ends = st.sampled_from([b"", b"\x00", b"b", b"c", b"e", b"a"])
values = st.sampled_from([b"", b"1", b"2", b"3"])


def norm(req):
    return normalize_request(req, Limits())


def in_range(k, key, end):
    if not end:
        return k == key
    if end == b"\x00":
        return k >= key
    return key <= k < end


def kv(key, rec):
    value, create, mod, version = rec
    return {"key": key, "value": value, "create_revision": create, "mod_revision": mod,
            "version": version, "lease": 0}


class Model:
    """``snaps[r]`` is the keyspace at revision r: key -> (value, create, mod, version)."""

    def __init__(self):
        self.snaps = [None, {}]  # revision 0 unused
        self.compact = 0

    @property
    def current(self):
        return len(self.snaps) - 1

    def range(self, snap, key, end, limit=0):
        ks = sorted(k for k in snap if in_range(k, key, end))
        kvs = [kv(k, snap[k]) for k in ks]
        more = 0 < limit < len(kvs)
        return {"kvs": kvs[:limit] if limit else kvs, "more": more, "count": len(kvs)}

    def apply(self, op):
        """-> (response, error class or None); appends a snapshot when the op wrote."""
        kind = op["op"]
        if kind == "compact":
            rev = op["revision"]
            if rev <= self.compact:
                return None, Compacted
            if rev > self.current:
                return None, FutureRevision
            self.compact = rev
            return {}, None
        work = dict(self.snaps[-1])
        rev = self.current + 1
        wrote = [False]
        resp = self._exec(op, work, rev, wrote)
        if wrote[0]:
            self.snaps.append(work)
        return resp, None

    def _exec(self, op, work, rev, wrote):
        kind = op["op"]
        if kind == "put":
            prev = work.get(op["key"])
            work[op["key"]] = (op["value"], prev[1] if prev else rev, rev,
                               prev[3] + 1 if prev else 1)
            wrote[0] = True
            return {"prev_kv": kv(op["key"], prev)} if op["prev_kv"] and prev else {}
        if kind == "delete_range":
            victims = sorted(k for k in work if in_range(k, op["key"], op["range_end"]))
            for k in victims:
                del work[k]
            wrote[0] = wrote[0] or bool(victims)
            return {"deleted": len(victims)}
        if kind == "range":
            return self.range(work, op["key"], op["range_end"], op["limit"])
        assert kind == "txn"
        ok = all(self._compare(c) for c in op["compare"])
        branch = op["success"] if ok else op["failure"]
        return {"succeeded": ok,
                "responses": [{o["op"]: self._exec(o, work, rev, wrote)} for o in branch]}

    def _compare(self, c):
        rec = self.snaps[-1].get(c["key"])
        if c["target"] == "VALUE":
            if rec is None:
                return False
            have, want = rec[0], c["value"]
        elif c["target"] == "VERSION":
            have, want = (rec[3] if rec else 0), c["version"]
        else:
            have, want = (rec[2] if rec else 0), c["mod_revision"]
        return {"EQUAL": have == want, "NOT_EQUAL": have != want, "GREATER": have > want,
                "LESS": have < want}[c["result"]]


simple_ops = st.one_of(
    st.builds(lambda k, v: {"put": {"key": k, "value": v}}, keys, values),
    st.builds(lambda k, e: {"delete_range": {"key": k, "range_end": e}}, keys, ends),
    st.builds(lambda k, e, lim: {"range": {"key": k, "range_end": e, "limit": lim}},
              keys, ends, st.integers(0, 3)),
)
compares = st.one_of(
    st.builds(lambda k, r, v: {"key": k, "target": "VERSION", "result": r, "version": v},
              keys, st.sampled_from(["EQUAL", "NOT_EQUAL", "GREATER", "LESS"]),
              st.integers(0, 3)),
    st.builds(lambda k, r, v: {"key": k, "target": "VALUE", "result": r, "value": v},
              keys, st.sampled_from(["EQUAL", "GREATER", "LESS"]), values),
    st.builds(lambda k, v: {"key": k, "target": "MOD", "result": "LESS", "mod_revision": v},
              keys, st.integers(0, 20)),
)


class StoreMachine(RuleBasedStateMachine):
    make_backend = staticmethod(lambda prev: prev if prev is not None else MemoryBackend())

    def __init__(self):
        super().__init__()
        self.backend = self.make_backend(None)
        self.store = MVCCStore(self.backend)
        self.model = Model()
        self.pending: list[tuple[dict, tuple]] = []  # (op, expected (response, error))
        self.index = 0
        self.last_batch: list[tuple[int, dict | None]] = []

    def teardown(self):
        self.backend.close()

    def queue(self, req):
        try:
            op = norm(req)
        except DuplicateKey:
            return
        self.pending.append((op, self.model.apply(op), self.model.current))

    @rule(k=keys, v=values, prev=st.booleans())
    def put(self, k, v, prev):
        self.queue({"op": "put", "key": k, "value": v, "prev_kv": prev})

    @rule(k=keys, e=ends)
    def delete(self, k, e):
        self.queue({"op": "delete_range", "key": k, "range_end": e})

    @rule(cmp=st.lists(compares, max_size=2), succ=st.lists(simple_ops, max_size=3),
          fail=st.lists(simple_ops, max_size=2))
    def txn(self, cmp, succ, fail):
        self.queue({"op": "txn", "compare": cmp, "success": succ, "failure": fail})

    @rule(data=st.data())
    def compact(self, data):
        rev = data.draw(st.integers(max(0, self.model.compact - 1), self.model.current + 1))
        self.queue({"op": "compact", "revision": rev})

    @rule()
    def empty_entry(self):
        self.pending.append((None, (None, None), self.model.current))

    @rule(replay=st.booleans())
    def flush(self, replay):
        self._flush(replay)

    def _flush(self, replay=False):
        batch = []
        for op, _, _ in self.pending:
            self.index += 1
            batch.append((self.index, op))
        entries = (self.last_batch if replay else []) + batch
        results = self.store.apply(entries)
        assert [r.index for r in results] == [i for i, _ in batch]
        for r, (op, (resp, err), rev) in zip(results, self.pending):
            assert r.revision == rev
            if err is None:
                assert r.error is None, (op, r.error)
                assert r.response == resp, op
            else:
                assert isinstance(r.error, err), (op, r.error)
                assert r.response is None and r.events == []
        self.pending = []
        self.last_batch = batch or self.last_batch

    @rule()
    def restart(self):
        self._flush()
        self.backend = self.make_backend(self.backend)
        self.store = MVCCStore(self.backend)

    @rule(k=keys, e=ends, data=st.data(), limit=st.integers(0, 3))
    def range(self, k, e, data, limit):
        self._flush()
        m = self.model
        rev = data.draw(st.integers(0, m.current + 1))
        op = norm({"op": "range", "key": k, "range_end": e, "revision": rev, "limit": limit})
        if rev > m.current:
            with pytest.raises(FutureRevision):
                self.store.range(op)
        elif 0 < rev < m.compact:
            with pytest.raises(Compacted):
                self.store.range(op)
        else:
            snap = m.snaps[rev or m.current]
            assert self.store.range(op) == m.range(snap, k, e, limit)

    @precondition(lambda self: not self.pending)
    @invariant()
    def state_matches(self):
        m = self.model
        assert self.store.current_revision == m.current
        assert self.store.compact_revision == m.compact
        assert self.store.key_count() == len(m.snaps[-1])

    @rule()
    def events_replay_history(self):
        self._flush()
        m = self.model
        start = m.compact
        snap = dict(m.snaps[max(start, 1)])
        for rev, events in self.store.events_between(start, m.current):
            assert start < rev <= m.current
            for ev in events:
                if ev.type == "PUT":
                    kvd = ev.kv
                    assert (ev.prev_kv is None) == (kvd["key"] not in snap)
                    snap[kvd["key"]] = (kvd["value"], kvd["create_revision"],
                                        kvd["mod_revision"], kvd["version"])
                else:
                    assert ev.prev_kv == kv(ev.kv["key"], snap[ev.kv["key"]])
                    del snap[ev.kv["key"]]
            assert snap == m.snaps[rev]
        assert snap == m.snaps[-1]
        if start > 0:
            with pytest.raises(Compacted):
                self.store.events_between(start - 1, m.current)


StoreMachine.TestCase.settings = settings(
    max_examples=examples(200), stateful_step_count=80, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestStoreOnMemory = StoreMachine.TestCase


@pytest.fixture
def rocks_machine(tmp_path_factory):
    class RocksMachine(StoreMachine):
        def __init__(self):
            self.path = tmp_path_factory.mktemp("db")
            super().__init__()

        def make_backend(self, prev):
            if prev is not None:
                prev.close()
            return RocksBackend(self.path)

    RocksMachine.TestCase.settings = settings(
        max_examples=examples(12), stateful_step_count=40, deadline=None,
        suppress_health_check=[HealthCheck.too_slow])
    return RocksMachine


def test_store_on_rocks(rocks_machine):
    rocks_machine.TestCase().runTest()
