"""The gateway's per-connection bound (actors/gateway/conns.py), without sockets."""
from __future__ import annotations

from actors.gateway.conns import (
    ADMIT, DROPPED, FIRST_WINDOW, GONE, MESSAGE_OVERHEAD, PARKED, REFUSE, RETRY_MAX_S, SENT, WAIT,
    Conns, PeerGone, PipeFull,
)

KiB = 1024
MiB = 1024 * KiB
BOUND = 4 * MiB


class Tracker:
    def __init__(self) -> None:
        self.done = False


class Pipe:
    """A fake ROUTER: per identity, a pipe of `capacity` messages; big payloads are held
    (a Tracker) until `drain` lets go of them; identities not `connected` are gone."""

    def __init__(self, capacity: int = 1000, copy_threshold: int = 8 * KiB) -> None:
        self.capacity = capacity
        self.copy_threshold = copy_threshold
        self.queued: dict[bytes, list[tuple[list[bytes], Tracker | None]]] = {}
        self.connected: set[bytes] = set()
        self.sent: list[list[bytes]] = []

    def send(self, frames: list[bytes]):
        identity = frames[0]
        if identity not in self.connected:
            raise PeerGone()
        q = self.queued.setdefault(identity, [])
        if len(q) >= self.capacity:
            raise PipeFull()
        tracker = Tracker() if len(frames[-1]) >= self.copy_threshold else None
        q.append((frames, tracker))
        self.sent.append(frames)
        return tracker

    def drain(self, identity: bytes) -> None:
        for _, tracker in self.queued.pop(identity, []):
            if tracker is not None:
                tracker.done = True


def make(pipe: Pipe, **kw) -> tuple[Conns, list]:
    slow: list = []
    args = dict(queue_bytes=BOUND, max_requests=64, max_waiting=1024, wait_timeout=5.0,
                on_slow=lambda conn, reason: slow.append((conn.identity, reason)))
    args.update(kw)
    return Conns(pipe.send, **args), slow


def reply_frames(identity: bytes, size: int) -> list[bytes]:
    return [identity, b"r" * size]


def test_first_window_then_window_follows_reply_size():
    pipe = Pipe()
    pipe.connected.add(b"a")
    conns, _ = make(pipe)
    got = [conns.request(b"a", i, 100, 0.0) for i in range(FIRST_WINDOW + 3)]
    assert got == [ADMIT] * FIRST_WINDOW + [WAIT] * 3
    # small replies: the window opens to max_requests and the waiting ones start
    assert conns.reply(b"a", reply_frames(b"a", 100), 0.0) == SENT
    assert list(conns.ready) == [2, 3, 4]
    conn = conns.conns[b"a"]
    assert conns.window(conn) == 64
    assert conn.in_progress == FIRST_WINDOW - 1 + 3


def test_big_replies_shrink_the_window_to_what_half_the_bound_holds():
    pipe = Pipe()
    pipe.connected.add(b"a")
    conns, _ = make(pipe)
    for i in range(2):
        assert conns.request(b"a", i, 100, 0.0) == ADMIT
    assert conns.reply(b"a", reply_frames(b"a", MiB), 0.0) == SENT
    conn = conns.conns[b"a"]
    assert conns.window(conn) == 1  # 2 MiB // (1 MiB + overhead)
    assert conn.held == MiB + MESSAGE_OVERHEAD  # libzmq has not let go of it
    # one in progress = the window: the next one waits
    assert conns.request(b"a", 2, 100, 0.0) == WAIT


def test_held_bytes_stop_new_requests_until_libzmq_lets_go():
    pipe = Pipe()
    pipe.connected.add(b"a")
    conns, _ = make(pipe, first_window=64)
    for i in range(3):
        assert conns.request(b"a", i, 100, 0.0) == ADMIT
    for _ in range(3):
        conns.reply(b"a", reply_frames(b"a", MiB), 0.0)
    conn = conns.conns[b"a"]
    assert conn.held >= BOUND // 2 and conn.in_progress == 0
    assert conns.request(b"a", "w", 100, 0.0) == WAIT  # over half the bound: it waits
    assert not conns.ready
    pipe.drain(b"a")  # the client read: libzmq let go of the bytes
    conns.service(1.0)
    assert list(conns.ready) == ["w"]
    assert conns.conns[b"a"].held == 0


def test_a_reply_over_the_bound_is_dropped_and_reported_once_per_episode():
    pipe = Pipe()
    pipe.connected.add(b"a")
    conns, slow = make(pipe, first_window=64)
    for i in range(8):
        conns.request(b"a", i, 100, 0.0)
    results = [conns.reply(b"a", reply_frames(b"a", MiB), 0.0) for _ in range(8)]
    assert results[:3] == [SENT] * 3  # 3 MiB + overhead held; a fourth would pass 4 MiB
    assert results[3:] == [DROPPED] * 5
    assert conns.dropped == 5
    assert slow == [(b"a", "replies_dropped")]
    assert conns.conns[b"a"].held <= BOUND
    # the client reads: the episode ends; a new one is reported again
    pipe.drain(b"a")
    conns.service(1.0)
    assert b"a" not in conns.conns  # nothing left: forgotten
    for i in range(8):
        conns.request(b"a", i, 100, 2.0)
    conns.conns[b"a"].estimate = 0  # keep the window wide for the test
    for _ in range(8):
        conns.reply(b"a", reply_frames(b"a", MiB), 2.0)
    assert slow == [(b"a", "replies_dropped")] * 2


def test_one_reply_larger_than_the_bound_goes_when_nothing_is_held():
    pipe = Pipe()
    pipe.connected.add(b"a")
    conns, slow = make(pipe)
    conns.request(b"a", 0, 100, 0.0)
    assert conns.reply(b"a", reply_frames(b"a", 10 * MiB), 0.0) == SENT
    assert slow == []


def test_a_full_pipe_parks_replies_in_order_and_retries_with_backoff():
    pipe = Pipe(capacity=2)
    pipe.connected.add(b"a")
    conns, _ = make(pipe, first_window=64)
    for i in range(5):
        conns.request(b"a", i, 100, 0.0)
    results = [conns.reply(b"a", [b"a", b"%d" % i], 0.0) for i in range(5)]
    assert results == [SENT, SENT, PARKED, PARKED, PARKED]
    conn = conns.conns[b"a"]
    assert conn.held == 3 * (1 + MESSAGE_OVERHEAD)
    due = conns.next_due()
    assert due is not None and due > 0.0
    conns.service(due)  # still full: no progress, the next try backs off
    assert len(conn.outbox) == 3
    assert conns.next_due() - due > due - 0.0
    pipe.drain(b"a")
    conns.service(conns.next_due())
    assert [f[1] for f in pipe.sent] == [b"0", b"1", b"2", b"3"]  # order kept; 2 fit again
    pipe.drain(b"a")
    conns.service(conns.next_due())
    assert [f[1] for f in pipe.sent][-1] == b"4"
    assert b"a" not in conns.conns


def test_backoff_is_capped():
    pipe = Pipe(capacity=0)
    pipe.connected.add(b"a")
    conns, _ = make(pipe)
    conns.request(b"a", 0, 100, 0.0)
    conns.reply(b"a", [b"a", b"x"], 0.0)
    now = 0.0
    for _ in range(30):
        now = conns.next_due()
        conns.service(now)
    assert conns.conns[b"a"].delay == RETRY_MAX_S


def test_waiting_is_bounded_in_count_and_bytes():
    pipe = Pipe()
    pipe.connected.add(b"a")
    conns, _ = make(pipe, max_waiting=10, first_window=1)
    assert conns.request(b"a", 0, 100, 0.0) == ADMIT
    assert [conns.request(b"a", i, 100, 0.0) for i in range(11)] == [WAIT] * 10 + [REFUSE]
    assert conns.refused == 1
    conns2, _ = make(pipe, first_window=1)
    pipe.connected.add(b"b")
    assert conns2.request(b"b", 0, 100, 0.0) == ADMIT
    big = MiB + 512 * KiB
    assert [conns2.request(b"b", i, big, 0.0) for i in range(3)] == [WAIT, WAIT, REFUSE]


def test_waiting_requests_expire_and_are_reported():
    pipe = Pipe()
    pipe.connected.add(b"a")
    conns, slow = make(pipe, first_window=1)
    conns.request(b"a", 0, 100, 0.0)
    conns.request(b"a", "late", 100, 1.0)
    assert conns.next_due() == 6.0
    conns.service(5.9)
    assert not conns.expired
    conns.service(6.0)
    assert list(conns.expired) == ["late"]
    assert slow == [(b"a", "requests_expired")]
    assert conns.conns[b"a"].waiting_bytes == 0


def test_a_gone_identity_loses_parked_and_waiting_and_is_forgotten():
    pipe = Pipe(capacity=1)
    pipe.connected.add(b"a")
    conns, _ = make(pipe, max_requests=1)
    assert conns.request(b"a", 0, 100, 0.0) == ADMIT
    assert conns.request(b"a", 1, 100, 0.0) == WAIT
    conns.reply(b"a", [b"a", b"x"], 0.0)  # sent, the pipe is full; "1" starts
    assert list(conns.ready) == [1]
    conns.ready.clear()
    assert conns.request(b"a", 2, 100, 0.0) == WAIT
    assert conns.reply(b"a", [b"a", b"y"], 0.0) == PARKED  # "2" starts
    assert list(conns.ready) == [2]
    conns.ready.clear()
    assert conns.request(b"a", 3, 100, 0.0) == WAIT
    pipe.connected.discard(b"a")  # the client closed its socket
    pipe.queued.pop(b"a")
    conns.service(conns.next_due())
    conn = conns.conns[b"a"]
    assert not conn.outbox and not conn.waiting and conn.held == 0
    assert conns.reply(b"a", [b"a", b"z"], 0.0) == GONE  # the last one in progress
    assert b"a" not in conns.conns
    assert not conns.ready


def test_idle_connections_leave_nothing_behind():
    pipe = Pipe()
    conns, _ = make(pipe)
    for n in range(1000):
        identity = b"c%d" % n
        pipe.connected.add(identity)
        assert conns.request(identity, n, 100, 0.0) == ADMIT
        conns.reply(identity, reply_frames(identity, 100), 0.0)
        pipe.connected.discard(identity)
    assert conns.conns == {}
    # big replies held by libzmq for identities that then left: freed once it lets go
    for n in range(100):
        identity = b"d%d" % n
        pipe.connected.add(identity)
        conns.request(identity, n, 100, 0.0)
        conns.reply(identity, reply_frames(identity, MiB), 0.0)
    assert len(conns.conns) == 100
    for n in range(100):
        pipe.drain(b"d%d" % n)  # libzmq drops a closed connection's messages
    now = 0.0
    while conns.next_due() is not None:
        now = conns.next_due()
        conns.service(now)
    assert conns.conns == {}
    assert conns._heap == []


def test_tiny_refusals_to_a_stalled_client_are_bounded_in_bytes():
    pipe = Pipe(capacity=0)  # never takes anything
    pipe.connected.add(b"a")
    conns, slow = make(pipe)
    assert conns.request(b"a", 0, 100, 0.0) == ADMIT  # the connection is known (busy)
    results = [conns.reply(b"a", [b"a", b"r" * 60], 0.0, admitted=False) for _ in range(100_000)]
    conn = conns.conns[b"a"]
    assert conn.held <= BOUND
    parked = results.count(PARKED)
    assert parked == BOUND // (60 + MESSAGE_OVERHEAD)
    assert results.count(DROPPED) == 100_000 - parked
    assert slow == [(b"a", "replies_dropped")]


def test_a_refusal_to_an_unknown_identity_keeps_no_state():
    pipe = Pipe(capacity=0)
    pipe.connected.add(b"a")
    conns, _ = make(pipe)
    assert conns.reply(b"a", [b"a", b"x"], 0.0, admitted=False) == DROPPED
    assert conns.reply(b"zz", [b"zz", b"x"], 0.0, admitted=False) == GONE
    assert conns.conns == {}


def test_a_refusal_does_not_count_as_an_answer():
    pipe = Pipe()
    pipe.connected.add(b"a")
    conns, _ = make(pipe)
    conns.request(b"a", 0, 100, 0.0)
    conns.reply(b"a", [b"a", b"x"], 0.0, admitted=False)
    assert conns.conns[b"a"].in_progress == 1
