"""qkvctl and the client library against a real node, as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.client import Client, Compare, Op
from protocol import errors


def qkvctl(node, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("qkvctl")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from protocol.client.cli import main; main()"]
    return subprocess.run(cmd + ["--endpoints", node.client_url, *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_qkvctl_tour(node_factory):
    node = node_factory()
    assert qkvctl(node, "put", "foo", "bar").stdout == "OK\n"
    assert qkvctl(node, "get", "foo").stdout == "foo\nbar\n"
    assert qkvctl(node, "put", "foo", "baz", "--prev-kv").stdout == "OK\nfoo\nbar\n"
    assert qkvctl(node, "get", "foo", "--print-value-only").stdout == "baz\n"
    out = json.loads(qkvctl(node, "get", "foo", "-w", "json").stdout)
    assert out["kvs"][0]["version"] == 2 and out["header"]["revision"] == 3
    for i in range(3):
        qkvctl(node, "put", f"p/{i}", str(i))
    assert qkvctl(node, "get", "p/", "--prefix", "--keys-only").stdout == "p/0\n\np/1\n\np/2\n\n"
    assert qkvctl(node, "get", "p/", "--prefix", "--limit", "1", "--order", "DESCEND").stdout == "p/2\n2\n"
    assert qkvctl(node, "get", "p/", "--prefix", "--count-only", "-w", "fields").stdout.count('"Count" : 3') == 1
    txn = qkvctl(node, "txn", stdin='value("foo") = "baz"\n\nput result ok\n\nput result failed\n\n')
    assert txn.stdout.startswith("SUCCESS\n\nOK"), txn
    assert qkvctl(node, "get", "result", "--consistency", "s").stdout == "result\nok\n"
    assert qkvctl(node, "del", "p/", "--prefix").stdout == "3\n"
    status = qkvctl(node, "endpoint", "status", "-w", "json")
    assert json.loads(status.stdout)[0]["Status"]["leader"]
    health = qkvctl(node, "endpoint", "health")
    assert health.returncode == 0 and "is healthy" in health.stderr
    rev = out["header"]["revision"]
    assert qkvctl(node, "compaction", str(rev)).stdout == f"compacted revision {rev}\n"
    err = qkvctl(node, "get", "foo", "--rev", "2")
    assert err.returncode != 0 and err.stderr.strip() == "Error: etcdserver: mvcc: required revision has been compacted"


def test_qkvctl_reports_an_unreachable_endpoint(node_factory):
    node = node_factory()
    node.stop()
    out = qkvctl(node, "--command-timeout", "1s", "put", "k", "v")
    assert out.returncode != 0 and out.stderr.startswith("Error:")
    health = qkvctl(node, "--command-timeout", "1s", "endpoint", "health")
    assert health.returncode != 0 and "is unhealthy" in health.stderr


def test_client_library_on_a_real_node(node_factory):
    node = node_factory()
    dead = "tcp://127.0.0.1:1"  # nothing listens there: reads fail over to the live node
    with Client([dead, node.client_url], timeout=5) as c:
        put = c.put("/config/mode", "blue")
        got = c.get("/config/", prefix=True)
        assert [(kv.key, kv.value) for kv in got.kvs] == [(b"/config/mode", b"blue")]
        assert got.kvs[0].mod_revision == put.header.revision
        cas = c.txn().if_(Compare.mod_revision("/config/mode") == put.header.revision) \
                     .then(Op.put("/config/mode", "green")).else_(Op.get("/config/mode")).commit()
        assert cas.succeeded
        stale = c.txn().if_(Compare.mod_revision("/config/mode") == put.header.revision) \
                       .then(Op.put("/config/mode", "red")).else_(Op.get("/config/mode")).commit()
        assert not stale.succeeded and stale.responses[0].kvs[0].value == b"green"
        with pytest.raises(errors.DuplicateKey):
            c.txn(success=[Op.put("a", "1"), Op.put("a", "2")])
        with pytest.raises(errors.LeaseNotFound):
            c.put("k", "v", lease=7)
        assert c.status().leader == put.header.member_id
