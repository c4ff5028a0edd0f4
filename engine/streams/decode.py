"""Kafka messages to validated record batches.

A message carries one JSON record (no format header), a JSON Lines chunk, or
an Arrow IPC stream (``schemas/batch-message.md``). Whatever is wrong with a
message or a record inside it becomes that record's rejection: the decoder
never raises on content, so a poison message cannot stop a partition.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from engine.io.readers import BadRecord, load_record, shape_lines, split_lines
from engine.kafka.topics import (
    FORMAT_ARROW,
    FORMAT_HEADER,
    FORMAT_JSONL,
    MAX_RECORDS_PER_MESSAGE,
    REPLAY_HEADER,
    SOURCE_HEADER,
)
from engine.rules.model import NO_TIME, Campaign, Reason, Registry
from engine.rules.strings import END_US, is_individual_number
from engine.rules.validate import (
    Shaped,
    Validated,
    concat_validated,
    shape_table,
    validate_enrollments,
    validate_transactions,
)

SUB_BITS = 16  # arrival = offset << 16 | index within the message
# "#i" of a chunk's record i, made once: a concatenation per record is cheaper than
# formatting
_INDEX_SUFFIXES: list[str] = []


def _suffixes(n: int) -> list[str]:
    if len(_INDEX_SUFFIXES) < n:
        _INDEX_SUFFIXES.extend(f"#{i}" for i in range(len(_INDEX_SUFFIXES), n))
    return _INDEX_SUFFIXES[:n]


def _chunk(sources: list[str], arrival: list[int], rerouted: list[bool], base: str,
           offset: int, n: int) -> None:
    """Source, arrival and origin flag of the ``n`` records of a chunk message."""
    sources.extend([base + sfx for sfx in _suffixes(n)])
    first = offset << SUB_BITS  # no index bits: first + i == first | i
    arrival.extend(range(first, first + n))
    rerouted.extend([False] * n)


@dataclass
class InBatch:
    """Validated records of one input partition, in arrival order."""

    v: Validated
    source: list[str]
    arrival: np.ndarray      # int64
    rerouted: np.ndarray     # bool: came back from another partition (SOURCE_HEADER)
    bad_messages: dict[str, int]
    # where each record was first read, parsed once per message rather than from each
    # source string: the "topic/partition" (an index into ``origins``; -1: a source of
    # an unexpected form, which the shard parses per record with parse_source) and the
    # arrival there
    origins: list[str] = field(default_factory=list)
    origin: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    origin_at: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def slice(self, start: int, stop: int) -> InBatch:
        """The records ``start:stop`` (the messages' bad-message counts stay with the
        whole batch: they are metrics, counted once)."""
        return InBatch(self.v.slice(start, stop), self.source[start:stop],
                       self.arrival[start:stop], self.rerouted[start:stop], {},
                       self.origins, self.origin[start:stop], self.origin_at[start:stop])


def parse_source(source: str) -> tuple[str, int]:
    """("topic/partition", arrival) of an engine-written ``topic/partition/offset[#i]``.

    >>> parse_source("m.transactions/3/17#2")
    ('m.transactions/3', 1114114)
    """
    where, _, pos = source.rpartition("/")
    offset, _, index = pos.partition("#")
    return where, (int(offset) << SUB_BITS) | int(index or 0)


class _Origins:
    """Per record: where it was first read and its arrival there, one parse per message."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.origin: list[int] = []
        self.at: list[int] = []

    def add(self, source: str, n: int | None = None, own: tuple[str, int] | None = None
            ) -> None:
        """The records of one message: ``source`` itself (``n`` None), or the ``n``
        records, none or more, of a chunk, sourced ``f"{source}#{i}"``. ``own``:
        ``parse_source(source)``, when the caller knows it (the message's own
        position), so it is not parsed again. (Python lists, not arrays: one-record
        messages are the common case, and two small arrays per message cost more than
        the rest of their decoding's bookkeeping.)"""
        k, at = -1, 0
        if own is None and not (n is not None and "#" in source):  # "#": per record
            with contextlib.suppress(ValueError):  # not of that form: parsed per record
                own = parse_source(source)
        if own is not None:
            where, at = own
            k = self._code(where)
        if n is not None:
            self.origin.extend([k] * n)
            self.at.extend(range(at, at + n))  # at has no index bits: at + i == at | i
        else:
            self.origin.append(k)
            self.at.append(at)

    def add_own(self, where: str, at: list[int]) -> None:
        """One-record messages read at ``where`` (``topic/partition``), arrivals
        ``at``: what :meth:`add` does for each with its own position."""
        self.origin.extend([self._code(where)] * len(at))
        self.at.extend(at)

    def _code(self, where: str) -> int:
        k = self.index.get(where, -1)
        if k < 0:
            k = self.index[where] = len(self.names)
            self.names.append(where)
        return k

    def arrays(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        return self.names, np.asarray(self.origin, np.int32), np.asarray(self.at, np.int64)


def _header(msg: Any, name: str) -> bytes | None:
    for k, v in msg.headers or ():
        if k == name:
            return bytes(v) if v is not None else b""
    return None


def _ts_us(msg: Any) -> int:
    ts = msg.timestamp
    if ts is None or ts < 0:
        return NO_TIME
    # beyond the representable range: validation rejects it, int64 must still hold it
    ts *= 1000
    return ts if ts < END_US else END_US


# what a one-record message's entry holds until its segment is shaped (its text,
# Kafka key and re-routing flag beside it): most are never decoded one by one
_UNDECODED = object()


class _Segments:
    """Accumulates consecutive JSON values into one shaping call, tables apart: plain
    one-record messages compiled together (engine.rules.plain_json), the rest decoded
    one by one."""

    def __init__(self, record_type: str, max_record_bytes: int, bad: dict[str, int]) -> None:
        self.record_type = record_type
        self.max_record_bytes = max_record_bytes
        self.bad = bad
        self.parts: list[Shaped] = []
        self.objs: list[Any] = []  # a stand-in's value, or _UNDECODED (a message)
        self.texts: list[bytes] = []
        self.ts: list[int] = []
        self.keys: list[bytes | None] = []
        self.rerouted: list[bool] = []

    def add_obj(self, obj: Any, ts: int) -> None:
        """A stand-in for what a message's records could not be told from."""
        self.add_message(b"", ts, None, False, obj)

    def add_message(self, value: bytes, ts: int, key: bytes | None, rerouted: bool,
                    obj: Any = _UNDECODED) -> None:
        self.objs.append(obj)
        self.texts.append(value)
        # a re-routed record keeps the received_at it had in its first message
        self.ts.append(NO_TIME if rerouted else ts)
        self.keys.append(key)
        self.rerouted.append(rerouted)

    def add_messages(self, values: list[bytes], ts: list[int], keys: list[bytes | None]
                     ) -> None:
        """:meth:`add_message` for each of messages read where they were published
        (none re-routed)."""
        n = len(values)
        self.objs.extend([_UNDECODED] * n)
        self.texts.extend(values)
        self.ts.extend(ts)
        self.keys.extend(keys)
        self.rerouted.extend([False] * n)

    def flush_objs(self) -> None:
        if not self.objs:
            return
        # a stand-in's text is empty: never plain, so it reaches _decoded as it is
        s, plain = shape_lines(self.texts, self.record_type, self.max_record_bytes,
                               decode=self._decoded)
        self._kafka_facts(s, plain)
        s.ts_override = np.asarray(self.ts, dtype=np.int64)
        self.parts.append(s)
        self.objs, self.texts, self.ts, self.keys, self.rerouted = [], [], [], [], []

    def _kafka_facts(self, s: Shaped, plain: np.ndarray) -> None:
        """What the Kafka envelope of the plain one-record messages says, as
        :meth:`_decoded` tells it for the others."""
        envelope = plain & ~np.asarray(self.rerouted, np.bool_)
        if not envelope.any():
            return
        if "received_at" in s.columns:
            s.columns["received_at"] = null_where(s.columns["received_at"], envelope)
        rows = pa.array(np.flatnonzero(envelope))
        keys = pa.array(self.keys, pa.binary()).take(rows)
        same = pc.equal(keys, s.columns["mykey_id"].take(rows).cast(pa.binary()))
        no_key = keys.null_count
        # a key that is there: the same as the record's mykey_id, or not (also where
        # the record has none: equal() is null there)
        wrong = len(keys) - no_key - (pc.sum(same).as_py() or 0)
        for name, count in (("no_key", no_key), ("wrong_key", wrong)):
            if count:
                self.bad[name] = self.bad.get(name, 0) + count

    def _decoded(self, i: int) -> Any:
        """Entry ``i`` as a JSON value, a one-record message decoded as its Kafka
        envelope says (stand-ins as they are)."""
        obj, value, bad = self.objs[i], self.texts[i], self.bad
        if obj is not _UNDECODED:
            return obj
        obj = load_record(value, self.max_record_bytes) if value else BadRecord("empty message")
        if isinstance(obj, BadRecord):
            bad[obj.kind] = bad.get(obj.kind, 0) + 1
        elif isinstance(obj, dict) and not self.rerouted[i]:
            # in Kafka the record timestamp *is* received_at (set to null rather
            # than removed: shaping compares the object's size with its text), but
            # an Individual Number there must still reach check 1
            ra = obj.get("received_at")
            if "received_at" in obj and not (isinstance(ra, str)
                                             and is_individual_number(ra)):
                obj["received_at"] = None
            # the key is only a routing hint: records are placed by their mykey_id
            mykey, key = obj.get("mykey_id"), self.keys[i]
            if key is None:
                bad["no_key"] = bad.get("no_key", 0) + 1
            elif type(mykey) is not str or key != mykey.encode("utf-8", "replace"):
                bad["wrong_key"] = bad.get("wrong_key", 0) + 1
        return obj

    def add_shaped(self, s: Shaped, ts: int) -> None:
        """Records shaped already (a table, a JSON Lines chunk), all with timestamp ``ts``."""
        self.flush_objs()
        s.ts_override = np.full(s.n, ts, dtype=np.int64)
        self.parts.append(s)


Flags = dict[str, tuple[int, str]]  # source -> (reason code, detail) decided elsewhere
WHOLE_MESSAGE = -1  # the flag index of a message's only (or unreadable) record


def replay_header(source: str, flags: list[tuple[int, str, str]]) -> bytes:
    """The :data:`REPLAY_HEADER` of a message replayed from the archive: its
    original position and its flags ``(index, reason name, detail)``.

    >>> replay_header("m.transactions/3/17", [(1, "PERSONAL_NUMBER_FORBIDDEN", "d")])
    b'{"source":"m.transactions/3/17","flags":[[1,"PERSONAL_NUMBER_FORBIDDEN","d"]]}'
    """
    return orjson.dumps({"source": source, "flags": [list(f) for f in flags]})


def parse_replay_header(value: bytes) -> tuple[str, Flags] | None:
    """(original source, flags by record source) of a :func:`replay_header`; None
    when it is not one (then the message is decided as what it is, where it is).

    >>> parse_replay_header(replay_header("t/1/5", [(2, "PERSONAL_NUMBER_FORBIDDEN", "d")]))
    ('t/1/5', {'t/1/5#2': (1, 'd')})
    >>> parse_replay_header(b'{"source": 5}') is None
    True
    """
    try:
        obj = orjson.loads(value)
        source, raw = obj["source"], obj["flags"]
        if type(source) is not str or type(raw) is not list:
            return None
        flags: Flags = {}
        for index, name, detail in raw:
            if type(index) is not int or type(detail) is not str:
                return None
            src = source if index == WHOLE_MESSAGE else f"{source}#{index}"
            flags[src] = (int(Reason[name]), detail)
        return source, flags
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def apply_flags(b: InBatch, flags: Flags) -> InBatch:
    """The verdicts decided before the archive redacted what caused them. A record
    rejected for an Individual Number shows no txn_id/operator_id/mykey_id, like in
    the stream."""
    if not flags:
        return b
    v = b.v
    reason = v.reason.copy()
    detail = v.detail.copy()
    pnf = np.zeros(v.n, dtype=np.bool_)
    for i, src in enumerate(b.source):
        f = flags.get(src)
        if f is not None:
            reason[i], detail[i] = f
            pnf[i] = f[0] == Reason.PERSONAL_NUMBER_FORBIDDEN
    fields = {k: null_where(getattr(v, k), pnf)
              for k in ("mykey_id", "operator_id", "txn_id", "original_txn_id")}
    b.v = replace(v, reason=reason, detail=detail, **fields)
    return b


def null_where(arr: pa.Array, mask: np.ndarray) -> pa.Array:
    if not mask.any():
        return arr
    return pc.if_else(pa.array(mask), pa.scalar(None, arr.type), arr)


@dataclass
class Msg:
    """What :func:`decode_messages` reads of a Kafka message (one read back from an
    archive, or made up)."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def decode_messages(msgs: Sequence[Any], record_type: str, campaign: Campaign,
                    registry: Registry, max_record_bytes: int,
                    internal: bool = False, replay: bool = False,
                    source_operator: Callable[[str], str | None] | None = None,
                    starts: list[int] | None = None) -> InBatch:
    """``internal``: the messages come from the engine's own re-routing topic, the
    only place where a :data:`SOURCE_HEADER` is believed. ``replay``: they come
    from ``publish --archive`` (a worker started with ``--replay``), the only
    place where a :data:`REPLAY_HEADER` is believed: its original position is the
    records' source and its flags their verdicts. ``source_operator``: the
    operator of an input topic (None: not an operator's topic); a record's is that of
    the topic it was published to (for a re-routed or replayed record, the topic its
    trusted source names), and its ``operator_id`` must match it (OPERATOR_MISMATCH).
    ``starts``: filled with the index of each message's first record (messages of
    several partitions are decoded in one call, then sliced by partition)."""
    bad: dict[str, int] = {}
    seg = _Segments(record_type, max_record_bytes, bad)
    sources: list[str] = []
    arrival: list[int] = []
    rerouted: list[bool] = []
    origins = _Origins()
    flags: Flags = {}
    for run in _runs(msgs):
        m = run[0]
        if not m.headers:
            _plain_run(run, seg, sources, arrival, rerouted, origins, starts)
            continue
        if starts is not None:
            starts.append(len(sources))
        where = f"{m.topic}/{m.partition}"
        base = f"{where}/{m.offset}"
        own: tuple[str, int] | None = (where, m.offset << SUB_BITS)  # parse_source(base)
        replayed = _header(m, REPLAY_HEADER) if replay else None
        if replayed is not None:
            parsed = parse_replay_header(replayed)
            if parsed is not None:
                base, own = parsed[0], None
                flags.update(parsed[1])
        fmt = _header(m, FORMAT_HEADER)
        ts = _ts_us(m)
        value = m.value if m.value is not None else b""
        if fmt is None:
            origin = _header(m, SOURCE_HEADER) if internal else None
            seg.add_message(value, ts, m.key, origin is not None)
            sources.append(origin.decode("utf-8", "replace") if origin else base)
            arrival.append(m.offset << SUB_BITS)
            rerouted.append(origin is not None)
            origins.add(sources[-1], own=own if origin is None else None)
        elif fmt == FORMAT_JSONL:
            lines, _ = split_lines(value)
            if len(lines) > MAX_RECORDS_PER_MESSAGE:
                _bad_message(seg, bad, sources, arrival, rerouted, origins, base, m.offset, ts,
                             f"message carries more than {MAX_RECORDS_PER_MESSAGE} records")
                continue
            # a chunk's records carry their own received_at, or none (see
            # schemas/batch-message.md: the message timestamp is not lent)
            seg.add_shaped(shape_lines(lines, record_type, max_record_bytes, bad)[0], NO_TIME)
            _chunk(sources, arrival, rerouted, base, m.offset, len(lines))
            origins.add(base, len(lines), own)
        elif fmt == FORMAT_ARROW:
            try:
                if _ipc_body_compressed(value):
                    # decompressed before any check could bound its size (a 1 MB
                    # message can claim gigabytes); Kafka compresses messages anyway
                    _bad_message(seg, bad, sources, arrival, rerouted, origins, base, m.offset, ts,
                                 "message uses Arrow IPC body compression (not accepted: "
                                 "compress at the Kafka level)")
                    continue
                table = pa.ipc.open_stream(value).read_all()
                # offsets and UTF-8 too: the string kernels read raw buffers
                table.validate(full=True)
            except (pa.ArrowException, OSError, ValueError, struct.error, IndexError):
                _bad_message(seg, bad, sources, arrival, rerouted, origins, base, m.offset, ts,
                             "message is not a valid Arrow IPC stream")
                continue
            if table.num_rows > MAX_RECORDS_PER_MESSAGE:
                _bad_message(seg, bad, sources, arrival, rerouted, origins, base, m.offset, ts,
                             f"message carries more than {MAX_RECORDS_PER_MESSAGE} records")
                continue
            try:
                seg.add_shaped(shape_table(table, record_type), NO_TIME)
            except Exception as e:  # a last line of defence: Arrow's type space is open
                _bad_message(seg, bad, sources, arrival, rerouted, origins, base, m.offset, ts,
                             "message has an Arrow layout the engine cannot read "
                             f"({type(e).__name__})")
                continue
            _chunk(sources, arrival, rerouted, base, m.offset, table.num_rows)
            origins.add(base, table.num_rows, own)
        else:
            _bad_message(seg, bad, sources, arrival, rerouted, origins, base, m.offset, ts,
                         f"unknown {FORMAT_HEADER} header")
    seg.flush_objs()
    names, origin_ix, origin_at = origins.arrays()
    if source_operator is not None:
        _set_source_operators(seg.parts, sources, names, origin_ix, source_operator)
    validate = validate_transactions if record_type == "transaction" else validate_enrollments
    parts = [validate(s, campaign, registry) for s in seg.parts]
    v = concat_validated(parts, record_type)
    return apply_flags(InBatch(v, sources, np.asarray(arrival, dtype=np.int64),
                               np.asarray(rerouted, dtype=np.bool_), bad, names, origin_ix,
                               origin_at), flags)


def _runs(msgs: Sequence[Any]) -> Iterator[list[Any]]:
    """The messages in order, as lists: each run of consecutive messages of one
    topic-partition without headers, and each message with headers alone. Most live
    traffic is one-record messages, and a run is decoded in a few list operations
    rather than per message (:func:`_plain_run`)."""
    i, n = 0, len(msgs)
    while i < n:
        m = msgs[i]
        j = i + 1
        if not m.headers:
            topic, partition = m.topic, m.partition
            while (j < n and not (x := msgs[j]).headers and x.partition == partition
                   and x.topic == topic):
                j += 1
        yield list(msgs[i:j])
        i = j


def _plain_run(run: list[Any], seg: _Segments, sources: list[str], arrival: list[int],
               rerouted: list[bool], origins: _Origins, starts: list[int] | None) -> None:
    """What :func:`decode_messages` does for each message of ``run`` (one
    topic-partition, no headers, so no format, source or replay header: one JSON
    record, read where it was published), for the run at once."""
    n = len(run)
    if starts is not None:
        starts.extend(range(len(sources), len(sources) + n))
    where = f"{run[0].topic}/{run[0].partition}"
    offsets = [m.offset for m in run]
    sources.extend([f"{where}/{o}" for o in offsets])
    at = [o << SUB_BITS for o in offsets]
    arrival.extend(at)
    rerouted.extend([False] * n)
    origins.add_own(where, at)
    seg.add_messages([b"" if m.value is None else m.value for m in run],
                     [_ts_us(m) for m in run], [m.key for m in run])


def decode_groups(groups: Sequence[Sequence[Any]], record_type: str, campaign: Campaign,
                  registry: Registry, max_record_bytes: int, **kw: Any
                  ) -> tuple[InBatch, list[InBatch]]:
    """Several groups of messages (one per partition) decoded in one
    :func:`decode_messages` call (``kw``: its options): the whole batch (its counts
    are the metrics') and each group's records, sliced from it. Validation costs about
    as much for fifty records as for one, and live traffic brings a few records per
    partition to every poll."""
    starts: list[int] = []
    b = decode_messages([m for g in groups for m in g], record_type, campaign, registry,
                        max_record_bytes, starts=starts, **kw)
    starts.append(b.v.n)
    bounds = np.cumsum([0, *map(len, groups)]).tolist()
    return b, [b.slice(starts[lo], starts[hi]) for lo, hi in itertools.pairwise(bounds)]


def _set_source_operators(parts: list[Shaped], sources: list[str], names: list[str],
                          origin: np.ndarray, operator_of: Callable[[str], str | None]
                          ) -> None:
    """Each record's source operator, from the topic its source names: looked up once
    per ``topic/partition`` it was first read at (``names``, by the records' ``origin``;
    a source that is a prefix of the record's), per record only where that is unknown
    (-1). Sources and shaped parts hold the records in the same order."""
    by_topic: dict[str, str | None] = {}

    def op(src: str) -> str | None:
        topic = src.partition("/")[0]
        if topic not in by_topic:
            by_topic[topic] = operator_of(topic)
        return by_topic[topic]

    ops = np.array([*map(op, names), None], dtype=object)[origin]
    for i in np.flatnonzero(origin < 0).tolist():
        ops[i] = op(sources[i])
    if not any(v is not None for v in by_topic.values()):
        return
    at = 0
    for s in parts:
        s.source_operator = pa.array(ops[at:at + s.n], type=pa.string())
        at += s.n


def records_by_topic(b: InBatch) -> dict[str, int]:
    """How many of ``b``'s records were first read from each topic (the topic of each
    one's source), counted per origin rather than per record."""
    counts: dict[str, int] = {}
    # a source of no usual form (no origin, or one without a partition) per record
    usual = np.array([*("/" in w for w in b.origins), False])
    odd = ~usual[b.origin]
    per = np.bincount(b.origin[~odd], minlength=len(b.origins))
    for where, n in zip(b.origins, per.tolist(), strict=True):
        if n:
            topic = where.partition("/")[0]
            counts[topic] = counts.get(topic, 0) + n
    for i in np.flatnonzero(odd).tolist():
        topic = b.source[i].partition("/")[0]
        counts[topic] = counts.get(topic, 0) + 1
    return counts


def concat_batches(batches: list[InBatch]) -> InBatch | None:
    """One batch of several decoded ones of a record type (public, then re-routed)."""
    if not batches:
        return None
    if len(batches) == 1:
        return batches[0]
    bad: dict[str, int] = {}
    for b in batches:
        for k, n in b.bad_messages.items():
            bad[k] = bad.get(k, 0) + n
    names: list[str] = []
    origin: list[np.ndarray] = []
    for b in batches:  # each batch's indices move past the names before its own
        origin.append(np.where(b.origin >= 0, b.origin + len(names), -1).astype(np.int32))
        names += b.origins
    return InBatch(concat_validated([b.v for b in batches], batches[0].v.record_type),
                   [s for b in batches for s in b.source],
                   np.concatenate([b.arrival for b in batches]),
                   np.concatenate([b.rerouted for b in batches]), bad, names,
                   np.concatenate(origin), np.concatenate([b.origin_at for b in batches]))


def _ipc_body_compressed(value: bytes) -> bool:
    """Whether a record or dictionary batch of an Arrow IPC stream declares body
    compression: read from the messages' flatbuffer metadata, before any body is
    decoded. (Arrow's format: Message.header -> RecordBatch, or DictionaryBatch.data
    -> RecordBatch; RecordBatch field 3 is ``compression``.)"""
    reader = pa.ipc.MessageReader.open_stream(value)
    while True:
        try:
            msg = reader.read_next_message()
        except StopIteration:
            return False
        if msg is None:
            return False
        meta = msg.metadata.to_pybytes()
        root = struct.unpack_from("<I", meta, 0)[0]
        kind = _fb_field(meta, root, 1)
        header = _fb_field(meta, root, 2)
        if kind is None or header is None:
            continue
        header_type = meta[kind]
        batch = header + struct.unpack_from("<I", meta, header)[0]
        if header_type == 2:  # DictionaryBatch: its RecordBatch is field 1
            data = _fb_field(meta, batch, 1)
            if data is None:
                continue
            batch = data + struct.unpack_from("<I", meta, data)[0]
        elif header_type != 3:  # not a RecordBatch
            continue
        if _fb_field(meta, batch, 3) is not None:
            return True


def _fb_field(buf: bytes, table: int, i: int) -> int | None:
    """Position of field ``i`` of the flatbuffer table at ``table``, None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vt_size = struct.unpack_from("<H", buf, vtable)[0]
    if 4 + 2 * i >= vt_size:
        return None
    off: int = struct.unpack_from("<H", buf, vtable + 4 + 2 * i)[0]
    return table + off if off else None


def _bad_message(seg: _Segments, bad: dict[str, int], sources: list[str], arrival: list[int],
                 rerouted: list[bool], origins: _Origins, base: str, offset: int, ts: int,
                 detail: str) -> None:
    """A message whose records cannot be told apart gets one MALFORMED outcome."""
    bad["bad_batch"] = bad.get("bad_batch", 0) + 1
    seg.add_obj(BadRecord(detail, "bad_batch"), ts)
    sources.append(base)
    arrival.append(offset << SUB_BITS)
    rerouted.append(False)
    origins.add(base)
