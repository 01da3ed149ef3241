"""Watch validators for robustness runs: one pure function per guarantee of SPEC section 5
(etcd's: ordered, unique, reliable, atomic, resumable, bookmarkable, prev_kv correct).

Nothing here performs I/O. A recording is a list of `Session`s: one watch, from its
start revision until it ended (stop, restart, compacted, error), with every response it
delivered (`Response`: the events of one revision, or a progress notification =
bookmark). A session's *covered* range is `[start_revision, covered]`, where `covered`
is the highest revision up to which it claims to have delivered everything (its last
event or bookmark). The watch client's own fail-overs stay inside one session (they must
lose and repeat nothing); a consumer that restarts its watch starts a new session.

Since no single session sees everything, several checks compare against the *union*:
per revision, the largest set of events any session delivered there. Each validator
returns a list of violation strings (empty = fine); `check_watches` runs them all.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Iterable

MAX_PER_CHECK = 30  # violations listed per validator (the rest are counted)

# (value, create_revision, mod_revision, version) of a key's previous state
PrevKV = tuple[bytes, int, int, int]


@dataclass(frozen=True, slots=True)
class WEvent:
    type: str  # "PUT" | "DELETE"
    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int = 0
    version: int = 0
    prev_kv: PrevKV | None = None

    def ident(self) -> tuple:
        """What every watcher must agree on (prev_kv has its own check)."""
        return (self.type, self.key, self.value, self.mod_revision, self.create_revision, self.version)


@dataclass(slots=True)
class Response:
    at: float  # time.monotonic() when it was delivered
    events: list[WEvent] = field(default_factory=list)
    progress: int = 0  # > 0: a progress notification (bookmark) at this revision


@dataclass
class Session:
    watcher: int
    session: int  # numbered per watcher
    start_revision: int  # the first revision asked for (resolved when started "from now")
    prefix: bytes = b"key/"
    endpoint: str = ""
    started: float = 0.0
    responses: list[Response] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)  # the client's own fail-overs
    compact_revision: int = 0  # > 0: ended by a compacted error with this compact revision
    canceled: str = ""  # cancel reason, if the server or client ended it
    end_reason: str = ""  # "stop", "restart", "stall", "compacted", "error: ..."
    ended: float | None = None
    resume_of: int | None = None  # the session this one resumes (from its covered + 1)

    @property
    def name(self) -> str:
        return f"watcher {self.watcher} session {self.session} (start {self.start_revision})"

    @property
    def covered(self) -> int:
        """Every matching event <= this has been delivered (start_revision - 1 at first)."""
        c = self.start_revision - 1
        for r in self.responses:
            if r.progress > c:
                c = r.progress
            for e in r.events:
                if e.mod_revision > c:
                    c = e.mod_revision
        return c

    def events(self) -> Iterable[tuple[int, WEvent]]:
        """(response index, event) in delivery order."""
        for i, r in enumerate(self.responses):
            for e in r.events:
                yield i, e


class _Out:
    """Collects one validator's violations, listing at most MAX_PER_CHECK."""

    def __init__(self, check: str) -> None:
        self.check, self.items, self.more = check, [], 0

    def add(self, msg: str) -> None:
        if len(self.items) < MAX_PER_CHECK:
            self.items.append(f"{self.check}: {msg}")
        else:
            self.more += 1

    def done(self) -> list[str]:
        return self.items + ([f"{self.check}: ... and {self.more} more"] if self.more else [])


# --- the union of what every session saw ----------------------------------------------
@dataclass
class Union:
    events: dict[int, list[WEvent]]  # revision -> the largest event list any session delivered
    who: dict[int, str]  # revision -> a session that delivered it
    revisions: list[int]  # sorted
    intervals: list[tuple[int, int]]  # merged covered ranges [lo, hi]

    def first_at_or_after(self, rev: int) -> int | None:
        i = bisect.bisect_left(self.revisions, rev)
        return self.revisions[i] if i < len(self.revisions) else None

    def interval_of(self, rev: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self.intervals, (rev, float("inf"))) - 1
        if i >= 0 and self.intervals[i][0] <= rev <= self.intervals[i][1]:
            return self.intervals[i]
        return None


def build_union(sessions: list[Session]) -> Union:
    events: dict[int, list[WEvent]] = {}
    who: dict[int, str] = {}
    for s in sessions:
        per_rev: dict[int, list[WEvent]] = {}
        for _, e in s.events():
            per_rev.setdefault(e.mod_revision, []).append(e)
        for rev, evs in per_rev.items():
            if len(evs) > len(events.get(rev, ())):
                events[rev], who[rev] = evs, s.name
    spans = sorted((s.start_revision, s.covered) for s in sessions if s.covered >= s.start_revision)
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return Union(events, who, sorted(events), merged)


def _by_revision(s: Session) -> dict[int, list[WEvent]]:
    out: dict[int, list[WEvent]] = {}
    for _, e in s.events():
        out.setdefault(e.mod_revision, []).append(e)
    return out


def _writes(kv_history: list, prefix: bytes) -> list:
    """Acknowledged writes under prefix that changed the store, by revision."""
    out = []
    for op in kv_history:
        if op.completed is None or not op.ok or not op.key.startswith(prefix):
            continue
        if op.kind == "put" or (op.kind == "cas" and op.succeeded) or (op.kind == "delete" and op.deleted > 0):
            out.append(op)
    return sorted(out, key=lambda o: o.revision)


# --- one validator per guarantee --------------------------------------------------------
def check_ordered(sessions: list[Session]) -> list[str]:
    """Within a session, event revisions never go backwards (so the events of one
    revision come together)."""
    out = _Out("ordered")
    for s in sessions:
        last = 0
        for i, e in s.events():
            if e.mod_revision < last:
                out.add(f"{s.name}: event {e.key!r}@{e.mod_revision} in response {i} after revision {last}")
            last = max(last, e.mod_revision)
    return out.done()


def check_unique(sessions: list[Session]) -> list[str]:
    """No (revision, key) delivered twice within a session, its own fail-overs included."""
    out = _Out("unique")
    for s in sessions:
        seen: dict[tuple[int, bytes], int] = {}
        for i, e in s.events():
            k = (e.mod_revision, e.key)
            if k in seen:
                out.add(f"{s.name}: {e.key!r}@{e.mod_revision} delivered in response {seen[k]} and again in {i}")
            else:
                seen[k] = i
    return out.done()


def check_reliable(sessions: list[Session], kv_history: list | None = None,
                   union: Union | None = None) -> list[str]:
    """No gaps: every session has, for each revision it covers, exactly the events the
    others delivered there; and every acknowledged write under its prefix whose revision
    it covers, with that value."""
    out = _Out("reliable")
    union = union or build_union(sessions)
    writes = _writes(kv_history or [], sessions[0].prefix) if sessions else []
    write_revs = [op.revision for op in writes]
    failed_values = {(op.key, op.value) for op in (kv_history or [])
                     if op.completed is not None and not op.ok and op.value is not None}
    for s in sessions:
        mine = _by_revision(s)
        lo, hi = s.start_revision, s.covered
        i = bisect.bisect_left(union.revisions, lo)
        while i < len(union.revisions) and union.revisions[i] <= hi:
            rev = union.revisions[i]
            i += 1
            theirs = [e.ident() for e in union.events[rev]]
            got = [e.ident() for e in mine.get(rev, [])]
            if not got:
                out.add(f"{s.name}: covers up to {hi} but lacks revision {rev} "
                        f"({len(theirs)} events, seen by {union.who[rev]}): first {theirs[0]}")
            elif got != theirs:
                out.add(f"{s.name}: revision {rev} has {len(got)} events, {union.who[rev]} got "
                        f"{len(theirs)}, not the same: {got} vs {theirs}")
        j = bisect.bisect_left(write_revs, lo)
        while j < len(writes) and writes[j].revision <= hi:
            op = writes[j]
            j += 1
            evs = [e for e in mine.get(op.revision, []) if e.key == op.key]
            want = "DELETE" if op.kind == "delete" else "PUT"
            if not evs:
                out.add(f"{s.name}: covers up to {hi} but lacks the acknowledged {op.kind} of "
                        f"{op.key!r}={op.value!r} at revision {op.revision}")
            elif evs[0].type != want or (want == "PUT" and evs[0].value != op.value):
                out.add(f"{s.name}: revision {op.revision} has {evs[0].type} {op.key!r}={evs[0].value!r}, "
                        f"the acknowledged {op.kind} wrote {op.value!r}")
        for _, e in s.events():
            if e.type == "PUT" and (e.key, e.value) in failed_values:
                out.add(f"{s.name}: {e.key!r}={e.value!r}@{e.mod_revision} was written by a request "
                        f"that failed definitely (a phantom write)")
    return out.done()


def check_atomic(sessions: list[Session], union: Union | None = None) -> list[str]:
    """All events of one revision arrive in one response, all of them (as many as any
    session saw there)."""
    out = _Out("atomic")
    union = union or build_union(sessions)
    for s in sessions:
        where: dict[int, set[int]] = {}
        count: dict[int, int] = {}
        for i, e in s.events():
            where.setdefault(e.mod_revision, set()).add(i)
            count[e.mod_revision] = count.get(e.mod_revision, 0) + 1
        for rev, idx in where.items():
            if len(idx) > 1:
                out.add(f"{s.name}: revision {rev} split over responses {sorted(idx)}")
            full = len(union.events.get(rev, ()))
            if count[rev] < full:
                out.add(f"{s.name}: got {count[rev]} of the {full} events of revision {rev} "
                        f"({union.who[rev]} got them all)")
    return out.done()


def check_resumable(sessions: list[Session], kv_history: list | None = None,
                    union: Union | None = None) -> list[str]:
    """A session started at R delivers first exactly the first revision >= R that has
    events (never one below R, never skipping one); a compacted error only when the
    revision it needed was below the compact revision."""
    out = _Out("resumable")
    union = union or build_union(sessions)
    write_revs = [op.revision for op in _writes(kv_history or [], sessions[0].prefix)] if sessions else []
    for s in sessions:
        covered = s.covered
        if s.compact_revision and covered + 1 >= s.compact_revision:
            out.add(f"{s.name}: ended by compacted (compact revision {s.compact_revision}) though it "
                    f"needed revision {covered + 1}, which is not compacted")
        first = next((e.mod_revision for _, e in s.events()), None)
        if first is not None and first < s.start_revision:
            out.add(f"{s.name}: first event at revision {first}, below its start revision")
            continue
        candidates = [union.first_at_or_after(s.start_revision)]
        k = bisect.bisect_left(write_revs, s.start_revision)
        if k < len(write_revs):
            candidates.append(write_revs[k])
        expected = min((r for r in candidates if r is not None), default=None)
        if expected is None or expected > covered:
            continue
        if first != expected:
            out.add(f"{s.name}: first event at revision {first}, expected {expected} "
                    f"(the first revision >= {s.start_revision} with events)")
    return out.done()


def check_bookmarkable(sessions: list[Session]) -> list[str]:
    """After a bookmark at B, no event at or below B; a bookmark never goes back below an
    event already delivered."""
    out = _Out("bookmarkable")
    for s in sessions:
        mark, last_event = 0, 0
        for i, r in enumerate(s.responses):
            if r.progress:
                if r.progress < last_event:
                    out.add(f"{s.name}: bookmark {r.progress} (response {i}) below delivered revision {last_event}")
                mark = max(mark, r.progress)
            for e in r.events:
                if e.mod_revision <= mark:
                    out.add(f"{s.name}: event {e.key!r}@{e.mod_revision} (response {i}) after bookmark {mark}")
                last_event = max(last_event, e.mod_revision)
    return out.done()


def check_prev_kv(sessions: list[Session], union: Union | None = None,
                  compactions: Iterable[int] = ()) -> list[str]:
    """Each event's prev_kv is the key's previous state: its previous event in the union
    (its kv after a PUT, none after a DELETE, none before the key's first event), when
    the union covers every revision between the two. An event at a compact revision
    itself may lack prev_kv (history read from there has none: SPEC `history`), so
    `compactions` (every revision compacted at; those the sessions were told of are
    added) excuses exactly those revisions."""
    out = _Out("prev_kv")
    union = union or build_union(sessions)
    compacted = set(compactions) | {s.compact_revision for s in sessions if s.compact_revision}
    # per key: sorted revisions and the union's event there
    per_key: dict[bytes, list[tuple[int, WEvent]]] = {}
    for rev in union.revisions:
        for e in union.events[rev]:
            per_key.setdefault(e.key, []).append((rev, e))
    revs_of = {k: [r for r, _ in v] for k, v in per_key.items()}
    for s in sessions:
        for _, e in s.events():
            r = e.mod_revision
            if e.prev_kv is not None and e.prev_kv[2] >= r:
                out.add(f"{s.name}: {e.key!r}@{r} has prev_kv with mod_revision {e.prev_kv[2]}")
                continue
            span = union.interval_of(r)
            if span is None:
                continue
            hist = per_key.get(e.key, [])
            k = bisect.bisect_left(revs_of.get(e.key, []), r) - 1
            if k >= 0 and hist[k][0] >= span[0]:
                p = hist[k][1]
                expected = None if p.type == "DELETE" else (p.value, p.create_revision, p.mod_revision, p.version)
            elif span[0] <= 1:
                expected = None  # the union covers everything from revision 1: no earlier state
            else:
                continue  # the previous state is not known
            if e.prev_kv == expected or (e.prev_kv is None and r in compacted):
                continue
            out.add(f"{s.name}: {e.type} {e.key!r}@{r} has prev_kv {e.prev_kv}, the key's previous "
                    f"state was {expected}")
    return out.done()


def check_watches(sessions: list[Session], kv_history: list | None = None,
                  compactions: Iterable[int] = ()) -> list[str]:
    """Every validator, per watched prefix. `kv_history`: the linearizability.Op history
    of the same run; `compactions`: the revisions the run compacted at (acknowledged or
    not), which excuse a missing prev_kv at exactly those revisions."""
    compactions = list(compactions)
    out: list[str] = []
    by_prefix: dict[bytes, list[Session]] = {}
    for s in sessions:
        by_prefix.setdefault(s.prefix, []).append(s)
    for group in by_prefix.values():
        union = build_union(group)
        out += check_ordered(group)
        out += check_unique(group)
        out += check_reliable(group, kv_history, union)
        out += check_atomic(group, union)
        out += check_resumable(group, kv_history, union)
        out += check_bookmarkable(group)
        out += check_prev_kv(group, union, compactions)
    return out


def summary(sessions: list[Session]) -> dict:
    """Counts for a run's report."""
    return {
        "watchers": len({s.watcher for s in sessions}),
        "sessions": len(sessions),
        "events": sum(len(r.events) for s in sessions for r in s.responses),
        "bookmarks": sum(1 for s in sessions for r in s.responses if r.progress),
        "disconnects": sum(len(s.disconnects) for s in sessions),
        "compacted": sum(1 for s in sessions if s.compact_revision),
        "revisions": len(build_union(sessions).revisions) if sessions else 0,
        "ends": _count(s.end_reason.split(":")[0] for s in sessions),
    }


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def session_to_json(s: Session) -> dict:
    """A JSON-able form of a session, for a failed run's report."""
    def ev(e: WEvent) -> dict:
        d = {"type": e.type, "key": e.key.decode(errors="replace"), "value": e.value.decode(errors="replace"),
             "mod": e.mod_revision, "create": e.create_revision, "version": e.version}
        if e.prev_kv is not None:
            d["prev_kv"] = [e.prev_kv[0].decode(errors="replace"), *e.prev_kv[1:]]
        return d

    return {"watcher": s.watcher, "session": s.session, "start_revision": s.start_revision,
            "prefix": s.prefix.decode(errors="replace"), "endpoint": s.endpoint, "started": s.started,
            "ended": s.ended, "end_reason": s.end_reason, "compact_revision": s.compact_revision,
            "canceled": s.canceled, "resume_of": s.resume_of, "disconnects": s.disconnects,
            "covered": s.covered,
            "responses": [{"at": r.at, "progress": r.progress, "events": [ev(e) for e in r.events]}
                          for r in s.responses]}
