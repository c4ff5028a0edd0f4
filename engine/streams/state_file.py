"""The local checkpoint of one partition's state: a file of segments, each one write.

A partition's state lives in memory (engine.streams.state.ShardStore); the changelog
is its durable copy and this file a checkpoint of it, so that a restart reads the
changelog only from where the file ends (DECISIONS 144). Each write appends one
segment:

    header  magic (8 bytes), n (uint32), body length (uint64), CRC-32C of n, the
            length and the body
    body    key lengths (n × int32), value lengths (n × int32, -1: the key deleted),
            the keys' bytes, the values' bytes

A segment is all or nothing: a kill during an append leaves a torn or damaged last
segment, which :func:`read` stops before (the checkpoint as it was before that write,
values and position together, as a write that never happened). Nothing is synced to
disk after an append: like the RocksDB store before it without its write-ahead log
(DECISIONS 105), what a machine crash takes is read again from the changelog. A
rewrite (:meth:`SegmentFile.rewrite`: the whole state as one segment, when the file
has grown past twice the state plus a margin) goes to a new file renamed over the old
one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import google_crc32c
import numpy as np

FILE_NAME = "state.seg"
MAGIC = b"MYNSEG01"
_HEADER = struct.Struct("<8sIQI")  # magic, n, body length, CRC-32C
_COUNTS = struct.Struct("<IQ")  # n and the body's length, as the CRC covers them
# how far the file may grow beyond twice the state it holds before it is rewritten: a
# small partition is not rewritten on every flush
REWRITE_SLACK = 64 << 20


def encode_parts(keys: list[bytes], values: list[bytes | None]) -> list[bytes]:
    """One segment setting (or, for None, deleting) each key to its value, as the
    parts written one after the other (not joined: that would copy the values again)."""
    n = len(keys)
    klen = np.fromiter(map(len, keys), np.int32, n)
    vlen = np.fromiter((-1 if v is None else len(v) for v in values), np.int32, n)
    # filter(None) leaves out the deletions (and empty values, which add no bytes)
    parts = [klen.tobytes(), vlen.tobytes(), b"".join(keys), b"".join(filter(None, values))]
    size = sum(map(len, parts))
    crc = google_crc32c.value(_COUNTS.pack(n, size))
    for part in parts:
        crc = google_crc32c.extend(crc, part)
    return [_HEADER.pack(MAGIC, n, size, crc), *parts]


def segment_size(keys: list[bytes], values: list[bytes | None]) -> int:
    return (_HEADER.size + 8 * len(keys) + sum(map(len, keys))
            + sum(map(len, filter(None, values))))


_CRC_STEP = 4 << 20


def _crc_at(buf: bytes, n: int, at: int, size: int) -> int:
    """The CRC of a segment whose body is ``buf[at:at + size]``: over the counts too (a
    changed ``n`` with the body intact must not parse), a few MiB at a time
    (google-crc32c takes no memoryview, and one copy of a whole state's body costs
    more than its CRC)."""
    crc = google_crc32c.value(_COUNTS.pack(n, size))
    for i in range(at, at + size, _CRC_STEP):
        crc = google_crc32c.extend(crc, buf[i:min(i + _CRC_STEP, at + size)])
    return int(crc)


def _apply_segment(buf: bytes, at: int, n: int, size: int, into: dict[bytes, bytes]) -> bool:
    """Apply the segment whose body is ``buf[at:at + size]``; False (nothing applied)
    when its lengths do not add up to its size. Keys and values are sliced out of
    ``buf`` itself: a body copy first would copy the state once more."""
    klen = np.frombuffer(buf, np.int32, n, at)
    vlen = np.frombuffer(buf, np.int32, n, at + 4 * n)
    if (klen < 0).any() or (vlen < -1).any():
        return False
    vsize = np.maximum(vlen, 0)
    kend = at + 8 * n + np.cumsum(klen, dtype=np.int64)
    vend = (kend[-1] if n else at) + np.cumsum(vsize, dtype=np.int64)
    if (vend[-1] if n else at) != at + size:
        return False
    ends = kend.tolist()
    keys = [buf[e - k:e] for e, k in zip(ends, klen.tolist(), strict=True)]
    values = [buf[e - v:e] for e, v in zip(vend.tolist(), vsize.tolist(), strict=True)]
    into.update(zip(keys, values, strict=True))
    for i in np.flatnonzero(vlen < 0).tolist():
        into.pop(keys[i], None)
    return True


def read(path: Path) -> tuple[dict[bytes, bytes], int]:
    """The state a checkpoint file holds (key -> value) and the length of its whole
    segments; a torn or damaged segment ends the read (itself and all after it)."""
    try:
        buf = path.read_bytes()
    except FileNotFoundError:
        return {}, 0
    state: dict[bytes, bytes] = {}
    at = 0
    while at + _HEADER.size <= len(buf):
        magic, n, size, crc = _HEADER.unpack_from(buf, at)
        start = at + _HEADER.size
        if (magic != MAGIC or start + size > len(buf) or size < 8 * n
                or _crc_at(buf, n, start, size) != crc
                or not _apply_segment(buf, start, n, size, state)):
            break
        at = start + size
    return state, at


class SegmentFile:
    """The checkpoint file of one store. Writes are encoded and written, in order, by
    a thread of their own, from a copy of the keys and values taken by the caller:
    the copying of values into a segment (which releases the GIL, as large
    ``bytes.join`` do) and the disk's time (a whole state of a million people is
    250 MB) are not the decide loop's. A kill before a write lands is a write that
    never happened. An error of a write is raised by the next call."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self._size = 0  # the file's length once the writes handed over have landed
        # the state's bytes as last measured (by due() or a rewrite): due() measures
        # again only once the file has outgrown that, not at every flush
        self._live = 0
        self._writer: ThreadPoolExecutor | None = None
        self._last: Future[None] | None = None
        # the first write that failed: the writes after it are not made (the file may
        # end in a torn segment, and one appended after it would never be read), and
        # every later call raises it
        self._error: BaseException | None = None

    def load(self) -> dict[bytes, bytes]:
        """The state as last written whole; a torn end is cut off, so that the next
        append follows the last whole segment."""
        self.drain()
        state, good = read(self.path)
        if self.path.exists() and self.path.stat().st_size != good:
            os.truncate(self.path, good)
        self._size = good
        return state

    @property
    def size(self) -> int:
        return self._size

    def _submit(self, job: Callable[[], None]) -> None:
        self._raise()
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="state-file")
        self._last = self._writer.submit(self._run, job)

    def _run(self, job: Callable[[], None]) -> None:
        if self._error is not None:
            return
        try:
            job()
        except BaseException as e:
            self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def append(self, writes: Mapping[bytes, bytes | None]) -> None:
        keys, values = list(writes), list(writes.values())
        self._size += segment_size(keys, values)
        self._submit(lambda: self._append(encode_parts(keys, values)))

    def _append(self, parts: list[bytes]) -> None:
        with open(self.path, "ab") as f:
            f.writelines(parts)

    def due(self, state: Mapping[bytes, bytes]) -> bool:
        """The file holds more than twice ``state`` (the state it reads as) plus the
        margin: superseded writes are most of it. ``state`` is measured (a pass over
        every key) only when the file has outgrown its last measure."""
        if self._size <= 2 * self._live + REWRITE_SLACK:
            return False
        self._live = 8 * len(state) + sum(map(len, state)) + sum(map(len, state.values()))
        return self._size > 2 * self._live + REWRITE_SLACK

    def rewrite(self, state: Mapping[bytes, bytes], more: Mapping[bytes, bytes]) -> None:
        """Replace the file by one segment of ``state`` and ``more``, whole or not at
        all (the writer reads a copy of both lists: the state goes on changing)."""
        keys: list[bytes] = [*state, *more]
        values: list[bytes | None] = [*state.values(), *more.values()]
        self._size = self._live = segment_size(keys, values)
        self._submit(lambda: self._replace(encode_parts(keys, values)))

    def _replace(self, parts: list[bytes]) -> None:
        tmp = self.path.with_suffix(".tmp")
        # not synced: a machine crash that leaves it torn leaves a file that reads as
        # empty (its one segment fails its CRC), and the changelog restores it all
        with open(tmp, "wb") as f:
            f.writelines(parts)
        os.replace(tmp, self.path)

    def drain(self) -> None:
        """Wait for the writes handed over; raise the error of one that failed."""
        if self._last is not None:
            last, self._last = self._last, None
            last.result()  # the writer runs its jobs in order: the last ends last
        self._raise()

    def remove(self) -> None:
        self.drain()
        self.path.unlink(missing_ok=True)
        self._size = self._live = 0

    def close(self) -> None:
        self.drain()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None
