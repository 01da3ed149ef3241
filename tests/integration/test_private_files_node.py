"""Issue 11, end to end: a node's files are private, its run dir cannot be squatted, it
refuses plain text beyond loopback unless asked, and it obeys fault injection only with
the test-only flag."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest

from nodeproc import free_port, wait_for
from nodes.endpoints import Endpoints, run_dir_for


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def loose_entries(top: str) -> list[str]:
    """Every path under `top` (and `top`) that group or others may use."""
    found = [top] if mode(top) & 0o077 else []
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(root, name)
            if not os.path.islink(path) and mode(path) & 0o077:
                found.append(f"{path} {mode(path):04o}")
    return found


def log_events(node) -> set[tuple]:
    """(event, role, exit_code) of the node's JSON log lines."""
    found = set()
    for line in node.log_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            found.add((rec.get("event"), rec.get("role"), rec.get("exit_code")))
    return found


@pytest.fixture
def run_dir_cleanup():
    """Run dirs a test made by hand in the shared temp dir; removed at the end."""
    made: list[str] = []
    yield made
    for path in made:
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        else:
            shutil.rmtree(path, ignore_errors=True)


def qkv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from nodes.cli import main; main()", "--listen-grpc-urls", "",
                           *args],
                          capture_output=True, text=True, timeout=30)


def test_listening_beyond_loopback_without_security_exits_2_naming_the_flag(tmp_path):
    port = free_port()
    out = qkv("--data-dir", str(tmp_path / "d"), "--listen-peer-urls", f"tcp://0.0.0.0:{port}",
              "--initial-advertise-peer-urls", f"tcp://127.0.0.1:{port}")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qkv: ") and "--peer-key-file" in lines[0], out.stderr
    assert "--insecure-peer" in lines[0]
    out = qkv("--data-dir", str(tmp_path / "d"), "--listen-client-urls", f"tcp://*:{free_port()}")
    assert out.returncode == 2 and "--client-key-file" in out.stderr and "--insecure-client" in out.stderr
    assert not os.path.exists(tmp_path / "d")  # refused before anything was written


@pytest.mark.parametrize("plant", ["0777", "symlink"])
def test_a_squatted_run_dir_stops_the_node_with_one_line(tmp_path, run_dir_cleanup, plant):
    data_dir = str(tmp_path / "n1.qkv")
    run_dir = run_dir_for(data_dir)
    run_dir_cleanup.append(run_dir)
    if plant == "0777":
        os.mkdir(run_dir)
        os.chmod(run_dir, 0o777)
        needle = "mode 0777"
    else:
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        os.symlink(tmp_path / "elsewhere", run_dir)
        needle = "is a symlink"
    out = qkv("--data-dir", data_dir, "--listen-client-urls", f"tcp://127.0.0.1:{free_port()}",
              "--listen-peer-urls", f"tcp://127.0.0.1:{free_port()}",
              "--listen-watch-urls", f"tcp://127.0.0.1:{free_port()}")
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"qkv: run dir {run_dir} ") and needle in last, out.stderr


def test_every_file_of_a_node_is_private_and_an_old_data_dir_is_fixed(node_factory):
    node = node_factory()
    assert node.serves()
    run_dir = run_dir_for(node.data_dir)
    assert loose_entries(node.data_dir) == []
    assert loose_entries(run_dir) == []  # config.json and the ipc sockets included
    assert os.path.exists(os.path.join(node.data_dir, "member.json"))
    node.stop()
    # An older qkv (umask 022) left everything readable by others.
    os.chmod(node.data_dir, 0o755)
    for root, dirs, files in os.walk(node.data_dir):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    node.start()
    assert loose_entries(node.data_dir) == []
    assert "data_dir_permissions_fixed" in node.log_text()


def test_a_node_without_the_test_flag_ignores_faults_and_failpoints(node_factory, run_dir_cleanup):
    # The storage actor would SIGKILL itself at its first commit if it obeyed QKV_FAILPOINTS.
    node = node_factory(env={"QKV_FAILPOINTS": "before_storage_commit"}, start=False)
    run_dir = run_dir_for(node.data_dir)
    run_dir_cleanup.append(run_dir)
    os.mkdir(run_dir, 0o700)
    faults = Endpoints(run_dir).faults_file
    with open(faults, "w") as f:
        json.dump({"drop_to": [1, 2, 3], "drop_from": [1, 2, 3]}, f)
    node.start()
    storage = node.actor_pids()["storage"]
    reply = node.request({"op": "put", "key": b"k", "value": b"v"})
    assert reply and reply["ok"], reply
    status = node.request({"op": "status"})
    assert status["ok"] and status["errors"] == []
    assert node.actor_pids()["storage"] == storage
    assert "fault_injection_ignored" in node.log_text()
    assert not any(event == "actor_died" for event, _, _ in log_events(node))
    node.stop()

    # The same node with the flag obeys both: the checks above are not vacuous.
    node.args = ["--test-fault-injection"]
    failpoints = node.env.pop("QKV_FAILPOINTS")
    node.start()
    status = node.request({"op": "status"})
    assert status["ok"] and any("peer fault injection active" in e for e in status["errors"]), status
    node.stop()
    node.env["QKV_FAILPOINTS"] = failpoints
    node.start(wait=False)  # storage dies at its first commit (the new leader's empty entry)
    wait_for(lambda: ("actor_died", "storage", -9) in log_events(node), 20, "storage to die at its crash point")


def test_sigterm_still_removes_the_run_dir(node_factory):
    node = node_factory()
    run_dir = run_dir_for(node.data_dir)
    assert mode(run_dir) == 0o700
    node.proc.send_signal(signal.SIGTERM)
    node.proc.wait(timeout=10)
    assert not os.path.exists(run_dir)
