"""Users, roles and permissions on real nodes (issue 11, SPEC "Authentication"): etcd 3.4's
rules for every op kind, tokens (expiry, renewal, the end of a user's tokens), auth
after kill -9 of every node, client-cert-auth with a registered CURVE key, and a member's
own key for the corruption checker. Raw request maps throughout (`token` in the map), so
the tests depend on the wire contract only."""
from __future__ import annotations

import itertools
import os
import time

import zmq

from nodeproc import err, ok, wait_for
from protocol.codec import pack, unpack

PW = {"root": "rootpw", "ra": "pw-ra", "wb": "pw-wb", "rwc": "pw-rwc"}
_ids = itertools.count(1)


def call(node, req: dict, token: str | None = None, timeout: float = 5.0):
    if token is not None:
        req = dict(req, token=token)
    return node.request(req, timeout=timeout)


def login(node, name: str, password: str | None = None) -> str:
    reply = ok(node.request({"op": "authenticate", "name": name, "password": password or PW[name]}))
    assert isinstance(reply["token"], str) and len(reply["token"]) >= 32
    return reply["token"]


def prefix_end(p: bytes) -> bytes:
    return p[:-1] + bytes([p[-1] + 1])


def perm(perm_type: str, prefix: bytes) -> dict:
    return {"perm_type": perm_type, "key": prefix, "range_end": prefix_end(prefix)}


def enable_auth(node) -> str:
    """etcd's order: the root user, its root role, then auth enable. Returns root's token."""
    ok(node.request({"op": "user_add", "name": "root", "password": PW["root"]}))
    ok(node.request({"op": "user_grant_role", "name": "root", "role": "root"}))
    ok(node.request({"op": "auth_enable"}))
    return login(node, "root")


def add_user(node, root: str, name: str, perms: list[dict]) -> None:
    ok(call(node, {"op": "user_add", "name": name, "password": PW[name]}, root))
    ok(call(node, {"op": "role_add", "name": f"role-{name}"}, root))
    for p in perms:
        ok(call(node, {"op": "role_grant_permission", "name": f"role-{name}", "perm": p}, root))
    ok(call(node, {"op": "user_grant_role", "name": name, "role": f"role-{name}"}, root))


def setup_matrix(node) -> dict[str, str]:
    root = enable_auth(node)
    add_user(node, root, "ra", [perm("READ", b"/a/")])
    add_user(node, root, "wb", [perm("WRITE", b"/b/")])
    add_user(node, root, "rwc", [perm("READWRITE", b"/c/")])
    for key in (b"/a/1", b"/b/1", b"/c/1"):
        ok(call(node, {"op": "put", "key": key, "value": b"v0"}, root))
    return {"root": root, **{u: login(node, u) for u in ("ra", "wb", "rwc")}}


def rng(key: bytes, end: bytes = b"", **kw) -> dict:
    return {"op": "range", "key": key, "range_end": end, **kw}


def put(key: bytes, value: bytes = b"v", **kw) -> dict:
    return {"op": "put", "key": key, "value": value, **kw}


def _request_op(op: dict) -> dict:
    if "op" not in op:
        return op  # already a RequestOp
    return {op["op"]: {k: v for k, v in op.items() if k != "op"}}


def txn(compare: list, success: list, failure: list) -> dict:
    """A txn request; branches given as flat ops ({"op": "put", ...}) become RequestOps."""
    return {"op": "txn", "compare": compare, "success": [_request_op(r) for r in success],
            "failure": [_request_op(r) for r in failure]}


def cmp_version(key: bytes, version: int = 0, result: str = "GREATER") -> dict:
    return {"target": "VERSION", "result": result, "key": key, "version": version}


def check_matrix(node, tok: dict[str, str]) -> None:
    """Every op kind, allowed (True) or refused with permission_denied (False), per user."""
    cases = [
        # (user, request, allowed)
        ("ra", rng(b"/a/1"), True),
        ("ra", rng(b"/a/", prefix_end(b"/a/")), True),
        ("ra", rng(b"/a/", b"\x00"), False),  # every key >= /a/: beyond the prefix
        ("ra", rng(b"/b/1"), False),
        ("ra", put(b"/a/1"), False),
        ("ra", {"op": "delete_range", "key": b"/a/1"}, False),
        ("ra", {"op": "history", "key": b"/a/", "range_end": prefix_end(b"/a/")}, True),
        ("ra", {"op": "history", "key": b"/c/", "range_end": prefix_end(b"/c/")}, False),
        ("wb", rng(b"/b/1"), False),  # write only: no reads
        ("wb", put(b"/b/1"), True),
        ("wb", put(b"/b/1", prev_kv=True), False),  # prev_kv reads the old value
        ("wb", {"op": "delete_range", "key": b"/b/", "range_end": prefix_end(b"/b/")}, True),
        ("wb", {"op": "delete_range", "key": b"/b/x", "prev_kv": True}, False),
        ("wb", put(b"/a/1"), False),
        ("wb", {"op": "history", "key": b"/b/", "range_end": prefix_end(b"/b/")}, False),
        ("rwc", rng(b"/c/1"), True),
        ("rwc", put(b"/c/1", prev_kv=True), True),
        ("rwc", put(b"/a/1"), False),
        # txn: READ on every compare and range, WRITE on every put/delete, in both branches
        ("rwc", txn([cmp_version(b"/c/1")], [put(b"/c/2")], [rng(b"/c/1")]), True),
        ("rwc", txn([cmp_version(b"/c/1")], [put(b"/c/2")], [put(b"/a/1")]), False),  # untaken branch
        ("rwc", txn([cmp_version(b"/a/1")], [put(b"/c/2")], []), False),  # compare outside
        ("rwc", txn([], [txn([], [], [rng(b"/b/1")])], []), False),  # nested txn's branch
        ("wb", txn([], [put(b"/b/2"), {"op": "delete_range", "key": b"/b/3"}], []), True),
        ("wb", txn([cmp_version(b"/b/1")], [put(b"/b/2")], []), False),  # wb cannot read /b/
        ("ra", txn([cmp_version(b"/a/1")], [rng(b"/a/1")], []), True),
        # any authenticated user: compaction, lease grant, alarm list
        ("ra", {"op": "alarm_list"}, True),
        # root only
        ("ra", {"op": "user_list"}, False),
        ("ra", {"op": "role_list"}, False),
        ("rwc", {"op": "user_add", "name": "x", "password": "y"}, False),
        ("rwc", {"op": "role_grant_permission", "name": "role-rwc", "perm": perm("READWRITE", b"/")}, False),
        ("rwc", {"op": "user_grant_role", "name": "rwc", "role": "root"}, False),
        ("rwc", {"op": "auth_disable"}, False),
        ("rwc", {"op": "hash_kv"}, False),
        ("rwc", {"op": "defragment"}, False),
        ("rwc", {"op": "move_leader", "target_id": 1}, False),
        ("rwc", {"op": "member_remove", "member_id": 1}, False),
        ("rwc", {"op": "snapshot"}, False),
        ("rwc", {"op": "alarm_disarm"}, False),
    ]
    failures = []
    for user, req, allowed in cases:
        reply = call(node, req, tok[user])
        assert reply is not None, (user, req)
        if allowed and not reply["ok"]:
            failures.append((user, req, reply["error"]))
        if not allowed and (reply["ok"] or reply["error"]["code"] != "permission_denied"):
            failures.append((user, req, reply))
    assert not failures, "\n".join(map(repr, failures))
    # the user's own user_get works; another's is root's
    assert ok(call(node, {"op": "user_get", "name": "ra"}, tok["ra"]))["roles"] == ["role-ra"]
    err(call(node, {"op": "user_get", "name": "wb"}, tok["ra"]), "permission_denied")
    assert sorted(ok(call(node, {"op": "user_list"}, tok["root"]))["users"]) == ["ra", "root", "rwc", "wb"]


def test_permission_matrix_single_node(node_factory):
    node = node_factory()
    tok = setup_matrix(node)
    check_matrix(node, tok)
    # compaction by any user (etcd); it changed nothing a later test needs
    rev = ok(call(node, rng(b"/c/1"), tok["rwc"]))["header"]["revision"]
    ok(call(node, {"op": "compact", "revision": rev}, tok["ra"]))


def test_without_a_user(node_factory):
    node = node_factory()
    root = enable_auth(node)
    err(node.request(rng(b"k")), "user_empty")
    err(node.request(put(b"k")), "user_empty")
    err(node.request({"op": "status"}), "user_empty")
    err(node.request({"op": "lease_grant", "ttl": 10}), "user_empty")
    # what works without a user: authenticate and auth_status (etcd 3.5's AuthStatus)
    st = ok(node.request({"op": "auth_status"}))
    assert st["enabled"] is True and st["auth_revision"] >= 1
    err(node.request({"op": "authenticate", "name": "root", "password": "wrong"}), "auth_failed")
    err(node.request({"op": "authenticate", "name": "nobody", "password": "x"}), "auth_failed")
    err(call(node, rng(b"k"), "not-a-token"), "invalid_auth_token")
    # the server's own lease entries are not checked, so no client may send one, token or not
    for op in ({"op": "lease_expire", "id": 1}, {"op": "lease_checkpoint", "checkpoints": []}):
        err(call(node, op, root), "unknown_op")
    # a client's alarm_activate is root's (the server's own alarm entries are not checked)
    err(node.request({"op": "alarm_activate", "member_id": 1, "alarm": "NOSPACE"}), "user_empty")
    ok(call(node, rng(b"k"), root))
    ok(call(node, {"op": "status"}, root))
    # auth disable: everything open again, tokens ignored (a stale one still works)
    ok(call(node, {"op": "auth_disable"}, root))
    ok(node.request(put(b"k")))
    ok(call(node, rng(b"k"), "not-a-token"))
    err(node.request({"op": "authenticate", "name": "root", "password": PW["root"]}), "auth_not_enabled")
    # enabling again needs a root user with the root role: it is still there
    ok(node.request({"op": "auth_enable"}))
    err(call(node, rng(b"k"), root), "invalid_auth_token")  # disable ended every token


def test_auth_enable_needs_root(node_factory):
    node = node_factory()
    err(node.request({"op": "auth_enable"}), "root_user_not_exist")
    ok(node.request({"op": "user_add", "name": "root", "password": "p"}))
    err(node.request({"op": "auth_enable"}), "root_role_not_exist")
    err(node.request({"op": "authenticate", "name": "root", "password": "p"}), "auth_not_enabled")


def test_password_never_in_the_log_and_tokens_end_with_their_user(node_factory):
    node = node_factory()
    tok = setup_matrix(node)
    t1 = tok["rwc"]
    t2 = login(node, "rwc")
    assert t1 != t2
    ok(call(node, rng(b"/c/1"), t1))
    ok(call(node, {"op": "user_change_password", "name": "rwc", "password": "new-pw"}, tok["root"]))
    for t in (t1, t2):
        err(call(node, rng(b"/c/1"), t), "invalid_auth_token")
    err(node.request({"op": "authenticate", "name": "rwc", "password": PW["rwc"]}), "auth_failed")
    t3 = login(node, "rwc", "new-pw")
    ok(call(node, rng(b"/c/1"), t3))
    # other users' tokens are untouched
    ok(call(node, rng(b"/a/1"), tok["ra"]))
    ok(call(node, {"op": "user_delete", "name": "rwc"}, tok["root"]))
    err(call(node, rng(b"/c/1"), t3), "invalid_auth_token")
    err(node.request({"op": "authenticate", "name": "rwc", "password": "new-pw"}), "auth_failed")
    # the passwords appear nowhere on disk (the Raft log and the store hold scrypt hashes)
    leaked = []
    for dirpath, _dirs, files in os.walk(node.data_dir):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                data = f.read()
            for pw in ("new-pw", PW["rwc"], PW["root"]):
                if pw.encode() in data:
                    leaked.append((name, pw))
    assert not leaked, leaked


def test_permission_change_applies_to_the_next_request(node_factory):
    node = node_factory()
    tok = setup_matrix(node)
    ok(call(node, put(b"/c/9"), tok["rwc"]))
    ok(call(node, {"op": "role_revoke_permission", "name": "role-rwc", "key": b"/c/",
                   "range_end": prefix_end(b"/c/")}, tok["root"]))
    err(call(node, put(b"/c/9"), tok["rwc"]), "permission_denied")
    ok(call(node, {"op": "role_grant_permission", "name": "role-rwc", "perm": perm("WRITE", b"/c/")},
            tok["root"]))
    ok(call(node, put(b"/c/9"), tok["rwc"]))
    err(call(node, rng(b"/c/9"), tok["rwc"]), "permission_denied")


def test_lease_attach_and_revoke_need_write_on_its_keys(node_factory):
    node = node_factory()
    tok = setup_matrix(node)
    lease = ok(call(node, {"op": "lease_grant", "ttl": 60}, tok["rwc"]))["ID"]
    ok(call(node, put(b"/c/l", lease=lease), tok["rwc"]))
    # wb may write /b/ but not /c/l, which the lease holds: attach and revoke refused
    err(call(node, put(b"/b/l", lease=lease), tok["wb"]), "permission_denied")
    err(call(node, {"op": "lease_revoke", "ID": lease}, tok["wb"]), "permission_denied")
    err(call(node, {"op": "lease_timetolive", "ID": lease, "keys": True}, tok["wb"]), "permission_denied")
    err(call(node, {"op": "lease_keepalive", "ID": lease}, tok["wb"]), "permission_denied")
    ttl = ok(call(node, {"op": "lease_timetolive", "ID": lease, "keys": True}, tok["rwc"]))
    assert ttl["keys"] == [b"/c/l"]
    ok(call(node, {"op": "lease_keepalive", "ID": lease}, tok["rwc"]))
    err(call(node, {"op": "lease_leases"}, tok["wb"]), "permission_denied")
    ok(call(node, {"op": "lease_revoke", "ID": lease}, tok["rwc"]))
    assert ok(call(node, rng(b"/c/l"), tok["rwc"]))["kvs"] == []


def test_token_expiry_and_renewal(node_factory):
    ttl = 2
    node = node_factory(args=["--auth-token-ttl", str(ttl)])
    enable_auth(node)
    used = login(node, "root")
    idle = login(node, "root")
    started = time.monotonic()
    # `used` is renewed by every use: alive well past its TTL
    while time.monotonic() - started < 2.5 * ttl:
        ok(call(node, rng(b"k"), used))
        time.sleep(0.3)  # the thing under test is time: a request every 0.3 s
    err(call(node, rng(b"k"), idle), "invalid_auth_token")
    # a fresh token works again
    ok(call(node, rng(b"k"), login(node, "root")))


def test_auth_old_revision_is_retryable_and_the_token_survives(node_factory):
    """A request stamped with an old auth revision is refused at apply (storage compares);
    driven here through the unit-level path too (tests/unit/test_auth_apply.py)."""
    node = node_factory()
    tok = setup_matrix(node)
    before = ok(node.request({"op": "auth_status"}))["auth_revision"]
    ok(call(node, {"op": "role_add", "name": "extra"}, tok["root"]))
    after = ok(node.request({"op": "auth_status"}))["auth_revision"]
    assert after == before + 1
    ok(call(node, rng(b"/a/1"), tok["ra"]))  # the gateway stamps its current revision


# --- a 3-node cluster ------------------------------------------------------------------
def _restart_all(cluster) -> None:
    for n in cluster.nodes:
        n.kill()
    for n in cluster.nodes:
        n.start(wait=False)

    def serving() -> bool:
        for n in cluster.nodes:
            r = n.request({"op": "authenticate", "name": "root", "password": PW["root"]}, timeout=1)
            if not r or not r.get("ok"):
                return False
            if not (call(n, rng(b"/a/1"), r["token"], timeout=1) or {}).get("ok"):
                return False
        return True

    wait_for(serving, 40, "every node to serve after the restart", interval=0.2)


def test_matrix_on_a_cluster_and_auth_after_kill_9_of_every_node(cluster_factory):
    cluster = cluster_factory(3)
    leader = cluster.leader()
    tok = setup_matrix(leader)
    follower = next(n for n in cluster.nodes if n is not leader)
    # tokens are granted through the log: a token from the leader works on a follower
    wait_for(lambda: (call(follower, rng(b"/a/1"), tok["ra"], timeout=1) or {}).get("ok"), 10,
             "the follower to know ra's token")
    check_matrix(follower, {u: t for u, t in tok.items()})
    ok(call(follower, {"op": "user_change_password", "name": "wb", "password": "pw-wb-2"}, tok["root"]))
    _restart_all(cluster)
    for n in cluster.nodes:
        st = ok(n.request({"op": "auth_status"}))
        assert st["enabled"] is True
        err(n.request(rng(b"/a/1")), "user_empty")
        err(call(n, rng(b"/a/1"), tok["ra"]), "invalid_auth_token")  # tokens are memory only
    PW["wb"] = "pw-wb-2"
    try:
        node = cluster.nodes[2]
        tok2 = {u: login(node, u) for u in ("root", "ra", "wb", "rwc")}
        check_matrix(node, tok2)
    finally:
        PW["wb"] = "pw-wb"


# --- client keys (CURVE) -----------------------------------------------------------------
def _keys(tmp_path, name: str) -> tuple[bytes, bytes, str]:
    from actors.runtime import security

    d = tmp_path / "keys"
    _pub_path, sec_path = security.generate(str(d), name)
    public, secret = security.load_keypair(sec_path)
    return public, secret, sec_path


class CurveClient:
    def __init__(self, url: str, server_public: bytes, public: bytes | None = None, secret: bytes | None = None):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if public is None:
            public, secret = zmq.curve_keypair()
        self.sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
        self.sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        self.sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.sock.connect(url)

    def request(self, req: dict, timeout: float = 5.0):
        req = dict(req, id=next(_ids))
        self.sock.send(pack(req))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                return None
            reply = unpack(self.sock.recv())
            if reply.get("id") == req["id"]:
                return reply

    def close(self) -> None:
        self.sock.close()


def test_client_cert_auth_with_a_registered_key(tmp_path, node_factory):
    server_pub, _server_sec, server_key_file = _keys(tmp_path, "server")
    user_pub, user_sec, _ = _keys(tmp_path, "alice")
    node = node_factory(args=["--client-key-file", server_key_file, "--client-cert-auth"], start=False)
    node.start(wait=False)
    admin = CurveClient(node.client_url, server_pub)
    alice = None
    try:
        wait_for(lambda: (admin.request({"op": "auth_status"}, timeout=1) or {}).get("ok"), 20, "the node")
        # plain text is refused outright: no reply at all
        assert node.request({"op": "auth_status"}, timeout=1) is None
        ok(admin.request({"op": "user_add", "name": "root", "password": PW["root"]}))
        ok(admin.request({"op": "user_grant_role", "name": "root", "role": "root"}))
        ok(admin.request({"op": "auth_enable"}))
        root = ok(admin.request({"op": "authenticate", "name": "root", "password": PW["root"]}))["token"]
        ok(admin.request({"op": "user_add", "name": "alice", "no_password": True,
                          "public_key": user_pub.decode(), "token": root}))
        ok(admin.request({"op": "role_add", "name": "ra", "token": root}))
        ok(admin.request({"op": "role_grant_permission", "name": "ra", "perm": perm("READWRITE", b"/al/"),
                          "token": root}))
        ok(admin.request({"op": "user_grant_role", "name": "alice", "role": "ra", "token": root}))
        # the key is the user: no token needed (a connection made after the registration)
        alice = CurveClient(node.client_url, server_pub, user_pub, user_sec)
        ok(alice.request(put(b"/al/1")))
        ok(alice.request(rng(b"/al/1")))
        err(alice.request(put(b"/other")), "permission_denied")
        err(alice.request({"op": "user_list"}), "permission_denied")
        # an unregistered key is encrypted but nobody
        err(admin.request(rng(b"/al/1")), "user_empty")
        # a client that expects another server key never talks to this one
        impostor_pub, _ = zmq.curve_keypair()
        other = CurveClient(node.client_url, impostor_pub)
        assert other.request({"op": "auth_status"}, timeout=1) is None
        other.close()
        # the cluster's own client key is a member: status and hash_kv, nothing else
        server_sec = _server_sec
        member = CurveClient(node.client_url, server_pub, server_pub, server_sec)
        ok(member.request({"op": "hash_kv"}))
        ok(member.request({"op": "status"}))
        err(member.request(rng(b"/al/1")), "permission_denied")
        member.close()
    finally:
        admin.close()
        if alice is not None:
            alice.close()


def _pipelined_puts(url: str, token: str, count: int, window: int = 200) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        sent = done = 0
        while done < count:
            while sent < count and sent - done < window:
                sock.send(pack({"id": sent + 1, "op": "put", "key": b"/c/load/%06d" % sent, "value": b"x" * 100,
                                "token": token}))
                sent += 1
            assert sock.poll(10_000), "no reply"
            reply = unpack(sock.recv())
            assert reply["ok"], reply
            done += 1
    finally:
        sock.close()


def test_a_follower_that_installs_a_snapshot_gets_the_auth_state(cluster_factory):
    cluster = cluster_factory(3, args=["--snapshot-count", "1000"])
    leader = cluster.leader()
    lagging = next(n for n in cluster.nodes if n is not leader)
    others = [n for n in cluster.nodes if n is not lagging]
    lagging.stop()
    tok = setup_matrix(leader)
    # Every entry the stopped member holds is at or below this (it left a quiet cluster,
    # and the leader has committed the auth setup since).
    behind = ok(call(leader, {"op": "status"}, tok["root"]))["raft_index"]
    _pipelined_puts(leader.client_url, tok["rwc"], 3000)
    # It needs a snapshot only if the log is compacted past its end when it comes back,
    # else it catches up by entries. A member compacts only below what its storage has
    # synced (about once a second), so the last compaction can come after the last put;
    # wait for it on both (either may lead when the member comes back).
    wait_for(lambda: all(n.compacted_past(behind) for n in others), 60,
             f"the log compacted past index {behind} on the running members")
    lagging.start(wait=False)
    wait_for(lambda: '"snapshot_installed"' in lagging.log_text(), 60, "the follower to install a snapshot")
    # the lagging member's own storage decides serializable reads: its auth came with the snapshot
    wait_for(lambda: (lagging.request({"op": "auth_status"}, timeout=1) or {}).get("enabled"), 30,
             "auth on the lagging member")
    mine = {u: login(lagging, u) for u in ("root", "ra", "wb", "rwc")}
    ok(call(lagging, rng(b"/a/1", serializable=True), mine["ra"]))
    err(call(lagging, rng(b"/c/load/000001", serializable=True), mine["ra"]), "permission_denied")
    err(lagging.request(rng(b"/a/1", serializable=True)), "user_empty")
    check_matrix(lagging, mine)
