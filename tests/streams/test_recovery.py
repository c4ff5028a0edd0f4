"""The take-over of engine.streams.recovery on the real broker, step by step where the
fault matrix (test_faults.py) does not reach: a local copy ahead of the changelog."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupCoordinatorNotAvailableError

from engine.kafka.client_config import default_client
from engine.kafka.topics import ensure_topics
from engine.rules.model import NO_TIME
from engine.streams.recovery import take_over
from engine.streams.state import PersonState, ShardStore, encode
from tests.streams.harness import PARTITIONS, topics_for

pytestmark = pytest.mark.kafka


async def _coordinator_up(admin: AIOKafkaAdminClient, group: str) -> None:
    """A broker that never had a consumer group has no group coordinator yet (its
    offsets topic is made on the first ask); a worker's take-over follows its
    consumer's join, so one is always up there."""
    for _ in range(60):
        try:
            await admin.list_consumer_group_offsets(group)
            return
        except GroupCoordinatorNotAvailableError:
            await asyncio.sleep(0.5)
    raise AssertionError(f"no group coordinator for {group} after 30 s")


def test_a_local_copy_ahead_of_the_changelog_is_wiped(kafka_broker, topic_prefix,
                                                      tmp_path: Path) -> None:
    """A local checkpoint that has applied more changelog than the topic holds belongs
    to another history of it (the changelog deleted and made anew, the group's offsets
    rebuilt): restoring "the tail after it" would read nothing and keep its people.
    The take-over wipes it and restores from the changelog there is."""
    bootstrap, topics = kafka_broker.bootstrap, topics_for(topic_prefix())
    store = ShardStore(tmp_path / "p0", NO_TIME)
    store.restore([(b"personAA", encode(PersonState(c=1000)), 41, None)])
    assert store.meta.changelog_offset == 41 and store.get("personAA").c == 1000

    async def run() -> tuple[int, int]:
        await ensure_topics(bootstrap, topics, PARTITIONS)
        reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                                  enable_auto_commit=False, isolation_level="read_committed")
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(),
                                    enable_idempotence=True, acks="all")
        await reader.start()
        await admin.start()
        await producer.start()
        try:
            await _coordinator_up(admin, topics.group_id)
            return await take_over(reader, admin, producer, topics, store, 0)
        finally:
            await reader.stop()
            await admin.close()
            await producer.stop()

    read, ignored = asyncio.run(run())
    assert (read, ignored) == (1, 0)  # the new changelog's one record: this take-over's fence
    assert store.get("personAA") == PersonState()
    assert (store.meta.changelog_offset, store.meta.fence) == (0, 0)
    store.close()
