"""``publish`` and ``collect`` against a real local broker.

publish: routing, headers, byte-exact JSON Lines, timestamps, Arrow IPC batches
and the manifest, checked by reading the raw input topics back. collect:
hand-made output messages, including redelivered and conflicting copies.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections import namedtuple
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import DEFAULT_REGISTRY
from engine.devtools import broker as devbroker
from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA
from engine.kafka.produce import Outgoing
from engine.kafka.topics import (
    FORMAT_ARROW,
    FORMAT_HEADER,
    FORMAT_JSONL,
    Topics,
    ensure_topics,
    partition_for,
    topic_partitions,
)
from engine.streams.codec_out import (
    OutputDecodeError,
    format_utc,
    grant_from_json,
    grant_to_json,
    rejection_from_json,
    rejection_to_json,
)
from engine.tools import collect as collect_mod
from engine.tools import publish as publish_mod
from tests.builders import write_lines
from tests.kafka_fixtures import produce, read_topic

PARTS = 8
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = TypeVar("T")

# ------------------------------------------------------------------ helpers


def _present(v: T | None) -> T:
    """A value the test's own input always has (a key, an operator, a message's value)."""
    assert v is not None
    return v


def _ms(text: str) -> int:
    return (datetime.fromisoformat(text) - EPOCH) // timedelta(milliseconds=1)


def _expected_ts(line: bytes, record_type: str) -> int:
    """What publish must use as the message timestamp of one record (-1: none)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return -1
    if not isinstance(obj, dict):
        return -1
    fields = ("received_at", "applied_at") if record_type == "enrollment" \
        else ("received_at", "occurred_at")
    for f in fields:
        v = obj.get(f)
        if isinstance(v, str):
            return _ms(v)
    return -1


def _route(line: bytes) -> tuple[bytes | None, int]:
    """(key, partition) a record line must be published with."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("mykey_id"), str):
        key = obj["mykey_id"].encode()
        return key, partition_for(key, PARTS)
    return None, partition_for(line, PARTS)


def _numbered(lines: list[bytes]) -> dict[int, bytes]:
    """1-based physical line number -> line, blank lines left out."""
    return {i + 1: line for i, line in enumerate(lines) if line.strip()}


async def _read_topic(bootstrap: str, topic: str) -> list[Any]:
    return await read_topic(bootstrap, topic, PARTS)


def _by_source(msgs: list[Any]) -> dict[str, Any]:
    return {f"{m.topic}/{m.partition}/{m.offset}": m for m in msgs}


def _manifest(path: Path) -> dict[str, tuple[str, str]]:
    t = pq.read_table(path)
    assert t.column_names == ["input_source", "record_type", "kafka_source"]
    rows = t.to_pylist()
    out = {r["input_source"]: (r["record_type"], r["kafka_source"]) for r in rows}
    assert len(out) == len(rows)
    assert len({r["kafka_source"] for r in rows}) == len(rows), "kafka_source not distinct"
    return out


def _topics(prefix: str) -> Topics:
    return Topics(prefix, operators=tuple(o.id for o in DEFAULT_REGISTRY.operators))


def _publish(bootstrap: str, prefix: str, **kw: Any) -> dict[str, Any]:
    return asyncio.run(publish_mod.publish_files(bootstrap, _topics(prefix),
                                                 partitions=PARTS, **kw))


def _expected_topic(line: bytes, record_type: str, topics: Topics) -> str:
    """Where ``publish`` routes a line: its operator's input, else the unattributed."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        obj = None
    op = obj.get("operator_id") if isinstance(obj, dict) else None
    return topics.input_of(op if op in topics.operators else None, record_type)


async def _read_inputs(bootstrap: str, topics: Topics, record_type: str) -> list[Any]:
    """Every input message of a record type, all operators' topics together."""
    names = topics.enrollment_inputs if record_type == "enrollment" \
        else topics.transaction_inputs
    existing = await topic_partitions(bootstrap, list(names))  # publish made those it used
    return [m for name in names if name in existing
            for m in await read_topic(bootstrap, name, PARTS)]


ENROLLMENT_LINES = [
    b'{"mykey_id":"AB12cd34","operator_id":"paypay","applied_at":"2020-09-01T10:00:00+09:00"}',
    b"",
    b'{"mykey_id":"Zz98Yx76","operator_id":"suica","applied_at":"2020-09-02T10:00:00+09:00",'
    b'"received_at":"2020-09-02T10:00:01.5009+09:00"}',
    b'{"mykey_id":"AB12cd34","operator_id":"paypay","applied_at":"2020-09-0',   # malformed
    b'{"operator_id":"paypay","applied_at":"2020-09-03T00:00:00Z"}',           # no mykey_id
    b"[1, 2, 3]",                                                             # not an object
    b'  {"mykey_id" : "Q1w2E3r4",  "operator_id":"aupay", "applied_at":"2020-09-05T00:00:00Z"} ',
    b'{"mykey_id": 12345678, "applied_at": "2020-09-05T00:00:00Z"}',          # not a string
    b"   ",
    b'{"mykey_id":"\\u0041B12cd34","operator_id":"paypay","applied_at":"2020-09-06T00:00:00Z"}\r',
    b"\xff\xfe not utf-8",
]


def _transaction_lines(n: int = 300) -> list[bytes]:
    people = [f"P{i:03d}abcd" for i in range(12)]
    lines: list[bytes] = []
    for i in range(n):
        rec: dict[str, Any] = {"txn_id": f"t{i}", "operator_id": "paypay",
                               "mykey_id": people[(i * 7) % len(people)], "kind": "charge",
                               "amount": 100 + i,
                               "occurred_at": f"2020-09-{1 + i % 28:02d}T12:00:00+09:00"}
        if i % 3 == 0:
            rec["received_at"] = f"2020-10-{1 + i % 28:02d}T00:00:00.{i:06d}Z"
        lines.append(orjson.dumps(rec))
        if i % 37 == 5:
            lines.append(b'{"txn_id":"broken"')
        if i % 53 == 7:
            lines.append(b"")
        if i % 61 == 11:
            lines.append(b'{"txn_id":"x","amount":1}')
    lines.append(b'"just a string"')
    return lines


# ------------------------------------------------------------------ publish


def test_publish_one_record_per_message(kafka_broker: devbroker.Broker, topic_prefix: str,
                                        tmp_path: Path) -> None:
    enr = write_lines(tmp_path / "enrollments.jsonl", ENROLLMENT_LINES)
    txn_lines = _transaction_lines(60)
    txn = write_lines(tmp_path / "transactions.jsonl", txn_lines)
    manifest = tmp_path / "manifest.parquet"
    counts = _publish(kafka_broker.bootstrap, topic_prefix, enrollments=enr, transactions=txn,
                      batch=1, manifest=manifest)
    topics = _topics(topic_prefix)
    expected = {"enrollment": _numbered(ENROLLMENT_LINES),
                "transaction": _numbered(txn_lines)}
    assert counts["enrollments"] == counts["enrollment_messages"] == len(expected["enrollment"])
    assert counts["transactions"] == len(expected["transaction"])
    mapping = _manifest(manifest)
    assert len(mapping) == len(expected["enrollment"]) + len(expected["transaction"])

    for record_type, path in (("enrollment", enr), ("transaction", txn)):
        msgs = asyncio.run(_read_inputs(kafka_broker.bootstrap, topics, record_type))
        by_source = _by_source(msgs)
        assert len(msgs) == len(expected[record_type])
        last_line: dict[tuple[str, int], int] = {}
        for number, line in expected[record_type].items():
            rt, kafka_source = mapping[f"{path.name}:{number}"]
            assert rt == record_type
            m = by_source[kafka_source]      # a one-record message has no "#i"
            assert m.value == line           # byte for byte, malformed or not
            key, partition = _route(line)
            assert (m.topic, m.key, m.partition) == (
                _expected_topic(line, record_type, topics), key, partition)
            assert FORMAT_HEADER not in dict(m.headers)
            assert m.timestamp == _expected_ts(line, record_type)
            # file order is kept within a topic-partition
            assert number > last_line.get((m.topic, m.partition), 0)
            last_line[(m.topic, m.partition)] = number
    # the operators named are routed to their topics, the rest to the unattributed one
    assert {m.topic for m in asyncio.run(_read_inputs(kafka_broker.bootstrap, topics,
                                                      "enrollment"))} == {
        topics.input_of(o, "enrollment") for o in ("paypay", "suica", "aupay", None)}
    # the escaped "\u0041B12cd34" is the person AB12cd34: same key, same partition
    first, escaped = (mapping[f"enrollments.jsonl:{n}"][1] for n in (1, 10))
    assert first.split("/")[1] == escaped.split("/")[1]


def test_publish_jsonl_batches(kafka_broker: devbroker.Broker, topic_prefix: str,
                               tmp_path: Path) -> None:
    lines = _transaction_lines(300)
    txn = write_lines(tmp_path / "transactions.jsonl", lines)
    manifest = tmp_path / "manifest.parquet"
    counts = _publish(kafka_broker.bootstrap, topic_prefix, enrollments=None, transactions=txn,
                      batch=50, manifest=manifest)
    numbered = _numbered(lines)
    assert counts["transactions"] == len(numbered)
    msgs = asyncio.run(_read_inputs(kafka_broker.bootstrap, _topics(topic_prefix),
                                   "transaction"))
    assert counts["transaction_messages"] == len(msgs)
    assert max(len(m.value.split(b"\n")) for m in msgs) == 50  # some partition needed chunks
    for m in msgs:
        assert dict(m.headers)[FORMAT_HEADER] == FORMAT_JSONL
        chunk = m.value.split(b"\n")
        assert 1 <= len(chunk) <= 50
        assert all(_route(line)[1] == m.partition for line in chunk)
        assert m.key == _route(chunk[0])[0]
        stamps = [t for t in (_expected_ts(line, "transaction") for line in chunk) if t != -1]
        assert m.timestamp == (stamps[-1] if stamps else -1)
    mapping = _manifest(manifest)
    by_source = _by_source(msgs)
    per_partition: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
    for number, line in numbered.items():
        rt, kafka_source = mapping[f"transactions.jsonl:{number}"]
        assert rt == "transaction"
        base, index = kafka_source.split("#")
        m = by_source[base]
        assert m.value.split(b"\n")[int(index)] == line
        per_partition.setdefault((m.topic, m.partition), []).append(
            (m.offset, int(index), number))
    for seq in per_partition.values():
        # in (offset, index) order the records are in file order
        assert [n for _, _, n in sorted(seq)] == [n for _, _, n in seq]
    # paypay's records and, for the lines naming no operator, the unattributed input
    assert len({m.topic for m in msgs}) == 2


def _parquet_table(n: int) -> pa.Table:
    people = ["AB12cd34", "Zz98Yx76", "Q1w2E3r4", "M0n1T2u3", None]
    jst = [datetime(2020, 9, 1 + i % 28, 12, 0, 0, i, tzinfo=timezone(timedelta(hours=9)))
           for i in range(n)]
    return pa.table({
        "txn_id": [f"t{i}" for i in range(n)],
        "operator_id": ["paypay"] * n,
        "mykey_id": [people[i % len(people)] for i in range(n)],
        "kind": ["purchase"] * n,
        "amount": pa.array([1000 + i for i in range(n)], type=pa.int64()),
        "occurred_at": pa.array(jst, type=pa.timestamp("us", tz="Asia/Tokyo")),
        "received_at": [f"2020-10-01T00:00:{i % 60:02d}Z" if i % 4 == 0 else None
                        for i in range(n)],
        "naive": pa.array([datetime(2020, 9, 1, 0, 0, 1)] * n, type=pa.timestamp("ms")),
    })


def test_publish_parquet_arrow_batches(kafka_broker: devbroker.Broker, topic_prefix: str,
                                       tmp_path: Path) -> None:
    table = _parquet_table(420)
    path = tmp_path / "tx.parquet"
    pq.write_table(table, path)
    file_table = pq.read_table(path)
    manifest = tmp_path / "m.parquet"
    _publish(kafka_broker.bootstrap, topic_prefix, enrollments=None, transactions=path,
             batch=100, manifest=manifest)
    msgs = asyncio.run(_read_inputs(kafka_broker.bootstrap, _topics(topic_prefix),
                                   "transaction"))
    by_source = _by_source(msgs)
    decoded: dict[str, pa.Table] = {}
    for m in msgs:
        assert dict(m.headers)[FORMAT_HEADER] == FORMAT_ARROW
        t = pa.ipc.open_stream(m.value).read_all()
        assert t.schema.equals(file_table.schema)
        assert 1 <= t.num_rows <= 100
        keys = t.column("mykey_id").to_pylist()
        assert m.key == (keys[0].encode() if keys[0] is not None else None)
        decoded[f"{m.topic}/{m.partition}/{m.offset}"] = t
    assert sum(t.num_rows for t in decoded.values()) == table.num_rows
    mapping = _manifest(manifest)
    rows = file_table.to_pylist()
    for i, row in enumerate(rows):
        _, kafka_source = mapping[f"tx.parquet:{i + 1}"]
        base, index = kafka_source.split("#")
        assert decoded[base].slice(int(index), 1).to_pylist()[0] == row
        key = row["mykey_id"]
        expected = partition_for(key.encode() if key else str(i).encode(), PARTS)
        assert by_source[base].partition == expected


def test_publish_parquet_one_record(kafka_broker: devbroker.Broker, topic_prefix: str,
                                    tmp_path: Path) -> None:
    path = tmp_path / "tx.parquet"
    pq.write_table(_parquet_table(5), path)
    _publish(kafka_broker.bootstrap, topic_prefix, enrollments=None, transactions=path, batch=1)
    msgs = asyncio.run(_read_inputs(kafka_broker.bootstrap, _topics(topic_prefix),
                                   "transaction"))
    objs = {orjson.loads(m.value)["txn_id"]: (m, orjson.loads(m.value)) for m in msgs}
    m, first = objs["t0"]
    assert first == {"txn_id": "t0", "operator_id": "paypay", "mykey_id": "AB12cd34",
                     "kind": "purchase", "amount": 1000,
                     "occurred_at": "2020-09-01T03:00:00Z",
                     "received_at": "2020-10-01T00:00:00Z",
                     "naive": "2020-09-01T00:00:01"}
    assert m.key == b"AB12cd34" and m.timestamp == _ms("2020-10-01T00:00:00Z")
    m, second = objs["t1"]
    assert second["received_at"] is None and second["occurred_at"].endswith(".000001Z")
    assert m.timestamp == _ms("2020-09-02T03:00:00.000001Z")
    m, fifth = objs["t4"]
    assert fifth["mykey_id"] is None and m.key is None
    assert m.partition == partition_for(b"4", PARTS)


def test_publish_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = write_lines(tmp_path / "t.jsonl", [b"{}"])

    def args(**kw: Any) -> argparse.Namespace:
        base = {"enrollments": None, "transactions": str(ok), "rate": 0.0, "batch": 1,
                "broker": f"127.0.0.1:{devbroker.free_port()}", "partitions": PARTS,
                "topic_prefix": "unused", "quiet": True, "manifest": None}
        base.update(kw)
        return argparse.Namespace(**base)

    missing = tmp_path / "missing.jsonl"
    assert publish_mod.main(args(enrollments=str(missing))) == 2
    assert str(missing) in capsys.readouterr().err
    assert publish_mod.main(args(transactions=str(tmp_path / "t.csv"))) == 2
    assert "t.csv" in capsys.readouterr().err
    a = args()
    assert publish_mod.main(a) == 2
    assert a.broker in capsys.readouterr().err


def test_publish_archive_errors_exit_2_with_one_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from engine.archive.archiver import archive_rows
    from engine.archive.replay import Msg
    from engine.archive.store import Archive, Entry

    def run(archive: Path, **kw: Any) -> str:
        base = {"enrollments": None, "transactions": None, "archive": str(archive),
                "broker": f"127.0.0.1:{devbroker.free_port()}", "topic_prefix": "fresh",
                "quiet": True}
        base.update(kw)
        assert publish_mod.main(argparse.Namespace(**base)) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        return err

    assert "not an archive" in run(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.jsonl").write_text("")
    assert "holds no messages" in run(empty)
    good = tmp_path / "good"
    msg = Msg("old.paypay.transactions", 0, 0, 1_599_000_000_000, b"AB12cd00", b"{}", [])
    Archive.open(good, must_exist=False).write_file(
        archive_rows([msg], "transaction"),
        Entry("old.paypay.transactions", "transaction", 0, 0, 1, 1, first=0, last=0, partitions=4))
    assert "takes no --enrollments" in run(good, transactions="t.jsonl")
    assert "the archive was read from" in run(good, topic_prefix="old")
    # with a log handler configured (as after `logs.configure`), aiokafka's own
    # connection errors must not add lines to the one that reports the failure
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    try:
        assert "cannot reach the Kafka broker" in run(good)
    finally:
        logging.getLogger().removeHandler(handler)
    (good / "data" / "extra.parquet").write_bytes(b"x")
    assert "not in the manifest" in run(good)


# ------------------------------------------------------------------ collect


def _grant(n: int, source: str, **kw: Any) -> dict[str, Any]:
    row = {"grant_id": f"mynapoint-2020/paypay/AB12cd3{n}/t{n}", "campaign": "mynapoint-2020",
           "mykey_id": f"AB12cd3{n}", "operator_id": "paypay", "txn_id": f"t{n}",
           "kind": "charge", "amount": 1000 * n, "points": 250 * n,
           "cumulative_points": 250 * n, "capped": False,
           "occurred_at": 1_599_000_000_000_000 + n * 1_000_001, "source": source}
    row.update(kw)
    return row


def _rejection(source: str, **kw: Any) -> dict[str, Any]:
    row = {"record_type": "transaction", "reason": "NOT_ENROLLED",
           "detail": "mykey_id: no accepted enrollment", "txn_id": "t9",
           "operator_id": "paypay", "mykey_id": "Q1w2E3r4", "source": source}
    row.update(kw)
    return row


async def _produce(bootstrap: str, items: list[tuple[str, int, bytes]]) -> None:
    await produce(bootstrap, [(topic, Outgoing(p, None, value)) for topic, p, value in items])


def _collect_args(kafka_broker: devbroker.Broker, prefix: str, out: Path,
                  expect: int = 0) -> argparse.Namespace:
    return argparse.Namespace(out=str(out), broker=kafka_broker.bootstrap, topic_prefix=prefix,
                              expect=expect, timeout=1.0, campaign=None)


def test_collect_dedups_orders_and_detects_conflicts(
        kafka_broker: devbroker.Broker, topic_prefix: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    topics = Topics(prefix=topic_prefix, operators=("paypay",))
    asyncio.run(ensure_topics(kafka_broker.bootstrap, topics, 4))
    g1 = _grant(1, "x.transactions/2/10#3")
    g2 = _grant(2, "x.transactions/0/99")
    g3 = _grant(3, "x.transactions/2/10#0", kind="refund", points=-250, occurred_at=0)
    r1 = _rejection("x.transactions/1/4#0")
    r2 = _rejection("x.enrollments/3/0", record_type="enrollment", reason="MALFORMED",
                    detail="record is not valid JSON", txn_id=None, operator_id=None,
                    mykey_id=None)
    G, R = topics.outcome_topic("grant", "paypay"), topics.outcome_topic("rejection", None)
    asyncio.run(_produce(kafka_broker.bootstrap, [
        (G, 0, grant_to_json(g1)), (G, 1, grant_to_json(g2)), (G, 3, grant_to_json(g3)),
        (G, 2, grant_to_json(g1)),                                   # redelivered copy
        (G, 0, b"not json"), (G, 0, b'{"grant_id": "only"}'),        # undecodable
        (G, 1, orjson.dumps({**_grant(4, "x.transactions/1/1"),
                             "occurred_at": "2021-02-29T00:00:00Z"})),  # no such day
        (R, 1, rejection_to_json(r1)), (R, 2, rejection_to_json(r2)),
        (R, 3, rejection_to_json(r1)), (R, 0, rejection_to_json(r1)),  # two more copies
    ]))
    stats: dict[str, Any] = {}
    grants, rejections = asyncio.run(collect_mod.collect(
        kafka_broker.bootstrap, topics, expect=6, idle_timeout=5.0, stats=stats))
    assert grants.schema.equals(GRANT_SCHEMA) and rejections.schema.equals(REJECTION_SCHEMA)
    assert [r["source"] for r in grants.to_pylist()] == [g2["source"], g3["source"],
                                                         g1["source"]]
    assert [r["source"] for r in rejections.to_pylist()] == [r2["source"], r1["source"]]
    got = grants.to_pylist()[2]
    assert got["occurred_at"] == EPOCH + timedelta(microseconds=g1["occurred_at"])
    assert {k: v for k, v in got.items() if k != "occurred_at"} == \
        {k: v for k, v in g1.items() if k != "occurred_at"}
    assert rejections.to_pylist()[0] == r2
    assert stats["copies"] == 3 and stats["undecodable"] == 3 and stats["conflicts"] == 0
    assert stats["reached_end"]

    out = tmp_path / "out"
    assert collect_mod.main(_collect_args(kafka_broker, topic_prefix, out)) == 0
    assert pq.read_table(out / "grants.parquet").equals(grants)
    assert pq.read_table(out / "rejections.parquet").equals(rejections)
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["campaign"] == "mynapoint-2020"
    assert summary["rejected"] == {"enrollment": 1, "transaction": 1}
    assert summary["points_granted"] == 250 + 500 - 250
    assert "undecodable" in capsys.readouterr().err

    # fewer outcomes than --expect before the idle timeout: files, but exit 1
    assert collect_mod.main(_collect_args(kafka_broker, topic_prefix, out, expect=6)) == 1
    capsys.readouterr()

    # a copy of g2 with different points: the engine decided one input twice
    asyncio.run(_produce(kafka_broker.bootstrap,
                         [(G, 2, grant_to_json({**g2, "points": 1, "cumulative_points": 1}))]))
    assert collect_mod.main(_collect_args(kafka_broker, topic_prefix, out)) == 3
    err = capsys.readouterr().err
    assert "conflicting copy" in err and g2["grant_id"] in err


def test_collect_missing_topics_exit_2(kafka_broker: devbroker.Broker, topic_prefix: str,
                                       tmp_path: Path) -> None:
    assert collect_mod.main(_collect_args(kafka_broker, topic_prefix, tmp_path)) == 2
    assert not (tmp_path / "grants.parquet").exists()


# ------------------------------------------------------------------ codec


def test_codec_round_trip_and_strictness() -> None:
    g = _grant(1, "a.transactions/0/1")
    assert grant_from_json(grant_to_json(g)) == g
    r = _rejection("a.enrollments/0/2", txn_id=None)
    assert rejection_from_json(rejection_to_json(r)) == r
    aware = datetime(2020, 9, 15, 12, 34, 56, 250000, tzinfo=timezone(timedelta(hours=9)))
    assert format_utc(aware) == "2020-09-15T03:34:56.250000Z"
    assert format_utc(1_600_128_896_000_000) == "2020-09-15T00:14:56Z"
    bad = [
        {**g, "amount": True}, {**g, "capped": 0}, {**g, "extra": 1},
        {k: v for k, v in g.items() if k != "source"},
    ]
    for obj in bad:
        with pytest.raises(OutputDecodeError):
            grant_from_json(orjson.dumps({**obj, "occurred_at": "2020-09-15T03:34:56Z"}))
    for at in ("2020-09-15T03:34:56+00:00", "2020-02-30T00:00:00Z", "2020-09-15 03:34:56Z"):
        with pytest.raises(OutputDecodeError):
            grant_from_json(orjson.dumps({**g, "occurred_at": at}))
    with pytest.raises(OutputDecodeError):
        rejection_from_json(orjson.dumps({**r, "mykey_id": 5}))
    with pytest.raises(OutputDecodeError):
        rejection_from_json(b"[]")


def test_oversized_chunks_split_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _transaction_lines(120)
    inp = publish_mod.read_input(write_lines(tmp_path / "t.jsonl", lines), "transaction")
    parts = np.zeros(inp.n, dtype=np.int64)       # everything on one partition
    monkeypatch.setattr(publish_mod, "MAX_VALUE_BYTES", 2_000)
    msgs = list(publish_mod._messages(inp, parts, 1, 100))
    assert len(msgs) > 2
    assert all(len(_present(m.out.value)) <= 2_000 for m in msgs)
    sent = [line for m in msgs for line in _present(m.out.value).split(b"\n")]
    assert sent == inp.lines
    assert np.concatenate([m.records for m in msgs]).tolist() == list(range(inp.n))
    monkeypatch.setattr(publish_mod, "MAX_VALUE_BYTES", 50)
    with pytest.raises(publish_mod.PublishError, match=r"t\.jsonl:1: record of"):
        list(publish_mod._messages(inp, parts, 1, 100))


def _merged_order(msgs: list[Any], ops: list[str], parts: np.ndarray) -> list[int]:
    """Record indices as the worker's merge by (message timestamp, topic) reads them,
    partition by partition."""
    from engine.streams.order import merge_topics

    M = namedtuple("M", "topic offset timestamp records")
    out: list[int] = []
    for p in sorted(set(parts.tolist())):
        seqs: dict[str, list[Any]] = {}
        for m in msgs:
            if m.out.partition == p:
                seq = seqs.setdefault(ops[m.topic], [])
                seq.append(M(ops[m.topic], len(seq), m.out.timestamp_ms, m.records))
        merged, held = merge_topics(seqs, set())
        assert not held
        out.extend(int(i) for m in merged for i in np.atleast_1d(m.records))
    return out


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(people=st.lists(st.integers(0, 11), min_size=1, max_size=120),
       choice=st.lists(st.integers(0, 2), min_size=120, max_size=120),
       days=st.lists(st.integers(1, 28), min_size=120, max_size=120))
def test_enrollments_for_several_topics_reach_the_merge_in_each_persons_file_order(
        tmp_path: Path, people: list[int], choice: list[int], days: list[int]) -> None:
    """Enrollments of a mixed-operator file routed to several operators' topics, merged
    by (message timestamp, topic) as the worker merges them: every record arrives
    once, and each person's records in file order (also where the file's times go
    backwards); people are decided independently, so that is offline's order."""
    ops = ["paypay", "aupay", "suica"]
    lines = [orjson.dumps({"mykey_id": f"P{k:03d}abcd", "operator_id": ops[choice[i]],
                           "applied_at": f"2020-09-{days[i]:02d}T10:00:00+09:00"})
             for i, k in enumerate(people)]
    inp = publish_mod.read_input(write_lines(tmp_path / "e.jsonl", lines), "enrollment")
    parts = np.asarray([partition_for(_present(k), PARTS) for k in inp.keys], dtype=np.int64)
    targets = np.asarray([ops.index(_present(o)) for o in inp.ops], dtype=np.int64)
    msgs = list(publish_mod._messages(inp, parts, PARTS, 10, targets, merged=True))
    assert max(m.count for m in msgs) <= 10
    order = _merged_order(msgs, ops, parts)
    assert sorted(order) == list(range(len(people)))
    for k in set(people):
        mine = [i for i in order if people[i] == k]
        assert mine == sorted(mine)


def test_distinct_people_across_operators_travel_in_full_chunks(tmp_path: Path) -> None:
    """Operators interleaved record by record but no person with two of them: chunks
    are full (one message per partition and topic), not one per run of a topic."""
    ops = ["paypay", "aupay", "suica"]
    lines = [orjson.dumps({"mykey_id": f"Q{i:03d}abcd", "operator_id": ops[i % 3],
                           "applied_at": "2020-09-01T10:00:00+09:00"}) for i in range(300)]
    inp = publish_mod.read_input(write_lines(tmp_path / "e.jsonl", lines), "enrollment")
    parts = np.asarray([partition_for(_present(k), PARTS) for k in inp.keys], dtype=np.int64)
    targets = np.asarray([ops.index(_present(o)) for o in inp.ops], dtype=np.int64)
    msgs = list(publish_mod._messages(inp, parts, PARTS, 1000, targets, merged=True))
    assert len(msgs) == len({(int(p), int(t)) for p, t in zip(parts, targets, strict=True)})
    assert sorted(_merged_order(msgs, ops, parts)) == list(range(300))
