"""``mynapoint worker``: the streaming settlement worker.

The data path is a plain aiokafka consume → decide → produce loop rather than
Faust agents: Faust spends ~190 µs of CPU per message in its own stream
machinery and its ``exactly_once`` mode has open duplicate bugs (faust-streaming
#517, #323, #177), which together rule out the speed and guarantee targets.
See docs/ARCHITECTURE.md for the measurements and README "Guarantees".

Per poll, for every partition ``p`` this worker owns (``p`` of both input
topics, thanks to range assignment over co-partitioned topics):

1. decode and validate the batch (``engine.streams.decode``),
2. decide it against the partition's stored state (``engine.streams.shard``),
3. produce outcomes (and records re-routed to their person's partition),
   wait for every acknowledgement,
4. write the changed state to the changelog, wait, then to local RocksDB,
5. commit the input offsets.

A crash anywhere re-runs at most the uncommitted tail; see ``state.py`` for
why that is harmless.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from engine.config import ConfigError, load_campaign, load_operators
from engine.metrics import EngineMetrics
from engine.ops import health, logs
from engine.rules.model import Campaign, Registry
from engine.rules.strings import kafka_partitions
from engine.streams.decode import InBatch, decode_messages
from engine.streams.shard import ShardDecider, ShardResult
from engine.streams.state import ShardStore
from engine.streams.topics import SOURCE_HEADER, TopicMismatch, Topics, ensure_topics

log = logging.getLogger("mynapoint.worker")
NO_TIME = -(2**63)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self.worker.lock:
            self.worker.close_partitions({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        async with self.worker.lock:
            await self.worker.open_partitions({tp.partition for tp in assigned})


class Worker:
    def __init__(self, bootstrap: str, topics: Topics, campaign: Campaign, registry: Registry,
                 state_dir: Path, partitions: int = 8, max_batch: int = 20_000,
                 metrics: EngineMetrics | None = None,
                 max_record_bytes: int = 1 << 20,
                 readiness: health.Readiness | None = None, client_id: str | None = None
                 ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.campaign = campaign
        self.registry = registry
        self.partitions = partitions
        self.max_batch = max_batch
        self.max_record_bytes = max_record_bytes
        self.metrics = metrics or EngineMetrics()
        self.readiness = readiness or health.Readiness()
        self.client_id = client_id or health.CLIENT_ID_PREFIX
        # a private directory per process: two workers on one machine never share
        # a RocksDB, and the changelog is the source of truth anyway
        self.state_root = state_dir / topics.group_id
        self.state_dir = self.state_root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stores: dict[int, ShardStore] = {}
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.decider: ShardDecider | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.batches = 0
        self.records = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._clean_stale_state_dirs()
        self.partitions = await ensure_topics(self.bootstrap, self.topics, self.partitions)
        self.decider = ShardDecider(self.campaign, self.registry, self.partitions)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all",
            linger_ms=2, max_batch_size=1 << 20, max_request_size=10 << 20)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.topics.group_id,
            client_id=self.client_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            isolation_level="read_committed", session_timeout_ms=6_000,
            heartbeat_interval_ms=1_000, max_poll_interval_ms=300_000,
            max_partition_fetch_bytes=8 << 20, fetch_max_bytes=32 << 20,
            # a fetch that finds only idle partitions must not hold back the busy
            # ones for aiokafka's default 500 ms (latency at low load)
            fetch_max_wait_ms=20,
            max_poll_records=self.max_batch)
        await self.consumer.start()
        self.consumer.subscribe(list(self.topics.inputs), listener=_Rebalance(self))
        self.metrics.set_up(True)
        self.readiness.started()

    async def stop(self) -> None:
        self.metrics.set_up(False)
        if self.consumer is not None:
            await self.consumer.stop()  # runs on_partitions_revoked: stores close
        if self.producer is not None:
            await self.producer.stop()
        self.close_partitions(set(self.stores))
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _clean_stale_state_dirs(self) -> None:
        if not self.state_root.exists():
            return
        for d in self.state_root.iterdir():
            pid = d.name.split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------------ partitions
    async def open_partitions(self, parts: set[int]) -> None:
        for p in sorted(parts - set(self.stores)):
            store = ShardStore(self.state_dir / f"p{p}", NO_TIME)
            self.readiness.restoring(p, 0, 0)
            await self._restore(store, p)
            self.readiness.restored(p)
            log.info("partition %d: state restored", p, extra={"partition": p})
            store.rebuild_parked_index(self.campaign.park_timeout)
            self.stores[p] = store
            self.metrics.set_parked(p, len(store.parked))
        self.metrics.set_assigned_partitions(len(self.stores))
        self.readiness.assigned(self.stores)
        log.info("assigned partitions %s", sorted(self.stores))

    def close_partitions(self, parts: set[int]) -> None:
        for p in sorted(parts & set(self.stores)):
            store = self.stores.pop(p)
            store.close()
            ShardStore.destroy(store.path)
        self.metrics.forget_partitions(parts)
        self.metrics.set_assigned_partitions(len(self.stores))
        self.readiness.assigned(self.stores)

    async def _restore(self, store: ShardStore, p: int) -> None:
        tp = TopicPartition(self.topics.changelog, p)
        c = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                             isolation_level="read_committed",
                             max_partition_fetch_bytes=16 << 20)
        await c.start()
        try:
            c.assign([tp])
            end = (await c.end_offsets([tp]))[tp]
            if store.meta.changelog_offset >= end:
                # the local copy is from another broker's history: not ours to trust
                store.close()
                ShardStore.destroy(store.path)
                fresh = ShardStore(store.path, NO_TIME)
                store.__dict__.update(fresh.__dict__)
            start = store.meta.changelog_offset + 1
            if start >= end:
                return
            c.seek(tp, start)
            pos = start
            while pos < end:
                batch = await c.getmany(tp, timeout_ms=1000, max_records=50_000)
                recs = [(m.key, m.value, m.offset) for m in batch.get(tp, [])]
                store.restore(recs)
                self.readiness.restoring(p, pos - start, end - start)
                if recs:
                    pos = recs[-1][2] + 1
                else:
                    pos = await c.position(tp)
        finally:
            await c.stop()

    # ------------------------------------------------------------------ main loop
    async def run(self) -> None:
        assert self.consumer is not None
        while not self.stopping.is_set():
            await self._prioritise_enrollments()
            data = await self.consumer.getmany(timeout_ms=200, max_records=self.max_batch)
            if not data:
                continue
            async with self.lock:
                await self.process(data)

    async def _prioritise_enrollments(self) -> None:
        """Hold back a transactions partition while its enrollments partition is
        behind: applications precede spending, and a transaction read before its
        person's enrollment would otherwise wait (and might time out)."""
        assert self.consumer is not None
        c = self.consumer
        assigned = c.assignment()
        for p in list(self.stores):
            te = TopicPartition(self.topics.enrollments, p)
            tt = TopicPartition(self.topics.transactions, p)
            if te not in assigned or tt not in assigned:
                continue
            try:
                lag = await self._enrollment_lag(p)
            except Exception:  # position unknown during a rebalance: decide next round
                continue
            self.metrics.set_consumer_lag(self.topics.enrollments, p, lag or 0)
            lag = lag is None or lag > 0
            if lag and tt not in c.paused():
                c.pause(tt)
            elif not lag and tt in c.paused():
                c.resume(tt)

    async def _enrollment_lag(self, p: int) -> int | None:
        """Unread records of enrollments partition ``p``; None while unknown."""
        assert self.consumer is not None
        te = TopicPartition(self.topics.enrollments, p)
        hw = self.consumer.highwater(te)
        if hw is None:
            return None
        return max(hw - await self.consumer.position(te), 0)

    async def _enrollments_behind(self, p: int) -> bool:
        assert self.consumer is not None
        if TopicPartition(self.topics.enrollments, p) not in self.consumer.assignment():
            return False
        lag = await self._enrollment_lag(p)
        return lag is None or lag > 0

    async def process(self, data: dict[Any, list[Any]]) -> None:
        assert self.producer is not None and self.consumer is not None
        assert self.decider is not None
        t0 = time.perf_counter()
        by_part: dict[int, dict[str, list[Any]]] = defaultdict(dict)
        offsets: dict[TopicPartition, int] = {}
        stamps: list[int] = []
        for tp, msgs in data.items():
            if tp.partition not in self.stores or not msgs:
                continue
            by_part[tp.partition][tp.topic] = msgs
            offsets[tp] = msgs[-1].offset + 1
            stamps.extend(m.timestamp for m in msgs)
        for p, topics in by_part.items():
            held = topics.get(self.topics.transactions)
            if held and await self._enrollments_behind(p):
                # Applications precede spending: hand these transactions back until the
                # partition's enrollments are read, rather than let them wait (and
                # perhaps time out) for enrollments that are already in Kafka.
                tt = TopicPartition(self.topics.transactions, p)
                self.consumer.seek(tt, held[0].offset)
                self.consumer.pause(tt)
                del topics[self.topics.transactions]
                offsets.pop(tt, None)
        results: dict[int, ShardResult] = {}
        for p, topics in sorted(by_part.items()):
            enr = self._decode(topics.get(self.topics.enrollments), "enrollment")
            txn = self._decode(topics.get(self.topics.transactions), "transaction")
            results[p] = self.decider.decide(self.stores[p], p, enr, txn)
        # outcomes (and re-routed records) first: state must never run ahead of them
        futs: list[asyncio.Future[Any]] = []
        out: dict[tuple[str, int], list[tuple[bytes | None, bytes, list[Any] | None, Any]]] = \
            defaultdict(list)
        for p, res in results.items():
            for topic, rows in ((self.topics.grants, res.grants),
                                (self.topics.rejections, res.rejections)):
                if not rows:
                    continue
                parts = kafka_partitions(pa.array([k for k, _ in rows], type=pa.binary()),
                                         self.partitions).tolist()
                dumps = orjson.dumps
                for (key, row), part in zip(rows, parts, strict=True):
                    out[(topic, part if part >= 0 else p)].append(
                        (key, dumps(row), None, None))
            for rtype, target, rec, source, received in res.reroute:
                topic = (self.topics.transactions if rtype == "transaction"
                         else self.topics.enrollments)
                # the engine reads a re-routed record's time from its JSON, not from
                # the message timestamp (which the producer would set to "now")
                ts = received // 1000 if received != NO_TIME else None
                out[(topic, target)].append((rec["mykey_id"].encode(), orjson.dumps(rec),
                                             [(SOURCE_HEADER, source.encode())], ts))
        for (topic, part), msgs in out.items():
            futs.extend(f for f, _ in await self._send_all(topic, part, msgs))
        if futs:
            await asyncio.gather(*futs)
        self._crash_point("outputs")
        # then state: changelog (acknowledged) before the local copy
        cl_futs: dict[int, list[tuple[Any, int]]] = {}
        for p, res in results.items():
            msgs2: list[tuple[bytes | None, bytes, Any, Any]] = [
                (k.encode(), v, None, None) for k, v in res.blobs.items()]
            cl_futs[p] = await self._send_all(self.topics.changelog, p, msgs2)
        for p, fl in cl_futs.items():
            mds = await asyncio.gather(*(f for f, _ in fl))
            # a producer batch's metadata carries its base offset
            last = max((md.offset + n - 1 for md, (_, n) in zip(mds, fl, strict=True)),
                       default=-1)
            self.stores[p].apply(results[p].blobs, last)
        self._crash_point("state")
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as e:
                # A rebalance took the partitions away (or back) meanwhile: outcomes
                # and state are already durable, so the redelivered records will be
                # skipped by the people's marks. Nothing to undo.
                log.warning("offset commit skipped after a rebalance: %s", e)
        self._observe(results, time.perf_counter() - t0)
        # Append-to-outcome latency is only meaningful for live traffic, whose record
        # timestamp (received_at) is "now"; replays of old records carry old stamps.
        now_ms = time.time() * 1000
        lat = (now_ms - np.asarray(stamps, dtype=np.float64)) / 1000
        live = lat[(lat >= 0) & (lat < 3600)]
        if len(live):
            self.metrics.observe_outcome_latencies(live)

    def _crash_point(self, stage: str) -> None:
        """Crash injection for tests: ``MYNAPOINT_CRASH_AT=<stage>:<batch>`` SIGKILLs
        this worker right after ``stage`` ("outputs" acknowledged, or "state" written)
        of its ``batch``-th batch (0-based), before anything else happens."""
        if os.environ.get("MYNAPOINT_CRASH_AT") == f"{stage}:{self.batches}":
            os.kill(os.getpid(), signal.SIGKILL)

    def _decode(self, msgs: list[Any] | None, record_type: str) -> InBatch | None:
        if not msgs:
            return None
        b = decode_messages(msgs, record_type, self.campaign, self.registry,
                            self.max_record_bytes)
        self.metrics.observe_records(msgs[0].topic, record_type, b.v.n)
        for kind, k in b.bad_messages.items():
            self.metrics.bad_message(kind, k)
        return b

    async def _send_all(self, topic: str, partition: int,
                        msgs: list[tuple[bytes | None, bytes, Any, Any]]
                        ) -> list[tuple[Any, int]]:
        """Send many messages with few producer batches (no coroutine per message);
        returns each batch's delivery future with its record count."""
        assert self.producer is not None
        futs: list[tuple[Any, int]] = []
        batch = self.producer.create_batch()
        for key, value, headers, ts in msgs:
            if batch.append(key=key, value=value, timestamp=ts, headers=headers) is None:
                n = batch.record_count()
                futs.append((await self.producer.send_batch(batch, topic, partition=partition),
                             n))
                batch = self.producer.create_batch()
                if batch.append(key=key, value=value, timestamp=ts, headers=headers) is None:
                    raise ValueError(f"a message for {topic} exceeds the producer batch size")
        if batch.record_count():
            n = batch.record_count()
            futs.append((await self.producer.send_batch(batch, topic, partition=partition), n))
        return futs

    def _observe(self, results: dict[int, ShardResult], seconds: float) -> None:
        m = self.metrics
        n_rec = 0
        for p, res in results.items():
            for rtype, names in res.outcomes.items():
                if names:
                    m.observe_outcomes(rtype, names)
                    n_rec += len(names)
            if res.points:
                m.observe_points([res.points])
            if res.clawed_back:
                m.observe_points([-res.clawed_back])
            m.set_parked(p, res.parked)
            m.set_last_batch(p, time.time())
            st = self.stores[p].meta.stream_time
            if st != NO_TIME:
                m.set_stream_time(p, st / 1e6)
        m.observe_batch(n_rec, seconds)
        self.batches += 1
        self.records += n_rec


async def run_worker(args: argparse.Namespace) -> int:
    try:
        campaign = load_campaign(args.campaign)
        registry = load_operators(args.operators)
    except ConfigError as e:
        print(f"mynapoint worker: configuration error: {e}", file=sys.stderr)
        return 2
    metrics = EngineMetrics()
    readiness = health.Readiness()
    client_id = health.CLIENT_ID_PREFIX
    if args.metrics_port:
        server = metrics.serve(args.metrics_port, readiness=readiness)
        host, port = server.server_address[:2]
        client_id = health.advertised_client_id(str(host), int(port))
    w = Worker(args.broker, Topics(args.topic_prefix, args.group or ""), campaign, registry,
               Path(args.state_dir), args.partitions, args.max_batch, metrics,
               readiness=readiness, client_id=client_id)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, w.stopping.set)
    beat = asyncio.create_task(health.heartbeat(readiness))
    try:
        with logs.quiet("aiokafka"):  # the one line below says it all
            await w.start()
    except (KafkaError, TopicMismatch, OSError) as e:
        beat.cancel()
        with logs.quiet("aiokafka"), contextlib.suppress(Exception):
            await w.stop()  # releases what did start; a second failure adds nothing
        print(f"mynapoint worker: cannot start on the Kafka broker at {args.broker}: "
              f"{logs.redact(health.describe_error(e))}", file=sys.stderr)
        return 2
    assert w.consumer is not None
    watch = asyncio.create_task(
        health.watch_broker(readiness, w.consumer._client.fetch_all_metadata,
                            on_change=metrics.set_up))
    print(f"mynapoint worker: consuming {', '.join(w.topics.inputs)} "
          f"({w.partitions} partitions) from {args.broker}", flush=True)
    try:
        await w.run()
    finally:
        beat.cancel()
        watch.cancel()
        await w.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    logs.configure(getattr(args, "log_format", "text"))
    return asyncio.run(run_worker(args))
