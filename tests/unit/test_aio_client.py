"""AsyncClient's own transport against the in-process fake gateway (tests/fakeserver.py):
many requests in flight on one socket per endpoint, could-not-connect vs sent-no-reply,
late replies dropped, a broken reply stream, auth, close, auto-sync. (The behavioural
client tests run over both clients through tests/aioclient.py.)"""
from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading

import pytest
import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from fakeserver import MEMBER_ID, FakeServer  # noqa: E402
from protocol import errors  # noqa: E402
from protocol.client import AsyncClient, Client, Compare, Op  # noqa: E402
from protocol.codec import pack, unpack  # noqa: E402


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def until(cond, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def dead_endpoint() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"tcp://127.0.0.1:{port}"


@pytest.fixture
def srv():
    with FakeServer() as s:
        yield s


def test_kv_helpers_and_txn(srv):
    async def main():
        async with AsyncClient([srv.endpoint], timeout=3) as c:
            assert (await c.put("a", "1")).header.revision == 2
            assert (await c.get("a", timeout=1)).kvs[0].value == b"1"
            assert await c.put_if_not_exists("a", "2") is False
            assert await c.put_if_not_exists("b", "2") is True
            assert await c.replace("a", "1", "3") is True
            assert await c.replace("a", "1", "4") is False
            assert [kv.key for kv in (await c.get_prefix("")).kvs] == [b"a", b"b"]
            t = await c.txn().if_(Compare.value("a") == b"3").then(Op.put("c", "x")).commit()
            assert t.succeeded
            assert (await c.txn([Compare.version("c") == 1], [Op.get("c")], [])).succeeded
            assert (await c.delete_prefix("", prev_kv=True)).deleted == 3
            assert (await c.status()).header.member_id
            assert (await c.request({"op": "range", "key": b"a"}))["ok"] is True
            assert c.requests_sent == 12
    run(main())


def test_many_tasks_one_socket_ordered_per_task(srv):
    async def task(c: AsyncClient, i: int) -> list[int]:
        revs = []
        for j in range(10):
            revs.append((await c.put(f"t{i}", str(j))).header.revision)
        got = (await c.get(f"t{i}")).kvs[0].value
        assert got == b"9"
        return revs

    async def main():
        async with AsyncClient([srv.endpoint], timeout=10, max_in_flight=8) as c:
            results = await asyncio.gather(*(task(c, i) for i in range(200)))
            for revs in results:
                assert revs == sorted(revs) and len(set(revs)) == 10
            assert len(c._conns) == 1
            conn = next(iter(c._conns.values()))
            assert conn.pending == {} and conn.sem._value == 8
    run(main())


def test_could_not_connect_vs_sent_no_reply(srv):
    async def main():
        async with AsyncClient([dead_endpoint(), srv.endpoint], timeout=2) as c:
            await c.put("k", "v")  # nothing left for the dead one: the write went on
            assert srv.ops_received("put") == 1
        async with AsyncClient([dead_endpoint()], timeout=0.5) as c:
            with pytest.raises(errors.Unavailable, match="could not connect"):
                await c.put("k", "v")
            assert c.requests_sent == 0
        srv.drop_replies = True
        async with AsyncClient([srv.endpoint, srv.endpoint], timeout=0.5) as c:
            with pytest.raises(errors.Timeout) as ei:
                await c.put("k", "w")
            assert ei.value.details.get("outcome_unknown") is True
            assert srv.ops_received("put") == 2 and c.requests_sent == 1  # never re-sent
    run(main())


def test_late_reply_dropped(srv):
    async def main():
        async with AsyncClient([srv.endpoint], timeout=2) as c:
            await c.put("k", "v1")
            srv.delay_s = 0.6
            sent = srv.replies_sent
            with pytest.raises(errors.Timeout):
                await c.get("k", timeout=0.3)
            srv.delay_s = 0.0
            await until(lambda: srv.replies_sent > sent, 5, "the late reply")  # arrives, dropped
            await c.put("k", "v2")
            assert (await c.get("k")).kvs[0].value == b"v2"
            assert next(iter(c._conns.values())).pending == {}
    run(main())


class Garbage:
    """A ROUTER answering every request with bytes that are not msgpack."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.sock.poll(50):
                frames = self.sock.recv_multipart()
                req = unpack(frames[-1])
                self.sock.send_multipart([frames[0], b"\xc1not msgpack"])
                self.sock.send_multipart([frames[0], pack({"id": req["id"] + 1, "ok": True})])

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()
        self.ctx.term()


def test_broken_reply_stream_is_a_clear_error():
    g = Garbage()
    try:
        async def main():
            async with AsyncClient([g.endpoint], timeout=2) as c:
                for _ in range(2):  # the reader survives, the socket is replaced
                    with pytest.raises(errors.Internal, match="undecodable reply"):
                        await c.get("k")
        run(main())
    finally:
        g.close()


class IdLess(Garbage):
    """A ROUTER that waits for two requests, then answers one error reply without an id
    (as a server does for a frame it cannot decode)."""

    def run(self) -> None:
        got = []
        while not self.stop.is_set():
            if self.sock.poll(50):
                got.append(self.sock.recv_multipart())
                if len(got) == 2:
                    self.sock.send_multipart([got[0][0], pack(
                        {"ok": False, "error": {"code": "malformed", "message": "bad frame"}})])


def test_an_error_without_id_never_tells_a_write_it_failed_for_sure():
    g = IdLess()
    try:
        async def main():
            async with AsyncClient([g.endpoint], timeout=2) as c:
                put = asyncio.ensure_future(c.put("k", "v"))
                get = asyncio.ensure_future(c.get("k"))
                for fut in (put, get):
                    with pytest.raises(errors.Internal) as exc:
                        await fut
                    assert "outcome of each request then in flight is unknown" in exc.value.message
                    assert exc.value.details.get("outcome_unknown") is True
        run(main())
    finally:
        g.close()


def test_auth_tokens_and_reauth(srv):
    srv.enable_auth()

    async def main():
        async with AsyncClient([srv.endpoint], timeout=3, user="root", password="rootpw") as c:
            await asyncio.gather(*(c.put(f"k{i}", "v") for i in range(20)))
            assert c._security.authentications == 1  # one task authenticated for all
            srv.forget_tokens()
            await asyncio.gather(*(c.get(f"k{i}") for i in range(5)))
            assert c._security.authentications == 2
            assert await c._refresh_token() and c._security.authentications == 3
            await c.auth.user_add("eve", "evepw")
            assert "eve" in (await c.auth.user_list()).users
            assert (await c.auth.authenticate("eve", "evepw")).token
            assert (await c.auth.auth_status()).enabled
        async with AsyncClient([srv.endpoint], timeout=3, user="root", password="bad") as c:
            with pytest.raises(errors.AuthFailed):
                await c.get("k")
    run(main())


def test_close_fails_waiting_requests_and_later_calls(srv):
    async def main():
        c = AsyncClient([srv.endpoint], timeout=5)
        await c.put("k", "v")
        srv.delay_s = 2.0
        waiting = asyncio.ensure_future(c.get("k"))
        await until(lambda: any(conn.pending for conn in c._conns.values()), 5, "the get in flight")
        await c.close()
        with pytest.raises(errors.Unavailable):
            await waiting
        with pytest.raises(errors.Unavailable):
            await c.get("k")
    run(main())


def test_one_event_loop_only(srv):
    c = AsyncClient([srv.endpoint], timeout=2)

    async def main():
        await c.put("k", "v")
        await c.close()
    run(main())
    with pytest.raises(RuntimeError, match="event loop"):
        run(c.get("k"))


class Members(FakeServer):
    """A fake that answers member_list with ``self.members``."""
    members: list = []

    def _serve(self, op, auth):
        if op["op"] == "member_list":
            return {"members": list(self.members)}, None, self.store.revision
        return super()._serve(op, auth)


def member(name: str, url: str, learner: bool = False) -> dict:
    return {"id": MEMBER_ID, "name": name, "peer_urls": [], "client_urls": [url],
            "watch_urls": [], "is_learner": learner}


@pytest.mark.parametrize("aio", [False, True])
def test_sync_and_auto_sync(aio):
    with Members() as a, Members() as b:
        a.members = b.members = [member("a", a.endpoint), member("b", b.endpoint.replace("127.0.0.1", "0.0.0.0")),
                                 member("", "tcp://unstarted:1"), member("l", "tcp://learner:1", True)]
        want = [a.endpoint, b.endpoint]

        if not aio:
            with Client([a.endpoint], timeout=2) as c:
                assert c.sync() == want and c.endpoints == want
            with Client([a.endpoint], timeout=2, auto_sync_interval=0.05) as c:
                from nodeproc import wait_for
                wait_for(lambda: c.endpoints == want, 10, "auto-sync")
                a.members = b.members = [member("b", b.endpoint)]
                wait_for(lambda: c.endpoints == [b.endpoint], 10, "auto-sync drops a")
                a.stop()
                assert c.get("k").count == 0  # the removed member is not asked
            return

        async def main():
            async with AsyncClient([a.endpoint], timeout=2) as c:
                assert await c.sync() == want and c.endpoints == want
            async with AsyncClient([a.endpoint], timeout=2, auto_sync_interval=0.05) as c:
                for _ in range(200):
                    if c.endpoints == want:
                        break
                    await asyncio.sleep(0.05)
                assert c.endpoints == want
                await c.get("k")
                a.members = b.members = [member("b", b.endpoint)]
                for _ in range(200):
                    if c.endpoints == [b.endpoint]:
                        break
                    await asyncio.sleep(0.05)
                assert c.endpoints == [b.endpoint]
                assert a.endpoint not in c._conns  # its socket was closed
                a.stop()
                assert (await c.get("k")).count == 0
        run(main())


def test_curve_and_handshake_errors():
    async def main(ep, key, user=None):
        async with AsyncClient([ep], timeout=1, server_key=key, user=user,
                               password="rootpw" if user else None) as c:
            await c.put("k", "v")
            return (await c.get("k")).kvs[0].value

    with FakeServer(curve=True) as s:
        s.enable_auth()
        assert run(main(s.endpoint, s.server_key, "root")) == b"v"
    with FakeServer(curve=True, impostor=True) as fake:
        with pytest.raises(errors.Unavailable, match="CURVE handshake"):
            run(main(fake.endpoint, fake.server_key))
    with FakeServer() as plain:
        with pytest.raises(errors.Unavailable, match="does not speak CURVE"):
            run(main(plain.endpoint, zmq.curve_keypair()[0]))


def test_per_call_timeout_on_both_clients(srv):
    srv.delay_s = 0.5
    with Client([srv.endpoint], timeout=5) as c:
        with pytest.raises(errors.Timeout):
            c.get("k", timeout=0.1)
        assert c.get("k", timeout=3).count == 0  # the late reply to the first was dropped
        with pytest.raises(ValueError):
            c.status(timeout=0)

    async def main():
        async with AsyncClient([srv.endpoint], timeout=5) as c:
            with pytest.raises(errors.Timeout):
                await c.get("k", timeout=0.1)
            assert (await c.get("k", timeout=3)).count == 0
    run(main())
