"""A linearizability checker for quorumkv KV histories (Wing & Gong search with
memoization, as in porcupine), partitioned by key, with a model of etcd's revisions.

Nothing here performs I/O. A history is a list of `Op`s recorded by clients: what was
asked, when it was invoked and when it completed (on one monotonic clock), and what came
back. An op whose outcome is unknown (timeout, unknown_outcome, no reply) has
`completed = None`: it may have taken effect at any moment after its invocation, or
never, and nothing it returned is trusted.

Per key, the model state is `(value, mod_revision, version)` or `None` (absent). What
each op requires and does:
- put(value) -> revision r: the key's state becomes (value, r, version+1); r is greater
  than the key's current mod_revision.
- get -> kv or absent: must equal the state; a state written by an op of unknown outcome
  has an unknown revision, which the first read that sees it pins down.
- delete -> deleted count: 1 if the key existed (it becomes absent), else 0.
- cas(expected_mod_revision, value) -> succeeded, revision: a txn that puts `value` if
  the key's mod_revision equals the expected one (0 = absent).
- A put may attach a lease; revoke(lease) deletes the key if (and only if) the key's
  latest put attached that lease. The state carries the lease for this.
- A multi-key txn is recorded as one op per key sharing a `group`: its puts and deletes
  share one revision (atomicity of ops of unknown outcome is left to the watch checks).
Across keys, revisions are global: `check_revisions` verifies that every acknowledged
write has a distinct revision and that real-time order never contradicts revision order
(a write completed before another was invoked has the smaller revision; a linearizable
read's header revision is at least that of every write completed before it began).
"""
from __future__ import annotations

from dataclasses import dataclass, field
INF = float("inf")


@dataclass
class Op:
    client: int
    kind: str  # "put", "get", "delete", "cas", "revoke"
    key: bytes
    invoked: float
    completed: float | None  # None: outcome unknown
    value: bytes | None = None  # put/cas: the value written
    expected_mod: int = 0  # cas: the mod_revision compared against (0 = absent)
    # results (ignored when completed is None)
    ok: bool = True  # False: a definite failure (the write did not happen)
    revision: int = 0  # put/cas/delete: the revision of the write (header); get: header revision
    found: tuple[bytes, int, int] | None = None  # get: (value, mod_revision, version) or None
    deleted: int = 0  # delete
    succeeded: bool = False  # cas
    lease: int = 0  # put: the lease attached; revoke: the lease revoked
    group: int = 0  # ops of one multi-key txn (nonzero) may share a revision
    id: int = field(default=0, compare=False)

    @property
    def uncertain(self) -> bool:
        return self.completed is None

    @property
    def is_write(self) -> bool:
        return self.kind in ("put", "delete", "cas", "revoke")


@dataclass
class Violation:
    key: bytes
    message: str
    ops: list[Op]


# State: None (absent) or (value, mod_revision or None if unknown, version or None, lease)
State = tuple[bytes, int | None, int | None, int] | None


def _step(state: State, op: Op) -> list[State]:
    """The states `op` can lead to from `state`; empty when it cannot happen there."""
    if op.kind == "get":
        if op.uncertain:
            return [state]
        if op.found is None:
            return [state] if state is None else []
        if state is None:
            return []
        value, mod, version, lease = state
        f_value, f_mod, f_version = op.found
        if f_value != value or (mod is not None and f_mod != mod) or (version is not None and f_version != version):
            return []
        return [(value, f_mod, f_version, lease)]  # pins down an unknown revision or version
    if op.kind == "revoke":
        if state is None or state[3] != op.lease:
            return [state]  # not attached: the revoke leaves the key alone
        return [None, state] if op.uncertain else [None]
    prev_mod = state[1] if state is not None else 0
    prev_version = state[2] if state is not None else 0
    if op.kind == "put":
        version = prev_version + 1 if prev_version is not None else None
        if op.uncertain:
            return [(op.value, None, version, op.lease)]
        if prev_mod is not None and op.revision <= prev_mod:
            return []
        return [(op.value, op.revision, version, op.lease)]
    if op.kind == "delete":
        if op.uncertain:
            return [None]
        return [None] if op.deleted == (1 if state is not None else 0) else []
    if op.kind == "cas":
        version = prev_version + 1 if prev_version is not None else None
        if prev_mod is None:
            # The key was written by an op of unknown outcome at an unknown revision:
            # the compare may have held (pinning that revision) or not.
            held = op.expected_mod > 0
            if op.uncertain:
                return [state] + ([(op.value, None, version, 0)] if held else [])
            if op.succeeded:
                return [(op.value, op.revision, version, 0)] if held else []
            return [state]
        matches = prev_mod == op.expected_mod
        if op.uncertain:
            return [(op.value, None, version, 0)] if matches else [state]
        if op.succeeded != matches:
            return []
        if not matches:
            return [state]
        return [(op.value, op.revision, version, 0)]
    raise ValueError(f"unknown op kind {op.kind!r}")


def check_key(key: bytes, ops: list[Op], initial: State = None, max_states: int = 2_000_000) -> Violation | None:
    """Wing-Gong search over one key's ops. Uncertain ops may be left out entirely."""
    ops = [op for op in ops if not (op.completed is not None and not op.ok)]  # definite failures: no effect
    n = len(ops)
    for i, op in enumerate(ops):
        op.id = i
    # Events: (time, kind 0=invoke/1=return, op index); returns sort after invokes at equal times
    # would claim more concurrency than there was, so returns first at equal times.
    calls = sorted(range(n), key=lambda i: ops[i].invoked)
    returns = {i: (ops[i].completed if ops[i].completed is not None else INF) for i in range(n)}
    seen: set[tuple[int, State]] = set()
    explored = 0

    # Depth-first search: at each point, any op invoked before the earliest pending return
    # may be linearized next. `done` is a bitmask of linearized ops.
    all_certain = sum(1 << i for i in range(n) if not ops[i].uncertain)
    stack: list[tuple[int, State]] = [(0, initial)]
    while stack:
        done, state = stack.pop()
        if (done & all_certain) == all_certain:
            return None
        if (done, state) in seen:
            continue
        seen.add((done, state))
        explored += 1
        if explored > max_states:
            return Violation(key, f"search gave up after {max_states} states (history too concurrent)", ops)
        # The earliest completion among ops not yet linearized bounds what can go next.
        horizon = min((returns[i] for i in range(n) if not done >> i & 1), default=INF)
        for i in calls:
            if done >> i & 1:
                continue
            if ops[i].invoked > horizon:
                break
            for new_state in _step(state, ops[i]):
                stack.append((done | 1 << i, new_state))
        # An uncertain op may also never take effect: linearizing it as a no-op is
        # covered by letting it pass without effect.
        for i in calls:
            if done >> i & 1 or not ops[i].uncertain:
                continue
            if ops[i].invoked > horizon:
                break
            stack.append((done | 1 << i, state))
    return Violation(key, "no linearization exists", ops)


def check_history(history: list[Op]) -> list[Violation]:
    """Every per-key search, plus the global revision checks."""
    by_key: dict[bytes, list[Op]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    violations = [v for key, ops in sorted(by_key.items()) if (v := check_key(key, ops)) is not None]
    violations += check_revisions(history)
    return violations


def check_revisions(history: list[Op]) -> list[Violation]:
    out: list[Violation] = []
    writes = [op for op in history if op.is_write and not op.uncertain and op.ok and _wrote(op)]
    by_rev: dict[int, Op] = {}
    for op in writes:
        other = by_rev.get(op.revision)
        if other is not None and not (op.group and other.group == op.group):
            out.append(Violation(op.key, f"two acknowledged writes share revision {op.revision}",
                                 [by_rev[op.revision], op]))
        by_rev[op.revision] = op
    # Real-time order: sort by completion; a write invoked after another completed must
    # have a larger revision.
    done_sorted = sorted(writes, key=lambda o: o.completed)
    max_rev_done = 0
    max_op: Op | None = None
    j = 0
    for op in sorted(history, key=lambda o: o.invoked):
        while j < len(done_sorted) and done_sorted[j].completed < op.invoked:
            if done_sorted[j].revision > max_rev_done:
                max_rev_done, max_op = done_sorted[j].revision, done_sorted[j]
            j += 1
        if op.uncertain or not op.ok or max_op is None:
            continue
        if op.is_write and _wrote(op) and op.revision <= max_rev_done:
            out.append(Violation(op.key, f"write at revision {op.revision} began after a write at "
                                         f"revision {max_rev_done} had completed", [max_op, op]))
        if op.kind == "get" and op.revision < max_rev_done:
            out.append(Violation(op.key, f"read saw header revision {op.revision} after a write at "
                                         f"revision {max_rev_done} had completed (stale read)", [max_op, op]))
    return out


def _wrote(op: Op) -> bool:
    return op.kind == "put" or (op.kind == "cas" and op.succeeded) or (op.kind == "delete" and op.deleted > 0)


def describe(v: Violation) -> str:
    lines = [f"key {v.key!r}: {v.message}"]
    for op in sorted(v.ops, key=lambda o: o.invoked)[:30]:
        end = "?" if op.completed is None else f"{op.completed:.6f}"
        lines.append(f"  client {op.client} {op.kind} [{op.invoked:.6f}, {end}] value={op.value!r} "
                     f"rev={op.revision} found={op.found} deleted={op.deleted} succeeded={op.succeeded}")
    return "\n".join(lines)
