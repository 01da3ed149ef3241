"""The pure cores (Raft, MVCC, auth) perform no I/O and use no global randomness: checked by AST.

One exception: the auth core's passwords.py draws a password salt from ``secrets`` (the
caller may pass one instead); apply and check never do."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PURE_DIRS = ["actors/consensus/raft", "actors/storage/mvcc", "actors/storage/auth"]
PURE_FILES = ["actors/storage/lessor.py", "actors/storage/hashjobs.py", "actors/consensus/transfers.py",
              "protocol/client/core.py", "protocol/client/calls.py"]
FORBIDDEN = {"zmq", "rocksdict", "time", "os", "socket", "threading", "subprocess",
             "asyncio", "multiprocessing", "shutil", "signal", "select", "selectors", "secrets"}
# Forbidden modules a given pure file may still import (path relative to the repo root).
ALLOWED_IN = {"actors/storage/auth/passwords.py": {"secrets"}}
# `random` may be imported only to name/construct `random.Random` (the seeded instance).
RANDOM_ALLOWED = {"Random"}


def pure_modules():
    files = []
    for d in PURE_DIRS:
        files.extend(sorted((ROOT / d).rglob("*.py")))
    return files + [ROOT / f for f in PURE_FILES]


def violations(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    try:
        allowed = ALLOWED_IN.get(str(path.resolve().relative_to(ROOT)), set())
    except ValueError:
        allowed = set()
    found = []
    random_aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if top in FORBIDDEN and top not in allowed:
                    found.append(f"line {node.lineno}: import {a.name}")
                if top == "random":
                    random_aliases.add(a.asname or "random")
        elif isinstance(node, ast.ImportFrom):
            top = (node.module or "").split(".")[0]
            if node.level == 0 and top in FORBIDDEN and top not in allowed:
                found.append(f"line {node.lineno}: from {node.module} import ...")
            if node.level == 0 and top == "random":
                for a in node.names:
                    if a.name not in RANDOM_ALLOWED:
                        found.append(f"line {node.lineno}: from random import {a.name}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("__import__", "open", "exec", "eval"):
                found.append(f"line {node.lineno}: call {node.func.id}()")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in random_aliases and node.attr not in RANDOM_ALLOWED):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_there_are_modules_to_check():
    assert any("consensus/raft" in str(p) for p in pure_modules())
    assert any("storage/auth/check.py" in str(p) for p in pure_modules())


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_pure(path):
    assert violations(path) == []


def test_checker_catches_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import random\nimport os.path\nfrom zmq import Context\n"
                   "x = random.random()\ny = random.Random(3)\nfrom random import choice\n")
    v = violations(bad)
    assert len(v) == 4, v
    good = tmp_path / "good.py"
    good.write_text("import random\nfrom random import Random\n"
                    "def f(rng: random.Random): return rng.random()\n")
    assert violations(good) == []


# -- the client package imports nothing from the server --------------------------------------
# protocol/ (the wire format, the client library, qkvctl) is what a client installs; the
# server's packages (actors/, nodes/) may import it, never the reverse. Offline tools that
# need server code are qkvutl (nodes/utl.py), as etcd keeps them in etcdutl.
CLIENT_DIR = "protocol"
SERVER_PACKAGES = {"actors", "nodes"}


def client_modules():
    return sorted((ROOT / CLIENT_DIR).rglob("*.py"))


def server_imports(path: pathlib.Path) -> list[str]:
    """Every import of actors/ or nodes/ in `path`, at any depth (a lazy import inside a
    function counts: it still needs the server installed), and `importlib`/`__import__`
    calls naming one."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in SERVER_PACKAGES:
                    found.append(f"line {node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] in SERVER_PACKAGES:
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            target = node.args[0].value
            if (name in ("__import__", "import_module") and isinstance(target, str)
                    and target.split(".")[0] in SERVER_PACKAGES):
                found.append(f"line {node.lineno}: {name}({target!r})")
    return found


def test_there_are_client_modules_to_check():
    names = {str(p.relative_to(ROOT)) for p in client_modules()}
    assert "protocol/client/cli/root.py" in names and "protocol/snapshot_file.py" in names


@pytest.mark.parametrize("path", client_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_client_imports_no_server_code(path):
    assert server_imports(path) == []


def test_server_import_checker_catches_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import actors.storage\nfrom nodes.config import VERSION\n"
                   "def f():\n    from actors.storage.restore import restore\n"
                   "    import importlib; importlib.import_module('nodes.utl')\n")
    assert len(server_imports(bad)) == 4, server_imports(bad)
    good = tmp_path / "good.py"
    good.write_text("from protocol.snapshot_file import verify\nimport actorsx\nfrom . import nodes\n")
    assert server_imports(good) == []
