"""``mynapoint collect``: read the output topics into ``grants.parquet``,
``rejections.parquet`` and ``summary.json``, the same files offline ``settle`` writes.

The consumer has no group: it assigns every partition of the grants and
rejections topics, reads them from the beginning with ``read_committed`` (so
outputs of aborted worker transactions are never counted) and stops once it has
``expect`` distinct outcomes and has reached the end offsets, or when nothing new
arrived for ``idle_timeout`` seconds.

Delivery may repeat an outcome (a worker restart, a replay). Copies are removed
by their identity: grants by ``grant_id``, rejections by ``source``; the first
copy is kept. Two copies of one identity with different content would mean the
engine decided one input twice, differently: they are counted as conflicts and
``main`` exits 3. Messages that do not decode are counted and reported, never
fatal. Exit codes of ``main``: 0 done, 1 fewer than ``--expect`` outcomes before
the idle timeout, 2 broker, topic or configuration error, 3 conflicting copies.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA, TIMESTAMP
from engine.streams.codec_out import (
    GRANT_FIELDS,
    REJECTION_FIELDS,
    OutputDecodeError,
    grant_from_json,
    rejection_from_json,
)
from engine.streams.topics import Topics

CONNECT_TIMEOUT = 30.0
_MAX_EXAMPLES = 5
_SOURCE = re.compile(r"(.+)/(\d+)/(\d+)(?:#(\d+))?")


class CollectError(RuntimeError):
    """The broker or the output topics are unusable. ``str()`` says which."""


def source_order(source: str) -> tuple[Any, ...]:
    """Sort key: (topic, partition, offset, index) of a Kafka ``source``; a
    source of another form (a file line) sorts after all of them, by text.

    >>> source_order("a.t/2/10#3") < source_order("a.t/10/0") < source_order("f.jsonl:1")
    True
    """
    m = _SOURCE.fullmatch(source)
    if m is None:
        return (1, source, 0, 0, 0)
    idx = m.group(4)
    return (0, m.group(1), int(m.group(2)), int(m.group(3)), -1 if idx is None else int(idx))


class _Outcomes:
    """The distinct outcomes of one topic, keyed by their identity."""

    def __init__(self, kind: str, decode: Any, key: str) -> None:
        self.kind, self.decode, self.key = kind, decode, key
        self.rows: dict[str, dict[str, Any]] = {}
        self.copies = 0
        self.conflicts = 0
        self.undecodable = 0
        self.examples: list[str] = []

    def add(self, msg: Any) -> bool:
        where = f"{msg.topic}/{msg.partition}/{msg.offset}"
        try:
            row = self.decode(msg.value if msg.value is not None else b"")
        except OutputDecodeError as e:
            self.undecodable += 1
            if len(self.examples) < _MAX_EXAMPLES:
                self.examples.append(f"undecodable {self.kind} at {where}: {e}")
            return False
        ident = row[self.key]
        first = self.rows.get(ident)
        if first is None:
            self.rows[ident] = row
            return True
        self.copies += 1
        if first != row:
            self.conflicts += 1
            if len(self.examples) < _MAX_EXAMPLES:
                diff = sorted(k for k in row if row[k] != first[k])
                self.examples.append(f"conflicting copy of {self.kind} {self.key}={ident!r} "
                                     f"at {where}: fields {diff} differ from the first copy")
        return False

    def table(self) -> pa.Table:
        rows = sorted(self.rows.values(), key=lambda r: source_order(r["source"]))
        schema = GRANT_SCHEMA if self.kind == "grant" else REJECTION_SCHEMA
        fields = GRANT_FIELDS if self.kind == "grant" else REJECTION_FIELDS
        cols: dict[str, pa.Array] = {}
        for f in fields:
            values = [r[f] for r in rows]
            if f == "occurred_at":
                cols[f] = pa.array(values, type=pa.int64()).cast(TIMESTAMP)
            else:
                cols[f] = pa.array(values, type=schema.field(f).type)
        return pa.table(cols, schema=schema)


async def collect(bootstrap: str, topics: Topics, expect: int = 0, idle_timeout: float = 10.0,
                  stats: dict[str, Any] | None = None) -> tuple[pa.Table, pa.Table]:
    """Read the grants and rejections topics; return (grants, rejections) tables with
    exactly :data:`GRANT_SCHEMA` / :data:`REJECTION_SCHEMA`, deduplicated and ordered
    by input position. ``stats``, when given, receives the counts of copies,
    conflicts and undecodable messages plus a few ``examples``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    grants = _Outcomes("grant", grant_from_json, "grant_id")
    rejections = _Outcomes("rejection", rejection_from_json, "source")
    by_topic = {topics.grants: grants, topics.rejections: rejections}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    started = False
    reached_end = False
    try:
        try:
            parts = await asyncio.wait_for(_partitions(bootstrap, list(by_topic)),
                                           CONNECT_TIMEOUT)
            await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT)
            started = True
        except (KafkaError, OSError, asyncio.TimeoutError) as e:
            raise CollectError(f"cannot reach the Kafka broker at {bootstrap} "
                               f"({type(e).__name__}: {e})") from None
        tps: list[Any] = []
        for t in by_topic:
            if not parts.get(t):
                raise CollectError(f"topic {t} does not exist on {bootstrap} "
                                   "(has a worker run with this --topic-prefix?)")
            tps.extend(TopicPartition(t, p) for p in range(parts[t]))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        last_new = time.monotonic()
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=200, max_records=20_000)
            for tp_msgs in batch.values():
                for m in tp_msgs:
                    by_topic[m.topic].add(m)
            if any(batch.values()):
                last_new = time.monotonic()
            if len(grants.rows) + len(rejections.rows) >= expect:
                # Refresh the end offsets only once the old ones are reached: while
                # a worker still writes, they move.
                if await _at_end(consumer, tps, ends):
                    ends = await consumer.end_offsets(tps)
                    if await _at_end(consumer, tps, ends):
                        reached_end = True
                        break
            if time.monotonic() - last_new >= idle_timeout:
                break
    except KafkaError as e:
        raise CollectError(f"reading from {bootstrap} failed ({type(e).__name__}: {e})") \
            from None
    finally:
        if started:
            await consumer.stop()
    if stats is not None:
        stats.update({
            "grants": len(grants.rows), "rejections": len(rejections.rows),
            "copies": grants.copies + rejections.copies,
            "conflicts": grants.conflicts + rejections.conflicts,
            "undecodable": grants.undecodable + rejections.undecodable,
            "reached_end": reached_end,
            "examples": grants.examples + rejections.examples,
        })
    return grants.table(), rejections.table()


async def _partitions(bootstrap: str, names: list[str]) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        meta = await admin.describe_topics(names)
    finally:
        await admin.close()
    return {m["topic"]: len(m["partitions"]) for m in meta
            if m.get("error_code", 0) == 0 and m["partitions"]}


async def _at_end(consumer: Any, tps: list[Any], ends: dict[Any, int]) -> bool:
    for tp in tps:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


def main(args: argparse.Namespace) -> int:
    from engine.config import ConfigError, load_campaign
    from engine.io.outputs import write_atomically
    from engine.ledger.summary import summarize

    try:
        campaign = load_campaign(getattr(args, "campaign", None))
    except ConfigError as e:
        print(f"mynapoint collect: configuration error: {e}", file=sys.stderr)
        return 2
    topics = Topics(prefix=args.topic_prefix)
    stats: dict[str, Any] = {}
    try:
        grants, rejections = asyncio.run(
            collect(args.broker, topics, expect=args.expect, idle_timeout=args.timeout,
                    stats=stats))
    except CollectError as e:
        print(f"mynapoint collect: {e}", file=sys.stderr)
        return 2
    summary = summarize(grants, rejections, records_in={}, cap_points=campaign.cap_points,
                        campaign=campaign.id)
    out = Path(args.out)
    try:
        write_atomically(out, {
            "grants.parquet": grants,
            "rejections.parquet": rejections,
            "summary.json": orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n",
        })
    except OSError as e:
        print(f"mynapoint collect: cannot write to {out}: {e.strerror}", file=sys.stderr)
        return 2
    quiet = getattr(args, "quiet", False)
    if not quiet:
        print(f"collected {grants.num_rows:,} grants and {rejections.num_rows:,} rejections "
              f"({stats['copies']:,} redelivered copies removed, "
              f"{stats['undecodable']:,} undecodable messages); wrote {out / 'grants.parquet'}, "
              f"{out / 'rejections.parquet'}, {out / 'summary.json'}")
    for line in stats["examples"]:
        print(f"mynapoint collect: {line}", file=sys.stderr)
    if stats["undecodable"]:
        print(f"mynapoint collect: {stats['undecodable']:,} output messages could not be "
              "decoded and are missing from the files", file=sys.stderr)
    if stats["conflicts"]:
        print(f"mynapoint collect: error: {stats['conflicts']:,} outcomes have copies with "
              "different content (the engine decided one input twice)", file=sys.stderr)
        return 3
    got = grants.num_rows + rejections.num_rows
    if got < args.expect:
        print(f"mynapoint collect: expected {args.expect:,} outcomes, found {got:,} before "
              f"{args.timeout:g} s passed without new messages", file=sys.stderr)
        return 1
    return 0
