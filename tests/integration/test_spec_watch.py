"""SPEC section 5 as a consumer written in C meets it, with bare sockets on a real node:
the first steps in their order (status, subscribe, history at the same member) and why
the order cannot lose anything, and when live messages are lost (a subscriber whose queue
is full loses the new messages, never the queued ones, and the next message shows the
hole). Issue 15, SPEC list."""
from __future__ import annotations

import msgpack
import zmq

from nodeproc import put_burst, wait_for
from protocol.codec import pack, unpack

KEY, END = b"sw/", b"sw0"
TOPIC = b"W1\x00" + len(KEY).to_bytes(4, "big") + KEY + len(END).to_bytes(4, "big") + END
TIMEOUT_MS = 10_000


def request(node, req: dict) -> dict:
    reply = node.request(req)
    assert reply is not None and reply["ok"], reply
    return reply


def subscriber(url: str, rcvhwm: int = 1000, rcvbuf: int = -1) -> zmq.Socket:
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, rcvhwm)
    sub.setsockopt(zmq.RCVBUF, rcvbuf)
    sub.connect(url)
    sub.subscribe(TOPIC)
    return sub


def next_message(sub: zmq.Socket) -> dict:
    assert sub.poll(TIMEOUT_MS), "no message on the topic"
    topic, payload = sub.recv_multipart()
    assert topic == TOPIC and payload[:1] == b"\x01"
    return msgpack.unpackb(payload[1:], raw=False)


def shows_hole(msg: dict, d: int) -> bool:
    if "progress_revision" in msg:
        return msg["last_event_revision"] > d
    return msg["prev_revision"] > d


def history(node, start: int) -> list[int]:
    """Step 3: the revisions with events in [start, current], page by page."""
    out: list[int] = []
    while True:
        reply = request(node, {"op": "history", "key": KEY, "range_end": END, "start_revision": start})
        out += [g["revision"] for g in reply["revisions"]]
        if not reply["more"]:
            return out
        start = reply["last_revision"] + 1


def test_from_now_an_event_made_before_the_subscription_is_not_lost(node_factory):
    node = node_factory()
    # step 1: status (watch URL, revision), step 2: D = its revision ("from now")
    status = request(node, {"op": "status"})
    d = status["header"]["revision"]
    # an event made after the status, before the subscription exists
    made = request(node, {"op": "put", "key": KEY + b"early", "value": b"1"})["header"]["revision"]
    sub = subscriber(status["watch_urls"][0])
    try:
        # step 3 delivers it
        assert history(node, d + 1) == [made]
        # and a consumer that skipped step 3 gets it as well, by step 4 alone: the first
        # message shows a hole (the broadcaster had published it when the channel
        # appeared), or the event comes live (it had not yet)
        delivered: list[int] = []
        while not delivered:
            msg = next_message(sub)
            if shows_hole(msg, d):
                delivered = history(node, d + 1)
            elif "revision" in msg:
                delivered = [msg["revision"]]
            else:
                d = max(d, msg["progress_revision"])
                assert d < made, "a bookmark past the event without the event"
        assert delivered == [made]
    finally:
        sub.close()


def test_an_existing_channel_shows_the_hole_too(node_factory):
    node = node_factory()
    status = request(node, {"op": "status"})
    other = subscriber(status["watch_urls"][0])  # the channel exists already
    try:
        next_message(other)
        status = request(node, {"op": "status"})
        d = status["header"]["revision"]
        made = request(node, {"op": "put", "key": KEY + b"early", "value": b"1"})["header"]["revision"]
        msg = next_message(other)  # the other consumer gets it live...
        assert msg.get("revision") == made
        sub = subscriber(status["watch_urls"][0])  # ...the new one subscribes after it
        try:
            first = next_message(sub)
            assert shows_hole(first, d) and first["last_event_revision"] == made
            # nothing made since: a consumer whose D is already past it sees no hole
            assert not shows_hole(first, made)
        finally:
            sub.close()
    finally:
        other.close()


def test_a_full_subscriber_loses_the_new_messages_not_the_queued_ones(node_factory):
    # Small queues everywhere (the node's queue and send buffer, the SUB's queue and
    # receive buffer) so that a subscriber that does not read overflows soon.
    node = node_factory(env={"QKV_WATCH_SNDHWM": "8", "QKV_WATCH_SNDBUF": "65536"})
    status = request(node, {"op": "status"})
    sub = subscriber(status["watch_urls"][0], rcvhwm=1, rcvbuf=4096)
    try:
        d = next_message(sub)["progress_revision"]  # subscribed; D = its bookmark
        start = d
        n = 300
        put_burst(node.client_url, n, KEY, window=16, value=b"v" * 20_000)  # ~6 MB, unread
        final = request(node, {"op": "status"})["header"]["revision"]
        assert final == start + n
        live: list[int] = []
        hole_seen = False
        while d < final:  # now read, as step 4 says
            msg = next_message(sub)
            if shows_hole(msg, d):
                hole_seen = True
                break
            if "revision" in msg:
                if msg["revision"] > d:
                    live.append(msg["revision"])
                    d = msg["revision"]
            else:
                d = max(d, msg["progress_revision"])
        # what was queued came in order, oldest first, without a gap; then a hole
        assert live == list(range(start + 1, start + 1 + len(live)))
        assert live, "the queued messages were delivered"
        assert hole_seen and d < final, "the subscriber lost the newer messages and the next message said so"
        # step 3 fills the hole: every revision once, nothing lost
        assert live + [r for r in history(node, d + 1)] == list(range(start + 1, final + 1))
    finally:
        sub.close()


# --- step 6: moving to another member ---------------------------------------------------
class SpecConsumer:
    """Section 5 from SPEC alone, steps 1-6, with the member list of `member_list` and a
    timeout on every request (a member that never answers is left, not retried)."""

    def __init__(self, seed) -> None:
        self.seed = seed  # a NodeProcess whose client URL the consumer was given
        self.d = 0
        self.delivered: list[int] = []
        self.sub: zmq.Socket | None = None
        self.client_url = ""
        self.failovers = 0

    def call(self, url: str, req: dict, timeout_s: float = 2.0) -> dict | None:
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(url)
        try:
            s.send(pack({"id": 1, **req}))
            return unpack(s.recv()) if s.poll(int(timeout_s * 1000)) else None
        finally:
            s.close()

    def members(self, ask: str) -> list[tuple[str, str]]:
        reply = self.call(ask, {"op": "member_list"})
        assert reply is not None and reply["ok"], reply
        return [(m["client_urls"][0], m["watch_urls"][0]) for m in reply["members"]
                if m["client_urls"] and m["watch_urls"]]

    def attach(self, client_url: str, from_now: bool = False) -> None:
        """Steps 1-3 at one member: status, subscribe, history from D + 1."""
        if self.sub is not None:
            self.sub.close()
        status = self.call(client_url, {"op": "status"})
        assert status is not None and status["ok"], status
        if from_now:
            self.d = status["header"]["revision"]
        self.client_url = client_url
        self.sub = subscriber(status["watch_urls"][0])
        assert self.catch_up(), "a member that just answered status answers history"

    def catch_up(self) -> bool:
        """Step 3; False when the member does not answer (step 6)."""
        while True:
            reply = self.call(self.client_url, {"op": "history", "key": KEY, "range_end": END,
                                                "start_revision": self.d + 1})
            if reply is None or (not reply["ok"] and reply["error"]["code"] in ("unavailable", "stopping")):
                return False
            assert reply["ok"], reply
            for g in reply["revisions"]:
                if g["revision"] > self.d:
                    self.delivered.append(g["revision"])
                    self.d = g["revision"]
            self.d = max(self.d, reply["last_revision"])
            if not reply["more"]:
                return True

    def fail_over(self, members: list[tuple[str, str]]) -> None:
        """Step 6: the next member in turn that answers, history from D + 1 there."""
        self.failovers += 1
        urls = [c for c, _ in members]
        i = urls.index(self.client_url) if self.client_url in urls else -1
        for k in range(1, len(urls) + 1):
            candidate = urls[(i + k) % len(urls)]
            if candidate != self.client_url and self.call(candidate, {"op": "status"}, 1.0) is not None:
                self.attach(candidate)
                return
        raise AssertionError("no member answers")

    def read_until(self, revision: int, members: list[tuple[str, str]]) -> None:
        """Step 4 until D reaches `revision`; a hole that history cannot fill here: step 6."""
        while self.d < revision:
            assert self.sub is not None
            msg = next_message(self.sub)
            if shows_hole(msg, self.d):
                if not self.catch_up():
                    self.fail_over(members)
            elif "revision" in msg:
                if msg["revision"] > self.d:
                    self.delivered.append(msg["revision"])
                    self.d = msg["revision"]
            else:
                self.d = max(self.d, msg["progress_revision"])

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close()


def test_a_consumer_leaves_a_member_that_never_answers_for_the_next_one(cluster_factory):
    import os
    import signal

    cluster = cluster_factory(3)
    leader = cluster.leader()
    a, b = [n for n in cluster.nodes if n is not leader][:2]
    consumer = SpecConsumer(a)
    # a member's URLs are listed once it has been heard from (empty before: skipped)
    members = wait_for(lambda: (lambda m: m if len(m) == 3 else None)(consumer.members(a.client_url)),
                       10, "every member's URLs in member_list")
    assert sorted(c for c, _ in members) == sorted(n.client_url for n in cluster.nodes)
    assert sorted(w for _, w in members) == sorted(n.watch_url for n in cluster.nodes)
    stopped: list[int] = []
    try:
        consumer.attach(a.client_url, from_now=True)
        start = consumer.d
        put_burst(leader.client_url, 50, KEY + b"one/")
        mid = request(leader, {"op": "status"})["header"]["revision"]
        wait_for(lambda: request(a, {"op": "status"})["header"]["revision"] >= mid, 10, "a to apply")
        consumer.read_until(mid, members)
        # a stops (SIGSTOP: its ports stay open and nothing answers)
        stopped = [*a.actor_pids().values(), a.proc.pid]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        put_burst(leader.client_url, 50, KEY + b"two/")
        final = request(leader, {"op": "status"})["header"]["revision"]
        assert not consumer.catch_up(), "a stopped member answered history"
        consumer.fail_over(consumer.members(b.client_url))  # the list from a member that answers
        assert consumer.client_url != a.client_url
        consumer.read_until(final, members)
        truth = history(leader, start + 1)
        assert consumer.delivered == [r for r in truth if r <= consumer.d]
        assert consumer.delivered[-1] == final and consumer.failovers == 1
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        consumer.close()
