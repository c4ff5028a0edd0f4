"""One batch's way to durability, in the only order that is safe.

1. **outcomes** — grants, rejections and re-routed records are produced and every
   acknowledgement is awaited: state must never run ahead of what operators and
   finance can see, or a crash would lose outcomes whose effect is in the state;
2. **state** — each partition's state snapshot goes to its changelog partition,
   tagged with the fence the worker took the partition under, and is awaited;
3. **commit** — input offsets are committed with the changelog position as
   metadata (a take-over checks the changelog still reaches it);
4. **local** — only then does the local copy take the state as applied; it reaches
   its checkpoint file every few seconds or megabytes (``ShardStore.apply``,
   DECISIONS 106, 144). A failed commit means the partition was lost: its local
   copy is dropped instead.

Steps 2–4 need not follow every batch (DECISIONS 131): the batches since the last
commit are :class:`Uncommitted`, their outcomes out and their state in memory only,
and steps 2–4 take all of them at once, at most every ``interval`` seconds (the
worker's ``COMMIT_INTERVAL_SECONDS``), and before a partition is given up or the
worker stops. A person touched by several of them is written to the changelog once.

A crash between steps redelivers what is not committed; the per-person high-water
marks in the state skip what is already in it, and outcome ids are stable, so a
consumer sees at most a repeated, identical outcome. :class:`Faults` injects
crashes, stalls and broker errors at the named points between the steps (tests).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
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

from engine.kafka.produce import (
    BATCH_BYTES,
    Outgoing,
    Sent,
    offsets_taken,
    send_batched,
    send_built,
)
from engine.kafka.record_batch import PrebuiltBatch, record_batches
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
    which the checkpoint file takes at its next flush; these two at the commit that takes the
    batch, with the batches before it since the last commit) of its ``batch``-th batch
    (0-based), before
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

    def point(self, stage: str, batch: int, produced: bool = True,
              first: int | None = None, uncommitted: int | None = None) -> None:
        """The point ``stage`` of batches ``first`` (default: ``batch``) to ``batch``;
        ``produced``: whether any of them had outcomes (the takeover and decided
        points come before they are known); ``uncommitted``: the first batch not
        committed yet (for the log)."""
        first = batch if first is None else first
        if _at(self.crash_at, stage, first, batch, produced) is not None:
            log.warning("crashing after %s of batch %d, batches %d-%d since the last "
                        "commit (test fault injection)", stage, batch,
                        first if uncommitted is None else uncommitted, batch)
            os.kill(os.getpid(), signal.SIGKILL)
        if _at(self.stall_at, stage, first, batch, produced) is not None:
            log.warning("stalling at %s:%d (test fault injection)", stage, batch)
            os.kill(os.getpid(), signal.SIGSTOP)
        if self.fail_at is not None and self.fail_at not in self.injected:
            at = _at(self.fail_at, stage, first, batch, produced)
            if at is not None:
                self.injected.add(self.fail_at)
                raise KafkaConnectionError(f"injected fault after {stage} of batch {at}")


def _at(spec: str | None, stage: str, first: int, batch: int, produced: bool) -> int | None:
    """The batch ``spec`` names if it is among ``first`` to ``batch`` at point
    ``stage``, else None."""
    if spec is None:
        return None
    name, _, n = spec.partition(":")
    if name != stage:
        return None
    if n.endswith("+"):
        return batch if produced and batch >= int(n[:-1]) else None
    return int(n) if first <= int(n) <= batch else None


@dataclass
class Uncommitted:
    """The batches since the last commit: outcomes acknowledged, state and offsets not
    yet durable (DECISIONS 131)."""

    since: float = field(default_factory=time.monotonic)
    first_batch: int | None = None
    parts: set[int] = field(default_factory=set)
    # per input, the last message decided (what the commit is made of) ...
    offsets: dict[TopicPartition, Any] = field(default_factory=dict)
    # ... and the first offset fetched since the commit (where a rewind goes back to)
    first: dict[TopicPartition, int] = field(default_factory=dict)
    produced: bool = False

    def add(self, batch: int, parts: Iterable[int], offsets: dict[TopicPartition, Any],
            produced: bool) -> None:
        if self.first_batch is None:
            self.first_batch = batch
            self.since = time.monotonic()
        self.parts.update(parts)
        self.offsets.update(offsets)
        self.produced |= produced

    def fetched(self, data: dict[TopicPartition, list[Any]]) -> None:
        """The messages of a batch (held ones included): the first ones are where
        reading resumes if nothing since the commit becomes durable."""
        for tp, msgs in data.items():
            if msgs:
                self.first.setdefault(tp, msgs[0].offset)

    def drop(self, parts: set[int]) -> None:
        """Forget partitions given up here: what they had uncommitted is decided again
        by whoever reads them from their commit."""
        self.parts -= parts
        for d in (self.offsets, self.first):
            for tp in [tp for tp in d if tp.partition in parts]:
                del d[tp]

    def empty(self) -> bool:
        return not self.parts and not self.offsets

    def due(self, interval: float) -> bool:
        return not self.empty() and time.monotonic() - self.since >= interval


class Checkpoint:
    """Steps 1–4 for the results of one batch (see the module's docstring)."""

    def __init__(self, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer,
                 topics: Topics, partitions: int, faults: Faults, batch: int,
                 gaps: dict[int, list[tuple[int, int]]] | None = None) -> None:
        self.producer = producer
        self.consumer = consumer
        self.topics = topics
        self.partitions = partitions
        self.faults = faults
        self.batch = batch
        # changelog offsets found written by someone else between this owner's own
        # writes, per partition (engine.streams.recovery.write_again)
        self.gaps = gaps if gaps is not None else {}
        # set by a failed commit: the group gave the partitions to someone else (or is
        # about to); the worker must not take them over again on its own word
        self.group_moved_on = False
        self._topics: dict[tuple[str, str], str] = {}  # (kind, input topic) -> output

    async def run(self, results: dict[int, ShardResult], logics: dict[int, PartitionLogic],
                  offsets: dict[TopicPartition, Any], open_: Uncommitted, interval: float,
                  laps: Laps) -> tuple[bool, bool]:
        """Step 1 for this batch's ``results`` and ``offsets``, which join ``open_``;
        then, once ``open_`` is ``interval`` seconds old, steps 2–4 for all of it.
        Returns whether steps 2–4 ran, and False when the commit failed (the
        partitions are lost). ``laps``: the batch's stopwatch, to which each step's
        time is booked."""
        produced, acks = await self.outcomes(results)
        open_.add(self.batch, results, offsets, produced)
        durable = open_.due(interval)
        # laid out while the broker stores the outcomes (the wait for their
        # acknowledgements was idle time of this loop); sent only once they are all
        # acknowledged, as step 2 requires
        snapshots = self.snapshots(open_, logics) if durable else {}
        if acks:
            await asyncio.gather(*acks)
        laps.lap("outputs")
        self.faults.point("outputs", self.batch, produced, uncommitted=open_.first_batch)
        if not durable:
            return False, True
        return True, await self.make_durable(snapshots, open_, logics, laps)

    async def make_durable(self, snapshots: dict[int, list[PrebuiltBatch]], open_: Uncommitted,
                           logics: dict[int, PartitionLogic], laps: Laps) -> bool:
        """Steps 2–4 for the uncommitted batches ``open_``, whose changelog batches are
        ``snapshots`` (:meth:`snapshots`)."""
        first = open_.first_batch if open_.first_batch is not None else self.batch
        written = await self.state(snapshots)
        changelog = {p: w[-1][1] if w else -1 for p, w in written.items()}
        laps.lap("state")
        self.faults.point("state", self.batch, open_.produced, first)
        ok = await self.commit(open_.offsets, logics, changelog)
        laps.lap("commit")
        if not ok:
            return False
        for p in snapshots:
            gaps = recovery.gaps_between(logics[p].meta.changelog_offset + 1, written[p])
            if gaps:
                self.gaps.setdefault(p, []).extend(gaps)
            logics[p].commit(changelog[p])
        laps.lap("local")
        self.faults.point("commit", self.batch, open_.produced, first)
        return True

    async def outcomes(self, results: dict[int, ShardResult]) -> tuple[bool, list[Any]]:
        """Produce the batch's outcomes and re-routed records; returns whether there
        were outcomes (grants or rejections) and the futures of their acknowledgements,
        which the caller awaits before any state is written."""
        out: dict[str, list[Outgoing]] = defaultdict(list)
        dumps = orjson.dumps
        for p, res in results.items():
            rows = [(k, dumps(row), row["source"]) for k, row in res.rejections]
            if rows:
                parts = kafka_partitions(pa.array([k for k, _, _ in rows], type=pa.binary()),
                                         self.partitions).tolist()
                for (key, value, source), part in zip(rows, parts, strict=True):
                    topic = self._outcome_topic("rejection", source)
                    # a record without a valid key goes to the partition it came from
                    out[topic].append(Outgoing(part if part >= 0 else p, key, value))
            for rr in res.reroute:
                topic = (self.topics.reroute_transactions if rr.record_type == "transaction"
                         else self.topics.reroute_enrollments)
                # the engine reads a re-routed record's time from its JSON, not from
                # the message timestamp (which the producer would set to "now")
                ts = rr.received // 1000 if rr.received != NO_TIME else None
                out[topic].append(Outgoing(rr.partition, rr.record["mykey_id"].encode(),
                                           dumps(rr.record), ts,
                                           [(SOURCE_HEADER, rr.source.encode())]))
        futs: list[Any] = []
        encode_grants([res.grant_messages for res in results.values()])
        for p, res in results.items():
            if len(res.grant_messages):
                futs.extend(s.future for s in await self._grants(p, res.grant_messages))
        for topic, msgs in out.items():
            futs.extend(s.future for s in await send_batched(self.producer, topic, msgs))
        return any(len(res.grant_messages) or res.rejections for res in results.values()), futs

    def _outcome_topic(self, kind: str, source: str) -> str:
        # an outcome goes to the outputs of the operator whose input the record arrived
        # on (its source names that topic, also for a re-routed or replayed record)
        src = source.partition("/")[0]
        topic = self._topics.get((kind, src))
        if topic is None:
            topic = self._topics[(kind, src)] = self.topics.outcome_topic(
                kind, self.topics.operator_of(src))
        return topic

    async def _grants(self, p: int, g: GrantMessages) -> list[Sent]:
        """A partition's grants as record batches per output topic partition, each
        partition's in decision order."""
        parts = kafka_partitions(g.keys, self.partitions)
        codes, firsts = prefix_codes(g.sources, "/")
        topics = [self._outcome_topic("grant", g.sources[f].as_py()) for f in firsts.tolist()]
        group = codes * self.partitions + np.where(parts >= 0, parts, p)
        order = np.argsort(group, kind="stable")
        sent: list[Sent] = []
        for rows in np.split(order, np.flatnonzero(np.diff(group[order])) + 1):
            code, part = divmod(int(group[rows[0]]), self.partitions)
            sent += await send_built(self.producer, topics[code], part,
                                     record_batches(g.keys, g.values, rows, BATCH_BYTES))
        return sent

    def snapshots(self, open_: Uncommitted, logics: dict[int, PartitionLogic]
                  ) -> dict[int, list[PrebuiltBatch]]:
        """The snapshot of each partition ``open_`` touched (and still held here) as its
        changelog's record batches, tagged with the fence it was taken under."""
        out = {}
        for p in sorted(open_.parts & logics.keys()):
            logic = logics[p]
            snap = logic.snapshot()
            out[p] = record_batches(pa.array(list(snap), pa.large_string()),
                                    pa.array(list(snap.values()), pa.large_binary()), None,
                                    BATCH_BYTES, recovery.fence_tag(logic.meta.fence))
        return out

    async def state(self, snapshots: dict[int, list[PrebuiltBatch]]
                    ) -> dict[int, list[tuple[int, int]]]:
        """Write each snapshot to its changelog partition; returns the offsets each
        batch's records took there (first, last), per partition, in order."""
        sent: dict[int, list[Sent]] = {}
        for p, batches in snapshots.items():
            sent[p] = await send_built(self.producer, self.topics.changelog, p, batches)
        return {p: await offsets_taken(futs) for p, futs in sent.items()}

    async def commit(self, offsets: dict[TopicPartition, Any],
                     logics: dict[int, PartitionLogic], changelog: dict[int, int]) -> bool:
        offsets = {tp: m for tp, m in offsets.items() if tp.partition in logics}
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
            # CommitFailedError: the group rebalanced without this member (aiokafka
            # rejoins it); IllegalStateError: a partition's assignment is gone already
            self.group_moved_on = isinstance(e, CommitFailedError | IllegalStateError)
            log.warning("offset commit failed (%s: %s): this worker lost partitions %s "
                        "(or cannot tell); dropping their local state", type(e).__name__,
                        e, sorted({tp.partition for tp in offsets}))
            return False
        return True
