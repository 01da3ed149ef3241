"""Safety checkers for the deterministic simulator: global, incremental, over all time.

Each check is fed by the simulator as things happen (a node is seen as leader, entries are
written to a node's disk, entries are applied, a read point is returned), so the cost per
step stays proportional to what changed. A violation raises `SafetyViolation`.

- Election safety: at most one leader per term, ever.
- Log matching (on persisted logs): an entry (index, term) has the same data and the same
  previous term on every disk, ever; by induction two logs holding (index, term) agree on
  every entry up to it.
- Leader completeness: an entry committed in term T (a leader of T had it in its commit
  index) is in the log of every leader of a later term (a compacted prefix is covered by
  the snapshot). Not "every entry committed so far": a stale candidate may count delayed
  votes and become leader of term 5 after a leader of term 6 committed entries.
- State machine safety: no two nodes apply different entries at one index, and the MVCC
  revision after applying index i is the same everywhere.
- Revisions never decrease on a node, except a crash rolling the state machine back to its
  durable checkpoint (never below what was durable).
- ReadIndex: a read point is never below the commit index known anywhere when the read
  was issued.
- Commit quorum: a leader moves its commit index only over entries a majority of voters
  hold on their disks (durable copies; the simulator names the holders and the voters).
"""

from __future__ import annotations

import bisect

import msgpack  # type: ignore[import-untyped]


class SafetyViolation(AssertionError):
    pass


class Checker:
    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}  # term -> leader id
        # (index, term) -> (data, term of the entry before it)
        self.entries: dict[tuple[int, int], tuple[bytes, int]] = {}
        self.applied: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        self.commit_by_term: dict[int, int] = {}  # leader term -> highest commit it had
        self.committed_terms: dict[int, int] = {}  # committed index -> term of its entry
        self.top_committed = 0  # committed_terms holds what leaders logs had up to here
        self.revision_at: dict[int, int] = {}  # applied index -> MVCC revision after it
        self.max_commit = 0  # highest commit index any node ever had
        self.reads: dict[bytes, int] = {}  # read ctx -> max_commit when issued
        self.reads_checked = 0

    # --- election safety + leader completeness ------------------------------------------
    def leader_seen(self, term: int, node: int, log) -> None:
        """`log` is the RaftLog of the node, seen as leader of `term`."""
        other = self.leaders.get(term)
        if other is None:
            self.leaders[term] = node
            self._check_complete(term, node, log)
        elif other != node:
            raise SafetyViolation(f"election safety: term {term} has leaders {other} and {node}")

    def _check_complete(self, term: int, node: int, log) -> None:
        need = max((c for t, c in self.commit_by_term.items() if t < term), default=0)
        if not need:
            return
        last = log.last_index()
        if need > last:
            raise SafetyViolation(
                f"leader completeness: leader {node} of term {term} ends at {last}, entry "
                f"{need} was committed in an earlier term")
        for i in range(log.first_index(), need + 1):
            want = self.committed_terms.get(i)
            if want is not None and log.term(i) != want:
                raise SafetyViolation(
                    f"leader completeness: leader {node} of term {term} has term "
                    f"{log.term(i)} at {i}, the entry committed there has term {want}")

    def leader_commit(self, term: int, node: int, log) -> None:
        """A leader of `term` has log.committed: those entries are committed in `term`."""
        commit = log.committed
        if commit > self.commit_by_term.get(term, 0):
            self.commit_by_term[term] = commit
        if commit > self.top_committed:
            for i in range(max(self.top_committed + 1, log.first_index()), commit + 1):
                t = log.term(i)
                assert t is not None
                self.committed_terms[i] = t
            self.top_committed = commit
        # Committed entries never change (checked where this leader's log overlaps).

    def commit_quorum(self, term: int, node: int, commit: int, holders: set[int], voters: set[int]) -> None:
        """A leader of `term` moved its commit index to `commit`: a majority of `voters` must
        hold that entry durably (`holders`: whose disks have it)."""
        have = holders & voters
        if len(have) < len(voters) // 2 + 1:
            raise SafetyViolation(
                f"commit quorum: leader {node} of term {term} committed {commit} held durably by "
                f"{sorted(have)} of the voters {sorted(voters)}: not a majority")

    # --- log matching on persisted logs -----------------------------------------------
    def persisted(self, node: int, prev_term: int, entries) -> None:
        """Entries written to `node`'s disk; prev_term is the term of the entry before the
        first one (or of the snapshot)."""
        for e in entries:
            key = (e.index, e.term)
            seen = self.entries.get(key)
            if seen is None:
                self.entries[key] = (e.data, prev_term)
            elif seen != (e.data, prev_term):
                raise SafetyViolation(
                    f"log matching: node {node} persisted ({e.index}, {e.term}) with "
                    f"(data, prev_term) {(e.data, prev_term)}, elsewhere {seen}")
            prev_term = e.term

    # --- state machine safety ------------------------------------------------------------
    def applied_entry(self, node: int, index: int, term: int, data: bytes,
                      revision: int) -> None:
        seen = self.applied.get(index)
        if seen is None:
            self.applied[index] = (term, data)
        elif seen != (term, data):
            raise SafetyViolation(
                f"state machine safety: node {node} applied (term {term}, {data!r}) at "
                f"{index}, another node applied {seen}")
        self.revision_at_index(node, index, revision)

    def revision_at_index(self, node: int, index: int, revision: int) -> None:
        rev = self.revision_at.setdefault(index, revision)
        if rev != revision:
            raise SafetyViolation(
                f"state machine safety: node {node} is at revision {revision} after index "
                f"{index}, another node was at {rev}")

    def commit_seen(self, commit: int) -> None:
        if commit > self.max_commit:
            self.max_commit = commit

    # --- revisions -------------------------------------------------------------------
    @staticmethod
    def revision_moved(node: int, before: int, after: int, durable: int, why: str) -> None:
        if why == "rollback":
            if after < durable:
                raise SafetyViolation(
                    f"revision: node {node} rolled back to {after}, below durable {durable}")
        elif after < before:
            raise SafetyViolation(f"revision: node {node} went from {before} to {after} ({why})")

    # --- ReadIndex -------------------------------------------------------------------
    def read_issued(self, ctx: bytes) -> None:
        self.reads[ctx] = self.max_commit

    def read_returned(self, node: int, ctx: bytes, index: int) -> None:
        floor = self.reads.get(ctx)
        if floor is None:
            raise SafetyViolation(f"read index: node {node} got a read state for unknown {ctx!r}")
        if index < floor:
            raise SafetyViolation(
                f"read index: node {node} got read point {index} for {ctx!r}, but commit "
                f"{floor} was known when it was issued")
        self.reads_checked += 1


class MembershipChecker:
    """Quorums under membership changes (tests/sim/membership.py), from the committed log
    alone: the conf changes every node applied, folded by index from the initial voters
    with its own copy of the single-step rule (not the code under test).

    - Quorum set: a leader counts exactly the voters the log says it has as of its applied
      index: no learner, no removed member, nobody missing.
    - Commit quorum: when a leader's commit index moves to c, a majority of those voters
      hold (c, term) on their disks (or have compacted past c); a removed member or a
      learner holding it does not help.
    - Member table: a leader's table (names, peer URLs) is the one the log's conf changes
      build, as of its applied index, whatever restarts and snapshots it went through.
    (No two leaders in a term: `Checker.leader_seen`, whatever the changes.)
    """

    def __init__(self, voters: list[int], table: dict[int, tuple[str, tuple[str, ...]]] | None = None) -> None:
        self.initial = frozenset(voters)
        self.initial_table = dict(table or {})  # member id -> (name, peer URLs)
        self.contexts: dict[int, bytes] = {}  # index -> the conf change's context
        self._table_cache: tuple[int, frozenset[int], frozenset[int], dict[int, tuple[str, tuple[str, ...]]]] = (
            0, self.initial, frozenset(), dict(self.initial_table))
        self.tables_checked = 0
        self.changes: dict[int, tuple[int, int]] = {}  # index -> (conf change type, node id)
        self._indexes: list[int] = []  # sorted keys of `changes`
        self._cache: tuple[int, frozenset[int], frozenset[int]] = (0, self.initial, frozenset())
        self.checked_commit: dict[tuple[int, int], int] = {}  # (term, leader) -> commit checked
        self.quorums_checked = 0

    def conf_change_applied(self, node: int, index: int, type_: int, node_id: int, context: bytes = b"") -> None:
        seen = self.changes.get(index)
        if seen is None:
            self.changes[index] = (type_, node_id)
            self.contexts[index] = context
            bisect.insort(self._indexes, index)
        elif seen != (type_, node_id):
            raise SafetyViolation(f"membership: node {node} applied conf change {(type_, node_id)} at {index}, "
                                  f"another node applied {seen}")

    def conf_at(self, index: int) -> tuple[frozenset[int], frozenset[int]]:
        """(voters, learners) after every conf change at or below `index`."""
        at, voters, learners = self._cache
        if index == at:
            return voters, learners
        if index < at:
            at, voters, learners = 0, self.initial, frozenset()
        v, lrn = set(voters), set(learners)
        lo = bisect.bisect_right(self._indexes, at)
        hi = bisect.bisect_right(self._indexes, index)
        for i in self._indexes[lo:hi]:
            v, lrn = self._fold(v, lrn, *self.changes[i])
        self._cache = (index, frozenset(v), frozenset(lrn))
        return self._cache[1], self._cache[2]

    @staticmethod
    def _fold(v: set[int] | frozenset[int], lrn: set[int] | frozenset[int], t: int,
              nid: int) -> tuple[set[int], set[int]]:
        nv, nl = set(v), set(lrn)
        if t == 0:  # ADD_NODE (promotes a learner)
            nl.discard(nid)
            nv.add(nid)
        elif t == 3:  # ADD_LEARNER_NODE (never demotes a voter)
            if nid not in nv:
                nl.add(nid)
        elif t == 1:  # REMOVE_NODE
            nv.discard(nid)
            nl.discard(nid)
        if nv:  # removing the last voter is refused
            return nv, nl
        return set(v), set(lrn)

    def table_at(self, index: int) -> dict[int, tuple[str, tuple[str, ...]]]:
        """The member table (id -> (name, peer URLs)) after every conf change at or below
        `index`: an add or update takes the name and URLs its context carries (else keeps the
        old ones) while the member is in the conf; a removal drops it."""
        at, fv, fl, table = self._table_cache
        if index < at:
            at, fv, fl, table = 0, self.initial, frozenset(), dict(self.initial_table)
        v, lrn, table = set(fv), set(fl), dict(table)
        lo = bisect.bisect_right(self._indexes, at)
        hi = bisect.bisect_right(self._indexes, index)
        for i in self._indexes[lo:hi]:
            t, nid = self.changes[i]
            v, lrn = self._fold(v, lrn, t, nid)
            if t in (0, 2, 3) and (nid in v or nid in lrn):
                old_name, old_urls = table.get(nid, ("", ()))
                meta = msgpack.unpackb(self.contexts[i], raw=False) if self.contexts[i] else {}
                table[nid] = (str(meta.get("name") or old_name), tuple(meta.get("peer_urls") or old_urls))
            elif t == 1 and nid not in v:
                table.pop(nid, None)
        self._table_cache = (index, frozenset(v), frozenset(lrn), table)
        return dict(table)

    def leader_table(self, term: int, node: int, applied: int, table: dict[int, tuple[str, tuple[str, ...]]]) -> None:
        """A leader's member table is the committed log's, as of its applied index (through
        restarts, snapshots, compactions)."""
        want = self.table_at(applied)
        self.tables_checked += 1
        if table != want:
            raise SafetyViolation(f"member table: leader {node} of term {term} at applied {applied} has {table}; "
                                  f"the log says {want}")

    def leader_counts(self, term: int, node: int, applied: int, counted: list[int]) -> None:
        voters, learners = self.conf_at(applied)
        if set(counted) != voters:
            extra = sorted(set(counted) - voters)
            raise SafetyViolation(
                f"quorum set: leader {node} of term {term} counts voters {sorted(counted)}; the log as of its "
                f"applied index {applied} has voters {sorted(voters)}, learners {sorted(learners)}"
                + (f" ({extra} counted but not voters)" if extra else ""))

    def leader_committed(self, term: int, node: int, applied: int, commit: int,
                         holders: set[int]) -> None:
        """`holders`: nodes whose disks hold the leader's entry at `commit` (or compacted past it)."""
        if commit <= self.checked_commit.get((term, node), 0):
            return
        self.checked_commit[(term, node)] = commit
        voters, _ = self.conf_at(applied)
        have = holders & voters
        self.quorums_checked += 1
        if len(have) < len(voters) // 2 + 1:
            raise SafetyViolation(
                f"commit quorum: leader {node} of term {term} committed {commit} held by {sorted(holders)}; "
                f"the voters (as of its applied index {applied}) are {sorted(voters)}: only {sorted(have)} count")
