"""One contender of the lock tests (tests/integration/test_locks.py): loops acquiring
lock("x"), appending "<pid>.<i><" and then "<pid>.<i>>" to the key "log" under a fencing
txn (the lock's create revision), releasing. Prints one JSON line per cycle.

    python lock_worker.py <endpoints,comma> <cycles> <ttl> [thread|asyncio]

``asyncio``: the same loop through the AsyncClient (tests/aioclient.py's adapter: the
Session, Lock and fencing txns are the async client's).
"""
from __future__ import annotations

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from aioclient import kit  # noqa: E402
from protocol.client import Op  # noqa: E402
from protocol.errors import QkvError  # noqa: E402


def fenced_append(c, lock, entry: str) -> bool:
    """Append under the fence; on an unknown outcome read the log to decide."""
    for _ in range(50):
        try:
            cur = c.get("log")
            old = cur.kvs[0].value if cur.kvs else b""
            resp = c.txn([lock.holds_lock()], [Op.put("log", old + entry.encode() + b";")], [])
            return resp.succeeded
        except QkvError as exc:
            if exc.retryable:
                time.sleep(0.1)
                continue
            # timeout / unknown_outcome: did it land?
            for _ in range(100):
                try:
                    cur = c.get("log")
                    break
                except QkvError:
                    time.sleep(0.1)
            if entry.encode() + b";" in (cur.kvs[0].value if cur.kvs else b""):
                return True
            time.sleep(0.1)
    return False


def main() -> None:
    endpoints, cycles, ttl = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
    k = kit(sys.argv[4] if len(sys.argv) > 4 else "thread")
    pid = os.getpid()
    with k.Client(endpoints, timeout=5) as c:
        session = None
        i = 0
        while i < cycles:
            try:
                if session is None or not session.alive:
                    session = k.Session(c, ttl=ttl)
                lock = k.Lock(session, "x")
                lock.acquire(timeout=40)
            except QkvError as exc:
                print(json.dumps({"pid": pid, "i": i, "acquire_error": exc.message}), flush=True)
                time.sleep(0.2)
                continue
            ok_open = fenced_append(c, lock, f"{pid}.{i}<")
            time.sleep(0.01)
            ok_close = fenced_append(c, lock, f"{pid}.{i}>")
            rev = lock.revision
            for _ in range(50):
                try:
                    lock.release()
                    break
                except QkvError:
                    time.sleep(0.1)
            print(json.dumps({"pid": pid, "i": i, "rev": rev, "open": ok_open, "close": ok_close}),
                  flush=True)
            i += 1
        if session is not None:
            session.close()


if __name__ == "__main__":
    main()
