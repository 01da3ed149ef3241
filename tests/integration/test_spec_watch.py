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
