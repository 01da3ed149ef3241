"""qkvctl against the in-process fake gateway: etcdctl's output shapes and exit codes."""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from fakeserver import MEMBER_ID  # noqa: E402
from protocol.client.cli import hoist_global_flags, parse_duration, run  # noqa: E402
from protocol.client.output import go_duration, go_quote, humanize_bytes, render_table  # noqa: E402
from protocol.client.txnparse import (  # noqa: E402
    TxnParseError, argify, parse_compare, parse_del, parse_get, parse_txn,
)


@pytest.fixture
def ctl(srv, capsys, monkeypatch):
    """ctl("get", "foo", stdin="...") -> (exit code, stdout, stderr)."""
    def call(*argv: str, stdin: str | bytes = b"", endpoints: str | None = None):
        data = stdin.encode() if isinstance(stdin, str) else stdin
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        capsys.readouterr()
        rc = run(["--endpoints", endpoints or srv.address, "--command-timeout", "2s", *argv])
        out = capsys.readouterr()
        return rc, out.out, out.err
    return call


# -- pure helpers ---------------------------------------------------------------------------
def test_helpers():
    assert parse_duration("5s") == 5 and parse_duration("500ms") == 0.5
    assert parse_duration("1m30s") == 90 and parse_duration("2") == 2
    assert humanize_bytes(24576) == "25 kB" and humanize_bytes(5) == "5 B"
    assert humanize_bytes(1_500_000) == "1.5 MB"
    assert go_duration(0.00136424) == "1.36424ms" and go_duration(0.000532) == "532µs"
    assert go_duration(1.5) == "1.5s" and go_duration(90) == "1m30s"
    assert go_quote(b'a"b\n\xff') == '"a\\"b\\n\\xff"' and go_quote("é".encode()) == '"é"'
    assert hoist_global_flags(["get", "k", "-w", "json", "--hex", "--endpoints=x"]) == [
        "-w", "json", "--hex", "--endpoints=x", "get", "k"]
    assert hoist_global_flags(["put", "--", "-w", "v"]) == ["put", "--", "-w", "v"]
    table = render_table(["endpoint", "health"], [["127.0.0.1:1", "true"]])
    assert table.splitlines() == [
        "+-------------+--------+",
        "|  ENDPOINT   | HEALTH |",
        "+-------------+--------+",
        "| 127.0.0.1:1 |   true |",
        "+-------------+--------+",
    ]


def test_txn_syntax_parser():
    assert argify('put "sp ace" \'v v\' --prev-kv') == ["put", "sp ace", "v v", "--prev-kv"]
    assert parse_compare('mod("key1") > "0"').to_wire() == {
        "target": "MOD", "result": "GREATER", "key": b"key1", "mod_revision": 0}
    assert parse_compare('value("k") = "a\\tb"').to_wire()["value"] == b"a\tb"
    assert parse_compare('ver("k") != "1"').to_wire()["result"] == "NOT_EQUAL"
    assert parse_compare('c("k") < "5"').to_wire()["target"] == "CREATE"
    assert parse_compare('lease("k") = "694d"').to_wire()["lease"] == 0x694D
    for bad in ('bogus("a") = "1"', 'mod("a") >= "1"', 'mod("a") > "x"', 'mod "a" > "1"'):
        with pytest.raises(TxnParseError):
            parse_compare(bad)
    compares, success, failure = parse_txn(io.StringIO(
        'mod("a") > "0"\n\nput a x --prev-kv\nget b --prefix\ndel c d\n\nput f 1\n'))
    assert len(compares) == 1
    assert [op.to_wire() for op in success] == [
        {"put": {"key": b"a", "value": b"x", "prev_kv": True}},
        {"range": {"key": b"b", "range_end": b"c"}},
        {"delete_range": {"key": b"c", "range_end": b"d"}}]
    assert [op.to_wire() for op in failure] == [{"put": {"key": b"f", "value": b"1"}}]
    assert parse_txn(io.StringIO("")) == ([], [], [])
    with pytest.raises(TxnParseError) as exc:
        parse_txn(io.StringIO("\n\nput a\n\n"))
    assert exc.value.exit_code == 128


def test_get_del_put_rules_are_shared_by_commands_and_txn_lines(ctl):
    """One parser per op (etcdctl runs the same command definition for a txn line): each
    bad get/del/put fails with the same message and exit code on both paths."""
    cases = [("get",), ("get", "a", "b", "c"), ("get", "a", "--prefix", "--from-key"),
             ("get", "a", "b", "--prefix"), ("get", "a", "--consistency=x"), ("get", "a", "--order=up"),
             ("del",), ("del", "a", "b", "--from-key"), ("del", "a", "--prefix", "--from-key"),
             ("put", "k", "v", "--ignore-value"), ("put", "k", "v", "--lease=zz")]
    for args in cases:
        rc, out, err = ctl(*args)
        with pytest.raises(TxnParseError) as exc:
            parse_txn(io.StringIO("\n" + " ".join(args) + "\n\n"))
        assert (rc, err) == (exc.value.exit_code, f"Error: {exc.value}\n"), args
    req = parse_get(["a"], prefix=True, order="DESCEND", sort_by="MODIFY", limit=-1, consistency="s")
    assert req.op().to_wire() == {"range": {"key": b"a", "range_end": b"b", "sort_order": "DESCEND",
                                            "sort_target": "MOD", "serializable": True}}
    assert parse_del(["a", "c"], prev_kv=True).op().to_wire() == {
        "delete_range": {"key": b"a", "range_end": b"c", "prev_kv": True}}


# -- commands ----------------------------------------------------------------------------------
def test_put_get_simple(ctl):
    assert ctl("put", "foo", "bar") == (0, "OK\n", "")
    assert ctl("put", "foo", "baz", "--prev-kv") == (0, "OK\nfoo\nbar\n", "")
    assert ctl("put", "k", stdin="from stdin\n") == (0, "OK\n", "")
    assert ctl("get", "k") == (0, "k\nfrom stdin\n\n", "")
    assert ctl("get", "foo") == (0, "foo\nbaz\n", "")
    assert ctl("get", "foo", "--print-value-only") == (0, "baz\n", "")
    assert ctl("get", "", "--prefix", "--keys-only") == (0, "foo\n\nk\n\n", "")
    assert ctl("get", "a", "z", "--order", "DESCEND", "--sort-by", "MODIFY") == (
        0, "k\nfrom stdin\n\nfoo\nbaz\n", "")
    assert ctl("get", "foo", "--limit", "1", "--hex") == (0, "\\x66\\x6f\\x6f\n\\x62\\x61\\x7a\n", "")
    assert ctl("get", "f", "--from-key", "--consistency", "s", "--keys-only") == (0, "foo\n\nk\n\n", "")
    assert ctl("get", "foo", "--rev", "2") == (0, "foo\nbar\n", "")
    assert ctl("get", "nothing") == (0, "", "")


def test_put_get_json_and_fields(ctl, srv):
    ctl("put", "foo", "bar")
    rc, out, _ = ctl("get", "foo", "-w", "json")
    doc = json.loads(out)
    assert rc == 0 and doc == {
        "header": {"cluster_id": srv.store.header()["cluster_id"], "member_id": MEMBER_ID,
                   "revision": 2, "raft_term": 2},
        "kvs": [{"key": base64.b64encode(b"foo").decode(), "create_revision": 2,
                 "mod_revision": 2, "version": 1, "value": base64.b64encode(b"bar").decode()}],
        "count": 1}
    assert list(doc["kvs"][0]) == ["key", "create_revision", "mod_revision", "version", "value"]
    rc, out, _ = ctl("get", "foo", "--write-out=fields")
    assert out.splitlines()[2:] == ['"Revision" : 2', '"RaftTerm" : 2', '"Key" : "foo"',
                                    '"CreateRevision" : 2', '"ModRevision" : 2', '"Version" : 1',
                                    '"Value" : "bar"', '"Lease" : 0', '"More" : false',
                                    '"Count" : 1']
    rc, out, _ = ctl("get", "foo", "--count-only", "-w", "fields")
    assert rc == 0 and '"Count" : 1' in out and '"Key"' not in out
    rc, out, _ = ctl("put", "foo", "x", "--prev-kv", "-w", "json")
    assert json.loads(out)["prev_kv"]["value"] == base64.b64encode(b"bar").decode()
    rc, out, _ = ctl("get", "nothing", "-w", "json")
    assert set(json.loads(out)) == {"header"}
    # flags given before the command work too
    rc, out, _ = ctl("-w", "json", "del", "foo")
    assert json.loads(out)["deleted"] == 1


def test_del(ctl):
    ctl("put", "a1", "1")
    ctl("put", "a2", "2")
    ctl("put", "b", "3")
    assert ctl("del", "nothing") == (0, "0\n", "")
    assert ctl("del", "a", "--prefix", "--prev-kv") == (0, "2\na1\n1\na2\n2\n", "")
    assert ctl("del", "a", "--from-key") == (0, "1\n", "")
    rc, out, _ = ctl("del", "x", "-w", "fields")
    assert out.splitlines()[-1] == '"Deleted" : 0'


def test_txn_from_stdin(ctl):
    ctl("put", "a", "1")
    ctl("put", "b", "2")
    script = ('mod("a") > "0"\nvalue("b") = "2"\n\nput a x\nget b\ndel nothing\n'
              'put "sp ace" "v v" --prev-kv\n\nput fail 1\n\n')
    assert ctl("txn", stdin=script) == (0, "SUCCESS\n\nOK\n\nb\n2\n\n0\n\nOK\n", "")
    rc, out, _ = ctl("txn", "-w", "json", stdin=script)
    doc = json.loads(out)
    assert doc["succeeded"] is True and doc["responses"][0] == {
        "Response": {"ResponsePut": {"header": {"revision": doc["header"]["revision"]}}}}
    assert doc["responses"][3]["Response"]["ResponsePut"]["prev_kv"]["key"] == \
        base64.b64encode(b"sp ace").decode()
    failing = 'version("a") = "100"\n\nput a y\n\nput fail 1\nget a\n'
    assert ctl("txn", stdin=failing) == (0, "FAILURE\n\nOK\n\na\nx\n", "")
    rc, out, _ = ctl("txn", "-i", stdin=failing)
    assert out.startswith("compares:\nsuccess requests (get, put, del):\n"
                          "failure requests (get, put, del):\nFAILURE\n")
    rc, out, err = ctl("txn", "-w", "fields", stdin=failing)
    assert out.splitlines()[4] == '"Succeeded" : false'
    assert ctl("txn", stdin='bogus("a") = "1"\n\n\n') == (
        3, "", 'Error: malformed comparison: bogus("a") = "1" (unknown target bogus)\n')
    assert ctl("txn", stdin="\n\nput a 1\nput a 2\n\n") == (
        1, "", "Error: etcdserver: duplicate key given in txn request\n")


def test_compaction(ctl):
    for i in range(3):
        ctl("put", "k", str(i))
    assert ctl("compaction", "3") == (0, "compacted revision 3\n", "")
    assert ctl("compaction", "3", "--physical") == (
        1, "", "Error: etcdserver: mvcc: required revision has been compacted\n")
    assert ctl("compaction", "x")[0] == 1
    assert ctl("get", "k", "--rev", "2")[2] == \
        "Error: etcdserver: mvcc: required revision has been compacted\n"


def test_endpoint_status(ctl, srv):
    rc, out, err = ctl("endpoint", "status")
    assert rc == 0 and err == ""
    assert out == f"{srv.address}, {MEMBER_ID:x}, {srv.version}, 25 kB, true, false, 2, 8, 8, \n"
    rc, out, _ = ctl("endpoint", "status", "-w", "table")
    lines = out.splitlines()
    assert lines[1].split("|")[1:-1] == [
        "    ENDPOINT     ", "        ID        ", "   VERSION   ", " DB SIZE ", " DB SIZE IN USE ",
        " DB SIZE QUOTA ", " IS LEADER ",
        " IS LEARNER ", " RAFT TERM ", " RAFT INDEX ", " RAFT APPLIED INDEX ", " ERRORS "]
    assert lines[3].startswith(f"| {srv.address} | {MEMBER_ID:x} |") and len(lines) == 5
    rc, out, _ = ctl("endpoint", "status", "-w", "json")
    doc = json.loads(out)
    assert doc[0]["Endpoint"] == srv.address and doc[0]["Status"]["leader"] == MEMBER_ID
    assert doc[0]["Status"]["dbSize"] == 24576 and doc[0]["Status"]["header"]["member_id"] == MEMBER_ID


def test_endpoint_status_with_a_dead_member(ctl, srv):
    rc, out, err = ctl("--command-timeout", "300ms", "endpoint", "status",
                       endpoints=f"{srv.address},127.0.0.1:1")
    assert rc == 1 and out.startswith(srv.address + ", ")
    assert err.startswith("Failed to get the status of endpoint 127.0.0.1:1 (")


def test_endpoint_health(ctl, srv):
    rc, out, err = ctl("endpoint", "health")
    assert rc == 0 and out == ""  # etcdctl 3.4 prints the verdicts on stderr
    assert err.startswith(f"{srv.address} is healthy: successfully committed proposal: took = ")
    assert srv.requests[-1]["op"] == "range" and srv.requests[-1]["key"] == b"health"
    assert "serializable" not in srv.requests[-1]
    rc, out, _ = ctl("endpoint", "health", "-w", "json")
    doc = json.loads(out)
    assert doc[0]["endpoint"] == srv.address and doc[0]["health"] is True and doc[0]["took"]
    rc, out, _ = ctl("endpoint", "health", "-w", "table")
    lines = out.splitlines()
    assert rc == 0 and len(lines) == 5
    assert [c.strip() for c in lines[1].split("|")[1:-1]] == ["ENDPOINT", "HEALTH", "TOOK", "ERROR"]
    assert [c.strip() for c in lines[3].split("|")[1:-1]][:2] == [srv.address, "true"]
    srv.error_code = "no_leader"
    rc, out, err = ctl("endpoint", "health")
    assert rc == 1 and out == ""
    assert err == (f"{srv.address} is unhealthy: failed to commit proposal: fake: no_leader\n"
                   "Error: unhealthy cluster\n")


def test_errors_and_exit_codes(ctl, srv):
    assert ctl("get") == (128, "", "Error: get command needs one argument as key and an optional "
                                   "argument as range_end\n")
    assert ctl("put", "k") == (128, "", "Error: put command needs 1 argument and input from stdin "
                                        "or 2 arguments\n")
    assert ctl("put", "k", "v", "--ignore-value")[0] == 128
    assert ctl("put", "k", "v", "--lease", "zz")[0] == 128
    assert ctl("get", "k", "-w", "table") == (4, "", "Error: table not supported as output format\n")
    assert ctl("get", "k", "--sort-by", "bogus") == (4, "", "Error: bad sort target bogus\n")
    assert ctl("get", "k", "--consistency", "x") == (4, "", 'Error: unknown consistency flag "x"\n')
    assert ctl("get", "k", "--count-only")[0] == 128
    assert ctl("get", "a", "b", "--prefix")[0] == 128
    rc, out, err = ctl("get", "k", "--bogus")
    assert rc == 1 and err.startswith("Error: ") and "--bogus" in err
    assert ctl("put", "", "x") == (1, "", "Error: etcdserver: key is not provided\n")
    assert ctl("put", "k", "v", "--lease", "694d") == (
        1, "", "Error: etcdserver: requested lease not found\n")
    srv.drop_replies = True
    rc, out, err = ctl("--command-timeout", "300ms", "put", "k", "v")
    assert rc == 1 and err.startswith("Error: ") and "unknown" in err
    rc, out, err = ctl("get", "k", endpoints="127.0.0.1:1")
    assert rc == 1 and err.startswith("Error: could not connect")


def test_env_endpoints_and_no_args(srv, capsys, monkeypatch):
    monkeypatch.setenv("QKVCTL_ENDPOINTS", srv.address)
    assert run(["put", "k", "v"]) == 0
    assert capsys.readouterr().out == "OK\n"
    assert run([]) == 0
    assert "Usage" in capsys.readouterr().out


def test_console_script_help_is_fast_and_lazy():
    env = {**os.environ, "PYTHONPATH": ROOT}
    code = ("import sys; import protocol.client.cli as c; "
            "assert 'zmq' not in sys.modules, 'zmq imported at startup'; "
            "sys.argv=['qkvctl','--help']; c.main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    for cmd in ("put", "get", "del", "txn", "compaction", "endpoint", "benchmark"):
        assert cmd in proc.stdout


def test_watch_output_shapes():
    """etcdctl 3.4's watch lines (Printer.watch), in every format it supports."""
    from protocol.client.output import Printer
    from protocol.client.types import KeyValue, ResponseHeader
    from protocol.client.watch import Event, WatchResponse

    old = KeyValue(b"foo", b"bar", 2, 2, 1)
    new = KeyValue(b"foo", b"baz", 2, 3, 2)
    gone = KeyValue(b"foo", mod_revision=4)
    resp = WatchResponse(ResponseHeader(7, 9, 4, 2), [Event("PUT", new, old), Event("DELETE", gone)])

    def shown(fmt: str, r: WatchResponse = resp) -> str:
        buf = io.BytesIO()
        Printer(fmt, buf).watch(r)
        return buf.getvalue().decode()

    assert shown("simple") == "PUT\nfoo\nbar\nfoo\nbaz\nDELETE\nfoo\n\n"
    line = json.loads(shown("json"))
    assert line["Header"]["revision"] == 4 and line["Created"] is False and line["Canceled"] is False
    assert [e.get("type", 0) for e in line["Events"]] == [0, 1]
    assert line["Events"][0]["prev_kv"]["value"] == "YmFy" and "prev_kv" not in line["Events"][1]
    fields = shown("fields").splitlines()
    assert fields[:5] == ['"ClusterID" : 7', '"MemberID" : 9', '"Revision" : 4', '"RaftTerm" : 2',
                          '"Type" : PUT']
    assert '"PrevValue" : "bar"' in fields and fields[-7] == '"Type" : DELETE'
    notify = WatchResponse(ResponseHeader(revision=5), progress_notify=True)
    assert shown("simple", notify) == "progress notify: 5\n"
