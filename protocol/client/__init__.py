"""The quorumkv Python client library (protocol/SPEC.md) and the ``qkvctl`` CLI.

    from protocol.client import Client, Compare, Op
    with Client(["tcp://127.0.0.1:7379"]) as c:
        c.put("foo", "bar")
        c.get("foo").kvs[0].value   # b"bar"
        c.txn().if_(Compare.version("foo") == 1).then(Op.put("foo", "baz")).commit()

asyncio (the same calls as coroutines, protocol/client/aio.py)::

    from protocol.client import AsyncClient
    async with AsyncClient(["tcp://127.0.0.1:7379"]) as c:
        await c.put("foo", "bar")

``Client`` and ``AsyncClient`` are imported on first use (PEP 562), so ``qkvctl --help``
and the pure parts (``Compare``, ``Op``, the response types) do not pay for importing zmq.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol.client.txn import Compare, CompareTarget, Op, Txn
from protocol.client.types import (
    CompactResponse, DeleteRangeResponse, HashKVResponse, KeyValue, Member, MemberListResponse,
    MoveLeaderResponse, PutResponse, RangeResponse, ResponseHeader, StatusResponse, TxnResponse,
    key_range, prefix_end, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveResponse,
)

__all__ = [
    "Client", "AsyncClient", "Compare", "CompareTarget", "Op", "Txn", "KeyValue", "ResponseHeader",
    "PutResponse", "RangeResponse", "DeleteRangeResponse", "TxnResponse", "CompactResponse",
    "Watcher", "WatchResponse", "Event", "StatusResponse", "Member", "MemberListResponse", "MoveLeaderResponse", "HashKVResponse", "prefix_end", "key_range", "normalize_endpoint", "DEFAULT_ENDPOINT",
    "LeaseGrantResponse", "LeaseKeepAliveResponse", "LeaseLeasesResponse", "LeaseRevokeResponse",
    "LeaseStatus", "LeaseTimeToLiveResponse", "Lease", "Session", "Lock", "Election",
]

if TYPE_CHECKING:  # the lazy names, for type checkers
    from protocol.client.aio import AsyncClient
    from protocol.client.client import DEFAULT_ENDPOINT, Client, normalize_endpoint
    from protocol.client.concurrency import Election, Lock, Session
    from protocol.client.lease import Lease
    from protocol.client.watch import Event, Watcher, WatchResponse

_LAZY = {"Client", "normalize_endpoint", "DEFAULT_ENDPOINT"}
_LAZY_AIO = {"AsyncClient"}
_LAZY_WATCH = {"Watcher", "WatchResponse", "Event"}
_LAZY_LEASE = {"Lease"}
_LAZY_CONCURRENCY = {"Session", "Lock", "Election"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from protocol.client import client as _client
        return getattr(_client, name)
    if name in _LAZY_AIO:
        from protocol.client import aio as _aio
        return getattr(_aio, name)
    if name in _LAZY_WATCH:
        from protocol.client import watch as _watch
        return getattr(_watch, name)
    if name in _LAZY_LEASE:
        from protocol.client import lease as _lease
        return getattr(_lease, name)
    if name in _LAZY_CONCURRENCY:
        from protocol.client import concurrency as _conc
        return getattr(_conc, name)
    raise AttributeError(f"module 'protocol.client' has no attribute {name!r}")
