"""A read-only scan of the framing of RocksDB's write-ahead files (`<db>/*.log`), done
before RocksDB replays them (nodes/preflight.py).

Why: RocksDB's own replay (9.8, the version rocksdict 0.3.29 ships) cannot be trusted
with damaged framing, in any recovery mode:
- a record header whose type says "recycled log" (5-8, 11) in a log that is not recycled
  makes `log::Reader::ReadRecord` spin forever at 100% CPU (facebook/rocksdb#13333: the
  reader returns kBadRecord without consuming the header, and asks again), so the open
  never returns; as the very first header it makes RocksDB drop the whole file silently;
- a zeroed header in the middle of a block makes it skip the rest of that block silently
  (it is taken for preallocated space), losing the records there with no error.
The checksums are RocksDB's business (tolerate-corrupted-tail-records mode reports any
mismatch); this scan checks only what RocksDB lets pass or chokes on, and never writes.

The format (db/log_format.h): the file is a sequence of 32 KiB blocks; a block holds
physical records, each a 7-byte header (masked crc32c: 4, payload length: 2 little-endian,
type: 1) and its payload; a record never crosses a block (a bigger one is cut into FIRST,
MIDDLE..., LAST fragments); fewer than 7 bytes left at the end of a block are zero padding.
We never enable log recycling or WAL compression, so a healthy file holds only the types
FULL/FIRST/MIDDLE/LAST (1-4) and, possibly, SetCompressionType (9) and
UserDefinedTimestampSize (10). A record cut short by the end of the file is a torn append
(a crash while writing it): RocksDB drops it, and so does the scan.
"""
from __future__ import annotations

import glob
import os

BLOCK_SIZE = 32768
HEADER_SIZE = 7
_ZERO_TYPE = 0
_OK_TYPES = frozenset((1, 2, 3, 4, 9, 10))
_RECYCLED_TYPES = frozenset((5, 6, 7, 8, 11))


class DamagedLog(Exception):
    """The framing of a write-ahead file is damaged; the message names the file and offset."""


def log_files(db_dir: str) -> list[str]:
    """The write-ahead files of the RocksDB at `db_dir`, oldest first."""
    return sorted(glob.glob(os.path.join(glob.escape(db_dir), "*.log")),
                  key=lambda p: (len(os.path.basename(p)), os.path.basename(p)))


def scan(db_dir: str) -> int:
    """Scan every write-ahead file of `db_dir`; the number of bytes read. Raises
    `DamagedLog` on framing RocksDB would choke on or silently skip."""
    total = 0
    for path in log_files(db_dir):
        total += scan_file(path)
    return total


def scan_file(path: str) -> int:
    size = 0
    with open(path, "rb") as f:
        block_no = 0
        while True:
            block = f.read(BLOCK_SIZE)
            if not block:
                return size
            size += len(block)
            end = _scan_block(path, block, block_no * BLOCK_SIZE, len(block) < BLOCK_SIZE)
            if end is not None:
                # A zeroed header: RocksDB takes the rest for preallocated space. It must be
                # the end of the data: nothing but zeros may follow, in this file.
                if block.count(0, end) != len(block) - end or _has_data_after(f):
                    raise DamagedLog(f"{path}: a zeroed record header at offset {block_no * BLOCK_SIZE + end} "
                                     "with records after it")
                return size
            block_no += 1


def _scan_block(path: str, block: bytes, base: int, last_block: bool) -> int | None:
    """Walk one block's headers; the offset of a zeroed header (the end of the data), or
    None when the block is fine to the end."""
    pos, n = 0, len(block)
    while pos + HEADER_SIZE <= n:
        length = block[pos + 4] | (block[pos + 5] << 8)
        rtype = block[pos + 6]
        if rtype == _ZERO_TYPE and length == 0:
            return pos
        if rtype not in _OK_TYPES:
            what = "a recycled-log record type" if rtype in _RECYCLED_TYPES else "an unknown record type"
            raise DamagedLog(f"{path}: {what} ({rtype}) at offset {base + pos}")
        nxt = pos + HEADER_SIZE + length
        if nxt > n:
            if last_block:
                return None  # cut short by the end of the file: a torn append, dropped
            raise DamagedLog(f"{path}: the record at offset {base + pos} runs past the end of its block")
        pos = nxt
    return None


def _has_data_after(f) -> bool:
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            return False
        if chunk.count(0) != len(chunk):
            return True
