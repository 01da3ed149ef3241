"""Who may subscribe to what on the watch port (SPEC section 5, "Security" and "Bounds"),
and which keys name which users there. Pure: no zmq, time or sockets; the actor shell
passes the clock.

The broadcaster's XPUB always runs in XPUB_MANUAL mode: libzmq hands us every subscribe
and unsubscribe message of every connection, and a pipe gets a topic only if we call
SUBSCRIBE right after receiving its message. Every connection goes through the ZAP
handler (with CURVE, and without: the socket has a ZAP domain), which names its user and
gives it a connection id and libzmq adds its socket (``__fd``): each message says its
``Origin``. ``decide`` grants a subscription when the user may have the topic
(``may_subscribe``), its connection has fewer than ``max_per_conn`` granted subscriptions,
and a channel for it exists or may be made (``Broadcaster.admit``).

What libzmq holds, and what we count:
- libzmq keeps, per connection, every topic it subscribed and did not unsubscribe, refused
  ones too (XPUB_MANUAL's record), until the connection closes; then it hands us one
  unsubscribe per topic, *without* an origin. ``held_bytes`` is the sum of those topics'
  lengths over all connections: +len for a (connection, topic) pair that is new, -len for
  an unsubscribe from that connection, -len for each origin-less unsubscribe. Past
  ``budget_bytes`` the actor rebinds (``over_budget``; every subscriber reconnects).
- A connection holding more than ``max_per_conn`` refused topics is closed (``kick``), so
  one connection cannot push everyone into a rebind.
- Per topic: how many connections hold it granted (the channel ends when that reaches
  zero) and refused. An origin-less unsubscribe takes one off the refused count first,
  else off the granted count (we cannot tell which connection closed): a channel may
  outlive its subscribers a little, or end early (its consumers see no heartbeat,
  subscribe again, see the gap and read it from history: nothing is lost).
- Per connection (``Conn``): its granted and refused topics. A record goes when its socket
  is reported disconnected (``closed``: the actor's monitor of the XPUB), or when a newer
  connection shows up on the same socket number (the old one is closed: libzmq reports
  its topics without an origin); so records are bounded by open sockets.

Connection ids grow (the ZAP handler counts), so on one socket number a smaller (or equal,
once closed) id is an older connection: a late message from it is counted as held and
refused (its closing unsubscribes follow). ``closed(fd)`` ends the newest connection seen
on ``fd``, which is right as long as the actor handles no message it read before the
disconnections reported up to then (it drains the monitor after reading a batch, before
handling it): a newer connection on that socket was accepted after the disconnection, so
none of its messages can have been handled yet.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from actors.storage.auth import AuthState, can_read
from actors.watch.channels import FULL, NOT_A_CHANNEL, TOO_LONG, decode_topic

BUDGET_BYTES = 16 * 1024 * 1024  # topics held by libzmq for all connections (see above)
MAX_PER_CONN = 1_000             # default of --max-watch-subscriptions
_HEX = frozenset("0123456789abcdef")

# Reasons a subscription is refused (counted per reason, logged rate-limited).
AUTH_UNKNOWN = "auth_state_unknown"
ANONYMOUS = "anonymous"
DENIED = "permission_denied"
TOO_MANY = "too_many_subscriptions"
# and channels.NOT_A_CHANNEL, TOO_LONG, FULL (why a topic cannot be a channel)

SUBSCRIBE = "subscribe"
REFUSE = "refuse"
UNSUBSCRIBE = "unsubscribe"
IGNORE = "ignore"


def may_subscribe(state: AuthState | None, user: str, topic: bytes) -> str | None:
    """None if ``user`` (a ZAP User-Id, "" = anonymous) may have ``topic``, else the reason
    it may not. Auth disabled: any topic. Auth enabled: only a well-formed channel topic
    whose key range the user may read (progress messages travel on the same topic)."""
    if state is None:
        return AUTH_UNKNOWN
    if not state.enabled:
        return None
    if not user:
        return ANONYMOUS
    spec = decode_topic(topic)
    if spec is None:
        return NOT_A_CHANNEL
    if not can_read(state, user, spec.key, spec.range_end):
        return DENIED
    return None


def needs_rebind(old: AuthState | None, new: AuthState) -> bool:
    """Must the XPUB be rebound (every subscription decided again) when the auth state
    changes from ``old`` to ``new``? Whenever auth is or was enabled and anything changed;
    also when the state becomes known (subscriptions were refused until then)."""
    if old is None:
        return True
    if old.revision == new.revision and old.enabled == new.enabled:
        return False
    return old.enabled or new.enabled


@dataclass(frozen=True)
class Origin:
    """The connection a message came on: its ZAP User-Id, connection id (from the ZAP
    handler; -1 unknown), socket number (libzmq's ``__fd``; -1 unknown) and peer."""
    user: str = ""
    conn: int = -1
    fd: int = -1
    peer: str = ""  # libzmq's Peer-Address (the peer's IP)


@dataclass(frozen=True)
class Decision:
    action: str            # SUBSCRIBE | REFUSE | UNSUBSCRIBE | IGNORE
    topic: bytes = b""
    track: bool = False    # SUBSCRIBE: a channel for this topic should exist
    untrack: bool = False  # UNSUBSCRIBE: the channel for this topic ends
    reason: str = ""       # REFUSE: why
    kick: bool = False     # REFUSE: close this connection (origin's fd)


_NONE: frozenset[bytes] = frozenset()


class Conn:
    """One connection's record: its granted topics (the channel table's own bytes
    objects where a channel exists, so a subscription costs a set slot, not a copy of its
    topic) and its refused ones (``_NONE``, shared, until it has one: most never do)."""

    __slots__ = ("fd", "granted", "refused", "kicked")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.granted: set[bytes] = set()
        self.refused: set[bytes] | frozenset[bytes] = _NONE
        self.kicked = False

    def refuse(self, topic: bytes) -> None:
        if not isinstance(self.refused, set):  # still the shared _NONE
            self.refused = set()
        self.refused.add(topic)

    def unrefuse(self, topic: bytes) -> None:
        if isinstance(self.refused, set):  # _NONE holds nothing
            self.refused.discard(topic)


def _inc(d: dict[bytes, int], k: bytes) -> None:
    d[k] = d.get(k, 0) + 1


def _dec(d: dict[bytes, int], k: bytes) -> int:
    """Take one off d[k] (gone at zero); the count left, or -1 when there was none."""
    n = d.get(k, 0)
    if n <= 0:
        return -1
    if n == 1:
        del d[k]
        return 0
    d[k] = n - 1
    return n - 1


@dataclass
class Gate:
    """The decisions for one bound XPUB (``reset`` at every bind)."""

    max_per_conn: int = MAX_PER_CONN
    budget_bytes: int = BUDGET_BYTES
    granted: dict[bytes, int] = field(default_factory=dict)       # topic -> connections
    refused_open: dict[bytes, int] = field(default_factory=dict)  # topic -> connections
    granted_users: set[str] = field(default_factory=set)
    conns: dict[int, Conn] = field(default_factory=dict)
    # socket number -> newest connection id seen on it (-1 none). An array, not a dict:
    # it outlives the connections, and small objects kept from a burst of subscriptions
    # would keep the allocator's arenas of that burst (memory that never comes back).
    fd_owner: array = field(default_factory=lambda: array("q"))
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count (the actor resets it)
    held_bytes: int = 0
    messages: int = 0
    kicks: int = 0

    def reset(self) -> None:
        self.granted, self.refused_open, self.granted_users = {}, {}, set()
        self.conns, self.fd_owner = {}, array("q")
        self.held_bytes = 0
        self.messages = 0

    @property
    def over_budget(self) -> bool:
        return self.held_bytes >= self.budget_bytes

    def decide(self, msg: bytes, origin: Origin | None, state: AuthState | None,
               admit: Callable[[bytes], str | None],
               canonical: Callable[[bytes], bytes] | None = None) -> Decision:
        """What to do with one message received on the XPUB. ``origin`` None: libzmq's
        unsubscribe for a connection that closed. ``admit(topic)``: None when a channel
        for it exists or may be made, else why not (channels.Broadcaster.admit).
        ``canonical(topic)``: the bytes object to keep for an equal topic (the channel
        table's, channels.Broadcaster.canonical), so that the records of the connections
        sharing a topic share one copy of it; a granted decision's ``topic`` is it."""
        if not msg or msg[0] not in (0, 1):
            return Decision(IGNORE)
        self.messages += 1
        topic = msg[1:]
        if msg[0] == 0:
            return self._unsubscribe(topic, origin)
        if origin is None:
            origin = Origin()
        conn = self._conn(origin)
        if conn is None:  # a late message of a closed connection: libzmq holds it until
            self.held_bytes += len(topic)  # it reports the close (an origin-less unsubscribe)
            _inc(self.refused_open, topic)
            return Decision(REFUSE, topic, reason="closed")
        if topic in conn.granted:  # a repeat (a progress request): libzmq holds it already
            return Decision(SUBSCRIBE, topic, track=admit(topic) is None)
        again = topic in conn.refused
        if not again:
            self.held_bytes += len(topic)
        reason = may_subscribe(state, origin.user, topic)
        room = admit(topic)
        if reason is None and room == TOO_LONG:
            reason = TOO_LONG
        elif reason is None and len(conn.granted) >= self.max_per_conn:
            reason = TOO_MANY
        elif reason is None and room == FULL:
            reason = FULL
        if reason is not None:
            self.refused[reason] = self.refused.get(reason, 0) + 1
            if not again:
                conn.refuse(topic)
                _inc(self.refused_open, topic)
            kick = len(conn.refused) > self.max_per_conn and not conn.kicked
            if kick:
                conn.kicked = True
                self.kicks += 1
            return Decision(REFUSE, topic, reason=reason, kick=kick)
        if again:  # refused before, allowed now (room was made): the same libzmq entry
            conn.unrefuse(topic)
            _dec(self.refused_open, topic)
        if canonical is not None:
            topic = canonical(topic)
        conn.granted.add(topic)
        _inc(self.granted, topic)
        self.granted_users.add(origin.user)
        return Decision(SUBSCRIBE, topic, track=room is None)

    def _conn(self, origin: Origin) -> Conn | None:
        """The record of origin's connection (made if new); None for a closed one."""
        c = self.conns.get(origin.conn)
        if c is not None:
            return c
        if origin.fd >= 0 and origin.conn >= 0:
            owners = self.fd_owner
            if origin.fd >= len(owners):
                owners.extend([-1] * (origin.fd + 64 - len(owners)))
            owner = owners[origin.fd]
            if owner >= 0:
                if owner >= origin.conn:
                    return None  # closed (reported), or a newer connection has this socket
                self.conns.pop(owner, None)  # closed; libzmq reports (reported) its topics
            owners[origin.fd] = origin.conn
        c = self.conns[origin.conn] = Conn(origin.fd)
        return c

    def closed(self, fd: int) -> None:
        """The connection on socket ``fd`` was reported disconnected: forget its record
        (its topics come as origin-less unsubscribes)."""
        if 0 <= fd < len(self.fd_owner) and self.fd_owner[fd] >= 0:
            self.conns.pop(self.fd_owner[fd], None)

    def _unsubscribe(self, topic: bytes, origin: Origin | None) -> Decision:
        if origin is None:
            # A closing connection's topic: refused holders first, then granted ones.
            self.held_bytes = max(0, self.held_bytes - len(topic))
            if _dec(self.refused_open, topic) >= 0:
                return Decision(UNSUBSCRIBE, topic)
            return Decision(UNSUBSCRIBE, topic, untrack=_dec(self.granted, topic) == 0)
        conn = self.conns.get(origin.conn)
        if conn is None:  # a closed connection's, or one that never subscribed: nothing held
            return Decision(UNSUBSCRIBE, topic)
        untrack = False
        if topic in conn.granted:
            conn.granted.discard(topic)
            self.held_bytes = max(0, self.held_bytes - len(topic))
            untrack = _dec(self.granted, topic) == 0
        elif topic in conn.refused:
            conn.unrefuse(topic)  # a set: it held the topic
            self.held_bytes = max(0, self.held_bytes - len(topic))
            _dec(self.refused_open, topic)
        return Decision(UNSUBSCRIBE, topic, untrack=untrack)

    def compact(self) -> None:
        """Give back the memory of dicts that shrank (a dict keeps its size)."""
        self.granted, self.refused_open = dict(self.granted), dict(self.refused_open)
        self.conns = dict(self.conns)


# --- keys -> users (the ZAP User-Id of a watch connection) -----------------------------------
@dataclass
class TokenKeys:
    """Client keys registered by ``authenticate`` (AUTH_TOKEN grants): key -> (user,
    expires_at wall-clock seconds). A key registered again takes the newest grant."""

    grants: dict[bytes, tuple[str, float]] = field(default_factory=dict)
    invalid: int = 0

    def add(self, entries: Any, now: float, ttl: float) -> list[tuple[bytes, str]]:
        """Take AUTH_TOKEN entries ``[[token_sha256_hex, user, issued_unix_s, key|None],
        ...]``; grants already expired by ``now`` are ignored (a replay after a storage
        restart), malformed ones counted in ``invalid``. Returns the (key, old user) of
        keys that now name another user."""
        changed: list[tuple[bytes, str]] = []
        if not isinstance(entries, list):
            self.invalid += 1
            return changed
        for e in entries:
            if not (isinstance(e, list) and len(e) == 4 and isinstance(e[0], str) and len(e[0]) == 64
                    and set(e[0]) <= _HEX and isinstance(e[1], str) and e[1]
                    and isinstance(e[2], (int, float)) and not isinstance(e[2], bool)
                    and (e[3] is None or isinstance(e[3], str))):
                self.invalid += 1
                continue
            _, user, issued, key = e
            if key is None:
                continue
            if not valid_key(key):
                self.invalid += 1
                continue
            expires = float(issued) + ttl
            if expires <= now:
                continue
            k = key.encode()
            old = self.grants.get(k)
            if old is not None and old[0] != user:
                changed.append((k, old[0]))
            if old is None or old[0] != user or old[1] < expires:
                self.grants[k] = (user, expires)
        return changed

    def expire(self, now: float) -> list[tuple[bytes, str]]:
        """Drop the grants expired by ``now``; returns their (key, user)."""
        gone = [(k, u) for k, (u, exp) in self.grants.items() if exp <= now]
        for k, _ in gone:
            del self.grants[k]
        return gone

    def follow(self, old: AuthState | None, new: AuthState) -> list[tuple[bytes, str]]:
        """Tokens end when auth is disabled, when their user is deleted, or when its
        password changes (etcd's simple tokens). Returns the dropped (key, user)."""
        gone = []
        for k, (u, _) in self.grants.items():
            nu = new.users.get(u)
            ou = old.users.get(u) if old is not None else None
            if not new.enabled or nu is None or (ou is not None and ou.password != nu.password):
                gone.append((k, u))
        for k, _ in gone:
            del self.grants[k]
        return gone


def valid_key(key: str) -> bool:
    """A Z85 public key's text form (40 characters of the Z85 alphabet)."""
    return len(key) == 40 and all(c in _Z85 for c in key)


_Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


def key_map(state: AuthState | None, cert_auth: bool, tokens: Iterable[tuple[bytes, tuple[str, float]]]
            ) -> dict[bytes, str]:
    """Z85 key -> user for the ZAP handler: keys registered by live tokens, and with
    ``--client-cert-auth`` the public keys registered on users (those win)."""
    out = {k: user for k, (user, _) in tokens}
    if cert_auth and state is not None:
        for name, u in state.users.items():
            if u.key:
                out[u.key.encode()] = name
    return out
