"""The data-driven Raft harness itself (tests/unit/raftdd.py): the file format round-trips,
--rewrite produces a file that then passes, a mismatch is reported as a diff with the
file and line, and the transcripts catch a broken core (pre-vote, check-quorum and
leadership transfer each switched off in turn)."""

from __future__ import annotations

from pathlib import Path

import pytest

import raftdd
from actors.consensus.raft import raft as raft_mod

DATA = Path(__file__).resolve().parent / "raft_testdata"
FILES = sorted(DATA.glob("*.txt"))


def test_there_are_transcripts() -> None:
    names = {p.stem for p in FILES}
    assert {"elections", "prevote", "checkquorum", "transfer_leadership",
            "confchange_learner", "confchange_remove"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_format_round_trips_and_rewrite_is_a_fixed_point(path: Path) -> None:
    text = path.read_text()
    assert raftdd.render(raftdd.parse(text)) == text
    assert raftdd.rewrite(text) == text  # the checked-in outputs are the actual ones


def test_rewrite_fills_in_outputs_and_the_result_passes() -> None:
    src = "# a comment\n\nadd-nodes 2 voters=(1,2)\n----\nstale output\n\nraft-state\n----\n"
    new = raftdd.rewrite(src)
    assert new.startswith("# a comment\n\nadd-nodes 2 voters=(1,2)\n----\nINFO 1 started:")
    assert "1: StateFollower (Voter) Term:0 Lead:0\n2: StateFollower (Voter) Term:0 Lead:0\n" in new
    assert raftdd.run(new).failure is None
    assert raftdd.rewrite(new) == new


def test_outputs_with_blank_lines_use_the_double_separator() -> None:
    chunks = raftdd.parse("raft-state\n----\n")
    text = raftdd.render(chunks, {1: "a\n\nb"})
    assert text == "raft-state\n----\n----\na\n\nb\n----\n----\n"
    d = raftdd.parse(text)[0]
    assert isinstance(d, raftdd.Directive) and d.expected == "a\n\nb"


def test_a_mismatch_names_file_line_and_shows_a_diff() -> None:
    src = "add-nodes 1 voters=(1)\n----\nINFO 1 started: nonsense\n"
    res = raftdd.run(src, "x.txt")
    assert res.failure is not None
    assert res.failure.startswith("x.txt:1: the output of `add-nodes 1 voters=(1)` differs")
    assert "-INFO 1 started: nonsense" in res.failure
    assert "+INFO 1 started: voters=(1) learners=() term=0" in res.failure
    assert "--rewrite" in res.failure


def test_bad_input_is_reported_not_raised() -> None:
    env = raftdd.Env()
    for line, out in [("frobnicate 1", "error: unknown command frobnicate"),
                      ("campaign 7", "error: no node 7"),
                      ("log-level loud", "error: log levels: debug, info, none")]:
        assert env.handle(raftdd.Directive(1, line, [], "")) == out
    with pytest.raises(raftdd.ParseError):
        raftdd.parse("campaign 1\nno separator\n\n")


def _fails(name: str) -> str:
    res = raftdd.run((DATA / name).read_text(), name)
    assert res.failure is not None, f"{name} did not notice the broken core"
    return res.failure


def test_transcripts_catch_a_core_without_pre_vote(monkeypatch: pytest.MonkeyPatch) -> None:
    real_init = raft_mod.Raft.__init__

    def no_pre_vote(self: raft_mod.Raft, *a: object, **k: object) -> None:
        real_init(self, *a, **k)  # type: ignore[arg-type]
        self.pre_vote = False

    monkeypatch.setattr(raft_mod.Raft, "__init__", no_pre_vote)
    assert "prevote.txt" in _fails("prevote.txt")
    # Not only the set-up differs: the node back from the partition deposes the leader.
    text = (DATA / "prevote.txt").read_text()
    res = raftdd.run(text, stop_at_mismatch=False)
    last = [c for c in raftdd.parse(text) if isinstance(c, raftdd.Directive)][-1]
    assert last.cmd == "raft-state" and "1: StateLeader" in last.expected
    assert "1: StateFollower (Voter) Term:4 Lead:0" in res.outputs[last.line]


def test_transcripts_catch_a_core_without_check_quorum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft_mod.Raft, "do_check_quorum", lambda self: None)
    assert "tick-election 1" in _fails("checkquorum.txt")


def test_transcripts_catch_a_core_that_ignores_timeout_now(monkeypatch: pytest.MonkeyPatch) -> None:
    real = raft_mod.Raft.step_follower

    def step_follower(self: raft_mod.Raft, m: raft_mod.Message) -> None:
        if m.type != raft_mod.MT.TIMEOUT_NOW:
            real(self, m)

    monkeypatch.setattr(raft_mod.Raft, "step_follower", step_follower)
    _fails("transfer_leadership.txt")
    _fails("confchange_remove.txt")


def test_transcripts_catch_a_learner_counted_as_a_voter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raft_mod.Raft, "promotable", lambda self: True)
    _fails("confchange_learner.txt")


def test_debug_level_adds_leaders_learned() -> None:
    src = ("log-level debug\n----\n\nadd-nodes 2 voters=(1,2) prevote=false\n----\n\n"
           "campaign 1\n----\n\nstabilize\n----\n")
    out = raftdd.rewrite(src)
    assert "DEBUG 2 learned leader 1 at term 1" in out
    assert "DEBUG" not in raftdd.rewrite(src.replace("log-level debug", "log-level info"))
