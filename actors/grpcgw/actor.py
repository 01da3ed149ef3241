"""The gRPC gateway actor: etcd v3's gRPC API (etcdserverpb KV, Watch, Lease, Cluster,
Maintenance, Auth; v3lockpb Lock; v3electionpb Election) on ``--listen-grpc-urls``, so that
etcdctl, etcd client libraries and Kubernetes-style clients work unchanged.

Started by the supervisor only when ``--listen-grpc-urls`` names a URL (off by default:
README "etcd's gRPC API" says why). Rules:
- a thin shell: each RPC becomes native requests to the node's own gateway over its
  private proxy socket (backend.py), so the native protocol's checks, limits, auth and
  guarantees hold unchanged; nothing here keeps state a restart would lose but the open
  streams (a client reconnects, as it does when an etcd member restarts);
- grpc.aio serves in a thread of its own with its own event loop; the actor's loop keeps
  the runtime's duties (parent check, heartbeats) and writes the metrics;
- TLS as etcd's flags: an https:// URL serves with --cert-file/--key-file; with
  --trusted-ca-file a client certificate signed by that CA is required (etcd's rule), and
  with --client-cert-auth its CN is the user (backend.py ``identity``);
- bounds: a request of at most --max-request-bytes plus etcd's 512 KiB of gRPC overhead;
  at most MAX_CONCURRENT_RPCS RPCs (streams included) at once, beyond which new ones get
  RESOURCE_EXHAUSTED; keepalive pings as etcd's defaults.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any
from urllib.parse import urlsplit

import grpc

from actors.grpcgw import auth, cluster, election, kv, lease, lock, maintenance, watch
from actors.grpcgw.backend import Backend, flush_metrics
from actors.runtime import security
from actors.runtime.actor import Actor

SERVICES = (kv, watch, lease, cluster, maintenance, auth, lock, election)
GRPC_OVERHEAD_BYTES = 512 * 1024  # etcd's grpcOverheadBytes
MAX_CONCURRENT_RPCS = 1_000  # streams (watch, keep-alive, observe) and blocked Lock/Campaign included
START_TIMEOUT_S = 10.0
STOP_GRACE_S = 1.0
METRICS_FLUSH_S = 1.0


def listen_address(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "0.0.0.0"
    if host == "*":
        host = "0.0.0.0"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}"


def server_options(max_request_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_request_bytes + GRPC_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", 2**31 - 1),
        ("grpc.so_reuseport", 0),  # a port another process holds is an error, not shared
        # etcd's server keepalive defaults: ping an idle client every 2 h, 20 s to answer;
        # clients may ping every 5 s at most (enforcement policy MinTime).
        ("grpc.keepalive_time_ms", 2 * 3600 * 1000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class GrpcActor(Actor):
    role = "grpc"

    def setup(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name="grpc", daemon=True)
        self.thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise RuntimeError(f"the gRPC server did not start within {START_TIMEOUT_S:g} s")
        if self._error is not None:
            self.log.error("grpc_listen_failed", urls=self.cfg.listen_grpc_urls, error=str(self._error))
            raise self._error
        self.every(METRICS_FLUSH_S, flush_metrics)
        self.every(1.0, self._check_thread)
        self.log.info("grpc_listening", urls=self.cfg.listen_grpc_urls)

    def _check_thread(self) -> None:
        if not self.thread.is_alive():
            self.log.error("grpc_server_stopped")
            self.stopping = True  # the supervisor restarts the actor

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by setup, or by _check_thread later
            if not self._started.is_set():
                self._error = exc
                self._started.set()
            else:
                self.log.exception("grpc_server_crashed")

    async def _main(self) -> None:
        cfg = self.cfg
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server_key = security.load_keypair(cfg.client_key_file)[0] if cfg.client_key_file else None
        backend = Backend(self.endpoints.gateway_proxy, cluster_id=cfg.cluster_id, member_id=cfg.member_id,
                          cert_auth=cfg.client_cert_auth, max_in_flight=cfg.max_client_requests,
                          public_urls=cfg.advertise_client_urls, server_key=server_key,
                          request_timeout_s=5.0 + 2 * cfg.election_timeout / 1000.0,
                          client_key_file=cfg.client_key_file, max_request_bytes=cfg.max_request_bytes)
        server = grpc.aio.server(options=server_options(cfg.max_request_bytes),
                                 maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)
        for service in SERVICES:
            service.add(server, backend)
        credentials = None
        if any(u.startswith("https://") for u in cfg.listen_grpc_urls):
            ca = _read(cfg.trusted_ca_file) if cfg.trusted_ca_file else None
            credentials = grpc.ssl_server_credentials(
                [(_read(cfg.key_file), _read(cfg.cert_file))], root_certificates=ca,
                require_client_auth=bool(ca))  # etcd: a trusted CA means a client certificate is required
        for url in cfg.listen_grpc_urls:
            address = listen_address(url)
            if url.startswith("https://"):
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
            if not port:
                raise OSError(f"cannot listen on {url}")
        await server.start()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop(STOP_GRACE_S)
            await backend.close()

    def shutdown(self) -> None:
        loop, stop = self.loop, self._stop
        if loop is not None and stop is not None and self.thread.is_alive():
            loop.call_soon_threadsafe(stop.set)
            self.thread.join(STOP_GRACE_S + 2.0)
        flush_metrics()
