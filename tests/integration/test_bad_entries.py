"""A committed entry that does not validate is applied as the same error on every member:
storage stays up, the revision does not move, the next entries apply (issue 11, section 3).

Two ways in: the issue's frame (PEER_FORWARD to the leader with a real member id) against
a real 3-node cluster with security off, and, because the leader may refuse such a
proposal at its peer port, straight into the apply path: real storage actor processes fed
ENTRIES by a fake consensus ROUTER."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from actors.runtime import entry
from actors.runtime import messages as M
from nodeproc import free_port, wait_for
from nodes.config import load_config
from nodes.endpoints import Endpoints, run_dir_for
from protocol.codec import pack_msg, unpack, unpack_msg

ROOT = Path(__file__).resolve().parents[2]
ISSUE_ENTRY = msgpack.packb([0, 0, {"op": "put"}, None], use_bin_type=True)


def _put(key: bytes, value: bytes) -> dict:
    return {"op": "put", "key": key, "value": value, "lease": 0, "prev_kv": False, "ignore_value": False,
            "ignore_lease": False}


def ok(reply):
    assert reply is not None and reply.get("ok"), reply
    return reply


def test_forged_peer_forward_entries_apply_as_errors_everywhere(cluster_factory):
    cluster = cluster_factory(3)
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes if n is not leader)
    ok(leader.request({"op": "put", "key": b"before", "value": b"1"}))
    revision = ok(leader.request({"op": "status"}))["header"]["revision"]
    storage_pids = {n.name: n.actor_pids()["storage"] for n in cluster.nodes}

    bad_v1 = entry.encode(follower.member_id, 1, 5, None, {"op": "put", "key": b"forged"})
    bad_grant = entry.encode(follower.member_id, 2, 6, None, {"op": "lease_grant", "ttl": 5, "id": 0})
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(leader.peer_url)
    try:
        frame = pack_msg(M.PEER_FORWARD, [follower.member_id, [[1, ISSUE_ENTRY], [2, bad_v1], [3, bad_grant]]])
        sock.send(frame)
        sock.poll(500)  # a PEER_FORWARD_REJECT may come back: either way nothing may break
    finally:
        sock.close()

    # The cluster goes on: a write after the forged ones applies at the next revision.
    wait_for(lambda: (leader.request({"op": "put", "key": b"after", "value": b"2"}, timeout=2) or {}).get("ok"),
             15, "a write after the forged entries")
    after = ok(leader.request({"op": "range", "key": b"after"}))
    assert after["kvs"][0]["mod_revision"] == revision + 1, "a forged entry changed the revision"
    assert ok(leader.request({"op": "range", "key": b"forged"}))["kvs"] == []
    assert len(cluster.converged_hashes()) == 1
    for n in cluster.nodes:
        assert n.actor_pids()["storage"] == storage_pids[n.name], f"storage of {n.name} restarted"
    # Applied as errors on every member, or refused by the leader before the log: the
    # same on every member either way.
    applied = {n.name: sorted(_invalid_indexes(n.log_text())) for n in cluster.nodes}
    print("entries applied as errors:", applied)
    assert len({tuple(v) for v in applied.values()}) == 1, applied
    assert len(next(iter(applied.values()))) in (0, 3), applied
    for n in cluster.nodes:
        text = n.log_text()
        assert "actor_crashed" not in text and "internal_message_dropped" not in text


def _invalid_indexes(log_text: str) -> list[tuple[int, str]]:
    out = []
    for line in log_text.splitlines():
        if '"entry_invalid"' in line:
            rec = json.loads(line)
            out.append((rec["index"], rec["reason"]))
    return out


# --- the apply path: real storage processes, a fake consensus ------------------------------
class StorageUnderTest:
    """One storage actor process (`python -m actors storage`) with this test in the places
    of consensus (ROUTER), the gateway (results PULL) and the watch (events PULL)."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.data_dir = str(tmp_path / f"{name}.qkv")
        cfg = load_config({"name": name, "data-dir": self.data_dir, "initial-cluster-token": "bad-entries",
                           "listen-client-urls": [f"tcp://127.0.0.1:{free_port()}"],
                           "listen-peer-urls": [f"tcp://127.0.0.1:{free_port()}"],
                           "listen-watch-urls": [f"tcp://127.0.0.1:{free_port()}"]}, env={})
        self.member_id = cfg.member_id
        self.endpoints = Endpoints(run_dir_for(self.data_dir))
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.endpoints.run_dir, mode=0o700, exist_ok=True)
        self.config_path = os.path.join(self.data_dir, "config.json")
        with open(self.config_path, "w") as f:
            f.write(cfg.to_json())
        self.ctx = zmq.Context()
        self.consensus = self._sock(zmq.ROUTER, self.endpoints.consensus)
        self.results = self._sock(zmq.PULL, self.endpoints.gateway_results)
        self.events = self._sock(zmq.PULL, self.endpoints.watch_events)
        self.identity: bytes | None = None
        self.log_path = tmp_path / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "actors", "storage", "--config", self.config_path],
                                     cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def _sock(self, kind: int, url: str) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(url)
        return sock

    def fetch(self, timeout: float = 10.0) -> int:
        """Wait for storage's next FETCH; its after_index (= its applied index)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"storage exited: {self.log_text()[-2000:]}"
            if self.consensus.poll(100):
                identity, frame = self.consensus.recv_multipart()
                msg_type, body = unpack_msg(frame)
                if msg_type == M.FETCH:
                    self.identity = identity
                    return body[0]
        raise AssertionError("no FETCH from storage")

    def send_entries(self, entries: list[list], term: int = 2) -> None:
        assert self.identity is not None
        commit = entries[-1][0] if entries else 0
        self.consensus.send_multipart([self.identity, pack_msg(M.ENTRIES, [entries, commit, term])])

    def apply(self, entries: list[list]) -> None:
        """Feed entries until storage asks for what follows the last one."""
        last = entries[-1][0]
        while (after := self.fetch()) < last:
            self.send_entries([e for e in entries if e[0] > after])

    def replies(self, count: int, timeout: float = 10.0) -> dict[int, dict]:
        """req_id -> decoded client reply, for `count` replies pushed to the gateway."""
        out: dict[int, dict] = {}
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            if self.results.poll(100):
                msg_type, body = unpack_msg(self.results.recv())
                if msg_type != M.CLIENT_REPLIES:
                    assert msg_type in (M.AUTH_STATE, M.AUTH_TOKEN), msg_type  # storage's auth pushes
                    continue
                for req_id, frame, _rev in body:
                    out[req_id] = unpack(frame)
        return out

    def ask(self, msg_type: int, body: list, reply_type: int) -> list:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoints.storage)
        try:
            sock.send(pack_msg(msg_type, body))
            assert sock.poll(5000), "storage did not answer"
            got_type, reply = unpack_msg(sock.recv())
            assert got_type == reply_type
            return reply
        finally:
            sock.close()

    def status(self) -> dict:
        return self.ask(M.STORAGE_STATUS, [1], M.STORAGE_STATUS_RESP)[1]

    def hash_kv(self) -> int:
        return self.ask(M.HASH_KV, [2, 0], M.HASH_KV_RESP)[1]["hash"]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def storages(tmp_path):
    made: list[StorageUnderTest] = []

    def make(name: str) -> StorageUnderTest:
        s = StorageUnderTest(tmp_path, name)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_storage_applies_invalid_entries_as_the_same_error_on_every_member(storages):
    a, b = storages("a"), storages("b")
    origin = a.member_id
    entries = [
        [1, 2, 0, entry.encode(origin, 101, 1, None, _put(b"k1", b"v1"))],
        [2, 2, 0, ISSUE_ENTRY],  # the issue's entry (the pre-v1 envelope)
        [3, 2, 0, entry.encode(origin, 102, 2, None, {"op": "put", "key": b"k"})],  # v1, bad op
        [4, 2, 0, b"\xc1garbage"],
        [5, 2, 0, entry.encode(origin, 103, 3, None, {"op": "lease_grant", "ttl": 5, "id": 0})],
        [6, 2, 1, b"conf change: consensus's business"],
        [7, 2, 0, b""],  # an empty entry (a new leader's)
        [8, 2, 0, entry.encode(origin, 104, 4, ["bob", True], _put(b"k2", b"v2"))],  # bad auth
        [9, 2, 0, entry.encode(origin, 105, 5, None, _put(b"k2", b"v2"))],
        [10, 2, 0, msgpack.packb([origin, 106, _put(b"k3", b"v3"), 6], use_bin_type=True)],  # a pre-v1 put
    ]
    for s in (a, b):
        s.apply(entries)
    for s in (a, b):
        st = s.status()
        assert st["applied_index"] == 10 and st["revision"] == 4, st  # 1 + three puts
        assert s.proc.poll() is None
    assert a.hash_kv() == b.hash_kv()
    replies = a.replies(5)
    assert not b.replies(1, timeout=0.3)  # replies go to the origin member's gateway only
    assert replies[101]["ok"] and replies[101]["header"]["revision"] == 2
    for req_id in (102, 103):  # a valid envelope with a bad op: its client gets the error
        err = replies[req_id]["error"]
        assert err["code"] == "invalid_argument" and "invalid log entry" in err["message"], replies
    assert 104 not in replies  # a bad envelope: its origin is not trusted, nobody gets a reply
    assert replies[105]["ok"] and replies[105]["header"]["revision"] == 3
    assert replies[106]["ok"] and replies[106]["id"] == 6 and replies[106]["header"]["revision"] == 4
    # Every member logged the same invalid entries with the same reasons.
    invalid = [sorted(_invalid_indexes(s.log_text())) for s in (a, b)]
    assert invalid[0] == invalid[1]
    assert [i for i, _ in invalid[0]] == [2, 3, 4, 5, 8]
    # And it goes on: a later batch applies on top.
    for s in (a, b):
        s.apply([[11, 2, 0, entry.encode(origin, 107, 7, None, _put(b"k4", b"v4"))]])
        assert s.status()["revision"] == 5
    assert a.hash_kv() == b.hash_kv()
    for s in (a, b):
        assert "actor_crashed" not in s.log_text()


def test_storage_drops_invalid_internal_messages_and_stays_up(storages):
    s = storages("c")
    s.fetch()
    garbage = [b"", b"\x01", b"\x01\x06", pack_msg(M.ENTRIES, [[[1, 1, 0]], 1, 1]),
               pack_msg(M.ENTRIES, [[[1, True, 0, b""]], 1, 1]), pack_msg(M.ENTRIES, "x"),
               pack_msg(M.READY, ["storage", 1]), bytes([1, M.ENTRIES]) + b"\x91" * 5000 + b"\xc0"]
    for frame in garbage:
        s.consensus.send_multipart([s.identity, frame])
    dealer = s.ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(s.endpoints.storage)
    try:
        for frame in garbage + [pack_msg(M.READ, [[1, {"op": "put"}, 0]]),
                                pack_msg(M.CLIENT_READ, [[1, {"op": "range", "key": b"a"}, 0, 1]]),  # not normalized
                                pack_msg(M.INSTALL, [1, "/etc"])]:
            dealer.send(frame)
        # INSTALL is well formed: it gets an answer, a refusal (the path is not a snapshot's)
        assert dealer.poll(5000)
        msg_type, body = unpack_msg(dealer.recv())
        assert msg_type == M.INSTALL_RESP and body[2]["code"] == "invalid_argument"
    finally:
        dealer.close()
    s.apply([[1, 2, 0, entry.encode(s.member_id, 1, 1, None, _put(b"k", b"v"))]])
    assert s.status()["revision"] == 2
    assert s.proc.poll() is None
    wait_for(lambda: "internal_message_dropped" in s.log_text(), 5, "the drop to be logged")
