"""What ``Client`` (threads) and ``AsyncClient`` (asyncio) share that is not I/O: the
options and their checks, the endpoint list (failover's preferred endpoint, auto-sync's
replacement of the list), the client-wide backoff, the request ids and the keys and
credentials (``Security``). Each transport subclasses ``ClientBase`` and adds its sockets.
"""
from __future__ import annotations

import contextlib
import itertools
import random
from typing import Any, ContextManager, Iterable, Sequence

from protocol.client.auth import Security
from protocol.client.core import Backoff, endpoints_from_members, normalize_endpoint

DEFAULT_ENDPOINT = "tcp://127.0.0.1:7379"
DEFAULT_TIMEOUT_S = 7.0


def parse_endpoints(endpoints: Sequence[str] | str | None) -> list[str]:
    """The constructor's ``endpoints`` (a list, a comma-separated string, None = the
    default) as a normalized, non-empty list."""
    if endpoints is None:
        endpoints = [DEFAULT_ENDPOINT]
    elif isinstance(endpoints, str):
        endpoints = endpoints.split(",")
    out = [normalize_endpoint(e) for e in endpoints if e.strip()]
    if not out:
        raise ValueError("at least one endpoint is needed")
    return out


class ClientBase:
    """The state both clients keep; ``_setup`` is their constructors' common part."""

    endpoints: list[str]
    timeout: float

    def _setup(self, endpoints: Sequence[str] | str | None, timeout: float, *,
               user: str | None, password: str | None, server_key: Any, key_file: str | None,
               auto_sync_interval: float, backoff_base: float, backoff_max: float,
               max_watch_subscriptions: int, security: Security | None,
               lock: ContextManager[Any] | None = None) -> None:
        """``lock``: held around changes of the endpoint list and the backoff (the
        threaded client's lock; an asyncio client, used from one loop, needs none)."""
        self.endpoints = parse_endpoints(endpoints)
        if not timeout or timeout <= 0:
            raise ValueError("timeout must be > 0")
        if auto_sync_interval < 0:
            raise ValueError("auto_sync_interval must be >= 0")
        if max_watch_subscriptions < 1:
            raise ValueError("max_watch_subscriptions must be >= 1")
        self.timeout = float(timeout)
        self.auto_sync_interval = float(auto_sync_interval)
        self.max_watch_subscriptions = int(max_watch_subscriptions)
        self._endpoints_lock: ContextManager[Any] = lock if lock is not None else contextlib.nullcontext()
        self._preferred = 0  # index into endpoints; moves on after a failure
        self._backoff = Backoff(backoff_base, backoff_max, lock=lock)
        self._ids = itertools.count(random.getrandbits(40) + 1)
        self._closed = False
        self.requests_sent = 0  # frames this client sent to a server
        self._security = security if security is not None else Security(
            server_key=server_key, key_file=key_file, user=user, password=password)

    def _derived_options(self) -> dict[str, Any]:
        """The constructor arguments a derived client (the watch's, the lease router's)
        takes from this one: the same keys, user and token; a backoff of its own."""
        return {"backoff_base": self._backoff.base, "backoff_max": self._backoff.maximum,
                "max_watch_subscriptions": self.max_watch_subscriptions,
                "_security": self._security}

    @property
    def public_key(self) -> str | None:
        """This client's CURVE public key (Z85), None without CURVE."""
        return self._security.public_key

    def _fail_over(self, endpoint: str) -> None:
        """``endpoint`` failed: the next call starts at the one after it."""
        with self._endpoints_lock:
            eps = self.endpoints
            if eps[self._preferred % len(eps)] == endpoint:
                self._preferred = (self._preferred + 1) % len(eps)

    def _asked_endpoint(self) -> str:
        with self._endpoints_lock:
            return self.endpoints[self._preferred % len(self.endpoints)]

    def _adopt_members(self, members: Iterable[Any], asked: str) -> list[str]:
        """Auto-sync: the endpoint list becomes the members' (``core.endpoints_from_members``;
        an empty answer keeps it), the preferred endpoint kept when it is still there.
        Returns the endpoints dropped (their sockets are the caller's to close)."""
        new = endpoints_from_members(members, asked)
        if not new:
            return []
        with self._endpoints_lock:
            old = self.endpoints
            current = old[self._preferred % len(old)]
            self.endpoints = new  # replaced, never changed in place
            self._preferred = new.index(current) if current in new else 0
        return [e for e in old if e not in new]
