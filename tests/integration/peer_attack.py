"""Helpers for the peer-port attack tests: secure clusters (one CURVE key per member) and
an attacker that sends raw peer frames, without a key, with its own key, or with a
member's key."""
from __future__ import annotations

import os
from pathlib import Path

import zmq

from actors.runtime import security
from protocol.codec import pack_msg, unpack_msg

FAST = ["--heartbeat-interval", "50", "--election-timeout", "1000"]


def keygen(tmp_path: Path, name: str) -> tuple[str, str, str]:
    """(public Z85, public file, secret file) of a fresh key named `name`."""
    public_path, secret_path = security.generate(str(tmp_path / "keys"), name)
    return security.load_public(public_path).decode(), public_path, secret_path


def secure_cluster(cluster_factory, tmp_path: Path, size: int = 3, extra: list[str] | None = None):
    """A cluster with peer security on: every member has its key, all know each other's."""
    cluster = cluster_factory(size, [*FAST, *(extra or [])], start=False)
    keys = {n.name: keygen(tmp_path, n.name) for n in cluster.nodes}
    initial_keys = ",".join(f"{name}={k[0]}" for name, k in keys.items())
    for n in cluster.nodes:
        n.args += ["--peer-key-file", keys[n.name][2], "--initial-cluster-keys", initial_keys]
        n.peer_key = keys[n.name][0]
        n.secret_file = keys[n.name][2]
    cluster.start()
    return cluster


def plain_cluster(cluster_factory, size: int = 3):
    return cluster_factory(size, list(FAST))


class Attacker:
    """A DEALER to one member's peer port: no key (NULL), its own key, or a stolen one."""

    def __init__(self, url: str, server_key: str | None = None,
                 keypair: tuple[bytes, bytes] | None = None, monitor_events: int = 0) -> None:
        """`monitor_events`: a monitor socket (`self.monitor`) attached BEFORE the connect, so
        that a handshake that completes at once is not missed."""
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if server_key is not None:
            pub, sec = keypair or zmq.curve_keypair()
            security.make_curve_client(self.sock, pub, sec, server_key)
        self.monitor = self.sock.get_monitor_socket(monitor_events) if monitor_events else None
        self.sock.connect(url)

    def send(self, msg_type: int, body: list) -> None:
        try:
            self.sock.send(pack_msg(msg_type, body), zmq.NOBLOCK)
        except zmq.Again:
            pass  # the handshake never completed: nothing can go out

    def recv(self, timeout_s: float = 1.0):
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return unpack_msg(self.sock.recv())

    def close(self) -> None:
        self.sock.close()  # with the socket's own linger (0 unless a test raised it)
        self.ctx.destroy(0)

    def __enter__(self) -> "Attacker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def member_keypair(secret_file: str) -> tuple[bytes, bytes]:
    return security.load_keypair(secret_file)


def files_under(root: str) -> set[str]:
    out = set()
    for dirpath, _dirs, names in os.walk(root):
        out.update(os.path.join(dirpath, n) for n in names)
    return out
