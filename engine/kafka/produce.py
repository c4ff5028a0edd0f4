"""The producer's batching paths: messages into per-partition record batches.

aiokafka's ``send`` costs a coroutine and a future per message; building record
batches directly (``create_batch`` / ``send_batch``) costs one of each per batch,
which is what lets the worker, ``publish`` and the benchmarks produce at the rate
they consume. :class:`BatchSender` owns that for messages made one at a time: an
open batch per partition, sent when full or on request, and the delivery future of
every batch sent with the tags of its messages in order, so that a caller can learn
each message's offset. Messages that already are columns (the worker's grants and
changelog) are laid out as whole batches by engine.kafka.record_batch and handed over
by :func:`send_built`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

NO_TIMESTAMP = -1  # Kafka's "no timestamp"
BATCH_BYTES = 1 << 20  # the worker's producer batch size, also of its prebuilt batches


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to produce. ``timestamp_ms`` None lets the producer stamp the
    current time; :data:`NO_TIMESTAMP` sends none."""

    partition: int
    key: bytes | None
    value: bytes | None   # None: a tombstone (compaction removes the key)
    timestamp_ms: int | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class Delivery:
    """A batch handed to the producer: its future resolves to the record metadata of
    the batch's first message (``.offset``); ``tags`` are its messages' tags in order."""

    partition: int
    future: Any
    tags: list[Any]


@dataclass(slots=True)
class _Open:
    builder: Any
    tags: list[Any] = field(default_factory=list)
    timed: bool = False


class BatchSender:
    """Per-partition record batches for one topic."""

    def __init__(self, producer: Any, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.open: dict[int, _Open] = {}
        self.sent: list[Delivery] = []
        self.messages = 0
        self._unacked: dict[int, list[Any]] = {}  # partition -> futures not yet awaited

    def try_append(self, partition: int, key: bytes | None, value: bytes | None,
                   timestamp_ms: int | None, headers: list[tuple[str, bytes]],
                   tag: Any = None) -> bool:
        """Append a message (the fields of an :class:`Outgoing`) to its partition's open
        batch if it fits there: the common case of :meth:`add`, with neither a
        coroutine nor an :class:`Outgoing` per message."""
        entry = self.open.get(partition)
        if entry is None:
            entry = self.open[partition] = _Open(self.producer.create_batch())
        if timestamp_ms != NO_TIMESTAMP:
            if not entry.timed and entry.tags:
                # aiokafka's builder takes a leading -1 as "no base timestamp yet" and
                # would give the earlier untimed messages this one's time.
                return False
            entry.timed = True
        if entry.builder.append(timestamp=timestamp_ms, key=key, value=value,
                                headers=headers) is None:
            return False
        entry.tags.append(tag)
        self.messages += 1
        return True

    def try_add(self, m: Outgoing, tag: Any = None) -> bool:
        return self.try_append(m.partition, m.key, m.value, m.timestamp_ms, m.headers, tag)

    async def add(self, m: Outgoing, tag: Any = None) -> None:
        """Append ``m`` to its partition's batch, sending that batch first when full."""
        if self.try_add(m, tag):
            return
        await self.send(m.partition)
        if not self.try_add(m, tag):
            raise ValueError(f"a message for {self.topic} of {len(m.value or b''):,} bytes exceeds "
                             "the producer batch size")

    async def send(self, partition: int) -> None:
        """Hand partition ``partition``'s open batch to the producer."""
        entry = self.open.pop(partition, None)
        if entry is None or not entry.tags:
            return
        entry.builder.close()  # a closed batch is sent at once, without waiting for linger
        fut = await self.producer.send_batch(entry.builder, self.topic, partition=partition)
        self.sent.append(Delivery(partition, fut, entry.tags))
        self._unacked.setdefault(partition, []).append(fut)

    async def acknowledged(self, partition: int) -> None:
        """Send ``partition``'s open batch and wait until the broker stored everything
        sent to it so far: a message sent afterwards, on another topic, is then
        appended after these (Kafka orders nothing across topics by itself)."""
        await self.send(partition)
        for fut in self._unacked.pop(partition, []):
            await fut

    async def send_open(self) -> None:
        """Hand every open batch to the producer."""
        for p in list(self.open):
            await self.send(p)

    async def flush(self) -> list[Delivery]:
        """Send what is open, wait until the broker acknowledged every batch sent so
        far, and return them (their futures done); the sender starts afresh."""
        await self.send_open()
        done, self.sent = self.sent, []
        for d in done:
            await d.future
        return done


class Sent(NamedTuple):
    """A record batch handed to the producer."""

    future: Any    # resolves to the metadata of the batch's first record (``.offset``)
    records: int


async def send_batched(producer: Any, topic: str, msgs: Iterable[Outgoing]) -> list[Sent]:
    """Messages for one topic through a :class:`BatchSender`, as the batches sent."""
    sender = BatchSender(producer, topic)
    for m in msgs:
        if not sender.try_add(m):  # most fit
            await sender.add(m)
    await sender.send_open()
    return [Sent(d.future, len(d.tags)) for d in sender.sent]


async def send_built(producer: Any, topic: str, partition: int,
                     batches: Iterable[Any]) -> list[Sent]:
    """Record batches built whole (engine.kafka.record_batch) for one topic partition,
    in order; returns what :func:`send_batched` returns."""
    return [Sent(await producer.send_batch(b, topic, partition=partition), b.record_count())
            for b in batches]


async def offsets_taken(sent: list[Sent]) -> list[tuple[int, int]]:
    """The offsets (first, last) each batch of ``sent`` took, once acknowledged."""
    mds = await asyncio.gather(*(s.future for s in sent))
    return [(md.offset, md.offset + s.records - 1) for md, s in zip(mds, sent, strict=True)]
