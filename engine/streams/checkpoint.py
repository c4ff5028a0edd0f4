"""One batch's way to durability, in the only order that is safe.

1. **outcomes** — grants, rejections and re-routed records are produced and every
   acknowledgement is awaited: state must never run ahead of what operators and
   finance can see, or a crash would lose outcomes whose effect is in the state;
2. **state** — each partition's state snapshot goes to its changelog partition,
   tagged with the fence the worker took the partition under, and is awaited;
3. **commit** — input offsets are committed with the changelog position as
   metadata (a take-over checks the changelog still reaches it);
4. **local** — only then the local checkpoint (RocksDB) is written. A failed commit
   means the partition was lost: its local copy is dropped instead.

A crash between steps redelivers the batch; the per-person high-water marks in
the state skip what is already in it, and outcome ids are stable, so a consumer
sees at most a repeated, identical outcome. :class:`Faults` injects crashes,
stalls and broker errors at the named points between the steps (tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections import defaultdict
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
)
from aiokafka.structs import OffsetAndMetadata

from engine.kafka.produce import BATCH_BYTES, Message, send_batched, send_built
from engine.kafka.record_batch import record_batches
from engine.kafka.topics import SOURCE_HEADER, Topics
from engine.metrics import Laps
from engine.rules.model import NO_TIME
from engine.rules.strings import kafka_partitions, prefix_codes
from engine.streams import recovery
from engine.streams.logic import PartitionLogic
from engine.streams.shard import GrantMessages, ShardResult, encode_grants

log = logging.getLogger("mynapoint.worker")

STAGES = ("takeover", "decided", "outputs", "state", "commit")


class Faults:
    """Crash injection for tests, at an exact batch and stage.

    ``MYNAPOINT_CRASH_AT=<stage>:<batch>`` SIGKILLs the process right after ``stage``
    ("takeover" of a partition begun, "decided" in memory, "outputs" acknowledged,
    "state" in the changelog, or "commit": offsets committed and the state applied,
    which RocksDB takes at its next flush) of its ``batch``-th batch (0-based), before
    anything else happens; ``<stage>:<batch>+`` at the first batch from the ``batch``-th
    on that produced outcomes (how a runtime cuts its batches depends on timing, and a
    batch of accepted enrollments has none: a test about redelivered outcomes needs one
    that had some). ``MYNAPOINT_STALL_AT`` (same syntax) SIGSTOPs it there instead (a
    zombie the test resumes with SIGCONT), and ``MYNAPOINT_FAIL_AT`` raises a Kafka
    connection error there, once, as a broker fault would."""

    def __init__(self) -> None:
        self.crash_at = os.environ.get("MYNAPOINT_CRASH_AT")
        self.stall_at = os.environ.get("MYNAPOINT_STALL_AT")
        self.fail_at = os.environ.get("MYNAPOINT_FAIL_AT")
        self.injected: set[str] = set()

    def point(self, stage: str, batch: int, produced: bool = True) -> None:
        """``produced``: whether the batch had outcomes (the takeover and decided
        points come before they are known)."""
        if _at(self.crash_at, stage, batch, produced):
            os.kill(os.getpid(), signal.SIGKILL)
        if _at(self.stall_at, stage, batch, produced):
            log.warning("stalling at %s:%d (test fault injection)", stage, batch)
            os.kill(os.getpid(), signal.SIGSTOP)
        if (self.fail_at is not None and self.fail_at not in self.injected
                and _at(self.fail_at, stage, batch, produced)):
            self.injected.add(self.fail_at)
            raise KafkaConnectionError(f"injected fault after {stage} of batch {batch}")


def _at(spec: str | None, stage: str, batch: int, produced: bool) -> bool:
    """Whether the point ``stage`` of ``batch`` is the one ``spec`` names."""
    if spec is None:
        return False
    name, _, n = spec.partition(":")
    if name != stage:
        return False
    if n.endswith("+"):
        return produced and batch >= int(n[:-1])
    return n == str(batch)


class Checkpoint:
    """Steps 1–4 for the results of one batch (see the module's docstring)."""

    def __init__(self, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer,
                 topics: Topics, partitions: int, faults: Faults, batch: int) -> None:
        self.producer = producer
        self.consumer = consumer
        self.topics = topics
        self.partitions = partitions
        self.faults = faults
        self.batch = batch
        self._topics: dict[tuple[str, str], str] = {}  # (kind, input topic) -> output

    async def run(self, results: dict[int, ShardResult], logics: dict[int, PartitionLogic],
                  offsets: dict[TopicPartition, Any], laps: Laps) -> bool:
        """Returns False when the commit failed (the partitions are lost). ``laps``:
        the batch's stopwatch, to which each step's time is booked."""
        produced = await self.outcomes(results)
        laps.lap("outputs")
        self.faults.point("outputs", self.batch, produced)
        changelog = await self.state({p: logics[p] for p in results})
        laps.lap("state")
        self.faults.point("state", self.batch, produced)
        ok = await self.commit(offsets, logics, changelog)
        laps.lap("commit")
        if not ok:
            return False
        for p in results:
            logics[p].commit(changelog[p])
        laps.lap("local")
        self.faults.point("commit", self.batch, produced)
        return True

    async def outcomes(self, results: dict[int, ShardResult]) -> bool:
        """Produce the batch's outcomes and re-routed records and await their
        acknowledgements; returns whether there were outcomes (grants or rejections)."""
        out: dict[tuple[str, int], list[Message]] = defaultdict(list)
        dumps = orjson.dumps
        for p, res in results.items():
            rows = [(k, dumps(row), row["source"]) for k, row in res.rejections]
            if rows:
                parts = kafka_partitions(pa.array([k for k, _, _ in rows], type=pa.binary()),
                                         self.partitions).tolist()
                for (key, value, source), part in zip(rows, parts, strict=True):
                    topic = self._outcome_topic("rejection", source)
                    # a record without a valid key goes to the partition it came from
                    out[(topic, part if part >= 0 else p)].append((key, value, None, None))
            for rr in res.reroute:
                topic = (self.topics.reroute_transactions if rr.record_type == "transaction"
                         else self.topics.reroute_enrollments)
                # the engine reads a re-routed record's time from its JSON, not from
                # the message timestamp (which the producer would set to "now")
                ts = rr.received // 1000 if rr.received != NO_TIME else None
                out[(topic, rr.partition)].append((rr.record["mykey_id"].encode(),
                                                   dumps(rr.record),
                                                   [(SOURCE_HEADER, rr.source.encode())], ts))
        futs: list[Any] = []
        encode_grants([res.grant_messages for res in results.values()])
        for p, res in results.items():
            if len(res.grant_messages):
                futs.extend(f for f, _ in await self._grants(p, res.grant_messages))
        for (topic, part), msgs in out.items():
            futs.extend(f for f, _ in await send_batched(self.producer, topic, part, msgs))
        if futs:
            await asyncio.gather(*futs)
        return any(len(res.grant_messages) or res.rejections for res in results.values())

    def _outcome_topic(self, kind: str, source: str) -> str:
        # an outcome goes to the outputs of the operator whose input the record arrived
        # on (its source names that topic, also for a re-routed or replayed record)
        src = source.partition("/")[0]
        topic = self._topics.get((kind, src))
        if topic is None:
            topic = self._topics[(kind, src)] = self.topics.outcome_topic(
                kind, self.topics.operator_of(src))
        return topic

    async def _grants(self, p: int, g: GrantMessages) -> list[tuple[Any, int]]:
        """A partition's grants as record batches per output topic partition, each
        partition's in decision order."""
        parts = kafka_partitions(g.keys, self.partitions)
        codes, firsts = prefix_codes(g.sources, "/")
        topics = [self._outcome_topic("grant", g.sources[f].as_py()) for f in firsts.tolist()]
        group = codes * self.partitions + np.where(parts >= 0, parts, p)
        order = np.argsort(group, kind="stable")
        sent: list[tuple[Any, int]] = []
        for rows in np.split(order, np.flatnonzero(np.diff(group[order])) + 1):
            code, part = divmod(int(group[rows[0]]), self.partitions)
            sent += await send_built(self.producer, topics[code], part,
                                     record_batches(g.keys, g.values, rows, BATCH_BYTES))
        return sent

    async def state(self, logics: dict[int, PartitionLogic]) -> dict[int, int]:
        """Write each snapshot to its changelog partition; returns the offset of the
        last record written per partition (-1: none)."""
        sent: dict[int, list[tuple[Any, int]]] = {}
        for p, logic in logics.items():
            snap = logic.snapshot()
            sent[p] = await send_built(self.producer, self.topics.changelog, p, record_batches(
                pa.array(list(snap), pa.large_string()),
                pa.array(list(snap.values()), pa.large_binary()), None, BATCH_BYTES,
                recovery.fence_tag(logic.meta.fence)))
        last: dict[int, int] = {}
        for p, batches in sent.items():
            mds = await asyncio.gather(*(f for f, _ in batches))
            last[p] = max((md.offset + n - 1 for md, (_, n) in zip(mds, batches, strict=True)),
                          default=-1)
        return last

    async def commit(self, offsets: dict[TopicPartition, Any],
                     logics: dict[int, PartitionLogic], changelog: dict[int, int]) -> bool:
        if not offsets:
            return True
        meta = {tp: OffsetAndMetadata(
            m.offset + 1,
            recovery.commit_metadata(max(changelog.get(tp.partition, -1),
                                         logics[tp.partition].meta.changelog_offset) + 1))
            for tp, m in offsets.items()}
        try:
            await self.consumer.commit(meta)
        except (CommitFailedError, IllegalStateError, KafkaError) as e:
            log.warning("offset commit failed (%s: %s): this worker lost partitions %s "
                        "(or cannot tell); dropping their local state", type(e).__name__,
                        e, sorted({tp.partition for tp in offsets}))
            return False
        return True
