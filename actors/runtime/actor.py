"""The event loop every actor shares.

One zmq.Context per process, created here after the process started (never inherited
across fork). One thread: a Poller over the actor's sockets, timers, and a `flush()`
hook that runs after every batch of received messages, so actors can batch work (one
fsync, one storage write, one send for many requests). Handlers drain their socket with
non-blocking receives (far faster than one poll per message).

The actor stops cleanly on SIGTERM/SIGINT, and on its own when the supervisor that
started it disappears (PR_SET_PDEATHSIG plus a parent-pid check), so a `kill -9` of the
supervisor leaves no orphans.

Every HEARTBEAT_INTERVAL_S the loop itself (a timer, not a thread) sends the supervisor a
HEARTBEAT with the actor's `heartbeat_status()`: a loop that is wedged (a handler that
never returns, a SIGSTOP) stops sending them, and the supervisor stops the systemd
watchdog pings (nodes/supervisor.py). The heartbeat socket is one PUSH with a tiny
high-water mark, sent NOBLOCK: a supervisor that does not read never blocks an actor, and
beats it missed are simply gone (only the latest one matters).
"""
from __future__ import annotations

import ctypes
import errno
import heapq
import itertools
import os
import signal
import time
from typing import Any, Callable, cast

import zmq

from actors.runtime import log as runtime_log
from actors.runtime import messages as M
from actors.runtime import security
from actors.runtime import wire
from nodes.config import Config
from nodes.endpoints import Endpoints

DRAIN_MAX = 2048  # messages taken from one socket before other sockets get a turn
HEARTBEAT_INTERVAL_S = 0.25  # nodes/supervisor.py HEARTBEAT_STALE_S must be several of these
HEARTBEAT_HWM = 4  # heartbeats queued for a supervisor that is not reading; more are dropped


def _set_parent_death_signal() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Actor:
    role = "actor"

    def __init__(self, cfg: Config, endpoints: Endpoints) -> None:
        self.cfg = cfg
        self.endpoints = endpoints
        self.log = runtime_log.configure(cfg.log_level, cfg.log_format, node=cfg.name, actor=self.role)
        self.ctx = zmq.Context()
        self.poller = zmq.Poller()
        self._socket_handlers: dict[zmq.Socket, Callable[..., None]] = {}
        self._with_user: set[zmq.Socket] = set()
        self._with_peer: set[zmq.Socket] = set()
        self._raw: set[zmq.Socket] = set()
        self._authenticators: list[security.KeyAuthenticator] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.stopping = False
        self._supervisor_pid = int(os.environ.get("QKV_SUPERVISOR_PID", "0"))
        self._supervisor_sock: zmq.Socket | None = None

    # --- sockets -------------------------------------------------------------------
    def socket(
        self,
        kind: int,
        *,
        bind: str | list[str] | None = None,
        connect: str | None = None,
        handler: Callable[..., None] | None = None,  # its arguments: see below
        hwm: int = 100_000,
        curve_server: tuple[bytes, bytes, str] | None = None,
        curve_client: tuple[bytes, bytes, bytes] | None = None,
        with_user: bool = False,
        with_peer: bool = False,
        raw: bool = False,
        **options: Any,
    ) -> zmq.Socket:
        """A socket in this actor's poller. `curve_server=(public, secret, zap_domain)` or
        `curve_client=(public, secret, server_public)` make it CURVE (runtime/security.py).
        `with_user=True`: the handler is called as `handler(frames, user_id)`, user_id being
        the ZAP User-Id of the connection the message came on ("" without one).
        `with_peer=True` (implies with_user): `handler(frames, user_id, peer_address)`, the
        connection's remote address as libzmq reports it ("" when it has none).
        `raw=True`: `handler(frames)` with the message's zmq.Frame objects (copy=False),
        for a handler that reads more of their properties itself."""
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        if kind == zmq.ROUTER:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply that cannot go raises, never vanishes
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        if curve_server is not None:
            security.make_curve_server(sock, *curve_server)
        if curve_client is not None:
            security.make_curve_client(sock, *curve_client)
        for url in [bind] if isinstance(bind, str) else (bind or []):
            sock.bind(url)
        if connect:
            sock.connect(connect)
        if handler is not None:
            self._socket_handlers[sock] = handler
            if with_user or with_peer:
                self._with_user.add(sock)
            if with_peer:
                self._with_peer.add(sock)
            if raw:
                self._raw.add(sock)
            self.poller.register(sock, zmq.POLLIN)
        return sock

    def close_socket(self, sock: zmq.Socket) -> None:
        """Stop polling a socket made by `socket()` and close it."""
        if sock in self._socket_handlers:
            self.poller.unregister(sock)
            del self._socket_handlers[sock]
        self._with_user.discard(sock)
        self._with_peer.discard(sock)
        self._raw.discard(sock)
        sock.close(0)

    def start_authenticator(self, domain: str, lookup: Callable[[bytes], str | None]) -> "security.KeyAuthenticator":
        """This process's ZAP handler (one per context); stopped at shutdown."""
        auth = security.KeyAuthenticator(self.ctx, domain, lookup)
        auth.start()
        self._authenticators.append(auth)
        return auth

    @staticmethod
    def send_router(sock: zmq.Socket, identity: bytes, frame: bytes) -> bool:
        """Reply through a ROUTER; False (and nothing sent) when the peer is gone or full."""
        try:
            sock.send_multipart([identity, frame], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    # --- timers --------------------------------------------------------------------
    def call_later(self, delay_s: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._seq), fn))

    def every(self, interval_s: float, fn: Callable[[], None]) -> None:
        def tick() -> None:
            fn()
            self.call_later(interval_s, tick)

        self.call_later(interval_s, tick)

    # --- hooks ---------------------------------------------------------------------
    def setup(self) -> None:
        """Create sockets and state; runs inside the loop's process."""

    def flush(self) -> None:
        """Runs after every batch of received messages and timers."""

    def poll_timeout_ms(self) -> int | None:
        """An actor with pending work returns 0 to poll without waiting."""
        return None

    def shutdown(self) -> None:
        """Release resources; runs once when the loop ends."""

    def heartbeat_status(self) -> M.HeartbeatStatus:
        """The small status sent with every heartbeat (messages.py HeartbeatStatus); runs
        in the loop every HEARTBEAT_INTERVAL_S, so it must be cheap."""
        return {}

    # --- the loop ------------------------------------------------------------------
    def _check_parent(self) -> None:
        if self._supervisor_pid and os.getppid() != self._supervisor_pid:
            self.log.warning("supervisor_gone", supervisor_pid=self._supervisor_pid)
            self.stopping = True

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stopping = True

    def _to_supervisor(self, msg: M.Message) -> None:
        """Send READY or HEARTBEAT on the one PUSH to the supervisor; dropped when its
        queue is full (the supervisor is not reading: the next beat says the same)."""
        if self._supervisor_sock is None:
            return
        try:
            self._supervisor_sock.send(wire.pack(msg), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _report_ready(self) -> None:
        if not self._supervisor_pid:
            return
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HEARTBEAT_HWM)
        sock.connect(self.endpoints.supervisor)
        self._supervisor_sock = sock
        self._to_supervisor(M.Ready(self.role, os.getpid()))
        self._heartbeat()
        self.every(HEARTBEAT_INTERVAL_S, self._heartbeat)

    def _heartbeat(self) -> None:
        self._to_supervisor(M.Heartbeat(self.role, os.getpid(), self.heartbeat_status()))

    def run(self) -> int:
        _set_parent_death_signal()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self._check_parent()
        try:
            self.setup()
            self.every(0.25, self._check_parent)
            self._report_ready()
            self.log.info("actor_started", pid=os.getpid())
            while not self.stopping:
                self._loop_once()
        except Exception:
            self.log.exception("actor_crashed")
            raise
        finally:
            self.log.info("actor_stopping")
            try:
                self.shutdown()
            finally:
                for auth in self._authenticators:
                    try:
                        auth.stop()
                    except Exception as exc:  # the process is ending anyway: say so, go on
                        self.log.warning("authenticator_stop_failed", error=str(exc)[:200])
                self.ctx.destroy(linger=0)
        return 0

    def _drain(self, sock: zmq.Socket, handler: Callable[..., None]) -> None:
        """Up to DRAIN_MAX messages of a socket the poll found readable. After each one the
        socket's EVENTS say whether another is waiting (cheaper than the zmq.Again a
        receive raises on an empty socket); a handler may close it meanwhile."""
        with_user = sock in self._with_user
        peer = sock in self._with_peer
        copy = not with_user and sock not in self._raw  # zmq.Frame objects: their properties are read
        recv = sock.recv_multipart
        events = sock.getsockopt
        for _ in range(DRAIN_MAX):
            try:
                frames: Any = recv(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                return
            if peer:
                handler([f.bytes for f in frames], security.frame_user(frames[-1]), security.frame_peer(frames[-1]))
            elif with_user:
                handler([f.bytes for f in frames], security.frame_user(frames[-1]))
            else:
                handler(frames)
            if sock.closed or not cast(int, events(zmq.EVENTS)) & zmq.POLLIN:
                return

    def _loop_once(self) -> None:
        timeout_ms = 100
        timers = self._timers
        if timers:
            timeout_ms = min(timeout_ms, max(0, int((timers[0][0] - time.monotonic()) * 1000) + 1))
        hint = self.poll_timeout_ms()
        if hint is not None and hint < timeout_ms:
            timeout_ms = hint
        if not self.poller.sockets:
            # zmq_poll returns at once when given no socket (the metrics actor, whose work is
            # in its HTTP threads, has none): wait out the timeout here, not in a busy loop.
            time.sleep(timeout_ms / 1000)
        try:
            events = self.poller.poll(timeout_ms) if self.poller.sockets else []
        except zmq.ZMQError as exc:
            if exc.errno == errno.EINTR:  # a signal; the handler set a flag
                return
            raise
        handlers = self._socket_handlers
        for sock, _ in events:
            handler = handlers.get(sock)
            if handler is not None:  # else closed by an earlier handler of this round
                self._drain(sock, handler)
        if timers:
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                _, _, fn = heapq.heappop(timers)
                fn()
        self.flush()
