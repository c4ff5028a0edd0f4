"""The broker's memory of an idempotent producer, and records stamped with business
time (DECISIONS 142).

Kafka drops a producer's sequence state once its newest record is stamped more than
``producer.id.expiration.ms`` before the broker's clock, and it checks that whenever
it reloads the state (a restart). A batch retried across the restart then finds no
state and is stored a second time: the input record that RELIABILITY's
single-broker SIGKILL test sees doubled now and then (its data is stamped in 2020).
The local and compose brokers keep that state for the longest the setting allows
(24.8 days), so a backlog published up to about three weeks late keeps it.
"""

from __future__ import annotations

import asyncio
import time

import pyarrow as pa
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.protocol.transaction import InitProducerIdRequest

from engine.devtools import broker as devbroker
from engine.kafka.client_config import default_client
from engine.kafka.record_batch import record_batches
from engine.kafka.topics import create_and_await_leaders, end_offsets

DAY_MS = 86_400_000
EXPIRATION_MS = devbroker.PRODUCER_ID_EXPIRATION_MS
# COORDINATOR_LOAD_IN_PROGRESS, _NOT_AVAILABLE, NOT_COORDINATOR: a fresh broker's
# producer-id manager is still starting; a producer retries them
COORDINATOR_NOT_READY = {14, 15, 16}
# UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER,
# REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS: a produce a producer retries
NOT_READY = {3, 5, 6, 7, 19}


def _batch(producer_id: int, epoch: int, sequence: int, stamp_ms: int) -> bytes:
    """One record as an idempotent producer's batch ``sequence``."""
    batch = record_batches(pa.array([b"k"]), pa.array([b"v"]), None, 1 << 20,
                           timestamp_ms=stamp_ms)[0]
    batch._set_producer_state(producer_id, epoch, sequence)
    return bytes(batch._build())


async def _client(bootstrap: str) -> tuple[AIOKafkaClient, int]:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, **default_client())
    await client.bootstrap()
    return client, next(iter(client.cluster.brokers())).nodeId


async def _send(bootstrap: str, batches: dict[str, bytes]) -> None:
    """Each topic's batch in one produce request, as a producer's retry would send it;
    sent again while the broker answers that it is not ready (a restarted broker's
    partitions get their leader a moment after it accepts connections)."""
    client, node = await _client(bootstrap)
    left = dict(batches)
    try:
        for _ in range(60):
            resp = await client.send(node, ProduceRequest(
                transactional_id=None, required_acks=-1, timeout=30_000,
                topics=[(t, [(0, data)]) for t, data in left.items()]))
            errors = {t: p[1] for t, parts in resp.topics for p in parts}
            # stored, or a duplicate (DUPLICATE_SEQUENCE_NUMBER, 46)
            left = {t: left[t] for t, e in errors.items() if e not in (0, 46)}
            if not left or not set(errors.values()) <= {0, 46, *NOT_READY}:
                break
            await asyncio.sleep(0.5)
        assert not left, errors
    finally:
        await client.close()


async def _producer_id(bootstrap: str) -> tuple[int, int]:
    client, node = await _client(bootstrap)
    try:
        for _ in range(60):
            resp = await client.send(node, InitProducerIdRequest(
                transactional_id=None, transaction_timeout_ms=60_000))  # type: ignore[arg-type]
            if resp.error_code not in COORDINATOR_NOT_READY:
                break
            await asyncio.sleep(0.5)
        assert resp.error_code == 0, resp
        return int(resp.producer_id), int(resp.producer_epoch)
    finally:
        await client.close()


def _ends(bootstrap: str, topics: list[str]) -> dict[str, int]:
    ends = asyncio.run(end_offsets(bootstrap, [TopicPartition(t, 0) for t in topics]))
    return {tp.topic: end for tp, end in ends.items()}


async def _create(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    await admin.start()
    try:
        await create_and_await_leaders(admin, [NewTopic(t, 1, 1) for t in topics], topics, 1,
                                       settle_seconds=30.0)
    finally:
        await admin.close()


def test_a_retry_across_a_restart_is_stored_again_only_past_the_expiration(
        own_broker: devbroker.Broker) -> None:
    now_ms = int(time.time() * 1000)
    stamps = {
        "fresh": now_ms,                           # a live publisher's received_at
        "late": now_ms - 10 * DAY_MS,              # a backlog ten days late
        "past": now_ms - EXPIRATION_MS - DAY_MS,   # older than the setting allows
        "campaign": 1_606_870_895_000,             # 2020-12-02, as the fault tests' data
    }
    topics = [f"idem-{name}" for name in stamps]
    b = own_broker.bootstrap
    asyncio.run(_create(b, topics))
    pid, epoch = asyncio.run(_producer_id(b))
    first, second = ({t: _batch(pid, epoch, seq, stamps[t.removeprefix("idem-")])
                      for t in topics} for seq in (0, 1))
    asyncio.run(_send(b, first))
    asyncio.run(_send(b, second))
    asyncio.run(_send(b, second))  # retried while the broker runs: never stored again
    assert _ends(b, topics) == dict.fromkeys(topics, 2)

    own_broker.kill()
    devbroker.start(port=own_broker.port, data_dir=own_broker.data_dir, wait=120.0)
    # the second batch retried across the restart, as the publisher's in-flight one was
    asyncio.run(_send(b, second))
    assert _ends(b, topics) == {
        "idem-fresh": 2, "idem-late": 2,   # the broker still knows the producer
        "idem-past": 3, "idem-campaign": 3,  # forgotten: the retry is a second record
    }
