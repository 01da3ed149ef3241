"""Fixtures of the hostile-load tests."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def tmpfs(tmp_path: Path):
    """`tmpfs(path, mib)` mounts a small tmpfs at `path`; every mount is undone at the end,
    whatever happens (request this fixture BEFORE node_factory / cluster_factory: fixtures
    are torn down in reverse order, so the nodes are stopped first)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a real small filesystem: mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(path: Path, mib: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"a full disk needs a real small filesystem: mount -t tmpfs failed here "
                        f"({r.stderr.strip() or r.returncode})")
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        for path in reversed(mounted):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True)
