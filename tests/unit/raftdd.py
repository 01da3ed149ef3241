"""Data-driven Raft transcripts (after etcd-io/raft's testdata/*.txt and rafttest/).

A transcript (tests/unit/raft_testdata/*.txt) is a list of directives:

    # comments and blank lines are kept as they are
    command arg arg key=value key=(1,2,3)
    optional input lines
    ----
    the expected output, up to the next blank line

A file that needs blank lines in an output writes it between "----\\n----" and
"----\\n----" (the cockroachdb/datadriven convention). Every directive runs against one
`Env`, in order; the collector in raft_testdata/conftest.py turns each file into one test,
compares every output exactly and, with `pytest --rewrite`, writes the actual outputs back.

The harness drives the pure core directly (RawNode + MemoryStorage, no shell). Its Ready
loop is the shells' own (actors/consensus/ready.py): persist the snapshot, then the hard
state and entries (the Ready is printed then), queue the messages, apply committed entries
(a committed CONF_CHANGE is applied to the core, as the shell does), advance; a leader's
messages are queued before it persists (so a `dropped:` line for one comes before its
Ready). Messages wait in one FIFO queue until a `deliver-msgs` or
`stabilize` hands them over, through `to_wire`/`from_wire` so the codec is exercised.

Commands (node ids are Raft ids):
    add-nodes N [voters=(..)] [learners=(..)] [index=I] [prevote=B] [checkquorum=B]
                [election=T] [heartbeat=T]
        N new nodes with the next free ids. With index=I each starts from a snapshot at
        (I, term 1) holding the membership (as etcd's harness does); else from an empty
        log. voters defaults to the new ids. Election timeouts are NOT randomized
        (the core's rng always draws 0), so tick-election fires exactly one timeout.
    campaign ID                      the node starts an election (pre-vote if enabled)
    propose ID DATA                  propose a normal entry
    propose-conf-change ID           input: one op, v4 (add voter / promote), l4 (add
                                     learner), r4 (remove), u4 (update)
    transfer-leadership from=A to=B  ask leader A to hand over to B
    tick-heartbeat ID / tick-election ID   tick heartbeat_tick / election_tick times
    process-ready ID...              handle one Ready of each node, printed
    deliver-msgs ID... [drop=ID...] [type=MsgApp]   deliver (or drop) queued messages
    stabilize [ID...]                process Readies and deliver until nothing moves
    isolate ID / heal                drop every message from or to ID on delivery / stop
                                     (heal drops what is still queued across the cut)
    raft-state                       each node: role, voter or not, term, leader
    status ID                        the leader's progress of every member
    raft-log ID                      the node's log
    log-level debug|info|none        how much of the harness's event log to print

The core has no logger (it does no I/O), so the events ("INFO 1 became leader at
term 1") are the harness's: it compares a node's role, term, vote and leader before and
after each input and prints what changed. info: role and term changes, votes cast,
membership switches; debug: also leaders learned.
"""

from __future__ import annotations

import difflib
import random
import re
from dataclasses import dataclass, field
from typing import Callable

from actors.consensus.raft import (Config, ConfChange, ConfChangeType, Entry, EntryType,
                                   HardState, MemoryStorage, Message, MessageType, ProposalDropped, RawNode,
                                   Ready, SnapshotMeta, StateType)
from actors.consensus.ready import Hooks, handle

# --- describers (etcd util.go: DescribeMessage, DescribeReady, ...) -----------------------

MSG_NAMES: dict[MessageType, str] = {
    MessageType.HUP: "MsgHup", MessageType.BEAT: "MsgBeat", MessageType.PROP: "MsgProp",
    MessageType.APP: "MsgApp", MessageType.APP_RESP: "MsgAppResp",
    MessageType.VOTE: "MsgVote", MessageType.VOTE_RESP: "MsgVoteResp",
    MessageType.PRE_VOTE: "MsgPreVote", MessageType.PRE_VOTE_RESP: "MsgPreVoteResp",
    MessageType.HEARTBEAT: "MsgHeartbeat", MessageType.HEARTBEAT_RESP: "MsgHeartbeatResp",
    MessageType.READ_INDEX: "MsgReadIndex", MessageType.READ_INDEX_RESP: "MsgReadIndexResp",
    MessageType.TIMEOUT_NOW: "MsgTimeoutNow", MessageType.TRANSFER_LEADER: "MsgTransferLeader",
    MessageType.SNAP: "MsgSnap",
}
MSG_TYPES: dict[str, MessageType] = {v: k for k, v in MSG_NAMES.items()}
STATE_NAMES: dict[StateType, str] = {
    StateType.FOLLOWER: "StateFollower", StateType.CANDIDATE: "StateCandidate",
    StateType.LEADER: "StateLeader", StateType.PRE_CANDIDATE: "StatePreCandidate",
}
ROLE_WORDS: dict[StateType, str] = {
    StateType.FOLLOWER: "follower", StateType.CANDIDATE: "candidate",
    StateType.LEADER: "leader", StateType.PRE_CANDIDATE: "pre-candidate",
}
CC_LETTERS: dict[ConfChangeType, str] = {
    ConfChangeType.ADD_NODE: "v", ConfChangeType.ADD_LEARNER_NODE: "l",
    ConfChangeType.REMOVE_NODE: "r", ConfChangeType.UPDATE_NODE: "u",
}
CC_TYPES: dict[str, ConfChangeType] = {v: k for k, v in CC_LETTERS.items()}


def quote(data: bytes) -> str:
    """Go's %q for bytes, near enough: printable ASCII as is, the rest escaped."""
    out = []
    for b in data:
        c = chr(b)
        if c in '"\\':
            out.append("\\" + c)
        elif 32 <= b < 127:
            out.append(c)
        else:
            out.append(f"\\x{b:02x}")
    return '"' + "".join(out) + '"'


def describe_entry(e: Entry) -> str:
    """`term/index EntryNormal "data"` or `term/index EntryConfChange l4`."""
    if e.type == EntryType.CONF_CHANGE:
        try:
            cc = ConfChange.from_bytes(e.data)
            body = f"{CC_LETTERS[cc.type]}{cc.node_id}"
        except ValueError:
            body = "<undecodable> " + quote(e.data)
        return f"{e.term}/{e.index} EntryConfChange {body}"
    return f"{e.term}/{e.index} EntryNormal {quote(e.data)}"


def describe_entries(es: list[Entry]) -> list[str]:
    return [describe_entry(e) for e in es]


def ids(xs: list[int]) -> str:
    return "(" + " ".join(str(x) for x in sorted(xs)) + ")"


def describe_snapshot(s: SnapshotMeta) -> str:
    return f"Index:{s.index} Term:{s.term} ConfState:Voters:{ids(s.voters)} Learners:{ids(s.learners)}"


def describe_message(m: Message) -> str:
    """One line, as etcd's DescribeMessage: `1->2 MsgApp Term:1 Log:1/2 Commit:2 Entries:[..]`."""
    s = f"{m.frm}->{m.to} {MSG_NAMES[m.type]} Term:{m.term} Log:{m.log_term}/{m.index}"
    if m.reject:
        s += f" Rejected (Hint: {m.reject_hint})"
    if m.commit:
        s += f" Commit:{m.commit}"
    if m.entries:
        s += " Entries:[" + ", ".join(describe_entries(m.entries)) + "]"
    if m.context:
        s += f" Context:{quote(m.context)}"
    if m.snapshot is not None:
        s += " Snapshot: " + describe_snapshot(m.snapshot)
    return s


def describe_ready(rd: Ready) -> list[str]:
    """The lines of etcd's DescribeReady; `<empty Ready>` when there is nothing."""
    lines: list[str] = []
    if rd.soft_state is not None:
        lines.append(f"Lead:{rd.soft_state.lead} State:{STATE_NAMES[rd.soft_state.raft_state]}")
    if rd.hard_state is not None:
        hs = rd.hard_state
        lines.append(f"HardState Term:{hs.term} Vote:{hs.vote} Commit:{hs.commit}")
    if rd.entries:
        lines += ["Entries:"] + describe_entries(rd.entries)
    if rd.snapshot is not None:
        lines.append("Snapshot " + describe_snapshot(rd.snapshot))
    if rd.committed_entries:
        lines += ["CommittedEntries:"] + describe_entries(rd.committed_entries)
    if rd.messages:
        lines += ["Messages:"] + [describe_message(m) for m in rd.messages]
    if rd.read_states:
        lines += ["ReadStates:"] + [f"Index:{r.index} RequestCtx:{quote(r.request_ctx)}"
                                    for r in rd.read_states]
    if not lines:
        return ["<empty Ready>"]
    return [f"Ready MustSync={'true' if rd.must_sync else 'false'}:"] + lines


# --- the harness ------------------------------------------------------------------------

class NoJitter(random.Random):
    """The election timeout is exactly election_tick: transcripts do not depend on a seed."""

    def randrange(self, *args: object, **kwargs: object) -> int:
        return 0


LEVELS = {"debug": 0, "info": 1, "none": 9}


class HarnessError(Exception):
    """A directive the harness cannot run (bad arguments, unknown node): printed as output."""


@dataclass
class Node:
    raw: RawNode
    storage: MemoryStorage
    election_tick: int
    heartbeat_tick: int
    applied: list[Entry] = field(default_factory=list)


@dataclass(frozen=True)
class Seen:
    """What the event log watches on a node."""

    state: StateType
    term: int
    vote: int
    lead: int


class Env:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.queue: list[Message] = []  # sent, not delivered yet; FIFO
        self.isolated: set[int] = set()
        self.level = LEVELS["info"]
        self.out: list[str] = []
        self.indent = ""

    # --- output ---
    def emit(self, line: str) -> None:
        self.out.append(self.indent + line)

    def log(self, level: str, line: str) -> None:
        if LEVELS[level] >= self.level:
            self.emit(f"{level.upper()} {line}")

    def node(self, id_: int) -> Node:
        if id_ not in self.nodes:
            raise HarnessError(f"no node {id_}")
        return self.nodes[id_]

    def seen(self, id_: int) -> Seen:
        r = self.nodes[id_].raw.raft
        return Seen(r.state, r.term, r.vote, r.lead)

    def observe(self, id_: int, fn: Callable[[], None]) -> None:
        """Run fn (an input to node id_) and log what it changed."""
        before = self.seen(id_)
        try:
            fn()
        finally:
            after = self.seen(id_)
            if after.state != before.state or after.term != before.term:
                self.log("info", f"{id_} became {ROLE_WORDS[after.state]} at term {after.term}")
            if after.vote != 0 and (after.vote, after.term) != (before.vote, before.term):
                self.log("info", f"{id_} voted for {after.vote} at term {after.term}")
            if (after.lead != before.lead and after.lead not in (0, id_)
                    and after.state == StateType.FOLLOWER):
                self.log("debug", f"{id_} learned leader {after.lead} at term {after.term}")

    # --- nodes ---
    def add_nodes(self, n: int, voters: list[int] | None, learners: list[int], index: int,
                  pre_vote: bool, check_quorum: bool, election: int, heartbeat: int) -> None:
        first = max(self.nodes, default=0) + 1
        new = list(range(first, first + n))
        voters = voters if voters is not None else new
        for id_ in new:
            storage = MemoryStorage()
            if index:
                # The shell persists the commit index with the snapshot it starts from.
                storage = MemoryStorage(hard_state=HardState(0, 0, index),
                                        snapshot=SnapshotMeta(index, 1, list(voters), list(learners)))
            cfg = Config(id=id_, voters=list(voters), learners=list(learners),
                         election_tick=election, heartbeat_tick=heartbeat, pre_vote=pre_vote,
                         check_quorum=check_quorum, applied=index, rng=NoJitter())
            try:
                raw = RawNode(cfg, storage)
            except ValueError as e:
                raise HarnessError(str(e)) from None
            self.nodes[id_] = Node(raw, storage, election, heartbeat)
            r = raw.raft
            self.log("info", f"{id_} started: voters={ids(r.prs.voters)} learners={ids(r.prs.learners)}"
                     f" term={r.term} commit={r.log.committed} applied={r.log.applied}"
                     f" lastindex={r.log.last_index()} lastterm={r.log.last_term()}")

    def process_ready(self, id_: int) -> None:
        """One Ready through the shells' own loop (actors/consensus/ready.py): describe it
        while persisting, queue the messages, apply, advance."""
        n = self.node(id_)

        def persist(rd: Ready) -> bool:
            for line in describe_ready(rd):
                self.emit(line)
            return True

        def send(messages: list[Message]) -> None:
            for m in messages:
                if m.to in self.nodes:
                    self.queue.append(m)
                else:  # no such process (not started yet, or gone): nobody receives it
                    self.emit(f"dropped: {describe_message(m)} (no node {m.to})")

        def apply(rd: Ready) -> None:
            for e in rd.committed_entries:
                n.applied.append(e)
                if e.type == EntryType.CONF_CHANGE:
                    cc = ConfChange.from_bytes(e.data)

                    def switch(cc: ConfChange = cc) -> None:
                        cs = n.raw.apply_conf_change(cc)
                        self.log("info", f"{id_} switched to configuration voters={ids(cs.voters)}"
                                 f" learners={ids(cs.learners)}")
                    self.observe(id_, switch)

        handle(n.raw, n.storage, Hooks(persist, send, apply), n.raw.ready())

    def cut(self, m: Message) -> bool:
        return m.frm in self.isolated or m.to in self.isolated

    def deliver(self, to: int, drop: bool = False, typ: MessageType | None = None) -> int:
        """Hand the queued messages for `to` (of type typ, if given) over, or drop them."""
        mine = [m for m in self.queue if m.to == to and (typ is None or m.type == typ)]
        self.queue = [m for m in self.queue if not any(m is x for x in mine)]
        for m in mine:
            if drop or self.cut(m) or to not in self.nodes:
                self.emit("dropped: " + describe_message(m))
                continue
            self.emit(describe_message(m))
            wire = Message.from_wire(m.to_wire())
            try:
                self.observe(to, lambda: self.nodes[to].raw.step(wire))
            except ValueError as e:
                self.emit(f"step refused: {e}")
        return len(mine)

    def stabilize(self, only: list[int]) -> None:
        ids_ = only or sorted(self.nodes)
        for _ in range(10_000):
            done = True
            for i in ids_:
                if self.nodes[i].raw.has_ready():
                    self.emit(f"> {i} handling Ready")
                    self.nested(lambda: self.process_ready(i))
                    done = False
            for i in ids_:
                if any(m.to == i for m in self.queue):
                    self.emit(f"> {i} receiving messages")
                    self.nested(lambda: self.deliver(i))
                    done = False
            if done:
                return
        raise HarnessError("stabilize: no fixed point after 10000 rounds")

    def nested(self, fn: Callable[[], object]) -> None:
        old = self.indent
        self.indent += "  "
        try:
            fn()
        finally:
            self.indent = old

    def tick(self, id_: int, times: int) -> None:
        n = self.node(id_)
        for _ in range(times):
            self.observe(id_, n.raw.tick)

    # --- the directive switch (etcd InteractionEnv.Handle) ---
    def handle(self, d: Directive) -> str:
        self.out = []
        try:
            self.dispatch(d)
        except HarnessError as e:
            self.emit(f"error: {e}")
        except ProposalDropped as e:
            self.emit(f"raft proposal dropped: {e}")
        return "\n".join(self.out) if self.out else "ok"

    def dispatch(self, d: Directive) -> None:
        c = d.cmd
        if c == "add-nodes":
            self.add_nodes(d.int_pos(0), d.int_list("voters"), d.int_list("learners") or [],
                           d.int_opt("index", 0), d.bool_opt("prevote", True),
                           d.bool_opt("checkquorum", True), d.int_opt("election", 10),
                           d.int_opt("heartbeat", 1))
        elif c == "campaign":
            id_ = d.int_pos(0)
            self.observe(id_, self.node(id_).raw.campaign)
        elif c == "propose":
            id_ = d.int_pos(0)
            data = d.pos(1).encode()
            self.observe(id_, lambda: self.node(id_).raw.propose(data))
        elif c == "propose-conf-change":
            id_ = d.int_pos(0)
            ops = " ".join(d.input).split()
            if len(ops) != 1 or not re.fullmatch(r"[vlru][0-9]+", ops[0]):
                raise HarnessError("propose-conf-change: input must be one of v<id> l<id> r<id> u<id>")
            cc = ConfChange(CC_TYPES[ops[0][0]], int(ops[0][1:]))
            self.observe(id_, lambda: self.node(id_).raw.propose_conf_change(cc))
        elif c == "transfer-leadership":
            frm, to = d.int_opt("from", 0), d.int_opt("to", 0)
            self.observe(frm, lambda: self.node(frm).raw.transfer_leader(to))
        elif c == "tick-heartbeat":
            id_ = d.int_pos(0)
            self.tick(id_, self.node(id_).heartbeat_tick)
        elif c == "tick-election":
            id_ = d.int_pos(0)
            self.tick(id_, self.node(id_).election_tick)
        elif c == "process-ready":
            targets = d.int_positionals()
            for id_ in targets:
                if len(targets) > 1:
                    self.emit(f"> {id_} handling Ready")
                    self.nested(lambda: self.process_ready(id_))
                else:
                    self.process_ready(id_)
        elif c == "deliver-msgs":
            typ = None
            if "type" in d.kv:
                if d.kv["type"] not in MSG_TYPES:
                    raise HarnessError(f"unknown message type {d.kv['type']}")
                typ = MSG_TYPES[d.kv["type"]]
            n = sum(self.deliver(i, typ=typ) for i in d.int_positionals())
            n += sum(self.deliver(i, drop=True, typ=typ) for i in d.int_list("drop") or [])
            if n == 0:
                self.emit("no messages")
        elif c == "stabilize":
            self.stabilize(d.int_positionals())
        elif c == "isolate":
            id_ = d.int_pos(0)
            self.node(id_)
            self.isolated.add(id_)
        elif c == "heal":
            # What was sent across the partition while it lasted is lost, not late.
            lost = [m for m in self.queue if self.cut(m)]
            self.queue = [m for m in self.queue if not self.cut(m)]
            for m in lost:
                self.emit("dropped: " + describe_message(m))
            self.isolated.clear()
        elif c == "raft-state":
            for i in sorted(self.nodes):
                st = self.nodes[i].raw.status()
                voter = "(Voter)" if i in st.conf_state.voters else "(Non-Voter)"
                self.emit(f"{i}: {STATE_NAMES[st.raft_state]} {voter} Term:{st.term} Lead:{st.lead}")
        elif c == "status":
            st = self.node(d.int_pos(0)).raw.status()
            if not st.progress:
                self.emit("no progress: not the leader")
            for i, (match, nxt, state) in sorted(st.progress.items()):
                kind = " learner" if i in st.conf_state.learners else ""
                active = "" if i in st.recent_active else " inactive"
                self.emit(f"{i}: State{state.capitalize()} match={match} next={nxt}{kind}{active}")
        elif c == "raft-log":
            es = self.node(d.int_pos(0)).raw.raft.log.all_entries()
            for line in describe_entries(es) or ["log is empty"]:
                self.emit(line)
        elif c == "log-level":
            name = d.pos(0)
            if name not in LEVELS:
                raise HarnessError(f"log levels: {', '.join(LEVELS)}")
            self.level = LEVELS[name]
        else:
            raise HarnessError(f"unknown command {c}")


# --- the file format --------------------------------------------------------------------

_ARG = re.compile(r"([^\s=]+)=\(([^)]*)\)|([^\s=]+)=(\S+)|(\S+)")


@dataclass
class Directive:
    line: int  # 1-based line of the command in its file
    cmd_line: str
    input: list[str]
    expected: str
    cmd: str = ""
    positional: list[str] = field(default_factory=list)
    kv: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = self.cmd_line.split(None, 1)
        self.cmd = parts[0]
        for m in _ARG.finditer(parts[1] if len(parts) > 1 else ""):
            if m.group(1) is not None:
                self.lists[m.group(1)] = [x for x in re.split(r"[,\s]+", m.group(2)) if x]
            elif m.group(3) is not None:
                self.kv[m.group(3)] = m.group(4)
            else:
                self.positional.append(m.group(5))

    def pos(self, i: int) -> str:
        if i >= len(self.positional):
            raise HarnessError(f"{self.cmd}: missing argument {i + 1}")
        return self.positional[i]

    def int_pos(self, i: int) -> int:
        return _int(self.cmd, self.pos(i))

    def int_positionals(self) -> list[int]:
        return [_int(self.cmd, p) for p in self.positional]

    def int_opt(self, key: str, default: int) -> int:
        return _int(self.cmd, self.kv[key]) if key in self.kv else default

    def bool_opt(self, key: str, default: bool) -> bool:
        if key not in self.kv:
            return default
        if self.kv[key] not in ("true", "false"):
            raise HarnessError(f"{self.cmd}: {key} must be true or false")
        return self.kv[key] == "true"

    def int_list(self, key: str) -> list[int] | None:
        if key in self.lists:
            return [_int(self.cmd, x) for x in self.lists[key]]
        if key in self.kv:
            return [_int(self.cmd, self.kv[key])]
        return None


def _int(cmd: str, s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise HarnessError(f"{cmd}: {s!r} is not a number") from None


class ParseError(Exception):
    pass


# A file is a list of chunks: verbatim text (comments, blank lines) or directives.
Chunk = str | Directive


def parse(text: str) -> list[Chunk]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    chunks: list[Chunk] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            chunks.append(line)
            i += 1
            continue
        start = i
        i += 1
        inp: list[str] = []
        while i < len(lines) and lines[i] != "----":
            if not lines[i].strip():
                raise ParseError(f"line {start + 1}: `{line}` has no ---- separator")
            inp.append(lines[i])
            i += 1
        if i == len(lines):
            raise ParseError(f"line {start + 1}: `{line}` has no ---- separator")
        i += 1
        out: list[str] = []
        if i < len(lines) and lines[i] == "----":  # "----\n----": output may hold blank lines
            i += 1
            while i < len(lines) and not (lines[i] == "----" and i + 1 < len(lines)
                                          and lines[i + 1] == "----"):
                out.append(lines[i])
                i += 1
            if i == len(lines):
                raise ParseError(f"line {start + 1}: unterminated ----/---- output")
            i += 2
        else:
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
        chunks.append(Directive(start + 1, line, inp, "\n".join(out)))
    return chunks


def render(chunks: list[Chunk], outputs: dict[int, str] | None = None) -> str:
    """The file text again; `outputs` (directive line -> output) replaces expected outputs."""
    lines: list[str] = []
    for c in chunks:
        if isinstance(c, str):
            lines.append(c)
            continue
        out = outputs.get(c.line, c.expected) if outputs is not None else c.expected
        lines += [c.cmd_line] + c.input + ["----"]
        if not out:
            pass
        elif any(not x.strip() for x in out.split("\n")):
            lines += ["----", out, "----", "----"]
        else:
            lines.append(out)
    return "\n".join(lines) + "\n"


class Mismatch(AssertionError):
    """An output differs from the expected one."""


@dataclass
class Result:
    outputs: dict[int, str]  # directive line -> actual output
    failure: str | None  # a readable report of the first mismatch


def run(text: str, path: str = "<transcript>", stop_at_mismatch: bool = True) -> Result:
    """Run every directive of a transcript against a fresh Env."""
    env = Env()
    outputs: dict[int, str] = {}
    failure = None
    for c in parse(text):
        if isinstance(c, str):
            continue
        actual = env.handle(c)
        outputs[c.line] = actual
        if actual != c.expected and failure is None:
            diff = difflib.unified_diff(c.expected.split("\n"), actual.split("\n"),
                                        "expected", "actual", lineterm="")
            failure = (f"{path}:{c.line}: the output of `{c.cmd_line}` differs\n"
                       + "\n".join(diff)
                       + "\n(if the new output is right: pytest --rewrite rewrites the file)")
            if stop_at_mismatch:
                break
    return Result(outputs, failure)


def rewrite(text: str) -> str:
    """The transcript with every expected output replaced by the actual one."""
    res = run(text, stop_at_mismatch=False)
    return render(parse(text), res.outputs)
