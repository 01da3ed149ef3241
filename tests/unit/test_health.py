"""The health verdicts and answers (actors/metrics/health.py, pure) against etcd's, and the
HTTP server's bounds (actors/metrics/server.py) on a loopback port with a fake probe.

etcd's answers were checked against /usr/bin/etcd 3.4.23 (see the module docstring of
health.py for the one difference we keep: the `reason` field of etcd 3.5)."""
from __future__ import annotations

import http.client
import json
import socket
import threading

import pytest

from actors.metrics import health, server
from actors.metrics.health import Observation, Query
from nodeproc import free_port, wait_for

OK = Observation(alarms=(), leader=7, is_learner=False, serializable_error=None, linearizable_error=None)


def obs(**changes) -> Observation:
    return Observation(**{**OK.__dict__, **changes})


# --- /health verdicts ------------------------------------------------------------------
@pytest.mark.parametrize("observation, exclude, serializable, verdict", [
    (OK, frozenset(), False, (True, "")),
    (obs(alarms=("NOSPACE",)), frozenset(), False, (False, "ALARM NOSPACE")),
    (obs(alarms=("NOSPACE",)), frozenset({"NOSPACE"}), False, (True, "")),
    (obs(alarms=("CORRUPT",)), frozenset({"NOSPACE"}), False, (False, "ALARM CORRUPT")),
    (obs(alarms=("NOSPACE", "CORRUPT")), frozenset({"NOSPACE"}), False, (False, "ALARM CORRUPT")),
    (obs(alarms=("WHATEVER",)), frozenset(), False, (False, "ALARM UNKNOWN")),
    # alarms come first, then the leader, then the read
    (obs(alarms=("NOSPACE",), leader=0), frozenset(), False, (False, "ALARM NOSPACE")),
    (obs(leader=0, linearizable_error="etcdserver: no leader"), frozenset(), False, (False, "RAFT NO LEADER")),
    (obs(leader=0, linearizable_error="etcdserver: no leader"), frozenset(), True, (True, "")),
    (obs(linearizable_error=health.TIMED_OUT), frozenset(), False,
     (False, "RANGE ERROR:etcdserver: request timed out")),
    (obs(linearizable_error=health.TIMED_OUT), frozenset(), True, (True, "")),
    (obs(alarms=None, serializable_error=health.TIMED_OUT, linearizable_error=health.TIMED_OUT), frozenset(), True,
     (False, "RANGE ERROR:etcdserver: request timed out")),
    # consensus silent: no leader known either way; the read decides
    (obs(leader=None, linearizable_error=health.TIMED_OUT), frozenset(), False,
     (False, "RANGE ERROR:etcdserver: request timed out")),
])
def test_health_verdict_follows_etcds_order(observation, exclude, serializable, verdict):
    assert health.health_verdict(observation, exclude, serializable) == verdict


def test_no_alarm_is_excluded_by_default():
    for alarm in ("NOSPACE", "CORRUPT"):
        assert health.health_verdict(obs(alarms=(alarm,)), health.parse_query("").exclude, False)[0] is False


def test_query_parsing_as_gos_url_query():
    assert health.parse_query("") == Query(frozenset(), False, False)
    assert health.parse_query("exclude=NOSPACE&exclude=CORRUPT&exclude=") == \
        Query(frozenset({"NOSPACE", "CORRUPT"}), False, False)
    assert health.parse_query("serializable=true").serializable
    assert not health.parse_query("serializable=True").serializable
    assert not health.parse_query("serializable=1").serializable
    assert health.parse_query("serializable=true&serializable=false").serializable  # Get: the first
    assert health.parse_query("verbose").verbose and health.parse_query("verbose=0").verbose
    assert health.parse_query("exclude=%4EOSPACE").exclude == {"NOSPACE"}
    many = "&".join(f"exclude=a{i}" for i in range(10_000))
    assert len(health.parse_query(many).exclude) <= health.MAX_FIELDS


# --- answers, byte for byte ------------------------------------------------------------
def test_health_answers_as_etcd():
    ok = health.health_answer(True, "")
    assert (ok.status, ok.body) == (200, b'{"health":"true","reason":""}')
    assert dict(ok.headers) == {"Content-Type": "text/plain; charset=utf-8"}
    bad = health.health_answer(False, "RAFT NO LEADER")
    assert (bad.status, bad.body) == (503, b'{"health":"false","reason":"RAFT NO LEADER"}\n')
    assert dict(bad.headers) == {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}
    assert health.health_answer(False, "RANGE ERROR:<&>").body == \
        b'{"health":"false","reason":"RANGE ERROR:\\u003c\\u0026\\u003e"}\n'
    assert json.loads(bad.body) == {"health": "false", "reason": "RAFT NO LEADER"}
    refused = health.method_not_allowed()
    assert (refused.status, refused.body, dict(refused.headers)["Allow"]) == (405, b"Method Not Allowed\n", "GET")
    assert health.not_found().body == b"404 page not found\n"


def test_check_answers_as_etcd():
    results = health.check_results(OK, health.READYZ_CHECKS)
    assert health.checks_answer(results, verbose=False).body == b"ok\n"
    assert health.checks_answer(results, verbose=True).body == (
        b"[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\nok\n")
    failing = health.check_results(obs(alarms=("CORRUPT",), is_learner=True, linearizable_error="etcdserver: no leader"),
                                   health.READYZ_CHECKS)
    answer = health.checks_answer(failing, verbose=False)
    assert answer.status == 503
    assert answer.body == (b"[-]data_corruption failed: alarm activated: CORRUPT\n[+]serializable_read ok\n"
                           b"[-]linearizable_read failed: etcdserver: no leader\n"
                           b"[-]non_learner failed: not supported for learner\n\n")
    assert dict(answer.headers)["X-Content-Type-Options"] == "nosniff"


def test_check_selection():
    assert health.select_checks("livez", frozenset()) == ("serializable_read",)
    assert health.select_checks("readyz", frozenset({"linearizable_read", "no_such_check"})) == (
        "data_corruption", "serializable_read", "non_learner")
    assert health.needs(("serializable_read",)) == (True, False)
    assert health.needs(health.READYZ_CHECKS) == (True, True)


# --- the HTTP server's bounds ----------------------------------------------------------
class FakeProbe:
    def __init__(self) -> None:
        self.observation = OK
        self.release = threading.Event()
        self.release.set()
        self.calls: list[tuple[bool, bool]] = []

    def __call__(self, consensus: bool, linearizable: bool) -> Observation:
        self.calls.append((consensus, linearizable))
        self.release.wait(10)
        return self.observation


@pytest.fixture
def http_server():
    probe = FakeProbe()
    errors: list[str] = []
    srv = server.MetricsServer("127.0.0.1", free_port(), server.App(probe),
                               threading.BoundedSemaphore(server.MAX_CONNECTIONS), errors.append)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv, probe, errors
    finally:
        probe.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def get(srv, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_endpoints_answer_through_the_server(http_server):
    srv, probe, errors = http_server
    status, headers, body = get(srv, "/health")
    assert (status, body) == (200, b'{"health":"true","reason":""}')
    assert probe.calls[-1] == (True, True)
    get(srv, "/health?serializable=true")
    assert probe.calls[-1] == (True, False)
    assert get(srv, "/livez")[2] == b"ok\n" and probe.calls[-1] == (False, False)
    assert get(srv, "/readyz/linearizable_read")[2] == b"ok\n" and probe.calls[-1] == (False, True)
    probe.observation = obs(leader=0)
    status, headers, body = get(srv, "/health")
    assert (status, body) == (503, b'{"health":"false","reason":"RAFT NO LEADER"}\n')
    assert get(srv, "/health", "HEAD")[0] == 405
    assert get(srv, "/health", "POST")[0] == 405
    assert get(srv, "/readyz", "DELETE")[0] == 405
    assert get(srv, "/nothing")[0:3:2] == (404, b"404 page not found\n")
    assert get(srv, "/readyz/nothing")[0] == 404
    status, headers, body = get(srv, "/metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b"etcd_server_health_failures" in body or b"# HELP" in body
    status, headers, head_body = get(srv, "/metrics", "HEAD")
    assert status == 200 and head_body == b"" and int(headers["Content-Length"]) > 0
    status, headers, gz = get(srv, "/metrics", headers={"Accept-Encoding": "gzip"})
    if len(body) >= server.GZIP_MIN_BYTES:
        import gzip

        assert headers["Content-Encoding"] == "gzip" and gzip.decompress(gz).startswith(b"# HELP")
    assert errors == []


def test_connections_beyond_the_bound_get_503_and_are_closed(http_server):
    srv, probe, _ = http_server
    probe.release.clear()  # every /health now waits in the probe, holding its connection
    holders = []
    try:
        for _ in range(server.MAX_CONNECTIONS):
            s = socket.create_connection(srv.server_address[:2], timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            holders.append(s)
        wait_for(lambda: len(probe.calls) == server.MAX_CONNECTIONS, 10, "every connection to be in its probe")
        extra = socket.create_connection(srv.server_address[:2], timeout=10)
        data = b""
        while chunk := extra.recv(4096):
            data += chunk
        extra.close()
        assert data.startswith(b"HTTP/1.1 503 ") and data.endswith(b"too many connections\n")
    finally:
        probe.release.set()
        for s in holders:
            s.close()
    # the slots come back: a new connection is served again
    wait_for(lambda: get(srv, "/livez")[0] == 200, 10, "a slot to be free again")


def test_a_huge_request_head_gets_431_and_memory_stays_bounded(http_server):
    srv, _, errors = http_server
    s = socket.create_connection(srv.server_address[:2], timeout=10)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\n")
        try:
            for i in range(20):  # 20 headers of 1 KiB, past the 16 KiB budget
                s.sendall(b"X-" + str(i).encode() + b": " + b"a" * 1024 + b"\r\n")
            s.sendall(b"\r\n")
        except OSError:
            pass  # the server may close first
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 431 "), data[:100]
    finally:
        s.close()
    assert get(srv, "/livez")[0] == 200
    assert errors == []


def test_a_silent_or_trickling_client_loses_its_connection(http_server, monkeypatch):
    srv, _, _ = http_server
    monkeypatch.setattr(server, "CONNECTION_LIFETIME_S", 0.5)
    s = socket.create_connection(srv.server_address[:2], timeout=10)
    try:
        s.sendall(b"GET /he")  # and nothing more; sent more often than the socket timeout

        def cut() -> bool:
            srv.cut_expired()
            try:
                s.sendall(b"a")
                s.setblocking(False)
                try:
                    return s.recv(1) == b""
                except BlockingIOError:
                    return False
                finally:
                    s.setblocking(True)
            except OSError:
                return True

        wait_for(cut, 10, "the connection to be cut", interval=0.1)
    finally:
        s.close()
    wait_for(lambda: get(srv, "/livez")[0] == 200, 10, "the slot to be free again")


def test_keep_alive_serves_several_requests_and_a_body_closes_the_connection(http_server):
    srv, _, _ = http_server
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
    try:
        for _ in range(3):
            conn.request("GET", "/livez")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b"ok\n"
    finally:
        conn.close()
    s = socket.create_connection(srv.server_address[:2], timeout=10)
    try:  # a body is never read: it must not be parsed as a second request
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\nGET /nothing HTTP/1.1\r\n\r\n....")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data.count(b"HTTP/1.1 ") == 1 and data.endswith(b"ok\n")
    finally:
        s.close()


@pytest.mark.parametrize("raw, first_line", [
    (b"\x00" * 100_000, b"400 Bad request syntax"),  # no status line: the stdlib takes it for HTTP/0.9
    (b"GET " + b"/a" * 50_000 + b" HTTP/1.1\r\n\r\n", b"431 "),
    (b"GET\r\n\r\n", b"400 "),
    (b"GET /metrics HTTP/9.9\r\n\r\n", b"505 "),
    (b"FOO / HTTP/1.1\r\n\r\n", b"HTTP/1.1 501 "),
    (b"GET /health?exclude=%ZZ&serializable=%00 HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 "),
    (b"GET /health HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n", b"HTTP/1.1 200 "),
    (b"GET http://x/livez HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 "),
    (b"GET /health HTTP/1.1\r\n" + b"a: b\r\n" * 150 + b"\r\n", b"HTTP/1.1 431 "),
])
def test_garbage_is_answered_briefly_and_the_server_goes_on(http_server, raw, first_line):
    srv, _, errors = http_server
    s = socket.create_connection(srv.server_address[:2], timeout=10)
    data = b""
    try:
        try:
            s.sendall(raw)
        except OSError:
            pass  # closed by the server before all of it was sent
        try:
            while chunk := s.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and not data.startswith(b"HTTP/1.1 200"):
                    break
                if data.startswith(b"HTTP/1.1 200") and data.endswith((b"}", b"ok\n")):
                    break
        except ConnectionResetError:
            pass
    finally:
        s.close()
    assert data.startswith(first_line), data[:200]
    assert len(data) < 1024  # an error never echoes the request at length
    assert get(srv, "/livez")[0] == 200
    assert errors == []
