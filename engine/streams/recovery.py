"""Taking over a partition: is the engine's position trustworthy, the fence, restore.

A worker that is assigned partition ``p`` runs, outside the rebalance callback (so
heartbeats go on however long it takes):

1. :func:`check_positions` — the committed input offsets of ``p`` carry, as commit
   metadata, the changelog position they were committed with and a checksum of
   the last input message decided. If the changelog now ends before that
   position (deleted or recreated), or an input partition ends before its
   committed offset or holds a different message there (topic recreated), the
   state and the input no longer belong together: deciding on would grant from
   forgotten state or skip new records silently. The partition is refused with
   a one-line reason (:class:`Refused`) until ``mynapoint admin rebuild-state``.
2. :func:`write_fence` — a fence record on changelog partition ``p``. Every
   state record a worker writes carries the offset of its own fence
   (``FENCE_HEADER``); on restore a record tagged with an older fence than the
   newest one read is a zombie's (a worker that stalled past its session and
   lost ``p`` but went on writing) and is ignored.
3. :func:`restore` — the changelog from the local checkpoint's offset up to and
   including the fence: only the tail when this machine held ``p`` before.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from engine.streams.state import FENCE_KEY, Fence, ShardStore, encode
from engine.streams.topics import FENCE_HEADER, Topics

RESTORE_BATCH = 50_000


class Refused(Exception):
    """Partition ``p`` must not be decided; ``str()`` is the one-line reason."""


def message_crc(key: bytes | None, value: bytes | None) -> int:
    """A checksum identifying an input message (not its position).

    >>> message_crc(b"k", b"v") == message_crc(b"k", b"v") != message_crc(b"k", b"w")
    True
    """
    return zlib.crc32(value or b"", zlib.crc32(key or b""))


def commit_metadata(changelog_next: int, last: Any | None) -> str:
    """Commit metadata for an input partition: the changelog position the state
    had when these offsets were committed, and the last decided message's crc."""
    meta: dict[str, int] = {"cl": changelog_next}
    if last is not None:
        meta["h"] = message_crc(last.key, last.value)
    return orjson.dumps(meta).decode()


def _parse_metadata(text: str | None) -> dict[str, int]:
    try:
        meta = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


async def check_positions(admin: AIOKafkaAdminClient, reader: AIOKafkaConsumer, topics: Topics,
                          p: int, changelog_end: int) -> None:
    """Raise :class:`Refused` when the committed positions of partition ``p`` do
    not match the changelog and input partitions as they are now."""
    tps = [TopicPartition(t, p) for t in topics.consumed]
    committed = await admin.list_consumer_group_offsets(topics.group_id, partitions=tps)
    mine = {tp: om for tp, om in committed.items() if om is not None and om.offset >= 0}
    if not mine:
        return  # never committed: a first start, nothing to contradict
    ends = await reader.end_offsets(list(mine))
    starts = await reader.beginning_offsets(list(mine))
    need_cl = -1
    for tp, om in mine.items():
        meta = _parse_metadata(om.metadata)
        need_cl = max(need_cl, meta.get("cl", -1))
        if ends[tp] < om.offset:
            raise Refused(f"{tp.topic}/{p} ends at offset {ends[tp]} but the engine already "
                          f"decided up to {om.offset}: the input topic was deleted or "
                          "recreated")
        if "h" in meta and om.offset - 1 >= starts[tp]:
            reader.assign([tp])
            reader.seek(tp, om.offset - 1)
            got = await reader.getmany(tp, timeout_ms=5_000, max_records=1)
            msgs = got.get(tp, [])
            if msgs and msgs[0].offset == om.offset - 1 and \
                    message_crc(msgs[0].key, msgs[0].value) != meta["h"]:
                raise Refused(f"{tp.topic}/{p} offset {om.offset - 1} holds another message "
                              "than the one the engine decided: the input topic was "
                              "recreated")
    if changelog_end < need_cl:
        raise Refused(f"{topics.changelog}/{p} ends at offset {changelog_end} but the "
                      f"committed input positions need its first {need_cl} records: the "
                      "state changelog was deleted or recreated")


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
