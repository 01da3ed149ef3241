"""The ordered-backend contract the MVCC store is written against, and an in-memory one.

Rules: nothing here performs I/O. A backend is a set of named column families, each an
ordered map of bytes to bytes; ``write`` applies a batch atomically (all or nothing).
``MemoryBackend`` is for tests: sorted key lists per column family, copy-on-iterate so a
caller may write while it still holds an iterator.
"""
from __future__ import annotations

import bisect
from typing import Iterator, Protocol


class ReadView(Protocol):
    """What reads need: a backend, or a pinned ``Backend.snapshot()`` of one."""

    def get(self, cf: str, key: bytes) -> bytes | None: ...

    def iterate(
        self, cf: str, start: bytes, end: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Keys in ``[start, end)`` ascending (descending when ``reverse``); end None = no bound."""
        ...

    def close(self) -> None: ...


class Backend(ReadView, Protocol):
    def count(self, cf: str, start: bytes, end: bytes | None = None) -> int:
        """How many keys are in ``[start, end)`` (end None = no bound)."""
        ...

    def write(self, batch: list[tuple[str, bytes, bytes | None]], sync: bool = False) -> None:
        """Apply ``(cf, key, value or None = delete)`` in order, atomically."""
        ...

    def size_bytes(self) -> int: ...

    def snapshot(self) -> ReadView:
        """A read-only view (``get``, ``iterate``) of the data as it is now, unchanged by
        later writes; ``close()`` releases it."""
        ...


class MemoryBackend:
    """A sorted in-memory backend. ``fail_next_write`` lets tests simulate a failed write."""

    def __init__(self) -> None:
        self._data: dict[str, dict[bytes, bytes]] = {}
        self._keys: dict[str, list[bytes]] = {}
        self.fail_next_write = False
        self.closed = False

    def _cf(self, cf: str) -> tuple[dict[bytes, bytes], list[bytes]]:
        if cf not in self._data:
            self._data[cf] = {}
            self._keys[cf] = []
        return self._data[cf], self._keys[cf]

    def get(self, cf: str, key: bytes) -> bytes | None:
        assert not self.closed, "backend is closed"
        return self._data.get(cf, {}).get(key)

    def iterate(
        self, cf: str, start: bytes, end: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        assert not self.closed, "backend is closed"
        data, keys = self._cf(cf)
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        if hi <= lo:
            return iter(())
        selected = keys[lo:hi]
        if reverse:
            selected.reverse()
        return ((k, data[k]) for k in selected if k in data)

    def count(self, cf: str, start: bytes, end: bytes | None = None) -> int:
        assert not self.closed, "backend is closed"
        _, keys = self._cf(cf)
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end)
        return max(0, hi - lo)

    def write(self, batch: list[tuple[str, bytes, bytes | None]], sync: bool = False) -> None:
        assert not self.closed, "backend is closed"
        if self.fail_next_write:
            self.fail_next_write = False
            raise IOError("simulated write failure")
        for cf, key, value in batch:
            assert isinstance(key, bytes) and (value is None or isinstance(value, bytes))
            data, keys = self._cf(cf)
            if value is None:
                if key in data:
                    del data[key]
                    del keys[bisect.bisect_left(keys, key)]
            else:
                if key not in data:
                    bisect.insort(keys, key)
                data[key] = value

    def snapshot(self) -> "MemoryBackend":
        """A copy: later writes to this backend do not change it."""
        assert not self.closed, "backend is closed"
        snap = MemoryBackend()
        snap._data = {cf: dict(d) for cf, d in self._data.items()}
        snap._keys = {cf: list(k) for cf, k in self._keys.items()}
        return snap

    def size_bytes(self) -> int:
        return sum(len(k) + len(v) for d in self._data.values() for k, v in d.items())

    def close(self) -> None:
        self.closed = True
