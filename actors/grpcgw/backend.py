"""The bridge every gRPC service uses: an etcd request in, our native request to the local
gateway, its reply (or error) back as etcd's message (or status).

- ``Backend`` holds one ``AsyncClient`` (protocol/client/aio.py) connected to the node's
  own gateway over its private proxy socket (nodes/endpoints.py ``gateway_proxy``): every
  check, limit, auth rule and Raft path of the native protocol applies unchanged.
- Who asks: etcd's ``token`` metadata is passed on as our ``token``; with
  ``--client-cert-auth`` and a verified TLS client certificate, its CN is passed as
  ``as_user`` (the gateway takes it as a registered client key's user on the client port).
- What the actor asks for itself goes as the member (``Backend.member``, SPEC 7.2): its
  `status` calls and the native watches serving gRPC watches (`status`, `history`, and the
  watch port's topics). Its connections to the proxy socket carry a PROXY_MEMBER_ID routing
  id, and with --client-key-file its SUB sockets use the cluster's key pair, which the
  watch port names MEMBER. A gRPC watch is checked as its caller before (watch.py).
- Errors: a ``QkvError`` aborts the RPC with etcd's status code and message (errors.py).
- Bounds: at most ``max_in_flight`` requests in progress at the gateway (its per-connection
  limit) and MAX_WAITING more waiting here for a slot; beyond that a request is refused at
  once with etcd's "too many requests" (ResourceExhausted), so what many clients can make
  this process hold is bounded (MAX_WAITING x the largest request).
- Metrics: ``Rpc`` counts started/handled/messages with go-grpc-prometheus's names and
  labels (actors/runtime/metrics.py), in memory, written by ``flush_metrics`` every second.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import os
from typing import Any, Callable, Iterator, TypeVar

import grpc
import zmq

from actors.gateway.auth import PROXY_MEMBER_ID
from actors.grpcgw.errors import status_of
from actors.runtime import metrics
from protocol import errors
from protocol.client.aio import AsyncClient
from protocol.client.auth import Security, load_keypair
from protocol.etcdpb import kv_pb2, rpc_pb2
from protocol.requests import AUTH_TOKEN_MAX_CHARS

T = TypeVar("T")
MAX_WAITING = 256  # requests waiting for a free slot to the gateway, beyond max_in_flight
DEFAULT_TIMEOUT_S = 7.0  # etcd's request timeout (5 s + 2 x election timeout), set from the config
DEADLINE_MARGIN_S = 0.05  # our answer goes back this long before the caller's deadline
MAX_NAME_BYTES = 256  # user names (SPEC 7.3)
# passed for a token that cannot be ours: ':' is not a URL-safe base64 character, so it
# never matches a token; well-formed for the native envelope (a non-empty short string)
INVALID_TOKEN = "invalid:token"
UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM = "unary", "client_stream", "server_stream", "bidi_stream"

_started = metrics.CounterTally(metrics.grpc_started)
_handled = metrics.CounterTally(metrics.grpc_handled)
_received = metrics.CounterTally(metrics.grpc_msg_received)
_sent = metrics.CounterTally(metrics.grpc_msg_sent)


def flush_metrics() -> None:
    for tally in (_started, _handled, _received, _sent):
        tally.flush()


def code_label(code: grpc.StatusCode | None) -> str:
    """go-grpc-prometheus's grpc_code: Go's codes.Code.String()."""
    if code is None or code is grpc.StatusCode.OK:
        return "OK"
    if code is grpc.StatusCode.CANCELLED:
        return "Canceled"
    return "".join(w.capitalize() for w in code.name.split("_"))


def rpc(service: str, method: str, kind: str = UNARY) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Count a servicer method (``async def m(self, request_or_iterator, context)``; for
    server streams an async generator): started, handled by status code, and for unary
    calls one message each way. Streams count their messages with ``count_received`` /
    ``count_sent``."""
    labels = (kind, service, method)

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if kind == SERVER_STREAM or kind == BIDI_STREAM:
            @functools.wraps(fn)
            async def stream(self: Any, request: Any, context: Any) -> Any:
                _started.inc(labels)
                code = None
                try:
                    async for item in fn(self, request, context):
                        _sent.inc(labels)
                        yield item
                except BaseException:
                    code = _code(context, grpc.StatusCode.UNKNOWN)
                    raise
                finally:
                    _handled.inc((*labels, code_label(code if code is not None else _code(context, None))))
            return stream

        @functools.wraps(fn)
        async def unary(self: Any, request: Any, context: Any) -> Any:
            _started.inc(labels)
            if kind == UNARY:
                _received.inc(labels)
            code = None
            try:
                reply = await fn(self, request, context)
            except BaseException:
                code = _code(context, grpc.StatusCode.UNKNOWN)
                raise
            finally:
                _handled.inc((*labels, code_label(code if code is not None else _code(context, None))))
            _sent.inc(labels)
            return reply
        return unary
    return wrap


def count_received(service: str, method: str, kind: str) -> None:
    _received.inc((kind, service, method))


def _code(context: Any, default: grpc.StatusCode | None) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except Exception:
        return default
    return code if isinstance(code, grpc.StatusCode) else default


class Backend:
    """The node's gateway as the gRPC services see it."""

    def __init__(self, endpoint: str, *, cluster_id: int, member_id: int, cert_auth: bool,
                 max_in_flight: int = 64, public_urls: list[str] | None = None,
                 server_key: bytes | None = None, request_timeout_s: float = DEFAULT_TIMEOUT_S,
                 client_key_file: str = "", max_request_bytes: int = 1_572_864) -> None:
        self.request_timeout_s = request_timeout_s
        self.client_key_file = client_key_file  # the cluster's key pair (watch.py: the watch port's CURVE)
        self.max_request_bytes = max_request_bytes  # etcd's fragment limit is this + 512 KiB (watch.py)
        self.client = AsyncClient([endpoint], timeout=DEFAULT_TIMEOUT_S, max_in_flight=max_in_flight)
        # The member itself: the actor's own status calls, and the native watches (watch.py).
        self.member = AsyncClient([endpoint], timeout=DEFAULT_TIMEOUT_S, max_in_flight=max_in_flight,
                                  _security=MemberSecurity(client_key_file))
        # Other members (the leader of leader-only ops, lease.py) and the watch port are
        # reached as any client reaches them: through this member's public client URLs,
        # with CURVE (a fresh key pair of this process) when the cluster has a server key.
        self.remote = AsyncClient(list(public_urls or [endpoint]), timeout=DEFAULT_TIMEOUT_S,
                                  max_in_flight=max_in_flight, server_key=server_key)
        self.max_calls = max_in_flight + MAX_WAITING
        self.calls = 0  # in progress or waiting
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.cert_auth = cert_auth
        self.raft_term = 0  # the last seen, for headers of replies that carry none
        self.revision = 0

    async def close(self) -> None:
        await self.client.close()
        await self.member.close()
        await self.remote.close()

    # --- who asks ---------------------------------------------------------------------
    def identity(self, context: Any) -> dict[str, Any]:
        """``token`` and ``as_user`` for a native request (pure: ``identity_fields``)."""
        cn = None
        if self.cert_auth:
            cn = (context.auth_context() or {}).get("x509_common_name")
        return identity_fields(context.invocation_metadata() or (), cn)

    # --- calls ------------------------------------------------------------------------
    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """One request of this member's gRPC clients in progress or waiting; raises
        TooManyRequests when MAX_WAITING wait already (the bound every call goes through)."""
        if self.calls >= self.max_calls:
            raise errors.TooManyRequests(
                f"etcdserver: too many requests: {self.calls} requests of this member's gRPC clients are in "
                f"progress or waiting")
        self.calls += 1
        try:
            yield
        finally:
            self.calls -= 1

    async def call(self, context: Any, req: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
        """Send ``req`` (a native request map, without ``token``) as the RPC's caller; the
        ok reply map. A refusal aborts the RPC with etcd's status (never returns)."""
        try:
            with self.slot():
                reply = await self.client.request({**req, **self.identity(context)},
                                                  timeout=timeout or self.timeout_of(context))
        except errors.QkvError as err:
            await self.abort(context, err)
            raise AssertionError("unreachable")  # context.abort raises
        self.note_header(reply.get("header"))
        return reply

    async def abort(self, context: Any, err: errors.QkvError) -> None:
        code, message = status_of(err)
        await context.abort(code, message)

    def timeout_of(self, context: Any) -> float:
        """How long a request may take here: etcd's request timeout (a proposal or read
        index that waits longer, e.g. without a leader, gets "request timed out" or "no
        leader"), and never past the caller's deadline, so that the caller gets our answer
        rather than its own DEADLINE_EXCEEDED."""
        left = context.time_remaining()
        if left is None:
            return self.request_timeout_s
        return max(0.001, min(float(left) - DEADLINE_MARGIN_S, self.request_timeout_s))

    # --- conversions ------------------------------------------------------------------
    def note_header(self, header: Any) -> None:
        if isinstance(header, dict):
            self.raft_term = max(self.raft_term, int(header.get("raft_term") or 0))
            self.revision = max(self.revision, int(header.get("revision") or 0))

    def header(self, reply: dict[str, Any] | None = None) -> rpc_pb2.ResponseHeader:
        """etcd's ResponseHeader from a reply's ``header`` (cluster_id, member_id,
        revision, raft_term), or this member's ids and the last seen revision and term."""
        h = reply.get("header") if reply else None
        if isinstance(h, dict):
            return rpc_pb2.ResponseHeader(cluster_id=h.get("cluster_id", self.cluster_id),
                                          member_id=h.get("member_id", self.member_id),
                                          revision=h.get("revision", 0), raft_term=h.get("raft_term", 0))
        return rpc_pb2.ResponseHeader(cluster_id=self.cluster_id, member_id=self.member_id,
                                      revision=self.revision, raft_term=self.raft_term)


class MemberSecurity(Security):
    """The sockets of ``Backend.member`` (and of the clients its watches derive): DEALERs
    to the private proxy socket with a PROXY_MEMBER_ID routing id (plain: the socket is
    local), and SUBs to the watch port with the cluster's key pair when the node has
    --client-key-file (``key_file``), which the watch port names MEMBER. No user and no
    token: the member is its connection."""

    _ids = itertools.count(1)

    def __init__(self, key_file: str = "") -> None:
        super().__init__()
        self.sub_keys: tuple[bytes, bytes] | None = load_keypair(key_file) if key_file else None

    @property
    def curve(self) -> bool:
        return True  # so that every socket goes through configure (a DEALER stays plain)

    def configure(self, sock: Any) -> None:
        if sock.socket_type == zmq.DEALER:
            sock.setsockopt(zmq.ROUTING_ID, PROXY_MEMBER_ID + f"{os.getpid()}:{next(self._ids)}".encode())
        elif sock.socket_type == zmq.SUB and self.sub_keys is not None:
            public, secret = self.sub_keys
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_serverkey = public


def identity_fields(metadata: Any, common_names: Any) -> dict[str, Any]:
    """Who asks, as etcd decides it (auth/store.go AuthInfoFromCtx, AuthInfoFromTLS):
    the ``token`` metadata (else ``authorization``, etcd's gRPC-gateway name) is passed on
    as ``token``; the verified client certificate's CN (``common_names``: grpc's
    ``x509_common_name``, given only with --client-cert-auth) as ``as_user``, which the
    gateway uses only when there is no token.

    A token that cannot be one of ours (longer than the native limit, or not text) is
    passed as INVALID_TOKEN: with auth enabled it gets etcd's "invalid auth token"
    (Unauthenticated) instead of a format error, and with auth disabled it is ignored as
    every token is. A CN that cannot be a user name (empty, over 256 bytes, control
    characters) is not passed: the request has no user, as when no certificate names one."""
    fields: dict[str, Any] = {}
    tokens: dict[str, Any] = {}
    for key, value in metadata:
        if key in ("token", "authorization") and key not in tokens:
            tokens[key] = value
    raw = tokens.get("token", tokens.get("authorization"))
    if raw is not None:
        token = _text(raw)
        ok = token is not None and 0 < len(token) <= AUTH_TOKEN_MAX_CHARS
        fields["token"] = token if ok else INVALID_TOKEN
    if common_names:
        name = _text(common_names[0])
        if name is not None and valid_user_name(name):
            fields["as_user"] = name
    return fields


def valid_user_name(name: str) -> bool:
    """A name a user may have (SPEC 7.3): non-empty, at most 256 UTF-8 bytes, no control
    characters, and so never one of the gateway's internal markers."""
    return (0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES
            and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name))


def _text(value: Any) -> str | None:
    """A metadata or certificate value as text; None when it is not valid UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def kv_to_pb(kv: dict[str, Any]) -> kv_pb2.KeyValue:
    """Our key-value map (SPEC section 2) as mvccpb.KeyValue."""
    return kv_pb2.KeyValue(key=kv.get("key", b""), value=kv.get("value", b""),
                           create_revision=kv.get("create_revision", 0), mod_revision=kv.get("mod_revision", 0),
                           version=kv.get("version", 0), lease=kv.get("lease", 0))

