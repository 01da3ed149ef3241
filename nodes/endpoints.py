"""Every address a node uses, derived in one place.

Actors of one node talk over ipc:// sockets in a short per-node run directory (ipc
paths are limited to 107 characters, so it lives under the system temp dir, named by
a hash of the absolute data dir). Public endpoints (client, peer, watch) come from the
config.

The temp dir is shared with other users: the supervisor creates the run dir 0700 and
refuses one that another user could control (nodes/perms.py `make_private_dir`). Set
TMPDIR to move it (e.g. to a directory of systemd's RuntimeDirectory=).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass


IPC_PATH_MAX = 107  # sun_path of a unix socket, less its NUL


def run_dir_for(data_dir: str) -> str:
    digest = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"qkv-{digest}")


@dataclass(frozen=True)
class Endpoints:
    run_dir: str

    def _ipc(self, name: str) -> str:
        return f"ipc://{os.path.join(self.run_dir, name)}.ipc"

    @property
    def consensus(self) -> str:
        """consensus ROUTER: proposals and read-index requests (gateway), entry fetches (storage)."""
        return self._ipc("consensus")

    @property
    def storage(self) -> str:
        """storage ROUTER: reads and status (gateway), history (watch)."""
        return self._ipc("storage")

    @property
    def gateway_proxy(self) -> str:
        """gateway ROUTER for the node's own gRPC gateway (actors/grpcgw/): client requests,
        each naming the user its TLS client certificate proved (in this private run dir,
        only the node's own processes can connect)."""
        return self._ipc("proxy")

    @property
    def gateway_results(self) -> str:
        """gateway PULL: results of applied writes, pushed by storage."""
        return self._ipc("results")

    @property
    def watch_events(self) -> str:
        """watch PULL: applied events, pushed by storage."""
        return self._ipc("events")

    @property
    def supervisor(self) -> str:
        """supervisor PULL: readiness reports from the actors."""
        return self._ipc("supervisor")

    @property
    def metrics_dir(self) -> str:
        """prometheus_client's multiprocess files of every process of the node (actors/runtime/metrics.py)."""
        return os.path.join(self.run_dir, "metrics")

    @property
    def faults_file(self) -> str:
        """Peer links cut by a test (see actors/consensus/transport.py); absent = none."""
        return os.path.join(self.run_dir, "faults.json")

    def ipc_files(self) -> list[str]:
        return [
            url[len("ipc://"):]
            for url in (self.consensus, self.storage, self.gateway_proxy, self.gateway_results, self.watch_events,
                        self.supervisor)
        ]
