"""The periodic corruption check (etcd's `--experimental-corrupt-check-time`, on by default
here: `--corrupt-check-time`, 60 s; 0 = off).

Every interval the leader's gateway runs one round over the client port of every member
(its own included), as any client could:
1. `status` of each member: its current and compact revisions;
2. R = the lowest current revision; if some member has compacted past R the round is
   skipped (the next one will do); otherwise `hash_kv` at R on each member;
3. ``find_corrupt`` names the members whose hash differs: those outside a majority that
   agrees, or, with no such majority, those that differ from the leader (etcd 3.4); the
   gateway proposes a CORRUPT alarm for each one through the log.
A member that does not answer within the phase's deadline (ROUND_DEADLINE_S for status,
HASH_DEADLINE_S for the hash) is left out of that round.
With client security (`--client-key-file`) every member's client port is a CURVE server
with the cluster's one client key pair (SPEC "Security": clients need one server key for
the whole cluster, as etcd clients need one CA), so the checker connects as a CURVE
client with that same pair, expecting that same server key; the gateways map that key to
a member (actors/gateway/auth.py MEMBER), which may ask `status` and `hash_kv` under
auth. A member with another client key refuses the handshake and sits the rounds out.
``find_corrupt`` and ``pick_revision`` are pure; ``CorruptionChecker`` is the thin shell
that owns the sockets (one DEALER per member URL, created on first use).
"""
from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from protocol.codec import pack, unpack

ROUND_DEADLINE_S = 3.0  # the status phase
# The hash phase: a member hashes its whole keyspace (in slices between other work, over
# a snapshot: actors/storage/actor.py). In-process on this 2-core machine a 1M-key hash
# takes ~2 s at the current revision and several at an older one (a walk of every stored
# version), more under load: 3 s would leave big members out of every round.
HASH_DEADLINE_S = 10.0


def pick_revision(revisions: dict[int, tuple[int, int]]) -> int | None:
    """``{member: (current_revision, compact_revision)}`` -> the revision every member has
    applied and none has compacted past, or None when there is none (or too few members)."""
    if len(revisions) < 2:
        return None
    rev = min(cur for cur, _ in revisions.values())
    if rev < 1 or rev < max(compact for _, compact in revisions.values()):
        return None
    return rev


def find_corrupt(hashes: dict[int, int], cluster_size: int, leader: int) -> list[int]:
    """Members whose hash (all taken at one revision) is not the majority's; when no hash
    has a majority of the cluster, those whose hash differs from the leader's."""
    if len(set(hashes.values())) <= 1:
        return []
    value, count = Counter(hashes.values()).most_common(1)[0]
    if count * 2 > cluster_size:
        return sorted(m for m, h in hashes.items() if h != value)
    if leader not in hashes:
        return []
    return sorted(m for m, h in hashes.items() if h != hashes[leader])


@dataclass
class _Round:
    deadline: float
    phase: str  # "status" | "hash"
    waiting: dict[int, str] = field(default_factory=dict)  # request id -> url
    revisions: dict[int, tuple[int, int]] = field(default_factory=dict)  # member -> (rev, compact)
    urls: dict[int, str] = field(default_factory=dict)  # member -> url
    revision: int = 0
    hashes: dict[int, int] = field(default_factory=dict)


class CorruptionChecker:
    """Runs the rounds for a gateway. ``members()`` gives ``[(member_id, client_url)]``,
    ``is_leader()`` says whether to run, ``raise_alarm(member_id)`` proposes the alarm."""

    def __init__(self, actor: Any, members: Callable[[], list[tuple[int, str]]],
                 is_leader: Callable[[], bool], raise_alarm: Callable[[int], None],
                 leader_id: int, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.actor = actor
        self.members = members
        self.is_leader = is_leader
        self.raise_alarm = raise_alarm
        self.leader_id = leader_id
        self.curve = curve  # (public, secret, server public) with client security
        self.socks: dict[str, zmq.Socket] = {}
        self.round: _Round | None = None
        self._ids = itertools.count(1)
        self.rounds_done = 0

    def tick(self) -> None:
        now = time.monotonic()
        if self.round is not None:
            if now < self.round.deadline:
                return
            self._advance()  # finish with the members that answered
        if self.round is not None or not self.is_leader():
            return
        members = self.members()
        if len(members) < 2:
            return
        rnd = _Round(deadline=now + ROUND_DEADLINE_S, phase="status")
        self.round = rnd
        for _member, url in members:
            self._ask(rnd, url, {"op": "status"})
        self.actor.call_later(ROUND_DEADLINE_S, self._expire)

    def _expire(self) -> None:
        if self.round is not None and time.monotonic() >= self.round.deadline:
            self._advance()

    def _ask(self, rnd: _Round, url: str, req: dict) -> None:
        sock = self.socks.get(url)
        if sock is None:
            sock = self.actor.socket(zmq.DEALER, connect=url, handler=self.on_reply, immediate=1, hwm=1000,
                                     curve_client=self.curve)
            self.socks[url] = sock
        rid = next(self._ids)
        try:
            sock.send(pack({"id": rid, **req}), zmq.NOBLOCK)
        except zmq.ZMQError:
            return  # not connected (yet): this member sits the round out
        rnd.waiting[rid] = url

    def on_reply(self, frames: list[bytes]) -> None:
        rnd = self.round
        try:
            reply = unpack(frames[-1])
        except Exception:
            return
        if rnd is None or not isinstance(reply, dict) or reply.get("id") not in rnd.waiting:
            return  # a late answer from an earlier round
        url = rnd.waiting.pop(reply["id"])
        if reply.get("ok") is True:
            try:
                member = int(reply["header"]["member_id"])
                if rnd.phase == "status":
                    rnd.revisions[member] = (int(reply["header"]["revision"]), int(reply["compact_revision"]))
                    rnd.urls[member] = url
                elif int(reply["hash_revision"]) == rnd.revision:
                    rnd.hashes[member] = int(reply["hash"])
            except (KeyError, TypeError, ValueError):
                pass
        if not rnd.waiting:
            self._advance()

    def _advance(self) -> None:
        rnd = self.round
        assert rnd is not None
        if rnd.phase == "status":
            rev = pick_revision(rnd.revisions)
            if rev is None or not self.is_leader():
                self._end()
                return
            rnd.phase, rnd.revision, rnd.waiting = "hash", rev, {}
            rnd.deadline = time.monotonic() + HASH_DEADLINE_S
            for member in rnd.revisions:
                self._ask(rnd, rnd.urls[member], {"op": "hash_kv", "revision": rev})
            self.actor.call_later(HASH_DEADLINE_S, self._expire)
            if not rnd.waiting:
                self._end()
            return
        corrupt = find_corrupt(rnd.hashes, len(self.members()), self.leader_id) if len(rnd.hashes) >= 2 else []
        if corrupt and self.is_leader():
            self.actor.log.error("corruption_detected", revision=rnd.revision,
                                 hashes={f"{m:x}": h for m, h in rnd.hashes.items()},
                                 corrupt=[f"{m:x}" for m in corrupt])
            for member in corrupt:
                self.raise_alarm(member)
        self._end()

    def _end(self) -> None:
        self.round = None
        self.rounds_done += 1

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close(linger=0)
        self.socks.clear()
