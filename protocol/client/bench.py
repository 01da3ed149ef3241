"""``qkvctl benchmark``: a load generator in the spirit of etcd's tools/benchmark.

One thread drives every logical client: one DEALER socket per logical client, each with
at most one request in flight, all waited on through their ZMQ_FD in one epoll set (a
``zmq.Poller`` over 64 sockets costs ~44 us a call, epoll ~0.4 us). ZMQ_FD is edge-like: it
signals only once its socket has found nothing to read, so a socket is read while its
ZMQ_EVENTS says POLLIN, which re-arms it; that check also follows every socket's first
send. With ``rate``, requests start no faster than that many a second (a token every 1/rate
s, a burst of one: etcdctl check perf's rate.Limiter), on whichever client is idle. Request frames are built
from pre-encoded msgpack pieces (only the id, and the key for puts, are encoded per
request). A request with no reply within ``timeout_s`` is counted as an error and its
socket is recreated (Lazy Pirate), so a late reply is never mistaken for a new one.
Errors are counted and reported by message, never dropped.
"""
from __future__ import annotations

import math
import os
import random
import select
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TextIO, cast

import msgpack
import zmq

from protocol.codec import VERSION, unpack
from protocol.errors import QkvError

_PACK = msgpack.Packer(use_bin_type=True)
_VERSION_BYTE = bytes([VERSION])
_ID_KEY = msgpack.packb("id")


@dataclass
class BenchConfig:
    kind: str  # "put", "range" or "txn-put"
    endpoints: list[str]
    clients: int = 1
    total: int | None = None  # requests; None with duration_s set means "run for a time"
    duration_s: float | None = None
    key_size: int = 8
    val_size: int = 256
    key_space_size: int = 1
    sequential_keys: bool = False
    consistency: str = "l"
    key: bytes = b""
    range_end: bytes = b""
    txn_ops: int = 1
    timeout_s: float = 5.0
    seed: int | None = None
    rate: float | None = None  # requests per second over all clients; None = as fast as they go
    key_prefix: bytes = b""  # put: before each generated key (check perf's --prefix)
    # Security (SPEC "Security"): a CURVE client setup (public, secret, server public) for
    # every connection, and the auth token every request carries.
    curve: tuple[bytes, bytes, bytes] | None = None
    token: str | None = None


@dataclass
class BenchResult:
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    total_s: float = 0.0
    last_reply_s: float = 0.0  # from the start to the last answer (or timeout) counted
    started_at: float = 0.0  # time.perf_counter() when the first request was sent
    cpu_s: float = 0.0  # this process's CPU time (every thread) from the first request to the end

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def _body(fields: dict[str, Any]) -> tuple[int, bytes]:
    return len(fields), b"".join(_PACK.pack(k) + _PACK.pack(v) for k, v in fields.items())


def _frame(rid: int, n_fields: int, body: bytes) -> bytes:
    # msgpack fixmap header (n < 16 entries): the id first, then the pre-encoded pairs.
    return _VERSION_BYTE + bytes((0x80 | (n_fields + 1),)) + _ID_KEY + _PACK.pack(rid) + body


def make_key(n: int, key_size: int) -> bytes:
    """etcd's benchmark key: ``binary.PutVarint(k, n)`` in a ``key_size`` byte buffer."""
    zz = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = zz & 0x7F
        zz >>= 7
        if zz:
            out.append(b | 0x80)
        else:
            out.append(b)
            break
    out = out[:key_size] if key_size >= 1 else out
    return bytes(out) + b"\x00" * max(0, key_size - len(out))


class _RequestMaker:
    """Builds the i-th request frame of a benchmark."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        # the token rides as one more pre-encoded pair at the end of every request
        self._token = _PACK.pack("token") + _PACK.pack(cfg.token) if cfg.token else b""
        self._token_n = 1 if cfg.token else 0
        self.value = self.rng.randbytes(cfg.val_size)
        if cfg.kind == "range":
            fields: dict[str, Any] = {"op": "range", "key": cfg.key}
            if cfg.range_end:
                fields["range_end"] = cfg.range_end
            if cfg.consistency == "s":
                fields["serializable"] = True
            self._fixed = _body(fields)
        elif cfg.kind == "put":
            self._tail = _PACK.pack("value") + _PACK.pack(self.value)
            self._head = _PACK.pack("op") + _PACK.pack("put") + _PACK.pack("key")
            self._prefix = cfg.key_prefix
        elif cfg.kind != "txn-put":
            raise ValueError(f"unknown benchmark {cfg.kind!r}")

    def _key_index(self, i: int) -> int:
        if self.cfg.sequential_keys:
            return i % self.cfg.key_space_size
        return self.rng.randrange(self.cfg.key_space_size)

    def frame(self, rid: int, i: int) -> bytes:
        cfg = self.cfg
        if cfg.kind == "range":
            n, body = self._fixed
        elif cfg.kind == "put":
            key = self._prefix + make_key(self._key_index(i), cfg.key_size)
            n, body = 3, self._head + _PACK.pack(key) + self._tail
        else:
            ops = [{"put": {"key": make_key((i * cfg.txn_ops + j) % cfg.key_space_size, cfg.key_size),
                            "value": self.value}} for j in range(cfg.txn_ops)]
            n, body = _body({"op": "txn", "compare": [], "success": ops, "failure": []})
        return _frame(rid, n + self._token_n, body + self._token)


class _Conn:
    __slots__ = ("sock", "fd", "endpoint", "rid", "sent_at", "busy")

    def __init__(self, sock: zmq.Socket, endpoint: str) -> None:
        self.sock = sock
        self.fd = cast(int, sock.getsockopt(zmq.FD))
        self.endpoint = endpoint
        self.rid = 0
        self.sent_at = 0.0
        self.busy = False


def run(cfg: BenchConfig, progress: Callable[[int, int | None, float], None] | None = None
        ) -> BenchResult:
    """Run the benchmark; ``progress(done, total, elapsed_s)`` is called a few times a second."""
    if cfg.clients < 1:
        raise ValueError("--clients must be >= 1")
    if cfg.total is None and cfg.duration_s is None:
        cfg.total = 10_000
    if cfg.key_space_size < 1:
        raise ValueError("--key-space-size must be >= 1")
    maker = _RequestMaker(cfg)
    result = BenchResult()
    ctx = zmq.Context()
    waiter: Any
    if hasattr(select, "epoll"):
        waiter = select.epoll()
        wait_scale = 1.0  # epoll.poll takes seconds
    else:
        waiter = select.poll()
        wait_scale = 1000.0  # poll.poll takes milliseconds
    conns: list[_Conn] = []
    by_fd: dict[int, _Conn] = {}

    def new_conn(endpoint: str) -> _Conn:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        if cfg.curve is not None:
            s.curve_publickey, s.curve_secretkey, s.curve_serverkey = cfg.curve
        s.connect(endpoint)
        c = _Conn(s, endpoint)
        waiter.register(c.fd, select.POLLIN)
        by_fd[c.fd] = c
        return c

    for i in range(cfg.clients):
        conns.append(new_conn(cfg.endpoints[i % len(cfg.endpoints)]))

    next_rid = random.getrandbits(32) + 1
    issued = 0
    done = 0
    lats = result.latencies_s
    errors = result.errors
    perf = time.perf_counter
    cpu0 = time.process_time()
    start = result.started_at = perf()
    end_at = start + cfg.duration_s if cfg.duration_s is not None else math.inf
    total = cfg.total
    interval = 1.0 / cfg.rate if cfg.rate else 0.0
    next_token = start  # with a rate: when the next request may start
    waiting: list[_Conn] = []  # with a rate: idle clients waiting for a token

    def finished(now: float) -> bool:
        return (total is not None and issued >= total) or now >= end_at

    def issue(c: _Conn, now: float) -> None:
        nonlocal issued, next_rid, next_token
        c.busy = False
        if finished(now):
            return
        if interval:
            if now < next_token:
                waiting.append(c)
                return
            next_token = max(next_token + interval, now - interval)
        next_rid += 1
        c.rid = next_rid
        frame = maker.frame(next_rid, issued)
        issued += 1
        c.sent_at = perf()
        c.busy = True
        c.sock.send(frame)

    def fail(msg: str) -> None:
        errors[msg] = errors.get(msg, 0) + 1

    POLLIN, EVENTS, NOBLOCK = zmq.POLLIN, zmq.EVENTS, zmq.NOBLOCK

    def receive(c: _Conn) -> int:
        """Take every reply the socket holds (sending each client's next request); how many
        clients went idle for good."""
        nonlocal done
        idle = 0
        sock = c.sock
        while cast(int, sock.getsockopt(EVENTS)) & POLLIN:
            try:
                frame = sock.recv(NOBLOCK)
            except zmq.Again:
                break
            t = perf()
            try:
                reply = unpack(frame)
            except QkvError as exc:
                fail(f"undecodable reply: {exc.message}")
                continue
            if not isinstance(reply, dict) or reply.get("id") != c.rid or not c.busy:
                continue  # a late reply: its request was already counted
            if reply.get("ok") is True:
                lats.append(t - c.sent_at)
            else:
                fail(QkvError.from_wire(reply.get("error")).message)
            done += 1
            issue(c, t)
            if not c.busy:
                idle += 1
            result.last_reply_s = t - start
        return idle

    try:
        now = perf()
        for c in conns:
            issue(c, now)
        inflight = sum(1 for c in conns if c.busy)
        for c in conns:  # arms each FD: it signals only once its socket has found nothing to read
            inflight -= receive(c)
        next_check = now + 0.1
        while inflight or (waiting and not finished(perf())):
            now = perf()
            while waiting and now >= next_token and not finished(now):
                c = waiting.pop()
                issue(c, now)
                inflight += c.busy
            wait_s = 0.1 if not waiting else min(0.1, max(0.0, next_token - now))
            for fd, _ in waiter.poll(wait_s * wait_scale):
                conn = by_fd.get(fd)
                if conn is not None:
                    inflight -= receive(conn)
            now = perf()
            if now >= next_check:
                next_check = now + 0.1
                for i, c in enumerate(conns):
                    if c.busy:  # a wake-up the FD did not give (it should not happen) costs 0.1 s
                        inflight -= receive(c)
                    if c.busy and now - c.sent_at > cfg.timeout_s:
                        fail(f"timeout: no reply within {cfg.timeout_s:g}s")
                        done += 1
                        waiter.unregister(c.fd)
                        del by_fd[c.fd]
                        c.sock.close(linger=0)
                        c = conns[i] = new_conn(c.endpoint)
                        result.last_reply_s = now - start
                        issue(c, now)
                        if not c.busy:
                            inflight -= 1
                        else:
                            inflight -= receive(c)  # arms the new socket's FD
                if progress is not None:
                    progress(done, total, now - start)
        result.total_s = perf() - start
        result.cpu_s = time.process_time() - cpu0
        if progress is not None:
            progress(done, total, result.total_s)
    finally:
        if hasattr(waiter, "close"):  # epoll holds an fd; poll objects hold none
            waiter.close()
        for c in conns:
            c.sock.close(linger=0)
        ctx.term()
    return result


# -- the report, in etcd's tools/benchmark/cmd/report shape ------------------------------------
def _sec(s: float) -> str:
    return f"{s:4.4f} secs"


def format_report(result: BenchResult) -> str:
    lats = sorted(result.latencies_s)
    s = ""
    if lats:
        total = result.total_s
        avg = sum(lats) / len(lats)
        std = math.sqrt(sum((x - avg) ** 2 for x in lats) / len(lats))
        rps = len(lats) / total if total > 0 else 0.0
        s += "\nSummary:\n"
        s += f"  Total:\t{_sec(total)}.\n"
        s += f"  Slowest:\t{_sec(lats[-1])}.\n"
        s += f"  Fastest:\t{_sec(lats[0])}.\n"
        s += f"  Average:\t{_sec(avg)}.\n"
        s += f"  Stddev:\t{_sec(std)}.\n"
        s += f"  Requests/sec:\t{rps:4.4f}\n"
        s += _histogram(lats)
        s += _latencies(lats)
    if result.errors:
        s += "\nError distribution:\n"
        for msg, n in sorted(result.errors.items(), key=lambda kv: -kv[1]):
            s += f"  [{n}]\t{msg}\n"
    if not lats and not result.errors:
        s += "\nNo requests were made.\n"
    return s


def _histogram(lats: list[float]) -> str:
    bc = 10
    fastest, slowest = lats[0], lats[-1]
    bs = (slowest - fastest) / bc
    buckets = [fastest + bs * i for i in range(bc)] + [slowest]
    counts = [0] * (bc + 1)
    bi = 0
    i = 0
    while i < len(lats):
        if lats[i] <= buckets[bi]:
            counts[bi] += 1
            i += 1
        elif bi < len(buckets) - 1:
            bi += 1
        else:  # float rounding: put the rest in the last bucket
            counts[bi] += len(lats) - i
            break
    top = max(counts)
    s = "\nResponse time histogram:\n"
    for b, n in zip(buckets, counts):
        bar = "∎" * (n * 40 // top if top else 0)
        s += f"  {b:4.4f} [{n}]\t|{bar}\n"
    return s


def _latencies(lats: list[float]) -> str:
    pctls = [10, 25, 50, 75, 90, 95, 99, 99.9]
    data = [0.0] * len(pctls)
    j = 0
    for i, lat in enumerate(lats):
        if j >= len(pctls):
            break
        if i * 100.0 / len(lats) >= pctls[j]:
            data[j] = lat
            j += 1
    s = "\nLatency distribution:\n"
    for p, d in zip(pctls, data):
        if d > 0:
            s += f"  {p:g}% in {_sec(d)}.\n"
    return s


class ProgressBar:
    """A one-line progress bar on a TTY stream (nothing when the stream is not a TTY)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        try:
            self.enabled = stream.isatty()
        except (AttributeError, ValueError):
            self.enabled = False

    def __call__(self, done: int, total: int | None, elapsed_s: float) -> None:
        if not self.enabled:
            return
        if total:
            frac = min(1.0, done / total)
            width = 40
            filled = int(frac * width)
            bar = "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1)
            line = f"\r {done} / {total} [{bar}] {frac * 100:6.2f}% {elapsed_s:.0f}s"
        else:
            line = f"\r {done} requests {elapsed_s:.1f}s"
        self.stream.write(line)
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# -- benchmark watch: one watcher, then puts under its prefix -----------------------------------
# The watcher runs in a process of its own (spawned), so that decoding its events does not
# share the runner's interpreter lock; both stamp time.perf_counter(), which is
# CLOCK_MONOTONIC, one clock for every process of the machine.
@dataclass
class WatchTally:
    """The watcher's count: its events and when the last one arrived (perf_counter)."""

    expected: int
    events: int = 0
    last_at: float = 0.0

    def add(self, n: int, at: float) -> bool:
        """Count one response's ``n`` events, arrived at ``at``; True once every expected
        event is in."""
        if n > 0:
            self.events += n
            self.last_at = at
        return self.done

    @property
    def done(self) -> bool:
        return self.events >= self.expected


@dataclass
class WatchBenchResult:
    puts: BenchResult
    events: int
    last_event_at: float  # perf_counter when the watcher had its last event; 0.0: none came
    watcher_cpu_s: float = 0.0  # the watcher process's CPU time from its watch set up to its end

    @property
    def acknowledged(self) -> int:
        return len(self.puts.latencies_s)

    @property
    def missing(self) -> int:
        """Acknowledged puts whose event the watcher never had."""
        return max(0, self.acknowledged - self.events)

    @property
    def elapsed_s(self) -> float:
        """From the first put sent until the watcher had its last event."""
        if self.events <= 0:
            return math.nan
        return self.last_event_at - self.puts.started_at


def format_watch_report(r: WatchBenchResult) -> str:
    puts, elapsed = r.puts, r.elapsed_s
    put_rps = r.acknowledged / puts.total_s if puts.total_s > 0 else 0.0
    ev_rps = r.events / elapsed if elapsed > 0 else 0.0
    s = format_report(puts)
    s += "\nWatch summary:\n"
    s += f"  Puts:\t{r.acknowledged} acknowledged, {puts.error_count} errors, in {_sec(puts.total_s)} " \
         f"({put_rps:.1f} puts/s).\n"
    s += f"  Events:\t{r.events} received, {r.missing} missing.\n"
    if r.events:
        s += f"  Watch time:\t{_sec(elapsed)} from the first put sent to the watcher's last event " \
             f"({ev_rps:.1f} events/s).\n"
    else:
        s += "  Watch time:\tnone: the watcher had no event.\n"
    return s


def _watcher_main(endpoints: list[str], client_options: dict[str, Any], timeout_s: float, prefix: bytes,
                  expected: int, idle_s: float, ready: Any, out: Any) -> None:
    """The watcher process: watch ``prefix``, say ready, then count events until it has
    ``expected`` of them or none came for ``idle_s`` after the first (``idle_s`` x 6 before
    it); put (events, last arrival) on ``out``."""
    from protocol.client.client import Client

    try:
        with Client(endpoints, timeout=timeout_s, **client_options) as c:
            w = c.watch(prefix, prefix=True)
            ready.put(("ready", w.start_revision))
            cpu0 = time.process_time()
            tally = WatchTally(expected)
            perf = time.perf_counter
            while not tally.done:
                resp = w.get(timeout=idle_s if tally.events else idle_s * 6)
                if resp is None:
                    break
                tally.add(len(resp.events), perf())
            w.cancel()
            out.put(("done", tally.events, tally.last_at, time.process_time() - cpu0))
    except Exception as exc:  # noqa: BLE001 - reported by the parent, which raises it
        ready.put(("error", f"{type(exc).__name__}: {exc}"))
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def _take(q: Any, proc: Any, timeout_s: float, what: str) -> Any:
    """The next message of a child's queue; raises when the child died or took too long."""
    import queue

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            msg = q.get(timeout=0.2)
        except queue.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the watcher process exited ({proc.exitcode}) before {what}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"the watcher process took over {timeout_s:g}s for {what}") from None
            continue
        if msg[0] == "error":
            raise RuntimeError(f"the watcher failed: {msg[1]}")
        return msg


def run_watch(cfg: BenchConfig, client_options: Mapping[str, Any] | None = None, idle_s: float = 5.0,
              progress: Callable[[int, int | None, float], None] | None = None) -> WatchBenchResult:
    """One watcher on ``cfg.key_prefix`` (a process of its own), then ``cfg.total`` puts
    under that prefix through :func:`run`; how long until the watcher had every event."""
    import multiprocessing

    if cfg.kind != "put" or cfg.total is None or not cfg.key_prefix:
        raise ValueError("a watch benchmark is a put benchmark with a total and a key prefix")
    ctx = multiprocessing.get_context("spawn")
    ready, out = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_watcher_main, name="qkv-bench-watcher", daemon=True,
                       args=(cfg.endpoints, dict(client_options or {}), cfg.timeout_s, cfg.key_prefix, cfg.total,
                             idle_s, ready, out))
    proc.start()
    try:
        _take(ready, proc, 60.0, "its watch was set up")
        puts = run(cfg, progress)
        _, events, last_at, watcher_cpu = _take(out, proc, idle_s * 7 + 60.0, "it had every event")
        proc.join(10)
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    return WatchBenchResult(puts, events, last_at, watcher_cpu)


def main(cfg: BenchConfig, out: TextIO | None = None, err: TextIO | None = None) -> BenchResult:
    out = out or sys.stdout
    bar = ProgressBar(err or sys.stderr)
    result = run(cfg, progress=bar)
    bar.finish()
    out.write(format_report(result))
    out.flush()
    return result


if __name__ == "__main__":  # pragma: no cover
    main(BenchConfig(kind="put", endpoints=[os.environ.get("QKV_ENDPOINT", "tcp://127.0.0.1:7379")]))
