"""The lessor: lease expiry and checkpoint policy of the leader (etcd's server/lease/lessor.go).

Pure: no clock, no I/O. The caller (the storage actor, or the simulator) passes a monotonic
`now` in seconds into every call, feeds it what the log applied and who leads, and does the
I/O for what comes back: `Reply` values to send to the requests' askers (a "waiter" is
whatever the caller needs to answer one; the lessor never looks inside it) and proposals
(op dicts: `lease_expire`, `lease_checkpoint`) to put through the log.

Rules:
- The lease table (id -> TTL, checkpointed remaining TTL) is the store's, applied from the
  log on every member. The lessor keeps deadlines, in memory, only while promoted: while
  this member leads a term and has applied every entry up to that term's start
  (`can_promote(applied_index)`, then `promote(now, store.leases())`).
- Promote: each lease's deadline = now + its checkpointed remaining TTL, or its full TTL
  (remaining 0). No lease expires earlier than its holder could expect: a holder's last
  acknowledged keep-alive or grant was at or before now, and a checkpoint only ever
  records what a leader's deadline still had left.
- Demote (leadership lost, or another term, or `silence_s` without news of leadership,
  or the store replaced): forget every deadline; held keep-alives are answered
  `not_leader`.
- Nothing expires except through a committed `lease_expire` entry: `tick` proposes it for
  leases past their deadline, at most `revokes_per_s` (token bucket refilled per tick of
  `tick_s`), again after `retry_s` if still there. A leader without a quorum revokes
  nothing.
- Keep-alive (promoted only): unknown or past its deadline -> `not_found`; else the
  deadline becomes now + TTL. If the log holds (or will hold) a checkpoint of the lease, the
  reply waits for a clearing checkpoint (remaining 0) to apply, so no later leader uses a
  remaining TTL older than an acknowledged keep-alive (`clear_proposals`, proposed after
  any checkpoint in flight, so they apply after it).
- Time-to-live answers what a later leader would honour: while a keep-alive waits for its
  clear, the deadline before it (the simulator's seed 982 showed a leader change expiring
  a lease before the TTL answered from the not yet durable renewal).
- Checkpoints (etcd #9888): every checkpoint interval `checkpoint_tick` proposes the
  remaining TTL of leases whose remaining TTL is `checkpoint_margin_ms` below what the log
  knows; lost ones (not applied within `retry_s`) are re-evaluated.
- Not promoted: a keep-alive or time-to-live is held while this member leads (it is
  promoted once caught up) or before any news of leadership; answered `not_leader`
  otherwise.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

W = TypeVar("W")  # a waiter: what the caller needs to answer one request

ReplyKind = Literal["keepalive", "ttl", "not_found", "not_leader"]
LEADER_OPS = ("lease_keepalive", "lease_timetolive")


@dataclass(frozen=True)
class LessorConfig:
    tick_s: float = 0.25  # how often `tick` is called (the token bucket's refill unit)
    revokes_per_s: int = 500
    retry_s: float = 3.0  # an expiry or checkpoint proposal that did not apply is proposed again
    checkpoint_margin_ms: int = 1000
    checkpoint_batch: int = 1000  # checkpoints per entry
    silence_s: float = 3.0  # no news of leadership for this long: stop acting as leader


@dataclass(frozen=True)
class Reply(Generic[W]):
    """The answer to one request. keepalive: ttl = the granted TTL; ttl (time-to-live):
    ttl = whole seconds left (-1: no such lease), granted_ttl = the granted TTL;
    not_found / not_leader: errors."""
    waiter: W
    kind: ReplyKind
    lease_id: int = 0
    ttl: int = 0
    granted_ttl: int = 0


@dataclass
class _Lease:
    ttl: int  # seconds
    stored_ms: int  # remaining TTL the log holds (0: none, the full TTL counts)
    deadline: float
    # The deadline any later leader honours: `deadline` once no keep-alive waits for its
    # clearing checkpoint; until the clear applies, the one before that keep-alive.
    confirmed: float = 0.0

    def __post_init__(self) -> None:
        self.confirmed = self.confirmed or self.deadline


class Lessor(Generic[W]):
    def __init__(self, config: LessorConfig | None = None) -> None:
        self.config = config or LessorConfig()
        self.is_leader = False
        self.term = 0
        self.ready_index = 0
        self.heard_at: float | None = None  # last news of leadership
        self.promoted_term: int | None = None
        self.leases: dict[int, _Lease] = {}  # while promoted
        self.expire_proposed: dict[int, float] = {}
        self.ckpt_inflight: dict[int, float] = {}  # non-zero checkpoints proposed, not applied
        self.clear_waiting: dict[int, list[W]] = {}  # keep-alives waiting for their clear
        self.clear_proposed: dict[int, float] = {}
        self.held: list[tuple[W, str, int, int | None]] = []  # (waiter, op, lease id, term): for promote
        self.revoke_tokens = 0.0

    # --- leadership ------------------------------------------------------------------
    @property
    def promoted(self) -> bool:
        return self.promoted_term is not None

    def leadership(self, now: float, is_leader: bool, term: int, ready_index: int) -> list[Reply[W]]:
        """News of who leads (ready_index: the log's end when this member became leader)."""
        self.heard_at = now
        self.is_leader, self.term, self.ready_index = is_leader, term, ready_index
        replies: list[Reply[W]] = []
        if self.promoted_term is not None and (not is_leader or term != self.promoted_term):
            replies += self.demote()
        if not is_leader and self.held:
            held, self.held = self.held, []
            replies += [Reply(w, "not_leader") for w, _op, _id, _term in held]
        return replies

    def can_promote(self, applied_index: int) -> bool:
        return (self.is_leader and self.promoted_term != self.term
                and applied_index >= self.ready_index)

    def promote(self, now: float, leases: Iterable[tuple[int, int, int]]) -> list[Reply[W]]:
        """Become the lessor of this term: `leases` is the store's (id, ttl_s, remaining_ms)."""
        self.leases = {lease_id: _Lease(ttl, remaining_ms, self.promoted_deadline(now, ttl, remaining_ms))
                       for lease_id, ttl, remaining_ms in leases}
        self.promoted_term = self.term
        held, self.held = self.held, []
        replies: list[Reply[W]] = []
        for waiter, op, lease_id, term in held:
            replies += self.request(now, waiter, op, lease_id, term)
        return replies

    @staticmethod
    def promoted_deadline(now: float, ttl: int, remaining_ms: int) -> float:
        return now + (remaining_ms / 1000.0 if remaining_ms else ttl)

    def demote(self) -> list[Reply[W]]:
        self.promoted_term = None
        self.leases.clear()
        self.expire_proposed.clear()
        self.ckpt_inflight.clear()
        self.clear_proposed.clear()
        waiting, self.clear_waiting = self.clear_waiting, {}
        return [Reply(w, "not_leader") for waiters in waiting.values() for w in waiters]

    # --- requests ----------------------------------------------------------------------
    def request(self, now: float, waiter: W, op: str, lease_id: int, term: int | None = None
                ) -> list[Reply[W]]:
        """`lease_keepalive` or `lease_timetolive` (after the read index applied): the
        answer now, or nothing (held, or waiting for a clearing checkpoint). `term`: the
        term the read index was confirmed in, when the caller knows it: answered only when
        promoted in that term (else a lessor that has not yet heard it lost leadership
        would answer; the storage actor does not pass it yet: tests/sim/leases.py
        KNOWN_BUG)."""
        assert op in LEADER_OPS, op
        if self.promoted_term is None:
            if self.is_leader or self.heard_at is None:
                # Promoted once caught up; or nobody told us yet who leads: never guess.
                self.held.append((waiter, op, lease_id, term))
                return []
            return [Reply(waiter, "not_leader")]
        if term is not None and term != self.promoted_term:
            return [Reply(waiter, "not_leader")]
        lease = self.leases.get(lease_id)
        if op == "lease_timetolive":
            if lease is None:
                return [Reply(waiter, "ttl", lease_id, -1, 0)]
            # What is durable: a renewal waiting for its clear may still be lost with
            # the leadership, and a later leader then honours only the older deadline.
            return [Reply(waiter, "ttl", lease_id, int(max(0.0, lease.confirmed - now)), lease.ttl)]
        if lease is None or lease.deadline <= now:
            return [Reply(waiter, "not_found", lease_id)]  # its revocation is on its way
        lease.deadline = now + lease.ttl
        if lease.stored_ms or lease_id in self.ckpt_inflight or lease_id in self.clear_waiting:
            self.clear_waiting.setdefault(lease_id, []).append(waiter)
            return []
        lease.confirmed = lease.deadline
        return [Reply(waiter, "keepalive", lease_id, lease.ttl)]

    # --- the log ------------------------------------------------------------------------
    def applied(self, now: float, ops: Iterable[Mapping[str, Any]]) -> list[Reply[W]]:
        """Lease ops the store applied without error, in log order."""
        replies: list[Reply[W]] = []
        for op in ops:
            kind = op.get("op")
            if kind == "lease_grant":
                if self.promoted_term is not None:
                    self.leases[op["id"]] = _Lease(op["ttl"], 0, now + op["ttl"])
            elif kind in ("lease_revoke", "lease_expire"):
                lease_id = op["id"]
                self.leases.pop(lease_id, None)
                self.expire_proposed.pop(lease_id, None)
                self.ckpt_inflight.pop(lease_id, None)
                self.clear_proposed.pop(lease_id, None)
                replies += [Reply(w, "not_found", lease_id) for w in self.clear_waiting.pop(lease_id, [])]
            elif kind == "lease_checkpoint":
                for lease_id, remaining_ms in op["checkpoints"]:
                    lease = self.leases.get(lease_id)
                    if lease is None:
                        continue
                    lease.stored_ms = max(0, min(int(remaining_ms), lease.ttl * 1000))
                    # Entries of one term apply in the order they were proposed: a
                    # checkpoint proposed before this one has applied by now, or never will.
                    self.ckpt_inflight.pop(lease_id, None)
                    if not remaining_ms and lease_id in self.clear_waiting:
                        lease.confirmed = lease.deadline  # no later leader uses an older TTL now
                        self.clear_proposed.pop(lease_id, None)
                        replies += [Reply(w, "keepalive", lease_id, lease.ttl)
                                    for w in self.clear_waiting.pop(lease_id)]
        return replies

    # --- timers -------------------------------------------------------------------------
    def tick(self, now: float) -> tuple[list[Reply[W]], list[dict[str, Any]]]:
        """Every `tick_s`: expiry proposals (or a demotion after `silence_s` of no news)."""
        if self.promoted_term is None:
            return [], []
        cfg = self.config
        assert self.heard_at is not None
        if now - self.heard_at > cfg.silence_s:
            self.is_leader = False  # whoever tells us who leads is gone: it tells us again
            return self.demote(), []
        self.revoke_tokens = min(cfg.revokes_per_s * cfg.tick_s * 2,
                                 self.revoke_tokens + cfg.revokes_per_s * cfg.tick_s)
        expired = sorted((lease.deadline, lease_id) for lease_id, lease in self.leases.items()
                         if lease.deadline <= now
                         and now - self.expire_proposed.get(lease_id, -1e9) >= cfg.retry_s)
        ops: list[dict[str, Any]] = []
        for _, lease_id in expired[: int(self.revoke_tokens)]:
            self.expire_proposed[lease_id] = now
            self.revoke_tokens -= 1
            ops.append({"op": "lease_expire", "id": lease_id})
        return [], ops

    def checkpoint_tick(self, now: float) -> list[dict[str, Any]]:
        """Every checkpoint interval: `lease_checkpoint` proposals."""
        if self.promoted_term is None:
            return []
        cfg = self.config
        for lease_id in [i for i, t in self.ckpt_inflight.items() if now - t >= cfg.retry_s]:
            del self.ckpt_inflight[lease_id]  # lost with an old entry; re-evaluated below
        items: list[list[int]] = []
        for lease_id, lease in self.leases.items():
            if lease_id in self.clear_waiting or lease_id in self.ckpt_inflight:
                continue
            remaining_ms = int((lease.deadline - now) * 1000)
            if 0 < remaining_ms < (lease.stored_ms or lease.ttl * 1000) - cfg.checkpoint_margin_ms:
                items.append([lease_id, remaining_ms])
        if not items:
            return []
        items.sort()
        for lease_id, _ in items:
            self.ckpt_inflight[lease_id] = now
        n = cfg.checkpoint_batch
        return [{"op": "lease_checkpoint", "checkpoints": items[k:k + n]} for k in range(0, len(items), n)]

    def clear_proposals(self, now: float) -> list[dict[str, Any]]:
        """Clearing checkpoints for keep-alives waiting for one (call often: every loop turn)."""
        if self.promoted_term is None or not self.clear_waiting:
            return []
        clears = [i for i in self.clear_waiting
                  if now - self.clear_proposed.get(i, -1e9) >= self.config.retry_s]
        if not clears:
            return []
        for lease_id in clears:
            self.clear_proposed[lease_id] = now
        return [{"op": "lease_checkpoint", "checkpoints": [[i, 0] for i in sorted(clears)]}]
