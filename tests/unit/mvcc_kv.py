"""The MVCC store driven one normalized op per log entry (on the backends of
tests/unit/conftest.py `kv_backend`): shared by the MVCC table tests."""
from __future__ import annotations

from actors.storage.mvcc import MVCCStore
from protocol.requests import Limits, normalize_request

INTERNAL_OPS = ("lease_expire", "lease_checkpoint")  # proposed by the server, never by a client
LIMITS = Limits()


def n(op: str, **fields) -> dict:
    if op in INTERNAL_OPS:
        return {"op": op, **fields}
    return normalize_request({"op": op, **fields}, LIMITS)


class KV:
    """A store plus helpers that feed it one normalized op per log entry."""

    def __init__(self, make_backend):
        self.make_backend = make_backend
        self.backend = make_backend(None)
        self.store = MVCCStore(self.backend)

    def restart(self):
        self.backend = self.make_backend(self.backend)
        self.store = MVCCStore(self.backend)

    def do(self, op: str, **fields):
        index = self.store.applied_index + 1
        (res,) = self.store.apply([(index, n(op, **fields))])
        assert res.index == index
        return res

    def ok(self, op: str, **fields):
        res = self.do(op, **fields)
        assert res.error is None, res.error
        return res

    def put(self, key, value=b"", **kw):
        return self.ok("put", key=key, value=value, **kw)

    def get(self, key, **kw):
        return self.store.range(n("range", key=key, **kw))

    def kvs(self, key=b"\x00", range_end=b"\x00", **kw):
        return self.store.range(n("range", key=key, range_end=range_end, **kw))["kvs"]

    def keys(self, key=b"\x00", range_end=b"\x00", **kw):
        return [kv["key"] for kv in self.kvs(key, range_end, **kw)]
