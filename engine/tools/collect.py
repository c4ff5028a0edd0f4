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
import operator
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA, TIMESTAMP
from engine.kafka.client_config import default_client
from engine.kafka.topics import Topics, discover, topic_partitions
from engine.streams.codec_out import (
    OutputDecodeError,
    decode_grant,
    decode_rejection,
    parse_utc,
)

CONNECT_TIMEOUT = 30.0
_MAX_EXAMPLES = 5
_SOURCE_PATTERN = r"^(?P<topic>.+)/(?P<partition>[0-9]+)/(?P<offset>[0-9]+)(?:#(?P<index>[0-9]+))?$"
_SOURCE = re.compile(_SOURCE_PATTERN)


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


def _sort_indices(source: pa.Array) -> pa.Array:
    """Row order by :func:`source_order`, computed column-wise."""
    m = pc.extract_regex(source, _SOURCE_PATTERN)
    kafka = m.is_valid()

    def number(name: str, missing: str) -> pa.Array:
        s = pc.struct_field(m, name).fill_null("")
        return pc.if_else(pc.equal(s, ""), missing, s).cast(pa.int64())

    keys = pa.table({
        "other": pc.invert(kafka).cast(pa.int8()),
        "topic": pc.if_else(kafka, pc.struct_field(m, "topic"), source),
        "partition": number("partition", "0"),
        "offset": number("offset", "0"),
        "index": number("index", "-1"),
    })
    return pc.sort_indices(keys, sort_keys=[(c, "ascending") for c in keys.column_names])


class Outcomes:
    """The distinct outcomes of one topic, keyed by their identity."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.decode: Any = decode_grant if kind == "grant" else decode_rejection
        self.key = "grant_id" if kind == "grant" else "source"
        self.rows: dict[str, Any] = {}
        self.copies = 0
        self.conflicts = 0
        self.undecodable = 0
        self.examples: list[str] = []

    def _example(self, text: str) -> None:
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(text)

    def add(self, msg: Any) -> None:
        try:
            row = self.decode(msg.value if msg.value is not None else b"")
        except OutputDecodeError as e:
            self.undecodable += 1
            self._example(f"undecodable {self.kind} at {msg.topic}/{msg.partition}/"
                          f"{msg.offset}: {e}")
            return
        ident = getattr(row, self.key)
        first = self.rows.setdefault(ident, row)
        if first is row:
            return
        self.copies += 1
        if first != row:
            self.conflicts += 1
            diff = [f for f in row.__struct_fields__ if getattr(row, f) != getattr(first, f)]
            self._example(f"conflicting copy of {self.kind} {self.key}={ident!r} at "
                          f"{msg.topic}/{msg.partition}/{msg.offset}: fields {diff} differ "
                          "from the first copy")

    def table(self) -> pa.Table:
        rows = list(self.rows.values())
        schema = GRANT_SCHEMA if self.kind == "grant" else REJECTION_SCHEMA
        if self.kind == "grant":
            rows = self._valid_instants(rows)
        names = schema.names
        columns = list(zip(*map(operator.attrgetter(*names), rows), strict=True)) if rows \
            else [()] * len(names)
        cols = [pa.array(values, type=pa.string() if f.name == "occurred_at" else f.type)
                for f, values in zip(schema, columns, strict=True)]
        if self.kind == "grant":
            at = schema.get_field_index("occurred_at")
            cols[at] = cols[at].cast(TIMESTAMP)
        table = pa.Table.from_arrays(cols, schema=schema)
        try:
            order = _sort_indices(table["source"].combine_chunks())
        except (pa.ArrowInvalid, OverflowError):  # digits beyond int64: sort in Python
            order = pa.array(sorted(range(len(rows)),
                                    key=lambda i: source_order(rows[i].source)))
        return table.take(order)

    def _valid_instants(self, rows: list[Any]) -> list[Any]:
        """Drop grants whose ``occurred_at`` has the right form but is no date
        (Feb 30): the column cast would fail on them."""
        try:
            pa.array([r.occurred_at for r in rows]).cast(TIMESTAMP)
            return rows
        except pa.ArrowInvalid:
            pass
        kept = []
        for r in rows:
            try:
                parse_utc(r.occurred_at)
            except ValueError as e:
                self.undecodable += 1
                self._example(f"undecodable grant {r.grant_id!r}: occurred_at: {e}")
                continue
            kept.append(r)
        return kept


async def collect(bootstrap: str, topics: Topics, expect: int = 0, idle_timeout: float = 10.0,
                  stats: dict[str, Any] | None = None) -> tuple[pa.Table, pa.Table]:
    """Read the grants and rejections topics; return (grants, rejections) tables with
    exactly :data:`GRANT_SCHEMA` / :data:`REJECTION_SCHEMA`, deduplicated and ordered
    by input position. ``stats``, when given, receives the counts of copies,
    conflicts and undecodable messages plus a few ``examples``."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    grants, rejections = Outcomes("grant"), Outcomes("rejection")
    try:
        topics = await asyncio.wait_for(discover(bootstrap, topics), CONNECT_TIMEOUT)
        by_topic = {t: grants if kind == "grant" else rejections
                    for t, kind in topics.outcomes.items()}
        parts = await asyncio.wait_for(topic_partitions(bootstrap, list(by_topic)), CONNECT_TIMEOUT)
    except (TimeoutError, KafkaError, OSError) as e:
        raise CollectError(f"cannot reach the Kafka broker at {bootstrap} "
                           f"({type(e).__name__}: {e})") from None
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, **default_client(), group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
    reached_end = False
    try:
        try:
            await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT)
        except (TimeoutError, KafkaError, OSError) as e:
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
            # Refresh the end offsets only once the old ones are reached: while a
            # worker still writes, they move.
            if (len(grants.rows) + len(rejections.rows) >= expect
                    and await at_end(consumer, tps, ends)):
                ends = await consumer.end_offsets(tps)
                if await at_end(consumer, tps, ends):
                    reached_end = True
                    break
            if time.monotonic() - last_new >= idle_timeout:
                break
    except KafkaError as e:
        raise CollectError(f"reading from {bootstrap} failed ({type(e).__name__}: {e})") \
            from None
    finally:
        await consumer.stop()  # also releases a consumer that never connected
    grant_table, rejection_table = grants.table(), rejections.table()
    if stats is not None:
        stats.update({
            "grants": grant_table.num_rows, "rejections": rejection_table.num_rows,
            "copies": grants.copies + rejections.copies,
            "conflicts": grants.conflicts + rejections.conflicts,
            "undecodable": grants.undecodable + rejections.undecodable,
            "reached_end": reached_end,
            "examples": grants.examples + rejections.examples,
        })
    return grant_table, rejection_table


async def at_end(consumer: Any, tps: list[Any], ends: dict[Any, int]) -> bool:
    for tp in tps:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


def main(args: argparse.Namespace) -> int:
    from engine.config import ConfigError, load_campaign
    from engine.io.outputs import write_atomically
    from engine.tools.summary import summarize

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
    summary = summarize(grants, rejections, records_in=None, cap_points=campaign.cap_points,
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
