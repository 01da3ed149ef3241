"""Frame encoding shared by every ZeroMQ link of quorumkv.

Client wire (protocol/SPEC.md): one frame = version byte ``0x01`` + a msgpack map.
Internal links between the actors of one node: one frame = version byte ``0x01`` +
one type byte + a msgpack body (usually an array with documented positions, which is
twice as fast as a map). Nothing here performs I/O.
"""
from __future__ import annotations

from typing import Any

import msgpack

from protocol.errors import Malformed

VERSION = 1
_VERSION_BYTE = bytes([VERSION])

# Decoding limits: a hostile frame must not make the decoder allocate without bound.
_MAX_LEN = 64 * 1024 * 1024


def pack(obj: Any) -> bytes:
    """Encode a client-wire frame."""
    return _VERSION_BYTE + msgpack.packb(obj, use_bin_type=True)


def unpack(frame: bytes) -> Any:
    """Decode a client-wire frame; raise ``Malformed`` on anything that is not one."""
    if not frame or frame[0] != VERSION:
        raise Malformed(f"malformed frame: first byte must be the version {VERSION}")
    try:
        return msgpack.unpackb(
            frame[1:], raw=False, strict_map_key=False, max_bin_len=_MAX_LEN,
            max_str_len=_MAX_LEN, max_array_len=_MAX_LEN, max_map_len=_MAX_LEN,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types: ExtraData, FormatError, ValueError...
        raise Malformed(f"malformed frame: {type(exc).__name__}: {exc}") from None


def pack_msg(msg_type: int, body: Any) -> bytes:
    """Encode an internal message."""
    return bytes((VERSION, msg_type)) + msgpack.packb(body, use_bin_type=True)


def unpack_msg(frame: bytes) -> tuple[int, Any]:
    """Decode an internal message into ``(type, body)``; ``Malformed`` if it is not one."""
    if len(frame) < 2 or frame[0] != VERSION:
        raise Malformed("malformed internal frame")
    try:
        return frame[1], msgpack.unpackb(frame[2:], raw=False, strict_map_key=False)
    except Exception as exc:
        raise Malformed(f"malformed internal frame: {type(exc).__name__}: {exc}") from None
