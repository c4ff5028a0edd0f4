"""Taking over a partition: is the engine's position trustworthy, the fence, restore.

A worker that is assigned partition ``p`` runs, outside the rebalance callback (so
heartbeats go on however long it takes):

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
   skipped.

A failed check raises :class:`Refused`: the partition is not decided, with a
one-line reason and a metric, until ``mynapoint admin rebuild-state``.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from engine.kafka.topics import FENCE_HEADER, Topics
from engine.streams.state import FENCE_KEY, Fence, ShardStore, encode

RESTORE_BATCH = 50_000


class Refused(Exception):
    """Partition ``p`` must not be decided; ``str()`` is the one-line reason."""


def message_crc(key: bytes | None, value: bytes | None) -> int:
    """A checksum identifying an input message (not its position).

    >>> message_crc(b"k", b"v") == message_crc(b"k", b"v") != message_crc(b"k", b"w")
    True
    """
    return zlib.crc32(value or b"", zlib.crc32(key or b""))


def commit_metadata(changelog_next: int) -> str:
    """Commit metadata for an input partition: the changelog position the state
    had when these offsets were committed."""
    return orjson.dumps({"cl": changelog_next}).decode()


def _parse_metadata(text: str | None) -> dict[str, int]:
    try:
        meta = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


async def check_changelog(admin: AIOKafkaAdminClient, topics: Topics, p: int,
                          changelog_end: int) -> None:
    """Raise :class:`Refused` when the group's committed offsets of partition ``p``
    were committed with more changelog than there now is."""
    tps = [TopicPartition(t, p) for t in topics.consumed]
    committed = await admin.list_consumer_group_offsets(topics.group_id, partitions=tps)
    need = max((_parse_metadata(om.metadata).get("cl", -1) for om in committed.values()
                if om is not None and om.offset >= 0), default=-1)
    if changelog_end < need:
        raise Refused(f"{topics.changelog}/{p} ends at offset {changelog_end} but the "
                      f"committed input positions need its first {need} records: the "
                      "state changelog was deleted or recreated")


async def check_inputs(reader: AIOKafkaConsumer, store: ShardStore, p: int) -> None:
    """Raise :class:`Refused` when an input partition no longer holds, where the
    restored state says it decided up to, the message it decided there."""
    seen = {TopicPartition(t, p): pos for t, pos in store.meta.inputs.items()}
    if not seen:
        return
    ends = await reader.end_offsets(list(seen))
    starts = await reader.beginning_offsets(list(seen))
    for tp, (nxt, crc) in seen.items():
        if ends[tp] < nxt:
            raise Refused(f"{tp.topic}/{p} ends at offset {ends[tp]} but the state has "
                          f"decided it up to offset {nxt}: the input topic was deleted or "
                          "recreated")
        if nxt - 1 < starts[tp]:
            continue  # that message is past retention: nothing left to compare
        reader.assign([tp])
        reader.seek(tp, nxt - 1)
        got = await reader.getmany(tp, timeout_ms=5_000, max_records=1)
        msgs = [m for m in got.get(tp, []) if m.offset == nxt - 1]
        if msgs and message_crc(msgs[0].key, msgs[0].value) != crc:
            raise Refused(f"{tp.topic}/{p} offset {nxt - 1} holds another message than the "
                          "one the state decided there: the input topic was recreated")


async def write_fence(producer: AIOKafkaProducer, topics: Topics, p: int,
                      reset: bool = False) -> int:
    md = await producer.send_and_wait(topics.changelog, encode(Fence(reset=reset)),
                                      key=FENCE_KEY, partition=p)
    return int(md.offset)


def fence_tag(offset: int) -> list[tuple[str, bytes]]:
    return [(FENCE_HEADER, str(offset).encode())]


def _tag(headers: Any) -> int | None:
    for k, v in headers or ():
        if k == FENCE_HEADER:
            try:
                return int(v)
            except ValueError:
                return None
    return None


async def restore(reader: AIOKafkaConsumer, topics: Topics, store: ShardStore, p: int,
                  until: int, progress: Any = None) -> tuple[int, int]:
    """Apply changelog partition ``p`` from the local checkpoint up to offset
    ``until`` (inclusive); return (records read, records ignored as fenced off).
    ``progress(p, remaining)`` is called after every chunk."""
    tp = TopicPartition(topics.changelog, p)
    reader.assign([tp])
    start = store.meta.changelog_offset + 1
    read = ignored = 0
    if start > until:
        return 0, 0
    reader.seek(tp, start)
    pos = start
    while pos <= until:
        got = await reader.getmany(tp, timeout_ms=1_000, max_records=RESTORE_BATCH)
        recs = [(m.key, m.value, m.offset, _tag(m.headers))
                for m in got.get(tp, []) if m.offset <= until]
        if recs:
            ignored += store.restore(recs)
            read += len(recs)
            pos = recs[-1][2] + 1
        else:
            # compaction can leave gaps: the position moves past removed offsets
            pos = max(pos, await reader.position(tp))
        if progress is not None:
            progress(p, max(until - pos + 1, 0))
    return read, ignored
