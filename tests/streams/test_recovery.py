"""The take-over of engine.streams.recovery on the real broker, step by step where the
fault matrix (test_faults.py) does not reach: a local copy ahead of the changelog."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import GroupCoordinatorNotAvailableError, PolicyViolationError

from engine.kafka.client_config import default_client
from engine.kafka.produce import Outgoing
from engine.kafka.topics import FENCE_HEADER, Topics, ensure_topics
from engine.rules.model import NO_TIME
from engine.streams.recovery import (
    Refused,
    _on_thread,
    gaps_between,
    read_range,
    take_over,
    write_again,
)
from engine.streams.state import (
    FENCE_KEY,
    ChangelogRecord,
    Fence,
    PersonState,
    ShardStore,
    encode,
)
from tests.kafka_fixtures import produce
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


async def _take_over_with(bootstrap: str, topics: Topics, store: ShardStore,
                          before: Callable[[AIOKafkaAdminClient], Awaitable[None]] | None = None
                          ) -> tuple[int, int]:
    """Partition 0's take-over into ``store`` with clients of the test's own, after
    ``before(admin)`` if given."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                              enable_auto_commit=False, isolation_level="read_committed")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(),
                                enable_idempotence=True, acks="all")
    await reader.start()
    await admin.start()
    await producer.start()
    try:
        if before is not None:
            await before(admin)
        await _coordinator_up(admin, topics.group_id)
        return await take_over(reader, admin, producer, topics, store, 0)
    finally:
        await reader.stop()
        await admin.close()
        await producer.stop()


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
        return await _take_over_with(bootstrap, topics, store)

    read, ignored = asyncio.run(run())
    assert (read, ignored) == (1, 0)  # the new changelog's one record: this take-over's fence
    assert store.get("personAA") == PersonState()
    assert (store.meta.changelog_offset, store.meta.fence) == (0, 0)
    store.close()


def test_a_restore_applies_on_a_thread_and_a_cancel_waits_for_it() -> None:
    """A fetch's apply runs on a thread: the loop goes on meanwhile (it receives the
    next fetch; other partitions, heartbeats). A take-over cancelled during an apply
    does not end before the apply does: its store is closed (flushed) on the way out,
    which must not happen while the thread writes into it."""
    started, finished = threading.Event(), threading.Event()

    def apply(_part: object) -> int:
        started.set()
        time.sleep(0.3)
        finished.set()
        return 7

    async def main() -> tuple[int, int, bool]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        got = await _on_thread(apply, None)  # type: ignore[arg-type]
        during = ticks
        ticker.cancel()
        started.clear()
        finished.clear()
        task = asyncio.create_task(_on_thread(apply, None))  # type: ignore[arg-type]
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return got, during, finished.is_set()

    got, during, finished_first = asyncio.run(main())
    assert got == 7
    assert during >= 10  # the loop ran through the 0.3 s apply
    assert finished_first


def test_gaps_between_are_the_offsets_someone_else_wrote() -> None:
    assert gaps_between(10, [(10, 14), (15, 15)]) == []
    assert gaps_between(10, [(12, 14), (20, 21)]) == [(10, 11), (15, 19)]
    assert gaps_between(10, []) == []


@pytest.mark.parametrize("newer_fence", [False, True], ids=["a zombie wrote", "a new owner"])
def test_an_owner_writes_again_what_a_zombie_wrote_after_it(
        kafka_broker, topic_prefix, tmp_path: Path, newer_fence: bool) -> None:
    """Changelog partition 0: the owner's fence, its own record of two people, then a
    zombie's records of them (tagged with an older fence) and of a person the owner
    never held; a fourth person's zombie record was ignored by the take-over's restore
    (``fenced_off``). ``write_again`` writes the owner's state of the two and of the
    fourth again, under its fence, so a compaction (the newest record of each key)
    still restores the owner's values; a tombstone for the third, which the owner
    holds nothing of (a later take-over's fence, the newest kept, would let a restore
    apply the zombie's record otherwise). With a newer fence among the records the
    owner is the zombie: it writes nothing, and keeps the fourth for a later look."""
    bootstrap, topics = kafka_broker.bootstrap, topics_for(topic_prefix())
    tag = [(FENCE_HEADER, b"0")]
    store = ShardStore(tmp_path / "p0", NO_TIME)
    owner = {b"personAA": encode(PersonState(c=100)), b"personBB": encode(PersonState(c=200))}
    store.restore([(FENCE_KEY, encode(Fence()), 0, None),
                   *[(k, v, i, 0) for i, (k, v) in enumerate(owner.items(), 1)]])
    earlier = encode(PersonState(c=400))  # held here, not on this changelog
    store.apply({"personDD": earlier}, store.meta.changelog_offset)
    store.fenced_off.add("personDD")
    zombie = [Outgoing(0, k, encode(PersonState(c=9)), headers=[(FENCE_HEADER, b"-1")])
              for k in (b"personAA", b"personBB", b"personCC")]
    if newer_fence:
        zombie.insert(1, Outgoing(0, FENCE_KEY, encode(Fence())))

    async def run() -> tuple[int, list[ChangelogRecord]]:
        await ensure_topics(bootstrap, topics, PARTITIONS)
        await produce(bootstrap, [(topics.changelog, Outgoing(0, FENCE_KEY, encode(Fence()))),
                                  *[(topics.changelog, Outgoing(0, k, v, headers=tag))
                                    for k, v in owner.items()],
                                  *[(topics.changelog, m) for m in zombie]])
        reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                                  enable_auto_commit=False)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(),
                                    acks="all")
        await reader.start()
        await producer.start()
        try:
            end = 3 + len(zombie)
            found, around = await write_again(reader, producer, topics, store, 0, [(3, end - 1)])
            assert around == []
            return found, await read_range(reader, topics, 0, 0, end + 10)  # to its end
        finally:
            await reader.stop()
            await producer.stop()

    found, log = asyncio.run(run())
    newest = {k: (v, tag) for k, v, _, tag in log}  # compaction: the last record of each key
    if newer_fence:
        assert found == 0 and len(log) == 3 + len(zombie)  # nothing written
        assert store.meta.changelog_offset == 2
        assert store.fenced_off == {"personDD"}
    else:
        assert found == 4
        assert {k: newest[k] for k in owner} == {k: (v, 0) for k, v in owner.items()}
        assert newest[b"personDD"] == (earlier, 0) and store.fenced_off == set()
        assert newest[b"personCC"] == (None, 0)  # nothing held here: a tombstone
        assert store.meta.changelog_offset == len(log) - 1
    store.close()


def test_changelog_records_deleted_under_the_restore_refuse_the_partition(
        kafka_broker, topic_prefix, tmp_path: Path) -> None:
    """Records deleted from the changelog's start (a delete cleanup policy put on it,
    then retention or a deletion) would be people restored as new: the take-over
    refuses the partition instead of restoring what is left (aiokafka's consumer, which read it
    before DECISIONS 143, went on from the end: an empty state)."""
    bootstrap, topics = kafka_broker.bootstrap, topics_for(topic_prefix())
    store = ShardStore(tmp_path / "p0", NO_TIME)

    async def run() -> tuple[int, int]:
        await ensure_topics(bootstrap, topics, PARTITIONS)
        await produce(bootstrap, [(topics.changelog,
                                   Outgoing(0, b"person%02d" % i, encode(PersonState(c=i))))
                                  for i in range(5)])
        return await _take_over_with(bootstrap, topics, store, delete_first_three)

    async def delete_first_three(admin: AIOKafkaAdminClient) -> None:
        # Kafka deletes records only where a delete policy applies
        await admin.alter_configs([ConfigResource(
            ConfigResourceType.TOPIC, topics.changelog, {"cleanup.policy": "compact,delete"})])
        for _ in range(40):  # until the partition's leader has the new policy
            try:
                await admin.delete_records(
                    {TopicPartition(topics.changelog, 0): RecordsToDelete(3)})
                return
            except PolicyViolationError:
                await asyncio.sleep(0.25)
        raise AssertionError("the changelog's records were not deleted")

    with pytest.raises(Refused, match="starts at offset 3 but the restore needs it from "
                                      "offset 0: state changelog records were deleted"):
        asyncio.run(run())
    assert store.get("person04") == PersonState()  # nothing of what was left applied
    store.close()
