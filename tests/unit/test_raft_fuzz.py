"""Seeded random runs of the core on a lossy, reordering, partitioning network with crashes:
Raft's safety properties are checked after every step, then liveness after healing.
(A quick version of the deterministic simulation layer; each failure reproduces by seed.)"""

import random

import pytest

from actors.consensus.raft import Message, ProposalDropped, StateType
from raftnet import Network


class Checker:
    def __init__(self, net):
        self.net = net
        self.leader_of_term: dict[int, int] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        # index -> a term at least that of the leader that committed it (first observer's)
        self.commit_seen_term: dict[int, int] = {}
        self.read_floor: dict[bytes, int] = {}  # ctx -> max commit index when requested
        self.reads_served = 0

    def check(self):
        net = self.net
        # Election safety: at most one leader per term, ever.
        for i in net.ids:
            r = net.nodes[i].raft
            if r.state == StateType.LEADER:
                assert self.leader_of_term.setdefault(r.term, i) == i, (r.term, i)
        logs = {i: {e.index: e for e in net.nodes[i].raft.log.all_entries()} for i in net.ids}
        # Log matching: same (index, term) => identical prefixes.
        for a in net.ids:
            for b in net.ids:
                if a >= b:
                    continue
                common = sorted(set(logs[a]) & set(logs[b]), reverse=True)
                for idx in common:
                    if logs[a][idx].term == logs[b][idx].term:
                        for j in common:
                            if j <= idx:
                                ea, eb = logs[a][j], logs[b][j]
                                assert (ea.term, ea.data) == (eb.term, eb.data), (a, b, j)
                        break
        # Committed entries never change; every leader holds all of them (completeness).
        for i in net.ids:
            r = net.nodes[i].raft
            for idx in range(r.log.first_index(), r.log.committed + 1):
                e = logs[i][idx]
                assert self.committed.setdefault(idx, (e.term, e.data)) == (e.term, e.data)
                self.commit_seen_term[idx] = min(self.commit_seen_term.get(idx, r.term), r.term)
            assert r.log.applied <= r.log.committed <= r.log.last_index()
        for i in net.ids:
            r = net.nodes[i].raft
            if r.state == StateType.LEADER and self.leader_of_term.get(r.term) == i:
                for idx, (t, d) in self.committed.items():
                    # Committed in an earlier term => present in this leader's log.
                    if self.commit_seen_term[idx] < r.term and idx >= r.log.first_index():
                        assert idx in logs[i], f"leader {i} misses committed {idx}"
                        assert (logs[i][idx].term, logs[i][idx].data) == (t, d)
        # ReadIndex: a read state never points below what was committed at request time.
        for i in net.ids:
            for rs in net.read_states[i]:
                assert rs.index >= self.read_floor[rs.request_ctx], (rs, i)
                self.reads_served += 1
            net.read_states[i] = []
        # State-machine safety: applied sequences are prefixes of one another.
        seqs = sorted((net.applied[i] for i in net.ids), key=len)
        for s in seqs[:-1]:
            longest = seqs[-1]
            assert [(e.index, e.term, e.data) for e in s] == \
                [(e.index, e.term, e.data) for e in longest[:len(s)]]


def run(seed, n_nodes=3, steps=600, pre_vote=True, check_quorum=True):
    rng = random.Random(seed)
    net = Network(list(range(1, n_nodes + 1)), seed=seed, pre_vote=pre_vote,
                  check_quorum=check_quorum, election_tick=6, max_inflight_msgs=4,
                  max_size_per_msg=64)
    chk = Checker(net)
    delayed: list[Message] = []
    proposals = 0
    for _ in range(steps):
        r = rng.random()
        ids = [i for i in net.ids if i not in net.down]
        if r < 0.45:
            net.tick(rng.choice(ids))
        elif r < 0.65:
            leaders = net.leaders()
            if leaders:
                try:
                    net.nodes[rng.choice(leaders)].propose(b"p%d" % proposals)
                    proposals += 1
                except ProposalDropped:
                    pass
        elif r < 0.68:
            net.heal()
            if rng.random() < 0.7:
                net.isolate(rng.choice(net.ids))
        elif r < 0.70:
            i = rng.choice(net.ids)
            net.process(i)
            net.restart(i)
        elif r < 0.73:
            ctx = b"r%d" % rng.randrange(10**9)
            try:
                net.nodes[rng.choice(ids)].read_index(ctx)
                # Linearizable read: the read index covers everything committed so far.
                chk.read_floor[ctx] = max(net.nodes[i].raft.log.committed for i in net.ids)
            except ProposalDropped:
                pass
        elif r < 0.74:
            leaders = net.leaders()
            if leaders:
                net.nodes[leaders[0]].transfer_leader(rng.choice(net.ids))
        net.process_all()
        msgs = delayed + net.queue
        net.queue = []
        delayed = []
        rng.shuffle(msgs)
        for m in msgs:
            x = rng.random()
            if (m.frm, m.to) in net.dropped or x < 0.1:
                continue
            if x < 0.3:
                delayed.append(m)
                continue
            net.nodes[m.to].step(Message.from_wire(m.to_wire()))
            if x > 0.97:  # duplicate
                net.nodes[m.to].step(Message.from_wire(m.to_wire()))
            net.process(m.to)
        chk.check()
    # Liveness: heal everything; a leader emerges and a new proposal commits everywhere
    # (without pre-vote a node with a stale log and a higher term may force one more
    # election first, so keep proposing to whoever leads until everyone has applied it).
    net.heal()
    net.queue.extend(delayed)
    proposed_to = None
    for _ in range(500):
        net.tick_all()
        chk.check()
        if all(b"final" in net.data_applied(i) for i in net.ids):
            break
        leaders = net.leaders()
        if len(leaders) == 1 and leaders[0] != proposed_to:
            try:
                net.propose(leaders[0], b"final")
                proposed_to = leaders[0]
            except ProposalDropped:
                pass
    else:
        raise AssertionError("no progress after healing")
    run.reads_served = chk.reads_served
    return proposals


@pytest.mark.parametrize("seed", range(12))
def test_fuzz_three_nodes(seed):
    run(seed)


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_five_nodes(seed):
    run(100 + seed, n_nodes=5, steps=500)


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_without_pre_vote_and_check_quorum(seed):
    run(200 + seed, pre_vote=False, check_quorum=False)
