"""`qkvctl snapshot save` writes the snapshot 0600 (it holds every key and the auth data),
whatever the umask, also over an existing 0644 file of the same name (issue 15: etcdctl
wrote 0644 once too)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_snapshot_save_writes_0600(node_factory, tmp_path):
    node = node_factory()
    target = tmp_path / "snap.db"
    target.write_bytes(b"old")
    target.chmod(0o644)
    for _ in range(2):  # over an existing 0644 file, then over its own
        out = subprocess.run([sys.executable, "-m", "protocol.client.cli", "--endpoints", node.client_url,
                              "snapshot", "save", str(target)], capture_output=True, text=True, timeout=60,
                             cwd=ROOT, preexec_fn=lambda: os.umask(0))  # noqa: PLW1509 - a umask only
        assert (out.returncode, out.stdout) == (0, f"Snapshot saved at {target}\n"), out.stderr
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not (tmp_path / "snap.db.part").exists()
