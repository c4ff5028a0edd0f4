"""``mynapoint admin rebuild-state``: start partitions over from their input.

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
from engine.kafka.topics import Topics, ensure_topics
from engine.streams import recovery


class RebuildError(RuntimeError):
    pass


async def rebuild_state(bootstrap: str, topics: Topics, partitions: list[int] | None,
                        default_partitions: int = 8) -> dict[int, int]:
    """Reset the given partitions (all when None); return partition -> reset offset."""
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


def main(args: argparse.Namespace) -> int:
    topics = Topics(args.topic_prefix, args.group or "")
    try:
        done = asyncio.run(rebuild_state(args.broker, topics, args.partition or None))
    except RebuildError as e:
        print(f"mynapoint admin: {e}", file=sys.stderr)
        return 2
    except (KafkaError, OSError) as e:
        print(f"mynapoint admin: cannot reach the broker at {args.broker}: "
              f"{type(e).__name__}", file=sys.stderr)
        return 2
    for p, off in done.items():
        print(f"partition {p}: state reset at {topics.changelog}/{p}/{off}; input will be "
              "decided again from the beginning when the workers start")
    return 0
