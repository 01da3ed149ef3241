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

# name -> the module it lives in: imported on first use (PEP 562).
_LAZY = {
    "Client": "client", "normalize_endpoint": "client", "DEFAULT_ENDPOINT": "client",
    "AsyncClient": "aio",
    "Watcher": "watch", "WatchResponse": "watchcore", "Event": "watchcore",
    "AsyncWatcher": "aio_watch",
    "Lease": "lease", "AsyncLease": "aio_lease",
    "Session": "concurrency", "Lock": "concurrency", "Election": "concurrency",
    "AsyncSession": "aio_concurrency", "AsyncLock": "aio_concurrency", "AsyncElection": "aio_concurrency",
}

__all__ = [
    "Compare", "CompareTarget", "Op", "Txn", "KeyValue", "ResponseHeader",
    "PutResponse", "RangeResponse", "DeleteRangeResponse", "TxnResponse", "CompactResponse",
    "StatusResponse", "Member", "MemberListResponse", "MoveLeaderResponse", "HashKVResponse",
    "prefix_end", "key_range",
    "LeaseGrantResponse", "LeaseKeepAliveResponse", "LeaseLeasesResponse", "LeaseRevokeResponse",
    "LeaseStatus", "LeaseTimeToLiveResponse", *_LAZY,
]

if TYPE_CHECKING:  # the lazy names, for type checkers
    from protocol.client.aio import AsyncClient
    from protocol.client.aio_concurrency import AsyncElection, AsyncLock, AsyncSession
    from protocol.client.aio_lease import AsyncLease
    from protocol.client.aio_watch import AsyncWatcher
    from protocol.client.client import DEFAULT_ENDPOINT, Client, normalize_endpoint
    from protocol.client.concurrency import Election, Lock, Session
    from protocol.client.lease import Lease
    from protocol.client.watch import Watcher
    from protocol.client.watchcore import Event, WatchResponse


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'protocol.client' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"protocol.client.{module}"), name)
