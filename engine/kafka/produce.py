"""Sending many messages to one topic partition with few producer requests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer

# key, value, headers, timestamp (ms, None = now)
Message = tuple[bytes | None, bytes, list[tuple[str, bytes]] | None, int | None]


async def send_batched(producer: AIOKafkaProducer, topic: str, partition: int,
                       msgs: Iterable[Message]) -> list[tuple[Any, int]]:
    """Append messages to producer batches (no coroutine per message) and send each
    full batch; returns each batch's delivery future with its record count. A
    batch's delivery metadata carries its base offset."""
    futs: list[tuple[Any, int]] = []
    batch = producer.create_batch()
    for key, value, headers, ts in msgs:
        if batch.append(key=key, value=value, timestamp=ts, headers=headers) is None:
            n = batch.record_count()
            futs.append((await producer.send_batch(batch, topic, partition=partition), n))
            batch = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=ts, headers=headers) is None:
                raise ValueError(f"a message for {topic} exceeds the producer batch size")
    if batch.record_count():
        n = batch.record_count()
        futs.append((await producer.send_batch(batch, topic, partition=partition), n))
    return futs
