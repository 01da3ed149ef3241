"""(to be written: issue 18)"""
from __future__ import annotations

from typing import Any

from actors.grpcgw.backend import Backend


def add(server: Any, backend: Backend) -> None:
    """Register this module's servicers on server."""
