"""The pure cores (Raft, MVCC, auth) perform no I/O and use no global randomness: checked by AST.

One exception: the auth core's passwords.py draws a password salt from ``secrets`` (the
caller may pass one instead); apply and check never do."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PURE_DIRS = ["actors/consensus/raft", "actors/storage/mvcc", "actors/storage/auth"]
PURE_FILES = ["actors/storage/lessor.py", "actors/storage/hashjobs.py"]
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
