"""Leases in the deterministic simulator: every node runs the real, pure Lessor
(actors/storage/lessor.py) the way the storage actor does, on top of Sim (tests/sim/sim.py).

- Time: one sim step is STEP_S seconds of global time. Each node's lessor reads its own
  monotonic clock: global time plus a per-node origin (clocks agree on durations, never on
  instants). Now and then a node's storage side pauses (GC, a slow disk; consensus runs on):
  its lessor hears nothing for up to 6 s, what happened meanwhile (applied entries, news of
  leadership, keep-alives) waits in order, and when it resumes its clock has jumped forward
  (whether it ticks before or after catching up is drawn).
- Clients go through Raft like the real ones: `lease_grant`, `lease_revoke` and puts
  attached to leases are proposed entries (MVCCStore applies them); a keep-alive is a
  ReadIndex at the node the client believes leads (until it answers not_leader), answered
  by that node's lessor once the read point has applied (others say not_leader). Each lease
  is kept alive every TTL/3 until its client abandons it; then it must expire. Time-to-live
  requests go the same way (for abandoned leases too).
- The lessor's own proposals (`lease_expire`, `lease_checkpoint`) are proposed only while
  its node leads in the term it was promoted in (consensus's LEASE_PROPOSE rule).
- Shell rules copied from the storage actor: LEADERSHIP every step (is leader, term, the
  log's end when it became leader), promote once applied that far, demote on a snapshot
  install, a fresh lessor after a crash.

Checker (etcd's guarantee from a client's view, SPEC "Leases"): a lease never expires
before TTL after the client SENT its last acknowledged grant or keep-alive. Checked when
the `lease_expire` entry first applies anywhere (the earliest moment anyone can see it), in
global time, across leader changes, pauses and crashes. (From the send: a ReadIndex confirms
leadership with heartbeats sent after the request arrived, and any later leader was elected
after some of those were acknowledged.) A revoked lease has no constraint once its revoke
is sent. A time-to-live answer of N >= 0 seconds binds like a keep-alive with TTL N. An
acknowledgement of a lease whose expiry has already applied (before sent + TTL) is a
violation too.

Found by this simulator and fixed: a lessor that had not yet heard it lost leadership still
answered keep-alives. The storage actor learns leadership from consensus (LEADERSHIP) on one
socket and gets keep-alives from the gateway on another after a ReadIndex that the NEW leader
confirmed; a storage paused across a leader change processes them in either order, and its
stale lessor acknowledged a keep-alive that the new leader then expired (seed 10608, about one
seed in a thousand). etcd closes this with `ensureLeadership`. Ours: READ_INDEX_RESP carries
the term the index was confirmed in, the gateway passes it with the read (CLIENT_READ), and
the lessor answers only when promoted in that term (Lessor.request's `term`; here
`read_terms`). `test_a_stale_lessor_is_caught` turns it off and moves leadership during
lessor pauses: the checker fails.

Found by this simulator and fixed: a time-to-live answered while a keep-alive waited for its
clearing checkpoint reported the renewed TTL although the renewal was not durable yet; a
leader change before the clear applied then expired the lease before the reported TTL (seed
982: told 26.3 s, expired 26.1 s). The Lessor now answers time-to-live from the deadline a
later leader honours (`test_time_to_live_reports_only_durable_renewals` plants the old rule).
"""

from __future__ import annotations

from typing import Any

import msgpack

from actors.consensus.raft import Entry, ProposalDropped
from actors.storage.lessor import Lessor, LessorConfig, Reply

from .checkers import Checker, SafetyViolation
from .sim import KEYS, LEADER, Sim, SimFailure, SimNode

STEP_S = 0.1  # one sim step (one Raft tick: heartbeat 100 ms, election 10-20 ticks)
TTLS = (2, 3, 5)  # seconds; the server's minimum is 1.5 x the election timeout
MAX_LEASES = 10
KA_TIMEOUT_STEPS = 40  # a keep-alive not answered by then is forgotten by its client
LEASE_OPS = ("lease_grant", "lease_revoke", "lease_expire", "lease_checkpoint")


class LeaseChecker(Checker):
    """Sim's checker plus the lease checker; passes keep-alive read states to the sim."""

    def __init__(self, sim: LeaseSim) -> None:
        super().__init__()
        self.sim = sim
        self.safe_until: dict[int, float] = {}  # lease -> global time it must live until
        self.acked_term: dict[int, int | None] = {}  # lease -> term of its last keep-alive ack
        self.revoked: set[int] = set()
        self.expired_at: set[int] = set()  # indexes of lease_expire entries applied somewhere
        self.expired_time: dict[int, float] = {}  # lease -> when its expiry first applied

    def read_returned(self, node: int, ctx: bytes, index: int) -> None:
        super().read_returned(node, ctx, index)
        if ctx.startswith(b"ka-"):
            self.sim.keepalive_ready(node, ctx, index)

    def acknowledged(self, lease_id: int, sent_s: float, ttl: int, term: int | None) -> None:
        """A grant applied, or a keep-alive answered: alive until sent + TTL (so it must not
        have expired before that already)."""
        gone = self.expired_time.get(lease_id)
        if gone is not None and gone < sent_s + ttl - 1e-9 and lease_id not in self.revoked:
            raise SafetyViolation(
                f"lease {lease_id:x} acknowledged (sent at {sent_s:.1f} s, TTL {ttl}) in term {term}, "
                f"but its expiry had applied at {gone:.1f} s")
        self.safe_until[lease_id] = max(self.safe_until.get(lease_id, 0.0), sent_s + ttl)
        self.acked_term[lease_id] = term

    def expired(self, index: int, term: int, lease_id: int, now_s: float) -> bool:
        """A lease_expire entry applied (the first time anywhere: True)."""
        if index in self.expired_at:
            return False
        self.expired_at.add(index)
        self.expired_time.setdefault(lease_id, now_s)
        until = self.safe_until.get(lease_id)
        if lease_id not in self.revoked and until is not None and now_s < until - 1e-9:
            raise SafetyViolation(
                f"lease {lease_id:x} expired early: its expiry (index {index}, term {term}) applied "
                f"at {now_s:.1f} s, but a client was told it lives until {until:.1f} s "
                f"(last acknowledged in term {self.acked_term.get(lease_id)})")
        return True


class ClientLease:
    def __init__(self, lease_id: int, ttl: int, sent_s: float, keep_until: int) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.sent_s = sent_s  # the grant's
        self.keep_until = keep_until  # step after which the client stops keeping it alive
        self.granted = False
        self.last_ka = -(10**9)
        self.revoked = False


class LeaseSim(Sim):
    def __init__(self, seed: int, nodes: int | None = None, steps: int | None = None,
                 verbose: bool = False, pre_vote: bool = True, check_quorum: bool = True,
                 liveness_steps: int = 400):
        super().__init__(seed, nodes=nodes, steps=steps, verbose=verbose, pre_vote=pre_vote,
                         check_quorum=check_quorum, liveness_steps=liveness_steps)
        rng = self.rng
        self.checker = LeaseChecker(self)
        self.lessor_config = LessorConfig(
            tick_s=STEP_S, revokes_per_s=rng.choice([20, 500]), retry_s=rng.choice([1.0, 3.0]),
            checkpoint_margin_ms=rng.choice([200, 1000]), checkpoint_batch=rng.choice([2, 1000]),
            silence_s=3.0)
        self.checkpoint_every = rng.choice([5, 10, 20])  # steps (etcd: 5 min; ours: 5 s)
        self.p_pause = rng.choice([0.0, 0.003, 0.01])
        # Leadership moves away while the leader's lessor is paused (a stale lessor).
        # (Every fourth seed; from the seed, not the rng, so other seeds replay as before.)
        self.p_move_on_pause = 0.3 if seed % 4 == 3 else 0.0
        self.read_terms = True  # keep-alives carry their read index's term (as the actors do)
        self.p_grant = rng.choice([0.02, 0.05])
        self.origin: dict[int, int] = {}  # each node's clock origin
        self.lessors: dict[int, Lessor[bytes] | None] = {}
        self.paused_until: dict[int, int] = {}
        self.backlog: dict[int, list[tuple]] = {}
        self.lead_term: dict[int, int] = {}
        self.ready_index: dict[int, int] = {}
        self.sm_seen: dict[int, Any] = {}
        self.ka_waiting: dict[int, list[tuple[int, bytes, int]]] = {}
        for i in self.ids:
            self.lease_node(i)
        # ctx -> (lease, sent_s, step, op): keep-alives and time-to-live requests in flight
        self.pending_ka: dict[bytes, tuple[int, float, int, str]] = {}
        self.leases: dict[int, ClientLease] = {}
        self.next_lease = 0
        self.ka_seq = 0
        self.believed: int | None = None  # the node the clients send keep-alives to
        self.answering = ""  # the kind of lessor event being handled (stats)
        for name in ("lease_grants", "lease_keepalives", "lease_acks", "lease_held_acks", "lease_ttls",
                     "lease_revokes", "lease_expired", "lease_expired_new_term", "lease_checkpoints",
                     "lease_promotions", "lessor_pauses"):
            self.stats[name] = 0
        self.trace(f"leases: {self.lessor_config}, checkpoint every {self.checkpoint_every} steps, "
                   f"p_pause={self.p_pause}, p_grant={self.p_grant}")

    def lease_node(self, i: int) -> None:
        """The storage side of node i (at the start, or a member added later)."""
        self.origin[i] = self.rng.randrange(10**6)
        self.lessors[i] = Lessor(self.lessor_config)
        self.backlog[i] = []
        self.sm_seen[i] = self.nodes[i].sm
        self.ka_waiting[i] = []

    # --- clocks ----------------------------------------------------------------------
    def global_s(self) -> float:
        return self.now * STEP_S

    def clock(self, node: int) -> float:
        return (self.now + self.origin[node]) * STEP_S

    # --- the storage shell around each node's lessor ---------------------------------
    def lessor_event(self, node: int, event: tuple) -> None:
        if node in self.paused_until:
            self.backlog[node].append(event)
        else:
            self.handle(node, event)

    def handle(self, node: int, event: tuple) -> None:
        lessor = self.lessors[node]
        if lessor is None:
            return
        now = self.clock(node)
        kind = self.answering = event[0]
        if kind == "leadership":
            self.replies(node, lessor.leadership(now, *event[1:]))
        elif kind == "applied":
            self.replies(node, lessor.applied(now, event[1]))
        elif kind == "request":
            self.replies(node, lessor.request(now, event[1], event[3], event[2],
                                              event[4] if self.read_terms else None))
        elif kind == "install":
            self.replies(node, lessor.demote())
        self.maybe_promote(node)

    def maybe_promote(self, node: int) -> None:
        lessor = self.lessors[node]
        sn = self.nodes[node]
        if lessor is None or node in self.paused_until or not lessor.can_promote(sn.sm.applied_index):
            return
        self.stats["lease_promotions"] += 1
        self.trace(f"node {node}: lessor promoted in term {lessor.term} "
                   f"({len(sn.sm.leases())} leases)")
        self.replies(node, lessor.promote(self.clock(node), sn.sm.leases()))

    def replies(self, node: int, replies: list[Reply[bytes]]) -> None:
        lessor = self.lessors[node]
        for r in replies:
            pending = self.pending_ka.pop(r.waiter, None)
            if pending is None:
                continue
            lease_id, sent_s, _, _ = pending
            if r.kind == "ttl" and r.ttl >= 0:
                # "at least ttl seconds left": as binding as a keep-alive, from the send
                self.stats["lease_ttls"] += 1
                self.checker.acknowledged(lease_id, sent_s, r.ttl, lessor.promoted_term if lessor else None)
                continue
            if r.kind == "not_leader" and self.believed == node:
                self.believed = None  # the client looks for the leader again
            if r.kind != "keepalive":
                continue
            self.stats["lease_acks"] += 1
            if self.answering == "applied":
                self.stats["lease_held_acks"] += 1  # waited for its clearing checkpoint
            self.checker.acknowledged(lease_id, sent_s, r.ttl, lessor.promoted_term if lessor else None)
            self.trace(f"node {node}: keep-alive of {lease_id:x} (sent at {sent_s:.1f} s) acknowledged")

    def propose_ops(self, node: int, ops: list[dict]) -> None:
        """LEASE_PROPOSE: only while this node leads in the term its lessor was promoted in."""
        sn = self.nodes[node]
        lessor = self.lessors[node]
        if (not ops or lessor is None or not sn.up or sn.node.raft.state != LEADER
                or sn.node.raft.term != lessor.promoted_term):
            return
        try:
            sn.node.propose_batch([msgpack.packb([node, 0, op]) for op in ops])
        except ProposalDropped:
            return
        self.trace(f"node {node}: lessor proposes {ops}")

    def timers(self, node: int) -> None:
        lessor = self.lessors[node]
        if lessor is None:
            return
        now = self.clock(node)
        replies, ops = lessor.tick(now)
        self.replies(node, replies)
        self.propose_ops(node, ops)
        if (self.now + self.origin[node]) % self.checkpoint_every == 0:
            self.propose_ops(node, lessor.checkpoint_tick(now))
        self.propose_ops(node, lessor.clear_proposals(now))

    def resume(self, node: int) -> None:
        del self.paused_until[node]
        backlog, self.backlog[node] = self.backlog[node], []
        tick_first = self.rng.random() < 0.5
        self.trace(f"node {node}: lessor resumes (clock jumps), {len(backlog)} events waited, "
                   f"{'ticks' if tick_first else 'catches up'} first")
        if tick_first:
            self.timers(node)
        for event in backlog:
            self.handle(node, event)

    # --- Sim hooks -------------------------------------------------------------------
    def apply(self, sn: SimNode, ents: list[Entry]) -> None:
        if sn.sm is not self.sm_seen[sn.id]:  # a snapshot was installed
            self.sm_seen[sn.id] = sn.sm
            self.lessor_event(sn.id, ("install",))
        fresh = [e for e in ents if e.index > sn.sm.applied_index]
        known = {lease_id for lease_id, _, _ in sn.sm.leases()}
        super().apply(sn, ents)
        ops = []
        for e in fresh:
            op: Any = msgpack.unpackb(e.data, raw=False)[2] if e.data else None
            kind = op.get("op") if isinstance(op, dict) else None
            if kind not in LEASE_OPS:
                continue
            if kind == "lease_grant":
                known.add(op["id"])
                lease = self.leases.get(op["id"])
                if lease is not None and not lease.granted:
                    lease.granted = True
                    self.checker.acknowledged(lease.id, lease.sent_s, lease.ttl, None)
            elif kind in ("lease_revoke", "lease_expire"):
                if op["id"] not in known:
                    continue  # LeaseNotFound: the lessor is not told
                known.discard(op["id"])
                if kind == "lease_expire" and self.checker.expired(e.index, e.term, op["id"], self.global_s()):
                    self.stats["lease_expired"] += 1
                    if self.checker.acked_term.get(op["id"]) not in (None, e.term):
                        self.stats["lease_expired_new_term"] += 1
                    self.trace(f"node {sn.id}: lease {op['id']:x} expired (index {e.index})")
            elif kind == "lease_checkpoint":
                self.stats["lease_checkpoints"] += 1
            ops.append(op)
        if ops:
            self.lessor_event(sn.id, ("applied", ops))
        else:
            self.maybe_promote(sn.id)
        waiting = self.ka_waiting[sn.id]
        if waiting:
            applied = sn.sm.applied_index
            self.ka_waiting[sn.id] = [w for w in waiting if w[0] > applied]
            for i, ctx, term in waiting:
                if i <= applied:
                    self.keepalive_ready(sn.id, ctx, i, term)

    def keepalive_ready(self, node: int, ctx: bytes, index: int, term: int | None = None) -> None:
        """The keep-alive's read point: answered by the lessor once it has applied. `term`:
        the one the read index was confirmed in (passed to the lessor with read_terms)."""
        sn = self.nodes[node]
        if ctx not in self.pending_ka or not sn.up:
            return
        if term is None:
            term = sn.node.raft.term  # the read state just returned
        if sn.sm.applied_index < index:
            self.ka_waiting[node].append((index, ctx, term))
            return
        lease_id, _, _, op = self.pending_ka[ctx]
        self.lessor_event(node, ("request", ctx, lease_id, op, term))

    def crash(self, sn: SimNode, where: str = "between steps") -> None:
        super().crash(sn, where)
        self.lessors[sn.id] = None
        self.paused_until.pop(sn.id, None)
        self.backlog[sn.id] = []
        self.ka_waiting[sn.id] = []

    def restart(self, sn: SimNode) -> None:
        super().restart(sn)
        self.lessors[sn.id] = Lessor(self.lessor_config)
        self.sm_seen[sn.id] = sn.sm
        self.lead_term.pop(sn.id, None)

    def clients(self) -> None:
        super().clients()
        rng = self.rng
        up = self.up_nodes()
        if not up:
            return
        live = [lease for lease in self.leases.values() if not lease.revoked]
        if len(live) < MAX_LEASES and rng.random() < self.p_grant:
            self.next_lease += 1
            ttl = rng.choice(TTLS)
            lease = ClientLease(self.next_lease, ttl, self.global_s(),
                                self.now + rng.randint(0, 300))
            sn = rng.choice(up)
            self.req_id += 1
            op = {"op": "lease_grant", "id": lease.id, "ttl": ttl}
            if self.propose(sn, msgpack.packb([sn.id, self.req_id, op])):
                self.leases[lease.id] = lease
                self.stats["lease_grants"] += 1
        lead = self.leader()
        for lease in live:
            if not lease.granted or self.now > lease.keep_until:
                continue
            if self.now - lease.last_ka >= lease.ttl / STEP_S / 3:
                lease.last_ka = self.now
                self.send_keepalive(self.target(lead, up), lease)
        granted = [lease for lease in live if lease.granted]
        if granted and rng.random() < 0.03:  # abandoned leases too: those are the ones that expire
            self.send_keepalive(self.target(lead, up), rng.choice(granted), "lease_timetolive")
        if live and rng.random() < 0.005:
            lease = rng.choice(live)
            lease.revoked = True
            self.checker.revoked.add(lease.id)  # from now on the client expects nothing
            sn = rng.choice(up)
            self.req_id += 1
            self.stats["lease_revokes"] += 1
            self.propose(sn, msgpack.packb([sn.id, self.req_id, {"op": "lease_revoke", "id": lease.id}]))
        if live and rng.random() < 0.05:
            lease = rng.choice(live)
            sn = rng.choice(up)
            self.req_id += 1
            op = {"op": "put", "key": rng.choice(KEYS), "value": b"l%d" % self.req_id, "lease": lease.id,
                  "prev_kv": False, "ignore_value": False, "ignore_lease": False}
            self.propose(sn, msgpack.packb([sn.id, self.req_id, op]))
        for ctx in [c for c, (_, _, at, _) in self.pending_ka.items() if self.now - at > KA_TIMEOUT_STEPS]:
            del self.pending_ka[ctx]  # the client gave up on it

    def target(self, lead: SimNode | None, up: list[SimNode]) -> SimNode:
        """Where keep-alives go: the node the client believes leads, until it says
        not_leader (or is down); then the leader, or any node (20%)."""
        if self.believed is None or not self.nodes[self.believed].up:
            self.believed = (lead if lead is not None and self.rng.random() < 0.8 else self.rng.choice(up)).id
        return self.nodes[self.believed]

    def send_keepalive(self, sn: SimNode, lease: ClientLease, op: str = "lease_keepalive") -> None:
        """A keep-alive (or time-to-live): a ReadIndex at `sn`, then its lessor answers."""
        self.ka_seq += 1
        ctx = b"ka-%d" % self.ka_seq
        floor = max([self.checker.max_commit] + [x.node.raft.log.committed for x in self.up_nodes()])
        self.checker.commit_seen(floor)
        self.checker.read_issued(ctx)
        self.pending_ka[ctx] = (lease.id, self.global_s(), self.now, op)
        self.stats["lease_keepalives"] += 1
        try:
            sn.node.read_index(ctx)
        except ProposalDropped:
            del self.pending_ka[ctx]

    def step(self, safety: bool = True) -> None:
        super().step(safety)
        rng = self.rng
        for sn in self.nodes.values():
            node = sn.id
            if not sn.up:
                continue
            if node in self.paused_until:
                if self.now >= self.paused_until[node] or not safety:
                    self.resume(node)
                else:
                    continue
            if sn.sm is not self.sm_seen[node]:
                self.sm_seen[node] = sn.sm
                self.handle(node, ("install",))
            r = sn.node.raft
            is_leader = r.state == LEADER
            if is_leader and self.lead_term.get(node) != r.term:
                self.lead_term[node] = r.term
                self.ready_index[node] = r.log.last_index()
            self.handle(node, ("leadership", is_leader, r.term, self.ready_index.get(node, 0) if is_leader else 0))
            self.timers(node)
            if safety and self.p_pause and rng.random() < self.p_pause:
                self.paused_until[node] = self.now + rng.randint(5, 60)
                self.stats["lessor_pauses"] += 1
                self.trace(f"node {node}: lessor paused until step {self.paused_until[node]}")
                if is_leader and self.p_move_on_pause and rng.random() < self.p_move_on_pause:
                    target = rng.choice([i for i in self.ids if i != node])
                    self.trace(f"node {node}: transfer leadership to {target}")
                    sn.node.transfer_leader(target)


    def run(self) -> dict:
        try:
            return super().run()
        except SimFailure as e:  # its replay command must name the lease simulator
            raise SimFailure(str(e).replace("-m tests.sim.run ", "-m tests.sim.run --leases ")) from e.__cause__


def run_seed(seed: int, nodes: int | None = None, verbose: bool = False,
             steps: int | None = None) -> dict:
    return LeaseSim(seed, nodes=nodes, steps=steps, verbose=verbose).run()
