"""Crash points for fault tests: `QKV_FAILPOINTS=name[,name...]` makes the process
kill itself with SIGKILL the first time it reaches `failpoint(name)`; `name@N` on the
N-th time. With the variable unset, `failpoint` costs one dict lookup.

Only a node started with the test-only `--test-fault-injection` obeys the variable: the
actor's entry point calls `configure(cfg.test_fault_injection)` before anything runs."""
from __future__ import annotations

import os
import signal
from typing import Mapping


def _parse(spec: str) -> dict[str, int]:
    points: dict[str, int] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, nth = item.partition("@")
        points[name] = int(nth) if nth.isdigit() else 1
    return points


_POINTS: dict[str, int] = {}


def configure(enabled: bool, env: Mapping[str, str] | None = None) -> None:
    """Arm the crash points of QKV_FAILPOINTS when fault injection is on; none otherwise."""
    global _POINTS
    env = os.environ if env is None else env
    _POINTS = _parse(env.get("QKV_FAILPOINTS", "")) if enabled else {}


def failpoint(name: str) -> None:
    if not _POINTS or name not in _POINTS:
        return
    _POINTS[name] -= 1
    if _POINTS[name] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
