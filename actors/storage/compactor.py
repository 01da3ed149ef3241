"""Auto-compaction: when the leader proposes a `compact` entry (etcd 3.4's compactor).

Pure: no clock, no I/O. The storage actor calls ``tick(now, ...)`` often (every 100 ms)
with a monotonic time, its current and compact revisions and whether it leads; a returned
revision is proposed as an ordinary `compact` entry through the log (only by the leader,
so every member compacts at the same place in the log).

- ``revision`` mode (etcd's ``compactor.Revision``): every ``interval_s`` (etcd: 5 min)
  compact at ``current - retention``, unless that is <= 0 or what was compacted last time.
- ``periodic`` mode (etcd's ``compactor.Periodic``): the current revision is sampled every
  ``retry_s`` = min(period, 1 h) / 10 and the last period/retry_s + 1 samples are kept, so
  the oldest is the revision of about one period ago. The first compaction comes one period
  after start, then one every min(period, 1 h), at the oldest sample. A member that does not
  lead keeps sampling but compacts nothing (etcd pauses the compactor on followers).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

MODES = ("periodic", "revision")
HOUR_S = 3600.0
RETRY_DIVISOR = 10
REVISION_INTERVAL_S = 300.0  # etcd's revInterval

_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` in seconds (``10s``, ``500ms``, ``1h30m``); a bare
    number is seconds. Negative durations are refused. ValueError when malformed."""
    t = str(text).strip()
    try:
        value = float(t)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION_RE.finditer(t):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if not t or pos != len(t):
            raise ValueError(f"invalid duration {text!r}: expected e.g. 10s, 500ms, 1h30m") from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"invalid duration {text!r}: must be >= 0")
    return value


def parse_retention(mode: str, retention: str) -> float:
    """etcd's parseCompactionRetention: a bare integer is hours (periodic) or a revision
    count (revision); otherwise a duration (seconds). 0 = auto-compaction off."""
    text = str(retention).strip()
    if mode not in MODES:
        raise ValueError(f"invalid mode {mode!r}: must be periodic or revision")
    if re.fullmatch(r"\d+", text):
        n = int(text)
        return float(n) * HOUR_S if mode == "periodic" else float(n)
    if mode == "revision":
        raise ValueError(f"invalid retention {retention!r}: revision mode needs a number of revisions")
    return parse_duration(text)


@dataclass
class RevisionCompactor:
    retention: int  # revisions to keep
    interval_s: float = REVISION_INTERVAL_S
    next_at: float | None = None
    prev: int = 0  # the revision compacted (proposed) last

    def tick(self, now: float, current_revision: int, compact_revision: int, leader: bool) -> int | None:
        if self.next_at is None:
            self.next_at = now + self.interval_s
            return None
        if now < self.next_at:
            return None
        self.next_at = now + self.interval_s
        if not leader:
            return None
        target = current_revision - self.retention
        if target <= 0 or target == self.prev:
            return None
        self.prev = target
        return target if target > compact_revision else None


@dataclass
class PeriodicCompactor:
    period_s: float
    revs: list[int] = field(default_factory=list)  # revs[0]: the revision about a period ago
    next_at: float | None = None
    last_success: float = 0.0
    base_interval_s: float = 0.0

    def __post_init__(self) -> None:
        assert self.period_s > 0, "a periodic compactor needs a retention > 0"
        self.compact_interval_s = min(self.period_s, HOUR_S)
        self.retry_s = self.compact_interval_s / RETRY_DIVISOR
        self.retentions = int(self.period_s / self.retry_s) + 1
        self.base_interval_s = self.period_s  # the first compaction waits a whole period

    def tick(self, now: float, current_revision: int, compact_revision: int, leader: bool) -> int | None:
        if self.next_at is None:
            self.last_success = now
            self.revs = [current_revision]
            self.next_at = now + self.retry_s
            return None
        if now < self.next_at:
            return None
        self.next_at = now + self.retry_s
        target: int | None = None
        if leader and now - self.last_success >= self.base_interval_s:
            self.base_interval_s = self.compact_interval_s
            self.last_success = now
            rev = self.revs[0]
            target = rev if rev > compact_revision else None  # etcd: ErrCompacted counts as done
        self.revs.append(current_revision)
        if len(self.revs) > self.retentions:
            del self.revs[0: len(self.revs) - self.retentions]
        return target


def make_compactor(mode: str, retention: str,
                   revision_interval_s: float = REVISION_INTERVAL_S) -> RevisionCompactor | PeriodicCompactor | None:
    """The compactor for the flags, or None when auto-compaction is off (retention 0)."""
    value = parse_retention(mode, retention)
    if value <= 0:
        return None
    if mode == "revision":
        return RevisionCompactor(int(value), revision_interval_s)
    return PeriodicCompactor(value)
