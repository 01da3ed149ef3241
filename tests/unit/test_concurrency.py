"""Session, Lock and Election (protocol/client/concurrency.py) against the fake gateway,
whose XPUB serves the watch protocol; and qkvctl lock / elect output shapes."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from protocol.client import Op  # noqa: E402
from protocol.client.concurrency import (  # noqa: E402
    ElectionNoLeader, ElectionNotLeader, Locked, LockTimeout, SessionExpired,
)
from protocol.client.watch import watch_topic  # noqa: E402
from nodeproc import wait_for  # noqa: E402


def test_lock_key_fencing_and_release(client, client_kit):
    with client_kit.Session(client, ttl=5) as s:
        lock = client_kit.Lock(s, "x")
        assert lock.key == f"x/{s.lease_id:x}".encode()
        with lock:
            kv = client.get(lock.key).kvs[0]
            assert kv.lease == s.lease_id and kv.create_revision == lock.revision
            cmp = lock.holds_lock()
            assert (cmp.target, cmp.result, cmp.key, cmp.operand) == ("CREATE", "EQUAL", lock.key, lock.revision)
            assert client.txn([lock.holds_lock()], [Op.put("data", "1")], []).succeeded
        assert client.get(lock.key).count == 0 and lock.revision == 0


def test_waiters_are_served_in_fifo_order_and_watch_only_their_predecessor(client, srv, client_kit):
    sessions = [client_kit.Session(client, ttl=10) for _ in range(4)]
    locks = [client_kit.Lock(s, "q") for s in sessions]
    order: list[int] = []
    try:
        locks[0].acquire()

        def waiter(i: int) -> None:
            locks[i].acquire()
            order.append(i)
            time.sleep(0.1)
            locks[i].release()

        threads = []
        for i in (1, 2, 3):  # queue up in this order (create revisions grow)
            t = threading.Thread(target=waiter, args=(i,))
            t.start()
            threads.append(t)
            deadline = time.monotonic() + 3
            while client.get("q/", prefix=True).count < i + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(0.3)
        # each waiter watches exactly one key, its predecessor's; nobody watches the prefix
        watched = srv.channels
        expected = {watch_topic(l.key, no_put=True) for l in locks[:3]}
        assert watched == expected
        assert order == []
        locks[0].release()
        for t in threads:
            t.join(10)
        assert order == [1, 2, 3]
    finally:
        for s in sessions:
            s.close()


def test_a_waiter_in_the_middle_leaving_does_not_let_the_next_one_in(client, client_kit):
    """Waiter 2 watches waiter 1; when 1 gives up, 2 re-checks and waits for 0."""
    s = [client_kit.Session(client, ttl=10) for _ in range(3)]
    try:
        l0, l1, l2 = (client_kit.Lock(x, "m") for x in s)
        l0.acquire()
        outcome: list[str] = []

        def first_waiter() -> None:
            try:
                l1.acquire(timeout=0.6)
            except LockTimeout:
                outcome.append("gave up")

        t1 = threading.Thread(target=first_waiter)
        t1.start()
        time.sleep(0.2)
        t2 = threading.Thread(target=lambda: (l2.acquire(), outcome.append("2 holds")))
        t2.start()
        t1.join(5)
        time.sleep(0.5)
        assert outcome == ["gave up"]  # 1 left the queue; 0 still holds
        l0.release()
        t2.join(5)
        assert outcome == ["gave up", "2 holds"]
    finally:
        for x in s:
            x.close()


def test_try_acquire_and_timeout(client, client_kit):
    with client_kit.Session(client, 5) as a, client_kit.Session(client, 5) as b:
        la, lb = client_kit.Lock(a, "t"), client_kit.Lock(b, "t")
        la.try_acquire()
        with pytest.raises(Locked):
            lb.try_acquire()
        assert client.get("t/", prefix=True).count == 1  # the loser left no key
        t0 = time.monotonic()
        with pytest.raises(LockTimeout):
            lb.acquire(timeout=0.5)
        assert 0.4 <= time.monotonic() - t0 < 2
        assert client.get("t/", prefix=True).count == 1


def test_expired_holder_is_fenced_out(client, srv, client_kit):
    """A holder whose lease expired (a long pause) still 'holds' the lock in its own
    memory; the fencing compare makes its write fail while the new holder's succeeds."""
    a, b = client_kit.Session(client, ttl=2), client_kit.Session(client, ttl=10)
    try:
        la, lb = client_kit.Lock(a, "f"), client_kit.Lock(b, "f")
        la.acquire()
        a.orphan()  # stop its keep-alives: the process is paused
        lb.acquire(timeout=6)  # gets it once a's lease expires
        assert not client.txn([la.holds_lock()], [Op.put("shared", "stale")], []).succeeded
        assert client.txn([lb.holds_lock()], [Op.put("shared", "fresh")], []).succeeded
        assert client.get("shared").kvs[0].value == b"fresh"
    finally:
        a.close()
        b.close()


def test_waiting_ends_when_the_session_is_lost(client, client_kit):
    a, b = client_kit.Session(client, ttl=10), client_kit.Session(client, ttl=2)
    try:
        client_kit.Lock(a, "s").acquire()
        lb = client_kit.Lock(b, "s")
        threading.Timer(0.3, lambda: client.lease_revoke(b.lease_id)).start()
        with pytest.raises(SessionExpired):
            lb.acquire(timeout=5)
    finally:
        a.close()
        b.close()


def test_client_lock_helper_owns_its_session(client):
    with client.lock("h", ttl=5) as lock:
        lid = lock.session.lease_id
        assert client.get(lock.key).count == 1
    assert client.lease_time_to_live(lid).ttl == -1  # the session was closed


def test_election_campaign_proclaim_resign_observe(client, client_kit):
    with client_kit.Session(client, 10) as s1, client_kit.Session(client, 10) as s2:
        e1, e2 = client_kit.Election(s1, "el"), client_kit.Election(s2, "el")
        with pytest.raises(ElectionNoLeader):
            e1.leader()
        obs = e1.observe()
        seen: list[tuple[bytes, bytes]] = []
        t = threading.Thread(target=lambda: [seen.append((kv.key, kv.value)) for kv in obs])
        t.start()
        e1.campaign("a")
        assert e1.leader().value == b"a"
        elected = []
        t2 = threading.Thread(target=lambda: (e2.campaign("b"), elected.append(1)))
        t2.start()
        time.sleep(0.3)
        assert elected == []
        e1.proclaim("a2")
        assert e1.leader().value == b"a2"
        with pytest.raises(ElectionNotLeader):
            client_kit.Election(s2, "other").proclaim("x")
        assert client.txn([e1.is_leader()], [], []).succeeded
        e1.resign()
        t2.join(5)
        assert elected == [1] and e1.leader().value == b"b"
        time.sleep(0.3)
        obs.cancel()
        t.join(3)
        k1, k2 = e1.prefix + f"{s1.lease_id:x}".encode(), e2.prefix + f"{s2.lease_id:x}".encode()
        assert seen == [(k1, b"a"), (k1, b"a2"), (k2, b"b")]


def test_observe_starts_with_the_current_leader(client, client_kit):
    with client_kit.Session(client, 10) as s:
        e = client_kit.Election(s, "cur")
        e.campaign("me")
        with e.observe() as obs:
            kv = obs.get(timeout=2)
            assert kv is not None and kv.value == b"me"
            assert obs.get(timeout=0.3) is None


# -- qkvctl lock / elect ---------------------------------------------------------------
def _qkvctl(srv, *args):
    return [sys.executable, "-c", "from protocol.client.cli import main; main()",
            "--endpoints", srv.address, *args]


def test_qkvctl_lock_runs_a_command_while_holding(srv):
    r = subprocess.run(_qkvctl(srv, "lock", "mylock", "sh", "-c", 'echo "$ETCD_LOCK_KEY"; exit 3'),
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert (r.returncode, r.stderr) == (1, "Error: exit status 3\n")  # etcdctl 3.4: exit 1
    assert r.stdout.startswith("mylock/") and len(r.stdout.strip()) == len("mylock/") + 16
    assert srv.store.kv == {} and srv.store.leases == {}  # released and revoked
    r = subprocess.run(_qkvctl(srv, "lock"), capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 128
    assert r.stderr == "Error: lock takes a lock name argument and an optional command to execute\n"


class _Lines:
    """A child's stdout, line by line as it comes (unbuffered child), read by a thread."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_lines(self, n: int, what: str) -> None:
        wait_for(lambda: len(self.lines) >= n, 15, what)

    def interrupt(self) -> str:
        """Ctrl-C, then everything it printed."""
        self.proc.send_signal(2)
        self.proc.wait(timeout=10)
        self._reader.join(10)
        return "".join(self.lines)


def test_qkvctl_lock_and_elect_hold_until_interrupted(srv):
    procs: list[_Lines] = []

    def start(*args: str) -> _Lines:
        procs.append(_Lines(*_qkvctl(srv, *args)))
        return procs[-1]

    try:
        lock = start("lock", "mylock")
        obs = start("elect", "-l", "el")
        p1 = start("elect", "el", "p1")
        lock.wait_lines(2, "the lock holder to print its key")
        p1.wait_lines(2, "p1 to print its leadership")
        obs.wait_lines(2, "the observer to print p1")
        p2 = start("elect", "el", "p2")
        wait_for(lambda: len(srv.store.kv) >= 3, 15, "p2 to campaign (its key)")
        out_lock, out_p1 = lock.interrupt(), p1.interrupt()
        p2.wait_lines(2, "p2 to print its leadership once p1 resigned")
        obs.wait_lines(4, "the observer to print p2")
        out_p2 = p2.interrupt()
        out_obs = obs.interrupt()
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
    assert lock.proc.returncode == 0 and out_lock.startswith("mylock/") and out_lock.endswith("\n\n")
    k1, _ = out_p1.split("\n", 1)
    assert out_p1 == f"{k1}\np1\n" and k1.startswith("el/")
    k2 = out_p2.split("\n", 1)[0]
    assert out_p2 == f"{k2}\np2\n" and k2 != k1
    assert out_obs == f"{k1}\np1\n{k2}\np2\n"
    assert srv.store.leases == {}


def test_qkvctl_elect_argument_errors(srv):
    r = subprocess.run(_qkvctl(srv, "elect", "el"), capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert (r.returncode, r.stderr) == (128, "Error: no proposal argument but -l not set\n")
