"""The MVCC store's lease table: grant, attach/detach, revoke in one revision,
checkpoints, and persistence (memory and RocksDB backends)."""
from __future__ import annotations

import pytest

import mvcc_kv
from mvcc_kv import n

from actors.storage.mvcc import MemoryBackend, MVCCStore
from protocol.errors import LeaseExists, LeaseNotFound


class KV(mvcc_kv.KV):
    def grant(self, lease_id: int, ttl: int = 10):
        return self.ok("lease_grant", ID=lease_id, ttl=ttl)

    def lease_of(self, key: bytes) -> int | None:
        kvs = self.store.range(n("range", key=key))["kvs"]
        return kvs[0]["lease"] if kvs else None


@pytest.fixture
def kv(kv_backend):
    return KV(kv_backend)


def test_grant_does_not_change_revision_and_is_listed(kv):
    r = kv.grant(5, ttl=7)
    assert r.response == {"ID": 5, "ttl": 7} and r.revision == 1
    kv.grant(3)
    assert kv.store.leases() == [(3, 10, 0), (5, 7, 0)]
    assert kv.store.lease_get(5) == (7, 0) and kv.store.lease_get(4) is None


def test_grant_existing_id_is_lease_exists(kv):
    kv.grant(5)
    r = kv.do("lease_grant", ID=5, ttl=3)
    assert isinstance(r.error, LeaseExists)
    assert kv.store.lease_get(5) == (10, 0)


def test_put_attaches_and_detaches(kv):
    kv.grant(1)
    kv.grant(2)
    kv.ok("put", key=b"a", value=b"1", lease=1)
    kv.ok("put", key=b"b", value=b"1", lease=1)
    assert kv.store.lease_keys(1) == [b"a", b"b"] and kv.lease_of(b"a") == 1
    kv.ok("put", key=b"a", value=b"2", ignore_lease=True)  # keeps the lease
    assert kv.store.lease_keys(1) == [b"a", b"b"] and kv.lease_of(b"a") == 1
    kv.ok("put", key=b"a", value=b"3", lease=2)  # moves to lease 2
    assert kv.store.lease_keys(1) == [b"b"] and kv.store.lease_keys(2) == [b"a"]
    kv.ok("put", key=b"a", value=b"4")  # no lease: detached
    assert kv.store.lease_keys(2) == [] and kv.lease_of(b"a") == 0
    kv.ok("delete_range", key=b"b")  # a delete detaches too
    assert kv.store.lease_keys(1) == []


def test_put_unknown_lease_and_in_txn(kv):
    r = kv.do("put", key=b"a", value=b"1", lease=9)
    assert isinstance(r.error, LeaseNotFound)
    r = kv.do("txn", success=[{"put": {"key": b"a", "value": b"1", "lease": 9}}])
    assert isinstance(r.error, LeaseNotFound) and kv.store.current_revision == 1
    kv.grant(9)
    kv.ok("txn", success=[{"put": {"key": b"t", "value": b"1", "lease": 9}}])
    assert kv.store.lease_keys(9) == [b"t"]


@pytest.mark.parametrize("kind", ["lease_revoke", "lease_expire"])
def test_revoke_deletes_every_key_in_one_revision(kv, kind):
    kv.grant(1)
    kv.grant(2)
    for key in (b"c", b"a", b"b"):
        kv.ok("put", key=key, value=b"v", lease=1)
    kv.ok("put", key=b"other", value=b"v", lease=2)
    before = kv.store.current_revision
    r = kv.ok(kind, ID=1) if kind == "lease_revoke" else kv.ok(kind, id=1)
    assert r.revision == before + 1 == kv.store.current_revision
    assert [(e.type, e.kv["key"], e.kv["mod_revision"]) for e in r.events] == [
        ("DELETE", b"a", r.revision), ("DELETE", b"b", r.revision), ("DELETE", b"c", r.revision)]
    assert [e.prev_kv["lease"] for e in r.events] == [1, 1, 1]
    assert kv.store.lease_get(1) is None and kv.store.lease_keys(1) == []
    assert kv.store.range(n("range", key=b"\x00", range_end=b"\x00"))["count"] == 1
    assert kv.store.lease_keys(2) == [b"other"]


def test_revoke_without_keys_keeps_revision_and_unknown_fails(kv):
    kv.grant(1)
    r = kv.ok("lease_revoke", ID=1)
    assert r.revision == 1 and r.events == []
    r = kv.do("lease_revoke", ID=1)
    assert isinstance(r.error, LeaseNotFound)
    r = kv.do("lease_expire", id=1)
    assert isinstance(r.error, LeaseNotFound)


def test_revoked_then_regranted_id_starts_empty(kv):
    kv.grant(1)
    kv.ok("put", key=b"a", value=b"v", lease=1)
    kv.ok("lease_revoke", ID=1)
    kv.grant(1)
    assert kv.store.lease_keys(1) == []


def test_checkpoint_records_and_clears(kv):
    kv.grant(1, ttl=10)
    r = kv.ok("lease_checkpoint", checkpoints=[[1, 4000], [77, 1000]])  # 77: gone, ignored
    assert r.revision == 1
    assert kv.store.lease_get(1) == (10, 4000)
    kv.ok("lease_checkpoint", checkpoints=[[1, 99_000]])  # clamped to the TTL
    assert kv.store.lease_get(1) == (10, 10_000)
    kv.ok("lease_checkpoint", checkpoints=[[1, 0]])
    assert kv.store.lease_get(1) == (10, 0)


def test_leases_survive_restart(kv):
    kv.grant(1, ttl=5)
    kv.ok("put", key=b"a", value=b"v", lease=1)
    kv.ok("lease_checkpoint", checkpoints=[[1, 2500]])
    kv.restart()
    assert kv.store.leases() == [(1, 5, 2500)]
    assert kv.store.lease_keys(1) == [b"a"]
    r = kv.ok("lease_revoke", ID=1)
    assert [e.kv["key"] for e in r.events] == [b"a"]


def test_same_entries_same_state_on_two_stores():
    ops = [n("lease_grant", ID=1, ttl=5), n("put", key=b"x", value=b"1", lease=1),
           n("put", key=b"y", value=b"1", lease=1), {"op": "lease_checkpoint", "checkpoints": [[1, 100]]},
           {"op": "lease_expire", "id": 1}]
    stores = [MVCCStore(MemoryBackend()), MVCCStore(MemoryBackend())]
    for s in stores:
        s.apply(list(enumerate(ops, start=1)))
    a, b = (s.backend for s in stores)
    assert a._data == b._data
    assert stores[0].hash_kv() == stores[1].hash_kv()
