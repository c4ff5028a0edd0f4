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
has grown to twice that plus a margin) goes to a new file, synced, then renamed over
the old one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path

import google_crc32c
import numpy as np

FILE_NAME = "state.seg"
MAGIC = b"MYNSEG01"
_HEADER = struct.Struct("<8sIQI")  # magic, n, body length, CRC-32C
_COUNTS = struct.Struct("<IQ")  # n and the body's length, as the CRC covers them
# how far the file may grow beyond twice its last rewrite before the next one: a small
# partition is not rewritten on every flush
REWRITE_SLACK = 64 << 20


def encode_segment(writes: Mapping[str, bytes | None]) -> bytes:
    """One segment setting (or, for None, deleting) every key of ``writes``."""
    keys = [k.encode() for k in writes]
    values = list(writes.values())
    n = len(keys)
    klen = np.fromiter(map(len, keys), np.int32, n)
    vlen = np.fromiter((-1 if v is None else len(v) for v in values), np.int32, n)
    body = b"".join([klen.tobytes(), vlen.tobytes(), b"".join(keys),
                     b"".join(v for v in values if v is not None)])
    return _HEADER.pack(MAGIC, n, len(body), _crc(n, body)) + body


def _crc(n: int, body: bytes) -> int:
    """Over the counts too: a changed ``n`` with the body intact must not parse."""
    return int(google_crc32c.extend(google_crc32c.value(_COUNTS.pack(n, len(body))), body))


def _apply_segment(body: bytes, n: int, into: dict[str, bytes]) -> None:
    klen = np.frombuffer(body, np.int32, n, 0)
    vlen = np.frombuffer(body, np.int32, n, 4 * n)
    kend = (8 * n + np.cumsum(klen, dtype=np.int64)).tolist()
    vsize = np.maximum(vlen, 0)
    vend = (kend[-1] + np.cumsum(vsize, dtype=np.int64)).tolist() if n else []
    keys = [body[e - k:e].decode() for e, k in zip(kend, klen.tolist(), strict=True)]
    values = [body[e - v:e] for e, v in zip(vend, vsize.tolist(), strict=True)]
    into.update(zip(keys, values, strict=True))
    for i in np.flatnonzero(vlen < 0).tolist():
        into.pop(keys[i], None)


def read(path: Path) -> tuple[dict[str, bytes], int]:
    """The state a checkpoint file holds (key -> value) and the length of its whole
    segments; a torn or damaged segment ends the read (itself and all after it)."""
    try:
        buf = path.read_bytes()
    except FileNotFoundError:
        return {}, 0
    state: dict[str, bytes] = {}
    at = 0
    while at + _HEADER.size <= len(buf):
        magic, n, size, crc = _HEADER.unpack_from(buf, at)
        body = buf[at + _HEADER.size:at + _HEADER.size + size]
        if (magic != MAGIC or len(body) != size or size < 8 * n
                or _crc(n, body) != crc):
            break
        _apply_segment(body, n, state)
        at += _HEADER.size + size
    return state, at


class SegmentFile:
    """The checkpoint file of one store, opened for appends."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self._base = 0  # bytes of the last rewrite (0: none yet)

    def load(self) -> dict[str, bytes]:
        """The state as last written whole; a torn end is cut off, so that the next
        append follows the last whole segment."""
        state, good = read(self.path)
        if self.path.exists() and self.path.stat().st_size != good:
            os.truncate(self.path, good)
        self._base = good
        return state

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, writes: Mapping[str, bytes | None]) -> None:
        with open(self.path, "ab") as f:
            f.write(encode_segment(writes))

    def due(self) -> bool:
        """The file has outgrown the state it holds (by the last rewrite's measure)."""
        return self.size > 2 * self._base + REWRITE_SLACK

    def rewrite(self, state: Mapping[str, bytes]) -> None:
        """Replace the file by one segment of ``state``, whole or not at all."""
        seg = encode_segment(state)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(seg)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._base = len(seg)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self._base = 0
