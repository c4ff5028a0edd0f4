"""engine.kafka.fetch reads record batches as aiokafka's consumer hands them out:
the same records, keys, values and header value, offsets in range, read_committed."""

from __future__ import annotations

import asyncio
import itertools
import struct
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as Errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.record import default_records
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c, decode_varint_py
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.devtools import broker as devbroker
from engine.devtools import security
from engine.kafka.client_config import default_client
from engine.kafka.fetch import Columns, PartitionReader, parse
from engine.kafka.topics import Topics, ensure_topics

TP = TopicPartition("t", 0)
NAME = "mynapoint-fence"
TS = 1_601_510_400_123


class DefaultRecordBatch(default_records._DefaultRecordBatchPy):
    """aiokafka's reader in Python, varints included: its compiled batch reader and its
    compiled varint decoder both read outside a damaged batch (a bus error, then a
    segmentation fault that took a test process down in a clean clone's run, found by
    test_damaged_bytes_give_the_records_or_a_kafka_error). A record's attributes are
    read as the one byte Kafka's protocol makes them: aiokafka reads a varint there,
    the same for the 0 every producer writes, not for a damaged byte with its high bit
    set, where it takes the next byte too (the same test, in another clean clone's
    run: the engine read the record as Kafka's own client does)."""

    def _read_msg(self, decode_varint: Any = None) -> Any:  # the parent's; not used
        calls = itertools.count()

        def read(buffer: bytearray, pos: int) -> tuple[int, int]:
            if next(calls) == 1:  # the record's length first, then its attributes
                return buffer[pos], pos + 1
            return decode_varint_py(buffer, pos)

        return super()._read_msg(read)

BATCH_HEADER = 61  # bytes before a batch's first record


def batch(base: int, msgs: list[tuple[bytes | None, bytes | None, list[Any]]],
          compression: int = 0, producer: int = -1, transactional: bool = False,
          control: bool = False, gap: int = 1) -> bytes:
    """A record batch as a broker stores it: aiokafka's builder, then the base offset
    (and a control batch's attribute) the broker sets; offsets ``gap`` apart (gaps
    are what compaction leaves inside a batch)."""
    b = DefaultRecordBatchBuilder(2, compression, int(transactional), producer,
                                  0 if producer >= 0 else -1, 0, 1 << 24)
    for j, (k, v, h) in enumerate(msgs):
        assert b.append(j * gap, TS, k, v, h) is not None
    data = bytearray(b.build())
    struct.pack_into(">q", data, 0, base)
    if control:
        attrs = struct.unpack_from(">h", data, 21)[0] | 0x20
        struct.pack_into(">h", data, 21, attrs)
        struct.pack_into(">I", data, 17, calc_crc32c(bytes(data[21:])))
    return bytes(data)


def log(batches: list[Any]) -> list[bytes]:
    """Batches as drawn (messages, codec, gap inside, offsets skipped before) one after
    another as a partition holds them."""
    parts, base = [], 0
    for msgs, codec, gap, skip in batches:
        base += skip
        parts.append(batch(base, msgs, codec, gap=gap))
        base += (len(msgs) - 1) * gap + 1
    return parts


def reference(buf: bytes, first: int, last: int) -> list[tuple[Any, ...]] | None:
    """What the consumer hands out of ``buf`` (no transactions): each record in range
    with its key, value and the header's value as recovery's old ``_tag`` read it;
    None where a batch fails its checksum."""
    out = []
    at = 0
    while at + 12 <= len(buf):
        size = struct.unpack_from(">i", buf, at + 8)[0] + 12
        if at + size > len(buf):
            break
        rb = DefaultRecordBatch(buf[at:at + size])
        if not rb.validate_crc():
            return None
        if not rb.is_control_batch:
            for r in rb:
                if first <= r.offset <= last:
                    out.append((r.offset, r.key, r.value, _tag(r.headers)))
        at += size
    return out


def _tag(headers: Any) -> int | None:
    for k, v in headers:
        if k == NAME:
            try:
                return int(v) if v is not None else None
            except ValueError:
                return None
    return None


def flat(cols: list[Columns]) -> list[tuple[Any, ...]]:
    for c in cols:  # the tags as numbers (a restore's) say what the tags say
        clamp = [NONE if t is None else min(max(t, -2**63), 2**63 - 1) for t in c.tags()]
        assert c.tag_numbers(NONE).tolist() == clamp
    return [r for c in cols
            for r in zip(c.offset.tolist(), c.keys(), c.values(), c.tags(), strict=True)]


NONE = 2**63 - 1


_VALUE = st.one_of(st.none(), st.binary(max_size=300))
_TAGVAL = st.one_of(st.none(), st.integers(0, 10**20).map(lambda n: str(n).encode()),
                    st.sampled_from([b"", b"-3", b" 7", b"+5", b"x", b"1_0", b"\xff"]),
                    st.binary(max_size=6))
_HEADER = st.one_of(st.tuples(st.sampled_from([NAME, "other", "mynapoint-fenc"]), _TAGVAL),
                    st.tuples(st.text(max_size=8), st.one_of(st.none(), st.binary(max_size=20))))
_MSG = st.tuples(st.one_of(st.none(), st.binary(max_size=40)), _VALUE,
                 st.lists(_HEADER, max_size=3))
_BATCH = st.tuples(st.lists(_MSG, min_size=1, max_size=12), st.sampled_from([0, 0, 1]),
                   st.integers(1, 3), st.integers(0, 5))


@settings(max_examples=300, deadline=None)
@given(st.lists(_BATCH, min_size=1, max_size=6), st.integers(0, 40), st.integers(0, 80),
       st.integers(0, 200))
def test_same_records_as_aiokafka(batches: list[Any], first: int, span: int,
                                  cut: int) -> None:
    """Plain and gzip batches, gaps between and inside batches, nulls, headers of every
    kind, a window of offsets, and a last batch cut short as a fetch answer may end."""
    parts = log(batches)
    whole = b"".join(parts)
    buf = whole[:max(len(whole) - cut, len(whole) - len(parts[-1]) + 1)] if cut else whole
    last = first + span
    cols, nxt = parse(buf, TP, NAME, first, last)
    assert flat(cols) == reference(buf, first, last)
    ends = [struct.unpack_from(">q", p)[0] + struct.unpack_from(">i", p, 23)[0] + 1
            for p in parts]
    complete = len(parts) if buf == whole else len(parts) - 1
    assert nxt == (ends[complete - 1] if complete else None)


def test_checksum_mismatch_is_refused() -> None:
    good = bytearray(batch(0, [(b"k", b"v", [])]))
    good[-1] ^= 1
    with pytest.raises(Errors.CorruptRecordException):
        parse(bytes(good), TP, NAME, 0, 10)


def test_older_message_format_is_refused() -> None:
    old = bytearray(batch(0, [(b"k", b"v", [])]))
    old[16] = 1
    with pytest.raises(Errors.UnsupportedVersionError):
        parse(bytes(old), TP, NAME, 0, 10)


def test_a_malformed_record_is_refused() -> None:
    bad = bytearray(batch(0, [(b"key", b"value", [])]))
    bad[57:61] = struct.pack(">i", 2)  # two records announced, one there
    bad[17:21] = struct.pack(">I", calc_crc32c(bytes(bad[21:])))
    with pytest.raises(Errors.CorruptRecordException):
        parse(bytes(bad), TP, NAME, 0, 10)


def test_a_record_count_beyond_the_batch_is_refused_unallocated() -> None:
    bad = bytearray(batch(0, [(b"key", b"value", [])]))
    bad[57:61] = struct.pack(">i", 2**31 - 1)
    bad[17:21] = struct.pack(">I", calc_crc32c(bytes(bad[21:])))
    with pytest.raises(Errors.CorruptRecordException, match="more records than fit"):
        parse(bytes(bad), TP, NAME, 0, 10)


@settings(max_examples=400, deadline=None)
@given(st.lists(_BATCH, min_size=1, max_size=3), st.data(), st.booleans())
def test_damaged_bytes_give_the_records_or_a_kafka_error(batches: list[Any], data: Any,
                                                         resum: bool) -> None:
    """Bytes changed anywhere (the checksum computed again or not, as a broken writer
    or a broken disk would leave them): the compiled pass never reads outside the
    buffer nor raises anything but a Kafka error, and what it returns is what
    aiokafka's own reader makes of the same bytes."""
    buf = bytearray(b"".join(log(batches)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(buf) - 1))
        buf[at] = data.draw(st.integers(0, 255))
    if resum and len(buf) >= BATCH_HEADER:
        size = struct.unpack_from(">i", buf, 8)[0] + 12
        if BATCH_HEADER <= size <= len(buf):
            struct.pack_into(">I", buf, 17, calc_crc32c(bytes(buf[21:size])))
    try:
        cols, _ = parse(bytes(buf), TP, NAME, 0, 1 << 40)
    except Errors.KafkaError:
        return
    try:
        expected = reference(bytes(buf), 0, 1 << 40)
    except Exception:  # aiokafka's reader refuses the damage its own way
        expected = None
    if expected is not None:
        assert flat(cols) == expected


def marker(base: int, producer: int, commit: bool) -> bytes:
    return batch(base, [(struct.pack(">hh", 0, int(commit)), b"\x00\x00\x00\x00\x00\x00", [])],
                 producer=producer, transactional=True, control=True)


def test_read_committed() -> None:
    """Producer 7's transaction is aborted, 8's committed, 9 writes without one: the
    aborted batches and both markers are skipped, as the consumer skips them."""
    log = [
        batch(0, [(b"a", b"1", [])], producer=7, transactional=True),
        batch(1, [(b"b", b"2", [])], producer=8, transactional=True),
        batch(2, [(b"c", b"3", [])], producer=9),
        batch(3, [(b"d", b"4", [])], producer=7, transactional=True),
        marker(4, 7, commit=False),
        marker(5, 8, commit=True),
        batch(6, [(b"e", b"5", [])], producer=7, transactional=True),  # a new transaction
    ]
    cols, nxt = parse(b"".join(log), TP, NAME, 0, 100, aborted=[(7, 0)])
    assert [(o, k) for o, k, *_ in flat(cols)] == [(1, b"b"), (2, b"c"), (6, b"e")]
    assert nxt == 7


def test_columns_index_the_buffer_without_copies() -> None:
    buf = batch(10, [(b"k%d" % i, b"v" * i, [(NAME, b"%d" % i)]) for i in range(5)])
    (cols,), _ = parse(buf, TP, NAME, 12, 13)
    assert cols.buf is buf
    assert cols.offset.tolist() == [12, 13]
    assert cols.tags() == [2, 3]
    assert np.all(cols.value_len == [2, 3])


# ---------------------------------------------------------------- on a real broker


async def _read_both(bootstrap: str, client_kwargs: dict[str, Any], tp: TopicPartition,
                     first: int, last: int, committed: bool = True
                     ) -> tuple[list[Any], list[Any]]:
    """``tp``'s records in [first, last] by PartitionReader (small fetches, so that an
    answer ends inside a batch) and by aiokafka's consumer, read_committed or not."""
    isolation = "read_committed" if committed else "read_uncommitted"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **client_kwargs,
                                enable_auto_commit=False, isolation_level=isolation)
    await consumer.start()
    try:
        ours = []
        reader = PartitionReader(consumer._client, max_bytes=700, committed=committed)
        async for cols, pos in reader.read(tp, first, last, NAME):
            ours += flat(cols)
            assert pos > first
        consumer.assign([tp])
        consumer.seek(tp, first)
        theirs: list[Any] = []
        while await consumer.position(tp) <= last:
            got = await consumer.getmany(tp, timeout_ms=1_000)
            theirs += [(m.offset, m.key, m.value, _tag(m.headers))
                       for m in got.get(tp, []) if m.offset <= last]
        return ours, theirs
    finally:
        await consumer.stop()


def test_reads_a_partition_as_the_consumer_does(kafka_broker: devbroker.Broker,
                                                topic_prefix: str) -> None:
    """Plain and gzip batches of several producers, headers, tombstones, an aborted and
    a committed transaction, read from the middle of a batch to an offset inside a
    later one."""
    topic = f"{topic_prefix}.fetch"

    async def fill() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap, **default_client())
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await admin.close()
        for codec in (None, "gzip"):
            p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **default_client(),
                                 compression_type=codec, linger_ms=50)
            await p.start()
            futs = [await p.send(topic, (b"v%d" % i) * (i % 7) if i % 5 else None,
                                 key=b"k%d" % i, partition=0,
                                 headers=[(NAME, b"%d" % i)] if i % 3 else [("x", b"y")])
                    for i in range(40)]
            await asyncio.gather(*futs)
            await p.stop()
        for commit in (False, True):
            t = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **default_client(),
                                 transactional_id=f"{topic_prefix}-tx")
            await t.start()
            await t.begin_transaction()
            await t.send_and_wait(topic, b"committed" if commit else b"aborted", key=b"t",
                                  partition=0)
            await (t.commit_transaction() if commit else t.abort_transaction())
            await t.stop()
        p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **default_client())
        await p.start()
        md = await p.send_and_wait(topic, b"last", key=b"z", partition=0)
        await p.stop()
        return int(md.offset)

    end = asyncio.run(fill())
    tp = TopicPartition(topic, 0)
    ours, theirs = asyncio.run(_read_both(kafka_broker.bootstrap, default_client(), tp, 7, end))
    assert ours == theirs
    values = [v for _, _, v, _ in ours]
    assert b"committed" in values and b"aborted" not in values
    assert None in values and {t for *_, t in ours} >= {None, 8, 38}
    ours, theirs = asyncio.run(_read_both(kafka_broker.bootstrap, default_client(), tp, 3, 50))
    assert ours == theirs and [o for o, *_ in ours] == list(range(3, 51))
    # read_uncommitted, as `admin locate` reads: the aborted transaction's record too
    ours, theirs = asyncio.run(_read_both(kafka_broker.bootstrap, default_client(), tp, 0, end,
                                          committed=False))
    assert ours == theirs and b"aborted" in [v for _, _, v, _ in ours]


def test_a_principal_without_read_is_refused(kafka_broker: devbroker.Broker,
                                             topic_prefix: str) -> None:
    """The fetch is the broker's to allow: finance may not read a changelog."""
    topics = Topics(topic_prefix, operators=("paypay",))
    asyncio.run(ensure_topics(kafka_broker.bootstrap, topics, 1))

    async def read() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap,
                                    **kafka_broker.client(security.FINANCE))
        await consumer.start()
        try:
            async for _ in PartitionReader(consumer._client).read(
                    TopicPartition(topics.changelog, 0), 0, 10, NAME):
                pass
        finally:
            await consumer.stop()

    with pytest.raises(Errors.TopicAuthorizationFailedError):
        asyncio.run(asyncio.wait_for(read(), 60))


def test_a_read_follows_its_partition_to_a_new_leader(own_cluster: devbroker.Cluster,
                                                      topic_prefix: str) -> None:
    """Three brokers: the leader of the partition being read is SIGKILLed after the
    first answer, while the next fetch is on its way to it. The read goes on from the
    new leader and returns every record once, in order."""
    topic = f"{topic_prefix}.moved"
    tp = TopicPartition(topic, 0)
    n = 3_000

    async def run() -> tuple[list[Any], int, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=own_cluster.bootstrap,
                                    **default_client())
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, 3)])
        await admin.close()
        p = AIOKafkaProducer(bootstrap_servers=own_cluster.bootstrap, **default_client(),
                             acks="all", max_batch_size=4_096)
        await p.start()
        await asyncio.gather(*[await p.send(topic, b"%06d" % i * 20, key=b"k%d" % i,
                                            partition=0) for i in range(n)])
        await p.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=own_cluster.bootstrap,
                                    **default_client())
        await consumer.start()
        try:
            reader = PartitionReader(consumer._client, max_bytes=16_384)
            got: list[Any] = []
            killed = answers = -1
            async for cols, _ in reader.read(tp, 0, n - 1, NAME):
                got += flat(cols)
                answers += 1
                if killed < 0:
                    killed = consumer._client.cluster.leader_for_partition(tp)
                    await asyncio.to_thread(own_cluster.kill, killed)
            return got, killed, answers
        finally:
            await consumer.stop()

    got, killed, answers = asyncio.run(asyncio.wait_for(run(), 180))
    assert killed >= 0 and answers > 1  # killed with most of the read still to come
    assert [o for o, *_ in got] == list(range(n))
    assert [v for _, _, v, _ in got] == [b"%06d" % i * 20 for i in range(n)]


def test_rows_keyed_compares_keys_in_the_buffer() -> None:
    """How `admin locate` finds a person: rows by key, a tombstone's value None."""
    buf = batch(0, [(b"Zz00aa50", b"a", []), (b"Zz00aa51", b"b", []), (None, b"c", []),
                    (b"Zz00aa50", None, []), (b"Zz00aa5", b"d", [])])
    (cols,), _ = parse(buf, TP, NAME, 0, 10)
    assert cols.rows_keyed(b"Zz00aa50").tolist() == [0, 3]
    assert [cols.value(i) for i in (0, 3)] == [b"a", None]
    assert cols.rows_keyed(b"nobody00").tolist() == []
