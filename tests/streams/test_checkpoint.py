"""Fault injection at the named points of a batch's checkpoint (engine.streams.checkpoint).
The order itself (outcomes → state → commit → local) is proven against the broker in
tests/streams/test_faults.py, which SIGKILLs the worker at each of these points."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from engine.cli import build_parser
from engine.config import DEFAULT_REGISTRY
from engine.kafka.topics import Topics
from engine.metrics import Laps
from engine.streams.checkpoint import STAGES, Checkpoint, Faults, Uncommitted
from engine.streams.decode import decode_messages
from engine.streams.state import decode_person
from engine.streams.worker import Worker, build_worker
from tests import builders
from tests.streams.feed import PERSON, T0, Feed, Msg
from tests.streams.worker_fakes import unit_worker


def test_an_injected_broker_fault_fires_once_at_its_exact_stage_and_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYNAPOINT_FAIL_AT", "state:3")
    faults = Faults()
    for batch in range(6):
        for stage in STAGES:
            if (stage, batch) == ("state", 3):
                with pytest.raises(KafkaConnectionError, match="after state of batch 3"):
                    faults.point(stage, batch)
            else:
                faults.point(stage, batch)
    faults.point("state", 3)  # the retried batch goes through: a fault, not a loop


def test_no_fault_is_injected_without_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MYNAPOINT_CRASH_AT", "MYNAPOINT_STALL_AT", "MYNAPOINT_FAIL_AT"):
        monkeypatch.delenv(name, raising=False)
    faults = Faults()
    for stage in STAGES:
        faults.point(stage, 0)
    assert faults.injected == set()


def test_a_plus_point_fires_at_the_first_batch_from_there_that_produced_outcomes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYNAPOINT_FAIL_AT", "outputs:3+")
    faults = Faults()
    for batch in range(3):  # before the 3rd: outcomes or not, no fault
        faults.point("outputs", batch, produced=True)
    for batch in (3, 4):  # no outcomes: not yet
        faults.point("outputs", batch, produced=False)
        faults.point("state", batch, produced=True)  # another stage
    with pytest.raises(KafkaConnectionError, match="after outputs of batch 5"):
        faults.point("outputs", 5, produced=True)
    faults.point("outputs", 6, produced=True)  # once


# ------------------------------------------------------------------ the order, without a broker


class _Producer:
    """Takes record batches and answers each with a future the test resolves."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, asyncio.Future[Any]]] = []

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, fut))
        return fut

    def acknowledge(self, topic: str) -> int:
        futs = [f for t, f in self.sent if t == topic and not f.done()]
        for f in futs:
            f.set_result(SimpleNamespace(offset=0))
        return len(futs)


class _Consumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, Any]] = []

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append(offsets)


def test_state_is_laid_out_while_outcomes_are_stored_but_sent_only_once_they_are(
        tmp_path: Path) -> None:
    """Step 2 after step 1 (the module's order): no changelog batch goes out before
    every outcome is acknowledged, and no offset is committed before the changelog
    is; the changelog's batches are built during the wait for the outcomes."""
    feed = Feed(tmp_path, topic_prefix="t.")
    feed.poll("enrollment", [{"rec": builders.enr(PERSON), "ts": T0}])
    msgs = [Msg("t.transaction", 0, 10 + i, T0, PERSON.encode(),
                orjson.dumps(builders.txn(mykey=PERSON)), None) for i in range(3)]
    batch = decode_messages(msgs, "transaction", feed.campaign, DEFAULT_REGISTRY, 1 << 20,
                            source_operator=Topics.operator_of)
    res = feed.logic.decide(None, batch, frozenset())
    assert len(res.grant_messages) == 3
    topics = Topics("t")
    producer, consumer = _Producer(), _Consumer()
    cp = Checkpoint(producer, consumer, topics, 1, Faults(), 0)  # type: ignore[arg-type]
    built: list[int] = []  # outcome batches acknowledged when the changelog was built
    layout = cp.layout

    def spy(sealed: Any) -> Any:
        built.append(sum(f.done() for t, f in producer.sent if t != topics.changelog))
        return layout(sealed)

    cp.layout = spy  # type: ignore[method-assign]

    async def run() -> None:
        task = asyncio.create_task(cp.run({0: res}, {0: feed.logic},
                                          {TopicPartition("t.transaction", 0): msgs[-1]},
                                          Uncommitted(), 0.0, Laps()))
        for _ in range(20):
            await asyncio.sleep(0)
        outcome_topics = {t for t, _ in producer.sent}
        assert outcome_topics and topics.changelog not in outcome_topics
        assert built == [0]  # laid out before any outcome was acknowledged
        assert producer.acknowledge(topics.changelog) == 0
        for t in outcome_topics:
            producer.acknowledge(t)
        for _ in range(20):
            await asyncio.sleep(0)
        assert [t for t, _ in producer.sent].count(topics.changelog) >= 1
        assert not consumer.commits  # the changelog is not acknowledged yet
        producer.acknowledge(topics.changelog)
        assert await task == (True, True)
        assert len(consumer.commits) == 1

    asyncio.run(run())


def test_a_point_of_a_commit_is_the_point_of_every_batch_it_takes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The state and commit points of a commit that takes batches 2-5 are those of
    batch 3 as well (DECISIONS 131); a batch outside it is not named."""
    monkeypatch.setenv("MYNAPOINT_FAIL_AT", "state:3")
    faults = Faults()
    faults.point("state", 2, first=0)
    faults.point("state", 7, first=6)
    with pytest.raises(KafkaConnectionError, match=r"after state of batch 3$"):
        faults.point("state", 5, first=2)


class _AckingProducer:
    """Acknowledges every record batch at once; keeps what it was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(offset=len(self.sent)))
        self.sent.append((topic, batch))
        return fut

    def records(self, topic: str) -> int:
        return sum(b.record_count() for t, b in self.sent if t == topic)


def _decided(feed: Feed, offset: int, n: int) -> tuple[Any, list[Any]]:
    msgs = [Msg("t.transaction", 0, offset + i, T0, PERSON.encode(),
                orjson.dumps(builders.txn(mykey=PERSON)), None) for i in range(n)]
    batch = decode_messages(msgs, "transaction", feed.campaign, DEFAULT_REGISTRY, 1 << 20,
                            source_operator=Topics.operator_of)
    return feed.logic.decide(None, batch, frozenset()), msgs


def test_batches_within_the_interval_are_committed_together_each_person_once(
        tmp_path: Path) -> None:
    """Outcomes go out with every batch; state and offsets wait until the batches
    since the last commit are ``interval`` old, and then the person both batches
    touched is one changelog record and the commit is the later batch's."""
    feed = Feed(tmp_path, topic_prefix="t.")
    feed.poll("enrollment", [{"rec": builders.enr(PERSON), "ts": T0}])
    topics, tp = Topics("t"), TopicPartition("t.transaction", 0)
    producer, consumer = _AckingProducer(), _Consumer()
    open_ = Uncommitted()

    async def run() -> None:
        res, msgs = _decided(feed, 10, 2)
        cp = Checkpoint(producer, consumer, topics, 1, Faults(), 0)  # type: ignore[arg-type]
        durable, ok = await cp.run({0: res}, {0: feed.logic}, {tp: msgs[-1]}, open_, 60.0,
                                   Laps())
        assert ok and not durable
        assert producer.records(topics.changelog) == 0 and not consumer.commits
        assert producer.records(topics.outcome_topic("grant", None)) == 2
        res, msgs = _decided(feed, 12, 3)
        cp = Checkpoint(producer, consumer, topics, 1, Faults(), 1)  # type: ignore[arg-type]
        durable, ok = await cp.run({0: res}, {0: feed.logic}, {tp: msgs[-1]}, open_, 0.0,
                                   Laps())
        assert ok and durable
        assert producer.records(topics.outcome_topic("grant", None)) == 5
        # the person and the partition's meta, once each for both batches
        assert producer.records(topics.changelog) == 2
        assert [{t: m.offset for t, m in c.items()} for c in consumer.commits] == [{tp: 15}]
        assert feed.store.value(PERSON) is not None  # applied as the local state

    asyncio.run(run())
    assert open_.parts == {0} and open_.first_batch == 0


def test_a_failed_batch_is_read_again_from_the_first_offset_since_the_commit(
        tmp_path: Path) -> None:
    """A broker error rewinds every input to the first message fetched since the last
    commit, not to the failed batch's own first: the batches before it are not durable
    either, and their partitions' undurable state is forgotten."""
    w, consumer = unit_worker(tmp_path, partitions=(0, 1))
    seeks: dict[TopicPartition, int] = {}
    consumer.seek = lambda tp, offset: seeks.__setitem__(tp, offset)  # type: ignore[attr-defined]
    discarded: list[int] = []
    for p in (0, 1):
        w.logics[p] = SimpleNamespace(discard=lambda p=p: discarded.append(p))  # type: ignore[assignment]
    a, b = w._tps(0)[0], w._tps(1)[0]
    w._open.fetched({a: [SimpleNamespace(offset=5)]})
    w._open.add(0, [0], {a: SimpleNamespace(offset=9)}, True)
    w._open.fetched({a: [SimpleNamespace(offset=10)], b: [SimpleNamespace(offset=3)]})
    w._rewind({b: [SimpleNamespace(offset=3)]})  # the failed batch read b only
    assert seeks == {a: 5, b: 3}
    assert sorted(discarded) == [0, 1]
    assert w._open.empty() and not w._open.first


# ------------------------------------------------------------------ the commit in flight


class _ChangelogHeldProducer(_AckingProducer):
    """Acknowledges outcomes at once; the changelog's batches when the test says, or
    with a broker error."""

    def __init__(self, changelog: str) -> None:
        super().__init__()
        self.changelog = changelog
        self.held: list[asyncio.Future[Any]] = []

    async def send_batch(self, batch: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        if topic != self.changelog:
            return await super().send_batch(batch, topic, partition)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, batch))
        self.held.append(fut)
        return fut

    def release(self, error: Exception | None = None) -> None:
        for fut in self.held:
            if error is None:
                fut.set_result(SimpleNamespace(offset=7))
            else:
                fut.set_exception(error)
        self.held.clear()


async def _settle() -> None:
    """Let a commit task run until it waits for the held changelog."""
    for _ in range(20):
        await asyncio.sleep(0)


def _pipelined_worker(tmp_path: Path, pipelined: bool = True
                      ) -> tuple[Any, Feed, _ChangelogHeldProducer, _Consumer]:
    feed = Feed(tmp_path / "feed", topic_prefix="t.")
    feed.poll("enrollment", [{"rec": builders.enr(PERSON), "ts": T0}])
    w, _ = unit_worker(tmp_path / "w", pipelined=pipelined)
    assert w.pipelined is pipelined
    producer, consumer = _ChangelogHeldProducer(w.topics.changelog), _Consumer()
    w.producer, w.consumer = producer, consumer  # type: ignore[assignment]
    w.logics[0] = feed.logic
    return w, feed, producer, consumer


def test_the_next_batch_is_decided_and_delivered_while_the_commit_is_written(
        tmp_path: Path) -> None:
    """DECISIONS 132: a commit's changelog write and offset commit run while the next
    batch is decided and its outcomes go out; the commit takes the offsets and the
    state sealed when it began, and the later batch's state stays pending."""
    w, feed, producer, consumer = _pipelined_worker(tmp_path)
    tp = TopicPartition("t.transaction", 0)
    grants = w.topics.outcome_topic("grant", None)

    async def run() -> None:
        w.commit_interval = 0.0
        res, msgs = _decided(feed, 10, 2)
        # returns with the commit in flight (a serial commit would wait for the
        # changelog here)
        await asyncio.wait_for(w._checkpoint({0: res}, {tp: msgs[-1]}, Laps()), 5)
        await _settle()
        assert w._commit_task is not None and not w._commit_task.done()
        sealed = feed.store.committing[PERSON]
        assert sealed is not None and decode_person(sealed).n_entries == 2
        w.commit_interval = 60.0  # the next batch does not commit
        res, msgs = _decided(feed, 12, 3)
        await w._checkpoint({0: res}, {tp: msgs[-1]}, Laps())
        # its outcomes are out while the first commit still waits for the changelog
        assert producer.records(grants) == 5 and not consumer.commits
        assert PERSON in feed.store.pending and feed.store.get(PERSON).n_entries == 5
        producer.release()
        await w._end_commit()
        assert [{t: m.offset for t, m in c.items()} for c in consumer.commits] == [{tp: 12}]
        assert feed.store.value(PERSON) == sealed  # the local checkpoint: the sealed state
        assert PERSON in feed.store.pending and feed.store.get(PERSON).n_entries == 5
        assert w._open.first_batch is not None and w._open.parts == {0}

    asyncio.run(run())


def test_a_commit_that_fails_in_flight_is_rewound_with_the_batches_decided_since(
        tmp_path: Path) -> None:
    """A broker error of the commit in flight surfaces at the next commit: the worker
    reads again from the first offset the failed commit took, and forgets the state
    of both (sealed and pending), back to the local checkpoint."""
    w, feed, producer, consumer = _pipelined_worker(tmp_path)
    tp = w._transaction_tps(0)[0]
    seeks: dict[TopicPartition, int] = {}
    consumer.seek = lambda tp, offset: seeks.__setitem__(tp, offset)  # type: ignore[attr-defined]
    consumer.assignment = lambda: set(w._tps(0))  # type: ignore[attr-defined]
    before = feed.store.value(PERSON)

    async def run() -> None:
        w.commit_interval = 0.0
        res, msgs = _decided(feed, 10, 2)
        w._open.fetched({tp: msgs})
        await w._checkpoint({0: res}, {tp: msgs[-1]}, Laps())
        await _settle()
        res, msgs = _decided(feed, 12, 3)
        w._open.fetched({tp: msgs})
        producer.release(KafkaConnectionError("changelog leader gone"))
        with pytest.raises(KafkaConnectionError):
            await w._checkpoint({0: res}, {tp: msgs[-1]}, Laps())
        assert w._commit_task is None and not consumer.commits
        w._rewind({})

    asyncio.run(run())
    assert seeks == {tp: 10}
    assert feed.store.value(PERSON) == before and feed.store.get(PERSON).n_entries == 0
    assert not feed.store.pending and not feed.store.committing


def test_serial_commits_wait_for_the_changelog_and_the_commit(tmp_path: Path) -> None:
    """``worker --serial-commits``: a batch that commits returns only once its state is
    in the changelog and its offsets are committed (the form before DECISIONS 132)."""
    args = build_parser().parse_args(["worker", "--broker", "127.0.0.1:1", "--state-dir",
                                      str(tmp_path / "cli"), "--serial-commits"])
    built = build_worker(args)
    assert isinstance(built, Worker) and not built.pipelined
    w, feed, producer, consumer = _pipelined_worker(tmp_path, pipelined=False)
    tp = TopicPartition("t.transaction", 0)

    async def run() -> None:
        w.commit_interval = 0.0
        res, msgs = _decided(feed, 10, 2)
        task = asyncio.create_task(w._checkpoint({0: res}, {tp: msgs[-1]}, Laps()))
        await _settle()
        assert not task.done() and producer.held and not consumer.commits
        producer.release()
        await asyncio.wait_for(task, 5)
        assert consumer.commits and w._commit_task is None and not feed.store.pending

    asyncio.run(run())
