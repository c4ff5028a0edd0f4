"""Poison through the decoder and offline: every record of tests/poison_records.py gets
exactly one outcome with the expected reason and a bounded detail, the same in a
one-record message, a JSON Lines chunk, an Arrow IPC message, a JSON Lines file and a
Parquet file; and arbitrary JSON never makes any of them raise."""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.io.readers import load_record
from engine.kafka.topics import (
    FORMAT_ARROW,
    FORMAT_HEADER,
    FORMAT_JSONL,
    MAX_RECORDS_PER_MESSAGE,
)
from engine.rules.model import NO_TIME, Reason
from engine.rules.validate import shape_objects, validate_transactions
from engine.streams.decode import InBatch, decode_messages
from engine.tools.settle import settle_files
from tests.poison_records import (
    ENROLLMENT,
    GRANT,
    PARQUET_CANNOT_HOLD,
    PERSON,
    PII,
    Poison,
    arrow_poison,
    base,
    enrollment_poison,
    invalid_utf8_table,
    ipc,
    json_poison,
)

Msg = namedtuple("Msg", "topic partition offset timestamp key value headers")
TS_MS = 1_593_561_600_000  # 2020-07-01T00:00:00Z
STATELESS = {"PERSONAL_NUMBER_FORBIDDEN", "MALFORMED", "INVALID_AMOUNT", "UNKNOWN_OPERATOR"}
MAX_DETAIL = 200


def decode(msgs: list[Msg], record_type: str = "transaction") -> InBatch:
    return decode_messages(msgs, record_type, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20)


def one_record(texts: list[bytes], record_type: str = "transaction") -> InBatch:
    return decode([Msg("t", 0, i, TS_MS, PERSON.encode(), t, None)
                   for i, t in enumerate(texts)], record_type)


def chunk(texts: list[bytes], record_type: str = "transaction") -> InBatch:
    return decode([Msg("t", 0, 0, TS_MS, None, b"\n".join(texts),
                       [(FORMAT_HEADER, FORMAT_JSONL)])], record_type)


def arrow(tables: list[pa.Table]) -> InBatch:
    return decode([Msg("t", 0, i, TS_MS, None, ipc(t), [(FORMAT_HEADER, FORMAT_ARROW)])
                   for i, t in enumerate(tables)])


def stateless(b: InBatch) -> list[tuple[str | None, str | None]]:
    return [(Reason(int(r)).name if r else None, d)
            for r, d in zip(b.v.reason, b.v.detail, strict=True)]


def offline(tmp: Path, transactions: Path) -> list[tuple[str, str | None]]:
    """(reason or GRANT, detail) per transaction row, in file order, from settle."""
    enr = tmp / "enrollments.jsonl"
    enr.write_bytes(orjson.dumps(ENROLLMENT) + b"\n")
    res = settle_files(enr, transactions, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY)
    by_source: dict[str, tuple[str, str | None]] = {}
    for r in res.rejections.to_pylist():
        if r["record_type"] == "transaction":
            by_source[r["source"]] = (r["reason"], r["detail"])
    for g in res.grants.to_pylist():
        by_source[g["source"]] = (GRANT, None)
    assert len(by_source) == res.summary["records_in"]["transactions"]
    return [by_source[s] for s in sorted(by_source, key=lambda s: int(s.rsplit(":", 1)[1]))]


def check(p: Poison, got: tuple[str | None, str | None], final: bool = False) -> None:
    reason, detail = got
    want = p.reason if final or p.reason in STATELESS else None
    if final and p.reason == GRANT:
        assert reason == GRANT, (p.name, got)
        return
    assert reason == want, (p.name, got)
    if reason is not None and p.detail:
        assert detail is not None and p.detail in detail, (p.name, detail)
    assert len(detail or "") <= MAX_DETAIL and PII not in (detail or ""), (p.name, detail)


CATALOGUE = json_poison("pz")


def test_json_poison_in_every_message_format_and_offline(tmp_path: Path) -> None:
    texts = [p.text for p in CATALOGUE]
    for batch in (one_record(texts), chunk(texts)):
        assert batch.v.n == len(CATALOGUE)
        for p, got in zip(CATALOGUE, stateless(batch), strict=True):
            check(p, got)
    f = tmp_path / "transactions.jsonl"
    f.write_bytes(b"\n".join(texts) + b"\n")
    for p, got in zip(CATALOGUE, offline(tmp_path, f), strict=True):
        check(p, got, final=True)
    # the same records as Arrow, where Arrow can hold them, are judged alike
    rep = [p for p in CATALOGUE if p.table is not None]
    assert len(rep) > 25
    for p, got in zip(rep, stateless(arrow([p.table for p in rep])), strict=True):
        check(p, got)


def test_enrollment_poison_in_every_message_format_and_offline(tmp_path: Path) -> None:
    catalogue = enrollment_poison("enr")
    texts = [c for c in catalogue if c.text]
    tables = [c for c in catalogue if c.table is not None]
    assert len(texts) > 10 and len(tables) > 4
    batches = (one_record([c.text for c in texts], "enrollment"),
               chunk([c.text for c in texts], "enrollment"))
    for c, got in [(c, g) for b in batches for c, g in zip(texts, stateless(b), strict=True)]:
        check(c, got)
    b = decode([Msg("t", 0, i, TS_MS, None, ipc(c.table), [(FORMAT_HEADER, FORMAT_ARROW)])
                for i, c in enumerate(tables) if c.table is not None], "enrollment")
    for c, got in zip(tables, stateless(b), strict=True):
        check(c, got)
    enr, txn = tmp_path / "enrollments.jsonl", tmp_path / "transactions.jsonl"
    enr.write_bytes(b"\n".join(c.text for c in texts) + b"\n")
    txn.write_bytes(b"")
    res = settle_files(enr, txn, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY)
    final = {r["source"]: (r["reason"], r["detail"]) for r in res.rejections.to_pylist()}
    for i, c in enumerate(texts):
        check(c, final[f"enrollments.jsonl:{i + 1}"], final=True)


@pytest.mark.parametrize("p", arrow_poison("pa"), ids=lambda p: p.name)
def test_arrow_poison_in_a_message_and_in_parquet(p: Poison, tmp_path: Path) -> None:
    assert p.table is not None
    b = arrow([p.table])
    assert b.v.n == p.table.num_rows and b.source == [f"t/0/0#{i}"
                                                     for i in range(p.table.num_rows)]
    for got in stateless(b):
        check(p, got)
    f = tmp_path / "transactions.parquet"
    if p.name in PARQUET_CANNOT_HOLD:
        with pytest.raises(pa.ArrowException):  # so the engine never meets them offline
            pq.write_table(p.table, f)
        return
    pq.write_table(p.table, f)
    outs = offline(tmp_path, f)
    assert len(outs) == p.table.num_rows
    for got in outs:
        check(p, got, final=True)


def test_an_arrow_message_with_invalid_utf8_is_one_malformed_outcome() -> None:
    b = arrow([invalid_utf8_table("u")])
    assert stateless(b) == [("MALFORMED", "message is not a valid Arrow IPC stream")]
    assert b.source == ["t/0/0"] and b.bad_messages == {"bad_batch": 1}


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_an_arrow_message_with_compressed_buffers_is_one_malformed_outcome(codec: str) -> None:
    # its size is unknown until decompressed: a 1 MB message could claim gigabytes
    table = pa.Table.from_pylist([base("c-1")])
    dictionary = table.append_column("d", pa.array(["x"]).dictionary_encode())
    for t in (table, dictionary):
        b = decode([Msg("t", 0, 0, TS_MS, None, ipc(t, codec), [(FORMAT_HEADER, FORMAT_ARROW)]),
                    Msg("t", 0, 1, TS_MS, None, ipc(t), [(FORMAT_HEADER, FORMAT_ARROW)])])
        [(reason, detail), plain] = stateless(b)
        assert reason == "MALFORMED" and "Arrow IPC body compression" in (detail or "")
        assert b.source == ["t/0/0", "t/0/1#0"] and plain[0] != "MALFORMED"


def test_a_chunk_over_the_record_limit_is_one_malformed_outcome() -> None:
    b = chunk([b"{}"] * (MAX_RECORDS_PER_MESSAGE + 1))
    assert stateless(b) == [("MALFORMED", f"message carries more than "
                                          f"{MAX_RECORDS_PER_MESSAGE} records")]


def test_a_kafka_timestamp_beyond_year_9999_is_malformed_and_moves_no_clock() -> None:
    text = CATALOGUE[-1].text.replace(b'"received_at"', b'"ignored"')
    b = decode([Msg("t", 0, 0, 2**62, PERSON.encode(), text, None)])
    [(reason, detail)] = stateless(b)
    assert reason == "MALFORMED" and "Kafka record timestamp" in (detail or "")
    assert b.v.received.tolist() == [NO_TIME]
    # a bad received_at of a chunk record moves no clock either
    bad = [text.replace(b'"ignored":"9999-12-31T23:59:59Z"', b'"received_at":' + v)
           for v in (b'"0000-01-01T00:00:00Z"', b'"2020-09-13T23:59:60Z"', b"[1]")]
    b = chunk(bad)
    assert [r for r, _ in stateless(b)] == ["MALFORMED"] * 3
    assert b.v.received.tolist() == [NO_TIME] * 3


# ---------------------------------------------------------------- property test

_weird_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False),
    st.sampled_from([0, 1, -1, 100, 100.0, 1e3, 2**63 - 1, 2**63, 2**64, -(2**64), 1e308]))
_weird_strings = st.one_of(
    st.text(max_size=20), st.sampled_from([PII, "123456789019", PII[:11], "x" * 5000,
                                           "\x00", "\U0001F600", "2020-09-13T12:00:00Z",
                                           "purchase", "refund", "paypay", PERSON]))
_json = st.recursive(st.none() | st.booleans() | _weird_numbers | _weird_strings,
                     lambda c: st.lists(c, max_size=4)
                     | st.dictionaries(_weird_strings, c, max_size=4), max_leaves=20)
_FIELDS = ("txn_id", "operator_id", "mykey_id", "kind", "amount", "occurred_at",
           "original_txn_id", "received_at")


_ENR_FIELDS = ("mykey_id", "operator_id", "applied_at", "earn_on", "received_at")


@st.composite
def records(draw: st.DrawFn, record_type: str = "transaction") -> tuple[bytes, Any]:
    """A base record with fields dropped, replaced by arbitrary JSON or extra fields
    added, as text (stdlib json: it writes any integer, and NaN/Infinity as the
    invalid JSON a careless producer sends) plus, sometimes, a deep extra member."""
    rec: dict[str, Any] = {"txn_id": "t", "operator_id": "paypay", "mykey_id": PERSON,
                           "kind": "purchase", "amount": 100,
                           "occurred_at": "2020-09-13T12:00:00Z"}
    if record_type == "enrollment":
        rec = dict(ENROLLMENT)
    for f in _FIELDS if record_type == "transaction" else _ENR_FIELDS:
        action = draw(st.sampled_from(["keep", "keep", "drop", "replace"]))
        if action == "drop":
            rec.pop(f, None)
        elif action == "replace":
            rec[f] = draw(_json)
    rec.update(draw(st.dictionaries(_weird_strings, _json, max_size=3)))
    text = json.dumps(rec).encode()
    depth = draw(st.sampled_from([0, 0, 0, 5, 300, 1023, 1030]))
    if depth and text != b"{}":
        leaf = orjson.dumps(draw(_weird_strings))
        text = text[:-1] + b', "deep-member-0f3a": ' + b"[" * depth + leaf + b"]" * depth + b"}"
    top = draw(st.sampled_from(["object", "object", "object", "array", "string"]))
    if top == "array":
        text = b"[" + text + b"]"
    elif top == "string":
        text = orjson.dumps(text.decode())
    return text, rec


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(st.lists(records(), min_size=1, max_size=8))
def test_arbitrary_json_gets_one_outcome_the_same_in_every_format(
        tmp_path: Path, recs: list[tuple[bytes, Any]]) -> None:
    texts = [t for t, _ in recs]
    got_one = stateless(one_record(texts))
    got_chunk = stateless(chunk(texts))
    values = [load_record(t) for t in texts]
    direct = validate_transactions(shape_objects(values, "transaction"), DEFAULT_CAMPAIGN,
                                   DEFAULT_REGISTRY)
    assert len(got_one) == len(got_chunk) == len(texts) == direct.n
    for one, in_chunk, value in zip(got_one, got_chunk, values, strict=True):
        # a one-record message's received_at is its Kafka timestamp: the field is ignored
        if not (isinstance(value, dict) and "received_at" in value):
            assert one == in_chunk
    f = tmp_path / "transactions.jsonl"
    f.write_bytes(b"\n".join(texts) + b"\n")
    final = offline(tmp_path, f)
    for (reason, detail), (off_reason, off_detail), text, d_reason in zip(
            got_chunk, final, texts, direct.reason, strict=True):
        assert len(detail or "") <= MAX_DETAIL and PII not in (detail or "")
        if reason is not None:
            assert (off_reason, off_detail) == (reason, detail)
        else:
            assert off_reason not in STATELESS
        # without the text, a repeated key or an over-deep object cannot be seen, and
        # a value the text hid behind a repeated key is gone; otherwise the same
        if b"[" * 1024 not in text:
            assert (Reason(int(d_reason)).name if d_reason else None) == reason
    # one-row Arrow tables of the decoded records, where Arrow can hold them
    for (reason, _), value in zip(got_chunk, values, strict=True):
        if not isinstance(value, dict):
            continue
        try:
            table = pa.Table.from_pylist([value])
            data = ipc(table)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            continue
        if table.num_rows != 1:
            continue  # {} makes a table of no columns and no rows: no record to decide
        [(a_reason, _)] = stateless(decode([Msg("t", 0, 0, None, None, data,
                                                [(FORMAT_HEADER, FORMAT_ARROW)])]))
        assert a_reason == reason, (value, reason, a_reason)



@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(st.lists(records("enrollment"), min_size=1, max_size=8))
def test_arbitrary_json_as_enrollments_gets_one_outcome_the_same_in_every_format(
        tmp_path: Path, recs: list[tuple[bytes, Any]]) -> None:
    texts = [t for t, _ in recs]
    got_one = stateless(one_record(texts, "enrollment"))
    got_chunk = stateless(chunk(texts, "enrollment"))
    enr, txn = tmp_path / "enrollments.jsonl", tmp_path / "transactions.jsonl"
    enr.write_bytes(b"\n".join(texts) + b"\n")
    txn.write_bytes(b"")
    res = settle_files(enr, txn, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY)
    final = {r["source"]: (r["reason"], r["detail"]) for r in res.rejections.to_pylist()}
    assert len(got_one) == len(got_chunk) == len(texts)
    for i, (text, one, (reason, detail)) in enumerate(zip(texts, got_one, got_chunk,
                                                          strict=True)):
        value = load_record(text)
        if not (isinstance(value, dict) and "received_at" in value):
            assert one == (reason, detail)
        assert len(detail or "") <= MAX_DETAIL and PII not in (detail or "")
        off = final.get(f"enrollments.jsonl:{i + 1}")  # an accepted one has no outcome
        if reason is not None:
            assert off == (reason, detail)
        else:
            assert off is None or off[0] not in STATELESS
