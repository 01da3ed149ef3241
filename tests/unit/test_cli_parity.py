"""qkvctl against the in-process fake gateway: the etcdctl 3.4 parity rows of issue 15
(lock/watch with a command, watch -i, -h/help/completion, QKVCTL_* environment,
argument errors, alarm json, endpoint health's stream). Expected texts are what
etcdctl 3.4.23 printed against etcd 3.4 for the same command lines."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from nodeproc import wait_for  # noqa: E402
from protocol.client import Client  # noqa: E402
from protocol.client.cli import run  # noqa: E402
from protocol.client.cli.lock_elect import split_lock_args  # noqa: E402
from protocol.client.cli.watch import parse_watch_line  # noqa: E402
from protocol.client.cli.common import CliError  # noqa: E402


@pytest.fixture
def ctl(srv, capsys, monkeypatch):
    """ctl("get", "foo") -> (exit code, stdout, stderr), in process."""
    def call(*argv: str, stdin: str = "", endpoints: str | None = None, env: dict | None = None):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        rc = run(["--endpoints", endpoints or srv.address, *argv])
        out = capsys.readouterr()
        for k in env or {}:
            monkeypatch.delenv(k)
        return rc, out.out, out.err
    return call


def qkvctl(srv, *args: str) -> list[str]:
    return [sys.executable, "-c", "from protocol.client.cli import main; main()",
            "--endpoints", srv.address, *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QKVCTL_")}
    return {**env, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1", **extra}


class Child:
    """A qkvctl child whose stdout and stderr are read by threads as they come."""

    def __init__(self, argv: list[str], stdin: bool = False, **env: str) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     text=True, cwd=ROOT, env=child_env(**env))
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, buf), daemon=True)
                         for s, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, buf: list[str]) -> None:
        for line in stream:
            buf.append(line)

    def text(self) -> str:
        return "".join(self.out)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 20) -> int:
        rc = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(5)
        return rc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- lock ---------------------------------------------------------------------------------------
def test_lock_argument_reading_as_cobra():
    assert split_lock_args(["name", "--", "sh", "-c", "x --ttl 3"], 10) == (["name", "sh", "-c", "x --ttl 3"], 10)
    assert split_lock_args(["name", "--ttl", "5", "echo", "hi"], 10) == (["name", "echo", "hi"], 5)
    assert split_lock_args(["name", "--ttl=7", "--", "--ttl", "1"], 10) == (["name", "--ttl", "1"], 7)
    assert split_lock_args(["name", "ls", "-l"], 10) == (["name", "ls", "-l"], 10)
    with pytest.raises(CliError) as exc:
        split_lock_args(["name", "--ttl=x"], 10)
    assert exc.value.exit_code == 1 and str(exc.value).startswith('invalid argument "x" for "--ttl" flag')


def test_lock_runs_a_command_after_the_separator(srv, tmp_path):
    """etcdctl 3.4: `lock name -- cmd args` runs cmd with ETCD_LOCK_KEY/REV; a failing
    command exits 1 with `Error: exit status N`; the lock is released either way."""
    seen = tmp_path / "env"
    r = subprocess.run(qkvctl(srv, "lock", "mylock", "--", "sh", "-c",
                              f'echo "$ETCD_LOCK_KEY $ETCD_LOCK_REV $QKV_LOCK_KEY" > {seen}; exit 3'),
                       capture_output=True, text=True, timeout=30, env=child_env())
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "Error: exit status 3\n")
    key, rev, qkey = seen.read_text().split()
    assert key.startswith("mylock/") and qkey == key and int(rev) > 0
    assert srv.store.kv == {} and srv.store.leases == {}
    r = subprocess.run(qkvctl(srv, "lock", "mylock", "--ttl", "5", "--", "sh", "-c", "echo held"),
                       capture_output=True, text=True, timeout=30, env=child_env())
    assert (r.returncode, r.stdout, r.stderr) == (0, "held\n", "")
    r = subprocess.run(qkvctl(srv, "lock", "mylock", "/nonexistent/cmd"),
                       capture_output=True, text=True, timeout=30, env=child_env())
    assert (r.returncode, r.stderr) == (1, "Error: fork/exec /nonexistent/cmd: no such file or directory\n")
    r = subprocess.run(qkvctl(srv, "lock", "mylock", "--", "sh", "-c", "kill -9 $$"),
                       capture_output=True, text=True, timeout=30, env=child_env())
    assert (r.returncode, r.stderr) == (1, "Error: signal: killed\n")
    assert srv.store.kv == {}


def test_lock_help(ctl):
    rc, out, _ = ctl("lock", "-h")
    assert rc == 0 and out.startswith("Usage: qkvctl lock")


# -- watch ----------------------------------------------------------------------------------------
def test_watch_runs_a_command_per_event(srv, tmp_path):
    log = tmp_path / "events"
    script = (f'printf "%s|%s|%s|%s|%s\\n" "$ETCD_WATCH_REVISION" "$ETCD_WATCH_EVENT_TYPE" '
              f'"$ETCD_WATCH_KEY" "$ETCD_WATCH_VALUE" "$QKV_WATCH_KEY" >> {log}')
    child = Child(qkvctl(srv, "watch", "foo", "--", "sh", "-c", script))
    try:
        with Client([srv.endpoint], timeout=5) as c:
            wait_for(lambda: srv.channels, 15, "the watch to subscribe")
            r1 = c.put("foo", 'a b"c').header.revision
            r2 = c.delete("foo").header.revision
            wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 2, 15, "two commands")
            assert log.read_text().splitlines() == [
                f'{r1}|"PUT"|"foo"|"a b\\"c"|"foo"', f'{r2}|"DELETE"|"foo"|""|"foo"']
            wait_for(lambda: child.text().endswith("DELETE\nfoo\n\n"), 15, "the printed events")
            assert child.text() == 'PUT\nfoo\na b"c\nDELETE\nfoo\n\n'
    finally:
        child.stop()


def test_watch_command_failure_ends_it_with_exit_1(srv):
    child = Child(qkvctl(srv, "watch", "k", "--", "sh", "-c", "exit 2"))
    try:
        with Client([srv.endpoint], timeout=5) as c:
            wait_for(lambda: srv.channels, 15, "the watch to subscribe")
            c.put("k", "v")
        assert child.wait() == 1
        assert child.text() == "PUT\nk\nv\n"
        assert "".join(child.err) == 'command ["sh" "-c" "exit 2"] error (exit status 2)\n'
    finally:
        child.stop()


def test_watch_argument_errors(ctl):
    assert ctl("watch") == (128, "", "Error: bad number of arguments\n")
    assert ctl("watch", "a", "--") == (128, "", "Error: bad number of arguments (found separator --, "
                                                 "but no commands)\n")
    assert ctl("watch", "a", "b", "--prefix") == (128, "", "Error: `range_end` and `--prefix` are "
                                                           "mutually exclusive\n")
    assert ctl("watch", "foo", env={"QKVCTL_WATCH_KEY": "foo"}) == (
        128, "", "Error: bad number of arguments (found conflicting environment key)\n")
    assert ctl("watch", "foo", env={"QKVCTL_WATCH_RANGE_END": "foo"}) == (
        128, "", 'Error: QKVCTL_WATCH_KEY is empty but got QKVCTL_WATCH_RANGE_END="foo"\n')


def test_watch_key_from_the_environment(srv):
    child = Child(qkvctl(srv, "watch", "--prefix"), QKVCTL_WATCH_KEY="env/")
    try:
        with Client([srv.endpoint], timeout=5) as c:
            wait_for(lambda: srv.channels, 15, "the watch to subscribe")
            c.put("env/1", "x")
            c.put("other", "y")
            c.put("env/2", "z")
        wait_for(lambda: child.text().endswith("z\n"), 15, "both events")
        assert child.text() == "PUT\nenv/1\nx\nPUT\nenv/2\nz\n"
    finally:
        child.stop()


def test_watch_interactive_line_parsing():
    spec = parse_watch_line(["watch", "a", "--prefix", "--prev-kv", "--rev=3", "--", "echo", "x"], "", "")
    assert (spec.key, spec.range_end, spec.prefix, spec.prev_kv, spec.rev, spec.command) == (
        b"a", None, True, True, 3, ["echo", "x"])
    spec = parse_watch_line(["watch", "a", "b", "--rev", "2"], "", "")
    assert (spec.key, spec.range_end, spec.rev) == (b"a", b"b", 2)
    with pytest.raises(ValueError, match="mutually exclusive"):
        parse_watch_line(["watch", "a", "b", "--prefix"], "", "")
    for tokens, message in ((["watch", "a", "--"], "found separator --"), (["watch", "--bogus"], "unknown flag: --bogus"),
                            (["watch", "--prefix"], "bad number of arguments")):
        with pytest.raises(CliError, match=message) as exc:
            parse_watch_line(tokens, "", "")
        assert exc.value.exit_code == 128
    assert parse_watch_line(["watch"], "envkey", "").key == b"envkey"


def test_watch_interactive(srv):
    """etcdctl 3.4's `watch -i`: bad lines reported and skipped, watches run together,
    `progress` asks each for a notification, the end of stdin ends it (exit 3)."""
    child = Child(qkvctl(srv, "watch", "-i"), stdin=True)
    try:
        for line in ("watch foo", "bogus", "", "watch", "watch a --prefix --prev-kv", "watch x y --prefix"):
            child.send(line)
        wait_for(lambda: len(child.err) >= 4, 15, "the four complaints")
        assert child.err == ["Invalid command bogus (only support watch)\n",
                             "Invalid command:  (watch and progress supported)\n",
                             "Invalid command watch (command type or key is not provided)\n",
                             "Invalid command watch x y --prefix (`range_end` and `--prefix` are mutually exclusive)\n"]
        with Client([srv.endpoint], timeout=5) as c:
            wait_for(lambda: len(srv.channels) >= 2, 15, "both watches to subscribe")
            c.put("foo", "1")
            wait_for(lambda: "1\n" in child.text(), 15, "the foo event")
            c.put("ab", "2")
            wait_for(lambda: "2\n" in child.text(), 15, "the ab event")
            c.put("ab", "3")
            wait_for(lambda: child.text().endswith("3\n"), 15, "the second ab event")
            assert child.text() == "PUT\nfoo\n1\nPUT\nab\n2\nPUT\nab\n2\nab\n3\n"
            rev = c.get("foo").header.revision
        child.send("progress")
        wait_for(lambda: child.text().count("progress notify") == 2, 15, "a progress notification per watch")
        assert child.text().endswith(f"progress notify: {rev}\n" * 2)
        assert child.proc.stdin is not None
        child.proc.stdin.close()
        assert child.wait() == 3
        assert child.err[-1] == "Error: Error reading watch request line: EOF\n"
    finally:
        child.stop()


def test_watch_interactive_separator_without_command_ends_it(srv):
    r = subprocess.run(qkvctl(srv, "watch", "-i"), input="watch foo --\n", capture_output=True,
                       text=True, timeout=30, env=child_env())
    assert (r.returncode, r.stderr) == (128, "Error: bad number of arguments (found separator --, but no commands)\n")


# -- help, completion, environment ------------------------------------------------------------------
def test_help_everywhere(ctl):
    rc, out, _ = ctl("-h")
    assert rc == 0 and out.startswith("Usage: qkvctl") and "completion" in out and "help" in out
    for argv, usage in ((["put", "-h"], "Usage: qkvctl put"), (["member", "-h"], "Usage: qkvctl member"),
                        (["member", "add", "-h"], "Usage: qkvctl member add"),
                        (["help", "member", "add"], "Usage: qkvctl member add"),
                        (["help", "watch"], "Usage: qkvctl watch"), (["help"], "Usage: qkvctl [OPTIONS]")):
        rc, out, err = ctl(*argv)
        assert (rc, err) == (0, "") and out.startswith(usage), argv
    rc, out, err = ctl("help", "bogus")
    assert (rc, err) == (0, "Unknown help topic [`bogus`]\n") and out.startswith("Usage: qkvctl [OPTIONS]")


def test_completion_scripts_and_answers(ctl, srv):
    for shell, marker in (("bash", "complete -o default -F _qkvctl_completion qkvctl"),
                          ("zsh", "#compdef qkvctl"), ("fish", "complete --command qkvctl"),
                          ("powershell", "Register-ArgumentCompleter")):
        rc, out, err = ctl("completion", shell)
        assert (rc, err) == (0, "") and marker in out and "_QKVCTL_COMPLETE" in out, shell
    # What the bash script asks qkvctl for when <TAB> is pressed.
    env = child_env(COMP_WORDS="qkvctl member a", COMP_CWORD="2", _QKVCTL_COMPLETE="complete_bash")
    r = subprocess.run(qkvctl(srv)[:3], capture_output=True, text=True, timeout=30, env=env)
    assert (r.returncode, r.stdout.split()) == (0, ["add"])
    env = child_env(COMP_WORDS="qkvctl get --pr", COMP_CWORD="2", _QKVCTL_COMPLETE="complete_bash")
    r = subprocess.run(qkvctl(srv)[:3], capture_output=True, text=True, timeout=30, env=env)
    assert sorted(r.stdout.split()) == ["--prefix", "--print-value-only"]


def test_every_global_flag_from_the_environment(ctl, srv):
    assert ctl("put", "foo", "bar")[0] == 0
    rc, out, _ = ctl("get", "foo", env={"QKVCTL_WRITE_OUT": "json"})
    assert rc == 0 and json.loads(out)["kvs"][0]["value"] == "YmFy"
    assert ctl("get", "foo", "-w", "simple", env={"QKVCTL_WRITE_OUT": "json"}) == (0, "foo\nbar\n", "")
    assert ctl("get", "foo", env={"QKVCTL_HEX": "true"}) == (0, "\\x66\\x6f\\x6f\n\\x62\\x61\\x72\n", "")
    assert ctl("get", "foo", env={"QKVCTL_COMMAND_TIMEOUT": "bogus"}) == (
        128, "", 'Error: invalid duration "bogus"\n')
    assert ctl("get", "foo", env={"QKVCTL_DIAL_TIMEOUT": "3s", "QKVCTL_COMMAND_TIMEOUT": "2s"})[0] == 0
    rc, _, err = ctl("get", "foo", endpoints="127.0.0.1:1", env={"QKVCTL_COMMAND_TIMEOUT": "300ms"})
    assert rc == 1 and err.startswith("Error: could not connect") and "within 0.3s" in err, err


# -- argument errors, formats, streams ------------------------------------------------------------
def test_missing_arguments_exit_128_with_etcdctls_messages(ctl):
    cases = [
        (("member", "add"), "member name not provided"),
        (("member", "add", "n4"), "member peer urls not provided"),
        (("member", "add", "n4", "http://x:1"), "too many arguments, did you mean --peer-urls=http://x:1"),
        (("member", "update"), "member ID is not provided"),
        (("member", "update", "12"), "member peer urls not provided"),
        (("member", "update", "zz", "--peer-urls=http://x:1"),
         'bad member ID arg (strconv.ParseUint: parsing "zz": invalid syntax), expecting ID in Hex'),
        (("member", "remove"), "member ID is not provided"),
        (("member", "promote"), "member ID is not provided"),
        (("move-leader",), "move-leader command needs 1 argument"),
        (("move-leader", "zz"), 'strconv.ParseUint: parsing "zz": invalid syntax'),
    ]
    for argv, message in cases:
        assert ctl(*argv) == (128, "", f"Error: {message}\n"), argv


def test_alarm_output_as_etcd_34():
    from protocol.client.cli.common import Globals
    from protocol.client.cli.maintenance import _print_alarms
    from protocol.client.types import AlarmMember, AlarmResponse, ResponseHeader

    resp = AlarmResponse(ResponseHeader(1, 2, 3, 4), [AlarmMember(7, "NOSPACE"), AlarmMember(8, "CORRUPT")])

    def shown(fmt: str, r: AlarmResponse = resp) -> str:
        buf = io.BytesIO()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("protocol.client.cli.maintenance.out", lambda: buf)
            _print_alarms(Globals([], 1, fmt, False), r)
        return buf.getvalue().decode()

    assert json.loads(shown("json")) == {"alarms": [{"memberID": 7, "alarm": 1}, {"memberID": 8, "alarm": 2}]}
    assert shown("json", AlarmResponse(ResponseHeader(), [])) == "{}\n"
    assert shown("simple") == "memberID:7 alarm:NOSPACE \nmemberID:8 alarm:CORRUPT \n"
    assert shown("fields").splitlines()[4:7] == ['"MemberID" : 7', '"AlarmType" : NOSPACE', ""]


def test_alarm_list_formats(ctl):
    assert ctl("alarm", "list", "-w", "json") == (0, "{}\n", "")
    assert ctl("alarm", "list", "-w", "table") == (4, "", "Error: table not supported as output format\n")


def test_endpoint_health_goes_to_stderr(ctl, srv):
    rc, out, err = ctl("endpoint", "health")
    assert rc == 0 and out == ""
    assert err.startswith(f"{srv.address} is healthy: successfully committed proposal: took = ")
    rc, out, err = ctl("endpoint", "health", "-w", "json")  # the other formats stay on stdout
    assert rc == 0 and err == "" and json.loads(out)[0]["health"] is True


def test_defrag_data_dir_reports_qkvutls_refusal(ctl, tmp_path):
    missing = tmp_path / "nothing"
    rc, out, err = ctl("defrag", "--data-dir", str(missing))
    assert (rc, out) == (1, "")
    assert err == f"Failed to defragment quorumkv data[{missing}] (--data-dir {missing} is not a directory)\n"
    Path(tmp_path / "empty").mkdir()
    rc, out, err = ctl("defrag", "--data-dir", str(tmp_path / "empty"))
    assert rc == 1 and err.startswith(f"Failed to defragment quorumkv data[{tmp_path / 'empty'}] (")
