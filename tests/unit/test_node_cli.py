"""`qkv`'s own command line (nodes/cli.py, nodes/config.py): the help shows every
documented default, and those defaults are the ones the node really takes; `--log-level`
takes etcd's spellings."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nodes.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def qkv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from nodes.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env=dict(os.environ, COLUMNS="200", PYTHONPATH=str(ROOT)))


@pytest.fixture(scope="module")
def help_text() -> str:
    out = qkv("--help")
    assert out.returncode == 0, out
    return out.stdout


def _defaults(text: str) -> dict[str, str]:
    """flag -> the text of its "[default: ...]" in `qkv --help` (click wraps long lines)."""
    found: dict[str, str] = {}
    flat = " ".join(text.split())
    for m in re.finditer(r"(--[a-z-]+) <str> (.*?)(?= --[a-z-]+ |$)", flat):
        d = re.search(r"\[default: ([^\]]*)\]", m.group(2))
        if d:
            found[m.group(1)] = d.group(1)
    return found


def test_help_shows_the_defaults(help_text):
    """The rich help formatter ate "[default: ...]" as markup (issue 15)."""
    found = _defaults(help_text)
    assert found["--listen-client-urls"] == "tcp://127.0.0.1:7379", found
    assert found["--log-level"] == "info"
    assert len(found) >= 25, found


def test_help_defaults_are_the_real_ones(help_text):
    """Every literal default the help prints is the default Config takes."""
    base = Config()
    checked = 0
    for flag, text in _defaults(help_text).items():
        name = flag[2:].replace("-", "_")
        if "<" in text or " " in text:  # derived ("<name>.qkv", "the listen URLs")
            continue
        value = getattr(base, name)
        if isinstance(value, list):
            value = ",".join(value)
        if flag == "--corrupt-check-time":
            assert text == f"{value:g}s"
        else:
            assert text == str(value), (flag, text, value)
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("given, kept", [("warn", "warning"), ("WARN", "warning"), ("warning", "warning"),
                                         ("debug", "debug"), ("error", "error"), ("fatal", "error"),
                                         ("panic", "error")])
def test_log_level_takes_etcds_spellings(given, kept):
    assert load_config({"log-level": given}, env={}).log_level == kept


def test_log_level_refuses_others():
    with pytest.raises(ConfigError, match="debug, info, warn, error"):
        load_config({"log-level": "loud"}, env={})
    out = qkv("--log-level", "loud")
    assert out.returncode == 2 and "invalid --log-level 'loud'" in out.stderr, out


def test_config_fields_are_all_flags():
    """A Config field a user sets has a flag in `qkv --help` (the derived ones excepted)."""
    text = qkv("--help").stdout
    internal = {"assigned_member_id", "assigned_cluster_id", "initial_members", "test_fault_injection"}
    for f in dataclasses.fields(Config):
        if f.name not in internal:
            assert "--" + f.name.replace("_", "-") in text, f.name
