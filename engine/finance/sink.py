"""``mynapoint ledger load --from-kafka``: an exactly-once sink of the output topics.

The sink reads every partition of the outcome topics (names from
:attr:`engine.kafka.topics.Topics.outcomes`) without a consumer group. The
position it has reached is kept in the ledger itself (table ``kafka_offsets``) and
written in the same DuckDB transaction as the rows read before it: after a
SIGKILL at any moment, the ledger holds either a batch and its offsets or
neither, and a restart continues from the committed offsets. So every outcome
reaches the ledger exactly once. Messages are decoded and de-duplicated within a
batch by :class:`engine.tools.collect.Outcomes` (collect's reader); the ledger
then skips identical copies and refuses conflicting ones
(:func:`engine.finance.ledger.append`), which are reported and counted, and the
load goes on.

Without ``--follow`` it stops once it has reached the end offsets (refreshed
once reached); with it, it runs until SIGTERM/SIGINT, finishing the batch in
hand.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.finance import ledger
from engine.finance.ledger import AppendResult, InputError, transaction
from engine.kafka.client_config import ClientConfigError, default_client, load_client_config
from engine.kafka.topics import Topics, discover, topic_partitions
from engine.tools.collect import Outcomes, at_end

CONNECT_TIMEOUT = 30.0
CRASH_ENV = "MYNAPOINT_SINK_CRASH_AT"  # tests: "<before_commit|after_commit>:<batch>"


def client_options(path: str | Path | None) -> dict[str, Any]:
    """aiokafka keyword arguments from a Kafka client properties file
    (:mod:`engine.kafka.client_config`), its errors as :class:`InputError`."""
    try:
        return load_client_config(path)
    except ClientConfigError as e:
        raise InputError(str(e)) from None


class SinkMetrics:
    """Prometheus metrics of the sink (its own registry; labels never carry values)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.added = Counter("mynapoint_ledger_outcomes_added_total",
                             "Outcomes written to the ledger", ["kind"], registry=self.registry)
        self.copies = Counter("mynapoint_ledger_copies_total",
                              "Redelivered identical outcomes skipped", registry=self.registry)
        self.conflicts = Counter("mynapoint_ledger_conflicts_total",
                                 "Outcomes refused: same key, different content",
                                 registry=self.registry)
        self.undecodable = Counter("mynapoint_ledger_undecodable_total",
                                   "Output messages that are not a grant or rejection",
                                   registry=self.registry)
        self.batches = Counter("mynapoint_ledger_batches_total",
                               "Ledger transactions committed (rows with their offsets)",
                               registry=self.registry)
        self.lag = Gauge("mynapoint_ledger_lag_messages",
                         "Messages on the output topics not yet in the ledger",
                         registry=self.registry)

    def serve(self, port: int) -> Any:
        from prometheus_client import start_http_server

        from engine.metrics import METRICS_ADDR_ENV

        addr = os.environ.get(METRICS_ADDR_ENV) or "127.0.0.1"
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server


@dataclass
class SinkResult:
    appended: AppendResult = field(default_factory=AppendResult)
    undecodable: int = 0
    batches: int = 0
    caught_up: bool = False


def _crash_point(stage: str, batch: int) -> None:
    if os.environ.get(CRASH_ENV) == f"{stage}:{batch}":
        os.kill(os.getpid(), signal.SIGKILL)


def _commit(con: Any, msgs: list[Any], kinds: dict[str, str], result: SinkResult,
            metrics: SinkMetrics | None, log: Any) -> None:
    """One batch and its next offsets in one ledger transaction."""
    by_kind = {kind: Outcomes(kind) for kind in set(kinds.values())}
    next_offsets: dict[tuple[str, int], int] = {}
    for m in msgs:
        by_kind[kinds[m.topic]].add(m)
        next_offsets[(m.topic, m.partition)] = m.offset + 1
    batch = AppendResult()
    undecodable = 0
    with transaction(con):
        for kind, outcomes in sorted(by_kind.items()):
            undecodable += outcomes.undecodable
            batch.copies += outcomes.copies - outcomes.conflicts
            batch.conflicts += outcomes.conflicts
            for text in outcomes.examples:
                log(text)
            t = outcomes.table()
            if t.num_rows:
                con.register("_sink_stage", t)
                batch.merge(ledger.append(con, kind, "_sink_stage"))
                con.unregister("_sink_stage")
        con.executemany("INSERT OR REPLACE INTO kafka_offsets VALUES (?, ?, ?)",
                        [[t, p, o] for (t, p), o in sorted(next_offsets.items())])
        _crash_point("before_commit", result.batches + 1)
    result.batches += 1
    _crash_point("after_commit", result.batches)
    for text in batch.examples:
        log(text)
    result.appended.merge(batch)
    result.undecodable += undecodable
    if metrics:
        for kind, n in batch.added.items():
            metrics.added.labels(kind).inc(n)
        metrics.copies.inc(batch.copies)
        metrics.conflicts.inc(batch.conflicts)
        metrics.undecodable.inc(undecodable)
        metrics.batches.inc()


async def sink(ledger_path: str | Path, bootstrap: str, topics: Topics, *, follow: bool = False,
               idle_timeout: float = 10.0, max_batch: int = 20_000,
               client: dict[str, Any] | None = None, metrics: SinkMetrics | None = None,
               stop: asyncio.Event | None = None, log: Any = print) -> SinkResult:
    """Read the outcome topics into the ledger until caught up (or, with
    ``follow``, until ``stop`` is set). Raises :class:`ledger.LedgerError` for an
    unusable ledger, :class:`SinkError` for an unreachable broker or missing topics."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    client = client or default_client()
    con = ledger.connect(ledger_path, write=True)
    result = SinkResult()
    consumer = None
    try:
        stored = {(t, p): o for t, p, o in con.execute(
            "SELECT topic, partition, next_offset FROM kafka_offsets").fetchall()}
        try:
            topics = await asyncio.wait_for(discover(bootstrap, topics, **client),
                                            CONNECT_TIMEOUT)
            kinds = topics.outcomes
            parts = await asyncio.wait_for(topic_partitions(bootstrap, list(kinds), **client),
                                           CONNECT_TIMEOUT)
        except (TimeoutError, KafkaError, OSError) as e:
            raise SinkError(f"cannot reach the Kafka broker at {bootstrap} "
                            f"({type(e).__name__}: {e})") from None
        missing = [t for t in kinds if not parts.get(t)]
        if missing:
            raise SinkError(f"topic {missing[0]} does not exist on {bootstrap} "
                            "(has a worker run with this --topic-prefix?)")
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            isolation_level="read_committed", auto_offset_reset="earliest",
            max_partition_fetch_bytes=16 * 1024 * 1024, **client)
        try:
            await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT)
        except (TimeoutError, KafkaError, OSError) as e:
            raise SinkError(f"cannot reach the Kafka broker at {bootstrap} "
                            f"({type(e).__name__}: {e})") from None
        tps = [TopicPartition(t, p) for t in kinds for p in range(parts[t])]
        consumer.assign(tps)
        for tp in tps:
            if (tp.topic, tp.partition) in stored:
                consumer.seek(tp, stored[(tp.topic, tp.partition)])
            else:
                await consumer.seek_to_beginning(tp)
        ends = await consumer.end_offsets(tps)
        last_news = time.monotonic()
        last_lag = 0.0
        while stop is None or not stop.is_set():
            batch = await consumer.getmany(*tps, timeout_ms=200, max_records=max_batch)
            msgs = [m for part in batch.values() for m in part]
            if msgs:
                _commit(con, msgs, kinds, result, metrics, log)
                last_news = time.monotonic()
            if metrics and time.monotonic() - last_lag > 5.0:
                last_lag = time.monotonic()
                now = await consumer.end_offsets(tps)
                lag = 0
                for tp in tps:
                    lag += now[tp] - await consumer.position(tp)
                metrics.lag.set(lag)
            if follow:
                continue
            if await at_end(consumer, tps, ends):
                ends = await consumer.end_offsets(tps)
                if await at_end(consumer, tps, ends):
                    result.caught_up = True
                    if metrics:
                        metrics.lag.set(0)
                    break
            if time.monotonic() - last_news >= idle_timeout:
                break
    except KafkaError as e:
        raise SinkError(f"reading from {bootstrap} failed ({type(e).__name__}: {e})") from None
    finally:
        if consumer is not None:
            await consumer.stop()
        con.close()
    return result


class SinkError(RuntimeError):
    """The broker or the output topics are unusable. ``str()`` says which."""


def run_sink(args: argparse.Namespace) -> int:
    """The CLI: exit 0 caught up (or stopped) without conflicts, 1 conflicts were
    refused or the end was not reached, 2 bad ledger, broker or client config."""
    client = client_options(args.client_config)
    metrics = SinkMetrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)

    def log(text: str) -> None:
        print(f"mynapoint ledger load: {text}", file=sys.stderr, flush=True)

    async def main() -> SinkResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.follow:
            log(f"following the output topics {args.topic_prefix}.*.grants|rejections "
                f"into {args.ledger}")
        return await sink(args.ledger, args.broker, Topics(prefix=args.topic_prefix),
                          follow=args.follow, idle_timeout=args.idle_timeout,
                          max_batch=args.max_batch, client=client, metrics=metrics,
                          stop=stop, log=log)

    try:
        res = asyncio.run(main())
    except SinkError as e:
        log(str(e))
        return 2
    a = res.appended
    print(f"added {a.added['grant']:,} grants and {a.added['rejection']:,} rejections in "
          f"{res.batches:,} transactions; {a.copies:,} identical copies skipped; "
          f"{a.conflicts:,} conflicting copies refused; {res.undecodable:,} undecodable "
          "messages", flush=True)
    if not args.follow and not res.caught_up:
        log(f"stopped after {args.idle_timeout:g} s without new messages before reaching "
            "the end of the topics")
        return 1
    return 1 if a.conflicts else 0
