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

from engine.streams.value_table import Snapshot, ValueTable, value_lengths

FILE_NAME = "state.seg"
MAGIC = b"MYNSEG01"
_HEADER = struct.Struct("<8sIQI")  # magic, n, body length, CRC-32C
_COUNTS = struct.Struct("<IQ")  # n and the body's length, as the CRC covers them
# how far the file may grow beyond twice the state it holds before it is rewritten: a
# small partition is not rewritten on every flush
REWRITE_SLACK = 64 << 20
_CRC_STEP = 4 << 20


# a segment's part: bytes, or a view of a snapshot's gathered keys or values
Part = bytes | memoryview


def encode_parts(keys: list[bytes], values: list[bytes | None]) -> list[Part]:
    """One segment setting (or, for None, deleting) each key to its value, as the
    parts written one after the other (not joined: that would copy the values again)."""
    klen = np.fromiter(map(len, keys), np.int32, len(keys))
    # filter(None) leaves out the deletions (and empty values, which add no bytes)
    return _framed(len(keys), [klen.tobytes(), value_lengths(values, np.int32).tobytes(),
                               b"".join(keys), b"".join(filter(None, values))])


def _framed(n: int, parts: list[Part]) -> list[Part]:
    """The body's parts of a segment of ``n`` keys, behind its header."""
    size = sum(map(len, parts))
    crc = google_crc32c.value(_COUNTS.pack(n, size))
    for part in parts:
        crc = _crc_extend(crc, part)
    return [_HEADER.pack(MAGIC, n, size, crc), *parts]


def _crc_extend(crc: int, part: Part) -> int:
    """``crc`` over ``part`` too. google-crc32c takes bytes only: a view goes a few MiB
    at a time (one copy of a whole state's body costs more than its CRC)."""
    if isinstance(part, bytes):
        return int(google_crc32c.extend(crc, part))
    for i in range(0, len(part), _CRC_STEP):
        crc = google_crc32c.extend(crc, bytes(part[i:i + _CRC_STEP]))
    return int(crc)


def _whole_parts(state: Snapshot, keys: list[bytes], values: list[bytes | None]
                 ) -> list[Part]:
    """One segment of a table's snapshot and a few keys more."""
    klen, vlen, body = state.parts()
    split = int(klen.sum(dtype=np.int64))
    mk = np.fromiter(map(len, keys), np.int32, len(keys))
    mv = value_lengths(values, np.int32)
    return _framed(len(klen) + len(keys), [
        np.concatenate([klen, mk]).tobytes(), np.concatenate([vlen, mv]).tobytes(),
        body[:split].data, b"".join(keys), body[split:].data,
        b"".join(filter(None, values))])


def segment_size(keys: list[bytes], values: list[bytes | None]) -> int:
    return _HEADER.size + _body_size(len(keys), sum(map(len, keys))
                                     + sum(map(len, filter(None, values))))


def _body_size(n: int, data: int) -> int:
    """A segment body's bytes: ``n`` keys' two lengths, and ``data`` bytes of keys and
    values."""
    return 8 * n + data


def _crc_at(buf: np.ndarray, n: int, at: int, size: int) -> int:
    """The CRC of a segment whose body is ``buf[at:at + size]``: over the counts too (a
    changed ``n`` with the body intact must not parse)."""
    return _crc_extend(google_crc32c.value(_COUNTS.pack(n, size)), buf[at:at + size].data)


def _apply_segment(buf: np.ndarray, at: int, n: int, size: int, into: ValueTable) -> bool:
    """Apply the segment whose body is ``buf[at:at + size]`` (``into``'s own arena);
    False (nothing applied) when its lengths do not add up to its size. The table's
    rows point at the keys and values where they lie: nothing is copied."""
    klen = np.frombuffer(buf, np.int32, n, at).astype(np.int64)
    vlen = np.frombuffer(buf, np.int32, n, at + 4 * n).astype(np.int64)
    if (klen < 0).any() or (vlen < -1).any():
        return False
    vsize = np.maximum(vlen, 0)
    kend = at + 8 * n + np.cumsum(klen)
    vend = (kend[-1] if n else at) + np.cumsum(vsize)
    if (vend[-1] if n else at) != at + size:
        return False
    into.refer(kend - klen, klen, vend - vsize, vlen)
    return True


def read(path: Path) -> tuple[ValueTable, int]:
    """The state a checkpoint file holds (key -> value) and the length of its whole
    segments; a torn or damaged segment ends the read (itself and all after it). The
    file is read into the table's arena, with a quarter more as room for the puts that
    follow (not touched, so not in memory, until they come)."""
    state = ValueTable()
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            arena = np.empty(size + size // 4 + (1 << 16), np.uint8)
            got = f.readinto(arena.data[:size])
    except FileNotFoundError:
        return state, 0
    state.adopt(arena, got)
    buf = arena[:got]
    at = 0
    while at + _HEADER.size <= got:
        magic, n, size, crc = _HEADER.unpack_from(buf.data, at)
        start = at + _HEADER.size
        if (magic != MAGIC or start + size > got or size < 8 * n
                or _crc_at(buf, n, start, size) != crc
                or not _apply_segment(buf, start, n, size, state)):
            break
        at = start + size
    state.tidy()  # superseded writes read from the file are not kept in memory
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
        self._writer: ThreadPoolExecutor | None = None
        self._last: Future[None] | None = None
        # the first write that failed: the writes after it are not made (the file may
        # end in a torn segment, and one appended after it would never be read), and
        # every later call raises it
        self._error: BaseException | None = None

    def load(self) -> ValueTable:
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

    def _append(self, parts: list[Part]) -> None:
        with open(self.path, "ab") as f:
            f.writelines(parts)

    def due(self, state: ValueTable) -> bool:
        """The file holds more than twice ``state`` (as a segment) plus the margin:
        superseded writes are most of it."""
        return self._size > 2 * _body_size(len(state), state.live_bytes) + REWRITE_SLACK

    def rewrite(self, state: Snapshot, more: Mapping[bytes, bytes]) -> None:
        """Replace the file by one segment of ``state`` and ``more``, whole or not at
        all (the writer lays out the snapshot on its own thread: the table goes on
        changing, and its arena's written bytes never do)."""
        keys: list[bytes] = list(more)
        values: list[bytes | None] = list(more.values())
        self._size = segment_size(keys, values) + _body_size(len(state.kat), state.size)
        self._submit(lambda: self._replace(_whole_parts(state, keys, values)))

    def _replace(self, parts: list[Part]) -> None:
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
        self._size = 0

    def close(self) -> None:
        self.drain()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None
