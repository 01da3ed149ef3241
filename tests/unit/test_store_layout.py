"""The store's on-disk layout (mvcc/store.py docstring, "On-disk layout"): each version's
record is stored once (the newest in ``key``, older ones in ``hist``, ``rev`` holds only
``[key, is_tombstone]``), and stores written by the older layout (full records in all
three families) read the same without any migration.

Correctness is checked against what the store computed when it applied each change
(``ApplyResult.events``, built in memory from the records it wrote), so history, watch
catch-up and prev_kv cannot drift from what watchers saw live.
"""
from __future__ import annotations

import random
import struct

import msgpack
import pytest

from actors.storage.mvcc import MVCCStore
from actors.storage.mvcc.keys import hist_key
from actors.storage.mvcc.memory import MemoryBackend
from actors.storage.mvcc.revision import rev_bytes
from actors.storage.mvcc.store import CF_HIST, CF_KEY, CF_META, CF_REV, META_APPLIED_INDEX, \
    META_CURRENT_REVISION, META_KEY_COUNT, META_LAYOUT
from mvcc_kv import KV, n

_U64 = struct.Struct(">Q")


@pytest.fixture
def kv(kv_backend):
    return KV(kv_backend)


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _ev(e) -> tuple:
    return (e.type, e.kv, e.prev_kv)


def _hist_ev(e: dict) -> tuple:
    return (e["type"], e["kv"], e.get("prev_kv"))


def _all_history(store: MVCCStore, start: int, **kw) -> list[tuple[int, list[tuple]]]:
    out: list[tuple[int, list[tuple]]] = []
    while True:
        resp = store.history(n("history", key=b"\x00", range_end=b"\x00", start_revision=start,
                               prev_kv=True, **kw))
        out.extend((r["revision"], [_hist_ev(e) for e in r["events"]]) for r in resp["revisions"])
        if not resp["more"]:
            return out
        start = resp["last_revision"] + 1


def _random_ops(kv: KV, rng: random.Random, count: int, keys: list[bytes]) -> dict[int, list[tuple]]:
    """Random puts, deletes (single and ranges), txns that change a key twice in one
    revision, and lease revokes; the live events of each revision."""
    live: dict[int, list[tuple]] = {}
    lease_id = 1000
    for _ in range(count):
        r = rng.random()
        k = rng.choice(keys)
        if r < 0.5:
            res = kv.do("put", key=k, value=b"v%d" % rng.randrange(1000), prev_kv=True)
        elif r < 0.6:
            res = kv.do("delete_range", key=k)
        elif r < 0.65:
            res = kv.do("delete_range", key=b"k", range_end=b"l")
        elif r < 0.85:
            k2, k3 = rng.sample([x for x in keys if x != k], 2)
            res = kv.do("txn", compare=[], failure=[], success=[
                {"put": {"key": k, "value": b"t1"}},
                {"put": {"key": k2, "value": b"t2"}},
                {"delete_range": {"key": k3}},
            ])
        elif r < 0.95:
            lease_id += 1
            kv.ok("lease_grant", ID=lease_id, ttl=60)
            for key in rng.sample(keys, 2):
                put = kv.ok("put", key=key, value=b"leased", lease=lease_id)
                live[put.revision] = [_ev(e) for e in put.events]
            res = kv.do("lease_revoke", ID=lease_id)
        else:
            res = kv.do("put", key=k, value=b"", ignore_value=True)
        if res.error is None and res.events:
            live[res.revision] = [_ev(e) for e in res.events]
    return live


def test_events_history_and_prev_kv_match_what_apply_saw(kv):
    rng = random.Random(13)
    keys = [b"k%d" % i for i in range(6)] + [b"k\x00z"]
    live = _random_ops(kv, rng, 300, keys)
    current = kv.store.current_revision
    kv.restart()  # RocksDB: read back from the files
    got = kv.store.events_between(0, current)
    assert [(rev, [_ev(e) for e in evs]) for rev, evs in got] == sorted(live.items())
    assert _all_history(kv.store, 1, limit_revisions=37) == sorted(live.items())
    # Reads at every past revision give what a replay of the live events gives.
    state: dict[bytes, dict] = {}
    for rev in range(1, current + 1):
        for typ, kvd, _prev in live.get(rev, ()):
            if typ == "PUT":
                state[kvd["key"]] = kvd
            else:
                state.pop(kvd["key"], None)
        assert kv.kvs(revision=rev) == [state[k] for k in sorted(state)], rev
        for k in keys:
            got_one = kv.get(k, revision=rev)["kvs"]
            assert got_one == ([state[k]] if k in state else []), (rev, k)


def test_compaction_keeps_history_at_the_compact_revision(kv):
    rng = random.Random(7)
    keys = [b"k%d" % i for i in range(4)]
    live = _random_ops(kv, rng, 120, keys)
    revs = sorted(live)
    for compact in (revs[len(revs) // 3], revs[2 * len(revs) // 3], revs[-1]):
        hashes = {rev: kv.store.hash_kv(rev)[0] for rev in range(compact, kv.store.current_revision + 1)}
        kv.ok("compact", revision=compact)
        kv.restart()
        # The compact revision's own events come without prev_kv (compaction removed it).
        expected = [(rev, [(t, kvd, None if rev == compact else prev) for t, kvd, prev in evs])
                    for rev, evs in sorted(live.items()) if rev >= compact]
        assert _all_history(kv.store, compact) == expected
        assert {rev: kv.store.hash_kv(rev)[0] for rev in hashes} == hashes


def test_each_version_is_stored_once():
    kv = KV(lambda prev: prev if prev is not None else MemoryBackend())
    value = b"x" * 256
    for i in range(3):
        kv.put(b"a", value + b"%d" % i)
    kv.ok("delete_range", key=b"a")
    kv.put(b"b", value)
    be = kv.backend
    revs = list(be.iterate(CF_REV, b""))
    assert [msgpack.unpackb(v) for _, v in revs] == [[b"a", False]] * 3 + [[b"a", True], [b"b", False]]
    hist = dict(be.iterate(CF_HIST, b""))
    # a's three records (the last superseded by its delete), a's tombstone, b's marker.
    assert sorted(len(v) for v in hist.values()) == [0, 1] + [len(_pack([value + b"0", 2, 2, 1, 0]))] * 3
    stored = sum(len(v) for _, v in be.iterate(CF_KEY, b"")) + sum(len(v) for v in hist.values()) + \
        sum(len(v) for _, v in revs)
    assert stored < 5 * 256 - 256 + 200  # four versions of 256 bytes, plus small metadata


# --- stores written by the older layout --------------------------------------------------
class _OldLayoutWriter:
    """Writes rows exactly as the layout before this one did: the full record in ``key``,
    in ``hist`` and (with key and is_tombstone first) in ``rev``; one change per revision."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.rev = 1
        self.index = 0
        self.live: dict[bytes, list] = {}

    def put(self, key: bytes, value: bytes) -> None:
        self.rev += 1
        prev = self.live.get(key)
        rec = [value, self.rev, self.rev, 1, 0] if prev is None else [value, prev[1], self.rev, prev[3] + 1, 0]
        self.live[key] = rec
        packed = _pack(rec)
        self._write([(CF_KEY, key, packed), (CF_HIST, hist_key(key, self.rev, 0), packed),
                     (CF_REV, rev_bytes(self.rev, 0), _pack([key, False, *rec]))])

    def put_two(self, k1: bytes, v1: bytes, k2: bytes, v2: bytes) -> None:
        """A txn's two puts: (rev, 0) and (rev, 1)."""
        self.rev += 1
        rows = []
        for sub, (key, value) in enumerate(((k1, v1), (k2, v2))):
            prev = self.live.get(key)
            rec = [value, self.rev, self.rev, 1, 0] if prev is None else [value, prev[1], self.rev, prev[3] + 1, 0]
            self.live[key] = rec
            packed = _pack(rec)
            rows += [(CF_KEY, key, packed), (CF_HIST, hist_key(key, self.rev, sub), packed),
                     (CF_REV, rev_bytes(self.rev, sub), _pack([key, False, *rec]))]
        self._write(rows)

    def delete(self, key: bytes) -> None:
        self.rev += 1
        del self.live[key]
        self._write([(CF_KEY, key, None), (CF_HIST, hist_key(key, self.rev, 0), b""),
                     (CF_REV, rev_bytes(self.rev, 0), _pack([key, True, b"", 0, self.rev, 0, 0]))])

    def _write(self, rows) -> None:
        self.index += 1
        rows += [(CF_META, META_APPLIED_INDEX, _U64.pack(self.index)),
                 (CF_META, META_CURRENT_REVISION, _U64.pack(self.rev)),
                 (CF_META, META_KEY_COUNT, _U64.pack(len(self.live)))]
        self.backend.write(rows)


def _script(rng: random.Random, count: int) -> list[tuple[str, bytes, bytes]]:
    keys = [b"a", b"b", b"c\x00d", b"e"]
    out = []
    alive: set[bytes] = set()
    for i in range(count):
        k = rng.choice(keys)
        if k in alive and rng.random() < 0.25:
            out.append(("delete", k, b""))
            alive.discard(k)
        else:
            out.append(("put", k, b"v%d" % i))
            alive.add(k)
    return out


def test_a_store_written_by_the_older_layout_reads_the_same(kv_backend):
    """Old rows (written directly, as the previous layout did) and the same changes made
    through the current code: every read, history, event and hash agrees, before and
    after more changes and a compaction on top of the old rows."""
    rng = random.Random(3)
    script = _script(rng, 80)
    more = _script(rng, 40)
    old_backend = kv_backend(None)
    writer = _OldLayoutWriter(old_backend)
    for kind, k, v in script:
        writer.put(k, v) if kind == "put" else writer.delete(k)
    writer.put_two(b"a", b"two-a", b"e", b"two-e")  # e's newest change is at sub 1
    old = KV(lambda prev: prev if prev is not None else old_backend)
    old.make_backend = kv_backend
    old.restart()
    new = KV(lambda prev: prev if prev is not None else MemoryBackend())
    for kind, k, v in script:
        new.put(k, v) if kind == "put" else new.ok("delete_range", key=k)
    new.ok("txn", compare=[], failure=[], success=[{"put": {"key": b"a", "value": b"two-a"}},
                                                    {"put": {"key": b"e", "value": b"two-e"}}])
    assert old.store.current_revision == new.store.current_revision
    assert old.backend.get(CF_META, META_LAYOUT) is None  # an older store stays as it is

    def same() -> None:
        cur = new.store.current_revision
        assert old.store.current_revision == cur
        lo = max(new.store.compact_revision, 1)
        assert _all_history(old.store, lo) == _all_history(new.store, lo)
        assert old.store.events_between(lo, cur) == new.store.events_between(lo, cur)
        for rev in range(lo, cur + 1):
            assert old.kvs(revision=rev) == new.kvs(revision=rev), rev
            assert old.store.hash_kv(rev) == new.store.hash_kv(rev), rev
            for k in (b"a", b"c\x00d"):
                assert old.get(k, revision=rev) == new.get(k, revision=rev)

    same()
    # New changes on top of old rows: old newest records are superseded in place.
    more = [("put", b"e", b"after-two")] + more
    for kind, k, v in more:
        for s in (old, new):
            s.put(k, v, prev_kv=True) if kind == "put" else s.ok("delete_range", key=k, prev_kv=True)
    same()
    # A compaction whose compact revision is an old-layout change, then one that is new.
    for compact in (len(script) // 2, new.store.current_revision - 3):
        for s in (old, new):
            s.ok("compact", revision=compact)
        old.restart()
        same()


@pytest.mark.parametrize("twice", [False, True])
def test_a_key_changed_twice_in_one_revision_keeps_both_records(kv, twice):
    kv.put(b"k", b"before")
    success = [{"put": {"key": b"k", "value": b"one"}}]
    if twice:
        success.append({"put": {"key": b"other", "value": b"two"}})
    op = n("txn", compare=[], failure=[], success=success)
    # Requests refuse a key twice in one txn (as etcd does); entries of older versions may
    # hold one, and the store must keep every change: made here behind validation.
    for sub in op["success"]:
        sub["key"] = b"k"
    (res,) = kv.store.apply([(kv.store.applied_index + 1, op)])
    assert res.error is None
    kv.put(b"k", b"after", prev_kv=True)
    kv.restart()
    evs = kv.store.events_between(1, kv.store.current_revision)
    values = [(ev.kv["value"], ev.prev_kv and ev.prev_kv["value"]) for _, batch in evs for ev in batch]
    if twice:
        assert values == [(b"before", None), (b"one", b"before"), (b"two", b"one"), (b"after", b"two")]
    else:
        assert values == [(b"before", None), (b"one", b"before"), (b"after", b"one")]
    rev = kv.store.current_revision - 1
    assert kv.get(b"k", revision=rev)["kvs"][0]["value"] == (b"two" if twice else b"one")


def test_hash_kv_hashes_the_logical_record_of_a_change_at_sub_1(kv):
    """A key changed at sub > 0 keeps its sub beside its record in ``key``: hash_kv, range
    and history see the record only (hash as defined: blake2b over [key, value,
    create_revision, mod_revision, version, lease] of every live key, in key order)."""
    import hashlib
    kv.ok("txn", compare=[], failure=[], success=[{"put": {"key": b"a", "value": b"1"}},
                                                  {"put": {"key": b"b", "value": b"2"}}])
    kv.put(b"c", b"3")
    assert kv.backend.get(CF_META, META_LAYOUT) is not None  # made by this layout
    for rev in (kv.store.current_revision - 1, kv.store.current_revision):
        h = hashlib.blake2b(digest_size=8)
        for x in kv.kvs(revision=rev):
            h.update(_pack([x["key"], x["value"], x["create_revision"], x["mod_revision"], x["version"],
                            x["lease"]]))
        assert kv.store.hash_kv(rev) == (int.from_bytes(h.digest(), "big"), rev)
    kv.put(b"b", b"22")  # supersedes b's change at sub 1
    kv.restart()
    evs = kv.store.events_between(1, kv.store.current_revision)
    assert [(e.kv["key"], e.kv["value"], e.prev_kv and e.prev_kv["value"]) for _, b in evs for e in b] == [
        (b"a", b"1", None), (b"b", b"2", None), (b"c", b"3", None), (b"b", b"22", b"2")]
    assert kv.get(b"b", revision=2)["kvs"][0]["value"] == b"2"


def test_an_older_store_restored_with_applied_index_0_keeps_reading_before_it_writes():
    """`snapshot restore` rewrites applied_index to 0 (nodes/restore.py): a store
    of the older layout must not be taken for a new one (whose writes skip the read)."""
    backend = MemoryBackend()
    writer = _OldLayoutWriter(backend)
    writer.put(b"a", b"1")
    writer.put_two(b"b", b"2", b"a", b"3")  # a's newest change is at sub 1
    backend.write([(CF_META, META_APPLIED_INDEX, _U64.pack(0))])
    store = MVCCStore(backend)
    (res,) = store.apply([(1, n("put", key=b"a", value=b"4", prev_kv=True))])
    assert res.error is None and res.response["prev_kv"]["value"] == b"3"
    assert backend.get(CF_META, META_LAYOUT) is None
    evs = store.events_between(1, store.current_revision)
    assert [(e.kv["key"], e.kv["value"], e.prev_kv and e.prev_kv["value"]) for _, b in evs for e in b] == [
        (b"a", b"1", None), (b"b", b"2", None), (b"a", b"3", b"1"), (b"a", b"4", b"3")]
    # no stray history entry was made at (3, 0) for a
    assert backend.get(CF_HIST, hist_key(b"a", 3, 0)) is None
