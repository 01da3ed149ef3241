"""Collects tests/unit/raft_testdata/*.txt: one test per transcript (see tests/unit/raftdd.py).

`pytest --rewrite` (option registered in tests/conftest.py) writes the actual outputs back
into the files instead of comparing; review the diff with git before committing it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/unit: raftdd

import raftdd  # noqa: E402

HERE = Path(__file__).resolve().parent


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == ".txt" and file_path.resolve().parent == HERE:
        return TranscriptFile.from_parent(parent, path=file_path)
    return None


class TranscriptFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        yield TranscriptItem.from_parent(self, name=self.path.stem)


class TranscriptItem(pytest.Item):
    def runtest(self) -> None:
        text = self.path.read_text()
        if self.config.getoption("rewrite"):
            new = raftdd.rewrite(text)
            if new != text:
                self.path.write_text(new)
            return
        res = raftdd.run(text, str(self.path.relative_to(self.config.rootpath)))
        if res.failure is not None:
            raise raftdd.Mismatch(res.failure)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str:
        if isinstance(excinfo.value, (raftdd.Mismatch, raftdd.ParseError)):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"raft transcript {self.name}"
