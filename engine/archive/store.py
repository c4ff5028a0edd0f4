"""The archive on disk: immutable Parquet files and the manifest that lists them.

Layout of an archive directory::

    manifest.jsonl                                   one JSON object per closed file
    data/<topic>/<partition>/<first>-<last>.parquet  one row per input message

A file is written under a temporary name, flushed to disk and renamed; only then
is the manifest rewritten (temporary file, rename) with the file's offset range,
row count, size and sha256. A file is *closed* when the manifest lists it; a file
the manifest does not list was left by a crash and is deleted on the next start,
which resumes after the last listed offset. So every message is archived exactly
once, and :func:`verify` can prove that no file is missing, altered or extra and
that the offset ranges of each partition follow each other without a hole.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.jsonl"
DATA = "data"

FLAG = pa.struct([pa.field("index", pa.int32(), nullable=False),
                  pa.field("reason", pa.string(), nullable=False),
                  pa.field("detail", pa.string(), nullable=False)])
HEADER = pa.struct([pa.field("key", pa.string(), nullable=False),
                    pa.field("value", pa.binary())])
ARCHIVE_SCHEMA = pa.schema([
    pa.field("topic", pa.string(), nullable=False),
    pa.field("partition", pa.int32(), nullable=False),
    pa.field("offset", pa.int64(), nullable=False),
    # the Kafka record timestamp in ms (CreateTime: received_at), null when absent
    pa.field("timestamp", pa.int64()),
    pa.field("key", pa.binary()),
    pa.field("headers", pa.list_(HEADER), nullable=False),
    # "record" (one JSON record), "jsonl", "arrow-ipc", or the header's other value
    pa.field("format", pa.string(), nullable=False),
    pa.field("value", pa.binary()),
    pa.field("redacted", pa.bool_(), nullable=False),
    # records whose verdict a replay takes from here (index -1: the whole message)
    pa.field("flags", pa.list_(FLAG), nullable=False),
])


class ArchiveError(Exception):
    """An archive that cannot be used as it is; ``str()`` is one line."""


@dataclass
class Entry:
    """One closed file: messages at offsets [start, end) of topic/partition."""

    topic: str
    record_type: str
    partition: int
    start: int
    end: int
    rows: int
    file: str | None = None     # None: a range deleted by retention before archiving
    sha256: str = ""
    bytes: int = 0
    first: int = -1
    last: int = -1
    partitions: int = 0         # the topic's partition count when archived (0: unknown)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_name(topic: str, partition: int, first: int, last: int) -> str:
    """Relative path of a file, named by what it holds.

    >>> file_name("m.transactions", 3, 0, 41)
    'data/m.transactions/3/00000000000000000000-00000000000000000041.parquet'
    """
    return f"{DATA}/{topic}/{partition}/{first:020d}-{last:020d}.parquet"


class Archive:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.entries: list[Entry] = []

    # --- reading the manifest
    @classmethod
    def open(cls, root: str | Path, must_exist: bool = True) -> Archive:
        a = cls(root)
        path = a.root / MANIFEST
        if not path.exists():
            if must_exist:
                raise ArchiveError(f"{a.root}: no {MANIFEST} (not an archive)")
            return a
        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            try:
                a.entries.append(Entry(**orjson.loads(line)))
            except (orjson.JSONDecodeError, TypeError):
                raise ArchiveError(f"{path}: line {n} is not a manifest entry") from None
        return a

    @classmethod
    def open_verified(cls, root: str | Path) -> Archive:
        """An archive that passes :meth:`verify`; else ArchiveError naming the first
        problem (what replays read)."""
        a = cls.open(root)
        problems = a.verify()
        if problems:
            raise ArchiveError(f"{root}: {problems[0]}" + (
                f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        return a

    def next_offset(self, topic: str, partition: int) -> int | None:
        ends = [e.end for e in self.entries if e.topic == topic and e.partition == partition]
        return max(ends) if ends else None

    def files(self, record_type: str | None = None) -> list[Entry]:
        return sorted((e for e in self.entries if e.file is not None
                       and (record_type is None or e.record_type == record_type)),
                      key=lambda e: (e.topic, e.partition, e.start))

    # --- writing
    def remove_unlisted(self) -> list[str]:
        """Delete data files the manifest does not list (a crash before it did) and
        temporary files; return their relative paths."""
        listed = {e.file for e in self.entries}
        gone: list[str] = []
        data = self.root / DATA
        if not data.exists():
            return gone
        for p in sorted(data.rglob("*")):
            if p.is_file():
                rel = p.relative_to(self.root).as_posix()
                if rel not in listed:
                    p.unlink()
                    gone.append(rel)
        return gone

    def write_file(self, table: pa.Table, entry: Entry, crash: Any = None) -> Entry:
        """Write a closed file and list it; ``crash(stage)`` is the tests' hook."""
        rel = file_name(entry.topic, entry.partition, entry.first, entry.last)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if crash is not None:
            crash("archive-tmp")
        os.chmod(tmp, 0o444)  # closed files are never written again
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if crash is not None:
            crash("archive-file")
        entry.file = rel
        entry.sha256 = sha256_of(path)
        entry.bytes = path.stat().st_size
        self.add(entry)
        return entry

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)
        body = b"".join(orjson.dumps(e.to_json()) + b"\n" for e in self.entries)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / (MANIFEST + ".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / MANIFEST)
        _fsync_dir(self.root)

    # --- reading files
    def read(self, entry: Entry) -> pa.Table:
        assert entry.file is not None
        try:
            return pq.read_table(self.root / entry.file, schema=ARCHIVE_SCHEMA)
        except (OSError, pa.ArrowException) as e:
            raise ArchiveError(f"{entry.file}: unreadable ({type(e).__name__})") from None

    def tables(self, record_type: str) -> Iterator[pa.Table]:
        for e in self.files(record_type):
            yield self.read(e)

    # --- audit
    def verify(self) -> list[str]:
        """Problems found: files missing, altered (size, checksum, rows), unlisted,
        or offset ranges of a partition that do not follow each other."""
        problems: list[str] = []
        chains: dict[tuple[str, int], int] = {}
        for e in sorted(self.entries, key=lambda e: (e.topic, e.partition, e.start)):
            k = (e.topic, e.partition)
            if k in chains and chains[k] != e.start:
                problems.append(f"{e.topic}/{e.partition}: offsets {chains[k]}..{e.start - 1} "
                                "are in no file")
            chains[k] = e.end
            if e.file is None:
                continue
            path = self.root / e.file
            if not path.exists():
                problems.append(f"{e.file}: missing")
                continue
            if path.stat().st_size != e.bytes or sha256_of(path) != e.sha256:
                problems.append(f"{e.file}: altered (checksum differs from the manifest)")
                continue
            rows = pq.ParquetFile(path).metadata.num_rows
            if rows != e.rows:
                problems.append(f"{e.file}: {rows} rows, the manifest says {e.rows}")
        listed = {e.file for e in self.entries}
        data = self.root / DATA
        if data.exists():
            for p in sorted(data.rglob("*")):
                rel = p.relative_to(self.root).as_posix()
                if p.is_file() and rel not in listed:
                    problems.append(f"{rel}: not in the manifest")
        return problems
