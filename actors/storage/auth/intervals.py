"""Key intervals of permissions, and whether a set of them covers a request's range.

etcd's semantics (server/auth/range_perm_cache.go, pkg/adt's BytesAffine intervals):
- a permission or request with no ``range_end`` is the single key ``key``;
- ``range_end == b"\\x00"`` means every key >= ``key`` (open-ended);
- otherwise the half-open interval ``[key, range_end)``.
A request is allowed when the union of the user's intervals of that type covers it
entirely; intervals that touch (``[a, b)`` and ``[b, c)``) join into one.

One difference, stricter than etcd: a request whose ``range_end`` is not empty, not
``b"\\x00"`` and not after ``key`` (an empty range: it reads or deletes nothing) needs the
permission on ``key`` itself; etcd's interval tree gives an answer that depends on the
tree's shape there.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Iterable

# (start, end): end None = unbounded; always start < end.
Interval = tuple[bytes, "bytes | None"]


def request_interval(key: bytes, range_end: bytes) -> Interval:
    """The keys a request (or a permission) with this key / range_end names."""
    if not range_end:
        return key, key + b"\x00"
    if range_end == b"\x00":
        return key, None
    if range_end <= key:  # an empty range: asks for the key itself (stricter than etcd)
        return key, key + b"\x00"
    return key, range_end


class IntervalSet:
    """A union of intervals, merged into disjoint, non-touching, sorted intervals."""

    __slots__ = ("starts", "ends")

    def __init__(self, intervals: Iterable[Interval] = ()) -> None:
        merged: list[list] = []
        for start, end in sorted(intervals, key=lambda iv: (iv[0], iv[1] is None, iv[1] or b"")):
            if merged and (merged[-1][1] is None or start <= merged[-1][1]):
                last = merged[-1]
                if last[1] is not None and (end is None or end > last[1]):
                    last[1] = end
            else:
                merged.append([start, end])
        self.starts = [m[0] for m in merged]
        self.ends = [m[1] for m in merged]

    def covers(self, key: bytes, range_end: bytes) -> bool:
        """True if every key the request names is in the union."""
        lo, hi = request_interval(key, range_end)
        i = bisect_right(self.starts, lo) - 1
        if i < 0:
            return False
        end = self.ends[i]
        return end is None or (hi is not None and hi <= end)

    def intervals(self) -> list[Interval]:
        return list(zip(self.starts, self.ends))

    def __bool__(self) -> bool:
        return bool(self.starts)
