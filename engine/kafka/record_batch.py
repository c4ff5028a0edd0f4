"""Kafka record batches (format v2) written from columns: the worker's grants and
changelog.

Most of what the worker produces are grants, tens of thousands per poll, and a
changelog record per person touched: one message each, with the same headers (none,
or the changelog's fence), stamped with the time they are sent. Built one message at
a time through aiokafka's ``BatchBuilder`` they cost a Python call, a tuple and a
metadata object each (about a fifth of a batched poll with the JSON writing before
it). Here a partition's messages are laid out as whole record batches by one
compiled pass over the keys' and values' Arrow buffers: exactly the bytes aiokafka's
builder writes for the same messages (``tests/kafka/test_record_batch.py`` compares
them).

:class:`PrebuiltBatch` hands such a batch to ``AIOKafkaProducer.send_batch``, which
takes any builder with the methods its accumulator calls. The producer's
idempotence still applies: the producer id, epoch and base sequence it assigns are
written into the batch, and the checksum computed, when the producer takes it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import google_crc32c
import numba
import numpy as np
import pyarrow as pa
from aiokafka.record.util import calc_crc32c

from engine.rules.strings import buffers, put_bytes

HEADER = 61          # bytes before the first record
_CRC_AT = 17         # the checksum covers everything after it (from the attributes)
_TIME_AT = 27        # first and max timestamp, int64 each
_PRODUCER_AT = 43    # producer id int64, epoch int16, base sequence int32


def pick_crc32c(implementation: str) -> Callable[[bytes], int]:
    """google-crc32c uses the CPU's CRC instruction: 0.08 ms per MiB with the copy it
    needs, against 0.67 for aiokafka's table-driven one, which stays where
    google-crc32c has only its pure-Python fallback."""
    return google_crc32c.value if implementation == "c" else calc_crc32c  # type: ignore[no-any-return]


_crc32c = pick_crc32c(google_crc32c.implementation)


@numba.njit(cache=True, nogil=True)
def _varint_size(v):  # type: ignore[no-untyped-def]
    z = (v << 1) ^ (v >> 63)  # zigzag, as Kafka's varints are
    n = 1
    while z >= 0x80:
        z >>= 7
        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _put_varint(buf, at, v):  # type: ignore[no-untyped-def]
    z = np.uint64((v << 1) ^ (v >> 63))
    while z >= 0x80:
        buf[at] = np.uint8((z & 0x7F) | 0x80)
        z >>= np.uint64(7)
        at += 1
    buf[at] = np.uint8(z)
    return at + 1


@numba.njit(cache=True, nogil=True)
def _put_be(buf, at, v, width):  # type: ignore[no-untyped-def]
    for k in range(width):
        buf[at + k] = np.uint8((v >> (8 * (width - 1 - k))) & 0xFF)


@numba.njit(cache=True, nogil=True)
def _body_size(i, koff, kval, voff, vval, j, hdr):  # type: ignore[no-untyped-def]
    """Size of record ``j`` of a batch (message ``i``) after its length prefix."""
    klen = koff[i + 1] - koff[i] if kval[i] else -1
    vlen = voff[i + 1] - voff[i] if vval[i] else -1
    return (1 + 1 + _varint_size(j) + _varint_size(klen) + max(klen, 0)
            + _varint_size(vlen) + max(vlen, 0) + len(hdr))


@numba.njit(cache=True, nogil=True)
def _close(buf, bounds, b, end, records):  # type: ignore[no-untyped-def]
    """Batch ``b`` (opened at ``bounds[b, 0]``) ends at ``end``: its header."""
    start = bounds[b, 0]
    _put_be(buf, start, 0, 8)                      # base offset
    _put_be(buf, start + 8, end - start - 12, 4)   # batch length
    _put_be(buf, start + 12, -1, 4)                # partition leader epoch
    buf[start + 16] = 2                            # magic
    _put_be(buf, start + 17, 0, 4)                 # checksum, when the producer takes it
    _put_be(buf, start + 21, 0, 2)                 # attributes
    _put_be(buf, start + 23, records - 1, 4)       # last offset delta
    _put_be(buf, start + 27, 0, 16)                # timestamps, by record_batches
    _put_be(buf, start + 43, -1, 8)                # producer id
    _put_be(buf, start + 51, -1, 2)                # producer epoch
    _put_be(buf, start + 53, 0, 4)                 # base sequence (as aiokafka)
    _put_be(buf, start + 57, records, 4)           # records
    bounds[b, 1] = end
    bounds[b, 2] = records


@numba.njit(cache=True, nogil=True)
def _write(rows, koff, kdat, kval, voff, vdat, vval, hdr, max_bytes):  # type: ignore[no-untyped-def]
    """Messages ``rows`` (in order) as record batches of at most ``max_bytes`` each
    (a single larger message gets a batch of its own), each with the headers ``hdr``
    (as written: their count, then each one): the batches back to back, and
    per batch (first byte, end byte, records). Timestamps, producer fields and the
    checksum are left for :class:`PrebuiltBatch`."""
    n = len(rows)
    # the sizes first, so that the buffer is allocated once: each record's body, and
    # the batch it opens (-1: it continues the one before)
    body = np.empty(n, np.int64)
    opens = np.full(n, -1, np.int64)
    total = 0
    batches = 0
    size = 0
    j = 0
    for r in range(n):
        body[r] = _body_size(rows[r], koff, kval, voff, vval, j, hdr)
        rec = _varint_size(body[r]) + body[r]
        if j > 0 and size + rec > max_bytes:
            j = 0
            body[r] = _body_size(rows[r], koff, kval, voff, vval, 0, hdr)
            rec = _varint_size(body[r]) + body[r]
        if j == 0:
            opens[r] = batches
            batches += 1
            total += HEADER
            size = HEADER
        size += rec
        total += rec
        j += 1
    buf = np.empty(total, np.uint8)
    bounds = np.empty((batches, 3), np.int64)
    at = 0
    j = 0
    for r in range(n):
        if opens[r] >= 0:
            if r > 0:
                _close(buf, bounds, opens[r] - 1, at, j)
            bounds[opens[r], 0] = at
            at += HEADER
            j = 0
        i = rows[r]
        at = _put_varint(buf, at, body[r])
        buf[at] = 0                                        # record attributes
        buf[at + 1] = 0                                    # timestamp delta (varint 0)
        at = _put_varint(buf, at + 2, j)                   # offset delta
        if kval[i]:
            at = _put_varint(buf, at, koff[i + 1] - koff[i])
            at = put_bytes(buf, at, kdat, koff[i], koff[i + 1])
        else:
            at = _put_varint(buf, at, -1)
        if vval[i]:
            at = _put_varint(buf, at, voff[i + 1] - voff[i])
            at = put_bytes(buf, at, vdat, voff[i], voff[i + 1])
        else:
            at = _put_varint(buf, at, -1)                  # a tombstone
        at = put_bytes(buf, at, hdr, 0, len(hdr))
        j += 1
    if n:
        _close(buf, bounds, batches - 1, at, j)
    return buf, bounds


class PrebuiltBatch:
    """A finished record batch in the shape ``AIOKafkaProducer.send_batch`` takes
    (the methods its accumulator calls on a ``BatchBuilder``): closed to further
    messages; the producer's idempotence fields and the checksum are filled in when
    the producer takes the batch (again on a retry, which may bring new ones)."""

    def __init__(self, data: bytearray, records: int) -> None:
        self._data = data
        self._records = records
        self._summed = False

    def append(self, *, timestamp: object, key: object, value: object,
               headers: object = None) -> None:
        return None  # closed: the producer's own send() opens a batch of its own

    def close(self) -> None:
        pass

    def closed(self) -> bool:
        return True

    def record_count(self) -> int:
        return self._records

    def size(self) -> int:
        return len(self._data)

    def _set_producer_state(self, producer_id: int, producer_epoch: int,
                            base_sequence: int) -> None:
        struct.pack_into(">qhi", self._data, _PRODUCER_AT, producer_id, producer_epoch,
                         base_sequence)
        self._summed = False

    def _build(self) -> bytearray:
        """The batch as sent (a bytearray, as aiokafka's own builder hands over)."""
        if not self._summed:
            data = self._data
            struct.pack_into(">I", data, _CRC_AT, _crc32c(bytes(memoryview(data)[_CRC_AT + 4:])))
            self._summed = True
        return self._data


def _headers(headers: list[tuple[str, bytes]]) -> np.ndarray:
    """Headers as a record carries them: their count, then each key and value with its
    length (by the writer's own varints)."""
    parts = [np.frombuffer(p, np.uint8) for k, v in headers for p in (k.encode(), v)]
    buf = np.empty(10 + sum(10 + len(p) for p in parts), np.uint8)
    at = _put_varint(buf, 0, len(headers))
    for p in parts:
        at = _put_varint(buf, at, len(p))
        at = put_bytes(buf, at, p, 0, len(p))
    return buf[:at]


def record_batches(keys: pa.Array, values: pa.Array, rows: np.ndarray | None, max_bytes: int,
                   headers: list[tuple[str, bytes]] | None = None,
                   timestamp_ms: int | None = None) -> list[PrebuiltBatch]:
    """Messages ``rows`` (default: all) of ``keys``/``values`` (binary or string arrays;
    a null key is none, a null value a tombstone) as record batches of at most
    ``max_bytes``, in order, every message with ``headers`` and stamped
    ``timestamp_ms`` (default: now)."""
    koff, kdat, kval = buffers(keys)
    voff, vdat, vval = buffers(values)
    rows = np.arange(len(keys)) if rows is None else rows
    buf, bounds = _write(np.ascontiguousarray(rows, dtype=np.int64), koff, kdat, kval,
                         voff, vdat, vval, _headers(headers or []), max_bytes)
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    out = []
    for start, end, count in bounds.tolist():
        data = bytearray(buf[start:end].data)
        struct.pack_into(">qq", data, _TIME_AT, ts, ts)
        out.append(PrebuiltBatch(data, count))
    return out
