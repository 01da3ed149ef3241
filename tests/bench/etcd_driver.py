"""A small etcd 3.4 driver for the comparison benchmarks (`make bench-scale`).

- `load_pb()` returns etcd 3.4's generated modules, the committed protocol/etcdpb ones that
  quorumkv's gRPC gateway serves (no protoc at run time).
- `EtcdProcess` runs /usr/bin/etcd as a one-member cluster (or, with `initial_cluster` set,
  one member of a static cluster) on free ports with its data
  dir under a given directory, and always stops it (`stop()`, also from `atexit`).

Needs grpcio and protobuf (runtime dependencies of quorumkv).
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
ETCD = os.environ.get("ETCD_BIN", "/usr/bin/etcd")


def available() -> bool:
    return os.access(ETCD, os.X_OK)


def load_pb() -> SimpleNamespace:
    """The generated modules: kv (mvccpb), rpc (etcdserverpb messages), grpc (stubs)."""
    from protocol.etcdpb import kv_pb2, rpc_pb2, rpc_pb2_grpc

    return SimpleNamespace(kv=kv_pb2, rpc=rpc_pb2, grpc=rpc_pb2_grpc)


def stubs(channel) -> SimpleNamespace:
    pb = load_pb()
    return SimpleNamespace(kv=pb.grpc.KVStub(channel), watch=pb.grpc.WatchStub(channel),
                           lease=pb.grpc.LeaseStub(channel), maint=pb.grpc.MaintenanceStub(channel))


def channel(target: str):
    import grpc

    return grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20),
                                                  ("grpc.max_send_message_length", 64 << 20)])


class EtcdProcess:
    """One etcd member on 127.0.0.1 free ports, data dir `<base>/<name>.etcd`."""

    def __init__(self, base: Path, name: str = "etcd", quota_bytes: int = 8 << 30,
                 peer_port: int | None = None) -> None:
        """`peer_port`: a port chosen by the caller (a cluster names every member's peer URL
        in each one's `initial_cluster` before any starts)."""
        from nodeproc import free_port

        self.name = name
        self.data_dir = str(base / f"{name}.etcd")
        self.client_port = free_port()
        self.peer_port = peer_port or free_port()
        self.initial_cluster = ""  # "name=peer-url,...": a member of a cluster; empty: one member
        self.target = f"127.0.0.1:{self.client_port}"
        self.quota_bytes = quota_bytes
        self.log_path = base / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self._log = None
        atexit.register(self.stop)

    def command(self) -> list[str]:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [ETCD, "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", self.initial_cluster or f"{self.name}={peer}", "--initial-cluster-state", "new",
                "--quota-backend-bytes", str(self.quota_bytes),
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait: bool = True, timeout: float = 60.0) -> "EtcdProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        import grpc

        pb = load_pb()
        deadline = time.monotonic() + timeout
        with channel(self.target) as ch:
            kv = pb.grpc.KVStub(ch)
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
                try:
                    kv.Range(pb.rpc.RangeRequest(key=b"health"), timeout=1.0)
                    return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"etcd did not serve within {timeout}s: {self.log_text()[-2000:]}")
                    time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
