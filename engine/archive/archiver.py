"""``mynapoint archive``: every input message, redacted, into the archive, once.

The archiver reads the public input topics by itself (assigned partitions, no
consumer group: its position is the archive's manifest). Per partition it
collects messages, decides which records the stream rejects
``PERSONAL_NUMBER_FORBIDDEN`` with the stream's own decoder, redacts, and writes
a closed file (:mod:`engine.archive.store`). Without ``--follow`` it stops once
it has reached the end offsets the inputs had when it started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from engine.archive.redact import flags_for, format_of, index_of, redact_message
from engine.archive.store import ARCHIVE_SCHEMA, Archive, ArchiveError, Entry
from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka.client_config import default_client
from engine.kafka.topics import MAX_RECORD_BYTES, Topics, discover
from engine.streams.decode import decode_messages

FLUSH_ROWS = 20_000
FLUSH_IDLE_S = 5.0
FORMAT_NAMES = {None: "record", b"jsonl": "jsonl", b"arrow-ipc": "arrow-ipc"}


class _Crash:
    """``MYNAPOINT_CRASH_AT=archive-tmp:<n>|archive-file:<n>``: SIGKILL this process
    at the n-th file, after its temporary file is written / after it is renamed
    but before the manifest lists it (the tests' proof of exactly-once)."""

    def __init__(self) -> None:
        stage, _, n = os.environ.get("MYNAPOINT_CRASH_AT", "").partition(":")
        self.stage, self.n = stage, int(n or 0)
        self.seen = 0

    def __call__(self, stage: str) -> None:
        if stage != self.stage:
            return
        self.seen += 1
        if self.seen == self.n:
            sys.stderr.write(f"crash injected at {stage}:{self.n}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def archive_rows(msgs: Sequence[Any], record_type: str) -> pa.Table:
    """The archive rows of one partition's consecutive messages."""
    verdicts: dict[int, dict[int, tuple[int, str]]] = {}
    batch = decode_messages(msgs, record_type, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY,
                            MAX_RECORD_BYTES)
    reasons = batch.v.reason.tolist()
    details = batch.v.detail.tolist()
    for src, r, d in zip(batch.source, reasons, details, strict=True):
        if r:
            off, i = index_of(src)
            verdicts.setdefault(off, {})[i] = (r, d)
    cols: dict[str, list[Any]] = {f.name: [] for f in ARCHIVE_SCHEMA}
    for m in msgs:
        headers = [(k, bytes(v) if v is not None else b"") for k, v in (m.headers or ())]
        red = redact_message(m.key, headers, m.value)
        fmt = format_of(red.headers)
        cols["topic"].append(m.topic)
        cols["partition"].append(m.partition)
        cols["offset"].append(m.offset)
        cols["timestamp"].append(m.timestamp if m.timestamp is not None and m.timestamp >= 0
                                 else None)
        cols["key"].append(red.key)
        cols["headers"].append([{"key": k, "value": v} for k, v in red.headers])
        cols["format"].append(FORMAT_NAMES.get(fmt) or (fmt or b"").decode("utf-8", "replace"))
        cols["value"].append(red.value)
        cols["redacted"].append(red.changed)
        cols["flags"].append([{"index": i, "reason": r, "detail": d}
                              for i, r, d in flags_for(red, verdicts.get(m.offset, {}))])
    return pa.Table.from_pydict(cols, schema=ARCHIVE_SCHEMA)


async def archive(bootstrap: str, topics: Topics, out: str, follow: bool = False,
                  stop: asyncio.Event | None = None, flush_rows: int = FLUSH_ROWS,
                  idle_flush: float = FLUSH_IDLE_S, client: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Archive the input topics into ``out``; return counts. ``client``: aiokafka
    security settings (engine.kafka.client_config)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    store = Archive.open(out, must_exist=False)
    cleaned = store.remove_unlisted()
    crash = _Crash()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=8 << 20, **(client or default_client()))
    await consumer.start()
    counts = {"messages": 0, "files": 0, "redacted": 0, "flagged": 0,
              "removed_unlisted": len(cleaned), "deleted_before_archived": 0}
    try:
        tps: list[Any] = []
        rtype: dict[str, str] = {}
        counts_of: dict[str, int] = {}
        topics = await discover(bootstrap, topics, **(client or default_client()))
        for topic in topics.inputs:
            rt = topics.record_type(topic)
            parts = None
            for _ in range(50):
                parts = consumer.partitions_for_topic(topic)
                if parts:
                    break
                await consumer._client.force_metadata_update()  # a just-created topic
                await asyncio.sleep(0.1)
            if not parts:
                raise ArchiveError(f"input topic {topic} does not exist on {bootstrap}")
            rtype[topic] = rt
            counts_of[topic] = len(parts)  # a replay into fresh topics needs the same
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        seek_start: dict[Any, int] = {}
        for tp in tps:
            nxt = store.next_offset(tp.topic, tp.partition)
            start = 0 if nxt is None else nxt
            if begins[tp] > start:
                # retention removed these before they were archived: say so in the
                # manifest, so an audit sees the hole as known, not as a loss
                store.add(Entry(tp.topic, rtype[tp.topic], tp.partition, start, begins[tp], 0,
                                partitions=counts_of[tp.topic]))
                counts["deleted_before_archived"] += begins[tp] - start
                start = begins[tp]
            consumer.seek(tp, start)
            seek_start[tp] = start
        ends = await consumer.end_offsets(tps) if not follow else {}
        buf: dict[Any, list[Any]] = {tp: [] for tp in tps}
        last_flush = {tp: time.monotonic() for tp in tps}

        def flush(tp: Any) -> None:
            msgs = buf[tp]
            if not msgs:
                return
            table = archive_rows(msgs, rtype[tp.topic])
            start = store.next_offset(tp.topic, tp.partition)
            entry = Entry(tp.topic, rtype[tp.topic], tp.partition,
                          seek_start[tp] if start is None else start, msgs[-1].offset + 1,
                          len(msgs), first=msgs[0].offset, last=msgs[-1].offset,
                          partitions=counts_of[tp.topic])
            store.write_file(table, entry, crash)
            counts["messages"] += len(msgs)
            counts["files"] += 1
            counts["redacted"] += sum(table.column("redacted").to_pylist())
            counts["flagged"] += sum(len(f) for f in table.column("flags").to_pylist())
            buf[tp] = []
            last_flush[tp] = time.monotonic()

        while True:
            if stop is not None and stop.is_set():
                break
            got = await consumer.getmany(timeout_ms=200, max_records=5_000)
            for tp, msgs in got.items():
                buf[tp].extend(msgs)
                if len(buf[tp]) >= flush_rows:
                    flush(tp)
            now = time.monotonic()
            done = True
            for tp in tps:
                pos = await consumer.position(tp)
                if follow:
                    if buf[tp] and now - last_flush[tp] >= idle_flush:
                        flush(tp)
                elif pos >= ends[tp]:
                    flush(tp)
                else:
                    done = False
            if not follow and done:
                break
        for tp in tps:
            flush(tp)
    finally:
        await consumer.stop()
    return counts


def main(args: argparse.Namespace) -> int:
    from engine.kafka.client_config import ClientConfigError, load_client_config

    if args.verify:
        try:
            problems = Archive.open(args.out).verify()
        except ArchiveError as e:
            print(f"mynapoint archive: {e}", file=sys.stderr)
            return 2
        for p in problems[:50]:
            print(p)
        verdict = f"{len(problems)} problems" if problems else "verified, no problem"
        print(f"{args.out}: {verdict}")
        return 0 if not problems else 1
    topics = Topics(args.topic_prefix)

    async def run() -> dict[str, Any]:
        client = load_client_config(args.client_config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await archive(args.broker, topics, args.out, follow=args.follow, stop=stop,
                             flush_rows=max(1, args.file_rows), client=client)

    from aiokafka.errors import KafkaError

    try:
        counts = asyncio.run(run())
    except KafkaError as e:
        print(f"mynapoint archive: cannot read from the Kafka broker at {args.broker} "
              f"({type(e).__name__})", file=sys.stderr)
        return 2
    except (ArchiveError, ClientConfigError) as e:
        print(f"mynapoint archive: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"mynapoint archive: cannot write to {args.out}: {e.strerror}", file=sys.stderr)
        return 2
    print(f"archived {counts['messages']:,} messages in {counts['files']} files "
          f"({counts['redacted']:,} redacted, {counts['flagged']:,} records flagged) "
          f"to {args.out}")
    if counts["deleted_before_archived"]:
        print(f"warning: {counts['deleted_before_archived']:,} messages were deleted by "
              "retention before they could be archived (listed in the manifest)",
              file=sys.stderr)
    return 0
