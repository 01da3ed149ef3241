"""The watch validators (watch_check.py) on synthetic recordings: a valid recording passes,
and each validator catches its own violation; then RecordingWatcher against a real
3-node cluster with a put/delete load and the watch actor killed once mid-run."""
from __future__ import annotations

import copy
import random
import threading
import time

from linearizability import Op
from watch_check import (
    Response, Session, WEvent, check_atomic, check_bookmarkable, check_ordered, check_prev_kv,
    check_reliable, check_resumable, check_unique, check_watches, summary,
)
from watch_traffic import RecordingWatcher

from nodeproc import wait_for

KEYS = [b"key/%d" % i for i in range(4)]


def make_stream(n: int = 40, seed: int = 0) -> tuple[dict[int, list[WEvent]], list[Op]]:
    """A valid event stream from revision 2 (every 5th revision a txn writing two keys)
    and the KV history that made it."""
    rng = random.Random(seed)
    state: dict[bytes, tuple[bytes, int, int, int]] = {}  # key -> (value, create, mod, version)
    stream: dict[int, list[WEvent]] = {}
    history: list[Op] = []
    for rev in range(2, n + 2):
        keys = rng.sample(KEYS, 2) if rev % 5 == 0 else [rng.choice(KEYS)]
        evs = []
        for k in keys:
            prev = state.get(k)
            if prev is not None and rng.random() < 0.25:
                evs.append(WEvent("DELETE", k, b"", rev, prev_kv=prev))
                del state[k]
                history.append(Op(0, "delete", k, rev, rev + 0.5, revision=rev, deleted=1))
            else:
                value = b"v%d-%s" % (rev, k)
                create, version = (prev[1], prev[3] + 1) if prev else (rev, 1)
                evs.append(WEvent("PUT", k, value, rev, create, version, prev))
                state[k] = (value, create, rev, version)
                history.append(Op(0, "put", k, rev, rev + 0.5, value=value, revision=rev))
        stream[rev] = evs
    return stream, history


def session(stream: dict[int, list[WEvent]], start: int, upto: int, watcher: int = 0, no: int = 0,
            bookmark_every: int = 0) -> Session:
    s = Session(watcher, no, start)
    for rev in range(start, upto + 1):
        if rev in stream:
            s.responses.append(Response(float(rev), list(stream[rev])))
        if bookmark_every and rev % bookmark_every == 0:
            s.responses.append(Response(float(rev), progress=rev))
    s.responses.append(Response(float(upto), progress=upto))
    return s


def valid_recording() -> tuple[list[Session], list[Op]]:
    stream, history = make_stream()
    sessions = [
        session(stream, 2, 41, 0, 0, bookmark_every=7),  # from the start
        session(stream, 2, 20, 1, 0),
        session(stream, 21, 35, 1, 1),  # resumed at covered + 1
        session(stream, 12, 41, 2, 0, bookmark_every=3),  # restarted from an earlier revision
        session(stream, 30, 41, 2, 1),
    ]
    return sessions, history


def find_rev(stream_session: Session, n_events: int) -> int:
    """Index of the first response with n_events events."""
    return next(i for i, r in enumerate(stream_session.responses) if len(r.events) == n_events)


def test_a_valid_recording_passes_every_validator():
    sessions, history = valid_recording()
    assert check_watches(sessions, history) == []
    info = summary(sessions)
    assert info["sessions"] == 5 and info["watchers"] == 3 and info["events"] > 100


def test_ordered_catches_a_reordered_event():
    sessions, _ = valid_recording()
    r = sessions[0].responses
    i = next(i for i in range(len(r) - 1) if r[i].events and r[i + 1].events)
    r[i], r[i + 1] = r[i + 1], r[i]
    found = check_ordered(sessions)
    assert len(found) == 1 and "watcher 0 session 0" in found[0]


def test_unique_catches_a_duplicate_event():
    sessions, _ = valid_recording()
    r = sessions[2].responses
    r.insert(3, copy.deepcopy(r[2]))  # delivered again right after (a bad catch-up)
    found = check_unique(sessions)
    assert found and all("watcher 1 session 1" in v for v in found)
    assert check_ordered(sessions) == []  # not a reordering


def test_reliable_catches_a_gap_against_other_sessions_and_the_kv_history():
    sessions, history = valid_recording()
    lost = sessions[3].responses.pop(next(i for i, r in enumerate(sessions[3].responses) if i > 4 and r.events))
    rev = lost.events[0].mod_revision
    found = check_reliable(sessions)
    assert found and all("watcher 2 session 0" in v and f"revision {rev}" in v for v in found)
    # the same gap in the only session: found against the KV history alone
    alone = [sessions[3]]
    assert check_reliable(alone) == []
    assert any(f"at revision {rev}" in v for v in check_reliable(alone, history))


def test_reliable_catches_a_different_value_and_a_phantom_write():
    sessions, history = valid_recording()
    i = find_rev(sessions[1], 1)
    e = sessions[1].responses[i].events[0]
    bad = WEvent(e.type, e.key, b"other", e.mod_revision, e.create_revision, e.version, e.prev_kv)
    sessions[1].responses[i] = Response(0.0, [bad])
    found = check_reliable(sessions, history)
    assert any("not the same" in v for v in found)
    assert any("acknowledged" in v for v in found)
    sessions, history = valid_recording()
    history.append(Op(5, "put", e.key, 1.0, 2.0, value=e.value, ok=False))  # refused, yet delivered
    assert any("phantom" in v for v in check_reliable(sessions, history))


def test_atomic_catches_a_split_revision():
    sessions, _ = valid_recording()
    r = sessions[4].responses
    i = find_rev(sessions[4], 2)
    first, second = r[i].events
    r[i:i + 1] = [Response(1.0, [first]), Response(1.0, [second])]
    found = check_atomic(sessions)
    assert len(found) == 1 and "watcher 2 session 1" in found[0] and "split" in found[0]
    # and one that lost half of a revision
    sessions, _ = valid_recording()
    i = find_rev(sessions[0], 2)
    sessions[0].responses[i].events.pop()
    assert any("got 1 of the 2 events" in v for v in check_atomic(sessions))


def test_resumable_catches_a_wrong_first_event_after_a_resume():
    sessions, history = valid_recording()
    sessions[2].responses.pop(0)  # resumed at 21 but starts later
    found = check_resumable(sessions, history)
    assert len(found) == 1 and "expected 21" in found[0]
    # an event below the start revision
    sessions, history = valid_recording()
    sessions[4].responses.insert(0, Response(0.0, list(make_stream()[0][29])))
    assert any("below its start revision" in v for v in check_resumable(sessions, history))


def test_resumable_accepts_a_compacted_error_only_below_the_compact_revision():
    sessions, history = valid_recording()
    ok = Session(3, 0, 5, compact_revision=10, end_reason="compacted")  # needed 5 < 10
    bad = Session(3, 1, 10, compact_revision=10, end_reason="compacted")  # 10 was still there
    assert check_resumable(sessions + [ok], history) == []
    found = check_resumable(sessions + [bad], history)
    assert len(found) == 1 and "watcher 3 session 1" in found[0] and "not compacted" in found[0]


def test_bookmarkable_catches_an_event_at_or_below_a_bookmark():
    sessions, _ = valid_recording()
    r = sessions[1].responses
    i = find_rev(sessions[1], 1)
    rev = r[i].events[0].mod_revision
    r.insert(i, Response(0.0, progress=rev))  # a bookmark at the revision about to come
    found = check_bookmarkable(sessions)
    assert len(found) == 1 and f"after bookmark {rev}" in found[0]
    sessions, _ = valid_recording()
    sessions[0].responses.insert(10, Response(0.0, progress=3))  # goes back
    assert any("below delivered revision" in v for v in check_bookmarkable(sessions))


def test_prev_kv_catches_a_wrong_prev_kv():
    sessions, _ = valid_recording()
    s = sessions[3]
    i, e = next((i, r.events[0]) for i, r in enumerate(s.responses)
                if len(r.events) == 1 and r.events[0].prev_kv is not None)
    wrong = (b"stale", *e.prev_kv[1:])
    s.responses[i] = Response(0.0, [WEvent(e.type, e.key, e.value, e.mod_revision, e.create_revision,
                                           e.version, wrong)])
    found = check_prev_kv(sessions)
    assert len(found) == 1 and "b'stale'" in found[0]
    # a prev_kv on a key's first event (the union covers everything from revision 2... and 1)
    sessions, _ = valid_recording()
    for s in sessions:
        s.start_revision = 1 if s.start_revision == 2 else s.start_revision
    e = sessions[0].responses[0].events[0]
    assert e.prev_kv is None
    sessions[0].responses[0] = Response(0.0, [WEvent(e.type, e.key, e.value, e.mod_revision,
                                                     e.create_revision, e.version, (b"x", 1, 1, 1))])
    assert len(check_prev_kv(sessions)) == 1


def test_prev_kv_may_be_missing_only_at_a_compact_revision():
    sessions, _ = valid_recording()
    s = sessions[0]
    i, e = next((i, r.events[0]) for i, r in enumerate(s.responses)
                if len(r.events) == 1 and r.events[0].prev_kv is not None)
    s.responses[i] = Response(0.0, [WEvent(e.type, e.key, e.value, e.mod_revision, e.create_revision,
                                           e.version, None)])
    assert len(check_prev_kv(sessions)) == 1
    assert check_prev_kv(sessions, compactions=[e.mod_revision]) == []
    assert len(check_prev_kv(sessions, compactions=[e.mod_revision + 1])) == 1


def test_recording_watchers_on_a_real_cluster_with_the_watch_actor_killed(cluster_factory):
    """RecordingWatcher end to end (lean): 3 watchers, a put/delete/compact load from a
    plain client recorded as Ops, the watch actor of one node killed once mid-run."""
    from protocol.client import Client

    cluster = cluster_factory(3)
    endpoints = [n.client_url for n in cluster.nodes]
    stop = threading.Event()
    watchers = [RecordingWatcher(i, endpoints, 100 + i, stop, restart_s=(1.0, 2.5)) for i in range(3)]
    history: list[Op] = []
    client = Client(endpoints, timeout=5)
    try:
        for w in watchers:
            w.start()
        wait_for(lambda: all(w.sessions for w in watchers), 10, "every watcher to start")
        rng = random.Random(7)
        t_end = time.monotonic() + 8
        killed = compacted = 0
        i = 0
        while time.monotonic() < t_end:
            i += 1
            key = rng.choice(KEYS)
            t0 = time.monotonic()
            if rng.random() < 0.2:
                resp = client.delete(key)
                history.append(Op(0, "delete", key, t0, time.monotonic(), revision=resp.header.revision,
                                  deleted=resp.deleted))
            else:
                value = b"v%d" % i
                resp = client.put(key, value)
                history.append(Op(0, "put", key, t0, time.monotonic(), value=value,
                                  revision=resp.header.revision))
            if not killed and time.monotonic() > t_end - 5:
                killed = cluster.nodes[0].kill_actor("watch")
            if not compacted and time.monotonic() > t_end - 4:
                compacted = resp.header.revision - 5  # restarts from earlier revisions now fail
                client.compact(compacted)
            time.sleep(0.01)
        last = max(op.revision for op in history)
        wait_for(lambda: watchers[0].sessions[-1].covered >= last, 20, "watcher 0 to catch up")
    finally:
        stop.set()
        for w in watchers:
            w.join(15)
        client.close()
    assert not any(w.is_alive() for w in watchers)
    sessions = [s for w in watchers for s in w.sessions]
    info = summary(sessions)
    print(info, [w.counts for w in watchers])
    assert not any("harness_error" in w.counts or "error" in w.counts for w in watchers), \
        [w.counts for w in watchers]
    violations = check_watches(sessions, history, compactions=[compacted])
    assert violations == [], "\n".join(violations)
    assert info["events"] > 100 and info["sessions"] > 3
    # not vacuous: the same recording with one delivered revision lost fails
    s0 = watchers[0].sessions[-1]
    i = next(i for i, r in enumerate(s0.responses) if r.events)
    del s0.responses[i]
    assert any(v.startswith("reliable:") for v in check_watches(sessions, history, compactions=[compacted]))
