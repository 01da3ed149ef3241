"""The HTTP side of the metrics actor: `/metrics`, `/health`, `/livez`, `/readyz` on every URL
of `--listen-metrics-urls` (http.server, one thread per connection).

Every socket here takes input from anyone who reaches the port. Bounds:
- at most MAX_CONNECTIONS connections at once (over every URL); one more is answered 503 and
  closed at once, without reading it;
- a connection's socket times out after SOCKET_TIMEOUT_S without a byte, and is cut after
  CONNECTION_LIFETIME_S whatever it does (a client trickling one byte at a time, or keeping
  its connection with a request every few seconds, holds a slot no longer than that);
- a request's line and headers are read through a budget of REQUEST_HEAD_MAX bytes
  (the stdlib alone allows 100 headers of 64 KiB); more gets 431;
- GET and HEAD for /metrics; GET only for the health endpoints (405 otherwise, as etcd);
  no request body is ever read.
"""
from __future__ import annotations

import gzip
import http.server
import os
import socket
import socketserver
import sys
import threading
import time
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client import multiprocess

from actors.metrics import health
from actors.metrics.processes import NodeProcessCollector
from actors.runtime import metrics as M

MAX_CONNECTIONS = 16
SOCKET_TIMEOUT_S = 5.0
CONNECTION_LIFETIME_S = 30.0
REQUEST_HEAD_MAX = 16 * 1024
GZIP_MIN_BYTES = 1024  # a smaller answer is sent as it is

# The health checks' own counters (etcd's names; etcd's /health and its livez/readyz checks
# count the same). The metrics actor is their one writer.
health_success = Counter("etcd_server_health_success", "The total number of successful health checks")
health_failures = Counter("etcd_server_health_failures", "The total number of failed health checks")
healthchecks = Counter("etcd_server_healthchecks", "The total number of each kind of healthcheck.",
                       ["type", "name", "status"])

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n")


def metrics_registry() -> CollectorRegistry:
    """Every process of the node, summed (multiprocess mode), or this process's own metrics
    when the node runs without PROMETHEUS_MULTIPROC_DIR (tests of parts)."""
    path = os.environ.get(M.MULTIPROC_ENV)
    if not path:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    registry.register(NodeProcessCollector(os.getppid()))  # process_*: etcd's per-process metrics, node-wide
    return registry


class _HeadBudget:
    """The connection's reader, with a byte budget for one request's line and headers: past
    it, reads return b"" (the stdlib then sees the head end) and `exhausted` is set."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.left = REQUEST_HEAD_MAX
        self.exhausted = False

    def reset(self) -> None:
        self.left = REQUEST_HEAD_MAX
        self.exhausted = False

    def readline(self, limit: int = -1) -> bytes:
        if self.left <= 0:
            self.exhausted = True
            return b""
        want = self.left if limit < 0 else min(limit, self.left)
        line = self.raw.readline(want)
        self.left -= len(line)
        if self.left <= 0 and not line.endswith(b"\n"):
            self.exhausted = True
        return line

    def read(self, n: int = -1) -> bytes:
        return b""  # no endpoint reads a body

    def close(self) -> None:
        self.raw.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class Handler(http.server.BaseHTTPRequestHandler):
    server: "MetricsServer"
    protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus scrapes
    timeout = SOCKET_TIMEOUT_S
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def version_string(self) -> str:
        return "qkv"

    def setup(self) -> None:
        super().setup()
        self.rfile = _HeadBudget(self.rfile)  # type: ignore[assignment]  # a reader with the same methods

    def handle_one_request(self) -> None:
        self.rfile.reset()  # type: ignore[attr-defined]
        super().handle_one_request()

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.rfile.exhausted:  # type: ignore[attr-defined]
            self.close_connection = True
            self.send_error(431, "Request Header Fields Too Large")
            return False
        if "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
            self.close_connection = True  # a body we will not read must not be taken for a request
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The stdlib quotes the bad request line in its message: keep an echo short.
        super().send_error(code, message[:120] if message else message, None)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no line per scrape; failures are logged by the actor

    # --- routing -------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def _not_allowed(self) -> None:
        self._send(health.method_not_allowed())

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _route(self, head: bool) -> None:
        target = self.path
        if target.startswith(("http://", "https://")):  # the absolute form (RFC 9112 3.2.2)
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path, _, query = target.partition("?")
        if path == "/metrics":
            self._metrics(head)
            return
        kind, _, check = path.lstrip("/").partition("/")
        if path == "/health" or path in ("/livez", "/readyz") or check in health.CHECKS.get(kind, ()):
            if head:
                self._send(health.method_not_allowed(), head=True)
            elif path == "/health":
                self._send(self.server.app.answer_health(health.parse_query(query)))
            else:
                self._send(self.server.app.answer_checks(kind, check, health.parse_query(query)))
            return
        self._send(health.not_found(), head=head)

    def _metrics(self, head: bool) -> None:
        body = self.server.app.metrics()
        headers = [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)]  # the text format, as etcd serves it
        if len(body) >= GZIP_MIN_BYTES and "gzip" in self.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        self._send(health.Answer(200, tuple(headers), body), head=head)

    def _send(self, answer: health.Answer, head: bool = False) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if not head:
            self.wfile.write(answer.body)


class App:
    """What the endpoints answer; the actor gives it a probe (actors/metrics/probe.py)."""

    def __init__(self, observe: Callable[[bool, bool], health.Observation]) -> None:
        self._observe = observe
        self.registry = metrics_registry()
        self._probing = 0
        self._lock = threading.Lock()

    def observe(self, consensus: bool, linearizable: bool) -> health.Observation:
        # Counted before the probe looks at the actor's stop flag: the actor sets the flag,
        # then waits for `probing()` to reach 0 before it destroys the zmq context.
        with self._lock:
            self._probing += 1
        try:
            return self._observe(consensus, linearizable)
        finally:
            with self._lock:
                self._probing -= 1

    def probing(self) -> int:
        """How many probes are running (in handler threads)."""
        return self._probing

    def metrics(self) -> bytes:
        return generate_latest(self.registry)

    def answer_health(self, query: health.Query) -> health.Answer:
        obs = self.observe(True, not query.serializable)
        healthy, reason = health.health_verdict(obs, query.exclude, query.serializable)
        (health_success if healthy else health_failures).inc()
        return health.health_answer(healthy, reason)

    def answer_checks(self, kind: str, check: str, query: health.Query) -> health.Answer:
        names = (check,) if check else health.select_checks(kind, query.exclude)
        obs = self.observe("non_learner" in names, "linearizable_read" in names)
        results = health.check_results(obs, names)
        for name, error in results:
            healthchecks.labels(kind, name, "success" if error is None else "error").inc()
        return health.checks_answer(results, query.verbose)


class MetricsServer(http.server.ThreadingHTTPServer):
    """One listening URL. `slots` is shared by every URL of the actor."""
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, app: App, slots: threading.BoundedSemaphore,
                 on_error: Callable[[str], None]) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.app = app
        self.slots = slots
        self.on_error = on_error
        self._conns: dict[socket.socket, float] = {}  # open connection -> when it is cut
        self._conns_lock = threading.Lock()
        super().__init__((host, port), Handler)

    def server_bind(self) -> None:
        # HTTPServer's own also asks the resolver for the host's FQDN (socket.getfqdn), which
        # nothing here uses and which can hang on a host without working DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._conns_lock:
            self._conns[request] = time.monotonic() + CONNECTION_LIFETIME_S
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._conns_lock:
            if self._conns.pop(request, None) is None:
                return
        self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            return  # the client went away or was too slow: nothing to say
        self.on_error(f"{type(exc).__name__}: {exc}"[:300])

    def cut_expired(self) -> int:
        """Cut connections older than CONNECTION_LIFETIME_S (their threads then end); how many."""
        now = time.monotonic()
        with self._conns_lock:
            expired = [conn for conn, at in self._conns.items() if at <= now]
        for conn in expired:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(expired)
