"""The MVCC key-value store: etcd v3 semantics over an ordered ``Backend``.

Rules:
- pure: no I/O of its own, only calls to the backend it is given (no rocksdict, zmq, time,
  os, socket here); deterministic: the same entries give the same results, the same
  bytes on disk and the same ``hash_kv`` on every member;
- ``apply`` writes everything of one call (data of every entry + ``applied_index`` +
  ``current_revision`` + ``compact_revision``) in ONE atomic backend write, so a crash
  leaves either all of it or none of it; entries at or below ``applied_index`` are skipped,
  which makes replay after a crash idempotent;
- a failing op (``Compacted``, ``KeyNotFound``, ``LeaseNotFound``, ...) changes nothing;
- opening is O(1) in the number of keys: the index lives on disk, only meta is read.

On-disk layout (column families; integers big-endian so byte order = numeric order).
Each version's record is stored ONCE (issue 13: three copies of every value made a data
dir of 1M keys x 256 B 918 MB; one makes it about a third):
- ``key``:  user key -> msgpack ``[value, create_revision, mod_revision, version, lease]``,
  the latest live record of every key (deleted keys are absent): current reads, counts.
  A change at sub > 0 keeps its sub as a 6th item (``_WITH_SUB``), so that the change
  superseding it finds its ``hist`` entry without a read; every read strips it
  (``_strip``): ranges, history and ``hash_kv`` see the 5-item record only.
- ``hist``: escape(key) + main(8) + sub(8) -> (escape: 0x00 -> 0x00 0xFF, then terminator
  0x00 0x01; see keys.py) one of
    ``b"\xc0"`` (``_LATEST``, msgpack nil): the key's newest change, whose record is the
      one in ``key``; only the newest entry of a live key holds it;
    the record of that change (msgpack array, as in ``key``): every older change. The
      change that supersedes a ``_LATEST`` entry (a put or delete of that key) writes the
      record there, at (mod_revision, sub), in the same batch (``_supersede``: a blind
      write in a store made by this layout, ``meta`` ``layout``; in an older store one
      point read and, when that misses, a reverse seek);
    ``b""``: a tombstone.
  A read at revision R takes, per key, the newest entry with main <= R (``_LATEST`` read
  through ``key``).
- ``rev``:  main(8) + sub(8) -> msgpack ``[key, is_tombstone]``: history in revision order
  (watch catch-up, compaction); the record is read from ``hist`` (``_rev_change``).
  Entries at or below ``compact_revision`` are removed by compaction.
  Older layout (read as is, no migration): ``hist`` held the record in every entry,
  newest included, and ``rev`` held ``[key, is_tombstone, value, create_revision,
  mod_revision, version, lease]``; a ``rev`` value longer than two items carries its
  record, and ``_supersede`` leaves an entry that already holds a record untouched.
- ``meta``: ``applied_index``, ``current_revision``, ``compact_revision``, ``key_count``
  (8-byte unsigned BE each) and ``x/<name>`` for small values callers keep (ids);
  ``layout`` -> ``b"\x02"`` in a store whose every write was made by this layout (set
  with the first apply of an empty store; never in an older one, even once it is written
  by this code);
  ``auth`` -> msgpack ``AuthState.to_wire()`` (actors/storage/auth): users, roles,
  permissions, written in the same batch as the entries that changed it, so a crash,
  a checkpoint or a snapshot carries it with the data it protects;
  ``alarm/`` + member_id(8) + type -> ``b""`` for every active alarm (mvcc/alarms.py).
- ``lease``: id(8) -> msgpack ``[ttl_s, remaining_ms]``: every lease that exists;
  ``remaining_ms`` is the remaining TTL last checkpointed through the log (0 = none: the
  full TTL counts). Deadlines are not here: they are the leader's, in memory.
- ``lease_key``: id(8) + user key -> ``b""``: the keys attached to each lease. A put with
  a lease attaches the key (and detaches it from its previous lease), a put without one
  detaches it, ``ignore_lease`` keeps it; a delete detaches it.

Leases: ``lease_grant`` / ``lease_checkpoint`` never change the revision; ``lease_revoke``
and ``lease_expire`` (the leader's revocation of an expired lease) delete every attached
key in ONE revision (in key order), or change no revision when none is attached.

Auth (issue 11): every entry is given with the auth it carries (``(index, op, auth)``;
auth None, ``(user, auth_revision)``, or ``SERVER`` for the entries the server writes
itself) and is checked with ``auth.check`` against the auth state as the entries before
it in the same batch left it, BEFORE it runs; a refusal is that entry's error result,
the same on every member. Auth changes (``AUTH_ENTRY_OPS``) go to ``auth.apply_auth``.

Revisions: ``current_revision`` starts at 1; each put, each delete that deleted something
and each txn whose executed branch wrote adds one. The changes of one request are stored at
``(main, sub)`` with sub = 0, 1, ... Compaction at R removes, for each key changed at or
below R, every change older than its newest change <= R, and that newest change as well
when it is a tombstone; ``rev`` entries <= R go too.

Compaction has two halves. The `compact` entry's apply is LOGICAL and O(changes at R): it
checks R, sets ``compact_revision`` (reads and history below R fail from then on), keeps
the changes of R for ``history`` (``META_COMPACT_EVENTS``) and records that physical work
is pending. ``compact_step`` then removes the obsolete rows in slices (the storage actor
runs them between other work), each slice one atomic write that also moves the cursor
``META_COMPACT_CURSOR`` (the first ``rev`` key not yet processed; absent = nothing
pending), so a restart resumes where it stopped. A later compaction only moves the target.
Reads at or above the compact revision, and so ``hash_kv``, are the same whatever the
physical progress. ``hash_kv_job`` hashes a pinned ``Backend.snapshot()`` in steps.
"""
from __future__ import annotations

import bisect
import copy
import hashlib
import operator
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import msgpack

from actors.storage.auth import AuthState, apply_auth, check as auth_check
from actors.storage.mvcc import alarms as alarm_rules
from actors.storage.mvcc.keys import escape, hist_key, prefix, split_hist_key
from actors.storage.mvcc.memory import Backend, ReadView
from actors.storage.mvcc.revision import Revision, rev_bytes
from actors.storage.mvcc.shapes import KeyValue, Op, Record, Response
from protocol.errors import (
    Compacted,
    FutureRevision,
    KeyNotFound,
    LeaseExists,
    LeaseNotFound,
    QkvError,
    TooManyOps,
)

CF_KEY = "key"
CF_HIST = "hist"
CF_REV = "rev"
CF_META = "meta"
CF_LEASE = "lease"
CF_LEASE_KEY = "lease_key"
COLUMN_FAMILIES = (CF_KEY, CF_HIST, CF_REV, CF_META, CF_LEASE, CF_LEASE_KEY)

META_APPLIED_INDEX = b"applied_index"
META_CURRENT_REVISION = b"current_revision"
META_COMPACT_REVISION = b"compact_revision"
META_KEY_COUNT = b"key_count"
META_COMPACT_EVENTS = b"compact_events"  # msgpack [compact_revision, [rev record, ...]]
META_AUTH = b"auth"  # msgpack AuthState.to_wire()
# Physical compaction's progress: the first ``rev`` key (main(8) + sub(8), or a key just
# after one) not yet processed; pending while it is below rev_bytes(compact_revision + 1).
META_COMPACT_CURSOR = b"compact_cursor"
_META_USER_PREFIX = b"x/"
HISTORY_LIMIT_DEFAULT = 1000  # revisions examined by one `history` call
HISTORY_LIMIT_MAX = 10_000

# The auth of an entry the server writes itself (lease expiry and checkpoints,
# auto-compaction, alarms): not a client request, so never checked. The storage actor
# gives it to entries with req_id 0, which no gateway ever uses for a client request.
SERVER = "<server>"
# Entries applied by the auth core (auth.apply_auth); `authenticate` changes nothing.
AUTH_CHANGE_OPS = frozenset(("auth_enable", "auth_disable", "user_add", "user_delete", "user_change_password",
                             "user_grant_role", "user_revoke_role", "role_add", "role_delete",
                             "role_grant_permission", "role_revoke_permission"))
AUTH_ENTRY_OPS = AUTH_CHANGE_OPS | {"authenticate"}

_U64 = struct.Struct(">Q")
_STOP_CHECK_EVERY = 8  # compact_step / HashJob.step ask their stop() every this many items
_TOMBSTONE = b""
# A ``hist`` value: "this is the key's newest change; its record is the one in ``key``"
# (msgpack nil; a record is a msgpack array, a tombstone is empty). Only the newest entry
# of a live key holds it; the change that supersedes it writes the record there.
_LATEST = b"\xc0"
# A ``key`` record of a change at sub > 0 carries the sub as a 6th item (msgpack fixarray
# of 6 starts with this byte); reads strip it (``_strip``): it is not part of the record.
_WITH_SUB = 0x96
_WITH_SUB_AT = 5
# META: set in the first write of a store made by this layout (never by older versions):
# every live key's newest ``hist`` entry then holds ``_LATEST`` at (mod_revision, sub).
META_LAYOUT = b"layout"
_LAYOUT_ONE_COPY = b"\x02"

# Record positions in the msgpack array of ``key`` and ``hist`` values.
_VALUE, _CREATE, _MOD, _VERSION, _LEASE = range(5)


def _pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def _unpack(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False)


def _kv(key: bytes, rec: Record) -> KeyValue:
    return {
        "key": key,
        "value": rec[_VALUE],
        "create_revision": rec[_CREATE],
        "mod_revision": rec[_MOD],
        "version": rec[_VERSION],
        "lease": rec[_LEASE],
    }


def _tombstone_kv(key: bytes, main: int) -> KeyValue:
    return {"key": key, "value": b"", "create_revision": 0, "mod_revision": main,
            "version": 0, "lease": 0}


def _strip(raw: bytes) -> bytes:
    """A ``key`` record without its trailing sub (see the layout): the logical record."""
    return raw if raw[0] != _WITH_SUB else _pack(_unpack(raw)[:_WITH_SUB_AT])


def _resolve(view: "_View", key: bytes, raw: bytes) -> bytes:
    """The packed record of a ``hist`` value that is not a tombstone."""
    if raw == _LATEST:
        latest = view.get(CF_KEY, key)
        assert latest is not None, "a live key's newest history entry without its record"
        return _strip(latest)
    return raw


def _supersede(view: "_View", key: bytes, mod: int, raw: bytes) -> None:
    """Before a change of a live key: write its record (``raw``, from ``key``; last changed
    at main ``mod``) into its newest ``hist`` entry, which holds ``_LATEST``. In a store
    made by this layout (``view.blind``) that entry is at (mod, sub) with sub from the
    record: a write, no read. In an older store it may hold the record already, or be
    elsewhere: one point read, and a reverse seek when that does not find ``_LATEST``."""
    sub = 0
    if raw[0] == _WITH_SUB:
        rec = _unpack(raw)
        sub = rec[_WITH_SUB_AT]
        raw = _pack(rec[:_WITH_SUB_AT])
    hk = hist_key(key, mod, sub)
    if view.blind or view.get(CF_HIST, hk) == _LATEST:
        view.put(CF_HIST, hk, raw)
        return
    for hk, hraw in view.iterate(CF_HIST, escape(key), hist_key(key, mod + 1, 0), reverse=True):
        if hraw == _LATEST:
            view.put(CF_HIST, hk, raw)
        return


def _rev_change(view: "_View", rk: bytes, raw: bytes) -> tuple[int, int, bytes, bool, Record | None]:
    """``(main, sub, key, is_tombstone, record or None for a tombstone)`` of a ``rev``
    entry: the record is the entry's own in the older layout (``[key, is_tombstone,
    *record]``), else read from ``hist`` (and ``key`` for the newest change of a key)."""
    main, sub = Revision.from_bytes(rk)
    key, is_tombstone, *rec = _unpack(raw)
    if is_tombstone:
        return main, sub, key, True, None
    if not rec:
        hraw = view.get(CF_HIST, hist_key(key, main, sub))
        assert hraw is not None and hraw != _TOMBSTONE, "a change without its history entry"
        rec = _unpack(_resolve(view, key, hraw))
    return main, sub, key, False, rec


def _change(view: "_View", key: bytes, main: int, sub: int, is_tombstone: bool, rec: Record | None,
            want_prev: bool) -> tuple[Record | None, KeyValue | None]:
    """``(record, prev_kv)`` of the change of ``key`` at ``(main, sub)`` (a ``rev`` entry):
    the record is ``rec`` when the entry carried it (older layout), None for a tombstone,
    else read from ``hist``; prev_kv (only ``want_prev``) is the KeyValue before it, None if
    absent. One reverse walk over the key's ``hist`` entries from the change."""
    need_rec = not is_tombstone and not rec
    if not need_rec and not want_prev:
        return (None if is_tombstone else rec), None
    hk = hist_key(key, main, sub)
    prev_kv = None
    for k, v in view.iterate(CF_HIST, escape(key), hk + b"\x00" if need_rec else hk, reverse=True):
        if need_rec:
            assert k == hk and v != _TOMBSTONE, "a change without its history entry"
            rec, need_rec = _unpack(_resolve(view, key, v)), False
            if not want_prev:
                break
            continue
        if v != _TOMBSTONE:
            prev_kv = _kv(key, _unpack(_resolve(view, key, v)))
        break
    assert not need_rec, "a change without its history entry"
    return (None if is_tombstone else rec), prev_kv


@dataclass
class Event:
    type: str  # "PUT" | "DELETE"
    kv: KeyValue  # for DELETE: key, mod_revision = the delete's revision, others 0
    prev_kv: KeyValue | None = None


@dataclass
class ApplyResult:
    index: int
    revision: int  # the store revision after this entry
    response: Response | None = None  # op result per SPEC (no header); None for an empty entry
    error: QkvError | None = None
    events: list[Event] = field(default_factory=list)


# --- a view of the backend with layers of pending writes ------------------------------
class _Layer:
    """Pending writes of one layer: per column family a dict, and (once the column family
    has been iterated in this layer) its keys in order, kept sorted by the later writes."""

    __slots__ = ("writes", "index")

    def __init__(self) -> None:
        self.writes: dict[str, dict[bytes, bytes | None]] = {}
        self.index: dict[str, list[bytes]] = {}

    def keys_in(self, cf: str, start: bytes, end: bytes | None) -> list[bytes]:
        """The pending keys of ``cf`` in ``[start, end)``, in order: O(log n + found)."""
        writes = self.writes.get(cf)
        if not writes:
            return []
        keys = self.index.get(cf)
        if keys is None:
            keys = self.index[cf] = sorted(writes)
        lo = bisect.bisect_left(keys, start)
        hi = len(keys) if end is None else bisect.bisect_left(keys, end, lo)
        return keys[lo:hi] if lo < hi else []


class _View:
    """The backend as the current ``apply`` call has changed it so far.

    ``layers[0]`` holds the pending writes of the whole call; each op runs in a layer of
    its own (``push``), merged down when it succeeds and dropped when it fails.
    ``iterate`` costs O(log pending + pending keys in the range), never a scan of every
    pending write (a txn's range compares, a batch of thousands of entries).
    """

    # A commit that brings more new keys than this fraction of the layer below drops that
    # layer's key index (rebuilt by one sort at its next iterate) instead of inserting
    # each key on its own.
    _REINDEX_FRACTION = 8

    def __init__(self, backend: ReadView, blind: bool = False) -> None:
        self.backend = backend
        self.layers: list[_Layer] = [_Layer()]
        self.blind = blind  # _supersede may write without reading (see META_LAYOUT)

    def push(self) -> None:
        self.layers.append(_Layer())

    def commit(self) -> None:
        top = self.layers.pop()
        below = self.layers[-1]
        for cf, writes in top.writes.items():
            dest = below.writes.get(cf)
            if dest is None:
                below.writes[cf] = writes
                below.index.pop(cf, None)
                if cf in top.index:
                    below.index[cf] = top.index[cf]
                continue
            keys = below.index.get(cf)
            if keys is not None:
                new = [k for k in writes if k not in dest]
                if len(new) * self._REINDEX_FRACTION > len(keys):
                    del below.index[cf]
                else:
                    for k in new:
                        bisect.insort(keys, k)
            dest.update(writes)

    def discard(self) -> None:
        self.layers.pop()

    def untouched(self) -> bool:
        """No pending writes: the view is the backend as it is."""
        return all(not layer.writes for layer in self.layers)

    def put(self, cf: str, key: bytes, value: bytes | None) -> None:
        layer = self.layers[-1]
        writes = layer.writes.get(cf)
        if writes is None:
            writes = layer.writes[cf] = {}
        if key not in writes:
            keys = layer.index.get(cf)
            if keys is not None:
                bisect.insort(keys, key)
        writes[key] = value

    def get(self, cf: str, key: bytes) -> bytes | None:
        for layer in reversed(self.layers):
            writes = layer.writes.get(cf)
            if writes is not None and key in writes:
                return writes[key]
        return self.backend.get(cf, key)

    def iterate(
        self, cf: str, start: bytes, end: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        found = [(layer.writes[cf], keys) for layer in self.layers
                 if (keys := layer.keys_in(cf, start, end))]
        base = self.backend.iterate(cf, start, end, reverse)
        if not found:
            return base
        if len(found) == 1:
            writes, keys = found[0]
            pending = [(k, writes[k]) for k in keys]
        else:
            merged: dict[bytes, bytes | None] = {}
            for writes, keys in found:  # lower layers first: the upper ones win
                for k in keys:
                    merged[k] = writes[k]
            pending = sorted(merged.items())
        if reverse:
            pending.reverse()
        return _merge(base, pending, reverse)

    def batch(self) -> list[tuple[str, bytes, bytes | None]]:
        assert len(self.layers) == 1, "an op layer was left open"
        return [(cf, k, v) for cf, writes in self.layers[0].writes.items() for k, v in writes.items()]


def _merge(base: Iterator[tuple[bytes, bytes]], pending: list[tuple[bytes, bytes | None]],
           reverse: bool) -> Iterator[tuple[bytes, bytes]]:
    """Merge a backend iterator with sorted pending writes (pending wins; None = deleted)."""
    i = 0
    n = len(pending)
    for k, v in base:
        while i < n and (pending[i][0] > k if reverse else pending[i][0] < k):
            pk, pv = pending[i]
            i += 1
            if pv is not None:
                yield pk, pv
        if i < n and pending[i][0] == k:
            pk, pv = pending[i]
            i += 1
            if pv is not None:
                yield pk, pv
            continue
        yield k, v
    while i < n:
        pk, pv = pending[i]
        i += 1
        if pv is not None:
            yield pk, pv


# --- the keys a txn may examine (SPEC `txn`, --max-txn-keys) ---------------------------
class _KeyBudget:
    """Keys one txn's compares, ranges and deletes may examine, summed over the whole txn.

    The limit is the entry's own (``max_txn_keys``, written by the gateway that took the
    request), so every member counts the same keys of the same state and refuses at the
    same key: the txn then fails as a whole with ``too_many_ops`` and, like any failed op,
    changes nothing. At most ``limit + 1`` keys are examined before the refusal.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int = 1) -> None:
        self.used += n
        if self.used > self.limit:
            raise TooManyOps(f"etcdserver: too many keys examined by txn request (more than {self.limit}: "
                             f"--max-txn-keys)", limit=self.limit)

    def counted(self, items: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        for item in items:
            self.take()
            yield item


def _counted(budget: _KeyBudget | None, items: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
    return items if budget is None else budget.counted(items)


# --- per-call working state -------------------------------------------------------------
@dataclass
class _State:
    applied_index: int
    current_revision: int
    compact_revision: int
    key_count: int
    alarms: frozenset[alarm_rules.Alarm] = frozenset()  # (member_id, type): mvcc/alarms.py
    auth: AuthState = field(default_factory=AuthState)  # replaced (copied), never changed in place


@dataclass
class _Changes:
    """The changes of one request: all at ``main``, sub = 0, 1, ..."""

    main: int
    sub: int = 0
    key_delta: int = 0
    events: list[Event] = field(default_factory=list)


class MVCCStore:
    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._state = _State(
            applied_index=self._read_meta(META_APPLIED_INDEX, 0),
            current_revision=self._read_meta(META_CURRENT_REVISION, 1),
            compact_revision=self._read_meta(META_COMPACT_REVISION, 0),
            key_count=self._read_meta(META_KEY_COUNT, 0),
            alarms=frozenset(alarm_rules.parse_alarm_key(k) for k, _ in
                             backend.iterate(CF_META, alarm_rules.META_PREFIX, alarm_rules.META_END)),
            auth=self._read_auth(backend),
        )
        self._cursor = self._read_cursor()  # physical compaction's (see compact_step)
        # The layout's flag (META_LAYOUT): a store written by an older version never has
        # it; an empty one gets it with its first write.
        self._layout_written = backend.get(CF_META, META_LAYOUT) == _LAYOUT_ONE_COPY
        self._one_copy = self._layout_written or (
            self._state.applied_index == 0 and next(iter(backend.iterate(CF_HIST, b"")), None) is None)

    @staticmethod
    def _read_auth(backend: Backend) -> AuthState:
        """The persisted auth state; a store that never had one has auth disabled. A state
        that does not decode is refused loudly (never silently replaced by an open one)."""
        raw = backend.get(CF_META, META_AUTH)
        return AuthState() if raw is None else AuthState.from_wire(_unpack(raw))

    def _read_meta(self, name: bytes, default: int) -> int:
        raw = self._backend.get(CF_META, name)
        return default if raw is None else _U64.unpack(raw)[0]

    # --- properties ------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def applied_index(self) -> int:
        return self._state.applied_index

    @property
    def current_revision(self) -> int:
        return self._state.current_revision

    @property
    def compact_revision(self) -> int:
        return self._state.compact_revision

    @property
    def alarms(self) -> frozenset[alarm_rules.Alarm]:
        """Active alarms, ``{(member_id, type)}`` (raised and disarmed through the log)."""
        return self._state.alarms

    @property
    def auth(self) -> AuthState:
        """The applied auth state (users, roles, permissions). Callers must not change it."""
        return self._state.auth

    def check_read(self, auth: Any, op: Op) -> None:
        """Raise the error that refuses a read (range, history, lease reads, snapshot, ...)
        to ``auth`` under the applied auth state; None when it may run."""
        auth_check(self._state.auth, auth, op, self._lease_keys_of)

    def _lease_keys_of(self, lease_id: Any) -> list[bytes]:
        if lease_id is None:
            return [k[8:] for k, _ in self._backend.iterate(CF_LEASE_KEY, b"")]
        return self.lease_keys(lease_id)

    def key_count(self) -> int:
        """Live keys at the current revision (exact: kept in meta)."""
        return self._state.key_count

    def status(self) -> Response:
        size = self._backend.size_bytes()
        return {
            "applied_index": self._state.applied_index,
            "current_revision": self._state.current_revision,
            "compact_revision": self._state.compact_revision,
            "key_count": self._state.key_count,
            "db_size": size,
            "db_size_in_use": size,
        }

    def get_meta(self, name: str) -> bytes | None:
        """A small value a caller keeps in the store (cluster id, member id, ...)."""
        return self._backend.get(CF_META, _META_USER_PREFIX + name.encode())

    def put_meta(self, name: str, value: bytes, sync: bool = True) -> None:
        self._backend.write([(CF_META, _META_USER_PREFIX + name.encode(), value)], sync=sync)

    # --- leases (reads of the applied state) -----------------------------------------
    def lease_get(self, lease_id: int) -> tuple[int, int] | None:
        """``(ttl_s, checkpointed remaining_ms or 0)`` of a lease, None if it does not exist."""
        if not 0 < lease_id < 2**64:
            return None
        raw = self._backend.get(CF_LEASE, _U64.pack(lease_id))
        if raw is None:
            return None
        ttl, remaining_ms = _unpack(raw)
        return ttl, remaining_ms

    def leases(self) -> list[tuple[int, int, int]]:
        """``(id, ttl_s, remaining_ms)`` of every lease, by id."""
        return [(_U64.unpack(k)[0], *_unpack(v)) for k, v in self._backend.iterate(CF_LEASE, b"")]

    def lease_keys(self, lease_id: int) -> list[bytes]:
        """The keys attached to a lease, in key order."""
        if not 0 < lease_id < 2**64:
            return []
        lo = _U64.pack(lease_id)
        hi = _U64.pack(lease_id + 1) if lease_id + 1 < 2**64 else None
        return [k[8:] for k, _ in self._backend.iterate(CF_LEASE_KEY, lo, hi)]

    @staticmethod
    def _lease_exists(view: "_View", lease_id: int) -> bool:
        return 0 < lease_id < 2**64 and view.get(CF_LEASE, _U64.pack(lease_id)) is not None

    # --- apply -----------------------------------------------------------------------
    def apply(self, entries: list[tuple[Any, ...]], sync: bool = False) -> list[ApplyResult]:
        """Apply entries ``(index, op)`` or ``(index, op, auth)`` (auth None when absent;
        ``SERVER`` for the server's own entries, which are not checked). op None (an empty
        entry, a conf change) only moves ``applied_index``; op a ``QkvError`` (an entry that
        did not validate, actors/runtime/entry_ops.py) is that error's result and changes
        nothing else; op a dict must be a validated op: it is authorized first (an auth
        refusal is its error), and any failure other than a ``QkvError`` is a bug and raises
        ``AssertionError`` naming the index (nothing of the call is written)."""
        st = _State(**vars(self._state))
        view = _View(self._backend, blind=self._one_copy)
        if self._one_copy and not self._layout_written:
            view.put(CF_META, META_LAYOUT, _LAYOUT_ONE_COPY)
        results: list[ApplyResult] = []
        for item in entries:
            index, op = item[0], item[1]
            auth = item[2] if len(item) > 2 else None
            if index <= st.applied_index:
                continue  # already applied (replay after a crash)
            assert index == st.applied_index + 1, (
                f"entry index {index} does not follow applied_index {st.applied_index}")
            st.applied_index = index
            if op is None:
                results.append(ApplyResult(index, st.current_revision))
                continue
            if isinstance(op, QkvError):
                results.append(ApplyResult(index, st.current_revision, error=op))
                continue
            changes = _Changes(main=st.current_revision + 1)
            # A put refuses (KeyNotFound, LeaseNotFound) before its first write, so it
            # needs no layer of its own to drop; every other op runs in one.
            layered = op["op"] != "put"
            if layered:
                view.push()
            try:
                if auth != SERVER and st.auth.enabled:
                    auth_check(st.auth, auth, op, lambda lease_id: self._view_lease_keys(view, lease_id))
                response = self._apply_op(view, st, changes, op)
            except QkvError as err:
                if layered:
                    view.discard()
                results.append(ApplyResult(index, st.current_revision, error=err))
                continue
            except Exception as exc:
                raise AssertionError(f"applying the validated entry at index {index} failed: "
                                     f"{type(exc).__name__}: {exc}") from exc
            if layered:
                view.commit()
            if changes.sub > 0:
                st.current_revision = changes.main
                st.key_count += changes.key_delta
            results.append(ApplyResult(index, st.current_revision, response, None, changes.events))
        if not results:
            return results
        view.put(CF_META, META_APPLIED_INDEX, _U64.pack(st.applied_index))
        view.put(CF_META, META_CURRENT_REVISION, _U64.pack(st.current_revision))
        view.put(CF_META, META_COMPACT_REVISION, _U64.pack(st.compact_revision))
        view.put(CF_META, META_KEY_COUNT, _U64.pack(st.key_count))
        if st.auth is not self._state.auth:
            view.put(CF_META, META_AUTH, _pack(st.auth.to_wire()))
        self._backend.write(view.batch(), sync=sync)
        compacted = st.compact_revision != self._state.compact_revision
        self._state = st  # only after the write succeeded
        if compacted:
            self._cursor = self._read_cursor()
        self._layout_written = self._one_copy
        return results

    @staticmethod
    def _view_lease_keys(view: "_View", lease_id: Any) -> list[bytes]:
        """The keys attached to a lease as this batch has left them (auth checks)."""
        if lease_id is None:
            return [k[8:] for k, _ in view.iterate(CF_LEASE_KEY, b"")]
        if not isinstance(lease_id, int) or not 0 < lease_id < 2**64:
            return []
        lo = _U64.pack(lease_id)
        hi = _U64.pack(lease_id + 1) if lease_id + 1 < 2**64 else None
        return [k[8:] for k, _ in view.iterate(CF_LEASE_KEY, lo, hi)]

    def _auth_op(self, st: _State, op: Op) -> Response:
        """An auth change or `authenticate` (which changes nothing): the auth core decides.
        The state is copied on the first change of a batch, so the applied one stays as it
        was until the batch is written."""
        if op["op"] == "authenticate":
            return apply_auth(st.auth, op)
        if st.auth is self._state.auth:
            st.auth = copy.deepcopy(st.auth)
        return apply_auth(st.auth, op)

    def _apply_op(self, view: _View, st: _State, ch: _Changes, op: Op) -> Response:
        kind = op["op"]
        refused = alarm_rules.refusal(st.alarms, op)
        if refused is not None:
            raise refused
        if kind in ("alarm_activate", "alarm_disarm"):
            return self._alarm(view, st, op)
        if kind == "compact":
            self._compact(view, st, op["revision"])
            return {}
        if kind == "txn":
            # Entries written before the rule have no limit (their replay stays the same).
            budget = _KeyBudget(op["max_txn_keys"]) if "max_txn_keys" in op else None
            path = iter(self._compare_path(view, op, budget))
            return self._txn(view, st, ch, op, path, budget)
        if kind == "put":
            return self._put(view, ch, op)
        if kind == "delete_range":
            return self._delete_range(view, ch, op)
        if kind == "range":
            return self._range(view, op, self._read_revision(st, ch), st.compact_revision)
        if kind == "lease_grant":
            return self._lease_grant(view, op)
        if kind in ("lease_revoke", "lease_expire"):
            return self._lease_revoke(view, ch, op["id"])
        if kind == "lease_checkpoint":
            return self._lease_checkpoint(view, op)
        if kind in AUTH_ENTRY_OPS:
            return self._auth_op(st, op)
        raise AssertionError(f"op {kind!r} is not a log entry")

    @staticmethod
    def _alarm(view: _View, st: _State, op: Op) -> Response:
        """Raise or disarm alarms; never changes the revision. Result: activate, the alarm
        (also when it was already active: etcd's AlarmStore.Activate returns the one it
        holds); disarm, the alarms it removed."""
        if op["op"] == "alarm_activate":
            st.alarms, changed = alarm_rules.activate(st.alarms, op["member_id"], op["alarm"])
            value: bytes | None = b""
            result = [(op["member_id"], op["alarm"])]
        else:
            st.alarms, changed = alarm_rules.deactivate(st.alarms, op["member_id"], op["alarm"],
                                                        exact=bool(op.get("exact")))
            value = None
            result = changed
        for member_id, alarm in changed:
            view.put(CF_META, alarm_rules.alarm_key(member_id, alarm), value)
        return {"alarms": alarm_rules.to_wire(result)}

    @staticmethod
    def _read_revision(st: _State, ch: _Changes) -> int:
        """The revision reads see inside a request: its own, once it has written."""
        return ch.main if ch.sub > 0 else st.current_revision

    # --- writes ----------------------------------------------------------------------
    def _put(self, view: _View, ch: _Changes, op: Op) -> Response:
        key = op["key"]
        prev_raw = view.get(CF_KEY, key)
        prev: Record | None = None if prev_raw is None else _unpack(prev_raw)
        if (op["ignore_value"] or op["ignore_lease"]) and prev is None:
            raise KeyNotFound()
        value = prev[_VALUE] if op["ignore_value"] and prev is not None else op["value"]
        lease = prev[_LEASE] if op["ignore_lease"] and prev is not None else op["lease"]
        if lease != 0 and not op["ignore_lease"] and not self._lease_exists(view, lease):
            raise LeaseNotFound(lease=lease)
        main, sub = ch.main, ch.sub
        ch.sub += 1
        if prev is None:
            rec = [value, main, main, 1, lease]
            ch.key_delta += 1
        else:
            rec = [value, prev[_CREATE], main, prev[_VERSION] + 1, lease]
        old_lease = 0 if prev is None else prev[_LEASE]
        if old_lease != lease:
            if old_lease:
                view.put(CF_LEASE_KEY, _U64.pack(old_lease) + key, None)
            if lease:
                view.put(CF_LEASE_KEY, _U64.pack(lease) + key, b"")
        if prev_raw is not None and prev is not None:
            _supersede(view, key, prev[_MOD], prev_raw)
        view.put(CF_KEY, key, _pack(rec if sub == 0 else [*rec, sub]))
        view.put(CF_HIST, hist_key(key, main, sub), _LATEST)
        view.put(CF_REV, rev_bytes(main, sub), _pack([key, False]))
        prev_kv = None if prev is None else _kv(key, prev)
        ch.events.append(Event("PUT", _kv(key, rec), prev_kv))
        return {"prev_kv": prev_kv} if op["prev_kv"] and prev_kv is not None else {}

    def _delete_range(self, view: _View, ch: _Changes, op: Op, budget: _KeyBudget | None = None) -> Response:
        start, end = _key_bounds(op["key"], op["range_end"])
        if end is not None and end <= start:
            victims: list[tuple[bytes, bytes]] = []
        elif not op["range_end"]:
            if budget is not None:
                budget.take()
            raw = view.get(CF_KEY, start)
            victims = [] if raw is None else [(start, raw)]
        else:
            victims = list(_counted(budget, view.iterate(CF_KEY, start, end)))
        prev_kvs = [self._delete_key(view, ch, key, raw) for key, raw in victims]
        resp: Response = {"deleted": len(victims)}
        if op["prev_kv"]:
            resp["prev_kvs"] = prev_kvs
        return resp

    @staticmethod
    def _delete_key(view: _View, ch: _Changes, key: bytes, raw: bytes) -> KeyValue:
        """Delete one live key at (ch.main, next sub); its previous KeyValue."""
        main, sub = ch.main, ch.sub
        ch.sub += 1
        ch.key_delta -= 1
        prev = _unpack(raw)
        if prev[_LEASE]:
            view.put(CF_LEASE_KEY, _U64.pack(prev[_LEASE]) + key, None)
        _supersede(view, key, prev[_MOD], raw)
        view.put(CF_KEY, key, None)
        view.put(CF_HIST, hist_key(key, main, sub), _TOMBSTONE)
        view.put(CF_REV, rev_bytes(main, sub), _pack([key, True]))
        prev_kv = _kv(key, prev)
        ch.events.append(Event("DELETE", _tombstone_kv(key, main), prev_kv))
        return prev_kv

    # --- leases ----------------------------------------------------------------------
    def _lease_grant(self, view: _View, op: Op) -> Response:
        lease_id, ttl = op["id"], op["ttl"]
        assert 0 < lease_id < 2**63, "the gateway picks an id before proposing"
        if self._lease_exists(view, lease_id):
            raise LeaseExists(lease=lease_id)
        view.put(CF_LEASE, _U64.pack(lease_id), _pack([ttl, 0]))
        return {"ID": lease_id, "ttl": ttl}

    def _lease_revoke(self, view: _View, ch: _Changes, lease_id: int) -> Response:
        if not self._lease_exists(view, lease_id):
            raise LeaseNotFound(lease=lease_id)
        lo = _U64.pack(lease_id)
        hi = _U64.pack(lease_id + 1)
        for lk, _ in list(view.iterate(CF_LEASE_KEY, lo, hi)):
            key = lk[8:]
            raw = view.get(CF_KEY, key)
            assert raw is not None and _unpack(raw)[_LEASE] == lease_id, "lease index out of step"
            self._delete_key(view, ch, key, raw)
        view.put(CF_LEASE, lo, None)
        return {}

    def _lease_checkpoint(self, view: _View, op: Op) -> Response:
        """Record remaining TTLs (ms; 0 = clear: the full TTL counts) of existing leases."""
        for lease_id, remaining_ms in op["checkpoints"]:
            lk = _U64.pack(lease_id)
            raw = view.get(CF_LEASE, lk)
            if raw is None:
                continue  # revoked meanwhile
            ttl = _unpack(raw)[0]
            view.put(CF_LEASE, lk, _pack([ttl, max(0, min(int(remaining_ms), ttl * 1000))]))
        return {}

    def _txn(self, view: _View, st: _State, ch: _Changes, op: Op, path: Iterator[bool],
             budget: _KeyBudget | None) -> Response:
        succeeded = next(path)
        responses = []
        for sub_op in op["success"] if succeeded else op["failure"]:
            kind = sub_op["op"]
            if kind == "range":
                resp = self._range(view, sub_op, self._read_revision(st, ch), st.compact_revision, budget)
            elif kind == "put":
                resp = self._put(view, ch, sub_op)
            elif kind == "delete_range":
                resp = self._delete_range(view, ch, sub_op, budget)
            elif kind == "txn":
                resp = self._txn(view, st, ch, sub_op, path, budget)
            else:
                raise AssertionError(f"op {kind!r} cannot be in a txn")
            responses.append({kind: resp})
        return {"succeeded": succeeded, "responses": responses}

    def _compare_path(self, view: _View, txn: Op, budget: _KeyBudget | None = None) -> list[bool]:
        """etcd's compareToPath: every compare of the executed path, on the state before
        the txn ran (nested txns' compares too), in execution order."""
        ok = all(self._compare(view, c, budget) for c in txn["compare"])
        path = [ok]
        for sub_op in txn["success"] if ok else txn["failure"]:
            if sub_op["op"] == "txn":
                path.extend(self._compare_path(view, sub_op, budget))
        return path

    def _compare(self, view: _View, cmp: Op, budget: _KeyBudget | None = None) -> bool:
        """One Compare on the current state; a range compare stops at its first key that
        fails (each key it reads counts against the txn's key budget)."""
        start, end = _key_bounds(cmp["key"], cmp["range_end"])
        if not cmp["range_end"]:
            if budget is not None:
                budget.take()
            raw = view.get(CF_KEY, start)
            raws: Any = () if raw is None else (raw,)
        elif end is not None and end <= start:
            raws = ()
        else:
            raws = (raw for _, raw in _counted(budget, view.iterate(CF_KEY, start, end)))
        target = cmp["target"]
        field_pos = _COMPARE_FIELD_POS[target]
        want = cmp[_COMPARE_OPERAND[target]]
        test = _COMPARE_RESULT[cmp["result"]]
        seen = False
        for raw in raws:
            seen = True
            if not test(_unpack(raw)[field_pos], want):
                return False
        if not seen:
            if target == "VALUE":
                return False  # no way to compare a value of a key that does not exist
            return test(0, want)  # a missing key: version, revisions and lease are 0
        return True

    @staticmethod
    def _stash_record(view: _View, rk: bytes, raw: bytes) -> bytes:
        """The self-contained record of one change of the compact revision (``CF_REV`` key
        ``rk``, value ``raw``), kept in ``META_COMPACT_EVENTS``: msgpack ``[key,
        is_tombstone, *record]``; ``history`` at the compact revision reads it. Must run
        before the change's own ``hist`` entry is removed (a tombstone's is not read)."""
        main, _sub, key, is_tombstone, rec = _rev_change(view, rk, raw)
        if is_tombstone:
            return _pack([key, True, b"", 0, main, 0, 0])
        assert rec is not None, "a change without its record"
        return _pack([key, False, *rec])

    def _compact(self, view: _View, st: _State, revision: int) -> None:
        """Logical compaction at ``revision``: O(changes at ``revision``). Reads and history
        below it fail from here on; the rows it makes obsolete are removed afterwards by
        ``compact_step`` (physical compaction), which this records as pending."""
        if revision <= st.compact_revision:
            raise Compacted(compact_revision=st.compact_revision)
        if revision > st.current_revision:
            raise FutureRevision(current_revision=st.current_revision)
        # Kept so that history (and so a watch) can start at the compact revision
        # itself, as etcd allows: SPEC section 3, `history`.
        at_revision = [self._stash_record(view, rk, raw)
                       for rk, raw in view.iterate(CF_REV, rev_bytes(revision), rev_bytes(revision + 1))]
        view.put(CF_META, META_COMPACT_EVENTS, _pack([revision, at_revision]))
        if view.get(CF_META, META_COMPACT_CURSOR) is None:
            # A store whose every earlier compaction is physically done (or that never
            # compacted): physical work starts right after the old compact revision.
            view.put(CF_META, META_COMPACT_CURSOR, rev_bytes(st.compact_revision + 1))
        st.compact_revision = revision

    # --- physical compaction (in slices, between other work) -------------------------
    def _read_cursor(self) -> bytes:
        raw = self._backend.get(CF_META, META_COMPACT_CURSOR)
        return raw if raw is not None else rev_bytes(self._state.compact_revision + 1)

    @property
    def compaction_pending(self) -> bool:
        """True while rows made obsolete by a compaction are still on disk."""
        return self._cursor < rev_bytes(self._state.compact_revision + 1)

    @property
    def physical_revision(self) -> int:
        """Every ``rev`` entry at or below this revision has been physically compacted
        (the compact revision once nothing is pending)."""
        if not self.compaction_pending:
            return self._state.compact_revision
        cursor: int = _U64.unpack(self._cursor[:8])[0]
        return cursor - 1

    def compact_step(self, limit: int, stop: Callable[[], bool] | None = None) -> int:
        """One slice of physical compaction: at most ``limit`` ``rev`` entries at or below
        the compact revision, in revision order (``stop()``, asked every few entries, may
        end it sooner), removed in ONE atomic backend write that also records how far it
        got (``META_COMPACT_CURSOR``), so a restart resumes there. The number of entries
        processed (0: nothing was pending).

        The rule, stateless and idempotent, for entry (key, main, sub): delete the newest
        ``hist`` entry of key older than (main, sub) if there is one (at most one is left:
        older ones went with earlier entries or compactions), delete ``hist(key, main,
        sub)`` too when it is a tombstone, delete the ``rev`` entry. One forward step and one
        reverse seek per entry: linear in the revisions removed. Reads at revisions at or
        above the compact revision give the same answers whatever the progress (the newest
        change <= compact revision of each key is never removed unless it is a tombstone,
        and then with everything older in the same write)."""
        end = rev_bytes(self._state.compact_revision + 1)
        cursor = self._cursor
        if cursor >= end:
            return 0
        backend = self._backend
        batch: list[tuple[str, bytes, bytes | None]] = []
        gone: set[bytes] = set()  # hist keys this slice deletes
        count = 0
        next_cursor = end  # the whole range done, unless the slice stops early
        for rk, raw in backend.iterate(CF_REV, cursor, end):
            main, sub = Revision.from_bytes(rk)
            key, is_tombstone = _unpack(raw)[:2]
            hk = hist_key(key, main, sub)
            for older, _ in backend.iterate(CF_HIST, escape(key), hk, reverse=True):
                # Already deleted by this slice (a tombstone, with all before it): nothing left.
                if older not in gone:
                    batch.append((CF_HIST, older, None))
                    gone.add(older)
                break
            if is_tombstone:
                batch.append((CF_HIST, hk, None))
                gone.add(hk)
            batch.append((CF_REV, rk, None))
            count += 1
            if count >= limit or (stop is not None and count % _STOP_CHECK_EVERY == 0 and stop()):
                next_cursor = rk + b"\x00"  # the first key after rk
                break
        batch.append((CF_META, META_COMPACT_CURSOR, next_cursor))
        backend.write(batch)
        self._cursor = next_cursor
        return count

    # --- reads -----------------------------------------------------------------------
    def range(self, op: Op) -> Response:
        """A normalized range op -> ``{"kvs", "more", "count"}`` at the applied state."""
        return self._range(_View(self._backend), op, self._state.current_revision,
                           self._state.compact_revision)

    def _check_revision(self, revision: int, current: int, compact: int) -> int:
        if revision > current:
            raise FutureRevision(current_revision=current)
        if revision <= 0:
            revision = current
        if revision < compact:
            raise Compacted(compact_revision=compact)
        return revision

    def _range(self, view: _View, op: Op, current: int, compact: int,
               budget: _KeyBudget | None = None) -> Response:
        rev = self._check_revision(op["revision"], current, compact)
        items = self._live_items(view, op["key"], op["range_end"], rev, current, budget)
        limit = op["limit"]
        order, target = op["sort_order"], op["sort_target"]
        if order == "NONE" and target != "KEY":
            order = "ASCEND"
        filtered = any(op[f] for f in ("min_mod_revision", "max_mod_revision",
                                       "min_create_revision", "max_create_revision"))
        # Live keys at the current revision outside an apply are exactly CF_KEY's keys
        # in the range: the backend counts them without making a tuple per key (a
        # paged list counts every key after its page, as etcd does). A range's view reads
        # the store's own backend (only hash jobs read a snapshot), so that one counts.
        start, end = _key_bounds(op["key"], op["range_end"])
        backend_counts = (budget is None and rev == current and bool(op["range_end"])
                          and view.untouched() and (end is None or start < end))
        if op["count_only"]:
            count = self._backend.count(CF_KEY, start, end) if backend_counts else sum(1 for _ in items)
            return {"kvs": [], "more": False, "count": count}
        if limit > 0 and not filtered and order in ("NONE", "ASCEND") and target == "KEY":
            # Key order already: decode only what is returned, count the rest.
            kvs = []
            count = 0
            for key, raw in items:
                count += 1
                if count <= limit:
                    kvs.append(_kv(key, _unpack(raw)))
                elif backend_counts:
                    count += self._backend.count(CF_KEY, key + b"\x00", end)
                    break
            more = count > limit
        else:
            kvs = [_kv(key, _unpack(raw)) for key, raw in items]
            count = len(kvs)
            if filtered:
                kvs = [kv for kv in kvs if _passes(kv, op)]
            if order != "NONE":
                field_name = _SORT_FIELD[target]
                kvs.sort(key=operator.itemgetter(field_name), reverse=(order == "DESCEND"))
            more = False
            if 0 < limit < len(kvs):
                kvs = kvs[:limit]
                more = True
        if op["keys_only"]:
            for kv in kvs:
                kv["value"] = b""
        return {"kvs": kvs, "more": more, "count": count}

    def _live_items(self, view: _View, key: bytes, range_end: bytes, rev: int,
                    current: int, budget: _KeyBudget | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, packed record) of the keys alive at ``rev`` in the range, in key order.
        With a budget, a single key counts one and a range every record it reads: each
        live key at the current revision, each stored version of each key at an older one."""
        start, end = _key_bounds(key, range_end)
        if end is not None and end <= start:
            return iter(())
        if not range_end and budget is not None:
            budget.take()
        if rev == current:
            if not range_end:
                raw = view.get(CF_KEY, start)
                return iter(()) if raw is None else iter(((start, _strip(raw)),))
            return (kv if kv[1][0] != _WITH_SUB else (kv[0], _strip(kv[1]))
                    for kv in _counted(budget, view.iterate(CF_KEY, start, end)))
        if not range_end:
            for _, raw in view.iterate(CF_HIST, escape(start), hist_key(start, rev + 1, 0),
                                       reverse=True):
                return iter(()) if raw == _TOMBSTONE else iter(((start, _resolve(view, start, raw)),))
            return iter(())
        return self._hist_items(view, prefix(start), None if end is None else prefix(end), rev, budget)

    @staticmethod
    def _hist_items(view: _View, hstart: bytes, hend: bytes | None,
                    rev: int, budget: _KeyBudget | None = None) -> Iterator[tuple[bytes, bytes]]:
        group: bytes | None = None
        best: tuple[bytes, bytes] | None = None
        for hk, raw in _counted(budget, view.iterate(CF_HIST, hstart, hend)):
            esc, user, r = split_hist_key(hk)
            if esc != group:
                if best is not None and best[1] != _TOMBSTONE:
                    yield best[0], _resolve(view, *best)
                group, best = esc, None
            if r.main <= rev:
                best = (user, raw)
        if best is not None and best[1] != _TOMBSTONE:
            yield best[0], _resolve(view, *best)

    def events_between(self, start_rev: int, end_rev: int) -> list[tuple[int, list[Event]]]:
        """History in ``(start_rev, end_rev]`` grouped by revision, oldest first (end is
        clamped to the current revision); ``Compacted`` if start_rev < compact_revision."""
        st = self._state
        if start_rev < st.compact_revision:
            raise Compacted(compact_revision=st.compact_revision)
        end = min(end_rev, st.current_revision)
        out: list[tuple[int, list[Event]]] = []
        if end <= start_rev:
            return out
        view = _View(self._backend)
        for rk, raw in view.iterate(CF_REV, rev_bytes(start_rev + 1), rev_bytes(end + 1)):
            main, sub = Revision.from_bytes(rk)
            key, is_tombstone, *rec = _unpack(raw)
            rec, prev_kv = _change(view, key, main, sub, is_tombstone, rec, True)
            if is_tombstone:
                ev = Event("DELETE", _tombstone_kv(key, main), prev_kv)
            else:
                assert rec is not None, "a change without its record"
                ev = Event("PUT", _kv(key, rec), prev_kv)
            if out and out[-1][0] == main:
                out[-1][1].append(ev)
            else:
                out.append((main, [ev]))
        return out

    def history(self, op: Op) -> Response:
        """A normalized ``history`` op (SPEC section 3) -> ``{"revisions": [{"revision",
        "events"}], "more", "last_revision"}``: the matching events of the revisions
        ``[start_revision, last_revision]``, grouped by revision, oldest first. At most
        ``limit_revisions`` revisions are examined per call (revisions are dense, so the
        page is a window); ``more`` says whether revisions up to ``end_revision`` remain.
        ``Compacted`` if start_revision < compact_revision; a start at the compact revision
        itself works (its events come without ``prev_kv``, which compaction removed)."""
        st = self._state
        compact, current = st.compact_revision, st.current_revision
        start = op["start_revision"] or max(compact, 1)
        if start < compact:
            raise Compacted(compact_revision=compact)
        end = min(op["end_revision"] or current, current)
        limit = min(op["limit_revisions"] or HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX)
        last = min(end, start + limit - 1)
        out: list[Response] = []
        if last < start:
            return {"revisions": out, "more": False, "last_revision": max(last, 0)}
        lo, hi = _key_bounds(op["key"], op["range_end"])
        no_put, no_delete, want_prev = op["no_put"], op["no_delete"], op["prev_kv"]
        view = _View(self._backend)

        def add(main: int, key: bytes, is_tombstone: bool, rec: Record | None, sub: int | None) -> None:
            if key < lo or (hi is not None and key >= hi):
                return
            if (no_delete and is_tombstone) or (no_put and not is_tombstone):
                return
            prev_kv = None
            if sub is not None:  # a change still in `rev` (the stash has its records)
                rec, prev_kv = _change(view, key, main, sub, is_tombstone, rec, want_prev)
            if is_tombstone:
                ev = {"type": "DELETE", "kv": _tombstone_kv(key, main)}
            else:
                assert rec is not None, "a change without its record"
                ev = {"type": "PUT", "kv": _kv(key, rec)}
            if prev_kv is not None:
                ev["prev_kv"] = prev_kv
            if out and out[-1]["revision"] == main:
                out[-1]["events"].append(ev)
            else:
                out.append({"revision": main, "events": [ev]})

        scan_from = start
        if start == compact:
            raw = view.get(CF_META, META_COMPACT_EVENTS)
            stash = _unpack(raw) if raw is not None else None
            if compact > 1 and (stash is None or stash[0] != compact):
                raise Compacted(compact_revision=compact)
            for rec_raw in (stash[1] if stash else ()):
                key, is_tombstone, *rec = _unpack(rec_raw)
                add(compact, key, is_tombstone, rec, None)
            scan_from = start + 1
        if scan_from <= last:
            for rk, raw in view.iterate(CF_REV, rev_bytes(scan_from), rev_bytes(last + 1)):
                main, sub = Revision.from_bytes(rk)
                key, is_tombstone, *rec = _unpack(raw)
                add(main, key, is_tombstone, rec, sub)
        return {"revisions": out, "more": last < end, "last_revision": last}

    def hash_kv(self, revision: int = 0) -> tuple[int, int]:
        """(hash, revision): blake2b over every live KeyValue as of ``revision`` (0 =
        current), in key order. Equal on every member with the same history, whatever
        the progress of physical compaction. One call; ``hash_kv_job`` is the same in steps."""
        job = self.hash_kv_job(revision, pinned=False)
        while not job.step(1 << 62):
            pass
        return job.result

    def hash_kv_job(self, revision: int = 0, pinned: bool = True) -> "HashJob":
        """``hash_kv`` as a job run in steps (``HashJob.step``). ``Compacted`` /
        ``FutureRevision`` at once, as ``hash_kv``. ``pinned``: it reads a
        ``Backend.snapshot()`` taken now, so writes between steps do not change the result;
        without it the backend must not change until the job is done."""
        st = self._state
        rev = self._check_revision(revision, st.current_revision, st.compact_revision)
        source = self._backend.snapshot() if pinned else self._backend
        items = self._live_items(_View(source), b"\x00", b"\x00", rev, st.current_revision)
        return HashJob(items, rev, st.compact_revision, source if pinned else None)


class HashJob:
    """``hash_kv`` in steps over a pinned view: ``step(max_items, stop)`` hashes at most
    ``max_items`` keys (``stop()``, asked every few keys, may end it sooner) and says
    whether it is done; ``result`` is then ``(hash, revision)``. ``close`` releases the
    view early (a job that finishes releases it itself)."""

    def __init__(self, items: Iterator[tuple[bytes, bytes]], revision: int, compact_revision: int,
                 snapshot: ReadView | None) -> None:
        self.revision = revision
        self.compact_revision = compact_revision  # the store's when the job started
        self.keys = 0
        self.done = False
        self._items: Iterator[tuple[bytes, bytes]] | None = items
        self._snapshot = snapshot
        self._h = hashlib.blake2b(digest_size=8)

    def step(self, max_items: int, stop: Callable[[], bool] | None = None) -> bool:
        if self.done:
            return True
        assert self._items is not None, "the job was closed"
        h = self._h
        n = 0
        for key, raw in self._items:
            h.update(_pack([key, *_unpack(raw)]))
            n += 1
            if n >= max_items or (stop is not None and n % _STOP_CHECK_EVERY == 0 and stop()):
                self.keys += n
                return False
        self.keys += n
        self.done = True
        self.close()
        return True

    @property
    def result(self) -> tuple[int, int]:
        assert self.done, "the job is not done"
        return int.from_bytes(self._h.digest(), "big"), self.revision

    def close(self) -> None:
        items, self._items = self._items, None
        if items is not None and hasattr(items, "close"):
            items.close()
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is not None:
            snapshot.close()


# Compare: the record position of each target, and each result as a test (have, want).
_COMPARE_FIELD_POS = {"VALUE": _VALUE, "VERSION": _VERSION, "CREATE": _CREATE, "MOD": _MOD, "LEASE": _LEASE}
_COMPARE_OPERAND = {"VALUE": "value", "VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision",
                    "LEASE": "lease"}
_COMPARE_RESULT: dict[str, Callable[[Any, Any], bool]] = {
    "EQUAL": lambda have, want: have == want,
    "NOT_EQUAL": lambda have, want: have != want,
    "GREATER": lambda have, want: have > want,
    "LESS": lambda have, want: have < want,
}

_SORT_FIELD = {"KEY": "key", "VERSION": "version", "CREATE": "create_revision",
               "MOD": "mod_revision", "VALUE": "value"}


def _passes(kv: KeyValue, op: Op) -> bool:
    if op["min_mod_revision"] and kv["mod_revision"] < op["min_mod_revision"]:
        return False
    if op["max_mod_revision"] and kv["mod_revision"] > op["max_mod_revision"]:
        return False
    if op["min_create_revision"] and kv["create_revision"] < op["min_create_revision"]:
        return False
    if op["max_create_revision"] and kv["create_revision"] > op["max_create_revision"]:
        return False
    return True


def _key_bounds(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None]:
    """``[start, end)`` of a key range; end None = unbounded. A single key gives
    ``(key, key + b"\\x00")``."""
    if not range_end:
        return key, key + b"\x00"
    if range_end == b"\x00":
        return key, None
    return key, range_end
