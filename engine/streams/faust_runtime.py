"""The Faust runtime: the engine's worker inside a ``faust.App``.

``mynapoint worker --runtime faust`` (or ``faust -A engine.streams.faust_runtime:app
worker -l info`` with the same options in ``$MYNAPOINT_WORKER_ARGS``) runs the
settlement with Faust consuming the input topics. Only the consuming is Faust's;
everything that makes the outcomes and guarantees is the engine's own, the very code
the aiokafka runtime runs (:class:`engine.streams.worker.Worker`): decoding, the
per-partition :class:`~engine.streams.logic.PartitionLogic`, the take-over
(:mod:`engine.streams.recovery`) and the crash-safety order of
:mod:`engine.streams.checkpoint`, whose offset commits carry the changelog position
the take-over needs.

- **One agent** reads every consumed topic (``Topics.consumed``) as raw bytes and
  gathers events with ``stream.take_events``; each gathered batch is handed to
  :class:`FaustConsumer`, which shapes it like aiokafka's ``getmany`` answer
  (``{TopicPartition: [ConsumerRecord]}``), and the agent then runs
  :meth:`Worker.step` — the same fetch → decide → checkpoint step the aiokafka
  runtime loops on. A timer runs the step too, so that records held back (a
  partition being taken over, transactions waiting for their enrollments, a batch
  rewound after a broker error) are decided without new traffic.
- **Faust never commits an offset.** The topics are declared with ``acks=False`` and
  read with ``noack()``: Faust's consumer then neither tracks nor acks their messages
  (``Conductor.acks_enabled_for`` is false, so ``Consumer._acked`` stays empty and
  ``Consumer.commit`` finds nothing to commit), and its gap filling is skipped for
  them too. Offsets are committed only by the engine's :class:`Checkpoint`, on
  Faust's own aiokafka consumer (in Faust's consumer thread), after outcomes and
  state are durable, with the ``cl`` metadata. ``tests/streams/test_runtimes.py``
  proves it on the broker.
- **Assignment.** Faust's own partition assignor puts partition ``p`` of every topic
  one agent reads on one worker (co-partitioned), which is what the engine's state
  per partition needs. It is only used while ``table_standby_replicas`` > 0 or the
  app has tables (else Faust falls back to round-robin), hence ``1`` below.
- **Rebalances.** Faust's ``on_partitions_revoked``/``on_partitions_assigned``
  signals call the worker's own handlers (stores closed; take-over in the
  background, the partition held back until it is done).
- Not used: Faust tables and their changelogs (the engine keeps its own store and
  fenced changelog per partition), ``exactly_once`` (open duplicate bugs, and the engine's
  checkpoint already gives identical outcomes on redelivery), Faust's web server
  (off unless ``MYNAPOINT_FAUST_WEB=1``; it then binds 127.0.0.1), its leader topic
  and topic creation (the worker creates the engine's topics itself), Faust's
  sensors (the engine's own Prometheus metrics and ``/healthz`` ``/readyz`` are
  served exactly as under the aiokafka runtime).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord
from faust.app.base import BootStrategy
from faust.transport.drivers import aiokafka as faust_kafka

from engine.kafka.client_config import default_client, faust_credentials
from engine.kafka.topics import CHANGELOG_MAX_BYTES, ensure_topics
from engine.ops import health, logs
from engine.streams.worker import START_ERRORS, Worker, announce, build_worker, start_failed

log = logging.getLogger("mynapoint.worker")

WORKER_ARGS_ENV = "MYNAPOINT_WORKER_ARGS"  # `mynapoint worker` options for `faust -A`
WEB_ENV = "MYNAPOINT_FAUST_WEB"  # "1": let `faust worker` start Faust's web server
TAKE_WITHIN = 0.02  # seconds the agent waits to fill a batch (latency at low load)
IDLE_STEP = 0.2  # seconds between steps without new events (as the aiokafka loop)


def _record(m: Any) -> ConsumerRecord[bytes, bytes]:
    """Faust's message as aiokafka's record: the decoder and the checkpoint read
    the same fields whichever runtime fetched it (Faust keeps the timestamp in s)."""
    ts = m.timestamp
    return ConsumerRecord(topic=m.topic, partition=m.partition, offset=m.offset,
                          timestamp=round(ts * 1000) if ts is not None else -1,
                          timestamp_type=m.timestamp_type, key=m.key, value=m.value,
                          checksum=None, serialized_key_size=m.serialized_key_size,
                          serialized_value_size=m.serialized_value_size,
                          headers=tuple(m.headers or ()))


async def seek_to_committed(consumer: AIOKafkaConsumer) -> dict[TopicPartition, int | None]:
    """Every assigned partition back to the group's commit, and one without a commit
    (or with 0) back to its beginning, where ``auto_offset_reset=earliest`` starts it.
    Returns the commits (None: none), as aiokafka's own seek does.

    Faust calls this (``Consumer.perform_seek``) after every rebalance and whenever it
    drops records it fetched while its flow was stopped, trusting it to have them read
    again. aiokafka's own seek moves only partitions with a commit above 0: an input
    the group never committed (a sparse one, such as the unattributed input) kept its
    position past the dropped records, which no one then decided (DECISIONS 151)."""
    committed = await consumer.seek_to_committed()
    fresh = [tp for tp, offset in committed.items() if not offset]
    if fresh:
        await consumer.seek_to_beginning(*fresh)
    return committed


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    async def seek_to_committed(self) -> Any:
        return await self.call_thread(seek_to_committed, self._ensure_consumer())


class _Consumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> faust_kafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_kafka.Transport):
    Consumer = _Consumer


class FaustConsumer:
    """The part of an aiokafka consumer the :class:`Worker` uses, over a Faust app.

    Records the agent hands over wait here per partition until a step fetches them
    (:meth:`getmany`). Pausing, seeking back and positions are the engine's view:
    a paused partition's records are held (Faust may still be fetching it, e.g.
    while the partition is being taken over), a seek puts the last fetched records
    back, and a partition's position is the next offset the engine has not been
    given. Events fetched before a rebalance are dropped, however late the agent
    hands them over: at each rebalance Faust seeks every partition back to its
    committed offset (its beginning where none, :func:`seek_to_committed`) and
    reads them again, in order; within one generation a
    record at or below the last one held or given is a copy and is dropped.
    "Before a rebalance" starts at the revocation, not at the next generation: the
    generation number changes only with the new assignment, and until then aiokafka
    still reports the old one, so an event gathered before the revocation and handed
    over after it looks current. Queued, it would make the records Faust reads
    again from the commit look like copies, and those between the commit and it
    would never be decided (a gap; ``tests/streams/test_faust_consumer.py``).
    """

    def __init__(self, app: faust.App, probe: AIOKafkaConsumer, admin: AIOKafkaAdminClient,
                 group: str) -> None:
        self._app = app
        # offsets are looked up with the worker's own clients (on this loop): Faust's
        # consumer thread is used only for what must come from the group member, the
        # commit
        self._probe = probe
        self._admin = admin
        self._group = group
        self._queue: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        self._next: dict[TopicPartition, int] = {}
        # given to the engine and not committed yet: what a seek can go back to
        self._given: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        self._paused: set[TopicPartition] = set()
        # end offsets asked of the broker: Faust's fetcher leaves aiokafka's highwater
        # unknown for partitions it has not fetched from (an operator's empty topic),
        # which would hold the enrollments-first ordering forever
        self._ends: dict[TopicPartition, int] = {}
        self._ends_at = 0.0
        self._ends_ms: dict[TopicPartition, float] = {}  # wall clock of each answer
        # the generation each partition was revoked in: its events up to that
        # generation are read again after the next assignment
        self._revoked_in: dict[TopicPartition, int] = {}
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._assigned_from: object = None  # aiokafka's partitions _assigned was made of

    # ------------------------------------------------------------------ Faust side
    def put(self, events: Iterable[Any]) -> None:
        generation = self._app.consumer_generation_id
        assigned = self.assignment()
        for event in events:
            m = event.message
            if m.generation_id != generation:
                # fetched before a rebalance (gathered, then handed over after it):
                # Faust reads every partition again from its committed offset
                continue
            tp = TopicPartition(m.topic, m.partition)
            if tp not in assigned or m.generation_id <= self._revoked_in.get(tp, -1):
                continue
            q = self._queue.setdefault(tp, [])
            last = q[-1].offset if q else self._next.get(tp, -1) - 1
            if m.offset <= last:
                continue  # already held or given to the engine
            q.append(_record(m))

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions revoked: whatever is held of them, or gathered in this generation
        and handed over later, is read again by their owner."""
        generation = self._app.consumer_generation_id
        for tp in tps:
            self._revoked_in[tp] = generation
            self._queue.pop(tp, None)
            self._next.pop(tp, None)
            self._given.pop(tp, None)
            self._paused.discard(tp)
            self._ends.pop(tp, None)
            self._ends_ms.pop(tp, None)

    async def refresh_ends(self, every: float = 0.1) -> None:
        now = time.monotonic()
        tps = list(self.assignment())
        if tps and now - self._ends_at >= every:
            self._ends_at = now
            await self.end_offsets(tps)
            unknown = [tp for tp in tps if tp not in self._next and not self._queue.get(tp)]
            if unknown:
                await self._start_positions(unknown)

    async def _start_positions(self, tps: list[TopicPartition]) -> None:
        """Where Faust starts reading ``tps``: the group's commit, else the beginning
        (``auto_offset_reset=earliest``)."""
        committed = await self._admin.list_consumer_group_offsets(self._group, partitions=tps)
        first = await self._probe.beginning_offsets(tps)
        for tp in tps:
            c = committed.get(tp)
            self._next.setdefault(tp, c.offset if c is not None and c.offset >= 0
                                  else first[tp])

    def deliverable(self) -> int:
        return sum(len(q) for tp, q in self._queue.items() if tp not in self._paused)

    def _thread(self) -> Any:
        return self._app.consumer._thread  # type: ignore[attr-defined]  # its own loop

    async def _call(self, name: str, *args: Any) -> Any:
        """Call the aiokafka consumer's method ``name`` in Faust's consumer thread."""
        thread = self._thread()
        return await thread.call_thread(getattr(thread._ensure_consumer(), name), *args)

    # ------------------------------------------------------------------ aiokafka side
    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None
                      ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        room = max_records or sys.maxsize
        out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for tp, q in self._queue.items():
            if room <= 0:
                break
            if tp in self._paused or not q:
                continue
            out[tp] = q[:room]
            del q[:len(out[tp])]
            room -= len(out[tp])
            self._next[tp] = out[tp][-1].offset + 1
            self._given.setdefault(tp, []).extend(out[tp])
        for tp in out:  # the partitions served last go to the back of the line
            self._queue[tp] = self._queue.pop(tp)
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Back to a record given but not committed (the worker hands records back
        or rewinds a batch, never behind its commit): fetched again, in order."""
        given = self._given.get(tp, [])
        keep = [m for m in given if m.offset < offset]
        back = given[len(keep):]
        self._given[tp] = keep
        if back:
            q = self._queue.setdefault(tp, [])
            q[:] = back + [m for m in q if m.offset > back[-1].offset]
        self._next[tp] = offset

    def pause(self, *tps: TopicPartition) -> None:
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def assignment(self) -> AbstractSet[TopicPartition]:
        """The partitions assigned to this member, as aiokafka's consumer in Faust's
        consumer thread has them.

        The worker asks several times a batch, and the agent's every hand-over:
        through Faust's ``Consumer.assignment`` each ask built a set of Faust's own
        partition tuples and this one a set of aiokafka's (a fifth of the runtime's
        samples per one-record message). aiokafka's subscription state makes a new
        ``Assignment`` at each rebalance, whose partitions are one frozenset for its
        life: while that same frozenset is current, the set made from it is too.
        """
        try:
            consumer = self._thread()._ensure_consumer()  # aiokafka's, in Faust's thread
            current = consumer._subscription.assigned_partitions()
        except Exception:  # not started yet, or stopping
            return frozenset()
        if current is not self._assigned_from:
            self._assigned = frozenset(TopicPartition(tp.topic, tp.partition)
                                       for tp in current)
            self._assigned_from = current
        return self._assigned

    def highwater(self, tp: TopicPartition) -> int | None:
        try:
            fetched = self._app.consumer.highwater(tp)
        except Exception:  # not (or no longer) assigned
            fetched = None
        known = [hw for hw in (fetched, self._ends.get(tp)) if hw is not None]
        return max(known) if known else None

    async def position(self, tp: TopicPartition) -> int:
        nxt = self._next.get(tp)
        if nxt is not None:
            return nxt
        q = self._queue.get(tp)
        if q:
            return q[0].offset
        await self._start_positions([tp])
        return self._next[tp]

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        ends = dict(await self._probe.end_offsets(tps))
        self._ends.update(ends)
        now_ms = time.time() * 1000
        self._ends_ms.update((tp, now_ms) for tp in ends)
        return ends

    def last_poll_timestamp(self, tp: TopicPartition) -> float | None:
        """When the broker last told this partition's end (ms): as aiokafka's, it
        stops moving while the broker is away."""
        return self._ends_ms.get(tp)

    async def beginning_offsets(self, tps: list[TopicPartition]
                                ) -> dict[TopicPartition, int]:
        return dict(await self._probe.beginning_offsets(tps))

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        await self._call("commit", offsets)
        for tp, committed in offsets.items():
            if tp in self._given:
                self._given[tp] = [m for m in self._given[tp] if m.offset >= committed.offset]

    async def topics(self) -> Any:
        return await self._probe.topics()

    async def stop(self) -> None:
        """Faust stops its consumer itself."""


class FaustWorker(Worker):
    """The engine's worker with Faust's consumer (:class:`FaustConsumer`)."""

    app: EngineApp
    # the adapter's ends and their times are its own looks', not the fetches' that
    # brought the messages (FaustConsumer.last_poll_timestamp), and each step is handed
    # what the agent was given: a second read would only wait
    AIOKAFKA_FETCHES = False
    # every batch committed at once: Faust gives up partitions in its own rebalance
    # callback, where a commit through its consumer thread is not to be waited for
    commit_interval = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probe: AIOKafkaConsumer | None = None
        self.stepping = asyncio.Lock()  # one step at a time: the agent's or the timer's

    async def start(self) -> None:
        await self.start_clients()
        assert self.admin is not None
        self.probe = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, **default_client(),
                                      enable_auto_commit=False)
        await self.probe.start()
        self.consumer = FaustConsumer(self.app, self.probe, self.admin,  # type: ignore[assignment]
                                      self.topics.group_id)
        self.metrics.set_up(True)
        self.readiness.started()

    @property
    def faust_consumer(self) -> FaustConsumer:
        assert isinstance(self.consumer, FaustConsumer)
        return self.consumer

    async def faust_step(self) -> None:
        """:meth:`Worker.step` until nothing is left to decide now; one at a time
        (the agent and the idle timer both call it)."""
        async with self.stepping:
            try:
                await self.faust_consumer.refresh_ends()
            except Exception as e:  # the broker away: the last known ends will do
                self.metrics.kafka_error(e)
            while not self.stopping.is_set():
                await self.step(0)
                if not self.faust_consumer.deliverable() and not self.backlogged:
                    return

    async def on_revoked(self, revoked: Iterable[Any]) -> None:
        tps = {TopicPartition(tp.topic, tp.partition) for tp in revoked}
        async with self.lock:  # a batch in flight finishes (and commits) first
            self.close_partitions({tp.partition for tp in tps})
            self.faust_consumer.forget(tps)

    async def stop(self) -> None:
        await super().stop()
        if self.probe is not None:
            await self.probe.stop()

    def on_assigned(self, assigned: Iterable[Any]) -> None:
        self.assign_partitions({tp.partition for tp in assigned})


class _Boot(BootStrategy):
    """Faust's web server stays off whatever ``faust worker`` says (its
    ``--with-web`` is on by default), unless ``MYNAPOINT_FAUST_WEB=1``."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        if os.environ.get(WEB_ENV) != "1":
            self.enable_web = False


class EngineApp(faust.App):
    BootStrategy = _Boot
    engine: FaustWorker
    args: argparse.Namespace

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    async def on_start(self) -> None:
        await super().on_start()
        # Faust's worker configured logging its way, and `faust worker` sends stdout
        # and stderr to its logger whatever the app says: the engine's format,
        # redaction and start line go to the process's own streams, as under aiokafka
        logs.configure(getattr(self.args, "log_format", "text"), stream=sys.__stderr__)
        await self.engine.start()
        with contextlib.redirect_stdout(sys.__stdout__):
            announce(self.args, self.engine, " (faust runtime)")
        self.add_future(health.heartbeat(self.engine.readiness))
        self.add_future(health.watch_broker(self.engine.readiness,
                                            self.engine.faust_consumer.topics,
                                            on_change=self.engine.metrics.set_up))
        self.add_future(self._idle())

    async def _idle(self) -> None:
        while not self.engine.stopping.is_set():
            await asyncio.sleep(IDLE_STEP)
            await self.engine.faust_step()

    async def on_stop(self) -> None:
        self.engine.stopping.set()
        async with self.engine.stepping:  # the batch in flight completes its checkpoint
            pass
        await super().on_stop()
        await self.engine.stop()


def make_app(w: FaustWorker, args: argparse.Namespace) -> EngineApp:
    topics = w.topics
    client = default_client()
    datadir = w.state_root / "faust"  # Faust wants one; it holds nothing of the engine's
    datadir.mkdir(parents=True, exist_ok=True)
    app = EngineApp(
        topics.group_id,  # the consumer group: the one the take-over reads commits of
        broker=[f"kafka://{b.strip()}" for b in args.broker.split(",")],
        broker_credentials=faust_credentials(client),
        datadir=str(datadir),
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        consumer_max_fetch_size=CHANGELOG_MAX_BYTES,
        table_standby_replicas=1,  # keeps Faust's co-partitioning assignor (above)
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        web_bind="127.0.0.1",
        worker_redirect_stdouts=False,  # the engine's lines go out as under aiokafka
    )
    app.engine = w
    app.args = args
    w.app = app
    source = app.topic(*topics.consumed, acks=False, key_serializer="raw",
                       value_serializer="raw", internal=False)

    @app.agent(source, name=f"{topics.group_id}.settle")
    async def settle(stream: Any) -> None:
        async for events in stream.noack().take_events(w.max_batch, within=TAKE_WITHIN):
            w.faust_consumer.put(events)
            await w.faust_step()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # (mode stubs: sync only)
    async def revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        await w.on_revoked(args[0])  # (sender, revoked partitions, signal=...)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def assigned(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        w.on_assigned(args[0])

    return app


async def _preflight(args: argparse.Namespace, w: Worker) -> int:
    """The broker reachable and the topics there, before Faust starts: a bad broker
    gets the same one-line error and exit 2 as under the aiokafka runtime."""
    try:
        with logs.quiet("aiokafka"):
            await ensure_topics(w.bootstrap, w.topics, w.partitions)
    except START_ERRORS as e:
        return start_failed(args, w, e)
    return 0


def run_faust(args: argparse.Namespace) -> int:
    w = build_worker(args, FaustWorker)
    if isinstance(w, int):
        return w
    assert isinstance(w, FaustWorker)
    rc = asyncio.run(_preflight(args, w))
    if rc:
        return rc
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its own
    app = make_app(w, args)
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.spinner = None  # terminal escapes in a log file
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


_app: EngineApp | None = None


def app_from_env(argv: Sequence[str] | None = None) -> EngineApp:
    """The app ``faust -A engine.streams.faust_runtime:app`` runs: the options of
    ``mynapoint worker`` from ``$MYNAPOINT_WORKER_ARGS``."""
    from engine.cli import build_parser
    from engine.kafka.client_config import ClientConfigError, use_client_config

    if argv is None:
        argv = shlex.split(os.environ.get(WORKER_ARGS_ENV, ""))
    args = build_parser().parse_args(["worker", *argv])
    try:
        use_client_config(args.client_config)
    except ClientConfigError as e:
        raise SystemExit(f"mynapoint worker: {e}") from None
    w = build_worker(args, FaustWorker)
    if isinstance(w, int):
        raise SystemExit(w)
    assert isinstance(w, FaustWorker)
    return make_app(w, args)


def __getattr__(name: str) -> Any:
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        _app = app_from_env()
    return _app


__all__ = ["EngineApp", "FaustConsumer", "FaustWorker", "make_app", "run_faust"]
