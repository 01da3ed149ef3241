"""One real node, end to end, over the wire."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from nodeproc import wait_for


def ok(reply):
    assert reply is not None, "no reply"
    assert reply["ok"], reply
    return reply


def test_put_get_txn_compact_status(node_factory):
    node = node_factory()
    r = ok(node.request({"op": "put", "key": b"foo", "value": b"bar"}))
    rev = r["header"]["revision"]
    assert rev >= 2 and r["header"]["member_id"] and r["header"]["cluster_id"] and r["header"]["raft_term"] >= 1
    got = ok(node.request({"op": "range", "key": b"foo"}))
    assert got["kvs"] == [{"key": b"foo", "value": b"bar", "create_revision": rev, "mod_revision": rev,
                          "version": 1, "lease": 0}]
    ok(node.request({"op": "put", "key": b"foo", "value": b"baz"}))
    got = ok(node.request({"op": "range", "key": b"foo", "serializable": True}))
    assert got["kvs"][0]["version"] == 2
    past = ok(node.request({"op": "range", "key": b"foo", "revision": rev}))
    assert past["kvs"][0]["value"] == b"bar"
    t = ok(node.request({
        "op": "txn",
        "compare": [{"target": "VALUE", "result": "EQUAL", "key": b"foo", "value": b"baz"}],
        "success": [{"put": {"key": b"a", "value": b"1"}}, {"range": {"key": b"foo"}}],
        "failure": [],
    }))
    assert t["succeeded"] is True and t["responses"][1]["range"]["kvs"][0]["value"] == b"baz"
    current = t["header"]["revision"]
    ok(node.request({"op": "compact", "revision": current}))
    err = node.request({"op": "range", "key": b"foo", "revision": rev})
    assert err["ok"] is False and err["error"]["code"] == "compacted"
    assert err["error"]["compact_revision"] == current
    fut = node.request({"op": "range", "key": b"foo", "revision": current + 100})
    assert fut["error"]["code"] == "future_revision"
    st = ok(node.request({"op": "status"}))
    assert st["leader"] == st["header"]["member_id"]
    assert st["raft_applied_index"] >= 4 and st["db_size"] > 0
    d = ok(node.request({"op": "delete_range", "key": b"a", "prev_kv": True}))
    assert d["deleted"] == 1 and d["prev_kvs"][0]["value"] == b"1"


def test_lease_ids_are_refused_until_leases_exist(node_factory):
    node = node_factory()
    r = node.request({"op": "put", "key": b"k", "value": b"v", "lease": 12345})
    assert r["ok"] is False and r["error"]["code"] == "lease_not_found"


def test_actor_processes_show_their_role(node_factory):
    node = node_factory(metrics=True)
    pids = node.actor_pids()
    assert sorted(pids) == ["consensus", "gateway", "metrics", "storage", "watch"]
    for role, pid in pids.items():
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert role.encode() in f.read().split(b"\0")


def test_sigterm_stops_the_node_within_5s(node_factory):
    node = node_factory(metrics=True)
    pids = node.actor_pids()
    started = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    node.proc.wait(timeout=10)
    took = time.monotonic() - started
    assert node.proc.returncode == 0
    wait_for(lambda: not node.actor_pids(), 5, "actors to exit")
    print(f"clean stop took {took:.2f}s")
    assert set(pids)  # sanity: there were actors to stop


def test_kill_9_of_the_supervisor_leaves_no_orphans(node_factory):
    node = node_factory(metrics=True)
    assert len(node.actor_pids()) == 5  # the four actors and metrics
    node.proc.kill()
    node.proc.wait()
    wait_for(lambda: not node.actor_pids(), 5, "orphaned actors to exit")


def test_bad_flags_are_refused_with_one_line_naming_the_flag(tmp_path):
    cases = {
        "--snapshot-count": "abc",
        "--listen-client-urls": "http://127.0.0.1:1",
        "--log-format": "xml",
        "--election-timeout": "-3",
        "--initial-cluster-state": "maybe",
    }
    for flag, value in cases.items():
        out = subprocess.run(
            [sys.executable, "-c", "from nodes.cli import main; main()", "--data-dir", str(tmp_path / "d"), flag, value],
            capture_output=True, text=True, timeout=30,
        )
        assert out.returncode != 0
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and flag in lines[0], (flag, out.stderr)


def test_env_and_config_file_settings(tmp_path):
    from nodes.config import load_config

    conf = tmp_path / "qkv.toml"
    conf.write_text('snapshot-count = 7\nname = "fromfile"\nmax-txn-ops = 9\n')
    cfg = load_config({"max-txn-ops": "11"}, env={"QKV_SNAPSHOT_COUNT": "8"}, config_file=str(conf))
    assert (cfg.snapshot_count, cfg.name, cfg.max_txn_ops, cfg.data_dir) == (8, "fromfile", 11, "fromfile.qkv")


def test_a_data_dir_refuses_another_cluster_token_or_member_list(node_factory):
    node = node_factory()
    node.stop()
    base = node.command()
    for extra, needle in (
        (["--initial-cluster-token", "other-token"], "--initial-cluster-token 'other-token' does not match"),
        (["--initial-cluster", f"n1={node.peer_url},n2=tcp://127.0.0.1:1"], "--initial-cluster does not match"),
    ):
        out = subprocess.run(base + extra, capture_output=True, text=True, timeout=30)
        assert out.returncode != 0
        assert needle in out.stderr, out.stderr
    node.start()  # the right flags still work
