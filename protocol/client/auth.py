"""Client-side security (protocol/SPEC.md, "Security"): CurveZMQ keys, auth tokens, and
the ``Client.auth`` management API.

- ``Security`` is what a ``Client`` shares with every client it derives (the watch's
  per-endpoint client, the lease router's, ``snapshot save``'s): the server's public key,
  this client's keypair, the user's credentials and the current token. Deriving shares
  it, so one ``authenticate`` serves them all and registers one key for the watch port.
- CURVE: with a server key every DEALER/SUB socket is a CURVE client. Its keypair comes
  from ``key_file`` (a pyzmq secret certificate, ``zmq.auth.load_certificate``) or is an
  ephemeral ``zmq.curve_keypair()`` made once per ``Client``.
- Tokens: with a user, the first request authenticates (``authenticate {name,
  password, key}``) and every request carries ``"token"``. ``invalid_auth_token``
  (expired, or the member forgot it across a restart), ``user_empty`` (auth was enabled
  after this client found it disabled) and ``auth_old_revision`` make the client
  authenticate again and resend the request ONCE: each is a refusal before the request
  did anything, so even a write may be resent. ``auth_not_enabled`` in answer to
  ``authenticate`` means no token is needed: requests go without one (etcd's clientv3
  does the same).
"""
from __future__ import annotations

import os
import stat
import threading
from typing import TYPE_CHECKING, Any, Callable

from protocol.client.types import (
    AuthenticateResponse, AuthResponse, AuthRoleGetResponse, AuthRoleListResponse,
    AuthStatusResponse, AuthUserGetResponse, AuthUserListResponse, perm_type_name, to_bytes,
)
from protocol.client.core import REAUTH_ERRORS  # noqa: F401  (re-exported)
from protocol.errors import AuthNotEnabled

if TYPE_CHECKING:
    from protocol.client.client import Client

Z85_KEY_LEN = 40


def _z85_key(value: Any, what: str) -> bytes:
    from zmq.utils import z85

    key = value.encode("ascii", "replace") if isinstance(value, str) else bytes(value)
    key = key.strip()
    if len(key) != Z85_KEY_LEN:
        raise ValueError(f"{what} must be a {Z85_KEY_LEN}-character Z85 CURVE key, "
                         f"not {len(key)} characters")
    try:
        z85.decode(key)
    except Exception:
        raise ValueError(f"{what} is not a valid Z85 key") from None
    return key


def load_public_key(value: Any, what: str = "server key") -> bytes:
    """A Z85 public key given as text/bytes, or ``"@path"``: the public key of a pyzmq
    certificate file (``NAME.key``, or the public half of ``NAME.key_secret``). "@" is
    also a Z85 character: a 40-character value naming no file is taken as a key."""
    if isinstance(value, (str, bytes)) and (value[:1] in ("@", b"@")) and not (
            len(value) == Z85_KEY_LEN and not os.path.exists(os.fsdecode(value[1:]))):
        import zmq.auth

        path = os.fsdecode(value[1:])
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the {what} from {path}: {exc}") from None
        return _z85_key(public, what)
    return _z85_key(value, what)


def load_keypair(path: str) -> tuple[bytes, bytes]:
    """(public, secret) Z85 of a pyzmq secret certificate file (``NAME.key_secret``).
    Refuses a file that other users may read, as ssh does with its keys."""
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(path)
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the key file {path}: {exc}") from None
    if not secret:
        raise ValueError(f"{path} holds no secret key (give the NAME.key_secret file, "
                         "not the public NAME.key)")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"the key file {path} is readable by other users "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it")
    return _z85_key(public, "client public key"), _z85_key(secret, "client secret key")


class Security:
    """CURVE keys and credentials shared by a Client and the clients derived from it.
    Thread-safe: one thread authenticates at a time; the others wait for its token."""

    def __init__(self, *, server_key: Any = None, key_file: str | None = None,
                 user: str | None = None, password: str | None = None) -> None:
        self.server_key: bytes | None = None
        self.public: bytes | None = None
        self.secret: bytes | None = None
        if server_key not in (None, "", b""):
            self.server_key = load_public_key(server_key)
            if key_file:
                self.public, self.secret = load_keypair(key_file)
            else:
                import zmq

                self.public, self.secret = zmq.curve_keypair()
        elif key_file:
            raise ValueError("key_file needs server_key: a client key is only used over CURVE")
        self.user = user or None
        self.password = password
        self._lock = threading.Lock()
        self._token: str | None = None  # None: not authenticated yet; "": auth is off
        self._gen = 0                    # bumped by every (re-)authentication
        self.authentications = 0         # successful authenticate calls (tests, logs)

    @property
    def curve(self) -> bool:
        """Whether CURVE is on (a server key was given)."""
        return self.server_key is not None

    @property
    def public_key(self) -> str | None:
        """This client's public key (Z85 text), e.g. for ``user add --public-key``."""
        return self.public.decode() if self.public else None

    def configure(self, sock: Any) -> None:
        """Make ``sock`` a CURVE client of the server key (before it connects)."""
        if self.server_key is None:
            return
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_key

    # -- tokens -----------------------------------------------------------------------
    def token(self, client: "Client") -> tuple[str, int]:
        """The current token ("" = none needed) and its generation; authenticates first
        if nothing was tried yet."""
        with self._lock:
            if self._token is None:
                self._authenticate(client)
            return self._token or "", self._gen

    def refresh(self, client: "Client", gen: int) -> tuple[str, int]:
        """A new token, unless another thread got one since generation ``gen``."""
        with self._lock:
            if self._gen == gen or self._token is None:
                self._authenticate(client)
            return self._token or "", self._gen

    def _authenticate(self, client: "Client") -> None:
        try:
            reply = client._send(self.auth_request(), write=False)
        except AuthNotEnabled:
            self.auth_done(None)
        else:
            self.auth_done(reply)

    # -- the same, for AsyncClient (protocol/client/aio.py) ---------------------------
    # The pure steps are shared: the request, and what its answer means. The asyncio
    # client serializes (re-)authentication with an asyncio.Lock of this object (one
    # event loop per AsyncClient and the clients it derives).
    def auth_request(self) -> dict[str, Any]:
        """The ``authenticate`` request of this user (with this client's CURVE key)."""
        req: dict[str, Any] = {"op": "authenticate", "name": self.user or "",
                               "password": self.password or ""}
        if self.public is not None:
            req["key"] = self.public.decode()
        return req

    def auth_done(self, reply: dict[str, Any] | None) -> None:
        """Record an ``authenticate`` answer (None: ``auth_not_enabled``, no token needed)."""
        if reply is None:
            self._token = ""  # auth is off: requests need no token
        else:
            self._token = AuthenticateResponse.from_wire(reply).token
            self.authentications += 1
        self._gen += 1

    def current(self) -> tuple[str | None, int]:
        """(token or None when not authenticated yet, generation), without waiting."""
        return self._token, self._gen

    def async_lock(self) -> Any:
        """The asyncio.Lock serializing AsyncClient authentications (made on first use)."""
        lock = self.__dict__.get("_alock")
        if lock is None:
            import asyncio

            lock = self.__dict__["_alock"] = asyncio.Lock()
        return lock


class Auth:
    """``Client.auth``: etcd's Auth API (clientv3 ``Auth`` interface), typed responses.
    Changes go through the Raft log (writes: never re-sent after a timeout); the
    ``*_get`` / ``*_list`` / ``auth_status`` reads may go to another endpoint."""

    def __init__(self, client: "Client") -> None:
        self._client = client

    def _do(self, req: dict[str, Any], write: bool, parse: Callable[[dict[str, Any]], Any],
            token: bool = True) -> Any:
        # AsyncAuth (aio.py) overrides this one method: the requests are built once, here.
        # ``token=False``: sent as is (``authenticate`` asks for a token of its own).
        reply = self._client._call(req, write=write) if token else self._client._send(req, write=write)
        return parse(reply)

    def _write(self, req: dict[str, Any], parse: Callable[[dict[str, Any]], Any]) -> Any:
        return self._do(req, True, parse)

    def _read(self, req: dict[str, Any], parse: Callable[[dict[str, Any]], Any]) -> Any:
        return self._do(req, False, parse)

    def authenticate(self, name: str, password: str) -> AuthenticateResponse:
        """A token for ``name`` (not stored: ``Client(user=, password=)`` manages its own)."""
        req: dict[str, Any] = {"op": "authenticate", "name": name, "password": password}
        sec = self._client._security
        if sec.public is not None:
            req["key"] = sec.public.decode()
        return self._do(req, False, AuthenticateResponse.from_wire, token=False)

    def auth_enable(self) -> AuthResponse:
        """Turn auth on (needs a root user)."""
        return self._write({"op": "auth_enable"}, AuthResponse.from_wire)

    def auth_disable(self) -> AuthResponse:
        """Turn auth off."""
        return self._write({"op": "auth_disable"}, AuthResponse.from_wire)

    def auth_status(self) -> AuthStatusResponse:
        """Whether auth is on, and the auth revision."""
        return self._read({"op": "auth_status"}, AuthStatusResponse.from_wire)

    # users
    def user_add(self, name: str, password: str | None = None, no_password: bool = False,
                 public_key: Any = None) -> AuthResponse:
        """Add a user. ``no_password``: it can only authenticate by its key
        (``public_key``, Z85 or ``"@file"``: with ``--client-cert-auth``, a client with this
        key is this user, as etcd's certificate CN)."""
        req: dict[str, Any] = {"op": "user_add", "name": name}
        if no_password:
            req["no_password"] = True
        elif password is not None:
            req["password"] = password
        if public_key not in (None, "", b""):
            req["public_key"] = load_public_key(public_key, "public key").decode()
        return self._write(req, AuthResponse.from_wire)

    def user_delete(self, name: str) -> AuthResponse:
        """Delete a user."""
        return self._write({"op": "user_delete", "name": name}, AuthResponse.from_wire)

    def user_get(self, name: str) -> AuthUserGetResponse:
        """A user's roles."""
        return self._read({"op": "user_get", "name": name}, AuthUserGetResponse.from_wire)

    def user_list(self) -> AuthUserListResponse:
        """Every user's name."""
        return self._read({"op": "user_list"}, AuthUserListResponse.from_wire)

    def user_change_password(self, name: str, password: str) -> AuthResponse:
        """Set a user's password."""
        return self._write({"op": "user_change_password", "name": name, "password": password},
                           AuthResponse.from_wire)

    def user_grant_role(self, name: str, role: str) -> AuthResponse:
        """Give a user a role."""
        return self._write({"op": "user_grant_role", "name": name, "role": role}, AuthResponse.from_wire)

    def user_revoke_role(self, name: str, role: str) -> AuthResponse:
        """Take a role from a user."""
        return self._write({"op": "user_revoke_role", "name": name, "role": role}, AuthResponse.from_wire)

    # roles
    def role_add(self, name: str) -> AuthResponse:
        """Add a role."""
        return self._write({"op": "role_add", "name": name}, AuthResponse.from_wire)

    def role_delete(self, name: str) -> AuthResponse:
        """Delete a role."""
        return self._write({"op": "role_delete", "name": name}, AuthResponse.from_wire)

    def role_get(self, name: str) -> AuthRoleGetResponse:
        """A role's permissions."""
        return self._read({"op": "role_get", "name": name}, AuthRoleGetResponse.from_wire)

    def role_list(self) -> AuthRoleListResponse:
        """Every role's name."""
        return self._read({"op": "role_list"}, AuthRoleListResponse.from_wire)

    def role_grant_permission(self, name: str, perm_type: Any, key: Any,
                              range_end: Any = b"") -> AuthResponse:
        """Grant READ / WRITE / READWRITE (any case, or 0/1/2) on ``key`` (``range_end``
        empty), ``[key, range_end)``, or every key >= ``key`` (``range_end`` ``b"\\x00"``)."""
        perm = {"perm_type": perm_type_name(perm_type), "key": to_bytes(key),
                "range_end": to_bytes(range_end or b"", "range_end")}
        return self._write({"op": "role_grant_permission", "name": name, "perm": perm},
                           AuthResponse.from_wire)

    def role_revoke_permission(self, name: str, key: Any, range_end: Any = b"") -> AuthResponse:
        """Take back the permission on ``key`` / ``[key, range_end)``."""
        return self._write({
            "op": "role_revoke_permission", "name": name, "key": to_bytes(key),
            "range_end": to_bytes(range_end or b"", "range_end")}, AuthResponse.from_wire)

