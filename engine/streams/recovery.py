"""Taking over a partition: is the engine's position trustworthy, the fence, restore.

A worker that is assigned partition ``p`` runs :func:`take_over`, outside the
rebalance callback (so heartbeats go on however long it takes):

1. :func:`check_changelog` — the committed input offsets of ``p`` carry, as
   commit metadata, the changelog position they were committed with. If the
   changelog now ends before it (deleted or recreated while the offsets
   survived), deciding on would grant again from forgotten state.
2. :func:`write_fence` — a fence record on changelog partition ``p``. Every
   state record a worker writes carries the offset of its own fence
   (``FENCE_HEADER``); on restore a record tagged with an older fence than the
   newest one read is a zombie's (a worker that stalled past its session and
   lost ``p`` but went on writing) and is ignored.
3. :func:`restore` — the changelog from the local checkpoint's offset up to and
   including the fence: only the tail when this machine held ``p`` before.
4. :func:`check_inputs` — the restored state records, per consumed topic, the
   next offset it decided and a checksum of the last message. If an input
   partition now ends before that offset or holds another message there, the
   topic was recreated (Kafka then also forgets the group's offsets for it):
   its new records would fall below the people's high-water marks and be
   skipped. If it now *starts* after that offset, time-based retention deleted
   records nobody decided (the workers were down longer than the inputs'
   retention): input lost to the stream, which must not pass unnoticed.

A failed check raises :class:`Refused`: the partition is not decided, with a
one-line reason and a metric, until an operator acts (``Refused.remedy``:
``mynapoint admin rebuild-state``, or ``admin accept-loss`` for deleted input).
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import OffsetOutOfRangeError

from engine.kafka.fetch import PartitionReader
from engine.kafka.produce import BATCH_BYTES, offsets_taken, send_built
from engine.kafka.record_batch import record_batches
from engine.kafka.topics import CHANGELOG_MAX_BYTES, FENCE_HEADER, Topics
from engine.streams.state import (
    FENCE_KEY,
    META_KEY,
    UNTAGGED,
    ChangelogColumns,
    ChangelogRecord,
    Fence,
    ShardStore,
    encode,
)


class Refused(Exception):
    """Partition ``p`` must not be decided; ``str()`` is the one-line reason and
    ``remedy`` the operator's command that ends the refusal."""

    def __init__(self, reason: str, remedy: str = "mynapoint admin rebuild-state") -> None:
        super().__init__(reason)
        self.remedy = remedy


def message_crc(key: bytes | None, value: bytes | None) -> int:
    """A checksum identifying an input message (not its position).

    >>> message_crc(b"k", b"v") == message_crc(b"k", b"v") != message_crc(b"k", b"w")
    True
    """
    return zlib.crc32(value or b"", zlib.crc32(key or b""))


def commit_metadata(changelog_next: int, lost: tuple[int, int] | None = None) -> str:
    """Commit metadata for an input partition: the changelog position the state
    had when these offsets were committed, and, written by ``admin accept-loss``
    only, the offsets ``[from, to)`` an operator accepted as deleted unread.

    >>> commit_metadata(7), commit_metadata(7, (3, 9))
    ('{"cl":7}', '{"cl":7,"lost":[3,9]}')
    """
    meta: dict[str, object] = {"cl": changelog_next}
    if lost is not None:
        meta["lost"] = list(lost)
    return orjson.dumps(meta).decode()


def _parse_metadata(text: str | None) -> dict[str, int]:
    try:
        meta = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


def changelog_need(committed: Any) -> int:
    """The changelog position one committed offset was committed with (-1: none)."""
    if committed is None or committed.offset < 0:
        return -1
    cl = _parse_metadata(committed.metadata).get("cl", -1)
    return cl if type(cl) is int else -1


def accepted_loss(committed: Any) -> tuple[int, int] | None:
    """The ``[from, to)`` offsets an operator accepted as lost (``admin accept-loss``)
    in one committed offset's metadata, if any."""
    if committed is None:
        return None
    lost = _parse_metadata(committed.metadata).get("lost")
    if (isinstance(lost, list) and len(lost) == 2
            and all(type(x) is int for x in lost)):
        return lost[0], lost[1]
    return None


async def check_changelog(admin: AIOKafkaAdminClient, topics: Topics, p: int,
                          changelog_end: int) -> dict[TopicPartition, Any]:
    """Raise :class:`Refused` when the group's committed offsets of partition ``p``
    were committed with more changelog than there now is; return those offsets."""
    tps = [TopicPartition(t, p) for t in topics.consumed]
    committed = await admin.list_consumer_group_offsets(topics.group_id, partitions=tps)
    need = max((changelog_need(om) for om in committed.values()), default=-1)
    if changelog_end < need:
        raise Refused(f"{topics.changelog}/{p} ends at offset {changelog_end} but the "
                      f"committed input positions need its first {need} records: the "
                      "state changelog was deleted or recreated")
    return dict(committed)


async def check_inputs(reader: AIOKafkaConsumer, store: ShardStore, p: int,
                       committed: dict[TopicPartition, Any] | None = None) -> None:
    """Raise :class:`Refused` when an input partition no longer holds, where the
    restored state says it decided up to, the message it decided there, or no
    longer holds the records after it (deleted by retention before any worker
    read them) unless an operator accepted that loss (``committed``: the group's
    offsets with their metadata, see :func:`accepted_loss`)."""
    seen = {TopicPartition(t, p): pos for t, pos in store.meta.inputs.items()}
    if not seen:
        return
    # assigned first, so that the client asks the metadata of every input topic in one
    # round: asked for offsets of topics it does not track, aiokafka learns them one
    # topic per retry (~0.5 s each; seconds per take-over with a dozen inputs)
    reader.assign(list(seen))
    ends = await reader.end_offsets(list(seen))
    starts = await reader.beginning_offsets(list(seen))
    want: dict[TopicPartition, tuple[int, int]] = {}  # offset decided last, its crc
    for tp, (nxt, crc) in seen.items():
        if ends[tp] < nxt:
            raise Refused(f"{tp.topic}/{p} ends at offset {ends[tp]} but the state has "
                          f"decided it up to offset {nxt}: the input topic was deleted or "
                          "recreated")
        if nxt < starts[tp]:
            lost = accepted_loss((committed or {}).get(tp))
            if lost is not None and lost[0] <= nxt and lost[1] >= starts[tp]:
                # an operator accepted exactly this (or a wider) loss: the state goes on
                # from the first kept record (the next batch's gap check agrees)
                store.meta.inputs[tp.topic] = [starts[tp], 0]
                continue
            raise retention_loss(tp, nxt, starts[tp])
        if nxt == starts[tp]:
            continue  # the message decided last is past retention: nothing to compare
        want[tp] = (nxt - 1, crc)
    if not want:
        return
    # every input at once: one fetch round instead of one (with its wait) per input
    reader.assign(list(want))
    for tp, (offset, _) in want.items():
        reader.seek(tp, offset)
    found: dict[TopicPartition, Any] = {}
    deadline = asyncio.get_running_loop().time() + 5.0
    while len(found) < len(want) and asyncio.get_running_loop().time() < deadline:
        left = [tp for tp in want if tp not in found]
        got = await reader.getmany(*left, timeout_ms=1_000, max_records=10 * len(left))
        for tp, msgs in got.items():
            for m in msgs:
                if m.offset == want[tp][0]:
                    found[tp] = m
            if tp not in found and msgs:
                found[tp] = None  # read past it: the message is gone
    for tp, (offset, crc) in want.items():
        m = found.get(tp)
        if m is None:
            # deleted since beginning_offsets (or a slow fetch): not a pass; the
            # take-over is retried and looks again
            raise RuntimeError(f"could not read {tp.topic}/{p} offset {offset}")
        if message_crc(m.key, m.value) != crc:
            raise Refused(f"{tp.topic}/{p} offset {offset} holds another message than the "
                          "one the state decided there: the input topic was recreated")


def retention_loss(tp: TopicPartition, nxt: int, start: int) -> Refused:
    """The refusal for input ``[nxt, start)`` of ``tp`` deleted before it was decided."""
    return Refused(f"{tp.topic}/{tp.partition} offsets {nxt} to {start - 1} "
                   f"({start - nxt} records) were deleted by retention before the engine "
                   "decided them: input lost to the stream (the archive may hold it)",
                   remedy="mynapoint admin accept-loss")


async def deleted_unread(consumer: AIOKafkaConsumer, store: ShardStore,
                         first: dict[TopicPartition, int]) -> Refused | None:
    """The running counterpart of :func:`check_inputs`' retention check: ``first`` is
    the first offset of each input in a batch. Where it lies past the state's next
    offset (a gap), either the gap holds nothing (transaction markers) or retention
    deleted records the engine had not read, and the consumer, told the offset is out
    of range, went on from the new log start. One log-start request per batch with
    gaps; the refusal is the take-over's, so a restart refuses alike."""
    gaps = {tp: store.meta.inputs[tp.topic][0] for tp, offset in first.items()
            if tp.topic in store.meta.inputs and offset > store.meta.inputs[tp.topic][0]}
    if not gaps:
        return None
    starts = await consumer.beginning_offsets(list(gaps))
    for tp, nxt in gaps.items():
        if starts[tp] > nxt:
            return retention_loss(tp, nxt, starts[tp])
    return None


async def write_fence(producer: AIOKafkaProducer, topics: Topics, p: int,
                      reset: bool = False) -> int:
    md = await producer.send_and_wait(topics.changelog, encode(Fence(reset=reset)),
                                      key=FENCE_KEY, partition=p)
    return int(md.offset)


def fence_tag(offset: int) -> list[tuple[str, bytes]]:
    return [(FENCE_HEADER, str(offset).encode())]


async def changelog_chunks(reader: AIOKafkaConsumer, topics: Topics, p: int, first: int,
                           last: int) -> AsyncIterator[tuple[list[ChangelogColumns], int]]:
    """Changelog partition ``p``'s records from ``first`` to ``last`` (inclusive), a
    fetch at a time, each with the offset the next one starts at. Read by fetches of
    the engine's own over the reader's connections (engine.kafka.fetch: no record
    object per person; aiokafka's consumer has no public handle on its client), each
    record's fence tag taken from its ``FENCE_HEADER``."""
    tp = TopicPartition(topics.changelog, p)
    fetcher = PartitionReader(reader._client, max_bytes=2 * CHANGELOG_MAX_BYTES)
    # closed on the way out, also when the caller stops early: its fetch ahead ends
    async with contextlib.aclosing(fetcher.read(tp, first, last, FENCE_HEADER)) as answers:
        async for cols, pos in answers:
            # a compacted topic refuses keyless records: every key is bytes
            yield [ChangelogColumns(np.frombuffer(c.buf, np.uint8), c.key_at, c.key_len,
                                    c.value_at, c.value_len, c.offset,
                                    c.tag_numbers(UNTAGGED)) for c in cols if len(c.offset)], pos


async def _on_thread(fn: Callable[[ChangelogColumns], int], part: ChangelogColumns) -> int:
    """``fn(part)`` on a thread, so that the loop receives the next fetch meanwhile (the
    table's puts release the GIL). A cancelled caller still waits for it: the store
    must not be let go (closed, flushed) while the thread writes into it."""
    done = asyncio.get_running_loop().run_in_executor(None, fn, part)
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        await asyncio.wait([done])
        raise


async def restore(reader: AIOKafkaConsumer, topics: Topics, store: ShardStore, p: int,
                  until: int, progress: Any = None) -> tuple[int, int]:
    """Apply changelog partition ``p`` from the local checkpoint up to offset
    ``until`` (inclusive); return (records read, records ignored as fenced off).
    ``progress(p, remaining)`` is called after every chunk. Raises :class:`Refused`
    when the changelog no longer starts where the restore must begin (records
    deleted: compaction never moves a partition's start, a deletion or a ``delete``
    cleanup policy does): the people of those records would be restored as new."""
    read = ignored = 0
    first = store.meta.changelog_offset + 1
    try:
        async for parts, pos in changelog_chunks(reader, topics, p, first, until):
            for part in parts:
                if not read and len(part.offsets):
                    # room for the whole partition at the first fetch's bytes a record,
                    # taken once: the arena is not copied again at every doubling
                    store.data.reserve(until - first + 1, part.bytes_per_record())
                ignored += await _on_thread(store.restore_columns, part)
                read += len(part.offsets)
            if progress is not None:
                progress(p, max(until - pos + 1, 0))
    except OffsetOutOfRangeError:
        tp = TopicPartition(topics.changelog, p)
        start = (await reader.beginning_offsets([tp]))[tp]
        if start <= store.meta.changelog_offset + 1:
            raise  # not a deletion: the take-over is tried again
        raise Refused(f"{topics.changelog}/{p} starts at offset {start} but the restore "
                      f"needs it from offset {store.meta.changelog_offset + 1}: state "
                      "changelog records were deleted") from None
    return read, ignored


async def take_over(reader: AIOKafkaConsumer, admin: AIOKafkaAdminClient,
                    producer: AIOKafkaProducer, topics: Topics, store: ShardStore, p: int,
                    progress: Any = None,
                    restored: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Steps 1–4 of the module's docstring for partition ``p`` into ``store``; returns
    (changelog records read, records of a fenced-off writer ignored), also given to
    ``restored`` as soon as the changelog is read: a take-over cancelled during the
    input checks (another rebalance) has still applied, and ignored, what it read.
    Raises :class:`Refused` when a check fails."""
    tp = TopicPartition(topics.changelog, p)
    end = (await reader.end_offsets([tp]))[tp]
    committed = await check_changelog(admin, topics, p, end)
    if store.meta.changelog_offset >= end:
        # a local copy ahead of the changelog belongs to another history
        store.reset()
    fence = await write_fence(producer, topics, p)
    read, ignored = await restore(reader, topics, store, p, fence, progress)
    if restored is not None:
        restored(read, ignored)
    await check_inputs(reader, store, p, committed)
    return read, ignored


# ---------------------------------------------------------------- while it owns p
#
# A zombie resumed between its outcomes and its state write (a worker frozen past its
# session) writes its people's values after the owner's fence. A restore ignores them;
# but the changelog is compacted, which keeps only the newest record of a key, so a
# zombie's record newer than the owner's own record of that person would leave a
# restore from scratch nothing it may use: the person's state lost there. The owner
# therefore watches its changelog partition for records it did not write (between its
# own writes: each write's base offset is acknowledged; after its last one: the end
# offset) and writes the people they name again, so that its record is the newest.


def gaps_between(expected: int, written: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Offset ranges (first, last) that are not ``written`` (each a range of one's own
    records, in order) from ``expected`` on: records someone else wrote in between."""
    gaps = []
    for first, last in written:
        if first > expected:
            gaps.append((expected, first - 1))
        expected = max(expected, last + 1)
    return gaps


async def read_range(reader: AIOKafkaConsumer, topics: Topics, p: int, first: int,
                     last: int) -> list[ChangelogRecord]:
    """Changelog partition ``p``'s records from ``first`` to ``last`` (inclusive, at
    most to its end; compaction may have removed some)."""
    tp = TopicPartition(topics.changelog, p)
    last = min(last, (await reader.end_offsets([tp]))[tp] - 1)
    return [r async for parts, _ in changelog_chunks(reader, topics, p, first, last)
            for part in parts for r in part.records()]


async def write_again(reader: AIOKafkaConsumer, producer: AIOKafkaProducer, topics: Topics,
                      store: ShardStore, p: int,
                      gaps: list[tuple[int, int]]) -> tuple[int, list[tuple[int, int]]]:
    """Write again, under this owner's fence, the state of every key named by a record
    of another writer in ``gaps`` of changelog partition ``p``, or by one a restore
    ignored (``store.fenced_off``); returns (how many keys, the gaps found around this
    write itself). A fence among those records means another worker took ``p`` over
    (this one is the zombie then, and its commit fails): nothing is written."""
    found: list[ChangelogRecord] = []
    for first, last in gaps:
        found += await read_range(reader, topics, p, first, last)
    fence = store.meta.fence
    if any(k == FENCE_KEY for k, *_ in found):
        return 0, []
    # with the keys a restore saw a fenced-off writer's record of (a zombie of an
    # earlier owner, whose own watch may not have come before it stopped)
    taken = set(store.fenced_off)
    foreign = {k.decode() for k, _, _, tag in found if tag != fence} | taken
    # Values not applied yet go to the changelog at the next commit anyway, the meta
    # with them; the others are written now, as applied. A key held here with no
    # value gets a tombstone: a later take-over's fence, the newest one kept by
    # compaction, would otherwise let a restore from scratch apply the other
    # writer's record, the newest of that key then (DECISIONS 140).
    keys = sorted(k for k in foreign if k not in store.pending)
    values = [encode(store.meta) if k == META_KEY else store.value(k) for k in keys]
    end = max((last for _, last in gaps), default=store.meta.changelog_offset)
    if keys:
        batches = record_batches(pa.array([k.encode() for k in keys], pa.large_binary()),
                                 pa.array(values, pa.large_binary()), None, BATCH_BYTES,
                                 fence_tag(fence))
        written = await offsets_taken(await send_built(producer, topics.changelog, p,
                                                       batches))
        around = gaps_between(end + 1, written)
        end = written[-1][1]
    else:
        around = []
    # the local copy is what the changelog holds up to here, less the other writer's
    store.meta.changelog_offset = max(store.meta.changelog_offset, end)
    store.written_again(taken)
    return len(foreign), around
