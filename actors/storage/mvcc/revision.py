"""``Revision(main, sub)`` and its order-preserving byte encoding. Nothing here performs I/O.

``main`` is the store revision of the request, ``sub`` the index of the change inside it.
Encoded as main (8 bytes big-endian) + sub (8 bytes big-endian): byte order = revision order.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

_REV = struct.Struct(">QQ")
REV_BYTES = _REV.size  # 16


class Revision(NamedTuple):
    main: int
    sub: int = 0

    def to_bytes(self) -> bytes:
        return _REV.pack(self.main, self.sub)

    @staticmethod
    def from_bytes(b: bytes) -> "Revision":
        main, sub = _REV.unpack(b)
        return Revision(main, sub)


def rev_bytes(main: int, sub: int = 0) -> bytes:
    return _REV.pack(main, sub)
