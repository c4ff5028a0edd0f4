"""The one producer batching path (engine/kafka/produce.py), against a real broker."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer

from engine.devtools import broker as devbroker
from engine.kafka.client_config import default_client
from engine.kafka.produce import NO_TIMESTAMP, BatchSender, Outgoing
from engine.kafka.topics import Topics, ensure_topics
from tests.builders import txn_topic
from tests.kafka_fixtures import read_topic

PARTS = 2


async def _send(bootstrap: str, topic: str, msgs: list[Outgoing]) -> dict[Any, tuple[int, int]]:
    """Send through one BatchSender with tiny batches; (partition, offset) by tag."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(), acks="all",
                                max_batch_size=600)
    await producer.start()
    try:
        sender = BatchSender(producer, topic)
        for i, m in enumerate(msgs):
            await sender.add(m, tag=i)
        deliveries = await sender.flush()
        assert sender.messages == len(msgs)
        placed = {}
        for d in deliveries:
            base = d.future.result().offset
            for k, tag in enumerate(d.tags):
                placed[tag] = (d.partition, base + k)
        return placed
    finally:
        await producer.stop()


def test_batches_keep_order_offsets_and_timestamps(kafka_broker: devbroker.Broker,
                                                   topic_prefix: str) -> None:
    topics = Topics(topic_prefix, operators=("paypay",))
    topic = txn_topic(topics)
    asyncio.run(ensure_topics(kafka_broker.bootstrap, topics, PARTS, changelog=False))
    # untimed messages followed by timed ones in one partition: aiokafka's builder
    # would stamp the leading untimed ones with the later time
    stamps = [NO_TIMESTAMP, NO_TIMESTAMP, 1_600_000_000_000, NO_TIMESTAMP, 1_600_000_000_500]
    msgs = [Outgoing(i % PARTS, f"k{i}".encode(), f"value-{i:03d}".encode() * 8,
                     stamps[i % len(stamps)], [("h", str(i).encode())])
            for i in range(60)]
    placed = asyncio.run(_send(kafka_broker.bootstrap, topic, msgs))
    got = asyncio.run(read_topic(kafka_broker.bootstrap, topic, PARTS))
    by_place = {(m.partition, m.offset): m for m in got}
    assert len(got) == len(msgs) == len(placed)
    for i, m in enumerate(msgs):
        rec = by_place[placed[i]]
        assert (rec.partition, rec.key, rec.value) == (m.partition, m.key, m.value)
        assert rec.timestamp == m.timestamp_ms
        assert list(rec.headers) == m.headers
    for p in range(PARTS):   # per partition, in the order added
        values = [m.value for m in got if m.partition == p]
        assert values == [m.value for m in msgs if m.partition == p]
    assert len({(p, o) for p, o in placed.values()}) == len(msgs)
