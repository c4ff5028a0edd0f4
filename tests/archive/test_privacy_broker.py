"""Individual Numbers against the real broker: after a run with the number in every
place a message can carry it, only the raw input segments hold it, and a
test-sized retention deletes those."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.archive.archiver import archive
from engine.archive.store import Archive
from engine.cli import main as cli
from engine.devtools import broker as devbroker
from engine.kafka.client_config import ENV, default_client
from engine.kafka.produce import Outgoing
from engine.kafka.topics import (
    FORMAT_ARROW,
    FORMAT_HEADER,
    FORMAT_JSONL,
    ensure_topics,
    partition_for,
)
from engine.tools.collect import collect
from engine.tools.compare import compare
from tests.builders import arrow_ipc, enr_topic, grant_topic, rejection_topic, txn, txn_topic
from tests.kafka_fixtures import produce
from tests.streams.harness import PARTITIONS, topics_for, worker

pytestmark = pytest.mark.kafka

NUMBER = "123456789018"
N_BYTES = NUMBER.encode()
WHEN = "2020-09-02T12:00:00+09:00"
WHEN_MS = 1599015600000


def _txn(i: int, **extra: object) -> dict[str, object]:
    return {**txn(txn_id=f"T{i}", mykey="Zz00aa50", at=WHEN), **extra}


def _messages(prefix: str) -> list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]]:
    """(topic, key, value, headers): the number in every field position."""
    t = topics_for(prefix)
    enr = {"mykey_id": "Zz00aa50", "operator_id": "paypay", "applied_at": WHEN}
    out: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = [
        (enr_topic(t), b"Zz00aa50", orjson.dumps(enr), []),
        (enr_topic(t), b"Zz00aa51", orjson.dumps({**enr, "mykey_id": "Zz00aa51",
                                                   "earn_on": NUMBER}), []),
        # a valid misrouted record, so the re-routing topic is used (and scanned)
        (enr_topic(t), b"Zz00aa50", orjson.dumps({**enr, "mykey_id": "Zz00aa52"}), []),
        (enr_topic(t), b"Zz00aa54", orjson.dumps({**enr, "mykey_id": "Zz00aa54"}), []),
        (enr_topic(t), b"Zz00aa53", orjson.dumps({**enr, "mykey_id": "Zz00aa53",
                                                   "note": {"deep": [NUMBER]}}), []),
    ]
    places: list[dict[str, object]] = [
        {"mykey_id": NUMBER}, {"txn_id": NUMBER}, {"operator_id": NUMBER}, {"kind": NUMBER},
        {"amount": NUMBER}, {"occurred_at": NUMBER}, {"original_txn_id": NUMBER},
        {"received_at": NUMBER}, {"note": NUMBER}, {"extra": {"a": [1, {"b": NUMBER}]}},
        {NUMBER: "a field name"}, {"nested": {NUMBER: 1}},
    ]
    for i, place in enumerate(places):
        rec = _txn(i, **place)
        key = str(rec["mykey_id"]).encode()
        out.append((txn_topic(t), key, orjson.dumps(rec), []))
    # misrouted (a wrong key) and holding the number: rejected where read, not re-routed
    out.append((txn_topic(t), b"Zz00aa99", orjson.dumps(_txn(20, note=NUMBER)), []))
    out.append((txn_topic(t), N_BYTES, orjson.dumps(_txn(21)), []))          # key
    # the three granted records belong to three people: misrouted records of one
    # person are decided in the order their partitions happen to be read, in the
    # stream as in a replay (docs/DECISIONS.md, 67), which cumulative_points shows
    out.append((txn_topic(t), b"Zz00aa22", orjson.dumps(_txn(22, mykey_id="Zz00aa52")),
                [("trace", N_BYTES), (NUMBER, b"x")]))                           # headers
    chunk = b"\n".join(orjson.dumps(_txn(30 + i, **p)) for i, p in enumerate(places[:4]))
    out.append((txn_topic(t), b"Zz00aa30", chunk, [(FORMAT_HEADER, FORMAT_JSONL)]))
    table = pa.table({"txn_id": ["A1", "A2"], "operator_id": ["paypay"] * 2,
                      "mykey_id": ["Zz00aa54", NUMBER], "kind": ["purchase"] * 2,
                      "amount": pa.array([100, 200], pa.int64()), "occurred_at": [WHEN] * 2,
                      "tags": pa.array([["x"], [NUMBER]], pa.list_(pa.string()))})
    out.append((txn_topic(t), b"Zz00aa40", arrow_ipc(table), [(FORMAT_HEADER, FORMAT_ARROW)]))
    out.append((txn_topic(t), b"Zz00aa41", arrow_ipc(pa.table({NUMBER: ["v"]})),
                [(FORMAT_HEADER, FORMAT_ARROW)]))                                # column name
    row = {k: [v] for k, v in _txn(42, mykey_id="Zz00aa42").items()}
    for nested in (pa.array([{"k": NUMBER}]),                    # a struct's value
                   pa.array([{NUMBER: "v"}])):                   # a struct's field name
        out.append((txn_topic(t), b"Zz00aa42", arrow_ipc(pa.table({**row, "meta": nested})),
                    [(FORMAT_HEADER, FORMAT_ARROW)]))
    return out


# outcomes of _messages: one per transaction record (12 + 3 + 4 + 2 + 1 + 2) and the
# two rejected enrollments; accepted enrollments have none
OUTCOMES = 26


async def _produce(bootstrap: str, msgs: list[tuple[str, bytes | None, bytes,
                                                    list[tuple[str, bytes]]]],
                   ts: int | None = None) -> None:
    await produce(bootstrap, [
        (topic, Outgoing(partition_for(key or b"", PARTITIONS), key, value, ts, headers))
        for topic, key, value, headers in msgs])


def _holders(root: Path) -> list[str]:
    """Files under root whose bytes contain the number."""
    if not root.exists():
        return []
    return sorted(str(f.relative_to(root)) for f in root.rglob("*")
                  if f.is_file() and N_BYTES in f.read_bytes())


def _written(data: Path, topic: str) -> bool:
    """Whether a topic's log segments hold any record."""
    return any(f.suffix == ".log" and f.stat().st_size > 0 for d in data.iterdir()
               if d.name.rsplit("-", 1)[0] == topic for f in d.iterdir())


def _parquet_holders(root: Path) -> list[str]:
    """Parquet files whose *decoded* content (values, column names, schema
    metadata) holds the number: a byte scan cannot see into zstd pages."""
    out = []
    for f in sorted(root.rglob("*.parquet")):
        table = pq.read_table(f)
        text = orjson.dumps([table.schema.to_string(show_schema_metadata=True),
                             table.to_pylist()],
                            default=lambda b: b.decode("latin-1"))
        if N_BYTES in text:
            out.append(str(f.relative_to(root)))
    return out


def _state_holders(root: Path) -> list[str]:
    """State checkpoint files whose bytes hold the number: every write they still
    hold, superseded ones included (values are stored uncompressed)."""
    from engine.streams.state_file import FILE_NAME

    files = sorted(root.rglob(FILE_NAME))
    assert files, "the worker wrote local state (the scan can look into it)"
    return [str(f.relative_to(root)) for f in files if N_BYTES in f.read_bytes()]


async def _topic_holders(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Per topic, how many records (read back, decompressed: key, value, headers)
    hold the number."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                         auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(c.partitions_for_topic(t) or await _partitions(c, t))]
        ends = await c.end_offsets(tps)
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        found = {t: 0 for t in topics}
        todo = {tp for tp in tps if ends[tp] > 0}
        while todo:
            got = await c.getmany(timeout_ms=2_000)
            assert got, f"could not read {sorted(str(tp) for tp in todo)}"
            for tp, msgs in got.items():
                for m in msgs:
                    blob = b"".join([m.key or b"", m.value or b"",
                                     *(k.encode() + (v or b"") for k, v in m.headers or ())])
                    found[tp.topic] += N_BYTES in blob
                if await c.position(tp) >= ends[tp]:
                    todo.discard(tp)
        return found
    finally:
        await c.stop()


async def _partitions(c: object, topic: str) -> set[int]:
    await c._client.force_metadata_update()  # type: ignore[attr-defined]
    return c.partitions_for_topic(topic) or set()  # type: ignore[attr-defined]


def test_only_raw_input_segments_hold_an_individual_number(kafka_broker, topic_prefix,
                                                           tmp_path: Path, capsys) -> None:
    prefix = topic_prefix()
    msgs = _messages(prefix)
    w = worker(kafka_broker.bootstrap, prefix, tmp_path / "w").start()
    try:
        asyncio.run(_produce(kafka_broker.bootstrap, msgs, ts=WHEN_MS))
        grants, rejections = asyncio.run(collect(kafka_broker.bootstrap, topics_for(prefix),
                                                 expect=OUTCOMES, idle_timeout=30.0))
        asyncio.run(archive(kafka_broker.bootstrap, topics_for(prefix), str(tmp_path / "ar")))
    finally:
        w.stop()
    assert grants.num_rows + rejections.num_rows == OUTCOMES
    assert grants.num_rows == 3  # T21 (number in the key), T22 (in headers), A1
    pnf = rejections.filter(pa.compute.equal(rejections["reason"],
                                             "PERSONAL_NUMBER_FORBIDDEN")).num_rows
    assert pnf == 23  # every other record, received_at of a one-record message included
    t = topics_for(prefix)
    # The whole broker directory (its logs, the offsets and metadata logs, every
    # topic of this run), except the topics of other tests sharing the broker.
    data = kafka_broker.data_dir / "data"
    foreign = {d.name for d in data.iterdir()
               if d.is_dir() and not d.name.startswith(("__", prefix + "."))}
    scanned = [h for h in _holders(kafka_broker.data_dir)
               if not (h.startswith("data/") and h.split("/")[1] in foreign)]
    mine = {d.name.rsplit("-", 1)[0] for d in data.iterdir() if d.name.startswith(prefix + ".")}
    # the scan covers outputs, changelog and re-routing topics, all with data
    assert {grant_topic(t), rejection_topic(t), t.changelog, t.reroute_enrollments} <= mine
    assert _written(data, t.reroute_enrollments)
    raw = [h for h in scanned if h.split("/")[1].rsplit("-", 1)[0] in t.inputs]
    assert raw, "the raw input segments hold the number (the scan can find it)"
    assert [h for h in scanned if h not in raw] == []
    assert all(h.endswith(".log") for h in raw), raw  # segments, not their indexes
    # read back, decompressed: only the input topics' records hold it
    counts = asyncio.run(_topic_holders(kafka_broker.bootstrap, sorted(mine)))
    assert counts[txn_topic(t)] > 0 and counts[enr_topic(t)] > 0
    assert {k: n for k, n in counts.items() if n and k not in t.inputs} == {}
    assert sum(counts.values()) < sum(1 for _ in msgs)  # the scan tells records apart
    assert _holders(tmp_path / "w") == []   # state directory and the worker's log
    assert _state_holders(tmp_path / "w") == []
    assert _holders(tmp_path / "ar") == []  # the archive, raw and decoded
    assert _parquet_holders(tmp_path / "ar") == []
    a = Archive.open(tmp_path / "ar")
    assert a.verify() == [] and sum(e.rows for e in a.files()) == len(msgs)
    # replayed through fresh topics (misrouted records re-routed again, flags for the
    # redacted numbers): the same outcomes, and the number in none of those topics
    fresh = topic_prefix()
    assert cli(["publish", "--archive", str(tmp_path / "ar"), "--broker",
                kafka_broker.bootstrap, "--topic-prefix", fresh, "--quiet"]) == 0
    w = worker(kafka_broker.bootstrap, fresh, tmp_path / "replay", extra=["--replay"]).start()
    try:
        again = asyncio.run(collect(kafka_broker.bootstrap, topics_for(fresh),
                                    expect=OUTCOMES, idle_timeout=30.0))
    finally:
        w.stop()
    cmp = compare(grants, rejections, *again)
    assert cmp.equal, str(cmp)
    replay_topics = sorted({d.name.rsplit("-", 1)[0] for d in data.iterdir()
                            if d.name.startswith(fresh + ".")})
    assert _written(data, topics_for(fresh).reroute_enrollments)  # re-routed again
    assert sum(asyncio.run(_topic_holders(kafka_broker.bootstrap, replay_topics)).values()) == 0
    # the erasure report finds the enrolled person everywhere the engine keeps them
    assert cli(["admin", "locate", "--mykey-id", "Zz00aa50", "--state-dir",
                str(tmp_path / "w" / "state"), "--archive", str(tmp_path / "ar"), "--kafka",
                "--broker", kafka_broker.bootstrap, "--topic-prefix", prefix,
                "--group", f"{prefix}-engine"]) == 0
    report = capsys.readouterr().out
    kinds = {(line.split("\t")[0], line.split("\t")[1].split("/")[-1].split(":")[0])
             for line in report.splitlines()[:-1]}
    assert {k for k, _ in kinds} == {"state", "archive", "kafka"}, report
    assert {w for k, w in kinds if k == "kafka"} == {t.changelog, grant_topic(t), enr_topic(t),
                                                     txn_topic(t)}, report


def test_test_sized_retention_deletes_the_raw_input_the_archive_keeps_it(
        topic_prefix, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = devbroker.free_port()
    data_dir = tmp_path / "broker"
    broker = devbroker.start(port=port, data_dir=data_dir, wait=120.0,
                         extra_properties={"log.retention.check.interval.ms": "500"})
    monkeypatch.setenv(ENV, str(broker.credentials()))  # a secured broker of its own
    try:
        monkeypatch.setenv("MYNAPOINT_INPUT_RETENTION", "PT3S")
        prefix = topic_prefix()
        t = topics_for(prefix)
        asyncio.run(ensure_topics(broker.bootstrap, t, PARTITIONS, input_configs={
            "segment.ms": "500", "file.delete.delay.ms": "0"}))
        now = int(time.time() * 1000)
        enr = {"mykey_id": "Zz00aa50", "operator_id": "paypay", "applied_at": WHEN}
        first: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = [
            (enr_topic(t), b"Zz00aa50", orjson.dumps(enr), []),
            (txn_topic(t), b"Zz00aa50", orjson.dumps(_txn(1, mykey_id="Zz00aa50",
                                                          note=NUMBER)), [])]
        w = worker(broker.bootstrap, prefix, tmp_path / "w").start()
        try:
            asyncio.run(_produce(broker.bootstrap, first, ts=now))
            _, rej = asyncio.run(collect(broker.bootstrap, t, expect=1, idle_timeout=10.0))
            assert rej.column("reason").to_pylist() == ["PERSONAL_NUMBER_FORBIDDEN"]
            asyncio.run(archive(broker.bootstrap, t, str(tmp_path / "ar")))
        finally:
            w.stop()
        inputs = [d for d in (data_dir / "data").iterdir()
                  if d.name.rsplit("-", 1)[0] in t.inputs]
        assert any(_holders(d) for d in inputs)
        deadline = time.monotonic() + 90
        k = 0
        while any(_holders(d) for d in inputs):
            assert time.monotonic() < deadline, [_holders(d) for d in inputs]
            # later records roll the segments (segment.ms counts record timestamps)
            k += 1
            asyncio.run(_produce(broker.bootstrap, [(enr_topic(t), b"Zz00aa60", orjson.dumps(
                {**enr, "mykey_id": "Zz00aa60"}), []), (txn_topic(t), b"Zz00aa50",
                orjson.dumps(_txn(100 + k, mykey_id="Zz00aa60")), [])]))
            time.sleep(1.0)
        # an archive started only now lists what retention took as a known hole
        late = asyncio.run(archive(broker.bootstrap, t, str(tmp_path / "late")))
        assert late["deleted_before_archived"] >= 2
        holes = [e for e in Archive.open(tmp_path / "late").entries if e.file is None]
        assert holes and Archive.open(tmp_path / "late").verify() == []
        # the archive keeps the record, redacted and flagged
        a = Archive.open(tmp_path / "ar")
        assert a.verify() == [] and _holders(tmp_path / "ar") == []
        flags = [f for e in a.files() for fl in a.read(e).column("flags").to_pylist()
                 for f in fl]
        assert [f["reason"] for f in flags] == ["PERSONAL_NUMBER_FORBIDDEN"]
    finally:
        devbroker.stop(port=port, data_dir=data_dir)


def test_input_topics_get_the_bounded_default_retention(kafka_broker, topic_prefix,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    monkeypatch.delenv("MYNAPOINT_INPUT_RETENTION", raising=False)
    t = topics_for(topic_prefix)
    asyncio.run(ensure_topics(kafka_broker.bootstrap, t, PARTITIONS))

    async def retention() -> dict[str, str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap,
                                    **default_client())
        await admin.start()
        try:
            names = [enr_topic(t), txn_topic(t), t.reroute_enrollments, grant_topic(t),
                     rejection_topic(t)]
            res = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
            out: dict[str, str] = {}
            for r in res:
                for res_obj in r.to_object()["resources"]:
                    for entry in res_obj["config_entries"]:
                        if entry["config_names"] == "retention.ms":
                            out[res_obj["resource_name"]] = entry["config_value"]
            return out
        finally:
            await admin.close()

    got = asyncio.run(retention())
    week = str(7 * 24 * 3600 * 1000)
    assert got == {enr_topic(t): week, txn_topic(t): week, t.reroute_enrollments: week,
                   grant_topic(t): "-1", rejection_topic(t): "-1"}
    monkeypatch.setenv("MYNAPOINT_INPUT_RETENTION", "P0D")
    with pytest.raises(ValueError, match="positive ISO 8601 duration"):
        asyncio.run(ensure_topics(kafka_broker.bootstrap, topics_for(topic_prefix()),
                                  PARTITIONS))
