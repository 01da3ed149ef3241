"""`qkvctl make-mirror` between two real nodes: the initial sync, the live copy (puts and
deletes, renamed to --dest-prefix), and the copy resuming after the destination and then
the source were restarted, from the last revision copied (nothing lost)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

from nodeproc import wait_for
from protocol.client import Client

ROOT = Path(__file__).resolve().parents[2]


def qkvctl(endpoint: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "protocol.client.cli", "--endpoints", endpoint, *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def dest_keys(node) -> dict[bytes, bytes]:
    try:
        with Client([node.client_url], timeout=2.0) as c:
            return {kv.key: kv.value for kv in c.get(b"dst/", prefix=True).kvs}
    except Exception:  # the destination is down or electing: not yet
        return {}


def test_make_mirror_copies_and_resumes_after_restarts(node_factory):
    src = node_factory("src")
    dst = node_factory("dst")
    with Client([src.client_url], timeout=5.0) as c:
        for i in range(5):
            c.put(f"src/base{i}".encode(), f"v{i}".encode())
        c.put(b"other/x", b"not copied")
    proc = subprocess.Popen([sys.executable, "-m", "protocol.client.cli", "--endpoints", src.client_url,
                             "--command-timeout", "2s", "make-mirror", "--prefix", "src/", "--dest-prefix", "dst/",
                             "--print-interval", "0.5", dst.client_url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    warnings: list[str] = []  # its stderr, read as it comes
    reader = threading.Thread(target=lambda: warnings.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        want = {f"dst/base{i}".encode(): f"v{i}".encode() for i in range(5)}
        wait_for(lambda: dest_keys(dst) == want, 30, "the initial sync")
        with Client([src.client_url], timeout=5.0) as c:
            c.put(b"src/live", b"1")
            c.delete(b"src/base0")
        want[b"dst/live"] = b"1"
        del want[b"dst/base0"]
        wait_for(lambda: dest_keys(dst) == want, 30, "the live copy")

        dst.stop()  # the destination goes away; the source keeps changing
        with Client([src.client_url], timeout=5.0) as c:
            for i in range(3):
                c.put(f"src/while-dst-down{i}".encode(), b"x")
            c.delete(b"src/base1")
        wait_for(lambda: any("retrying until it answers" in w for w in warnings), 30,
                 "make-mirror to find the destination away")
        dst.start()
        want.update({f"dst/while-dst-down{i}".encode(): b"x" for i in range(3)})
        del want[b"dst/base1"]
        wait_for(lambda: dest_keys(dst) == want, 60, "the copy to resume after the destination restarted")

        src.stop()  # now the source restarts
        src.start()
        with Client([src.client_url], timeout=5.0) as c:
            c.put(b"src/after-src-restart", b"y")
        want[b"dst/after-src-restart"] = b"y"
        wait_for(lambda: dest_keys(dst) == want, 60, "the copy to resume after the source restarted")
        assert proc.poll() is None, proc.communicate()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        reader.join(5)
    err = "".join(warnings)
    assert proc.returncode == 130, (out, err)
    counts = [int(line) for line in out.split()]
    # 5 + 2 + 4 (+ 1) copied, printed every 0.5 s as it went (the last one may not be printed yet)
    assert counts and counts == sorted(counts) and counts[-1] >= 11, out
    assert "destination answers again: copying" in err, err


def test_make_mirror_argument_errors(node_factory):
    node = node_factory()
    out = qkvctl(node.client_url, "make-mirror")
    assert (out.returncode, out.stderr) == (128, "Error: make-mirror takes one destination argument\n")
    out = qkvctl(node.client_url, "make-mirror", "--dest-prefix", "a", "--no-dest-prefix", node.client_url)
    assert (out.returncode, out.stderr) == (
        128, "Error: `--dest-prefix` and `--no-dest-prefix` cannot be set at the same time, choose one\n")
