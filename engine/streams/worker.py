"""``mynapoint worker``: the streaming settlement worker.

The data path is a plain aiokafka consume → decide → produce loop rather than
Faust agents: Faust spends ~190 µs of CPU per message in its own stream
machinery and its ``exactly_once`` mode has open duplicate bugs (faust-streaming
#517, #323, #177), which together rule out the speed and guarantee targets.
See docs/ARCHITECTURE.md for the measurements and README "Guarantees". For users
whose stream jobs are Faust apps, ``--runtime faust`` (``engine.streams.faust_runtime``)
runs this same worker with Faust consuming.

Per poll, for every partition ``p`` this worker owns (``p`` of both input
topics and of its two re-routing topics, thanks to range assignment over
co-partitioned topics):

1. decode and validate the batch (``engine.streams.decode``),
2. decide it with the partition's settlement logic (``engine.streams.logic``),
3. make it durable in the order ``engine.streams.checkpoint`` owns: outcomes and
   re-routed records acknowledged, then (for all the batches since the last commit,
   at most every ``COMMIT_INTERVAL_SECONDS``) the state snapshot in the changelog
   (tagged with this worker's fence), then the input offsets committed (with the
   changelog position as metadata), then the local copy (in memory, and in its
   checkpoint file every few seconds: DECISIONS 106, 144); a worker whose commit
   fails has lost the partition and drops its local copy instead.

A crash anywhere re-runs at most the uncommitted tail; see ``state.py`` for
why that is harmless. Taking a partition over (checks, fence, restore) runs in
a background task, not in the rebalance callback: ``engine.streams.recovery``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import signal
import sys
import time
from bisect import bisect_left
from collections import defaultdict
from pathlib import Path
from typing import IO, Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from engine.config import load_or_report
from engine.kafka.client_config import default_client
from engine.kafka.produce import BATCH_BYTES
from engine.kafka.topics import (
    CHANGELOG_MAX_BYTES,
    TopicMismatch,
    Topics,
    ensure_topics,
)
from engine.metrics import EngineMetrics, Laps
from engine.ops import health, logs
from engine.rules.model import NO_TIME, Campaign, Reason, Registry
from engine.streams import recovery
from engine.streams.checkpoint import Checkpoint, Faults, Uncommitted
from engine.streams.decode import InBatch, concat_batches, decode_groups, records_by_topic
from engine.streams.logic import PartitionLogic, decide_together
from engine.streams.order import MergeViews, fair_prefixes
from engine.streams.shard import ShardResult
from engine.streams.state import ShardStore
from engine.streams.warmup import warm_up

log = logging.getLogger("mynapoint.worker")
# A batch that fails on a Kafka error is retried after 0.5, 1, 2, ... at most 10 s;
# waiting does not cure a missing permission, so those still stop the worker.
RETRY_FIRST_SECONDS = 0.5
# A batch's input bytes (about 1.3 s of deciding on the bench machine for batched
# JSON Lines): a batched backlog's poll can hold a million records, and a batch that
# long starves heartbeats and produces nothing for tens of seconds (DECISIONS 95)
MAX_BATCH_BYTES = 4 << 20
RETRY_MAX_SECONDS = 10.0
# How long a transactions input must deliver nothing before its waits follow its
# partition's stream time (DECISIONS 112): longer than a leader change (the
# brokers' 9 s session timeout, then a metadata refresh; the publisher's sends to
# that partition stall as long) with room to spare.
QUIET_SECONDS = 30.0
# fetches unanswered this long: the input cannot be seen (its quiet period restarts)
FETCH_LAPSE_SECONDS = 5.0
QUIET_CHECK_SECONDS = 1.0  # how often the worker looks for inputs gone quiet
# how often the worker looks for records of another writer at its changelog
# partitions' ends (recovery.write_again; docs/RELIABILITY.md)
CHANGELOG_WATCH_SECONDS = 1.0
# the loop waits at most this for one partition's keys to be written again
WRITE_AGAIN_TIMEOUT_SECONDS = 10.0
ENDS_TIMEOUT_SECONDS = 2.0  # a batch's look at the enrollment topics' ends (DECISIONS 126)
# How often the enrollments' ends are noted as backlog marks (_enrollments_behind): an
# input still below where it ended this long ago is a backlog, not a steady flow
BACKLOG_LOOK_SECONDS = 1.0
# A batch allocates a few container objects per record (outcome dicts, lists), so
# CPython's default thresholds (700, 10, 10) collect every few hundred records, and
# young objects that live for the batch are walked again and again: with these the
# state bench ran 12 % faster, as fast as with the collector off (bench/RESULTS.md).
# Reference cycles are still collected, later.
GC_THRESHOLDS = (50_000, 20, 100)
# aiokafka asks a broker for more only once what it holds of that broker's partitions
# has been read: the answer to the fetch a poll's read sets off arrives while the batch
# is decided and waits for the next poll, so a record appended after it waited two
# polls. A poll whose messages were fetched this long ago reads once more, waiting at
# most TOP_UP_WAIT_MS, for what was appended since (DECISIONS 128).
TOP_UP_AGE_MS = 3
TOP_UP_WAIT_MS = 5
# Records a decide call takes from several partitions together (DECISIONS 130): a
# call costs about half a millisecond before its first record, and a live poll brings
# each partition a few dozen; above this, a call takes long enough that the calls'
# fixed cost does not matter, and heartbeats and fetches run between them.
CALL_RECORDS = 20_000
# A batch's state goes to the changelog, and its offsets are committed, together
# with the batches before it since the last commit, once the first of them is this
# old (DECISIONS 131): a live poll's two round trips to the broker and its changelog
# bytes are paid every few polls, and a person touched by several of them is
# written once. A crash decides at most this much again.
COMMIT_INTERVAL_SECONDS = 0.1
# How long the broker may hold a fetch for data (DECISIONS 134). While records flow,
# short: aiokafka fetches a broker's partitions only once what it holds of them is
# read, so a fetch that found only idle partitions would hold back the busy ones. Once
# nothing came for IDLE_AFTER_SECONDS, long: nothing is held then, so a fetch names
# every partition and the broker answers it on the first byte; the wait costs no
# latency, and an idle worker stops asking for 208 partitions 50 times a second
# (bench/RESULTS.md, "An idle worker"). Well below FETCH_LAPSE_SECONDS, which takes an
# unanswered fetch for a broker away.
LIVE_FETCH_WAIT_MS = 20
IDLE_FETCH_WAIT_MS = 500
IDLE_AFTER_SECONDS = 1.0
MAX_IDLE_FETCH_WAIT_MS = 2_000
NOT_RETRIED = (TopicAuthorizationFailedError, GroupAuthorizationFailedError,
               ClusterAuthorizationFailedError)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # the lock: a batch in flight finishes (and commits) before its stores close
        async with self.worker.lock:
            await self.worker.commit_before_revoke()
            self.worker.close_partitions({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        # No restore here: a long one would stop heartbeats and get this member
        # evicted, restarting the restore (a livelock). Partitions stay paused
        # until their background take-over is done.
        self.worker.assign_partitions({tp.partition for tp in assigned})


class Worker:
    # The consumer is aiokafka's, and what it knows of the inputs is what its own
    # fetches told: high watermarks timed by last_poll_timestamp, so a batch may take
    # its enrollments' ends from them (_batch_ends); and a broker is fetched from again
    # only once what was fetched is read, so a poll reads once more (_top_up). Faust's
    # adapter knows ends from looks of its own and hands over what its agent was given.
    AIOKAFKA_FETCHES = True
    # seconds between commits (DECISIONS 131); 0: every batch
    commit_interval = COMMIT_INTERVAL_SECONDS

    def __init__(self, bootstrap: str, topics: Topics, campaign: Campaign, registry: Registry,
                 state_dir: Path, partitions: int = 8, max_batch: int = 20_000,
                 metrics: EngineMetrics | None = None,
                 max_batch_bytes: int = MAX_BATCH_BYTES,
                 max_record_bytes: int = 1 << 20,
                 readiness: health.Readiness | None = None, client_id: str | None = None,
                 replay: bool = False, quiet_seconds: float = QUIET_SECONDS,
                 commit_interval: float | None = None,
                 idle_fetch_wait_ms: int = IDLE_FETCH_WAIT_MS) -> None:
        if not LIVE_FETCH_WAIT_MS <= idle_fetch_wait_ms <= MAX_IDLE_FETCH_WAIT_MS:
            raise ValueError(f"idle fetch wait {idle_fetch_wait_ms} ms is outside "
                             f"{LIVE_FETCH_WAIT_MS}-{MAX_IDLE_FETCH_WAIT_MS} ms")
        self.idle_fetch_wait_ms = idle_fetch_wait_ms
        self._records_at = 0.0  # monotonic time a poll last returned records
        self.bootstrap = bootstrap
        if commit_interval is not None and self.commit_interval:  # a runtime's 0 stays
            self.commit_interval = commit_interval
        self.topics = topics
        self.campaign = campaign
        self.registry = registry
        self.partitions = partitions
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        self.max_record_bytes = max_record_bytes
        # the inputs are an archive's replay (publish --archive): believe REPLAY_HEADER
        self.replay = replay
        self.metrics = metrics or EngineMetrics()
        self.readiness = readiness or health.Readiness()
        self.client_id = client_id or health.CLIENT_ID_PREFIX
        self.state_root = state_dir / topics.group_id
        self.state_dir: Path | None = None      # this process's locked slot
        self._slot_lock: IO[str] | None = None
        self.refused: dict[int, str] = {}
        self._taking: dict[int, asyncio.Task[None]] = {}
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.logics: dict[int, PartitionLogic] = {}
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.admin: AIOKafkaAdminClient | None = None
        self.batches = 0
        self.records = 0
        # the batches whose outcomes are out but whose state and offsets are not yet
        # durable (DECISIONS 131)
        self._open = Uncommitted()
        self._lag_at = 0.0
        self._marker = os.environ.get("MYNAPOINT_BATCH_MARKER")
        self.producer_stale = False  # replace it before the next batch
        self.faults = Faults()
        self._failures = 0  # batches failed in a row (the retry delay grows with it)
        # messages fetched but not yet decided (the merge waits for another operator's
        # topic, or the batch was full): in memory only, their topic paused, nothing
        # committed
        self._held: dict[TopicPartition, list[Any]] = {}
        # beyond the batch's byte budget: held after this batch (unread to the merge)
        self._excess: dict[TopicPartition, list[Any]] = {}
        self._over_budget: set[TopicPartition] = set()  # this poll's excess, paused
        # per transactions input (re-routed ones too): chunks of its fetched messages,
        # each (first offset, the partition's enrollment ends noted when it was
        # fetched); a message is released once those enrollments are decided
        self._txn_waits: dict[TopicPartition,
                              list[tuple[int, dict[TopicPartition, int | None]]]] = {}
        self._txn_noted: dict[TopicPartition, int] = {}  # the offset after the last noted
        # each enrollments input's end in Kafka at the last backlog look, and when
        self._backlog_marks: dict[TopicPartition, int] = {}
        self._backlog_looked = 0.0
        # per partition, what its enrollment merge compares against (_merge_in_time)
        self._merge_views: dict[int, MergeViews] = {}
        self.backlogged = False  # messages held for the budget only: step again at once
        # An input's waits follow its partition's stream time only once it has been
        # quiet this long (DECISIONS 112): read to its end is not enough, since a
        # publisher's sends to one topic-partition stall behind a leader change while
        # other operators' topics run ahead.
        self.quiet_seconds = quiet_seconds
        # monotonic time each transactions input last delivered a record, or last
        # could not be seen (its fetches lapsed): its quiet period starts there
        self._active: dict[TopicPartition, float] = {}
        # the quiet inputs each partition's last decide let follow its stream time
        self._followed: dict[int, frozenset[str]] = {}
        self._quiet_checked = 0.0
        # changelog offsets another writer used between this worker's own writes, per
        # partition (Checkpoint finds them), and the consumer that reads them
        self._changelog_gaps: dict[int, list[tuple[int, int]]] = {}
        self._changelog_watched = 0.0
        self._watcher: AIOKafkaConsumer | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.start_clients()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, **default_client(), group_id=self.topics.group_id,
            client_id=self.client_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            isolation_level="read_committed", session_timeout_ms=6_000,
            heartbeat_interval_ms=1_000, max_poll_interval_ms=300_000,
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20,
            # until the first poll: _pace_fetches sets it from then on
            fetch_max_wait_ms=LIVE_FETCH_WAIT_MS,
            max_poll_records=self.max_batch)
        await self.consumer.start()
        self.consumer.subscribe(list(self.topics.consumed), listener=_Rebalance(self))
        self.metrics.set_up(True)
        self.readiness.started()

    async def start_clients(self) -> None:
        """Everything but the consumer, which is the runtime's (aiokafka's or Faust's)."""
        self._lock_slot()
        self.partitions = await ensure_topics(self.bootstrap, self.topics, self.partitions)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **default_client())
        await self.admin.start()
        self.producer = self._new_producer()
        await self.producer.start()
        # before the consumer joins its group: a first batch that compiles blocks the
        # heartbeats for a minute on a fresh install (engine.streams.warmup); in a
        # thread, so that the event loop still answers health checks and signals
        await asyncio.to_thread(warm_up, self.campaign, self.registry, self.topics,
                                self.partitions)

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, **default_client(), enable_idempotence=True,
            acks="all",
            linger_ms=2, max_batch_size=BATCH_BYTES, max_request_size=CHANGELOG_MAX_BYTES)

    async def stop(self) -> None:
        self.metrics.set_up(False)
        if self.consumer is not None:
            async with self.lock:  # while the group still has this member
                await self.commit_before_revoke()
            await self.consumer.stop()  # runs on_partitions_revoked: stores close
        for task in list(self._taking.values()):
            task.cancel()
        await asyncio.gather(*self._taking.values(), return_exceptions=True)
        if self.producer is not None:
            await self.producer.stop()
        if self.admin is not None:
            await self.admin.close()
        if self._watcher is not None:
            await self._watcher.stop()
        self.close_partitions(set(self.logics))

    def _lock_slot(self) -> None:
        """Take the first free state slot under the state root.

        The local checkpoint files are worth keeping across restarts
        (only the changelog's tail is then read), but two workers on one machine
        must never share one. A slot is held with an exclusive ``flock``, which
        the kernel releases when the process dies however it dies, so no
        clean-up of "stale" directories is needed (PIDs repeat in containers).
        """
        self.state_root.mkdir(parents=True, exist_ok=True)
        for n in range(1024):
            slot = self.state_root / f"slot-{n}"
            slot.mkdir(exist_ok=True)
            f = open(slot / ".lock", "w")  # noqa: SIM115 (held for the process's life)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            self._slot_lock, self.state_dir = f, slot
            return
        raise RuntimeError(f"no free state slot under {self.state_root}")

    # ------------------------------------------------------------------ partitions
    def _tps(self, p: int) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self.topics.consumed]

    def assign_partitions(self, parts: set[int]) -> None:
        assert self.consumer is not None
        self.readiness.assign(parts)
        for p in sorted(parts - set(self.logics)):
            self.readiness.restoring(p)
            self.consumer.pause(*self._tps(p))
            prev = self._taking.get(p)
            self._taking[p] = asyncio.create_task(self._take_over(p, prev))

    async def _take_over(self, p: int, prev: asyncio.Task[None] | None) -> None:
        """Checks, fence and restore for partition ``p``; then it is decided."""
        if prev is not None:  # a cancelled earlier take-over must release the store
            await asyncio.gather(prev, return_exceptions=True)
        assert self.state_dir is not None and self.consumer is not None
        delay = 0.5
        while not self.stopping.is_set():
            store: ShardStore | None = None
            reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, **default_client(),
                                      enable_auto_commit=False,
                                      isolation_level="read_committed",
                                      max_partition_fetch_bytes=CHANGELOG_MAX_BYTES * 2)
            try:
                await reader.start()
                t0 = time.perf_counter()
                # the local checkpoint read on a thread: a million people take a second
                # or so of the loop's time otherwise (other partitions, heartbeats)
                store = await asyncio.to_thread(ShardStore, self.state_dir / f"p{p}", NO_TIME)
                self.faults.point("takeover", self.batches)
                await self._restore(reader, store, p, t0)
                async with self.lock:
                    if p not in self._assigned():
                        store.close()
                        return
                    self.logics[p] = PartitionLogic(self.campaign, self.registry,
                                                    self.partitions, p, store)
                    self.consumer.resume(*self._tps(p))
                    self.readiness.restored(p)
                self.metrics.set_refused(p, False)  # a 0 series, so dashboards show it
                self.metrics.set_parked(p, store.parked.records)
                if store.meta.stream_time != NO_TIME:  # status shows it before a batch
                    self.metrics.set_stream_time(p, store.meta.stream_time / 1e6)
                self.metrics.set_assigned_partitions(len(self.logics))
                log.info("assigned partitions %s", sorted(self.logics))
                return
            except recovery.Refused as e:
                if store is not None:
                    store.close()
                self._refuse(p, e)
                return
            except asyncio.CancelledError:
                if store is not None:
                    store.close()
                raise
            except Exception as e:  # a broken take-over must be retried
                self.metrics.kafka_error(e)
                if store is not None:
                    store.close()
                log.warning("taking over partition %d failed (%s: %s); retrying in %.1f s",
                            p, type(e).__name__, e, delay, extra={"partition": p})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                await reader.stop()

    def _refuse(self, p: int, e: recovery.Refused) -> None:
        """Decide nothing more on partition ``p`` (its topics stay paused) until an
        operator's remedy and a restart."""
        self.refused[p] = str(e)
        self.metrics.set_refused(p, True)
        self.readiness.refuse(p, str(e))
        log.error("partition %d refused: %s. Nothing is decided on it until an "
                  "operator runs `%s --partition %d` "
                  "(docs/RUNBOOK.md)", p, e, e.remedy, p, extra={"partition": p})

    def _refuse_running(self, p: int, e: recovery.Refused) -> None:
        """A refusal found while deciding: the partition's batch is dropped undecided
        and uncommitted, its local state (the last committed batch's) closed."""
        assert self.consumer is not None
        self.consumer.pause(*self._tps(p))
        self._close_local(p)
        self.metrics.set_assigned_partitions(len(self.logics))
        self._refuse(p, e)

    def _close_local(self, p: int, keep_held: bool = False) -> PartitionLogic | None:
        """Let go of partition ``p`` here: its held messages are forgotten (whoever
        decides it next reads them from the commit) unless ``keep_held`` (it is taken
        over again here at once) and its local store is closed. Returns the logic it
        had, if any."""
        for tp in self._tps(p):
            if not keep_held:
                self._held.pop(tp, None)
            self._active.pop(tp, None)
        self._open.drop({p})
        self._changelog_gaps.pop(p, None)
        self._followed.pop(p, None)
        self._merge_views.pop(p, None)
        for tp in self._waiting_tps(p):
            self._txn_waits.pop(tp, None)
            self._txn_noted.pop(tp, None)
        logic = self.logics.pop(p, None)
        if logic is not None:
            logic.store.close()  # the files stay: a checkpoint for the next owner here
        return logic

    def _assigned(self) -> set[int]:
        assert self.consumer is not None
        return {tp.partition for tp in self.consumer.assignment()}

    async def _restore(self, reader: AIOKafkaConsumer, store: ShardStore, p: int,
                       t0: float) -> None:
        """The take-over's steps after the local checkpoint was read (since ``t0``)."""
        assert self.admin is not None and self.producer is not None
        log.info("partition %d: local checkpoint read in %.2f s (%d keys, changelog "
                 "offset %d)", p, time.perf_counter() - t0, len(store.data),
                 store.meta.changelog_offset, extra={"partition": p})

        def restored(read: int, ignored: int) -> None:
            self.metrics.fenced_records_ignored(ignored)
            log.info("partition %d restored: %d changelog records read (%d of a fenced-off "
                     "writer ignored) in %.2f s", p, read, ignored, time.perf_counter() - t0,
                     extra={"partition": p})

        await recovery.take_over(reader, self.admin, self.producer, self.topics, store, p,
                                 self._restore_progress, restored)
        store.rebuild_parked_index(self.campaign.park_timeout)
        # the restored state into the checkpoint file now, not in the first batch's time
        store.flush()
        log.info("partition %d taken over in %.2f s (inputs checked)", p,
                 time.perf_counter() - t0, extra={"partition": p})

    def _restore_progress(self, p: int, remaining: int) -> None:
        self.metrics.set_restore_remaining(p, remaining)
        self.readiness.restoring(p, remaining)

    def close_partitions(self, parts: set[int]) -> None:
        for p in sorted(parts):
            task = self._taking.pop(p, None)
            if task is not None and not task.done():
                task.cancel()
                self._taking[p] = task  # the next take-over waits for it to let go
            self._close_local(p)
            self.refused.pop(p, None)
        self.metrics.forget_partitions(parts)
        self.metrics.set_assigned_partitions(len(self.logics))
        self.readiness.release(parts)

    def _drop_local_state(self, parts: set[int], take_over_again: bool) -> None:
        """Our commit failed: we no longer own these partitions (or cannot tell).
        The in-memory state ran ahead of anything committed, so it is dropped,
        local files included; a new take-over restores from the changelog.

        ``take_over_again``: the commit failed for a reason other than the group
        moving on, so the partitions still assigned are this member's and it takes
        them over again at once. When the group moved on (DECISIONS 140) it does
        not: aiokafka's assignment still names the partitions until the rejoin, and a
        take-over then would write a fence after the new owner's, fencing off every
        state record the owner writes from then on. The rejoin's assignment hands
        back what is this member's; till then their inputs are paused, so that
        nothing is fetched and thrown away. Taken over again, a partition keeps the
        messages held for it (waiting for enrollments, over the batch budget): its
        consumer went past them, and no rebalance comes to read them again."""
        assert self.consumer is not None
        still = parts & self._assigned()
        for p in parts:
            logic = self._close_local(p, keep_held=take_over_again and p in still)
            if logic is not None:
                ShardStore.destroy(logic.store.path)
        if take_over_again:
            self.readiness.release(parts - still)
            if still:
                self.assign_partitions(still)
        else:
            for p in sorted(still):
                self.consumer.pause(*self._tps(p))
            self.readiness.release(parts)
        self.metrics.set_assigned_partitions(len(self.logics))

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        while not self.stopping.is_set():
            await self.step(200)

    async def step(self, timeout_ms: int) -> None:
        """One batch: fetch (waiting up to ``timeout_ms``), decide, checkpoint. The
        aiokafka runtime loops on it; the Faust runtime's agent calls it."""
        assert self.consumer is not None
        data: dict[Any, list[Any]] = {}
        try:
            if self.producer_stale:
                await self._replace_producer()
            await self._prioritise_enrollments()
            if not self._open.empty():  # back in time to commit it
                left = self._open.since + self.commit_interval - time.monotonic()
                timeout_ms = min(timeout_ms, max(0, int(left * 1000)))
            data = await self.consumer.getmany(
                timeout_ms=0 if self.backlogged else timeout_ms, max_records=self.max_batch)
            self._pace_fetches(data)
            data = await self._top_up(data)
            now = time.monotonic()
            for tp, msgs in data.items():
                if msgs:
                    self._active[tp] = now
            # held messages are looked at again even when nothing new came: what they
            # wait for (an end reached, a budget freed) may have come without a message
            if data or self.backlogged or self._held:
                async with self.lock:
                    await self.process(data)
            data = {}  # in self._open (rewound from there) or committed
            if now - self._quiet_checked >= QUIET_CHECK_SECONDS:
                self._quiet_checked = now
                async with self.lock:
                    await self._follow_quiet()
            if self._open.due(self.commit_interval):
                async with self.lock:
                    await self._commit_open()
            if now - self._changelog_watched >= CHANGELOG_WATCH_SECONDS:
                self._changelog_watched = now
                async with self.lock:
                    await self._watch_changelog()
            self._failures = 0
        except NOT_RETRIED as e:
            self.metrics.kafka_error(e)
            raise
        except KafkaError as e:
            # A broker died or moved a leader or the group coordinator, and
            # aiokafka gave up on a send or a lookup (a failed commit is handled in
            # process). Nothing of the batch is in the local checkpoint yet, so it
            # is decided again from there: the same outcomes and changelog records.
            delay = min(RETRY_FIRST_SECONDS * 2 ** self._failures, RETRY_MAX_SECONDS)
            self._failures += 1
            log.warning("batch failed (%s: %s); retrying it in %.1f s",
                        type(e).__name__, e, delay)
            async with self.lock:
                self._rewind(data)
            await asyncio.sleep(delay)

    def _pace_fetches(self, data: dict[Any, list[Any]]) -> None:
        """The consumer's fetch wait after a poll that returned ``data``:
        LIVE_FETCH_WAIT_MS, or ``idle_fetch_wait_ms`` once no poll returned records
        for IDLE_AFTER_SECONDS and nothing waits in memory. Set before the step yields
        to the event loop: aiokafka sends its next fetch once this poll's records are
        taken, with the wait it finds then (a private attribute of its fetcher;
        without one, as under the Faust runtime, nothing changes)."""
        now = time.monotonic()
        # messages held or over the budget keep their topics paused: once resumed,
        # those must not wait behind a long fetch of the idle rest
        if any(data.values()) or self._held or self._excess:
            self._records_at = now
        fetcher = getattr(self.consumer, "_fetcher", None) if self.AIOKAFKA_FETCHES else None
        if fetcher is None or not hasattr(fetcher, "_fetch_max_wait_ms"):
            return
        idle = now - self._records_at >= IDLE_AFTER_SECONDS
        fetcher._fetch_max_wait_ms = self.idle_fetch_wait_ms if idle else LIVE_FETCH_WAIT_MS

    async def _top_up(self, data: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
        """``data`` with what was appended since it was fetched, when that was more
        than TOP_UP_AGE_MS ago (see there); each topic-partition's messages stay in
        offset order, the second read's after the first's."""
        assert self.consumer is not None
        if not data or not self.AIOKAFKA_FETCHES:
            return data
        room = self.max_batch - sum(map(len, data.values()))
        stamps = [t for t in map(self.consumer.last_poll_timestamp, data) if t is not None]
        if room <= 0 or not stamps or time.time() * 1000 - min(stamps) < TOP_UP_AGE_MS:
            return data
        more = await self.consumer.getmany(timeout_ms=TOP_UP_WAIT_MS, max_records=room)
        for tp, msgs in more.items():
            if tp in data:
                last = data[tp][-1].offset
                if msgs[0].offset <= last:
                    # a rebalance in between set positions back to the committed
                    # offsets: what the first read returned is not returned twice
                    msgs = [m for m in msgs if m.offset > last]
                data[tp] = data[tp] + msgs
            else:
                data[tp] = msgs
        return data

    def _rewind(self, data: dict[Any, list[Any]]) -> None:
        """Undo a failed batch: read it again, forget its undurable state changes,
        and use a new producer (the old one may have spent sequence numbers on
        records the broker never stored, and would fail every later send)."""
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        # the first offsets fetched since the commit (held messages included: process
        # put them in ``data``) are the committed ones, which the local checkpoint
        # matches: no round trip to a coordinator that may be down
        first = dict(self._open.first)
        for tp, msgs in [*data.items(), *self._held.items()]:
            if msgs:
                first[tp] = min(msgs[0].offset, first.get(tp, msgs[0].offset))
        discarded = {tp.partition for tp in first} | self._open.parts
        self._open = Uncommitted()
        self._held.clear()
        self._excess.clear()
        self._over_budget.clear()
        self._merge_views.clear()
        self._txn_waits.clear()  # noted again when read again (later ends: no earlier)
        self._txn_noted.clear()
        self.backlogged = False
        for tp, offset in first.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)
        for p in discarded & set(self.logics):
            self.logics[p].discard()
            self._followed.pop(p, None)  # its quiet inputs' waits are decided again
        self.producer_stale = True

    async def _replace_producer(self) -> None:
        old, self.producer = self.producer, self._new_producer()
        if old is not None:
            # its undelivered sends are copies of outcomes that will be produced again
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), 5.0)
        await self.producer.start()
        self.producer_stale = False

    async def _prioritise_enrollments(self) -> None:
        """Pause what waits in memory: transactions waiting for their partition's
        enrollments (applications precede spending, process), and messages beyond a
        batch's byte budget; resume the rest. A partition's transactions are not
        fetched at all while its enrollments are a backlog (_enrollments_behind). The
        enrollment merge's held messages do not pause their topic: it must go on
        being read to reach their view."""
        assert self.consumer is not None
        c = self.consumer
        assigned = c.assignment()
        paused = c.paused()
        # compared before they are noted again: what a mark measures is the distance
        # covered since it was noted, a look ago
        marks_stale = time.monotonic() - self._backlog_looked >= BACKLOG_LOOK_SECONDS
        for p in list(self.logics):
            try:  # a backlog of enrollments: its transactions are not even fetched yet
                behind = await self._enrollments_behind(p)
            except Exception:  # position unknown during a rebalance: decide next round
                continue
            enrollments = self._enrollment_tps(p)
            waiting = self._waiting_tps(p)
            for tp in (*enrollments, *self._reroute_tps(p), *self._transaction_tps(p)):
                if tp not in assigned:
                    continue
                hold = (tp in self._over_budget if tp in enrollments
                        else tp in self._held or (behind and tp in waiting))
                if hold and tp not in paused:
                    c.pause(tp)
                elif not hold and tp in paused:
                    c.resume(tp)
        if marks_stale:
            # partitions still being taken over too: none waits a look once it is ready
            self._backlog_marks = await self._enrollment_ends(sorted(self._assigned()))
            # timed from its answer: a look that waited out ENDS_TIMEOUT_SECONDS (a
            # leader away) is not repeated at every step
            self._backlog_looked = time.monotonic()
        await self._export_lag()

    async def _export_lag(self) -> None:
        """Consumer lag of every consumed partition, at most once a second."""
        assert self.consumer is not None
        now = time.monotonic()
        if now - self._lag_at < 1.0:
            return
        self._lag_at = now
        for p in list(self.logics):
            for tp in self._tps(p):
                hw = self.consumer.highwater(tp)
                if hw is None:
                    continue
                try:
                    pos = await self.consumer.position(tp)
                except Exception:  # revoked meanwhile
                    continue
                self.metrics.set_consumer_lag(tp.topic, p, max(hw - pos, 0))

    def _enrollment_tps(self, p: int) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self.topics.enrollment_inputs]

    def _transaction_tps(self, p: int) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self.topics.transaction_inputs]

    def _reroute_tps(self, p: int) -> tuple[TopicPartition, TopicPartition]:
        """The partition's re-routed enrollments and transactions."""
        return (TopicPartition(self.topics.reroute_enrollments, p),
                TopicPartition(self.topics.reroute_transactions, p))

    async def _unread(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` has records in Kafka this worker has not fetched (True while
        unknown)."""
        assert self.consumer is not None
        if tp in self._excess:
            return True
        hw = self.consumer.highwater(tp)
        return hw is None or hw > await self.consumer.position(tp)

    async def _merge_in_time(self, tps: list[TopicPartition], fetched: dict[str, list[Any]],
                             known: dict[TopicPartition, int]
                             ) -> tuple[list[Any], dict[str, list[Any]]]:
        """engine.streams.order's merge of one partition's enrollment topics, against
        a view of them taken now (order.MergeViews): their ends (``known``, asked by
        the batch) and positions."""
        assert self.consumer is not None
        c = self.consumer
        mine = [tp for tp in tps if tp in c.assignment()]
        if any(tp not in known for tp in mine):
            return [], fetched  # an end unknown: decide at the next look, not guess
        returned = {tp.topic: await c.position(tp) for tp in mine}
        views = self._merge_views.setdefault(tps[0].partition, MergeViews())
        return views.merge(fetched, returned, {tp.topic: known[tp] for tp in mine},
                           {tp.topic for tp in mine if tp in self._excess})

    async def _caught_up(self, p: int) -> frozenset[str]:
        """The operators ("" for the unattributed input) whose transactions topic of
        partition ``p`` has nothing unread or held and has been quiet for
        ``quiet_seconds``: their waits may end by the partition's stream time
        (engine.streams.shard)."""
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        out = set()
        for tp in self._transaction_tps(p):
            if (tp in assigned and tp not in self._held and not await self._unread(tp)
                    and self._quiet(tp)):
                out.add(self.topics.operator_of(tp.topic) or "")
        return frozenset(out)

    def _quiet(self, tp: TopicPartition) -> bool:
        """Whether ``tp`` delivered nothing for ``quiet_seconds`` while its fetches
        were answered. A fetch that lapsed (a broker away) restarts the period: the
        input could not be seen, and its publisher may be stalled by the same fault."""
        assert self.consumer is not None
        now = time.monotonic()
        polled = self.consumer.last_poll_timestamp(tp)
        if polled is None or time.time() * 1000 - polled > FETCH_LAPSE_SECONDS * 1000:
            self._active[tp] = now
            return False
        return now - self._active.setdefault(tp, now) >= self.quiet_seconds

    async def _follow_quiet(self) -> None:
        """The inputs that went quiet since their partition's last decide have their
        waits follow its stream time now, not when the partition's next record
        arrives (an operator that ended early, the end of a stream)."""
        assert self.consumer is not None
        results: dict[int, ShardResult] = {}
        laps = Laps()
        behind = set()
        for p in sorted(self.logics):
            # transactions wait for enrollments already in Kafka (process): so do waits
            if await self._enrollments_behind(p):
                behind.add(p)
        for p in sorted(set(self.logics) - behind):
            before = self._followed.get(p, frozenset())
            caught = self._followed[p] = await self._caught_up(p)
            if not caught <= before:
                res = self.logics[p].decide(None, None, caught)
                # nothing decided: what it staged (the same state rewritten) goes
                # with the partition's next batch, and no batch is reported
                if any(len(codes) for codes in res.outcomes.values()):
                    results[p] = res
        if not results:
            return
        laps.lap("decide")
        try:
            await self._checkpoint(results, {}, laps)
        except KafkaError:
            # nothing of it is durable: decided again at the next look (step's
            # handler replaces the producer)
            for p in results:
                self.logics[p].discard()
                self._followed.pop(p, None)
            raise

    async def _checkpoint(self, results: dict[int, ShardResult],
                          offsets: dict[TopicPartition, Any], laps: Laps) -> None:
        """Outcomes of decided partitions, and in time (COMMIT_INTERVAL_SECONDS) the
        state and offsets of every batch since the last commit, in the crash-safe
        order (engine.streams.checkpoint); a lost commit drops their local state."""
        open_, cp = self._open, self._checkpointer()
        durable, ok = await cp.run(results, self.logics, offsets, open_, self.commit_interval,
                                   laps)
        if durable:
            self._committed(open_, ok, cp.group_moved_on)
        self._observe(results, laps)

    def _checkpointer(self) -> Checkpoint:
        return Checkpoint(self.producer, self.consumer, self.topics, self.partitions,
                          self.faults, self.batches, self._changelog_gaps)

    async def _watch_changelog(self) -> None:
        """Records of another writer (a zombie's) on the changelog partitions held here,
        between this worker's own writes or after the last one: the state of the keys
        they name is written again, so that this owner's record stays the newest of
        each key when the changelog is compacted (recovery.write_again)."""
        parts = sorted(self.logics)
        if not parts:
            return
        if self._watcher is None:
            self._watcher = AIOKafkaConsumer(bootstrap_servers=self.bootstrap,
                                             **default_client(), enable_auto_commit=False,
                                             isolation_level="read_committed")
            await self._watcher.start()
        tps = [TopicPartition(self.topics.changelog, p) for p in parts]
        try:  # bounded: a broker away is looked at again in a second, not waited for
            ends = await asyncio.wait_for(self._watcher.end_offsets(tps),
                                          ENDS_TIMEOUT_SECONDS)
        except (TimeoutError, KafkaError):
            return
        assert self.producer is not None
        for p, tp in zip(parts, tps, strict=True):
            logic = self.logics.get(p)
            if logic is None:
                continue
            between = self._changelog_gaps.pop(p, [])  # all before its last record
            nxt = logic.meta.changelog_offset + 1  # where this owner's next record goes
            gaps = between + ([(nxt, ends[tp] - 1)] if ends[tp] > nxt else [])
            if not gaps and not logic.store.fenced_off:
                continue
            try:
                found, around = await asyncio.wait_for(
                    recovery.write_again(self._watcher, self.producer, self.topics,
                                         logic.store, p, gaps), WRITE_AGAIN_TIMEOUT_SECONDS)
            except (TimeoutError, KafkaError) as e:  # the broker away: again in a second
                self._changelog_gaps[p] = between  # the end is looked at anew
                log.warning("partition %d: another writer's changelog records not looked "
                            "at yet (%s)", p, type(e).__name__, extra={"partition": p})
                continue
            if around:
                self._changelog_gaps[p] = around
            if found:
                log.warning("partition %d: %d keys of another writer's state records in the "
                            "changelog (at offsets %s, or read at the take-over); their state "
                            "as held here written again", p, found,
                            ", ".join(f"{a}-{b}" for a, b in gaps) or "-",
                            extra={"partition": p})

    async def _commit_open(self) -> None:
        """State and offsets of the batches since the last commit, now."""
        open_ = self._open
        if open_.empty():
            return
        cp, laps = self._checkpointer(), Laps()
        ok = await cp.make_durable(cp.snapshots(open_, self.logics), open_, self.logics, laps)
        self._committed(open_, ok, cp.group_moved_on)
        # its time by phase, as a batch of no records of its own: the dashboards' batch
        # time is the worker's whole time at work, commits included
        self.metrics.observe_batch(0, laps.elapsed(), laps.phases)

    def _committed(self, open_: Uncommitted, ok: bool, group_moved_on: bool) -> None:
        """``open_`` went through steps 2–4: the next batch starts a new one; a failed
        commit lost its partitions, whose local state goes."""
        self._open = Uncommitted()
        if not ok:
            self._drop_local_state(set(open_.parts), take_over_again=not group_moved_on)

    async def commit_before_revoke(self) -> None:
        """What was decided of the partitions being revoked is committed, so that
        their next owner does not decide it again; if the broker fails that, it is
        dropped (decided again by the next owner, with the same outcomes)."""
        try:
            await self._commit_open()
        except KafkaError as e:
            log.warning("commit before a rebalance failed (%s: %s): the next owner decides "
                        "the uncommitted batches again", type(e).__name__, e)
            self._rewind({})
            return
        try:  # the last look at them as their owner
            await self._watch_changelog()
        except KafkaError as e:
            log.warning("changelog not checked before a rebalance (%s: %s)",
                        type(e).__name__, e)

    def _waiting_tps(self, p: int) -> list[TopicPartition]:
        """The inputs of partition ``p`` whose messages wait for its enrollments."""
        return [*self._transaction_tps(p), self._reroute_tps(p)[1]]

    async def _undecided_from(self, p: int) -> dict[TopicPartition, int]:
        """Per enrollments input of ``p``, the first offset not yet decided: in Kafka,
        beyond the batch budget, or held by the merge."""
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        out = {}
        for tp in self._enrollment_tps(p):
            if tp in assigned:
                first = [m[0].offset for m in (self._held.get(tp), self._excess.get(tp)) if m]
                out[tp] = min([await self.consumer.position(tp), *first])
        return out

    def _ready(self, tp: TopicPartition, msgs: list[Any],
               undecided: dict[TopicPartition, int], ends: dict[TopicPartition, int]) -> int:
        """How many of ``msgs`` (transactions of ``tp``, in offset order) may be
        decided: those whose partition's enrollments, as they ended in Kafka when the
        message was first looked at (``ends``, asked of the broker then), are all
        decided (``undecided``, from _undecided_from).

        Applications precede spending: a transaction read before its person's
        enrollment, already in Kafka, would wait in the state and could time out
        (rule 23). Each message waits for a fixed end, noted once: waiting instead
        while anything was unread starved transactions for good while applications
        kept arriving, as aiokafka and Faust fetch ahead (DECISIONS 126). Not the
        last fetch's end either: that is stale for an input paused over the batch
        budget, which a backlog is. An end unknown then (the broker not answering)
        is noted at the first look that knows it."""
        notes = self._txn_waits.setdefault(tp, [])
        first_new = max(self._txn_noted.get(tp, 0), msgs[0].offset) if msgs else 0
        if msgs and msgs[-1].offset >= first_new:
            notes.append((first_new, {e: ends.get(e) for e in undecided}))
            self._txn_noted[tp] = msgs[-1].offset + 1
        cut = None
        for start, noted in notes:
            for e, end in noted.items():
                if end is None:
                    end = noted[e] = ends.get(e)
                if end is None or undecided.get(e, end) < end:
                    cut = start
                    break
            if cut is not None:
                break
        if cut is None:
            notes.clear()
            return len(msgs)
        while len(notes) > 1 and notes[1][0] <= cut:
            notes.pop(0)
        return bisect_left(msgs, cut, key=lambda m: m.offset)

    async def _enrollment_ends(self, parts: list[int]) -> dict[TopicPartition, int]:
        """The enrollments inputs' ends in Kafka now, of partitions ``parts``: one
        round trip, bounded. A broker away (aiokafka would wait for its request
        timeout, 40 s, at every batch) leaves the last fetch's ends, where known."""
        assert self.consumer is not None
        c = self.consumer
        assigned = c.assignment()
        tps = [tp for p in parts for tp in self._enrollment_tps(p) if tp in assigned]
        if not tps:
            return {}
        try:
            return dict(await asyncio.wait_for(c.end_offsets(tps), ENDS_TIMEOUT_SECONDS))
        except (TimeoutError, KafkaError):
            return {tp: hw for tp in tps if (hw := c.highwater(tp)) is not None}

    async def _batch_ends(self, by_part: dict[int, dict[str, list[Any]]]
                          ) -> dict[TopicPartition, int]:
        """The enrollments inputs' ends that a batch's messages are noted with (the
        merge's views, the transactions' waits), per partition of ``by_part`` (its
        messages by topic). A fetch's answer tells each input's end as the answer is
        built, after what it brings was appended: so where every enrollments input of
        a partition was answered no earlier than every input its messages came from
        (last_poll_timestamp), those ends are at least the ends when the messages were
        fetched, all a note needs, and no round trip is made for that partition
        (DECISIONS 127). The others' ends are asked of the broker (_enrollment_ends):
        an input paused, or with fetched messages not yet handed over, is not in the
        consumer's fetches, and its end grows stale."""
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        ends: dict[TopicPartition, int] = {}
        ask: list[int] = []
        for p, topics in by_part.items():
            told = self._told_ends(p, topics, assigned) if self.AIOKAFKA_FETCHES else None
            if told is None:
                ask.append(p)
            else:
                ends.update(told)
        if ask:
            ends.update(await self._enrollment_ends(ask))
        return ends

    def _told_ends(self, p: int, topics: dict[str, list[Any]], assigned: set[TopicPartition]
                   ) -> dict[TopicPartition, int] | None:
        """Partition ``p``'s enrollments ends as the consumer's fetches told them, if
        each was told no earlier than every fetch of ``topics`` (_batch_ends)."""
        assert self.consumer is not None
        c = self.consumer
        inputs = [TopicPartition(t, p) for t in topics]
        if not inputs or not assigned.issuperset(inputs):  # a rebalance: ask the broker
            return None
        fetched = [c.last_poll_timestamp(tp) for tp in inputs]
        if None in fetched:
            return None
        newest = max(fetched)
        told = {}
        for tp in self._enrollment_tps(p):
            if tp in assigned:
                at, hw = c.last_poll_timestamp(tp), c.highwater(tp)
                if at is None or hw is None or at < newest:
                    return None
                told[tp] = hw
        return told

    async def _enrollments_behind(self, p: int) -> bool:
        """Whether partition ``p`` has transactions waiting for its enrollments, or
        enrollments that are a backlog: beyond the batch budget, or below where they
        ended in Kafka at the last backlog look (up to BACKLOG_LOOK_SECONDS ago; not
        "anything unread", which a steady flow nearly always has, DECISIONS 126). An
        input not looked at yet (a worker's first step) counts as a backlog until the
        look that step ends with."""
        assert self.consumer is not None
        if any(tp in self._held for tp in self._waiting_tps(p)):
            return True
        undecided = await self._undecided_from(p)
        for tp, first in undecided.items():
            if tp in self._over_budget or tp in self._excess:
                return True
            mark = self._backlog_marks.get(tp)
            if mark is None or first < mark:
                return True
        return False

    def _fetched(self, tps: list[TopicPartition], topics: dict[str, list[Any]]
                 ) -> dict[str, list[Any]]:
        """Per topic of ``tps``, its messages held from earlier batches, then this
        batch's (taken out of ``topics``: _keep puts back what is decided)."""
        fetched: dict[str, list[Any]] = {}
        for tp in tps:
            msgs = self._held.pop(tp, []) + topics.pop(tp.topic, [])
            if msgs:
                fetched[tp.topic] = msgs
        return fetched

    def _keep(self, p: int, fetched: dict[str, list[Any]], held: dict[str, list[Any]],
              topics: dict[str, list[Any]], offsets: dict[TopicPartition, Any],
              pause: bool) -> None:
        """What must wait is held in memory (its topic paused if ``pause``); only the
        decided rest goes back to ``topics`` and counts for the offsets committed."""
        assert self.consumer is not None
        for t, msgs in fetched.items():
            tp = TopicPartition(t, p)
            if t in held:
                self._held[tp] = held[t]
                if pause:
                    self.consumer.pause(tp)  # not fetched again while it waits here
            done = len(msgs) - len(held.get(t, ()))
            if done:
                topics[t] = msgs[:done]
                offsets[tp] = msgs[done - 1]
            else:
                offsets.pop(tp, None)

    async def _merge_enrollments(self, p: int, topics: dict[str, list[Any]],
                                 offsets: dict[TopicPartition, Any],
                                 ends: dict[TopicPartition, int]) -> list[Any]:
        """Partition ``p``'s enrollments (one topic per operator) in decision order
        (engine.streams.order, _merge_in_time). Their held topics are not paused: they
        must go on being read to reach their view."""
        tps = self._enrollment_tps(p)
        fetched = self._fetched(tps, topics)
        if not fetched:
            return []
        released, held = await self._merge_in_time(tps, fetched, ends)
        self._keep(p, fetched, held, topics, offsets, pause=False)
        return released

    def _release_transactions(self, p: int, tps: list[TopicPartition],
                              topics: dict[str, list[Any]],
                              offsets: dict[TopicPartition, Any],
                              undecided: dict[TopicPartition, int],
                              ends: dict[TopicPartition, int]) -> list[Any]:
        """Partition ``p``'s transactions of ``tps``, topic by topic (each operator's
        keep their own stream time: no merge), each as far as the partition's
        enrollments allow (_ready); the rest held, their topics paused."""
        released: list[Any] = []
        held: dict[str, list[Any]] = {}
        fetched = self._fetched(tps, topics)
        for t, msgs in fetched.items():
            n = self._ready(TopicPartition(t, p), msgs, undecided, ends)
            released += msgs[:n]
            if n < len(msgs):
                held[t] = msgs[n:]
        self._keep(p, fetched, held, topics, offsets, pause=True)
        return released

    def _budget(self, data: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
        """This batch's messages: the held ones first (moved into ``data``, which a
        failed batch rewinds from), then the new ones, at most about
        ``max_batch_bytes`` shared fairly by topic-partition (order.fair_prefixes); the
        rest wait in memory, their topics paused. Bounded by holding, never by seeking
        back: a seek while aiokafka has fetches in flight passed messages it never
        returned (DECISIONS 94)."""
        for tp, msgs in self._held.items():
            data[tp] = msgs + data.get(tp, [])
        self._held = {}
        self._over_budget = set()  # what is over it now is in _excess
        data = self._decidable(data)
        take = fair_prefixes({tp: [len(m.value or b"") for m in msgs]
                              for tp, msgs in data.items()}, self.max_batch_bytes)
        batch: dict[Any, list[Any]] = {}
        for tp, msgs in data.items():
            batch[tp] = msgs[:take[tp]]
            if take[tp] < len(msgs):
                self._excess[tp] = msgs[take[tp]:]
        if self._excess:
            self.metrics.deferred(sum(len(m) for m in self._excess.values()))
        return batch

    def _decidable(self, data: dict[Any, list[Any]]) -> dict[Any, list[Any]]:
        """``data`` of the partitions decided here. Messages of a partition assigned
        but not taken over yet are held (their topic paused) until it is: the consumer
        went past them, and nothing would fetch them again. Under Faust a member's
        first assignment delivers records before the assignment callback that starts
        the take-over (DECISIONS 151). Those of a partition no longer assigned, or
        refused, go: its next owner, or the restart, reads them from the commit."""
        assert self.consumer is not None
        out: dict[Any, list[Any]] = {}
        assigned = self.consumer.assignment()
        for tp, msgs in data.items():
            if tp.partition in self.logics:
                out[tp] = msgs
            elif msgs and tp in assigned and tp.partition not in self.refused:
                self._held[tp] = msgs
                self.consumer.pause(tp)
        return out

    def _hold_excess(self) -> None:
        assert self.consumer is not None
        self.backlogged = bool(self._excess)
        self._over_budget = set(self._excess)
        for tp, msgs in self._excess.items():
            self._held[tp] = self._held.get(tp, []) + msgs  # after the merge's own
            self.consumer.pause(tp)  # not fetched again while it waits here
        self._excess = {}

    async def process(self, data: dict[Any, list[Any]]) -> None:
        assert self.producer is not None and self.consumer is not None
        laps = Laps()
        if self._marker:
            Path(self._marker).touch()
        by_part: dict[int, dict[str, list[Any]]] = defaultdict(dict)
        offsets: dict[TopicPartition, Any] = {}
        stamps: list[int] = []
        for tp, msgs in self._budget(data).items():
            if msgs:
                by_part[tp.partition][tp.topic] = msgs
                offsets[tp] = msgs[-1]
        enrollments: dict[int, list[Any]] = {}
        transactions: dict[int, list[Any]] = {}
        ends = await self._batch_ends(by_part)
        for p, topics in by_part.items():
            enrollments[p] = await self._merge_enrollments(p, topics, offsets, ends)
            # Applications precede spending: transactions wait (in memory, their topics
            # paused) for the enrollments that were in Kafka when they were fetched
            # (_ready), rather than wait in the state (and perhaps time out). Re-routed
            # ones wait too: they were misrouted, not sent later than the rest.
            undecided = await self._undecided_from(p)
            transactions[p] = self._release_transactions(p, self._transaction_tps(p),
                                                         topics, offsets, undecided, ends)
            _, rr_txn = self._reroute_tps(p)
            self._release_transactions(p, [rr_txn], topics, offsets, undecided, ends)
        self._hold_excess()
        parts: list[int] = []
        for p, topics in sorted(by_part.items()):
            logic = self.logics[p]
            lost = await recovery.deleted_unread(
                self.consumer, logic.store,
                {TopicPartition(t, p): msgs[0].offset for t, msgs in topics.items() if msgs})
            if lost is not None:
                self._refuse_running(p, lost)
                for tp in self._tps(p):
                    offsets.pop(tp, None)
                continue
            parts.append(p)
            inputs = logic.meta.inputs
            for topic, msgs in topics.items():
                inputs[topic] = [msgs[-1].offset + 1,
                                 recovery.message_crc(msgs[-1].key, msgs[-1].value)]
                if not self.topics.is_internal(topic):
                    stamps.extend(m.timestamp for m in msgs)
        laps.lap("prepare")
        names = self.topics
        enr = self._decode(parts, enrollments, by_part, names.reroute_enrollments,
                           "enrollment")
        txn = self._decode(parts, transactions, by_part, names.reroute_transactions,
                           "transaction")
        laps.lap("decode")
        # all held back by the merge: nothing to decide or commit
        todo = [p for p in parts if p in enr or p in txn]
        for p in todo:
            self._followed[p] = await self._caught_up(p)
        results = await self._decide(todo, enr, txn)
        if not results and not offsets:  # not a batch: crash points count real ones
            if self._marker:
                Path(self._marker).unlink(missing_ok=True)
            return
        laps.lap("decide")
        self.faults.point("decided", self.batches)
        self._open.fetched(data)  # before the commit that may take this batch
        await self._checkpoint(results, offsets, laps)
        if self._marker:
            Path(self._marker).unlink(missing_ok=True)
        self.metrics.observe_live_latencies(time.time() * 1000, stamps)

    async def _decide(self, parts: list[int], enr: dict[int, InBatch],
                      txn: dict[int, InBatch]) -> dict[int, ShardResult]:
        """The partitions' batches decided in few calls (_calls), the event loop let
        run between calls."""
        results: dict[int, ShardResult] = {}
        for group in _calls(parts, {p: sum(b.v.n for b in (enr.get(p), txn.get(p)) if b)
                                    for p in parts}):
            decided = decide_together([(self.logics[p], enr.get(p), txn.get(p),
                                        self._followed[p]) for p in group])
            results.update(zip(group, decided, strict=True))
            await asyncio.sleep(0)  # heartbeats and fetches go on between calls
        return results

    def _decode(self, parts: list[int], public: dict[int, list[Any]],
                by_part: dict[int, dict[str, list[Any]]], reroute_topic: str,
                record_type: str) -> dict[int, InBatch]:
        """The records of one type of the partitions ``parts`` (public messages in
        decision order, then the re-routed ones), by partition, each origin's decoded
        in one call for all partitions (decode_groups)."""
        decoded: dict[int, list[InBatch]] = defaultdict(list)
        for msgs, trusted in (([public[p] for p in parts], False),
                              ([by_part[p].get(reroute_topic, []) for p in parts], True)):
            if not any(msgs):
                continue
            b, groups = decode_groups(msgs, record_type, self.campaign, self.registry,
                                      self.max_record_bytes, internal=trusted,
                                      replay=self.replay and not trusted,
                                      source_operator=self.topics.operator_of)
            self._observe_decoded(b, [m for ms in msgs for m in ms], record_type)
            for p, ms, g in zip(parts, msgs, groups, strict=True):
                if ms:
                    decoded[p].append(g)
        out = {p: concat_batches(bs) for p, bs in decoded.items()}
        return {p: b for p, b in out.items() if b is not None}

    def _observe_decoded(self, b: InBatch, msgs: list[Any], record_type: str) -> None:
        if len({m.topic for m in msgs}) == 1:
            self.metrics.observe_records(msgs[0].topic, record_type, b.v.n)
        else:  # a message may carry many records: count them by their source
            for topic, n in records_by_topic(b).items():
                self.metrics.observe_records(topic, record_type, n)
        mismatched = np.flatnonzero(b.v.reason == Reason.OPERATOR_MISMATCH)
        if len(mismatched):
            ops = (self.topics.operator_of(b.source[i].partition("/")[0])
                   for i in mismatched)
            self.metrics.observe_operator_mismatches(op for op in ops if op)
        for kind, k in b.bad_messages.items():
            self.metrics.bad_message(kind, k)

    def _observe(self, results: dict[int, ShardResult], laps: Laps) -> None:
        # the batch's time stops here: the metrics below are not one of its phases,
        # and a pause among them would show as time no phase accounts for
        seconds = laps.elapsed()
        m = self.metrics
        n_rec = 0
        for p, res in results.items():
            for rtype, codes in res.outcomes.items():
                if len(codes):
                    m.observe_reason_codes(rtype, codes)
                    n_rec += len(codes)
            if res.points:
                m.observe_points([res.points])
            if res.clawed_back:
                m.observe_points([-res.clawed_back])
            logic = self.logics.get(p)
            if logic is None:  # dropped: this worker lost the partition meanwhile
                continue
            m.set_parked(p, res.parked)
            m.set_last_batch(p, time.time())
            if logic.stream_time is not None:
                m.set_stream_time(p, logic.stream_time / 1e6)
        m.observe_batch(n_rec, seconds, laps.phases)
        self.batches += 1
        self.records += n_rec


def _calls(parts: list[int], records: dict[int, int]) -> list[list[int]]:
    """The partitions of a poll in decide calls (DECISIONS 130): together up to
    CALL_RECORDS records a call, so that a live poll's few dozen records a partition
    pay a call's fixed cost once, while a drain's large polls still let heartbeats and
    fetches run between calls (a partition larger than that is a call of its own)."""
    calls: list[list[int]] = []
    size = 0
    for p in parts:
        if calls and size + records[p] <= CALL_RECORDS:
            calls[-1].append(p)
            size += records[p]
        else:
            calls.append([p])
            size = records[p]
    return calls


def tune_gc() -> None:
    """The worker process's collector thresholds (GC_THRESHOLDS); the state bench
    calls it too, so that it measures what a worker runs."""
    gc.set_threshold(*GC_THRESHOLDS)


def build_worker(args: argparse.Namespace, cls: type[Worker] = Worker) -> Worker | int:
    """The worker ``args`` describe, its metrics and health endpoints served (both
    runtimes); an exit code after printing one line when that is impossible."""
    config = load_or_report("worker", args.campaign, args.operators)
    if config is None:
        return 2
    campaign, registry = config
    tune_gc()
    metrics = EngineMetrics()
    metrics.known_operators(o.id for o in registry.operators)
    metrics.count_client_errors()  # for the process's life
    readiness = health.Readiness()
    client_id = health.CLIENT_ID_PREFIX
    if args.metrics_port:
        try:
            server = metrics.serve(args.metrics_port, readiness=readiness)
        except OSError as e:
            print(f"mynapoint worker: cannot serve metrics on port {args.metrics_port}: "
                  f"{e.strerror or e}", file=sys.stderr)
            return 2
        host, port = server.server_address[:2]
        client_id = health.advertised_client_id(str(host), int(port))
    topics = Topics(args.topic_prefix, args.group or "", tuple(o.id for o in registry.operators))
    return cls(args.broker, topics, campaign, registry,
               Path(args.state_dir), args.partitions, args.max_batch, metrics,
               readiness=readiness, client_id=client_id,
               replay=getattr(args, "replay", False),
               max_batch_bytes=getattr(args, "max_batch_bytes", None) or MAX_BATCH_BYTES,
               quiet_seconds=getattr(args, "quiet_seconds", QUIET_SECONDS),
               commit_interval=getattr(args, "commit_interval", None),
               idle_fetch_wait_ms=getattr(args, "idle_fetch_wait_ms", IDLE_FETCH_WAIT_MS))


START_ERRORS = (KafkaError, TopicMismatch, OSError)


def start_failed(args: argparse.Namespace, w: Worker, e: BaseException) -> int:
    w.metrics.kafka_error(e)
    print(f"mynapoint worker: cannot start on the Kafka broker at {args.broker}: "
          f"{logs.redact(health.describe_error(e))}", file=sys.stderr)
    return 2


def announce(args: argparse.Namespace, w: Worker, runtime: str = "") -> None:
    started = (f"consuming {', '.join(w.topics.inputs)} ({w.partitions} partitions) "
               f"from {args.broker}{runtime}")
    if getattr(args, "log_format", "text") == "json":
        log.info(started)  # every line a JSON object, for log shippers
    else:
        print(f"mynapoint worker: {started}", flush=True)


async def run_worker(args: argparse.Namespace) -> int:
    w = build_worker(args)
    if isinstance(w, int):
        return w
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, w.stopping.set)
    beat = asyncio.create_task(health.heartbeat(w.readiness))
    try:
        with logs.quiet("aiokafka"):  # the one line below says it all
            await w.start()
    except START_ERRORS as e:
        beat.cancel()
        with logs.quiet("aiokafka"), contextlib.suppress(Exception):
            await w.stop()  # releases what did start; a second failure adds nothing
        return start_failed(args, w, e)
    assert w.consumer is not None
    watch = asyncio.create_task(
        health.watch_broker(w.readiness, w.consumer.topics,  # a metadata request
                            on_change=w.metrics.set_up))
    announce(args, w)
    try:
        await w.run()
    finally:
        beat.cancel()
        watch.cancel()
        await w.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    logs.configure(getattr(args, "log_format", "text"))
    if getattr(args, "runtime", "aiokafka") == "faust":
        from engine.streams.faust_runtime import run_faust

        return run_faust(args)
    return asyncio.run(run_worker(args))
