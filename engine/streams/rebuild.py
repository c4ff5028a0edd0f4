"""``mynapoint admin rebuild-state`` and ``accept-loss``: the ways out of a refusal.

When a worker refuses a partition (its state changelog or an input topic was
deleted or recreated, see ``engine.streams.recovery``), the way out is to
rebuild that partition's state by deciding its whole input again:

1. a *reset* fence on the partition's changelog: every state record before it
   is void, on every worker's restore and local checkpoint alike;
2. the group's committed offsets of the partition's consumed topics moved to
   their beginning, with commit metadata pointing just past the reset.

The workers must be stopped (a live group would overwrite the offsets). When
they start, they decide the input from the beginning: every outcome is emitted
again, identical to the first time (same ids), so consumers that de-duplicate
by id see nothing new. Input older than the topics' retention is gone; what it
decided is gone from the state too (docs/RELIABILITY.md).

``accept-loss`` answers the other refusal: records deleted by retention before
any worker decided them (workers down longer than the inputs' retention). It
keeps the state and moves the group's offsets of the partition's consumed
topics to their first kept record, writing the accepted range ``[from, to)``
into the commit metadata, where the take-over checks it
(``engine.streams.recovery.accepted_loss``): the loss becomes a recorded act of
an operator instead of a silent skip, and a later, larger loss is refused again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from engine.kafka.client_config import default_client
from engine.kafka.topics import Topics, discover, ensure_topics
from engine.ops import logs
from engine.streams import recovery


class RebuildError(RuntimeError):
    pass


async def _stopped_partitions(bootstrap: str, topics: Topics, partitions: list[int] | None,
                              default_partitions: int) -> list[int]:
    """The partitions to act on (all when None), once it is sure no worker runs."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    await admin.start()
    try:
        groups = await admin.describe_consumer_groups([topics.group_id])
        members = groups[0].groups[0][5] if groups and groups[0].groups else []
        if members:
            raise RebuildError(f"consumer group {topics.group_id} has {len(members)} active "
                               "member(s): stop the workers first")
    finally:
        await admin.close()
    n = await ensure_topics(bootstrap, topics, default_partitions)
    todo = sorted(set(partitions)) if partitions else list(range(n))
    bad = [p for p in todo if not 0 <= p < n]
    if bad:
        raise RebuildError(f"no partition {bad[0]}: the topics have {n} partitions")
    return todo


async def rebuild_state(bootstrap: str, topics: Topics, partitions: list[int] | None,
                        default_partitions: int = 8) -> dict[int, int]:
    """Reset the given partitions (all when None); return partition -> reset offset."""
    topics = await discover(bootstrap, topics)  # every operator's inputs are consumed
    todo = await _stopped_partitions(bootstrap, topics, partitions, default_partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(),
                                enable_idempotence=True, acks="all")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                                group_id=topics.group_id,
                                enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    done: dict[int, int] = {}
    try:
        for p in todo:
            reset = await recovery.write_fence(producer, topics, p, reset=True)
            tps = [TopicPartition(t, p) for t in topics.consumed]
            consumer.assign(tps)
            starts = await consumer.beginning_offsets(tps)
            meta = recovery.commit_metadata(reset + 1)
            await consumer.commit({tp: OffsetAndMetadata(starts[tp], meta) for tp in tps})
            done[p] = reset
    finally:
        await consumer.stop()
        await producer.stop()
    return done


async def accept_loss(bootstrap: str, topics: Topics, partitions: list[int] | None,
                      default_partitions: int = 8) -> list[tuple[str, int, int, int]]:
    """Accept as lost what retention deleted below each consumed topic's first kept
    record on the given partitions (all when None), keeping the state; return
    (topic, partition, from, to) of every accepted range."""
    topics = await discover(bootstrap, topics)  # every operator's inputs are consumed
    todo = await _stopped_partitions(bootstrap, topics, partitions, default_partitions)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                                group_id=topics.group_id, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    await consumer.start()
    await admin.start()
    done: list[tuple[str, int, int, int]] = []
    try:
        for p in todo:
            tps = [TopicPartition(t, p) for t in topics.consumed]
            committed = await admin.list_consumer_group_offsets(topics.group_id,
                                                                partitions=tps)
            consumer.assign(tps)
            starts = await consumer.beginning_offsets(tps)
            cl = max([0, *(recovery.changelog_need(om) for om in committed.values())])
            new: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp in tps:
                om = committed.get(tp)
                at = om.offset if om is not None and om.offset >= 0 else 0
                if at < starts[tp]:
                    new[tp] = OffsetAndMetadata(
                        starts[tp], recovery.commit_metadata(cl, (at, starts[tp])))
                    done.append((tp.topic, p, at, starts[tp]))
            if new:
                await consumer.commit(new)
    finally:
        await admin.close()
        await consumer.stop()
    return done


def main(args: argparse.Namespace) -> int:
    topics = Topics(args.topic_prefix, args.group or "")
    accepting = args.action == "accept-loss"
    reset: dict[int, int] = {}
    lost: list[tuple[str, int, int, int]] = []
    try:
        with logs.quiet("aiokafka"):  # the one line below says it all
            if accepting:
                lost = asyncio.run(accept_loss(args.broker, topics, args.partition or None))
            else:
                reset = asyncio.run(rebuild_state(args.broker, topics,
                                                  args.partition or None))
    except RebuildError as e:
        print(f"mynapoint admin: {e}", file=sys.stderr)
        return 2
    except (KafkaError, OSError) as e:
        print(f"mynapoint admin: cannot reach the broker at {args.broker}: "
              f"{type(e).__name__}", file=sys.stderr)
        return 2
    if not accepting:
        for p, off in reset.items():
            print(f"partition {p}: state reset at {topics.changelog}/{p}/{off}; input will "
                  "be decided again from the beginning when the workers start")
        return 0
    for topic, p, first, end in lost:
        print(f"{topic}/{p}: offsets {first} to {end - 1} ({end - first} records) accepted "
              "as lost; the partition goes on from the first kept record")
    if not lost:
        print("nothing to accept: every committed position is still held by its topic")
    return 0
