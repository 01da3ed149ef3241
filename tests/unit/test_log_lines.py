"""The actors of a node share one stderr (a file opened for appending, a pipe, journald's
stream): every JSON log record must reach it in one write, newline included, or records of
two processes merge into one line that no log reader can parse (a compaction test missed a
`compaction_started` record that way: print() writes the record and the newline apart)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WRITER = """
import sys
sys.path.insert(0, {root!r})
from actors.runtime.log import configure
log = configure(node="n1", actor=sys.argv[1])
for i in range(3000):
    log.info("some_event", i=i, pad="p" * 50)
"""


def test_records_of_processes_sharing_stderr_stay_whole_lines(tmp_path):
    path = tmp_path / "node.log"
    with open(path, "ab") as out:
        procs = [subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT)), f"actor{k}"], stderr=out)
                 for k in range(4)]
        try:
            for p in procs:
                assert p.wait(timeout=60) == 0
        finally:
            for p in procs:  # none left behind, also when one failed
                if p.poll() is None:
                    p.kill()
                    p.wait()
    lines = path.read_text().splitlines()
    assert len(lines) == 12000
    records = [json.loads(line) for line in lines]  # raises on a merged or split line
    assert {r["actor"] for r in records} == {f"actor{k}" for k in range(4)}
