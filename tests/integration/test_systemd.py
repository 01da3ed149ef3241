"""systemd integration, seen from systemd's side: a node started with a NOTIFY_SOCKET (a
unix datagram socket this test reads, as systemd would) and a watchdog interval says
READY=1, a STATUS= line, WATCHDOG=1 again and again while healthy; the pings stop while
one actor is frozen with SIGSTOP (a wedged actor) and come back after SIGCONT; SIGTERM
gives STOPPING=1. The units in deploy/ pass `systemd-analyze verify`."""
from __future__ import annotations

import os
import sys
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from nodes.supervisor import HEARTBEAT_STALE_S
from nodeproc import NodeProcess, wait_for

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
HEALTHY = re.compile(r"^(leader|follower|candidate|pre_candidate)( \(no leader\))?, term \d+, applied \d+, "
                     r"revision \d+, alarms: none$")
QUIET_S = 3.0  # after the node said it is unhealthy, no WATCHDOG=1 for this long


class NotifyListener:
    """systemd's side of sd_notify: a datagram socket and every message received, in order."""

    def __init__(self, directory: Path) -> None:
        path = str(directory / "notify.sock")
        if len(path) > 100:  # sun_path is 108 bytes: a long pytest tmp dir gets a short one
            path = os.path.join(tempfile.mkdtemp(prefix="qkv-notify-"), "n.sock")
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                for line in data.decode(errors="replace").splitlines():
                    self.messages.append((time.monotonic(), line))

    def lines(self, since: int = 0) -> list[str]:
        with self._lock:
            return [m for _, m in self.messages[since:]]

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _to_supervisor(node: NodeProcess, frozen_pid: int) -> None:
    """Garbage, and heartbeats that are not the frozen actor's (another pid, another role),
    on the supervisor's PULL: dropped, and the frozen actor is still found out."""
    import zmq

    from actors.runtime import messages as M
    from actors.runtime import wire
    from nodes.endpoints import Endpoints, run_dir_for

    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(Endpoints(run_dir_for(node.data_dir)).supervisor)
    try:
        for frame in (b"", b"\x01", b"\x01\x33\xc1", b"\x01\x33" + b"\x93" * 5000, b"\x02\x32",
                      wire.pack(M.Heartbeat("storage", frozen_pid + 1, {})),
                      wire.pack(M.Heartbeat("metrics", frozen_pid, {})),
                      wire.pack(M.Status(1))):
            sock.send(frame)
    finally:
        sock.close()


def _statuses(lines: list[str]) -> list[str]:
    return [line[len("STATUS="):] for line in lines if line.startswith("STATUS=")]


def test_notify_ready_status_watchdog_and_stopping(tmp_path):
    listener = NotifyListener(tmp_path)
    node = NodeProcess(tmp_path, "n1", env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "1000000"},
                       metrics=True, grpc=True)  # all six actors beat (grpc too: READY=1 waits for it)
    frozen: int | None = None
    try:
        node.start()
        wait_for(lambda: "READY=1" in listener.lines(), 20, "READY=1")
        wait_for(lambda: any(HEALTHY.match(s) for s in _statuses(listener.lines())), 20,
                 "a healthy STATUS= line (role, term, applied, revision, alarms)")
        start = listener.count()
        wait_for(lambda: listener.lines(start).count("WATCHDOG=1") >= 3, 20, "WATCHDOG=1 again and again")
        assert not any(line.startswith("WATCHDOG=") and line != "WATCHDOG=1" for line in listener.lines())

        # A frozen actor: its heartbeats stop, the supervisor says so and stops the pings.
        frozen = node.actor_pids()["storage"]
        os.kill(frozen, signal.SIGSTOP)
        mark = listener.count()
        _to_supervisor(node, frozen)
        wait_for(lambda: "unhealthy: storage not answering" in _statuses(listener.lines(mark)),
                 HEARTBEAT_STALE_S + 20, "STATUS=unhealthy: storage not answering")
        told = next(i for i, line in enumerate(listener.lines(mark))
                    if line == "STATUS=unhealthy: storage not answering") + mark
        quiet_until = time.monotonic() + QUIET_S
        while time.monotonic() < quiet_until:  # an observation window: pings must stay away
            assert "WATCHDOG=1" not in listener.lines(told), "a WATCHDOG=1 while storage was frozen"
            time.sleep(0.05)
        assert "WATCHDOG=1" not in listener.lines(told)

        os.kill(frozen, signal.SIGCONT)
        frozen = None
        back = listener.count()
        wait_for(lambda: "WATCHDOG=1" in listener.lines(back), 20, "WATCHDOG=1 after SIGCONT")
        wait_for(lambda: any(HEALTHY.match(s) for s in _statuses(listener.lines(back))), 20,
                 "a healthy STATUS= line after SIGCONT")
        assert node.serves()

        node.stop()
        wait_for(lambda: "STOPPING=1" in listener.lines(), 10, "STOPPING=1")
        assert node.proc is not None and node.proc.returncode == 0
    finally:
        if frozen is not None:
            try:
                os.kill(frozen, signal.SIGCONT)
            except ProcessLookupError:
                pass
        node.stop()
        listener.close()


def test_no_watchdog_pings_for_another_pid(tmp_path):
    """WATCHDOG_PID names another process (systemd set it for a parent that exec'd us under
    a wrapper, say): the node sends no WATCHDOG=1, but READY=1 and STATUS= as usual."""
    listener = NotifyListener(tmp_path)
    node = NodeProcess(tmp_path, "n1", env={"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "200000",
                                            "WATCHDOG_PID": "1"})
    try:
        node.start()
        wait_for(lambda: "READY=1" in listener.lines(), 20, "READY=1")
        wait_for(lambda: any(HEALTHY.match(s) for s in _statuses(listener.lines())), 20, "a healthy STATUS=")
        node.stop()
        wait_for(lambda: "STOPPING=1" in listener.lines(), 10, "STOPPING=1")
        assert "WATCHDOG=1" not in listener.lines()
    finally:
        node.stop()
        listener.close()


def test_status_line_names_a_raised_alarm(tmp_path):
    """A full backend raises NOSPACE; the STATUS= line an operator sees says so."""
    from protocol import errors
    from protocol.client import Client

    listener = NotifyListener(tmp_path)
    node = NodeProcess(tmp_path, "n1", args=["--quota-backend-bytes", "300000"],
                       env={"NOTIFY_SOCKET": listener.path})
    try:
        node.start()
        with Client([node.client_url], timeout=5) as c:
            for i in range(500):
                try:
                    c.put(f"big/{i:04d}", b"v" * 10_000)
                except errors.NoSpace:
                    break
            else:
                raise AssertionError("the quota was never enforced")
        wait_for(lambda: any(s.startswith("leader, ") and s.endswith("alarms: NOSPACE")
                             for s in _statuses(listener.lines())), 20, "STATUS=... alarms: NOSPACE")
    finally:
        node.discard()
        listener.close()


# --- systemd-analyze verify ------------------------------------------------------------
def _verifiable_copy(unit: Path, into: Path) -> Path:
    """The unit with ExecStart= pointing at a binary that exists here (verify insists)."""
    qkv = shutil.which("qkv") or str(Path(sys.executable).with_name("qkv"))
    if not os.path.exists(qkv):
        qkv = "/bin/true"
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={qkv}", unit.read_text(), flags=re.M)
    out = into / unit.name
    out.write_text(text)
    return out


def _analyze() -> str:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the units in deploy/ were not verified")
    return analyze


def _verify_complaints(analyze: str, unit: Path) -> tuple[int, list[str], str]:
    """verify's exit status and the lines it printed about this unit (it exits 0 on a
    value it cannot parse, and only warns), and its whole output."""
    proc = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    out = proc.stdout + proc.stderr
    # Lines about other units of this machine (verify loads dependencies) are not ours.
    return proc.returncode, [line for line in out.splitlines() if unit.name in line], out


def test_units_pass_systemd_analyze_verify(tmp_path):
    analyze = _analyze()
    units = sorted(DEPLOY.glob("*.service"))
    assert units, "no unit in deploy/"
    for unit in units:
        code, ours, out = _verify_complaints(analyze, _verifiable_copy(unit, tmp_path))
        assert code == 0 and not ours, f"{unit.name}:\n{out}"
    # The check sees a broken unit (verify only warns about a bad value: the lines count).
    broken = tmp_path / "broken" / "qkv.service"
    broken.parent.mkdir()
    broken.write_text(_verifiable_copy(DEPLOY / "qkv.service", tmp_path).read_text()
                      .replace("WatchdogSec=30s", "WatchdogSec=soon"))
    code, ours, out = _verify_complaints(analyze, broken)
    assert code != 0 or ours, out


def test_unit_sandboxing_exposure(tmp_path):
    """`systemd-analyze security` rates the unit's sandboxing; ours stays in its "OK" band
    (exposure below 2.0 of 10)."""
    analyze = _analyze()
    copy = _verifiable_copy(DEPLOY / "qkv.service", tmp_path)
    proc = subprocess.run([analyze, "security", "--offline=yes", "--threshold=20", str(copy)],
                          capture_output=True, text=True, timeout=60)
    if "--offline" in proc.stderr and ("unrecognized" in proc.stderr or "Unknown" in proc.stderr):
        pytest.skip("this systemd-analyze has no --offline (systemd < 250): exposure not rated")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "Overall exposure level" in proc.stdout
