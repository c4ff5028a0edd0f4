"""``mynapoint publish``: replay enrollment and transaction files into Kafka.

All enrollments are published (and acknowledged) before the first transaction,
so that a worker reading both topics sees every person's application before
their spending wherever it can. Formats follow ``schemas/batch-message.md``:

- ``batch == 1``: one record per message, no format header, key = ``mykey_id``,
  timestamp = the record's ``received_at`` (else ``occurred_at``, else, for an
  enrollment, ``applied_at``), in ms. A JSON Lines record is sent byte for byte
  as it stands in the file, malformed or not: the engine must judge exactly what
  the operator sent. A Parquet row is sent as a JSON object (timestamp columns as
  RFC 3339 strings in UTC with ``Z`` and microseconds; a column without a time
  zone is written without an offset, so that the engine finds it ``MALFORMED`` as
  offline ``settle`` does).
- ``batch > 1``: records are grouped by target partition, keeping file order
  within a partition, into messages of up to ``batch`` records: a JSON Lines file
  gives ``jsonl`` chunks of its raw lines, a Parquet file gives ``arrow-ipc``
  streams of its rows with the file's own columns. Key = ``mykey_id`` of the first
  record, timestamp = that of the last record that has one. The engine does not
  lend the message timestamp to the records of a chunk: each keeps its own
  ``received_at`` field, or has none, as offline. A chunk that would exceed the
  broker's message size limit is split in two, recursively.

Routing: the partition is Kafka's default (murmur2) partition of ``mykey_id``.
A record without a string ``mykey_id`` (not JSON, not an object, field missing
or of another type) goes, with no key, to the partition of its raw line (JSON
Lines) or of its 0-based row index in decimal (Parquet), so a re-run routes it
the same way; the engine rejects it ``MALFORMED`` there. A record with no usable
time gets Kafka's "no timestamp" (-1), never the wall clock, so that a replay is
decided alike.

Re-running ``publish`` with the same files is safe: by the settlement rules the
engine rejects every re-published transaction as ``DUPLICATE`` and every
re-published enrollment as ``DUPLICATE`` (same operator and kind), so nothing
is granted twice; the second run's outcomes are those rejections.

``--manifest FILE`` writes a Parquet file with one row per input record:
``input_source`` (``file:line``, as offline ``settle`` writes ``source``),
``record_type`` and ``kafka_source`` (``topic/partition/offset``, plus ``#i`` in
batch messages, as the engine writes ``source``), so that streamed outcomes can be
joined back to file lines.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.config import load_or_report
from engine.io.readers import sources, split_lines
from engine.kafka.client_config import default_client

# NO_TIMESTAMP: the engine reads a message without one as a record without received_at
from engine.kafka.produce import NO_TIMESTAMP, BatchSender, Delivery, Outgoing
from engine.kafka.topics import (
    FORMAT_ARROW,
    FORMAT_HEADER,
    FORMAT_JSONL,
    MAX_RECORDS_PER_MESSAGE,
    TopicMismatch,
    Topics,
    ensure_topics,
)
from engine.ops import logs
from engine.rules.model import OPERATOR_ID
from engine.rules.strings import kafka_partitions, rfc3339_array

CONNECT_TIMEOUT = 30.0
# An idempotent producer retries a send until it is stored, but gives up on a batch
# older than this while its partition has no leader: a broker killed and restarted
# (about 35 s on a busy machine) must not end a publish that would then be re-run.
SEND_TIMEOUT_MS = 300_000
MAX_REQUEST_BYTES = 10 * 1024 * 1024
# Key, headers and record-batch framing must fit next to the value.
MAX_VALUE_BYTES = MAX_REQUEST_BYTES - 64 * 1024
# Per-partition record batch handed to the producer: big enough that the
# per-request overhead vanishes, small enough to keep partitions interleaved.
BUILDER_BYTES = 1024 * 1024

_TIME_FIELDS = {
    "enrollment": ("received_at", "applied_at"),
    "transaction": ("received_at", "occurred_at"),
}


class PublishError(RuntimeError):
    """An input file or the broker is unusable. ``str()`` names which."""


@dataclass
class _Input:
    path: Path
    record_type: str
    keys: list[bytes | None]      # mykey_id, UTF-8
    route: list[bytes]            # what the partitioner hashes
    ts_ms: list[int]              # message timestamps, NO_TIMESTAMP where none
    positions: np.ndarray         # 1-based line or row numbers
    ops: list[str | None]         # operator_id where it is a string
    lines: list[bytes] | None = None
    table: pa.Table | None = None

    @property
    def n(self) -> int:
        return len(self.keys)

    def where(self, i: int) -> str:
        return f"{self.path}:{int(self.positions[i])}"


# ---------------------------------------------------------------- reading inputs

def _encode_key(v: Any) -> bytes | None:
    if type(v) is not str:
        return None
    try:
        return v.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate cannot be a MyKey ID anyway
        return None


def _instants(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """UTC µs and validity of one time column, parsed as the engine parses it."""
    from engine.rules.strings import parse_timestamps

    n = len(arr)
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if pa.types.is_timestamp(t):
        if t.tz is None:
            return np.zeros(n, np.int64), np.zeros(n, np.bool_)
        us = arr.cast(pa.timestamp("us", tz="UTC"), safe=False).cast(pa.int64())
        return (us.fill_null(0).to_numpy(),
                np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), np.bool_))
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        arr = arr.cast(pa.string())
        t = arr.type
    if not pa.types.is_string(t):
        return np.zeros(n, np.int64), np.zeros(n, np.bool_)
    us, ok = parse_timestamps(arr)
    return np.asarray(us, np.int64), np.asarray(ok, np.bool_)


def _timestamps_ms(columns: list[pa.Array], n: int) -> list[int]:
    """The first usable column per record, in ms rounded down."""
    ms = np.full(n, NO_TIMESTAMP, dtype=np.int64)
    have = np.zeros(n, dtype=np.bool_)
    for col in columns:
        us, ok = _instants(col)
        take = ok & ~have
        ms[take] = us[take] // 1000
        have |= take
    # Kafka has no timestamps before 1970; such a record is not late either way.
    ms[ms < 0] = NO_TIMESTAMP
    return ms.tolist()  # type: ignore[no-any-return]


def _read_jsonl(path: Path, record_type: str) -> _Input:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PublishError(f"{path}: cannot read file ({e.strerror})") from None
    lines, numbers = split_lines(data)
    del data
    fields = _TIME_FIELDS[record_type]
    stamps: list[list[str | None]] = [[] for _ in fields]
    keys: list[bytes | None] = []
    route: list[bytes] = []
    ops: list[str | None] = []
    loads = orjson.loads
    for line in lines:
        try:
            obj = loads(line)
        except orjson.JSONDecodeError:
            obj = None
        key = None
        op = None
        if type(obj) is dict:
            key = _encode_key(obj.get("mykey_id"))
            op = obj.get("operator_id")
            for f, out in zip(fields, stamps, strict=True):
                v = obj.get(f)
                out.append(v if type(v) is str else None)
        else:
            for out in stamps:
                out.append(None)
        keys.append(key)
        route.append(line if key is None else key)
        ops.append(op if type(op) is str else None)
    ts = _timestamps_ms([pa.array(s, type=pa.string()) for s in stamps], len(lines))
    return _Input(path, record_type, keys, route, ts, numbers, ops, lines=lines)


def _read_parquet(path: Path, record_type: str) -> _Input:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise PublishError(f"{path}: cannot read Parquet ({e})") from None
    n = table.num_rows

    def column(name: str) -> pa.Array | None:
        i = table.schema.get_field_index(name)
        return table.column(i).combine_chunks() if i >= 0 else None

    keys: list[bytes | None] = [None] * n
    col = column("mykey_id")
    if col is not None:
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if pa.types.is_large_string(col.type) or pa.types.is_string_view(col.type):
            col = col.cast(pa.string())
        if pa.types.is_string(col.type):
            keys = [None if v is None else v.encode("utf-8") for v in col.to_pylist()]
    route = [k if k is not None else str(i).encode() for i, k in enumerate(keys)]
    cols = [c for c in (column(f) for f in _TIME_FIELDS[record_type]) if c is not None]
    ts = _timestamps_ms(cols, n)
    ops: list[str | None] = [None] * n
    col = column("operator_id")
    if col is not None and (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        ops = col.to_pylist()
    return _Input(path, record_type, keys, route, ts, np.arange(1, n + 1, dtype=np.int64),
                  ops, table=table)


def read_input(path: str | Path, record_type: str) -> _Input:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(p, record_type)
    if suffix == ".parquet":
        return _read_parquet(p, record_type)
    raise PublishError(f"{p}: unknown input format (use .jsonl, .ndjson or .parquet)")


# ---------------------------------------------------------------- building messages

def _json_default(v: Any) -> Any:
    # Kept non-string where offline reading would see a non-string column, so
    # that the engine judges the row the same way.
    if isinstance(v, Decimal):
        return float(v)
    if isinstance(v, bytes):
        return {"$binary": base64.b64encode(v).decode()}
    if isinstance(v, timedelta):
        return v.total_seconds()
    raise TypeError(f"cannot express a {type(v).__name__} value in JSON")


def _rfc3339_strings(col: pa.ChunkedArray) -> pa.Array:
    # An aware column in the engine's one form; a naive one as wall-clock time without
    # offset, so that the engine judges it as offline reading would (no instant).
    zone = "" if col.type.tz is None else "Z"
    us = col.cast(pa.timestamp("us", tz=col.type.tz), safe=False).cast(pa.int64()).combine_chunks()
    text = rfc3339_array(us.fill_null(0).to_numpy(), suffix=zone)
    return pc.if_else(us.is_valid(), text, pa.scalar(None, pa.string()))


def _json_rows(inp: _Input) -> list[bytes]:
    table = inp.table
    assert table is not None
    cols = [_rfc3339_strings(c) if pa.types.is_timestamp(c.type) else c for c in table.columns]
    table = pa.Table.from_arrays(cols, names=table.column_names)
    out: list[bytes] = []
    dumps = orjson.dumps
    opts = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS
    step = 50_000
    for start in range(0, table.num_rows, step):
        rows = table.slice(start, step).to_pylist()
        for k, row in enumerate(rows):
            try:
                out.append(dumps(row, default=_json_default, option=opts))
            except orjson.JSONEncodeError as e:
                raise PublishError(f"{inp.where(start + k)}: {e}") from None
    return out


def _run_chunk_plan(groups: np.ndarray, persons: list[bytes | None],
                    size: int) -> list[np.ndarray]:
    """Chunks for records bound for several topics that the worker merges by message
    timestamp (engine.streams.order, with the timestamps :func:`_messages` assigns):
    per group (a topic's partition), in file order, up to ``size`` records; a chunk is
    closed (sent) before a record of one of its people goes to another topic, so each
    person's records reach the worker in file order, which is all that offline
    ``settle``'s file order decides (people are decided independently). Records of
    different people may interleave freely: chunking by run of topic instead made
    one message per one or two records of a mixed-operator file."""
    open_: dict[int, list[int]] = {}   # group -> records
    where: dict[bytes, int] = {}       # person -> group of its latest record
    plan: list[tuple[int, np.ndarray]] = []

    def close(g: int) -> None:
        idx = open_.pop(g)
        plan.append((idx[-1], np.asarray(idx, dtype=np.int64)))

    for i, (g, k) in enumerate(zip(groups.tolist(), persons, strict=True)):
        if k is not None:
            # a person's groups share its partition: the open chunk of its last
            # record goes out before this one
            og = where.get(k)
            if og is not None and og != g and og in open_:
                close(og)
            where[k] = g
        chunk = open_.get(g)
        if chunk is not None and len(chunk) == size:
            close(g)
            chunk = None
        if chunk is None:
            chunk = open_[g] = []
        chunk.append(i)
    for g in list(open_):
        close(g)
    plan.sort(key=lambda c: c[0])
    return [c for _, c in plan]


def _chunk_plan(parts: np.ndarray, n_parts: int, size: int) -> list[np.ndarray]:
    """Per-partition chunks of record indices, in the order a streaming publisher
    would flush them: a full chunk when its last record is read, the rest at the end."""
    n = len(parts)
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(n_parts + 1))
    plan: list[tuple[int, np.ndarray]] = []
    for p in range(n_parts):
        idx = order[bounds[p]:bounds[p + 1]]
        for s in range(0, len(idx), size):
            c = idx[s:s + size]
            plan.append((int(c[-1]) if len(c) == size else n + p, c))
    plan.sort(key=lambda t: t[0])
    return [c for _, c in plan]


def _arrow_value(table: pa.Table, idx: np.ndarray) -> bytes:
    sub = table.take(pa.array(idx, type=pa.int64()))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(sub)
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def _jsonl_value(lines: list[bytes], idx: np.ndarray) -> bytes:
    return b"\n".join([lines[i] for i in idx.tolist()])


@dataclass(frozen=True, slots=True)
class _Message:
    """A message to send and the input records it carries: the record index (a
    one-record message) or an index array (a chunk)."""

    out: Outgoing
    records: int | np.ndarray
    topic: int = 0  # index into the topics the records are published to

    @property
    def count(self) -> int:
        return 1 if isinstance(self.records, int) else len(self.records)


def _messages(inp: _Input, parts: np.ndarray, n_parts: int, batch: int,
              targets: np.ndarray | None = None, merged: bool = False
              ) -> Iterator[_Message]:
    """The messages of ``inp`` in sending order; ``targets``: each record's topic
    (an index; all 0 when None). ``merged``: the records go to several topics that
    the worker merges by message timestamp: chunk with :func:`_run_chunk_plan`."""
    keys, ts = inp.keys, inp.ts_ms
    if targets is None:
        targets = np.zeros(inp.n, dtype=np.int64)
    if batch == 1:
        values = inp.lines if inp.lines is not None else _json_rows(inp)
        plist = parts.tolist()
        tlist = targets.tolist()
        for i, v in enumerate(values):
            if len(v) > MAX_VALUE_BYTES:
                raise PublishError(f"{inp.where(i)}: record of {len(v):,} bytes exceeds the "
                                   f"message size limit of {MAX_VALUE_BYTES:,} bytes")
            yield _Message(Outgoing(plist[i], keys[i], v, ts[i]), i, tlist[i])
        return
    if inp.lines is not None:
        lines = inp.lines
        headers = [(FORMAT_HEADER, FORMAT_JSONL)]

        def encode(idx: np.ndarray) -> bytes:
            return _jsonl_value(lines, idx)
    else:
        table = inp.table
        assert table is not None
        headers = [(FORMAT_HEADER, FORMAT_ARROW)]

        def encode(idx: np.ndarray) -> bytes:
            return _arrow_value(table, idx)

    def fit(idx: np.ndarray) -> Iterator[tuple[np.ndarray, bytes]]:
        value = encode(idx)
        if len(value) <= MAX_VALUE_BYTES:
            yield idx, value
        elif len(idx) == 1:
            raise PublishError(f"{inp.where(int(idx[0]))}: record of {len(value):,} bytes "
                               f"exceeds the message size limit of {MAX_VALUE_BYTES:,} bytes")
        else:
            half = len(idx) // 2
            yield from fit(idx[:half])
            yield from fit(idx[half:])

    ts_arr = np.asarray(ts, dtype=np.int64)
    groups = targets.astype(np.int64) * n_parts + parts
    plan = _run_chunk_plan(groups, keys, batch) if merged \
        else _chunk_plan(groups, int(targets.max(initial=0) + 1) * n_parts, batch)
    previous: dict[int, int] = {}  # partition -> timestamp of its last message
    for chunk in plan:
        for idx, value in fit(chunk):
            # The latest business time in the chunk, so that the broker's time
            # index and time-based lookups see the chunk where its records belong,
            # even when the chunk ends with a malformed line that has no time.
            timed = ts_arr[idx]
            timed = timed[timed != NO_TIMESTAMP]
            stamp = int(timed[-1]) if len(timed) else NO_TIMESTAMP
            part = int(parts[idx[0]])
            if merged and stamp != NO_TIMESTAMP:
                # strictly increasing per partition in sending order, which is file order
                # (a chunk's records carry their own received_at: the engine reads no
                # record's time from this stamp, only the merge order)
                stamp = max(stamp, previous.get(part, NO_TIMESTAMP) + 1)
                previous[part] = stamp
            yield _Message(Outgoing(part, keys[int(idx[0])], value, stamp, headers), idx,
                           int(targets[idx[0]]))


# ---------------------------------------------------------------- sending

class _RateLimit:
    """Token bucket on records: a message may go once the records before it are due."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.t0: float | None = None
        self.sent = 0

    def delay(self, records: int) -> float:
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        due = self.t0 + self.sent / self.rate
        self.sent += records
        return due - now


class _Placement:
    """Where each input record went: partition, offset, and its index within a
    chunk message (-1 for one-record messages)."""

    def __init__(self, n_records: int) -> None:
        self.partition = np.full(n_records, -1, dtype=np.int64)
        self.offset = np.full(n_records, -1, dtype=np.int64)
        self.index = np.full(n_records, -1, dtype=np.int64)
        self.topic: list[str] = []
        self.messages = 0

    def record(self, deliveries: list[Delivery]) -> None:
        """Note the offsets of acknowledged batches (tags: each message's records)."""
        for d in deliveries:
            p, base, tags = d.partition, d.future.result().offset, d.tags
            self.messages += len(tags)
            if isinstance(tags[0], int):
                idx = np.asarray(tags, dtype=np.int64)
                self.partition[idx] = p
                self.offset[idx] = base + np.arange(len(idx), dtype=np.int64)
                continue
            for k, idx in enumerate(tags):
                self.partition[idx] = p
                self.offset[idx] = base + k
                self.index[idx] = np.arange(len(idx), dtype=np.int64)


async def _publish_one(producer: Any, inp: _Input, names: list[str], targets: np.ndarray,
                       n_parts: int, batch: int, limit: _RateLimit | None,
                       bar: Any) -> _Placement:
    """Send ``inp``'s records, record ``i`` to topic ``names[targets[i]]``."""
    # the record's key, or its raw bytes when it has none: one vectorised murmur2
    routing = pa.array([k if k is not None else r for k, r in zip(inp.keys, inp.route,
                                                                  strict=True)],
                       type=pa.binary())
    parts = kafka_partitions(routing, n_parts)
    senders = [BatchSender(producer, name) for name in names]
    label = names[0] if len(names) == 1 else f"{len(names)} topics"
    task = bar.add_task(f"{inp.record_type}s → {label}", total=inp.n) if bar else None
    pending = 0
    # a partition's enrollment topics are merged by the worker (the order decides which
    # of two operators a person applied with first); transactions' are not
    merged = inp.record_type == "enrollment" and len(np.unique(targets)) > 1
    last: dict[int, int] = {}  # partition -> topic of its previous message
    for m in _messages(inp, parts, n_parts, batch, targets, merged):
        p = m.out.partition
        if merged and last.get(p, m.topic) != m.topic:
            # the worker merges these topics by timestamp up to what it can see at the
            # end of each: what came before in this partition must be in Kafka first
            await senders[last[p]].acknowledged(p)
        last[p] = m.topic
        if limit is not None:
            wait = limit.delay(m.count)
            if wait > 0.002:
                # Records must reach the broker at the rate, not just leave this loop.
                for sender in senders:
                    await sender.send_open()
                await asyncio.sleep(wait)
        await senders[m.topic].add(m.out, m.records)
        pending += m.count
        if bar and pending >= 5_000:
            bar.advance(task, pending)
            pending = 0
    placement = _Placement(inp.n)
    for sender in senders:
        placement.record(await sender.flush())
    placement.topic = [names[t] for t in targets.tolist()]
    if bar:
        bar.advance(task, pending)
    return placement


def _manifest_rows(inp: _Input, sender: _Placement, batch: int) -> pa.Table:
    kafka = pc.binary_join_element_wise(
        pa.array(sender.topic, type=pa.string()), pa.array(sender.partition).cast(pa.string()),
        pa.array(sender.offset).cast(pa.string()), "/")
    if batch > 1:
        kafka = pc.binary_join_element_wise(kafka, pa.array(sender.index).cast(pa.string()),
                                            "#")
    return pa.table({
        "input_source": sources(inp.path.name, inp.positions),
        "record_type": pa.array([inp.record_type] * inp.n, type=pa.string()),
        "kafka_source": kafka,
    })


def _write_manifest(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PublishError(f"{path}: cannot write the manifest ({e.strerror})") from None


def _progress_bar() -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=False)


async def ensure_topics_settled(bootstrap: str, topics: Topics, partitions: int,
                                settle: float = 5.0, only: list[str] | None = None) -> int:
    """:func:`ensure_topics`, retried for a few seconds on a mismatch: right after
    creation the broker may still describe the new topics with no partitions."""
    deadline = time.monotonic() + settle
    while True:
        try:
            return await ensure_topics(bootstrap, topics, partitions, changelog=False,
                                       only=only)
        except TopicMismatch:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)


async def _input_topics(bootstrap: str, topics: Topics, partitions: int,
                        only: list[str]) -> int:
    """Create the input topics ``only`` if missing; their partition count."""
    from aiokafka.errors import KafkaError, TopicAuthorizationFailedError

    try:
        return await asyncio.wait_for(ensure_topics_settled(bootstrap, topics, partitions,
                                                            only=only), CONNECT_TIMEOUT)
    except TopicMismatch as e:
        raise PublishError(f"broker {bootstrap}: {e}") from None
    except TopicAuthorizationFailedError as e:
        raise PublishError(f"the Kafka broker at {bootstrap} refused: {e.args[0] if e.args else e}"
                           " (an operator may write only its own input topics: is --operator "
                           "your own operator id?)") from None
    except (TimeoutError, KafkaError, OSError) as e:
        raise PublishError(f"cannot reach the Kafka broker at {bootstrap} "
                           f"({type(e).__name__}: {e})") from None


def _producer(bootstrap: str) -> Any:
    from aiokafka import AIOKafkaProducer
    from aiokafka.codec import has_lz4

    return AIOKafkaProducer(
        bootstrap_servers=bootstrap, **default_client(), enable_idempotence=True, acks="all",
        linger_ms=5, request_timeout_ms=SEND_TIMEOUT_MS,
        max_request_size=MAX_REQUEST_BYTES, max_batch_size=BUILDER_BYTES,
        compression_type="lz4" if has_lz4() else None)


async def _start(producer: Any, bootstrap: str) -> None:
    from aiokafka.errors import KafkaError

    try:
        await asyncio.wait_for(producer.start(), CONNECT_TIMEOUT)
    except (TimeoutError, KafkaError, OSError) as e:
        raise PublishError(f"cannot reach the Kafka broker at {bootstrap} "
                           f"({type(e).__name__}: {e})") from None


async def _held_messages(bootstrap: str, names: list[str], partitions: int) -> dict[str, int]:
    """Messages ever written to each topic (end offsets), retention or not."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client())
    await c.start()
    try:
        ends = await c.end_offsets([TopicPartition(t, p) for t in names
                                    for p in range(partitions)])
    finally:
        await c.stop()
    out: dict[str, int] = {}
    for tp, end in ends.items():
        out[tp.topic] = out.get(tp.topic, 0) + end
    return out


def _replay_topic(topics: Topics, entry: Any) -> str:
    """The fresh input topic an archived file's messages are replayed into: the same
    operator's, under the fresh prefix."""
    return topics.input_of(topics.operator_of(entry.topic), entry.record_type)


async def publish_archive(bootstrap: str, topics: Topics, archive: str | Path
                          ) -> dict[str, Any]:
    """Replay a redacted archive into fresh input topics, message for message: each
    to the partition it was read from, in its original order, with its key,
    headers, timestamp and (redacted) value, and a REPLAY_HEADER with its
    original position and flags (engine.archive.replay.replay_messages), so that
    a ``--replay`` worker decides every record as the stream did, ids and sources
    included. All enrollments go before the first transaction, as publish_files
    sends them. Returns counts."""
    from aiokafka.errors import KafkaError

    from engine.archive.replay import replay_messages
    from engine.archive.store import Archive, ArchiveError

    try:
        a = Archive.open_verified(archive)
    except ArchiveError as e:
        raise PublishError(str(e)) from None
    if not a.entries:
        raise PublishError(f"{archive}: the archive holds no messages")
    n_parts = max(max(e.partitions for e in a.entries),
                  max(e.partition for e in a.entries) + 1)
    source_topics = {e.topic for e in a.entries}
    fresh = sorted({_replay_topic(topics, e) for e in a.entries})
    for t in fresh:
        if t in source_topics:
            raise PublishError(f"{t} is a topic the archive was read from: replay into "
                               "fresh topics (another --topic-prefix)")
    t0 = time.monotonic()
    got = await _input_topics(bootstrap, topics, n_parts, fresh)
    if got != n_parts:
        raise PublishError(f"{fresh[0]} has {got} partitions, the archived topics "
                           f"had {n_parts}: a replay needs fresh topics")
    held = {t: n for t, n in (await _held_messages(bootstrap, fresh, n_parts)).items() if n}
    if held:
        t, n = next(iter(held.items()))
        raise PublishError(f"{t} already holds {n:,} messages: a replay needs fresh topics "
                           "(replayed records would repeat the original outcome ids)")
    producer = _producer(bootstrap)
    counts: dict[str, Any] = {"partitions": n_parts, "enrollment_messages": 0,
                              "transaction_messages": 0}
    try:
        await _start(producer, bootstrap)
        for record_type in ("enrollment", "transaction"):
            files = a.files(record_type)
            if not files:
                continue
            senders: dict[str, BatchSender] = {}
            i = 0
            for entry in files:
                name = _replay_topic(topics, entry)
                sender = senders.get(name) or senders.setdefault(
                    name, BatchSender(producer, name))
                for m in replay_messages(a.read(entry)):
                    ts = m.timestamp if m.timestamp is not None else NO_TIMESTAMP
                    await sender.add(Outgoing(m.partition, m.key, m.value or b"", ts,
                                              list(m.headers or [])), i)
                    i += 1
            try:
                for sender in senders.values():
                    await sender.flush()
            except KafkaError as e:
                raise PublishError(f"replaying {archive} to {bootstrap} failed "
                                   f"({type(e).__name__}: {e})") from None
            counts[f"{record_type}_messages"] = sum(s.messages for s in senders.values())
    except ArchiveError as e:
        raise PublishError(str(e)) from None
    finally:
        await producer.stop()
    counts["seconds"] = time.monotonic() - t0
    return counts


async def publish_files(bootstrap: str, topics: Topics, enrollments: str | Path | None,
                        transactions: str | Path | None, batch: int = 1000, rate: float = 0.0,
                        partitions: int = 8, progress: bool = False,
                        manifest: str | Path | None = None,
                        operator: str | None = None) -> dict[str, Any]:
    """Publish the files; return counts (records and messages per type, partitions,
    seconds). Raises :class:`PublishError` for an unusable file or broker.

    ``operator``: the operator publishing (its credentials): every record goes to its
    input topics, whatever the record claims (the engine checks the claim). Without
    it (admin, tests, the demo), each record goes to the inputs of the operator its
    ``operator_id`` names among ``topics.operators``, and a record naming none of them
    (or nothing readable) to the unattributed input."""
    from aiokafka.errors import KafkaError

    if not 1 <= batch <= MAX_RECORDS_PER_MESSAGE:
        raise PublishError(f"--batch must be 1 to {MAX_RECORDS_PER_MESSAGE}, got {batch}")
    if rate < 0:
        raise PublishError(f"--rate must not be negative, got {rate}")
    # Every file is read before anything is sent: a bad second file must not
    # leave the first one half-published.
    if operator is not None:
        if not OPERATOR_ID.fullmatch(operator):
            raise PublishError(f"--operator {operator[:40]!r} is not an operator id")
        topics = topics.with_operators([operator])
    inputs: list[tuple[_Input, list[str], np.ndarray]] = []
    for path, record_type in ((enrollments, "enrollment"), (transactions, "transaction")):
        if path is None:
            continue
        inp = read_input(path, record_type)
        if operator is not None:
            names = [topics.input_of(operator, record_type)]
            targets = np.zeros(inp.n, dtype=np.int64)
        else:
            sources = [*topics.operators, None]
            names = [topics.input_of(o, record_type) for o in sources]
            index = {o: i for i, o in enumerate(topics.operators)}
            unattributed = len(topics.operators)
            targets = np.fromiter((index.get(o, unattributed) for o in inp.ops),  # type: ignore[arg-type]
                                  dtype=np.int64, count=inp.n)
        inputs.append((inp, names, targets))
    t0 = time.monotonic()
    # only the topics records go to: an operator may not even see another's
    wanted = sorted({names[t] for _, names, targets in inputs for t in np.unique(targets)})
    n_parts = await _input_topics(bootstrap, topics, partitions, wanted)
    producer = _producer(bootstrap)
    counts: dict[str, Any] = {"partitions": n_parts, "enrollments": 0, "transactions": 0,
                              "enrollment_messages": 0, "transaction_messages": 0}
    manifest_parts: list[pa.Table] = []
    limit = _RateLimit(rate) if rate > 0 else None
    bar = _progress_bar() if progress and sys.stderr.isatty() else None
    try:
        await _start(producer, bootstrap)
        if bar:
            bar.start()
        for inp, names, targets in inputs:
            try:
                sender = await _publish_one(producer, inp, names, targets, n_parts, batch,
                                            limit, bar)
            except KafkaError as e:
                raise PublishError(f"publishing {inp.path} to {bootstrap} failed "
                                   f"({type(e).__name__}: {e})") from None
            counts[f"{inp.record_type}s"] = inp.n
            counts[f"{inp.record_type}_messages"] = sender.messages
            if manifest is not None:
                manifest_parts.append(_manifest_rows(inp, sender, batch))
    finally:
        if bar:
            bar.stop()
        await producer.stop()  # also releases a producer that never connected
    counts["seconds"] = time.monotonic() - t0
    if manifest is not None:
        schema = pa.schema([("input_source", pa.string()), ("record_type", pa.string()),
                            ("kafka_source", pa.string())])
        table = (pa.concat_tables(manifest_parts) if manifest_parts
                 else schema.empty_table())
        _write_manifest(Path(manifest), table)
    return counts


def _archive_main(args: argparse.Namespace) -> int:
    if args.enrollments is not None or args.transactions is not None:
        print("mynapoint publish: --archive replays an archive; it takes no --enrollments "
              "or --transactions", file=sys.stderr)
        return 2
    try:
        # a failure is reported below in one line; aiokafka's own lines would repeat it
        with logs.quiet("aiokafka"):
            counts = asyncio.run(publish_archive(args.broker,
                                                 Topics(prefix=args.topic_prefix),
                                                 args.archive))
    except PublishError as e:
        print(f"mynapoint publish: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"replayed {counts['enrollment_messages']:,} enrollment and "
              f"{counts['transaction_messages']:,} transaction messages from {args.archive} "
              f"to {counts['partitions']} partitions in {counts['seconds']:.1f} s; decide "
              "them with `mynapoint worker --replay`")
    return 0


def main(args: argparse.Namespace) -> int:
    # Right after topic creation the broker briefly answers NOT_LEADER and the
    # producer retries; a real failure still ends in an exception.
    logging.getLogger("aiokafka.producer.sender").setLevel(logging.ERROR)
    if getattr(args, "archive", None) is not None:
        return _archive_main(args)
    if args.enrollments is None and args.transactions is None:
        print("mynapoint publish: nothing to publish (give --enrollments and/or "
              "--transactions)", file=sys.stderr)
        return 2
    config = load_or_report("publish", None, getattr(args, "operators", None))
    if config is None:
        return 2
    topics = Topics(args.topic_prefix, operators=tuple(o.id for o in config[1].operators))
    try:
        with logs.quiet("aiokafka"):  # a failure is reported below in one line
            counts = asyncio.run(publish_files(
                args.broker, topics, args.enrollments,
                args.transactions, batch=args.batch, rate=args.rate,
                partitions=args.partitions, progress=not args.quiet,
                manifest=getattr(args, "manifest", None),
                operator=getattr(args, "operator", None)))
    except PublishError as e:
        print(f"mynapoint publish: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        records = counts.get("enrollments", 0) + counts.get("transactions", 0)
        secs = counts["seconds"]
        print(f"published {counts.get('enrollments', 0):,} enrollments and "
              f"{counts.get('transactions', 0):,} transactions in "
              f"{counts.get('enrollment_messages', 0) + counts.get('transaction_messages', 0):,}"
              f" messages to {counts['partitions']} partitions in {secs:.1f} s "
              f"({records / secs if secs > 0 else 0:,.0f} records/s)")
    return 0
