"""Watch channels: topic encoding, event matching and per-channel sequencing (SPEC section 5).

Rules: pure (no zmq, time, os or sockets here); deterministic; the actor shell feeds it
subscription changes and applied revisions, in revision order, and sends what it returns.

A channel is a key range plus the options that change the payload (prev_kv, no_put,
no_delete). Its topic is prefix-free (two length-prefixed byte strings after a fixed
head), so SUB's prefix matching acts as exact matching:

    b"W1" + flags(1 byte: 1 = prev_kv, 2 = no_put, 4 = no_delete)
          + len(key) (4 bytes BE) + key + len(range_end) (4 bytes BE) + range_end

Per channel the broadcaster keeps ``last``: a revision such that no matching event lies
in ``(last, position]`` other than those it published (the last published event
revision, or the broadcaster's position when the channel appeared, or the end of a gap
it could not fill). Each event message carries it as ``prev_revision`` and each progress
message as ``last_event_revision``, so a consumer that has delivered every matching
event up to D can tell it missed nothing as long as that value is <= D.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable

import msgpack

TOPIC_HEAD = b"W1"
FLAG_PREV_KV = 1
FLAG_NO_PUT = 2
FLAG_NO_DELETE = 4
_ALL_FLAGS = FLAG_PREV_KV | FLAG_NO_PUT | FLAG_NO_DELETE
_LEN = struct.Struct(">I")
PAYLOAD_VERSION = b"\x01"

# Events as storage sends them: [type, kv, prev_kv]; type "PUT" | "DELETE".
WireEvent = list


def encode_topic(key: bytes, range_end: bytes = b"", *, prev_kv: bool = False,
                 no_put: bool = False, no_delete: bool = False) -> bytes:
    """The topic of a channel. ``range_end`` as in SPEC section 2 (empty = one key,
    ``b"\\x00"`` = every key >= key)."""
    flags = (FLAG_PREV_KV if prev_kv else 0) | (FLAG_NO_PUT if no_put else 0) \
        | (FLAG_NO_DELETE if no_delete else 0)
    return b"".join((TOPIC_HEAD, bytes((flags,)), _LEN.pack(len(key)), key,
                     _LEN.pack(len(range_end)), range_end))


def decode_topic(topic: bytes) -> "ChannelSpec | None":
    """The channel of a topic, or None when it is not a well-formed channel topic."""
    if len(topic) < 11 or topic[:2] != TOPIC_HEAD:
        return None
    flags = topic[2]
    if flags & ~_ALL_FLAGS:
        return None
    (klen,) = _LEN.unpack_from(topic, 3)
    pos = 7 + klen
    if klen == 0 or pos + 4 > len(topic):
        return None
    key = topic[7:pos]
    (elen,) = _LEN.unpack_from(topic, pos)
    pos += 4
    if pos + elen != len(topic):
        return None
    range_end = topic[pos:]
    return ChannelSpec(key, range_end, bool(flags & FLAG_PREV_KV), bool(flags & FLAG_NO_PUT),
                       bool(flags & FLAG_NO_DELETE))


@dataclass(frozen=True)
class ChannelSpec:
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False
    no_put: bool = False
    no_delete: bool = False

    @property
    def topic(self) -> bytes:
        return encode_topic(self.key, self.range_end, prev_kv=self.prev_kv,
                            no_put=self.no_put, no_delete=self.no_delete)

    @property
    def single_key(self) -> bool:
        return not self.range_end

    def contains(self, key: bytes) -> bool:
        if not self.range_end:
            return key == self.key
        if key < self.key:
            return False
        return self.range_end == b"\x00" or key < self.range_end

    def wants(self, ev_type: str) -> bool:
        return not ((ev_type == "PUT" and self.no_put) or (ev_type == "DELETE" and self.no_delete))


def event_map(ev: WireEvent, with_prev_kv: bool) -> dict:
    """A wire event [type, kv, prev_kv] as SPEC's Event map."""
    out = {"type": ev[0], "kv": ev[1]}
    if with_prev_kv and ev[2] is not None:
        out["prev_kv"] = ev[2]
    return out


def filter_events(spec: ChannelSpec, events: Iterable[WireEvent]) -> list[dict]:
    """The Event maps of ``events`` that ``spec`` matches, in order."""
    return [event_map(ev, spec.prev_kv) for ev in events
            if spec.contains(ev[1]["key"]) and spec.wants(ev[0])]


def pack_payload(body: dict) -> bytes:
    return PAYLOAD_VERSION + msgpack.packb(body, use_bin_type=True)


def unpack_payload(frame: bytes) -> dict:
    if not frame or frame[:1] != PAYLOAD_VERSION:
        raise ValueError("watch payload: bad version byte")
    body = msgpack.unpackb(frame[1:], raw=False)
    if not isinstance(body, dict):
        raise ValueError("watch payload: not a map")
    return body


@dataclass
class Channel:
    spec: ChannelSpec
    topic: bytes
    # No matching event in (last, position] except those published; None until the
    # broadcaster knows its position. Invariant: last <= position once known.
    last: int | None = None
    progress_sent_at: int = -1  # position of the last progress message sent


@dataclass
class Broadcaster:
    """The channels and the position (every revision <= position has been published)."""

    position: int | None = None
    channels: dict[bytes, Channel] = field(default_factory=dict)
    _by_key: dict[bytes, list[Channel]] = field(default_factory=dict)
    _ranges: list[Channel] = field(default_factory=list)

    # --- subscriptions -------------------------------------------------------------
    def subscribe(self, topic: bytes) -> Channel | None:
        """A subscription to ``topic`` arrived: the channel (created if new), or None for
        a topic that is not a channel's."""
        ch = self.channels.get(topic)
        if ch is not None:
            return ch
        spec = decode_topic(topic)
        if spec is None:
            return None
        ch = Channel(spec, topic, last=self.position)
        self.channels[topic] = ch
        if spec.single_key:
            self._by_key.setdefault(spec.key, []).append(ch)
        else:
            self._ranges.append(ch)
        return ch

    def unsubscribe(self, topic: bytes) -> None:
        ch = self.channels.pop(topic, None)
        if ch is None:
            return
        if ch.spec.single_key:
            lst = self._by_key[ch.spec.key]
            lst.remove(ch)
            if not lst:
                del self._by_key[ch.spec.key]
        else:
            self._ranges.remove(ch)

    def clear(self) -> None:
        """Every subscription is gone (the XPUB was rebound): no channel is left. The
        position stays; a channel subscribed again starts from it (its consumers see the
        gap in ``prev_revision`` and read it from history)."""
        self.channels = {}
        self._by_key = {}
        self._ranges = []

    # --- revisions -----------------------------------------------------------------
    def start(self, position: int) -> None:
        """The position is known (from storage's current revision at start)."""
        assert self.position is None
        self.position = position
        for ch in self.channels.values():
            ch.last = position

    def publish(self, revision: int, events: list[WireEvent]) -> list[tuple[bytes, bytes]]:
        """The messages for the next revision: one per channel with matching events."""
        assert self.position is not None and revision == self.position + 1, (self.position, revision)
        self.position = revision
        matched: dict[bytes, tuple[Channel, list[WireEvent]]] = {}
        for ev in events:
            key = ev[1]["key"]
            for ch in self._by_key.get(key, ()):
                if ch.spec.wants(ev[0]):
                    matched.setdefault(ch.topic, (ch, []))[1].append(ev)
            for ch in self._ranges:
                if ch.spec.contains(key) and ch.spec.wants(ev[0]):
                    matched.setdefault(ch.topic, (ch, []))[1].append(ev)
        out = []
        for topic, (ch, evs) in matched.items():
            body = {"revision": revision, "prev_revision": ch.last,
                    "events": [event_map(ev, ch.spec.prev_kv) for ev in evs]}
            ch.last = revision
            out.append((topic, pack_payload(body)))
        return out

    def skip_to(self, revision: int) -> None:
        """Revisions up to ``revision`` cannot be published (compacted away): move on and
        make every channel's next message show the gap."""
        assert self.position is not None and revision >= self.position
        self.position = revision
        for ch in self.channels.values():
            ch.last = revision

    def progress(self, channels: Iterable[Channel]) -> list[tuple[bytes, bytes]]:
        """Progress messages: every matching event <= position has been published."""
        if self.position is None:
            return []
        out = []
        for ch in channels:
            ch.progress_sent_at = self.position
            out.append((ch.topic, pack_payload({"progress_revision": self.position,
                                                "last_event_revision": ch.last})))
        return out

    def stale_progress(self) -> list[Channel]:
        """Channels that have not had a progress message at the current position."""
        return [ch for ch in self.channels.values() if ch.progress_sent_at != self.position]


@dataclass
class Sequencer:
    """Puts revisions received out of band (live pushes, history pages) back in order.

    ``next`` is the first revision not yet handed out; revisions are dense (every
    revision has at least one event)."""

    next: int | None = None
    pending: dict[int, list[WireEvent]] = field(default_factory=dict)

    def add(self, revision: int, events: list[WireEvent]) -> None:
        if self.next is not None and revision < self.next:
            return
        self.pending.setdefault(revision, events)

    def start(self, next_revision: int) -> None:
        self.next = next_revision
        for r in [r for r in self.pending if r < next_revision]:
            del self.pending[r]

    def pop_ready(self) -> list[tuple[int, list[WireEvent]]]:
        out = []
        if self.next is None:
            return out
        while self.next in self.pending:
            out.append((self.next, self.pending.pop(self.next)))
            self.next += 1
        return out

    def gap(self, known_revision: int) -> tuple[int, int] | None:
        """The revisions to fetch from history: ``(first, last)`` with last = 0 meaning
        "up to the current revision", or None when nothing is missing."""
        if self.next is None:
            return None
        if self.pending:
            lowest = min(self.pending)
            if lowest > self.next:
                return (self.next, lowest - 1)
            return None
        if known_revision >= self.next:
            return (self.next, 0)
        return None

    def skip_to(self, revision: int) -> None:
        """Revisions <= revision are given up."""
        assert self.next is not None
        if revision + 1 > self.next:
            self.start(revision + 1)
