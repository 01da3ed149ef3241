"""Who may subscribe to what on the watch port (SPEC section 5, "Security"), and which keys
name which users there. Pure: no zmq, time or sockets; the actor shell passes the clock.

The broadcaster's XPUB runs in one of two modes, chosen when it is bound:

- **open** (the auth state is known and auth is disabled): every subscription is allowed,
  so libzmq applies them itself (XPUB_VERBOSE) and counts subscribers per topic exactly:
  an unsubscribe reaches us only when the last subscriber of a topic leaves.
- **manual** (auth enabled, or its state not known yet): XPUB_MANUAL hands us every
  subscribe and unsubscribe message of every connection, with the connection's ZAP
  User-Id, and a pipe gets a topic only if we call SUBSCRIBE right after receiving its
  message. ``may_subscribe`` decides; until the state is known nothing is allowed.

In manual mode libzmq no longer counts subscribers for us, and it cannot tell us which
connection a message came from, only its user. ``Gate`` keeps counts per topic: granted
subscribe messages, and refused ones; an unsubscribe takes one off the refused count
first (libzmq sends an unsubscribe, without a user, for every topic a closing connection
ever sent, refused or not), else off the granted count, and the channel ends when that
reaches zero. The counts are approximate (a repeated subscribe from one connection, as a
progress request, counts twice; a forged unsubscribe counts as one): a channel may
outlive its subscribers (bounded by ``max_channels``; every rebind starts afresh) or end
early (its consumers see no heartbeat, subscribe again, see the gap in ``prev_revision``
and read it from ``history``: nothing is lost).

Bounds: a topic longer than ``max_topic_bytes`` is never a channel (the actor also sets
ZMQ_MAXMSGSIZE, so libzmq drops a connection that sends a longer message), at most
``max_channels`` channels exist, and after ``budget_messages`` subscription messages or
``budget_bytes`` of them since the XPUB was bound (libzmq keeps every subscription a
connection ever sent, refused ones too, until it closes) the actor rebinds
(``over_budget``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Container, Iterable, Sized

from actors.storage.auth import AuthState, can_read
from actors.watch.channels import decode_topic

MAX_TOPIC_BYTES = 11 + 64 * 1024   # head + key + range_end: 64 KiB of key bytes
MAX_CHANNELS = 100_000
BUDGET_MESSAGES = 1_000_000
BUDGET_BYTES = 256 * 1024 * 1024
_HEX = frozenset("0123456789abcdef")

# Reasons a subscription is refused (counted per reason, logged rate-limited).
AUTH_UNKNOWN = "auth_state_unknown"
ANONYMOUS = "anonymous"
NOT_A_CHANNEL = "not_a_channel"
DENIED = "permission_denied"
TOO_LONG = "topic_too_long"
FULL = "too_many_channels"

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


def manual_mode(state: AuthState | None) -> bool:
    """The XPUB mode for this auth state: manual unless auth is known to be disabled."""
    return state is None or state.enabled


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
class Decision:
    action: str            # SUBSCRIBE | REFUSE | UNSUBSCRIBE | IGNORE
    topic: bytes = b""
    track: bool = False    # SUBSCRIBE: a channel for this topic should exist
    untrack: bool = False  # UNSUBSCRIBE: the channel for this topic ends
    reason: str = ""       # REFUSE: why


@dataclass
class Gate:
    """The decisions for one bound XPUB (make a new one, or ``reset``, at every bind)."""

    manual: bool = True
    max_topic_bytes: int = MAX_TOPIC_BYTES
    max_channels: int = MAX_CHANNELS
    budget_messages: int = BUDGET_MESSAGES
    budget_bytes: int = BUDGET_BYTES
    granted: dict[bytes, int] = field(default_factory=dict)
    refused_open: dict[bytes, int] = field(default_factory=dict)
    granted_users: set[str] = field(default_factory=set)
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count (the actor resets it)
    messages: int = 0
    bytes: int = 0

    def reset(self, manual: bool) -> None:
        self.manual = manual
        self.granted = {}
        self.refused_open = {}
        self.granted_users = set()
        self.messages = 0
        self.bytes = 0

    @property
    def over_budget(self) -> bool:
        return self.messages >= self.budget_messages or self.bytes >= self.budget_bytes

    def decide(self, msg: bytes, user: str, state: AuthState | None,
               channels: "Container[bytes] | Sized") -> Decision:
        """What to do with one message received on the XPUB. ``channels``: the topics of
        the channels that exist now (``in`` and ``len``)."""
        if not msg or msg[0] not in (0, 1):
            return Decision(IGNORE)
        self.messages += 1
        self.bytes += len(msg)
        topic = msg[1:]
        if msg[0] == 0:
            return self._unsubscribe(topic, channels)
        if len(topic) > self.max_topic_bytes:
            return self._refuse(topic, TOO_LONG)
        if not self.manual:
            # libzmq already gave the pipe this topic (auth disabled); only the channel
            # table is ours to bound.
            if topic in channels:  # type: ignore[operator]
                return Decision(SUBSCRIBE, topic, track=True)
            if decode_topic(topic) is None:
                return Decision(SUBSCRIBE, topic)
            if len(channels) >= self.max_channels:  # type: ignore[arg-type]
                self.refused[FULL] = self.refused.get(FULL, 0) + 1
                return Decision(SUBSCRIBE, topic)
            return Decision(SUBSCRIBE, topic, track=True)
        reason = may_subscribe(state, user, topic)
        if reason is None and topic not in channels and len(channels) >= self.max_channels:  # type: ignore
            reason = FULL
        if reason is not None:
            return self._refuse(topic, reason)
        self.granted[topic] = self.granted.get(topic, 0) + 1
        self.granted_users.add(user)
        return Decision(SUBSCRIBE, topic, track=True)

    def _refuse(self, topic: bytes, reason: str) -> Decision:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self.manual and (topic in self.refused_open or len(self.refused_open) < self.max_channels):
            self.refused_open[topic] = self.refused_open.get(topic, 0) + 1
        return Decision(REFUSE, topic, reason=reason)

    def _unsubscribe(self, topic: bytes, channels: Any) -> Decision:
        if not self.manual:
            # libzmq reports an unsubscribe only when the topic's last subscriber left.
            return Decision(UNSUBSCRIBE, topic, untrack=topic in channels)
        n = self.refused_open.get(topic, 0)
        if n:
            if n == 1:
                del self.refused_open[topic]
            else:
                self.refused_open[topic] = n - 1
            return Decision(UNSUBSCRIBE, topic)
        n = self.granted.get(topic, 0)
        if n > 1:
            self.granted[topic] = n - 1
            return Decision(UNSUBSCRIBE, topic)
        if n == 1:
            del self.granted[topic]
        return Decision(UNSUBSCRIBE, topic, untrack=topic in channels)


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
        changed = []
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
