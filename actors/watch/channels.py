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

Bounds (issue 12; SPEC section 5 "Bounds"):
- A channel's key and range_end are each at most ``MAX_TOPIC_KEY`` bytes (a topic at most
  ``MAX_TOPIC_BYTES``). A consumer of a longer key or range subscribes to the channel
  ``protocol.client.watch.covering_range`` names (a wider range with short bounds) and filters its events.
- An event message longer than ``max_message`` bytes is not published: the channel's
  ``last`` moves to its revision and a progress message goes out in its place, so the
  consumer sees the hole and reads that revision from history.
- Matching one event costs O(distinct prefix lengths + matches + generic ranges), never
  O(channels): single keys, prefixes and from-key ranges are indexed; other ranges
  ("generic") are at most ``max_range_channels``.
- Progress work per tick is O(what changed + channels / HEARTBEAT_SLOTS): the channels
  that published since their last progress (``take_dirty``), and one heartbeat slot.
- At most ``max_channels`` channels whose topics total at most ``max_channel_bytes``.
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import msgpack

from protocol.client.types import FROM_KEY_END, prefix_end
from protocol.client.watch import MAX_TOPIC_KEY

TOPIC_HEAD = b"W1"
FLAG_PREV_KV = 1
FLAG_NO_PUT = 2
FLAG_NO_DELETE = 4
_ALL_FLAGS = FLAG_PREV_KV | FLAG_NO_PUT | FLAG_NO_DELETE
_LEN = struct.Struct(">I")
PAYLOAD_VERSION = b"\x01"

# The topic rule is the client's (the wire contract, protocol/client/watch.py): one copy.
MAX_TOPIC_BYTES = 11 + 2 * MAX_TOPIC_KEY  # the longest channel topic (523 bytes)
MAX_WATCH_MESSAGE = 32 * 1024            # topic + payload of one published message
MAX_CHANNELS = 200_000
MAX_CHANNEL_BYTES = 8 * 1024 * 1024      # the channels' topics together
MAX_RANGE_CHANNELS = 1_000               # channels of a range neither a prefix nor from-key
HEARTBEAT_SLOTS = 10                     # one slot per progress tick: a heartbeat each 10 ticks

# Why a topic cannot be a channel (counted per reason by the gate).
NOT_A_CHANNEL = "not_a_channel"
TOO_LONG = "topic_too_long"
FULL = "too_many_channels"

# Events as storage sends them: [type, kv, prev_kv]; type "PUT" | "DELETE" (a msgpack array,
# so a list of mixed items: str, KeyValue map, KeyValue map or None).
WireEvent = list[Any]
# An Event map of SPEC (type, kv, prev_kv) and a watch payload: msgpack maps with str keys.
EventMap = dict[str, Any]
Payload = dict[str, Any]


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


KIND_KEY, KIND_PREFIX, KIND_FROM, KIND_RANGE = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
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

    @property
    def kind(self) -> int:
        """How the broadcaster indexes it: one key, a prefix, from a key on, other range."""
        if not self.range_end:
            return KIND_KEY
        if self.range_end == FROM_KEY_END:
            return KIND_FROM
        if self.range_end == prefix_end(self.key):
            return KIND_PREFIX
        return KIND_RANGE

    @property
    def short(self) -> bool:
        """Both bounds within MAX_TOPIC_KEY: may be a channel."""
        return len(self.key) <= MAX_TOPIC_KEY and len(self.range_end) <= MAX_TOPIC_KEY

    def contains(self, key: bytes) -> bool:
        if not self.range_end:
            return key == self.key
        if key < self.key:
            return False
        return self.range_end == b"\x00" or key < self.range_end

    def wants(self, ev_type: str) -> bool:
        return not ((ev_type == "PUT" and self.no_put) or (ev_type == "DELETE" and self.no_delete))


def event_map(ev: WireEvent, with_prev_kv: bool) -> EventMap:
    """A wire event [type, kv, prev_kv] as SPEC's Event map."""
    out: EventMap = {"type": ev[0], "kv": ev[1]}
    if with_prev_kv and ev[2] is not None:
        out["prev_kv"] = ev[2]
    return out


def filter_events(spec: ChannelSpec, events: Iterable[WireEvent]) -> list[EventMap]:
    """The Event maps of ``events`` that ``spec`` matches, in order."""
    return [event_map(ev, spec.prev_kv) for ev in events
            if spec.contains(ev[1]["key"]) and spec.wants(ev[0])]


def pack_payload(body: Payload) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return PAYLOAD_VERSION + packed


_PROGRESS_HEAD = PAYLOAD_VERSION + b"\x82" + msgpack.packb("progress_revision")  # a map of 2
_PROGRESS_LAST = msgpack.packb("last_event_revision")


def unpack_payload(frame: bytes) -> Payload:
    if not frame or frame[:1] != PAYLOAD_VERSION:
        raise ValueError("watch payload: bad version byte")
    body = msgpack.unpackb(frame[1:], raw=False)
    if not isinstance(body, dict):
        raise ValueError("watch payload: not a map")
    return body


@dataclass(eq=False, slots=True)
class Channel:
    spec: ChannelSpec
    topic: bytes
    # No matching event in (last, position] except those published; None until the
    # broadcaster knows its position. Invariant: last <= position once known.
    last: int | None = None
    progress_sent_at: int = -1  # position of the last progress message sent
    slot: int = 0               # its heartbeat slot
    kind: int = KIND_KEY


# The indexes (by key, by prefix, by from-key start) map a key to its channel, or to a
# list of its channels when several share the key (other flags): a list per key would
# cost ~90 bytes for every channel, and most keys have one.
_Index = dict[bytes, "Channel | list[Channel]"]


def _add(index: _Index, key: bytes, ch: Channel) -> bool:
    """Add ch under key; True when the key is new."""
    cur = index.get(key)
    if cur is None:
        index[key] = ch
        return True
    if isinstance(cur, list):
        cur.append(ch)
    else:
        index[key] = [cur, ch]
    return False


def _drop(index: _Index, key: bytes, ch: Channel) -> bool:
    """Remove ch from under key; True when the key is gone."""
    cur = index.get(key)
    if cur is None:
        return False
    if not isinstance(cur, list):
        if cur is not ch:
            return False
        del index[key]
        return True
    try:
        cur.remove(ch)
    except ValueError:
        return False
    if len(cur) == 1:
        index[key] = cur[0]
    return False


def _under(index: _Index, key: bytes) -> Sequence[Channel]:
    """The channels under key (a sequence)."""
    cur = index.get(key)
    if cur is None:
        return ()
    return cur if isinstance(cur, list) else (cur,)


@dataclass
class Broadcaster:
    """The channels and the position (every revision <= position has been published)."""

    position: int | None = None
    max_channels: int = MAX_CHANNELS
    max_channel_bytes: int = MAX_CHANNEL_BYTES
    max_range_channels: int = MAX_RANGE_CHANNELS
    max_message: int = MAX_WATCH_MESSAGE
    channels: dict[bytes, Channel] = field(default_factory=dict)
    topic_bytes: int = 0        # len(topic) summed over the channels
    oversize: int = 0           # event messages replaced by a progress message (the actor resets it)
    # Channels that published an event since their last progress message: each gets one at
    # the next progress tick, so a lost last message shows quickly (SPEC section 5).
    dirty: dict[bytes, Channel] = field(default_factory=dict)
    slots: list[dict[bytes, Channel]] = field(
        default_factory=lambda: [{} for _ in range(HEARTBEAT_SLOTS)])
    _next_slot: int = 0
    _peak: int = 0
    # key -> Channel | list[Channel] (see _add)
    _by_key: dict[bytes, Channel | list[Channel]] = field(default_factory=dict)
    _prefix: dict[bytes, Channel | list[Channel]] = field(default_factory=dict)
    _prefix_lens: dict[int, int] = field(default_factory=dict)  # prefix length -> channels
    _from: dict[bytes, Channel | list[Channel]] = field(default_factory=dict)
    _from_keys: list[bytes] = field(default_factory=list)  # sorted keys of _from
    _ranges: list[Channel] = field(default_factory=list)

    # --- subscriptions -------------------------------------------------------------
    def admit(self, topic: bytes) -> str | None:
        """None when a channel for ``topic`` exists or may be made now, else why not
        (NOT_A_CHANNEL, TOO_LONG or FULL)."""
        if topic in self.channels:
            return None
        if len(topic) > MAX_TOPIC_BYTES:
            return TOO_LONG
        spec = decode_topic(topic)
        if spec is None:
            return NOT_A_CHANNEL
        if not spec.short:
            return TOO_LONG
        if len(self.channels) >= self.max_channels \
                or self.topic_bytes + len(topic) > self.max_channel_bytes:
            return FULL
        if spec.kind == KIND_RANGE and len(self._ranges) >= self.max_range_channels:
            return FULL
        return None

    def canonical(self, topic: bytes) -> bytes:
        """The channel table's bytes object for ``topic`` (``topic`` itself when it has
        no channel): the gate keeps this one, so equal topics are held once."""
        ch = self.channels.get(topic)
        return topic if ch is None else ch.topic

    def subscribe(self, topic: bytes) -> Channel | None:
        """A subscription to ``topic`` arrived: the channel (created if new), or None for
        a topic that is not (or may not be, ``admit``) a channel's."""
        ch = self.channels.get(topic)
        if ch is not None:
            return ch
        if self.admit(topic) is not None:
            return None
        spec = decode_topic(topic)
        assert spec is not None
        ch = Channel(spec, topic, last=self.position, slot=self._next_slot, kind=spec.kind)
        self._next_slot = (self._next_slot + 1) % HEARTBEAT_SLOTS
        self.channels[topic] = ch
        self.topic_bytes += len(topic)
        self._peak = max(self._peak, len(self.channels))
        self.slots[ch.slot][topic] = ch
        if ch.kind == KIND_KEY:
            _add(self._by_key, spec.key, ch)
        elif ch.kind == KIND_PREFIX:
            _add(self._prefix, spec.key, ch)
            n = len(spec.key)
            self._prefix_lens[n] = self._prefix_lens.get(n, 0) + 1
        elif ch.kind == KIND_FROM:
            if _add(self._from, spec.key, ch):
                bisect.insort(self._from_keys, spec.key)
        else:
            self._ranges.append(ch)
        return ch

    def unsubscribe(self, topic: bytes) -> None:
        ch = self.channels.pop(topic, None)
        if ch is None:
            return
        self.topic_bytes -= len(topic)
        self.slots[ch.slot].pop(topic, None)
        self.dirty.pop(topic, None)
        key = ch.spec.key
        if ch.kind == KIND_KEY:
            _drop(self._by_key, key, ch)
        elif ch.kind == KIND_PREFIX:
            _drop(self._prefix, key, ch)
            n = len(key)
            if self._prefix_lens[n] == 1:
                del self._prefix_lens[n]
            else:
                self._prefix_lens[n] -= 1
        elif ch.kind == KIND_FROM:
            if _drop(self._from, key, ch):
                i = bisect.bisect_left(self._from_keys, key)
                del self._from_keys[i]
        else:
            self._ranges.remove(ch)

    def clear(self) -> None:
        """Every subscription is gone (the XPUB was rebound): no channel is left. The
        position stays; a channel subscribed again starts from it (its consumers see the
        gap in ``prev_revision`` and read it from history)."""
        self.channels = {}
        self.topic_bytes = 0
        self.dirty = {}
        self.slots = [{} for _ in range(HEARTBEAT_SLOTS)]
        self._peak = 0
        self._by_key, self._prefix, self._prefix_lens = {}, {}, {}
        self._from, self._from_keys, self._ranges = {}, [], []

    def compact(self) -> bool:
        """Give back the memory of channels that are gone (a dict keeps its size after
        deletions): rebuild the tables once they hold a quarter of their peak. True when
        it did."""
        if self._peak < 1024 or len(self.channels) * 4 > self._peak:
            return False
        self.channels = dict(self.channels)
        self.dirty = dict(self.dirty)
        self.slots = [dict(s) for s in self.slots]
        self._by_key, self._prefix = dict(self._by_key), dict(self._prefix)
        self._from = dict(self._from)
        self._peak = len(self.channels)
        return True

    # --- matching ------------------------------------------------------------------
    def matching(self, key: bytes) -> Iterator[Channel]:
        """The channels whose range holds ``key`` (each once)."""
        yield from _under(self._by_key, key)
        if self._prefix_lens:
            n = len(key)
            for length in self._prefix_lens:
                if length <= n:
                    yield from _under(self._prefix, key[:length])
        if self._from_keys:
            for start in self._from_keys[:bisect.bisect_right(self._from_keys, key)]:
                yield from _under(self._from, start)
        for ch in self._ranges:
            if ch.spec.key <= key < ch.spec.range_end:
                yield ch

    # --- revisions -----------------------------------------------------------------
    def start(self, position: int) -> None:
        """The position is known (from storage's current revision at start)."""
        assert self.position is None
        self.position = position
        for ch in self.channels.values():
            ch.last = position

    def publish(self, revision: int, events: list[WireEvent]) -> list[tuple[bytes, bytes]]:
        """The messages for the next revision: one per channel with matching events (a
        progress message instead when the events message would exceed max_message)."""
        assert self.position is not None and revision == self.position + 1, (self.position, revision)
        self.position = revision
        matched: dict[bytes, tuple[Channel, list[WireEvent]]] = {}
        for ev in events:
            for ch in self.matching(ev[1]["key"]):
                if ch.spec.wants(ev[0]):
                    entry = matched.get(ch.topic)
                    if entry is None:
                        matched[ch.topic] = (ch, [ev])
                    else:
                        entry[1].append(ev)
        out = []
        for topic, (ch, evs) in matched.items():
            body = {"revision": revision, "prev_revision": ch.last,
                    "events": [event_map(ev, ch.spec.prev_kv) for ev in evs]}
            ch.last = revision
            payload = pack_payload(body)
            if len(topic) + len(payload) > self.max_message:
                # Too big for the live path: say at once that revision holds events for
                # this channel; the consumer reads it from history (SPEC section 5).
                self.oversize += 1
                self.dirty.pop(topic, None)
                out.extend(self.progress((ch,)))
                continue
            self.dirty[topic] = ch
            out.append((topic, payload))
        return out

    def skip_to(self, revision: int) -> None:
        """Revisions up to ``revision`` cannot be published (compacted away): move on and
        make every channel's next message show the gap."""
        assert self.position is not None and revision >= self.position
        self.position = revision
        for ch in self.channels.values():
            ch.last = revision

    def progress(self, channels: Iterable[Channel]) -> list[tuple[bytes, bytes]]:
        """Progress messages: every matching event <= position has been published (or,
        for one too big, announced by ``last_event_revision``)."""
        if self.position is None:
            return []
        position = self.position
        head = _PROGRESS_HEAD + msgpack.packb(position)  # the same bytes as pack_payload of
        out = []                                          # {"progress_revision", "last_event_revision"}
        for ch in channels:
            ch.progress_sent_at = position
            out.append((ch.topic, head + _PROGRESS_LAST + msgpack.packb(ch.last)))
        return out

    def take_dirty(self) -> list[Channel]:
        """The channels that published since their last progress message (and forget them)."""
        out = list(self.dirty.values())
        self.dirty = {}
        return out

    def heartbeat_slot(self, tick: int) -> list[Channel]:
        """The channels whose heartbeat falls on this tick (a tenth of them)."""
        return list(self.slots[tick % HEARTBEAT_SLOTS].values())


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
        out: list[tuple[int, list[WireEvent]]] = []
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
