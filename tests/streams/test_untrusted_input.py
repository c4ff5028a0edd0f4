"""Input nobody should trust, against the real broker: a forged re-routing header
on a public input topic, and one person with 100,000 waiting records."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.devtools.broker import free_port
from engine.kafka.client_config import default_client
from engine.kafka.produce import offsets_taken, send_built
from engine.kafka.record_batch import HEADER, PrebuiltBatch, record_batches
from engine.kafka.topics import (
    FORMAT_HEADER,
    FORMAT_JSONL,
    SOURCE_HEADER,
    ensure_topics,
    partition_for,
)
from engine.rules.settlement import settle_records
from engine.streams.codec_out import format_utc
from engine.tools.collect import collect
from tests.builders import enr, enr_topic, txn, txn_topic
from tests.kafka_fixtures import read_topic
from tests.ops.http import get
from tests.streams.harness import PARTITIONS, topics_for, worker, write_report

pytestmark = pytest.mark.kafka

PII = "123456789018"  # a valid Individual Number (check digit 8)
T0 = 1_600_000_000_000  # 2020-09-13T12:26:40Z, in ms


def _txn(txn_id: str, person: str, received_ms: int) -> dict[str, object]:
    return txn(txn_id=txn_id, mykey=person, at="2020-09-13T12:00:00Z",
               received_at=format_utc(received_ms * 1000))


async def _changelog_sizes(bootstrap: str, prefix: str) -> tuple[int, bytes]:
    """Largest changelog message and all changelog bytes (to search them)."""
    t = topics_for(prefix)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                         auto_offset_reset="earliest")
    await c.start()
    try:
        tps = [TopicPartition(t.changelog, p) for p in range(PARTITIONS)]
        c.assign(tps)
        ends = await c.end_offsets(tps)
        largest, blob = 0, bytearray()
        for tp in tps:
            while await c.position(tp) < ends[tp]:
                got = await c.getmany(tp, timeout_ms=2000)
                for m in got.get(tp, []):
                    largest = max(largest, len(m.value or b""))
                    blob += (m.value or b"") + (m.key or b"")
        return largest, bytes(blob)
    finally:
        await c.stop()


def test_a_forged_source_header_on_a_public_topic_is_ignored(kafka_broker, topic_prefix,
                                                             tmp_path: Path) -> None:
    """Anybody can set headers on the public inputs: a `mynapoint-source` header of
    any size, holding an Individual Number, changes nothing. The record is decided
    as what it is, at its own position, and the header is stored nowhere."""
    prefix = topic_prefix()
    person = "Forge001"
    part = partition_for(person.encode(), PARTITIONS)
    w = worker(kafka_broker.bootstrap, prefix, tmp_path).start()
    forged = (f"other.topic/0/1#{PII}" + "x" * 500_000).encode()

    async def send() -> tuple[int, int]:
        p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **default_client(),
                             max_request_size=2 << 20)
        await p.start()
        try:
            t = topics_for(prefix)
            await p.send_and_wait(enr_topic(t), orjson.dumps(
                {"mykey_id": person, "operator_id": "paypay",
                 "applied_at": "2020-09-01T09:00:00+09:00"}), key=person.encode(),
                partition=part, headers=[(SOURCE_HEADER, forged)], timestamp_ms=T0)
            md = await p.send_and_wait(txn_topic(t), orjson.dumps(
                {k: v for k, v in _txn("forged-1", person, T0).items() if k != "received_at"}),
                key=person.encode(), partition=part, headers=[(SOURCE_HEADER, forged)],
                timestamp_ms=T0)
            return md.partition, md.offset
        finally:
            await p.stop()

    try:
        partition, offset = asyncio.run(send())
        grants, rejections = asyncio.run(collect(kafka_broker.bootstrap, topics_for(prefix),
                                                 expect=1, idle_timeout=20.0))
        largest, changelog = asyncio.run(_changelog_sizes(kafka_broker.bootstrap, prefix))
    finally:
        w.stop()
    assert rejections.num_rows == 0
    g = grants.to_pylist()
    assert [(x["txn_id"], x["points"], x["source"]) for x in g] == [
        ("forged-1", 250, f"{txn_topic(topics_for(prefix))}/{partition}/{offset}")]
    assert PII.encode() not in changelog and b"xxxxxxxx" not in changelog
    assert largest < 10_000


def test_a_person_with_100000_waiting_records(kafka_broker, topic_prefix,
                                              tmp_path: Path) -> None:
    """100,000 transactions of one person who never enrolls, in JSON Lines chunks:
    the first `person_limit` wait and then expire (NOT_ENROLLED), the rest is
    refused PERSON_LIMIT at once; as offline; every state message stays far under
    the broker's default message size; the worker never stops."""
    prefix = topic_prefix()
    person = "Hoard001"
    part = partition_for(person.encode(), PARTITIONS)
    n = 100_000
    recs = [_txn(f"h{i:06d}", person, T0 + i) for i in range(n)]
    # somebody else on the same partition, two days later: stream time passes every wait
    mover = _txn("mover", "Other001", T0 + 48 * 3600 * 1000)
    other = "Other001"
    while partition_for(other.encode(), PARTITIONS) != part:
        other = f"Other{int(other[5:]) + 1:03d}"
    mover["mykey_id"] = other
    w = worker(kafka_broker.bootstrap, prefix, tmp_path).start()

    async def send() -> None:
        p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **default_client(),
                             max_request_size=4 << 20)
        await p.start()
        try:
            t = topics_for(prefix)
            for k in range(0, n, 5_000):
                chunk = b"\n".join(orjson.dumps(r) for r in recs[k:k + 5_000])
                await p.send_and_wait(txn_topic(t), chunk, partition=part,
                                      headers=[(FORMAT_HEADER, FORMAT_JSONL)])
            await p.send_and_wait(txn_topic(t), orjson.dumps(mover), partition=part,
                                  headers=[(FORMAT_HEADER, FORMAT_JSONL)])
        finally:
            await p.stop()

    try:
        asyncio.run(send())
        grants, rejections = asyncio.run(collect(kafka_broker.bootstrap, topics_for(prefix),
                                                 expect=n, idle_timeout=60.0))
        largest, _ = asyncio.run(_changelog_sizes(kafka_broker.bootstrap, prefix))
        assert w.alive, "the worker stopped"
    finally:
        w.stop()
    got = {r["txn_id"]: r["reason"] for r in rejections.to_pylist() if r["mykey_id"] == person}
    offline = settle_records([], recs, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY)
    want = {recs[o.index]["txn_id"]: o.reason for o in offline}
    limit = DEFAULT_CAMPAIGN.person_limit
    write_report("person_100k_waiting", {
        "records_in": n, "outcomes_out": len(got), "missing": n - len(got), "doubled": 0,
        "different": sum(got.get(k) != v for k, v in want.items()),
        "person_limit": limit, "largest_changelog_message_bytes": largest})
    assert grants.num_rows == 0
    assert got == want
    assert sum(v == "PERSON_LIMIT" for v in got.values()) == n - limit
    assert largest < 1 << 20, largest


def test_a_rerouted_record_arriving_after_its_deadline_is_decided_at_once(
        kafka_broker, topic_prefix, tmp_path: Path) -> None:
    """The independent tester's case: a misrouted record is re-routed to its
    person's partition after the last record there, whose stream time is already
    past the record's deadline. It must be decided at once, not wait for a later
    record that may never come."""
    prefix = topic_prefix()
    person = "Late0001"
    home = partition_for(person.encode(), PARTITIONS)
    other = "Late0002"
    while partition_for(other.encode(), PARTITIONS) != home:
        other = f"Late{int(other[4:]) + 1:04d}"
    w = worker(kafka_broker.bootstrap, prefix, tmp_path).start()

    async def send() -> None:
        p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **default_client())
        await p.start()
        try:
            t = topics_for(prefix)
            # stream time of the home partition: two days after the late record
            await p.send_and_wait(txn_topic(t), orjson.dumps(_txn("mover", other, 0)),
                                  key=other.encode(), partition=home,
                                  timestamp_ms=T0 + 48 * 3600 * 1000)
            await asyncio.sleep(2.0)  # decided: the home partition is idle from now on
            await p.send_and_wait(txn_topic(t), orjson.dumps(_txn("late", person, 0)),
                                  key=b"SomeoneX", partition=(home + 1) % PARTITIONS,
                                  timestamp_ms=T0)
        finally:
            await p.stop()

    try:
        asyncio.run(send())
        _, rejections = asyncio.run(collect(kafka_broker.bootstrap, topics_for(prefix),
                                            expect=1, idle_timeout=15.0))
    finally:
        w.stop()
    got = {r["txn_id"]: r["reason"] for r in rejections.to_pylist()}
    write_report("deadline_passed", {"records_in": 2, "outcomes_out": len(got),
                                     "missing": int("late" not in got), "doubled": 0,
                                     "different": int(got.get("late") != "NOT_ENROLLED")})
    assert got == {"late": "NOT_ENROLLED"}  # "mover" still waits: it is in time


def test_rerouted_records_beyond_the_batch_budget_keep_coming(
        kafka_broker, topic_prefix, tmp_path: Path, runtime: str) -> None:
    """A backlog of misrouted records re-routes more than a batch's byte budget at
    once: the re-routing topic's excess waits in memory, its topic paused, like an
    input's. It must be resumed once that excess is decided, or every record
    re-routed later would never be read (the code before the fix decided 17 and
    120 of the first wave's 150 under the two runtimes, and none of the second)."""
    prefix = topic_prefix()
    person = "Wave0001"
    home = partition_for(person.encode(), PARTITIONS)
    port = free_port()
    t = topics_for(prefix)

    async def wave(p: AIOKafkaProducer, first: int, n: int) -> None:
        for i in range(first, first + n):
            rec = txn(txn_id=f"w{i}", mykey=person, amount=40, at="2020-09-13T12:00:00Z",
                      received_at=format_utc((T0 + i) * 1000))
            await p.send(txn_topic(t), orjson.dumps(rec), key=b"SomeoneX",
                         partition=(home + 1) % PARTITIONS, timestamp_ms=T0 + i)
        await p.flush()

    async def backlog() -> None:
        await ensure_topics(kafka_broker.bootstrap, t, PARTITIONS)
        p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **default_client())
        await p.start()
        try:
            await p.send_and_wait(enr_topic(t), orjson.dumps(enr(person)),
                                  key=person.encode(), partition=home, timestamp_ms=T0 - 1000)
            await wave(p, 0, 150)  # ~30 kB in Kafka before the worker's first poll
        finally:
            await p.stop()

    async def then() -> tuple[int, int, int]:
        first, _ = await collect(kafka_broker.bootstrap, t, expect=150, idle_timeout=30.0)
        p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **default_client())
        await p.start()
        try:
            await wave(p, 150, 30)  # re-routed after the first wave's excess was decided
        finally:
            await p.stop()
        grants, rejections = await collect(kafka_broker.bootstrap, t, expect=180,
                                           idle_timeout=20.0)
        return first.num_rows, grants.num_rows, rejections.num_rows

    asyncio.run(backlog())
    w = worker(kafka_broker.bootstrap, prefix, tmp_path, runtime=runtime,
               extra=["--max-batch-bytes", "3000", "--metrics-port", str(port)]).start()
    try:
        first, granted, rejected = asyncio.run(then())
        metrics = get(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        w.stop()
    assert first == 150, "the first wave was not decided"
    assert (granted, rejected) == (180, 0)
    deferred = {s.name: s.value for f in text_string_to_metric_families(metrics)
                for s in f.samples}["mynapoint_batch_deferred_messages_total"]
    assert deferred > 0


def test_a_rerouted_transaction_waits_for_its_partitions_enrollments(
        kafka_broker, topic_prefix, tmp_path: Path, runtime: str) -> None:
    """Applications precede spending for re-routed transactions too: while the home
    partition's enrollments are behind, a transaction re-routed there waits in memory
    as a published one does. Here its deadline has passed (stream time is two days
    after its receipt), so deciding it before its enrollment — still in the backlog —
    would reject it `NOT_ENROLLED` at once (what the code before the fix did)."""
    prefix = topic_prefix()
    t = topics_for(prefix)
    person = "Hold0001"
    home = partition_for(person.encode(), PARTITIONS)
    others = [f"Hold{i:04d}" for i in range(2, 20_000)
              if partition_for(f"Hold{i:04d}".encode(), PARTITIONS) == home][:1500]
    mover = others.pop()

    async def send(p: AIOKafkaProducer, topic: str, rec: dict[str, object], key: str,
                   partition: int, ts: int) -> None:
        await p.send(topic, orjson.dumps(rec), key=key.encode(), partition=partition,
                     timestamp_ms=ts)

    async def run() -> dict[str, str]:
        p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **default_client())
        await p.start()
        try:
            # the home partition's stream time: two days after the re-routed record's
            await send(p, enr_topic(t), enr(mover), mover, home, T0 - 1000)
            await send(p, txn_topic(t), _txn("mover", mover, T0 + 48 * 3600 * 1000),
                       mover, home, T0 + 48 * 3600 * 1000)
            await p.flush()
            first, _ = await collect(kafka_broker.bootstrap, t, expect=1, idle_timeout=60.0)
            assert first.num_rows == 1, "the partition's stream time did not move"
            # a backlog of enrollments, the person's last; then the misrouted spending
            for o in [*others, person]:
                await send(p, enr_topic(t), enr(o), o, home, T0)
            await p.flush()
            await send(p, txn_topic(t), _txn("held", person, T0), "SomeoneX",
                       (home + 1) % PARTITIONS, T0)
            await p.flush()
        finally:
            await p.stop()
        grants, rejections = await collect(kafka_broker.bootstrap, t, expect=2,
                                           idle_timeout=30.0)
        got = {r["txn_id"]: r["reason"] for r in rejections.to_pylist()}
        got.update({g["txn_id"]: "granted" for g in grants.to_pylist()})
        return got

    asyncio.run(ensure_topics(kafka_broker.bootstrap, t, PARTITIONS))
    w = worker(kafka_broker.bootstrap, prefix, tmp_path, runtime=runtime,
               extra=["--max-batch-bytes", "3000"]).start()
    try:
        got = asyncio.run(run())
    finally:
        w.stop()
    assert got == {"mover": "granted", "held": "granted"}


# Where each damage goes in a batch of two records of ``_good_batch``: a record
# starts with its length, attributes, timestamp delta and offset delta (one byte each
# here), then its key's length; the batch's record count is its last header field.
_DAMAGE = {
    "key_beyond_its_record": (HEADER + 4, b"\x7e"),   # a key of 63 bytes
    "record_beyond_its_batch": (HEADER, b"\x7e"),     # a record of 63 bytes
    "count_beyond_its_records": (HEADER - 4, (1000).to_bytes(4, "big")),
}


def _good_batch() -> PrebuiltBatch:
    return record_batches(pa.array([b"k1", b"k2"]), pa.array([b"v" * 20, b"w" * 20]), None,
                          1 << 20)[0]


@pytest.mark.parametrize("damage", sorted(_DAMAGE))
def test_the_broker_refuses_a_batch_whose_records_are_malformed(kafka_broker, topic_prefix,
                                                                damage: str) -> None:
    """A worker reads live input through aiokafka's compiled record reader, which reads
    outside a damaged batch (tests/kafka/test_fetch.py) and could take the worker down.
    A producer cannot get such bytes to it: the broker checks each record's structure
    on append, so a batch whose checksum is valid but whose lengths or count lie is
    refused, and the partition holds only the whole batches sent around it."""
    topic = f"{topic_prefix()}.raw"
    at, data = _DAMAGE[damage]

    async def run() -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[Any]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap,
                                    **default_client())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()
        p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **default_client())
        await p.start()
        try:
            before = await offsets_taken(await send_built(p, topic, 0, [_good_batch()]))
            bad = _good_batch()
            raw = bytearray(bad._build())
            raw[at:at + len(data)] = data
            with pytest.raises(KafkaError):
                await offsets_taken(await send_built(p, topic, 0,
                                                     [PrebuiltBatch(raw, bad.record_count())]))
            after = await offsets_taken(await send_built(p, topic, 0, [_good_batch()]))
        finally:
            await p.stop()
        return before, after, await read_topic(kafka_broker.bootstrap, topic, 1)

    before, after, msgs = asyncio.run(run())
    assert (before, after) == ([(0, 1)], [(2, 3)])
    assert [(m.offset, m.key, m.value) for m in msgs] == [
        (i, k, v) for i, (k, v) in enumerate([(b"k1", b"v" * 20), (b"k2", b"w" * 20)] * 2)]
