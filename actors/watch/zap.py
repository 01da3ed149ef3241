"""The watch port's ZAP handler: names every connection (user and connection id), so the
broadcaster can count subscriptions per connection (gate.py, SPEC section 5 "Bounds").

libzmq asks the ZAP handler about every connection of a socket that has a ZAP domain,
also with the NULL mechanism (libzmq 4.3: ``session_base_t::zap_enabled`` is true for
NULL when ZMQ_ZAP_DOMAIN is set). The reply's User-Id and metadata properties are then
attached to every message of that connection; libzmq adds ``__fd`` (the socket number)
and ``Peer-Address`` itself. This handler:
- CURVE (``--client-key-file``): every client key may connect; its User-Id is the user the
  key is registered to (``lookup``), "" (anonymous) for any other key, as
  runtime/security.KeyAuthenticator does for the other ports;
- NULL (no client security): every connection may connect, anonymous (User-Id "");
- anything else, or another domain: refused;
- every allowed connection gets ``X-Watch-Conn``: a number that grows with each
  connection of this process (so on one socket number a larger id is a newer connection).
"""
from __future__ import annotations

import struct
from typing import Callable

import zmq
from zmq.utils import z85

from actors.runtime.security import KeyAuthenticator

CONN_PROPERTY = "X-Watch-Conn"
_ZAP_VERSION = b"1.0"


def metadata(props: dict[str, bytes]) -> bytes:
    """ZMTP metadata (RFC 23): name length (1 byte), name, value length (4 bytes BE), value."""
    out = []
    for name, value in props.items():
        n = name.encode()
        out.append(bytes((len(n),)) + n + struct.pack(">I", len(value)) + value)
    return b"".join(out)


class ConnAuthenticator(KeyAuthenticator):
    """The ZAP handler of the watch actor's process (see the module doc)."""

    def __init__(self, ctx: zmq.Context, domain: str, lookup: Callable[[bytes], str | None],
                 allow_null: bool) -> None:
        super().__init__(ctx, domain, lookup)
        self.allow_null = allow_null
        self.connections = 0  # connection ids given so far (the last one)

    async def handle_zap_message(self, msg: list[bytes]) -> None:  # runs on the ZAP thread
        if len(msg) < 6:
            if len(msg) >= 2:
                self._reply(msg[1], None)
            return
        version, request_id, domain, _address, _identity, mechanism = msg[:6]
        credentials = msg[6:]
        user: str | None = None
        if version == _ZAP_VERSION and domain == self.domain.encode():
            if mechanism == b"NULL" and self.allow_null:
                user = ""
            elif mechanism == b"CURVE" and len(credentials) == 1 and len(credentials[0]) == 32:
                try:
                    user = self.lookup(z85.encode(credentials[0]))
                except Exception:  # the lookup reads plain dicts; never let it kill this thread
                    user = None
        self._reply(request_id, user)

    def _reply(self, request_id: bytes, user: str | None) -> None:
        if user is None:
            self.refused += 1
            self.zap_socket.send_multipart([_ZAP_VERSION, request_id, b"400", b"NO ACCESS", b"", b""])
            return
        self.connections += 1
        meta = metadata({CONN_PROPERTY: str(self.connections).encode()})
        self.zap_socket.send_multipart([_ZAP_VERSION, request_id, b"200", b"OK", user.encode(), meta])
