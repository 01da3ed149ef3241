"""Order-preserving key encodings for the history column family. Nothing here performs I/O.

``escape(key)`` = key with every 0x00 written as 0x00 0xFF, then the terminator 0x00 0x01.
For user keys a < b (bytewise), escape(a) + anything < escape(b) + anything, so
``escape(key) + Revision.to_bytes()`` sorts by key, then by revision; and ``prefix(key)``
(the escaped bytes without the terminator) bounds ranges: every key >= k encodes
>= prefix(k), every key < k encodes < prefix(k).
"""
from __future__ import annotations

from actors.storage.mvcc.revision import _REV, REV_BYTES, Revision

TERMINATOR = b"\x00\x01"


def prefix(key: bytes) -> bytes:
    """The escaped key without terminator: a range bound in the history family."""
    return key.replace(b"\x00", b"\x00\xff")


def escape(key: bytes) -> bytes:
    return prefix(key) + TERMINATOR


def hist_key(key: bytes, main: int, sub: int) -> bytes:
    return key.replace(b"\x00", b"\x00\xff") + TERMINATOR + _REV.pack(main, sub)  # escape(key) + the revision


def split_hist_key(hk: bytes) -> tuple[bytes, bytes, Revision]:
    """``(escaped key with terminator, user key, revision)`` of a history key."""
    esc = hk[:-REV_BYTES]
    assert esc.endswith(TERMINATOR), "corrupt history key"
    user = esc[:-2].replace(b"\x00\xff", b"\x00")
    return esc, user, Revision.from_bytes(hk[-REV_BYTES:])
