"""MVCC key-value store with etcd v3 semantics over an ordered backend (pure: no I/O).

See store.py for the rules and the on-disk layout.
"""
from actors.storage.mvcc.memory import Backend, MemoryBackend
from actors.storage.mvcc.revision import Revision
from actors.storage.mvcc.store import COLUMN_FAMILIES, ApplyResult, Event, MVCCStore

__all__ = ["Backend", "MemoryBackend", "Revision", "COLUMN_FAMILIES", "ApplyResult", "Event",
           "MVCCStore"]
