"""Replaying the archive: its messages back into validated record batches.

Each archived message is rebuilt (position, timestamp, key, headers, redacted
value) and decoded by the stream's own decoder, so every record gets the source
``topic/partition/offset[#i]`` and the ``received_at`` it had in the stream; the
flagged records then take the verdict the stream gave them from the flag (the
Individual Number that caused it is gone). ``mynapoint settle --archive``
decides the result offline, like any whole input.
"""

from __future__ import annotations

import pyarrow as pa

from engine.archive.redact import MESSAGE
from engine.archive.store import Archive
from engine.io.readers import split_lines
from engine.kafka.topics import MAX_RECORD_BYTES, REPLAY_HEADER, Topics
from engine.rules.model import Campaign, Reason, Registry
from engine.rules.validate import Validated, empty_validated
from engine.streams.decode import (
    Flags,
    InBatch,
    Msg,
    apply_flags,
    concat_batches,
    decode_messages,
    replay_header,
)
from engine.streams.order import merge_topics

# What a flagged JSON record is replayed as: a value that is not an object, which the
# decoder shapes exactly like a record rejected at check 1 (no field is read); the
# flag then gives it the stream's verdict.
_STAND_IN = b'"[REDACTED]"'


def _stand_in(fmt: str, value: bytes | None, indexes: list[int]) -> bytes | None:
    if not indexes or value is None:
        return value
    if fmt == "record" and MESSAGE in indexes:
        return _STAND_IN
    if fmt == "jsonl" and MESSAGE not in indexes:
        lines, _ = split_lines(value)
        for i in indexes:
            lines[i] = _STAND_IN
        return b"".join(line + b"\n" for line in lines)
    return value


def messages(table: pa.Table) -> list[Msg]:
    cols = {name: table.column(name).to_pylist()
            for name in ("topic", "partition", "offset", "timestamp", "key", "value", "headers",
                         "format", "flags")}
    return [Msg(t, p, o, ts, k, _stand_in(fmt, v, [f["index"] for f in fl]),
                [(h["key"], h["value"] or b"") for h in hs])
            for t, p, o, ts, k, v, hs, fmt, fl in zip(
                cols["topic"], cols["partition"], cols["offset"], cols["timestamp"],
                cols["key"], cols["value"], cols["headers"], cols["format"], cols["flags"],
                strict=True)]


def replay_messages(table: pa.Table) -> list[Msg]:
    """The table's messages as ``publish --archive`` sends them: each with a
    :data:`REPLAY_HEADER` holding its original position and its flags, for a
    ``--replay`` worker. A header of that name the sender had set is dropped: it
    was never believed on the public topic and must not become believable."""
    out = messages(table)
    for m, fl in zip(out, table.column("flags").to_pylist(), strict=True):
        own = replay_header(f"{m.topic}/{m.partition}/{m.offset}",
                            [(f["index"], f["reason"], f["detail"]) for f in fl])
        m.headers = [(k, v) for k, v in m.headers if k != REPLAY_HEADER]
        m.headers.append((REPLAY_HEADER, own))
    return out


def flagged(table: pa.Table) -> Flags:
    """source -> (reason code, detail) of the table's flagged records."""
    out: dict[str, tuple[int, str]] = {}
    for t, p, o, fl in zip(*(table.column(c).to_pylist()
                             for c in ("topic", "partition", "offset", "flags")), strict=True):
        for f in fl:
            src = f"{t}/{p}/{o}" + (f"#{f['index']}" if f["index"] != MESSAGE else "")
            out[src] = (int(Reason[f["reason"]]), f["detail"])
    return out


def read_archive(archive: Archive, record_type: str, campaign: Campaign,
                 registry: Registry) -> tuple[Validated, pa.Array]:
    """All archived records of a type, validated, with their stream sources; each
    checked against the operator of the topic it was read from, as the stream did.
    Enrollments in the order the stream decided them: per partition, the operators'
    topics merged by message timestamp (engine.streams.order)."""
    parts: list[InBatch] = []
    if record_type == "enrollment":
        by_partition: dict[int, dict[str, list[Msg]]] = {}
        flags: Flags = {}
        for table in archive.tables(record_type):
            flags.update(flagged(table))
            for m in messages(table):
                by_partition.setdefault(m.partition, {}).setdefault(m.topic, []).append(m)
        for p in sorted(by_partition):
            seqs = {t: sorted(ms, key=lambda m: m.offset) for t, ms in by_partition[p].items()}
            merged, _ = merge_topics(seqs, set())
            b = decode_messages(merged, record_type, campaign, registry, MAX_RECORD_BYTES,
                                source_operator=Topics.operator_of)
            parts.append(apply_flags(b, flags))
    else:
        for table in archive.tables(record_type):
            b = decode_messages(messages(table), record_type, campaign, registry,
                                MAX_RECORD_BYTES, source_operator=Topics.operator_of)
            parts.append(apply_flags(b, flagged(table)))
    batch = concat_batches(parts)
    if batch is None:
        return empty_validated(record_type), pa.array([], type=pa.string())
    return batch.v, pa.array(batch.source, type=pa.string())
