"""CurveZMQ keys and ZAP authentication for the public ports (peer, client, watch).

Rules:
- Keys are pyzmq certificate files (`zmq.auth.create_certificates`): `NAME.key` holds
  the public key, `NAME.key_secret` both keys. A secret file that group or others can
  read is refused, as ssh refuses a private key with loose modes.
- Keys travel as Z85 text (40 characters) in flags, ops and the member table.
- A server socket gets `make_curve_server`; the ZAP handler of its process
  (`KeyAuthenticator`, pyzmq's ThreadAuthenticator) decides each connecting key and
  names its ZAP User-Id, which libzmq attaches to every message of that connection
  (`frame.get("User-Id")`, see `Actor.socket(with_user=True)`).
- `lookup(key) -> str | None`: the User-Id for a key ("" = allowed, anonymous), or None
  to refuse the connection. It runs on the authenticator's thread: it must only read
  plain dicts that the actor replaces whole (an assignment is atomic), never mutate.
"""
from __future__ import annotations

import os
import stat
from typing import Callable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

Z85_KEY_LEN = 40
_Z85_ALPHABET = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


class KeyFileError(ValueError):
    """A key or key file that cannot be used (the message says why)."""


def valid_z85_key(key: str | bytes) -> bool:
    raw = key.encode() if isinstance(key, str) else key
    if not isinstance(raw, bytes) or len(raw) != Z85_KEY_LEN or not set(raw) <= _Z85_ALPHABET:
        return False
    try:
        z85.decode(raw)
    except Exception:
        return False
    return True


def load_public(path: str) -> bytes:
    """The Z85 public key of a certificate file (public or secret)."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {path!r}: {exc}") from None
    if not public or not valid_z85_key(public):
        raise KeyFileError(f"key file {path!r} holds no valid public key")
    return public


def load_keypair(path: str, *, check_mode: bool = True) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a secret certificate file; refuses loose modes."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path!r}: {exc.strerror}") from None
    if check_mode and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {path!r} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                        f"chmod 600 it")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {path!r}: {exc}") from None
    if not secret:
        raise KeyFileError(f"key file {path!r} holds no secret key (use the .key_secret file)")
    if not valid_z85_key(public) or not valid_z85_key(secret):
        raise KeyFileError(f"key file {path!r} holds no valid key pair")
    return public, secret


def generate(directory: str, name: str) -> tuple[str, str]:
    """Write NAME.key and NAME.key_secret (0600) into directory; returns their paths."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    public_path = os.path.join(directory, f"{name}.key")
    secret_path = os.path.join(directory, f"{name}.key_secret")
    for path in (public_path, secret_path):
        if os.path.exists(path):
            raise KeyFileError(f"{path} exists; refusing to overwrite a key")
    old = os.umask(0o077)
    try:
        public_path, secret_path = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(secret_path, 0o600)
    os.chmod(public_path, 0o644)
    return public_path, secret_path


def make_curve_server(sock: zmq.Socket, public: bytes, secret: bytes, domain: str) -> None:
    """Before bind: every connection to this socket is CURVE, decided by ZAP `domain`."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())


def make_curve_client(sock: zmq.Socket, public: bytes, secret: bytes, server_public: bytes | str) -> None:
    """Before connect: the connection only completes with the server holding `server_public`."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_public.encode() if isinstance(server_public, str) else server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


class KeyAuthenticator(ThreadAuthenticator):
    """The ZAP handler of one process: CURVE connections of `domain` are allowed when
    `lookup(z85 key)` is not None, and get that string as their User-Id. Any other
    domain or mechanism is refused (a NULL connection to a CURVE socket never reaches
    ZAP: libzmq refuses the mismatched mechanism itself)."""

    def __init__(self, ctx: zmq.Context, domain: str, lookup: Callable[[bytes], str | None]) -> None:
        super().__init__(ctx)
        self.domain = domain
        self.lookup = lookup
        self.refused = 0

    def start(self) -> None:
        super().start()
        self.configure_curve_callback(self.domain, credentials_provider=self)

    # credentials provider (pyzmq calls it with the domain and the Z85 key)
    def callback(self, domain: str, key: bytes) -> bool:
        try:
            allowed = domain == self.domain and self.lookup(key) is not None
        except Exception:  # the lookup reads plain dicts; never let it kill the ZAP thread
            allowed = False
        if not allowed:
            self.refused += 1
        return allowed

    def curve_user_id(self, client_public_key: bytes) -> str:
        try:
            return self.lookup(z85.encode(client_public_key)) or ""
        except Exception:
            return ""


def frame_property(frame: zmq.Frame, name: str) -> str:
    """A metadata property libzmq attached to a received frame ("" when there is none)."""
    try:
        value = frame.get(name)
    except zmq.ZMQError:
        return ""
    return value if isinstance(value, str) else ""


def frame_user(frame: zmq.Frame) -> str:
    """The ZAP User-Id of the connection a frame came on ("" when there is none)."""
    return frame_property(frame, "User-Id")


def frame_peer(frame: zmq.Frame) -> str:
    """The remote address of the connection a frame came on ("" when there is none)."""
    return frame_property(frame, "Peer-Address")
