"""One partition's records read as columns: a fetch of our own, and one compiled pass
over the record batches (format v2) the broker answers with.

A take-over reads its changelog partition from its local checkpoint, from scratch a
record per person: a million records for a million people. Through aiokafka's
consumer each becomes a record object, a ``ConsumerRecord`` and a tuple of headers,
about half of a take-over's time (bench/RESULTS.md, State restore). Here aiokafka's
own client sends the fetch request, over the connections and credentials it already
has (SASL, TLS, ACLs apply as to any consumer), and the answer's bytes are read as
they came: each record's offset, the positions of its key and value, and the value
of one header (the changelog's fence tag) laid out as arrays, from which the caller
slices only what it keeps.

It reads what aiokafka's consumer would hand out with ``isolation_level=
"read_committed"`` (or, asked to, ``"read_uncommitted"``): control batches are
skipped, so are batches of aborted transactions where they are not to be read; a
compressed batch is decompressed by aiokafka's codecs; every batch's checksum is
checked. The one thing it refuses is a log of the formats before v2 (Kafka 0.11),
which no broker this engine runs on writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, NamedTuple

import google_crc32c
import numba
import numpy as np
from aiokafka import TopicPartition
from aiokafka import errors as Errors
from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.protocol.fetch import FetchRequest

READ_UNCOMMITTED, READ_COMMITTED = 0, 1
NO_TAG = -1    # the record has no such header (or its value is null)
ODD_TAG = -2   # a value the compiled pass does not read as a number: Python's int() decides

_HEADER = 61
_COMPRESSION = 0x07
_TRANSACTIONAL = 0x10
_CONTROL = 0x20
_CODECS = {1: gzip_decode, 2: snappy_decode, 3: lz4_decode, 4: zstd_decode}
# A fetch that fails on a broker that is gone or moving is tried again, with a doubling
# pause, for this long before the error is the caller's (a take-over starts again):
# longer than a dead leader's session (broker.session.timeout.ms, 9 s by default) and
# the election after it, so that a cluster's lost broker is ridden out.
RETRY_SECONDS = 30.0


class Columns(NamedTuple):
    """Records of one buffer (a fetch answer, or a decompressed batch), in offset
    order: ``buf[key_at[i]:key_at[i] + key_len[i]]`` is record ``i``'s key, length
    -1 a null one (a tombstone's value); ``tag`` the header's value as a number
    (NO_TAG, or ODD_TAG with its bytes at ``tag_at``/``tag_len``)."""

    buf: bytes
    offset: np.ndarray
    key_at: np.ndarray
    key_len: np.ndarray
    value_at: np.ndarray
    value_len: np.ndarray
    tag: np.ndarray
    tag_at: np.ndarray
    tag_len: np.ndarray

    def keys(self) -> list[bytes | None]:
        return _slices(self.buf, self.key_at, self.key_len)

    def values(self) -> list[bytes | None]:
        return _slices(self.buf, self.value_at, self.value_len)

    def rows_keyed(self, key: bytes) -> np.ndarray:
        return keyed_rows(np.frombuffer(self.buf, np.uint8), self.key_at, self.key_len, key)

    def value(self, i: int) -> bytes | None:
        n = int(self.value_len[i])
        return None if n < 0 else self.buf[int(self.value_at[i]):int(self.value_at[i]) + n]

    def tags(self) -> list[int | None]:
        """Each record's header value as ``int(value)`` reads it; None where it has
        none or int() refuses it."""
        out: list[int | None] = [None if t == NO_TAG else t for t in self.tag.tolist()]
        for i in np.flatnonzero(self.tag == ODD_TAG).tolist():
            out[i] = self._odd(i)
        return out

    def tag_numbers(self, none: int) -> np.ndarray:
        """:meth:`tags` as an int64 array, ``none`` where a record has no number, and
        a number beyond int64 at int64's end on its side (it compares with any offset
        as the number does)."""
        out = np.where(self.tag == NO_TAG, none, self.tag).astype(np.int64)
        for i in np.flatnonzero(self.tag == ODD_TAG).tolist():
            got = self._odd(i)
            out[i] = none if got is None else min(max(got, _INT64.min), _INT64.max)
        return out

    def _odd(self, i: int) -> int | None:
        at, n = int(self.tag_at[i]), int(self.tag_len[i])
        try:
            return int(self.buf[at:at + n])
        except ValueError:
            return None


_INT64 = np.iinfo(np.int64)


def keyed_rows(buf: np.ndarray, key_at: np.ndarray, key_len: np.ndarray, key: bytes
               ) -> np.ndarray:
    """The records whose key is ``key``, compared where the bytes lie."""
    return _keyed(buf, key_at, key_len, np.frombuffer(key, np.uint8))  # type: ignore[no-any-return]


@numba.njit(cache=True, nogil=True)
def _keyed(buf, key_at, key_len, key):  # type: ignore[no-untyped-def]
    out = np.empty(len(key_at), np.int64)
    k = 0
    n = len(key)
    for i in range(len(key_at)):
        if key_len[i] != n:
            continue
        at = key_at[i]
        same = True
        for j in range(n):
            if buf[at + j] != key[j]:
                same = False
                break
        if same:
            out[k] = i
            k += 1
    return out[:k]


def _slices(buf: bytes, at: np.ndarray, n: np.ndarray) -> list[bytes | None]:
    # slices made by map (no Python frame per record); the rare nulls patched after
    out: list[bytes | None] = list(map(buf.__getitem__, map(slice, at.tolist(),
                                                            (at + n).tolist())))
    for i in np.flatnonzero(n < 0).tolist():
        out[i] = None
    return out


@numba.njit(cache=True, nogil=True)
def _be(buf, at, width):  # type: ignore[no-untyped-def]
    """A signed big-endian integer of ``width`` bytes."""
    v = np.int64(0)
    for k in range(width):
        v = (v << 8) | np.int64(buf[at + k])
    if width < 8 and v >= np.int64(1) << (8 * width - 1):
        v -= np.int64(1) << (8 * width)
    return v


@numba.njit(cache=True, nogil=True)
def _batches(buf):  # type: ignore[no-untyped-def]
    """The whole batches in ``buf`` (a fetch answer may end in part of one): per batch
    its first byte, end, base offset, last offset delta, attributes, producer id,
    record count, magic and stored checksum."""
    n = len(buf)
    count = 0
    at = 0
    while at + 17 <= n:
        length = _be(buf, at + 8, 4)
        if length < 5 or at + 12 + length > n:
            break
        count += 1
        at += 12 + length
    out = np.zeros((count, 9), np.int64)
    at = 0
    for b in range(count):
        end = at + 12 + _be(buf, at + 8, 4)
        out[b, 0] = at
        out[b, 1] = end
        out[b, 2] = _be(buf, at, 8)
        out[b, 7] = buf[at + 16]
        if buf[at + 16] == 2 and end - at >= _HEADER:
            out[b, 3] = _be(buf, at + 23, 4)
            out[b, 4] = _be(buf, at + 21, 2)
            out[b, 5] = _be(buf, at + 43, 8)
            out[b, 6] = _be(buf, at + 57, 4)
            out[b, 8] = _be(buf, at + 17, 4) & 0xFFFFFFFF
        at = end
    return out


@numba.njit(cache=True, nogil=True)
def _varint(buf, at, end):  # type: ignore[no-untyped-def]
    """A zigzag varint at ``at``; (value, next byte), next -1 when malformed."""
    z = np.uint64(0)
    shift = 0
    while True:
        if at >= end or shift > 63:
            return np.int64(0), -1
        b = buf[at]
        at += 1
        z |= np.uint64(b & 0x7F) << np.uint64(shift)
        if b < 0x80:
            break
        shift += 7
    return np.int64(z >> np.uint64(1)) ^ -np.int64(z & np.uint64(1)), at


@numba.njit(cache=True, nogil=True)
def _number(buf, at, n):  # type: ignore[no-untyped-def]
    """Decimal digits as a number; ODD_TAG for anything else (or too long for int64)."""
    if n < 1 or n > 18:
        return ODD_TAG
    v = np.int64(0)
    for k in range(n):
        d = buf[at + k]
        if d < 48 or d > 57:
            return ODD_TAG
        v = v * 10 + (d - 48)
    return v


@numba.njit(cache=True, nogil=True)
def _records(buf, spans, name, first, last):  # type: ignore[no-untyped-def]
    """The records of the batches ``spans`` (records' first byte, end, base offset,
    count) whose offset is in ``[first, last]``: offset, key and value (position,
    length; -1 null) and the value of header ``name`` (its number, or NO_TAG /
    ODD_TAG with its position and length). ``ok`` False: a record is malformed."""
    total = 0
    for b in range(len(spans)):
        total += spans[b, 3]
    cols = np.empty((8, total), np.int64)
    i = 0
    for b in range(len(spans)):
        at, end, base = spans[b, 0], spans[b, 1], spans[b, 2]
        for _ in range(spans[b, 3]):
            size, at = _varint(buf, at, end)
            if at < 0 or size < 0 or at + size > end:
                return cols[:, :i], False
            stop = at + size
            _, at = _varint(buf, at + 1, stop)          # attributes; timestamp delta
            if at < 0:
                return cols[:, :i], False
            delta, at = _varint(buf, at, stop)
            if at < 0:
                return cols[:, :i], False
            klen, at = _varint(buf, at, stop)
            kat = at
            if at < 0 or at + max(klen, 0) > stop:
                return cols[:, :i], False
            vlen, at = _varint(buf, at + max(klen, 0), stop)
            vat = at
            if at < 0 or at + max(vlen, 0) > stop:
                return cols[:, :i], False
            nh, at = _varint(buf, at + max(vlen, 0), stop)
            tag, tat, tlen = NO_TAG, 0, 0
            found = False  # the first header of that name decides (a null value: none)
            for _h in range(nh):
                if at < 0:
                    break
                hk, at = _varint(buf, at, stop)
                if at < 0 or hk < 0 or at + hk > stop:
                    return cols[:, :i], False
                hkat = at
                hv, at = _varint(buf, at + hk, stop)
                if at < 0 or at + max(hv, 0) > stop:
                    return cols[:, :i], False
                if not found and hk == len(name) and hk > 0:
                    found = True
                    for k in range(hk):
                        if buf[hkat + k] != name[k]:
                            found = False
                            break
                    if found and hv >= 0:
                        tag, tat, tlen = _number(buf, at, hv), at, hv
                at += max(hv, 0)
            if at != stop:
                return cols[:, :i], False
            offset = base + delta
            if first <= offset <= last:
                cols[0, i] = offset
                cols[1, i] = kat
                cols[2, i] = klen
                cols[3, i] = vat
                cols[4, i] = vlen
                cols[5, i] = tag
                cols[6, i] = tat
                cols[7, i] = tlen
                i += 1
    return cols[:, :i], True


def _columns(buf: bytes, spans: np.ndarray, name: np.ndarray, first: int, last: int,
             tp: TopicPartition) -> Columns:
    raw = np.frombuffer(buf, np.uint8)
    counts = spans[:, 3]
    if ((counts < 0) | (counts > spans[:, 1] - spans[:, 0])).any():
        # a record takes a few bytes at least: a count beyond the batch's size is not
        # one to allocate for
        raise Errors.CorruptRecordException(
            f"a record batch of {tp.topic}/{tp.partition} announces more records than fit")
    cols, ok = _records(raw, np.ascontiguousarray(spans, np.int64), name, first, last)
    if not ok:
        raise Errors.CorruptRecordException(f"a malformed record in {tp.topic}/{tp.partition}")
    return Columns(buf, *cols)


class _Aborted:
    """Which transactional batches belong to aborted transactions (the consumer's
    read_committed rule): a producer's batches from the first offset of an aborted
    transaction up to its abort marker."""

    def __init__(self, aborted: list[tuple[int, int]] | None) -> None:
        self.pending = sorted(aborted or [], key=lambda a: a[1])
        self.producers: set[int] = set()

    def skip(self, raw: np.ndarray, base: int, attributes: int, producer: int,
             records_at: int) -> bool:
        while self.pending and self.pending[0][1] <= base:
            self.producers.add(self.pending.pop(0)[0])
        if attributes & _CONTROL:
            # a control record's key: version int16, type int16 (0 abort, 1 commit)
            if _control_type(raw, records_at) == 0:
                self.producers.discard(producer)
            return True
        return bool(attributes & _TRANSACTIONAL) and producer in self.producers


def _control_type(raw: np.ndarray, records_at: int) -> int:
    """The type of the first control record of a batch whose records start at
    ``records_at`` (its key: version int16, type int16; 0 abort, 1 commit)."""
    _, at = _varint(raw, records_at, len(raw))      # length
    _, at = _varint(raw, at + 1, len(raw))          # attributes; timestamp delta
    _, at = _varint(raw, at, len(raw))              # offset delta
    _, at = _varint(raw, at, len(raw))              # key length
    if at < 0 or at + 4 > len(raw):
        raise Errors.CorruptRecordException("a malformed control record")
    return int(_be(raw, at + 2, 2))


def parse(buf: bytes, tp: TopicPartition, header: str, first: int, last: int,
          aborted: list[tuple[int, int]] | None = None) -> tuple[list[Columns], int | None]:
    """The records of a fetch answer's ``buf`` with offsets in ``[first, last]``, as
    columns (one per buffer: the answer, each compressed batch's decompressed
    records), and the offset after the last whole batch (None: no whole batch)."""
    raw = np.frombuffer(buf, np.uint8)
    table = _batches(raw)
    if not len(table):
        return [], None
    if (table[:, 7] != 2).any():
        raise Errors.UnsupportedVersionError(
            f"{tp.topic}/{tp.partition} holds records of a message format before v2")
    if (table[:, 1] - table[:, 0] < _HEADER).any():
        raise Errors.CorruptRecordException(
            f"a record batch of {tp.topic}/{tp.partition} is shorter than its header")
    name = np.frombuffer(header.encode(), np.uint8)
    nxt = int(table[-1, 2] + table[-1, 3] + 1)
    for start, end, crc in table[:, [0, 1, 8]].tolist():
        if google_crc32c.value(buf[start + 21:end]) != crc:
            raise Errors.CorruptRecordException(
                f"a record batch of {tp.topic}/{tp.partition} fails its checksum")
    keep = (table[:, 4] & _CONTROL) == 0  # whoever wrote them, as aiokafka's consumer
    odd = (table[:, 4] & (_TRANSACTIONAL | _CONTROL)) != 0
    if odd.any():
        rule = _Aborted(aborted)
        for b in range(len(table)):
            if table[b, 5] >= 0:
                keep[b] = not rule.skip(raw, int(table[b, 2]), int(table[b, 4]),
                                        int(table[b, 5]), int(table[b, 0]) + _HEADER)
    codec = table[:, 4] & _COMPRESSION
    spans = np.stack([table[:, 0] + _HEADER, table[:, 1], table[:, 2], table[:, 6]], axis=1)
    out = []
    # in offset order: each run of plain batches in one pass over the answer, each
    # compressed batch on its own
    run: list[int] = []
    for b in np.flatnonzero(keep).tolist():
        if codec[b] == 0:
            run.append(b)
            continue
        if run:
            out.append(_columns(buf, spans[run], name, first, last, tp))
            run = []
        decode = _CODECS.get(int(codec[b]))
        if decode is None:
            raise Errors.UnsupportedCodecError(f"compression codec {codec[b]}")
        try:
            inner = decode(memoryview(buf)[int(spans[b, 0]):int(spans[b, 1])])
        except Exception as e:  # each codec fails in its own way on damaged bytes
            raise Errors.CorruptRecordException(
                f"a compressed batch of {tp.topic}/{tp.partition} does not "
                f"decompress ({type(e).__name__})") from e
        one = np.array([[0, len(inner), spans[b, 2], spans[b, 3]]], np.int64)
        out.append(_columns(inner, one, name, first, last, tp))
    if run:
        out.append(_columns(buf, spans[run], name, first, last, tp))
    return [c for c in out if len(c.offset)], nxt


class PartitionReader:
    """Reads a range of one partition with fetches of its own over an aiokafka
    client's connections (``AIOKafkaConsumer._client`` or an ``AIOKafkaClient``)."""

    def __init__(self, client: Any, max_bytes: int = 16 << 20, max_wait_ms: int = 500,
                 committed: bool = True) -> None:
        self.client = client
        self.max_bytes = max_bytes
        self.max_wait_ms = max_wait_ms
        # read_uncommitted (``committed=False``): every data batch the log holds, those
        # of aborted transactions too, as a consumer of that isolation level reads
        self.isolation = READ_COMMITTED if committed else READ_UNCOMMITTED

    async def _leader(self, tp: TopicPartition) -> int:
        await self.client.add_topic(tp.topic)
        node = self.client.cluster.leader_for_partition(tp)
        if node is None or node < 0:
            await self.client.force_metadata_update()
            node = self.client.cluster.leader_for_partition(tp)
        if tp.topic in self.client.cluster.unauthorized_topics:
            raise Errors.TopicAuthorizationFailedError(tp.topic)
        if node is None or node < 0:
            raise Errors.LeaderNotAvailableError(f"no leader for {tp.topic}/{tp.partition}")
        return int(node)

    async def fetch(self, tp: TopicPartition, offset: int) -> tuple[bytes, list[Any]]:
        """One fetch of ``tp`` from ``offset``: the answer's record bytes and its
        aborted transactions; a moved leader or a broker gone is looked up again."""
        pause = 0.1
        loop = asyncio.get_running_loop()
        until = loop.time() + RETRY_SECONDS
        while True:
            try:
                node = await self._leader(tp)
                req = FetchRequest(self.max_wait_ms, 1, self.max_bytes, self.isolation,
                                   [(tp.topic, [(tp.partition, offset, self.max_bytes)])])
                resp = await self.client.send(node, req)
                part = resp.topics[0][1][0]
                err = Errors.for_code(part[1])
                if err is Errors.NoError:
                    # partition, error, high watermark, last stable offset, then from
                    # v5 the log start; the records last (v11 adds a replica before)
                    aborted = part[5] if resp.API_VERSION >= 5 else part[4]
                    return part[-1] or b"", aborted or []
                raise err(f"fetching {tp.topic}/{tp.partition} from offset {offset}")
            except Errors.KafkaError as e:
                # retriable: a leader moved or not elected yet, a broker gone or not
                # ready; the leader is looked up again
                if not e.retriable or loop.time() + pause > until:
                    raise
                self.client.force_metadata_update()
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def read(self, tp: TopicPartition, first: int, last: int, header: str = ""
                   ) -> AsyncGenerator[tuple[list[Columns], int], None]:
        """The records of ``tp`` from ``first`` to ``last`` (inclusive; ``header``:
        the header whose value :attr:`Columns.tag` reads, none if empty), an answer at
        a time, each with the offset the next one starts at (compaction leaves gaps:
        the position moves past them). The next fetch is sent before the caller
        works on this one's records."""
        pos = first
        ahead: asyncio.Task[tuple[bytes, list[Any]]] | None = None
        try:
            while pos <= last:
                buf, aborted = await (ahead or self.fetch(tp, pos))
                ahead = None
                cols, nxt = parse(buf, tp, header, pos, last, aborted)
                pos = max(pos, nxt) if nxt is not None else pos
                if pos <= last:
                    ahead = asyncio.ensure_future(self.fetch(tp, pos))
                yield cols, pos
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
