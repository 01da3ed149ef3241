"""Crash points for fault tests: `QKV_FAILPOINTS=name[,name...]` makes the process
kill itself with SIGKILL the first time it reaches `failpoint(name)`; `name@N` on the
N-th time. With the variable unset, `failpoint` costs one dict lookup."""
from __future__ import annotations

import os
import signal


def _parse(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, nth = item.partition("@")
        points[name] = int(nth) if nth.isdigit() else 1
    return points


_POINTS = _parse(os.environ.get("QKV_FAILPOINTS", ""))


def failpoint(name: str) -> None:
    if not _POINTS or name not in _POINTS:
        return
    _POINTS[name] -= 1
    if _POINTS[name] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
