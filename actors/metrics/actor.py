"""The metrics actor: the node's fifth process, started by the supervisor only when
`--listen-metrics-urls` names a URL. It serves over HTTP (actors/metrics/server.py):
- `/metrics`: every process of the node in the Prometheus text format, summed from the
  multiprocess dir (actors/runtime/metrics.py);
- `/health`, `/livez`, `/readyz`: etcd's health endpoints (actors/metrics/health.py),
  answered from what consensus and storage say when asked (actors/metrics/probe.py).

Rules:
- the HTTP servers run in their own threads; the actor's loop only keeps the runtime's
  duties (parent check, timers) and cuts connections held past their lifetime;
- nothing else in the node depends on this actor: it reads the other actors' status and
  sends them nothing that changes state;
- a URL it cannot bind crashes it at start (the supervisor restarts it with a back-off and
  logs why); the supervisor checks the ports are free before any actor starts.
"""
from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

from actors.metrics.probe import Probe
from actors.metrics.server import MAX_CONNECTIONS, App, MetricsServer
from actors.runtime.actor import Actor

STOP_WAIT_S = 1.0  # how long shutdown waits for running probes to notice the stop flag


def health_timeout_s(election_timeout_ms: int) -> float:
    """etcd's request timeout (ServerConfig.ReqTimeout: 5 s + 2 x election timeout), the
    bound of its /health read."""
    return 5.0 + 2 * election_timeout_ms / 1000.0


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in ("", "*"):
        host = "0.0.0.0"
    return host, int(parts.port or 0)


class MetricsActor(Actor):
    role = "metrics"

    def setup(self) -> None:
        self.stop_flag = threading.Event()
        self.probe = Probe(self.ctx, self.endpoints, health_timeout_s(self.cfg.election_timeout), self.stop_flag)
        self.app = App(self.probe.observe)
        slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.servers: list[MetricsServer] = []
        self.threads: list[threading.Thread] = []
        for url in self.cfg.listen_metrics_urls:
            host, port = _host_port(url)
            try:
                server = MetricsServer(host, port, self.app, slots, self._on_http_error)
            except OSError as exc:
                self.log.error("metrics_listen_failed", url=url, error=exc.strerror or str(exc))
                raise
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.25},
                                      name=f"metrics-http-{port}", daemon=True)
            thread.start()
            self.servers.append(server)
            self.threads.append(thread)
        self.every(1.0, self._cut_expired)
        self.log.info("metrics_listening", urls=self.cfg.listen_metrics_urls)

    def _on_http_error(self, error: str) -> None:
        self.log.warning("metrics_http_error", error=error)

    def _cut_expired(self) -> None:
        for server in self.servers:
            server.cut_expired()

    def shutdown(self) -> None:
        self.stop_flag.set()  # probes return at their next step (probe.POLL_STEP_S)
        for server in getattr(self, "servers", []):
            server.shutdown()
            server.server_close()
        # Handler threads may still hold zmq sockets of self.ctx, which the runtime destroys
        # next: give their probes time to see the flag and close them.
        deadline = time.monotonic() + STOP_WAIT_S
        while hasattr(self, "app") and self.app.probing() and time.monotonic() < deadline:
            time.sleep(0.01)
