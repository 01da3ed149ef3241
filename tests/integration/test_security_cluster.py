"""A secure 3-node cluster as an operator runs it (CURVE on every port, auth on), driven
the way applications drive it: the Python client with user and password, and a raw SUB
socket written from SPEC. Users: `ra` reads /a/ only, `wb` writes /b/ only, `rwc` reads
and writes /c/. Every op kind is allowed or refused as etcd does, with etcd's messages;
then auth is switched on and off under a write load without losing or wrongly admitting
a write."""
from __future__ import annotations

import threading
import time

import pytest
import zmq

from actors.runtime import security
from actors.watch.channels import encode_topic, unpack_payload
from nodeproc import Cluster, wait_for
from protocol import errors
from protocol.client import Client, Compare, Op
from protocol.client.concurrency import Lock, Session

PW = {"root": "root-pw", "ra": "ra-pw", "wb": "wb-pw", "rwc": "rwc-pw"}
PERMS = {"ra": ("READ", "/a/"), "wb": ("WRITE", "/b/"), "rwc": ("READWRITE", "/c/")}


def prefix_end(p: bytes) -> bytes:
    return p[:-1] + bytes([p[-1] + 1])


@pytest.fixture
def secure_cluster(tmp_path):
    cluster = Cluster(tmp_path, 3, secure=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.discard()


def endpoints(cluster: Cluster) -> list[str]:
    return [n.client_url for n in cluster.nodes]


def client(cluster: Cluster, user: str | None = None, password: str | None = None, **kw) -> Client:
    creds = {"user": user, "password": password if password is not None else PW.get(user)} if user else {}
    return Client(endpoints(cluster), timeout=10, **cluster.client_options, **creds, **kw)


def enable_auth(cluster: Cluster) -> None:
    """As an operator would: root, the three users and their roles, then auth enable."""
    with client(cluster) as c:
        c.auth.user_add("root", password=PW["root"])
        c.auth.role_add("root")
        c.auth.user_grant_role("root", "root")
        for user, (perm_type, prefix) in PERMS.items():
            c.auth.user_add(user, password=PW[user])
            c.auth.role_add(f"role-{user}")
            c.auth.role_grant_permission(f"role-{user}", perm_type, prefix.encode(), prefix_end(prefix.encode()))
            c.auth.user_grant_role(user, f"role-{user}")
        for key in ("/a/1", "/b/1", "/c/1"):
            c.put(key, "v0")
        c.auth.auth_enable()


def refused(fn, exc=errors.PermissionDenied, message="etcdserver: permission denied") -> None:
    with pytest.raises(exc) as info:
        fn()
    assert info.value.message == message, info.value.message


def test_every_op_kind_on_a_secure_cluster(secure_cluster, tmp_path):
    cluster = secure_cluster
    enable_auth(cluster)
    root = client(cluster, "root")
    _, ra_key_file = security.generate(str(tmp_path / "keys"), "ra-client")
    ra = client(cluster, "ra", key_file=ra_key_file)
    wb = client(cluster, "wb")
    rwc = client(cluster, "rwc")
    try:
        # --- get and range ----------------------------------------------------------
        assert ra.get("/a/1").kvs[0].value == b"v0"
        assert ra.get("/a/", prefix=True).count == 1
        refused(lambda: ra.get("/b/1"))
        refused(lambda: ra.get("/a/", from_key=True))  # every key >= /a/: beyond the prefix
        refused(lambda: wb.get("/b/1"))  # write only
        assert rwc.get("/c/", prefix=True, serializable=True).count == 1
        # --- put and delete ---------------------------------------------------------
        refused(lambda: ra.put("/a/2", "x"))
        wb.put("/b/2", "x")
        refused(lambda: wb.put("/b/2", "y", prev_kv=True))  # prev_kv reads the old value
        refused(lambda: wb.put("/c/2", "x"))
        assert rwc.put("/c/2", "x", prev_kv=True).header.revision > 0
        wb.delete("/b/", prefix=True)
        refused(lambda: ra.delete("/a/1"))
        refused(lambda: rwc.delete("/a/1"))
        # --- txn: READ on every compare and range, WRITE on every put/delete, both branches
        ok = rwc.txn().if_(Compare.version("/c/1") > 0).then(Op.put("/c/3", "t")).else_(Op.get("/c/1")).commit()
        assert ok.succeeded
        refused(lambda: rwc.txn().if_(Compare.version("/c/1") > 0).then(Op.put("/c/3", "t"))
                .else_(Op.put("/a/1", "no")).commit())  # the untaken branch counts
        refused(lambda: rwc.txn().if_(Compare.version("/a/1") > 0).then(Op.put("/c/3", "t")).commit())
        refused(lambda: wb.txn().if_(Compare.version("/b/1") > 0).then(Op.put("/b/3", "t")).commit())
        assert ra.txn().if_(Compare.version("/a/1") > 0).then(Op.get("/a/1")).commit().succeeded
        # --- history and watch through the client -------------------------------------
        start = root.get("/a/1").kvs[0].mod_revision
        with ra.watch("/a/", prefix=True, start_revision=start) as w:
            root.put("/a/2", "w")
            seen = []
            for resp in w:
                seen += [e.kv.key for e in resp.events]
                if b"/a/2" in seen:
                    break
        assert seen[0] == b"/a/1" and b"/a/2" in seen
        refused(lambda: ra.watch("/c/", prefix=True, start_revision=1))
        refused(lambda: wb.watch("/b/", prefix=True))
        # --- watch through a raw SUB socket (SPEC alone): ra's registered key reads /a/ only
        public, secret = security.load_keypair(ra_key_file)
        ra.get("/a/1")  # authenticated with `key`: the watch ports know this key as ra
        watch_url = cluster.nodes[1].watch_url
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.linger = 0
        security.make_curve_client(sub, public, secret, cluster.security.server_public)
        sub.connect(watch_url)
        topics = {encode_topic(p, prefix_end(p)): p for p in (b"/a/", b"/b/", b"/c/")}
        everything = encode_topic(b"\x00", b"\x00")
        for t in [*topics, everything]:
            sub.subscribe(t)
        got: dict[bytes, list[bytes]] = {}

        def live_a_event() -> bool:
            root.put("/a/live", "x")
            root.put("/b/live", "x")
            root.put("/c/live", "x")
            while sub.poll(200):
                topic, payload = sub.recv_multipart()
                for e in unpack_payload(payload).get("events", []):
                    got.setdefault(topic, []).append(e["kv"]["key"])
            return bool(got.get(encode_topic(b"/a/", b"/a0")))

        wait_for(live_a_event, 30, "ra's raw SUB to get /a/ events")
        assert set(got) == {encode_topic(b"/a/", b"/a0")}, {t: v[:3] for t, v in got.items()}
        sub.close(0)
        # --- lease attach and revoke ---------------------------------------------------
        lease = rwc.lease_grant(30)
        rwc.put("/c/leased", "x", lease=lease.id)
        refused(lambda: ra.put("/a/leased", "x", lease=lease.id))
        refused(lambda: wb.lease_revoke(lease.id))  # needs write on /c/leased
        rwc.lease_revoke(lease.id)
        assert root.get("/c/leased").count == 0
        # --- lock: write and read on the lock's prefix --------------------------------
        with Session(rwc, ttl=10) as s:
            lock = Lock(s, "/c/lock").acquire(timeout=10)
            assert root.get("/c/lock", prefix=True).count == 1
            lock.release()
        refused(lambda: Lock(Session(ra, ttl=10), "/a/lock").acquire(timeout=5))
        # --- root only, no user, bad password ---------------------------------------------
        refused(lambda: rwc.auth.user_add("x", password="y"))
        refused(lambda: rwc.auth.role_grant_permission("role-rwc", "READWRITE", b"/", b"0"))
        refused(lambda: rwc.auth.auth_disable())
        refused(lambda: rwc.member_remove(cluster.nodes[0].member_id))
        refused(lambda: rwc.move_leader(cluster.nodes[0].member_id))
        assert sorted(root.auth.user_list().users) == ["ra", "root", "rwc", "wb"]
        with client(cluster) as nobody:
            refused(lambda: nobody.get("/a/1"), errors.UserEmpty, "etcdserver: user name is empty")
            assert nobody.auth.auth_status().enabled
        with client(cluster, "ra", password="wrong") as bad:
            refused(lambda: bad.get("/a/1"), errors.AuthFailed,
                    "etcdserver: authentication failed, invalid user ID or password")
    finally:
        for c in (root, ra, wb, rwc):
            c.close()


def test_auth_enable_and_disable_under_load(secure_cluster):
    """Writers as rwc (with a token), as root and as nobody, while auth goes on and off:
    rwc and root never fail for lack of rights; nobody's writes succeed only when auth is
    off; every acknowledged write reads back; no actor restarts."""
    cluster = secure_cluster
    enable_auth(cluster)
    pids = {n.name: n.actor_pids() for n in cluster.nodes}
    stop = threading.Event()
    lock = threading.Lock()
    acked: list[tuple[str, str]] = []  # (key, value) acknowledged
    anon: list[tuple[float, float, bool]] = []  # (start, end, ok) of nobody's writes
    failures: list[str] = []

    def writer(name: str, user: str | None) -> None:
        with client(cluster, user) as c:
            i = 0
            while not stop.is_set():
                key, value = f"/c/{name}/{i % 50}", f"{name}-{i}"
                t0 = time.monotonic()
                try:
                    c.put(key, value)
                    with lock:
                        acked.append((key, value))
                        if user is None:
                            anon.append((t0, time.monotonic(), True))
                except (errors.UserEmpty, errors.PermissionDenied, errors.InvalidAuthToken) as exc:
                    with lock:
                        if user is None:
                            anon.append((t0, time.monotonic(), False))
                        else:
                            failures.append(f"{name}: {exc!r}")
                except (errors.Timeout, errors.UnknownOutcome, errors.Unavailable, errors.NoLeader):
                    pass  # load on a small machine: outcome unknown, not checked
                i += 1

    threads = [threading.Thread(target=writer, args=(n, u), daemon=True)
               for n, u in (("rwc", "rwc"), ("root", "root"), ("nobody", None))]
    for t in threads:
        t.start()
    on_windows: list[tuple[float, float]] = []  # auth surely on between these times
    def acked_grows(by: int = 20) -> None:
        n = len(acked)
        wait_for(lambda: len(acked) >= n + by, 30, "writes to go through")

    def anonymous_write_succeeds() -> None:
        n = sum(1 for *_, ok in anon if ok)
        wait_for(lambda: sum(1 for *_, ok in list(anon) if ok) > n, 30, "an anonymous write to succeed")

    with client(cluster, "root") as root:
        on_since = time.monotonic()
        for _ in range(4):
            acked_grows()
            on_windows.append((on_since, time.monotonic()))
            root.auth.auth_disable()
            anonymous_write_succeeds()
            root.auth.auth_enable()
            on_since = time.monotonic()
        acked_grows()
        on_windows.append((on_since, time.monotonic()))
    stop.set()
    for t in threads:
        t.join(30)
    assert not failures, failures[:5]
    admitted = [(s, e) for s, e, ok in anon if ok and any(a <= s and e <= b for a, b in on_windows)]
    assert not admitted, f"{len(admitted)} anonymous writes succeeded while auth was on"
    assert any(not ok for *_, ok in anon), "no anonymous write was ever refused"
    print(f"{len(acked)} writes acknowledged; anonymous: {sum(ok for *_, ok in anon)} admitted with auth off, "
          f"{sum(not ok for *_, ok in anon)} refused")
    with client(cluster, "root") as root:
        for key in {k for k, _ in acked}:
            assert root.get(key).kvs, f"acknowledged write to {key} is gone"
    assert {n.name: n.actor_pids() for n in cluster.nodes} == pids
