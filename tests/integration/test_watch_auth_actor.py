"""The watch actor process under CURVE and auth, against a fake storage (a ROUTER that
answers status, history and AUTH_STATE_GET, and a PUSH of events and auth pushes), with
raw CURVE SUB sockets as consumers: what each user receives, and that a revoked reader
or an expired token stops receiving (the XPUB is rebound and every subscription decided
again)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import zmq

from actors.runtime import messages as M
from actors.runtime import security
from actors.storage.auth import AuthState, Perm, User
from actors.watch.channels import encode_topic, unpack_payload
from nodes.config import Config
from nodes.endpoints import Endpoints, run_dir_for
from protocol.codec import pack_msg, unpack_msg
from nodeproc import free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALL = encode_topic(b"\x00", b"\x00")
A = encode_topic(b"/a/", b"/a0")
B = encode_topic(b"/b/", b"/b0")


class FakeStorage:
    """storage's side of the watch actor's links: revisions are dense from 1."""

    def __init__(self, ctx: zmq.Context, ep: Endpoints, auth: AuthState) -> None:
        self.ctx, self.ep, self.auth = ctx, ep, auth
        self.log: dict[int, list] = {}
        self.revision = 10
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.router = ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.router.bind(ep.storage)
        self.push = ctx.socket(zmq.PUSH)
        self.push.linger = 0
        self.push.connect(ep.watch_events)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            if not self.router.poll(50):
                continue
            ident, frame = self.router.recv_multipart()
            kind, body = unpack_msg(frame)
            with self.lock:
                if kind == M.STORAGE_STATUS:
                    reply = pack_msg(M.STORAGE_STATUS_RESP, [body[0], {
                        "applied_index": self.revision, "revision": self.revision, "compact_revision": 0,
                        "db_size": 0, "db_size_in_use": 0, "raft_term": 1, "alarms": [],
                        "defragmenting": False}])
                elif kind == M.AUTH_STATE_GET:
                    reply = pack_msg(M.AUTH_STATE, [self.auth.to_wire()])
                elif kind == M.READ:
                    out = []
                    for req_id, op, _ in body:
                        first = op["start_revision"]
                        last = min(op["end_revision"] or self.revision, self.revision)
                        revs = [{"revision": r, "events": [{"type": t, "kv": kv} for t, kv, _ in self.log[r]]}
                                for r in range(first, last + 1) if r in self.log]
                        out.append([req_id, {"revisions": revs, "last_revision": last, "more": False},
                                    None, self.revision, 1])
                    reply = pack_msg(M.READ_RESP, out)
                else:
                    continue
            self.router.send_multipart([ident, reply])

    def put(self, key: bytes) -> int:
        with self.lock:
            self.revision += 1
            rev = self.revision
            kv = {"key": key, "value": b"v", "create_revision": rev, "mod_revision": rev,
                  "version": 1, "lease": 0}
            self.log[rev] = [["PUT", kv, None]]
        self.push.send(pack_msg(M.EVENTS, [[rev, self.log[rev]]]))
        return rev

    def set_auth(self, auth: AuthState) -> None:
        with self.lock:
            self.auth = auth
        self.push.send(pack_msg(M.AUTH_STATE, [auth.to_wire()]))

    def grant_token(self, user: str, key: bytes, issued: float) -> None:
        self.push.send(pack_msg(M.AUTH_TOKEN, [["ab" * 32, user, issued, key.decode()]]))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.router.close(0)
        self.push.close(0)


@pytest.fixture
def keys(tmp_path):
    out = {}
    d = tmp_path / "keys"
    for name in ("server", "alice", "bob", "root", "mallory"):
        _, secret = security.generate(str(d), name)
        out[name] = security.load_keypair(secret)
        out[name + "_file"] = secret
    return out


def auth_state(keys, enabled: bool, revision: int, alice_reads_a: bool = True) -> AuthState:
    return AuthState(enabled, revision, {
        "root": User(["root"], key=keys["root"][0].decode()),
        "alice": User(["ra"], key=keys["alice"][0].decode()),
        "bob": User(["rb"]),
    }, {"root": [], "ra": [Perm("READ", b"/a/", b"/a0")] if alice_reads_a else [],
        "rb": [Perm("READ", b"/b/", b"/b0")]})


@pytest.fixture
def watch_node(tmp_path, keys):
    """A watch actor process (CURVE, --client-cert-auth, a 3 s token TTL) and its fake storage."""
    data_dir = tmp_path / "n1.qkv"
    run_dir = run_dir_for(str(data_dir))
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    ep = Endpoints(run_dir)
    url = f"tcp://127.0.0.1:{free_port()}"
    cfg = Config(name="n1", data_dir=str(data_dir), listen_watch_urls=[url],
                 client_key_file=keys["server_file"], client_cert_auth=True, auth_token_ttl=3,
                 log_format="json")
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(cfg.to_json())
    ctx = zmq.Context()
    storage = FakeStorage(ctx, ep, auth_state(keys, enabled=False, revision=2))
    log = open(tmp_path / "watch.log", "wb")
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("QKV_SUPERVISOR_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "actors", "watch", "--config", str(cfg_path)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield url, storage, ctx, tmp_path / "watch.log"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        storage.close()
        ctx.destroy(linger=0)


def sub(ctx, url, keys, who: str | None, server_key: bytes | None = None, topics=(A,)):
    s = ctx.socket(zmq.SUB)
    s.linger = 0
    s.setsockopt(zmq.RECONNECT_IVL, 50)
    if who is not None:
        security.make_curve_client(s, *keys[who], server_key or keys["server"][0])
    s.connect(url)
    for t in topics:
        s.subscribe(t)
    return s


class Inbox:
    """What one SUB received: {topic: [body, ...]}."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.got: dict[bytes, list[dict]] = {}

    def pump(self, quiet_s: float = 0.05) -> None:
        """Receive until nothing came for quiet_s."""
        while self.sock.poll(int(quiet_s * 1000)):
            topic, payload = self.sock.recv_multipart()
            self.got.setdefault(topic, []).append(unpack_payload(payload))

    def events(self, topic: bytes, after: int = 0) -> list[int]:
        return [b["revision"] for b in self.got.get(topic, []) if "revision" in b and b["revision"] > after]

    def progress(self, topic: bytes) -> int:
        return len([b for b in self.got.get(topic, []) if "progress_revision" in b])


def wait_events(storage: FakeStorage, key: bytes, inboxes: list[Inbox], topic: bytes, what: str,
                timeout: float = 15.0) -> int:
    """Put `key` again and again until every inbox got an event of it on `topic`; the
    revision of the first such event seen by all."""
    start = storage.revision

    def done():
        storage.put(key)
        for box in inboxes:
            box.pump(0.05)
        return all(box.events(topic, after=start) for box in inboxes)

    wait_for(done, timeout, what, interval=0.05)
    return storage.revision


def test_curve_watch_with_auth_disabled_then_enabled_then_revoked(watch_node, keys):
    url, storage, ctx, log_path = watch_node
    # --- auth disabled: any CURVE client gets everything; no server key, no handshake -------
    alice = Inbox(sub(ctx, url, keys, "alice", topics=(ALL, A, B)))
    mallory = Inbox(sub(ctx, url, keys, "mallory", topics=(ALL,)))
    plain = Inbox(sub(ctx, url, keys, None, topics=(ALL, b"")))
    impostor = Inbox(sub(ctx, url, keys, "alice", server_key=keys["mallory"][0], topics=(ALL,)))
    wait_events(storage, b"/b/1", [alice, mallory], ALL, "CURVE subscribers to get events")
    wait_events(storage, b"/a/1", [alice], A, "alice's /a/ channel")
    alice.pump(0.2)
    assert alice.events(B) and alice.events(ALL)
    plain.pump(0.3)
    impostor.pump(0.1)
    assert plain.got == {} and impostor.got == {}

    # --- auth enabled: alice may read /a/ only; root everything; mallory (no user) nothing ---
    storage.set_auth(auth_state(keys, enabled=True, revision=3))
    root = Inbox(sub(ctx, url, keys, "root", topics=(ALL, A)))
    enabled_at = storage.revision
    # alice's SUB reconnects after the rebind and subscribes to ALL, A and B again.
    wait_events(storage, b"/a/2", [alice, root], A, "alice and root on /a/ after enable")
    r = wait_events(storage, b"/b/2", [root], ALL, "root on the whole keyspace")
    for box in (alice, root, mallory):
        box.pump(0.3)
    assert alice.events(ALL, after=enabled_at) == [] and alice.events(B, after=enabled_at) == []
    assert mallory.events(ALL, after=enabled_at) == []
    assert root.events(ALL, after=enabled_at)[-1] == r
    # granted channels get their progress message; refused ones get nothing at all
    assert alice.progress(A) >= 1

    # --- a key registered by authenticate (AUTH_TOKEN) names its user while the token lives ---
    bob = Inbox(sub(ctx, url, keys, "bob", topics=(B, A)))
    storage.grant_token("bob", keys["bob"][0], int(time.time()))
    # bob's connection may predate the grant: it reconnects when nothing arrives; here the
    # test reconnects it once the grant is in (as the client library does after a silence).
    deadline = time.monotonic() + 10
    while not bob.progress(B):
        assert time.monotonic() < deadline, "bob's /b/ subscription never granted"
        _reconnect(bob, url)
        bob.pump(1.0)
    wait_events(storage, b"/b/3", [bob], B, "bob on /b/ by his token's key")
    granted_at = storage.revision
    storage.put(b"/a/3")
    wait_events(storage, b"/b/4", [bob], B, "bob again")
    assert bob.events(A, after=granted_at) == []

    # --- revoke alice's read on /a/: she stops receiving, root still does -----------------
    storage.set_auth(auth_state(keys, enabled=True, revision=4, alice_reads_a=False))
    revoked_at = storage.revision
    wait_events(storage, b"/a/4", [root], A, "root on /a/ after the revoke")
    for _ in range(10):
        storage.put(b"/a/5")
    root.pump(0.5)
    alice.pump(0.5)
    assert alice.events(A, after=revoked_at) == []
    assert len(root.events(A, after=revoked_at)) >= 10

    # --- bob's token expires (3 s TTL): his key names nobody any more, so a new
    # connection with it is refused (the one he had may keep its subscriptions, as an etcd
    # watch stream outlives its token) -------------------------------------------------------
    def refused_after_reconnect() -> bool:
        _reconnect(bob, url)
        bob.pump(0.3)
        mark = storage.revision
        for _ in range(3):
            storage.put(b"/b/5")
        root.pump(0.3)
        bob.pump(0.5)
        return bob.events(B, after=mark) == []

    deadline = time.monotonic() + 10
    while not refused_after_reconnect():
        assert time.monotonic() < deadline, "bob's key still admitted after his token expired"
    expired_at = storage.revision
    wait_events(storage, b"/b/6", [root], ALL, "root after bob's token expired")
    for _ in range(5):
        storage.put(b"/b/7")
    bob.pump(0.5)
    assert bob.events(B, after=expired_at) == []
    for box in (alice, mallory, plain, impostor, root, bob):
        box.sock.close(0)
    text = log_path.read_text()
    assert "watch_rebind" in text and "actor_crashed" not in text


def _reconnect(box: Inbox, url: str) -> bool:
    """Disconnect and connect again (a new connection: ZAP decides its user again)."""
    box.sock.disconnect(url)
    box.sock.connect(url)
    return True
