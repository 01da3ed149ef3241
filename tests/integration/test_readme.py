"""README's examples, run in order against fresh nodes, so that README stays true.

The convention (README.md's blocks, read top to bottom):

- A ```` ```console ```` block is run: each line starting with ``$ `` is a command (a line
  ending in ``\\`` continues it), the lines after it up to the next ``$ `` are its expected
  output (stdout and stderr together, as a terminal shows them). The commands of all the
  blocks run in one bash session, in order (``E=...`` set in one block is seen in the
  next), with ``.venv/bin`` first on ``PATH`` and ``QKVCTL_ENDPOINTS`` set to the member the
  reader's ``qkvctl`` would reach by default (``tcp://127.0.0.1:7379``).
- A ```` ```python ```` block is run with this interpreter. When a ```` ```text ```` block
  follows it directly (only blank lines between), that is its expected output.
- ``<!-- readme-test: skip (why) -->`` on the line before a block: not run (examples for
  other machines, e.g. 10.0.0.x).
- ``<!-- readme-test: etcdctl -->`` before a block: it runs etcd's ``etcdctl`` against the
  nodes' gRPC API (etcdctl's default endpoint 127.0.0.1:2379 is the test node's); skipped,
  and said so, where etcdctl is not installed (Debian's etcd-client).
- ``<!-- readme-test: background -->`` before a block: it is started and left running (it
  waits for changes, as a watch does) until it is connected to the node's watch port; the
  next block runs meanwhile; then the background block must have printed its expected
  output, and it is stopped.
- ``$ make run`` and ``$ make cluster`` are not run: the test starts its own node (as
  ``make run``: one member named ``default``) at the beginning, and, at ``make cluster``,
  stops it (as the reader must stop ``make run``: both use port 7379) and starts its own
  three members ``n1``..``n3`` with ``make cluster``'s token. ``make run``'s output is not
  compared; ``make cluster``'s is: the recipe line make prints, then what
  ``deploy/cluster.py`` prints when its members' processes are replaced by ones that exit at
  once (nothing starts, nothing binds its fixed ports), up to its notice of their exit.
- Ports: README shows the default ports (client 7379, peer 7380, watch 7381, metrics 7382
  when the test's nodes have one; for make cluster's n2 and n3 the same plus 10000 and
  20000). The test's nodes listen on free ports; every
  ``127.0.0.1:<default port>`` in a command or program is replaced by the test's, and the
  test's ports in the output are replaced back before comparing. A block that names a
  port no node of the test stands behind fails (it would reach whatever runs there).
- Compared after masking what differs between runs: durations (``took = ...``), sizes
  (``12 kB``), versions (``0.1.0``) and keyspace hashes (``hashkv``); runs of spaces, and
  of ``-`` in table borders, count as one (column widths follow the masked values).
"""
from __future__ import annotations

import difflib
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tests.nodeproc import Cluster, NodeProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CLUSTER_TOKEN = "qkv-local-cluster"  # deploy/cluster.py's default: the member ids README shows
COMMAND_TIMEOUT = 30.0
# The default ports README shows: (client, peer, watch) of `make run` / of make cluster's n1..n3.
DEFAULT_PORTS = [(7379, 7380, 7381), (17379, 17380, 17381), (27379, 27380, 27381)]
HOST_PORT = re.compile(r"(?:127\.0\.0\.1|localhost):(\d+)")
DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(\w+)\b.*-->\s*$")


@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the opening fence in README.md
    body: list[str]
    directive: str = ""
    expected_output: list[str] | None = None  # python: the ```text block after it
    end: int = 0  # the line after its closing fence (0-based)

    def where(self) -> str:
        return f"README.md:{self.line}"


@dataclass
class Command:
    text: str
    line: int
    expected: list[str] = field(default_factory=list)


FENCE = re.compile(r"^ {0,3}(`{3,})([^`]*)$")  # CommonMark: no backtick in a backtick fence's info


def parse_readme(text: str) -> list[Block]:
    """The blocks the test runs (console and python, not skipped), in order."""
    lines = text.split("\n")
    blocks: list[Block] = []
    directive = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        m = DIRECTIVE.match(line.strip())
        if m:
            directive = m.group(1)
            i += 1
            continue
        fence = FENCE.match(line)
        if fence:
            ticks, lang = fence.group(1), fence.group(2).strip()
            start = i
            i += 1
            body = []
            while i < len(lines) and not re.match(rf"^ {{0,3}}{ticks}`*\s*$", lines[i]):
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise AssertionError(f"README.md:{start + 1}: a code block that is never closed")
            i += 1  # the closing fence
            if lang == "text" and blocks and blocks[-1].lang == "python" and blocks[-1].expected_output is None \
                    and _only_blank(lines, blocks[-1].end, start):
                blocks[-1].expected_output = body
            elif lang in ("console", "python") and directive != "skip":
                blocks.append(Block(lang, start + 1, body, directive, end=i))
            directive = ""
            continue
        if line.strip():
            directive = ""
        i += 1
    return blocks


def _only_blank(lines: list[str], frm: int, to: int) -> bool:
    return all(not ln.strip() for ln in lines[frm:to])


def console_commands(block: Block) -> list[Command]:
    cmds: list[Command] = []
    body = block.body
    i = 0
    while i < len(body):
        line = body[i]
        if not line.startswith("$ "):
            raise AssertionError(f"{block.where()}: console block line {i + 1} is output before any `$ ` command")
        text, line_no = line[2:], block.line + 1 + i
        while text.endswith("\\") and i + 1 < len(body):
            i += 1
            text = text[:-1] + "\n" + body[i]
        i += 1
        expected = []
        while i < len(body) and not body[i].startswith("$ "):
            expected.append(body[i])
            i += 1
        cmds.append(Command(text, line_no, expected))
    return cmds


# --- masking ----------------------------------------------------------------------------
MASKS = [
    (re.compile(r"took = [0-9.]+(?:ns|µs|us|ms|s)"), "took = <duration>"),
    (re.compile(r"\b\d+(?:\.\d+)? ?(?:B|kB|MB|GB|TB|KiB|MiB|GiB)\b"), "<size>"),
    (re.compile(r"(?<![\d.])\d+\.\d+\.\d+(?![\d.])"), "<version>"),
    (re.compile(r"^(tcp://\S+), \d+$"), r"\1, <hash>"),
]
TABLE_BORDER = re.compile(r"^\+[-+]+\+$")


def normalize(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern, repl in MASKS:
            line = pattern.sub(repl, line)
        if TABLE_BORDER.match(line):
            line = re.sub(r"-+", "-", line)
        out.append(re.sub(r" +", " ", line).rstrip())
    return out


def output_lines(text: str) -> list[str]:
    """Lines as README writes them: a trailing newline ends the last line, it does not
    start an empty one."""
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n") if text else []


class Drift(AssertionError):
    """A block printed something other than README shows (the run goes on: all at once)."""


def compare(where: str, what: str, expected: list[str], actual_text: str) -> None:
    actual = output_lines(actual_text)
    if normalize(expected) != normalize(actual):
        diff = "\n".join(difflib.unified_diff(normalize(expected), normalize(actual), "README", "actual",
                                              lineterm=""))
        raise Drift(f"{where}: the output of {what!r} differs from README's (masked; - README, + actual):\n"
                             f"{diff}\n--- actual output, unmasked:\n{actual_text}")


# --- the nodes behind README's ports ------------------------------------------------------
def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None, url
    return port


class Target:
    """The test's node(s) standing where README's reader has `make run` or `make cluster`."""

    def __init__(self, nodes: list[NodeProcess]) -> None:
        self.nodes = nodes
        self.to_test: dict[int, int] = {}
        for node, defaults in zip(nodes, DEFAULT_PORTS):
            for default, url in zip(defaults, (node.client_url, node.peer_url, node.watch_url)):
                self.to_test[default] = _port(url)
            metrics_url = getattr(node, "metrics_url", "")  # --listen-metrics-urls, 7382 by default
            if metrics_url:
                self.to_test[defaults[0] + 3] = _port(metrics_url)
            if getattr(node, "grpc", False):  # --listen-grpc-urls, 2379 (12379, 22379) by default
                self.to_test[defaults[0] - 5000] = _port(node.grpc_url)
        self.to_readme = {v: k for k, v in self.to_test.items()}

    @property
    def watch_ports(self) -> set[int]:
        return {_port(n.watch_url) for n in self.nodes}

    def rewrite(self, where: str, text: str) -> str:
        """README's default ports -> the test's; refuse one no test node stands behind."""
        def sub(m: re.Match[str]) -> str:
            port = int(m.group(1))
            if port not in self.to_test:
                raise AssertionError(f"{where}: {m.group(0)} is not a port of the test's nodes (README's tour uses "
                                     f"{sorted(self.to_test)} here)")
            return m.group(0)[: -len(m.group(1))] + str(self.to_test[port])
        return HOST_PORT.sub(sub, text)

    def unrewrite(self, text: str) -> str:
        def sub(m: re.Match[str]) -> str:
            port = int(m.group(1))
            return m.group(0)[: -len(m.group(1))] + str(self.to_readme.get(port, port))
        return HOST_PORT.sub(sub, text)


# --- a bash session -----------------------------------------------------------------------
SENTINEL = "\x1eREADME-TEST-RC="


class Shell:
    """One bash process the console commands run in, in order; output read with deadlines."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                     start_new_session=True)
        self.buf = b""

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        # stdin from /dev/null: a command that reads its stdin must not eat the session's.
        script = f"{{\n{command}\n}} < /dev/null\nprintf '{SENTINEL}%d\\n' $?\n"
        self.proc.stdin.write(script.encode())
        self.proc.stdin.flush()
        done = re.compile(re.escape(SENTINEL.encode()) + rb"(\d+)\n")
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while (m := done.search(self.buf)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{command!r} did not finish within {timeout}s; output so far:\n"
                                     f"{self.buf.decode(errors='replace')}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the shell exited during {command!r}: {self.buf!r}")
                self.buf += chunk
        out, self.buf = self.buf[:m.start()], self.buf[m.end():]
        return out.decode(errors="replace")

    def close(self) -> None:
        _kill_group(self.proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process the test started in its own session, and everything it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# --- background blocks --------------------------------------------------------------------
def connected_to(pid: int, ports: set[int]) -> bool:
    """`pid` holds an established TCP connection to one of `ports` (from /proc)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return False
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "01" and cols[9] in inodes and int(cols[2].rsplit(":", 1)[1], 16) in ports:
                return True
    return False


class Background:
    """A block left running while the next one runs (a watch); its output in a file."""

    def __init__(self, block: Block, argv: list[str], expected: list[str], what: str, cwd: Path,
                 env: dict[str, str], target: Target) -> None:
        self.block, self.expected, self.what, self.target = block, expected, what, target
        self.out_path = cwd / f"background-{block.line}.out"
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=cwd, env=env, start_new_session=True)

    def text(self) -> str:
        return self.target.unrewrite(self.out_path.read_text(errors="replace"))

    def wait_connected(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.block.where()}: {self.what!r} exited with {self.proc.returncode}:\n"
                                     f"{self.text()}")
            return connected_to(self.proc.pid, self.target.watch_ports)

        wait_for(ready, 20, f"{self.block.where()}: {self.what!r} to connect to the watch port", interval=0.05)

    def finish(self) -> str:
        """Wait for its expected output (or its exit), stop it; what it printed."""
        want = len(self.expected)
        wait_for(lambda: self.proc.poll() is not None or len(output_lines(self.text())) >= want, 20,
                 f"{self.block.where()}: {self.what!r} to print its {want} lines")
        self.stop()
        return self.text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # qkvctl watch stops on it as on Ctrl-C
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(self.proc)


# --- make cluster's banner ------------------------------------------------------------------
# deploy/cluster.py run with its members' processes replaced by ones that "exit" at once: it
# prints its banner (the members, their URLs and logs) as `make cluster` does, notices the
# exits and returns; nothing is started and nothing binds a port (its ports are fixed).
FAKE_MEMBERS = """
import runpy, subprocess, sys

class Member:
    returncode = 0
    def __init__(self, *args, **kwargs): pass
    def poll(self): return 0
    def send_signal(self, sig): pass
    def wait(self, timeout=None): return 0
    def kill(self): pass

subprocess.Popen = Member
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def make_recipe(target: str) -> list[str]:
    """What make prints for `target` when its prerequisites are up to date: its recipe lines
    (not the @-silenced ones), with the Makefile's variables README's reader has."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith(f"{target}:"))) + 1
    recipe = []
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        if not line[1:].startswith("@"):
            recipe.append(line[1:].replace("$(BIN)", ".venv/bin").replace("$(VENV)", ".venv")
                          .replace("$(DATA_DIR)", "./default.qkv"))
    return recipe


def make_cluster_banner(cwd: Path) -> str:
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-c", FAKE_MEMBERS, str(ROOT / "deploy" / "cluster.py")], cwd=cwd,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    banner = proc.stdout.split("\n")
    end = next((i for i, ln in enumerate(banner) if " exited with " in ln), None)
    assert end is not None, f"deploy/cluster.py did not run as expected:\n{proc.stdout}{proc.stderr}"
    return "\n".join(make_recipe("cluster") + banner[:end]) + "\n"


# --- the run --------------------------------------------------------------------------------
class Runner:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.work = tmp_path / "cwd"  # where the reader's commands run (files they write land here)
        self.work.mkdir()
        self.node: NodeProcess | None = None
        self.cluster: Cluster | None = None
        self.target: Target | None = None
        self.shell: Shell | None = None
        self.pending: list[Background] = []
        self.ran = 0
        self.drift: list[str] = []

    def check(self, where: str, what: str, expected: list[str], actual_text: str) -> None:
        try:
            compare(where, what, expected, actual_text)
        except Drift as exc:
            self.drift.append(str(exc))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QKVCTL_", "QKV_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        assert self.target is not None
        env["QKVCTL_ENDPOINTS"] = self.target.nodes[0].client_url  # qkvctl's default, 127.0.0.1:7379
        env["ETCDCTL_ENDPOINTS"] = self.target.nodes[0].grpc_endpoint  # etcdctl's default, 127.0.0.1:2379
        env["ETCDCTL_API"] = "3"
        return env

    def start_node(self) -> None:
        self.node = NodeProcess(self.tmp_path, "default", metrics=True, grpc=True).start()  # `make run`: --name default
        self.target = Target([self.node])
        self._new_shell()

    def start_cluster(self) -> None:
        self.finish_background()
        if self.node is not None:  # the reader stops `make run` first: same port 7379
            self.node.stop()
            self.node = None
        (self.tmp_path / "cluster").mkdir()
        self.cluster = Cluster(self.tmp_path / "cluster", token=CLUSTER_TOKEN, metrics=True, grpc=True)  # names n1..n3, as make cluster
        self.cluster.start()
        nodes = self.cluster.nodes

        def all_heard_from() -> bool:
            # A member shows as `unstarted` in `member list` until the one asked has heard from
            # it (SPEC member_list): a reader who types the next command sees all started.
            for n in nodes:
                reply = n.request({"op": "member_list"}, timeout=1.0)
                if not reply or not reply.get("ok") or len(reply["members"]) != len(nodes) \
                        or not all(m["client_urls"] for m in reply["members"]):
                    return False
            return True

        wait_for(all_heard_from, 30, "every member to list every other with its client URLs", interval=0.1)
        self.target = Target(nodes)
        self._new_shell()

    def _new_shell(self) -> None:
        """A session for the current target (as the reader's new terminal after `make cluster`)."""
        if self.shell is not None:
            self.shell.close()
        self.shell = Shell(self.work, self.env())

    def stop(self) -> None:
        for bg in self.pending:
            bg.stop()
        self.pending = []
        if self.shell is not None:
            self.shell.close()
        if self.node is not None:
            self.node.stop()
        if self.cluster is not None:
            for n in self.cluster.nodes:  # all three stop at once, not one after the other
                if n.proc is not None and n.proc.poll() is None:
                    n.proc.send_signal(signal.SIGTERM)
            self.cluster.stop()  # waits for each, kills what is left, every actor included

    def finish_background(self) -> None:
        pending, self.pending = self.pending, []
        for bg in pending:
            self.check(bg.block.where(), bg.what, bg.expected, bg.finish())

    # -- blocks --
    def run_block(self, block: Block) -> None:
        if block.lang == "console":
            self.run_console(block)
        else:
            self.run_python(block)
        self.ran += 1

    def run_console(self, block: Block) -> None:
        commands = console_commands(block)
        make = [c for c in commands if re.match(r"make\b", c.text)]
        if make:
            assert len(commands) == 1, f"{block.where()}: `make ...` stands alone in its block (it runs until Ctrl-C)"
            self.run_make(block, commands[0])
            return
        if block.directive == "background":
            assert len(commands) == 1, f"{block.where()}: a background block holds one command"
            cmd = commands[0]
            assert self.target is not None
            argv = ["bash", "-c", "exec " + self.target.rewrite(block.where(), cmd.text)]
            self.start_background(block, argv, cmd.expected, cmd.text)
            return
        for cmd in commands:
            assert self.target is not None and self.shell is not None
            where = f"README.md:{cmd.line}"
            out = self.shell.run(self.target.rewrite(where, cmd.text))
            self.check(where, cmd.text, cmd.expected, self.target.unrewrite(out))
        self.finish_background()

    def run_make(self, block: Block, cmd: Command) -> None:
        target = cmd.text.split()[1] if len(cmd.text.split()) > 1 else ""
        if target == "cluster":
            self.check(f"README.md:{cmd.line}", cmd.text, cmd.expected, make_cluster_banner(self.tmp_path / "make-cluster"))
            self.start_cluster()
        elif target == "run":
            raise AssertionError(f"{block.where()}: the test starts `make run`'s node itself, before the first block")
        else:
            raise AssertionError(f"{block.where()}: `{cmd.text}`: the test knows only make run and make cluster")

    def run_python(self, block: Block) -> None:
        assert self.target is not None
        code = self.target.rewrite(block.where(), "\n".join(block.body) + "\n")
        path = self.work / f"readme_{block.line}.py"
        path.write_text(code)
        argv = [sys.executable, "-u", str(path)]
        if block.directive == "background":
            self.start_background(block, argv, block.expected_output or [], "the Python example")
            return
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.work, env=self.env(), start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise AssertionError(f"{block.where()}: the Python example did not finish within {COMMAND_TIMEOUT}s")
        text = self.target.unrewrite(out.decode(errors="replace"))
        assert proc.returncode == 0, f"{block.where()}: the Python example exited with {proc.returncode}:\n{text}"
        self.check(block.where(), "the Python example", block.expected_output or [], text)
        self.finish_background()

    def start_background(self, block: Block, argv: list[str], expected: list[str], what: str) -> None:
        assert self.target is not None
        bg = Background(block, argv, expected, what, self.work, self.env(), self.target)
        self.pending.append(bg)
        bg.wait_connected()


def test_readme_blocks_run_as_shown(tmp_path: Path) -> None:
    blocks = parse_readme(README.read_text())
    if shutil.which("etcdctl") is None:  # Debian's etcd-client is optional
        skipped = [b.where() for b in blocks if b.directive == "etcdctl"]
        blocks = [b for b in blocks if b.directive != "etcdctl"]
        warnings.warn(f"etcdctl is not installed (apt-get install etcd-client): README's etcdctl blocks "
                      f"{', '.join(skipped)} were not run")
    # The tour has at least these: the shell tour, Python, watch (shell and Python), the
    # cluster and its commands, leases: a README that lost its markers would test nothing.
    assert len(blocks) >= 8, [b.where() for b in blocks]
    runner = Runner(tmp_path)
    try:
        runner.start_node()
        for block in blocks:
            runner.run_block(block)
        runner.finish_background()
    finally:
        runner.stop()
    assert not runner.drift, "README.md shows what its examples no longer print:\n\n" + "\n\n".join(runner.drift)
    assert runner.ran == len(blocks)
