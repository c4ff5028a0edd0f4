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
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    OffsetMetadataTooLargeError,
)

from engine.config import DEFAULT_REGISTRY
from engine.kafka.topics import Topics
from engine.metrics import Laps
from engine.streams.checkpoint import STAGES, Checkpoint, Faults, Uncommitted
from engine.streams.decode import decode_messages
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
    snapshots = cp.snapshots

    def spy(open_: Uncommitted, logics: Any) -> Any:
        built.append(sum(f.done() for t, f in producer.sent if t != topics.changelog))
        return snapshots(open_, logics)

    cp.snapshots = spy  # type: ignore[method-assign]

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


class _FailingConsumer:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        raise self.error


@pytest.mark.parametrize(("error", "moved_on"), [
    (CommitFailedError("rebalanced"), True),
    (IllegalStateError("Partition t.transaction-0 is not assigned"), True),
    (OffsetMetadataTooLargeError(), False),
])
def test_a_failed_commit_tells_whether_the_group_moved_on(
        tmp_path: Path, error: Exception, moved_on: bool) -> None:
    """aiokafka raises CommitFailedError when the group rebalanced without this member
    (and rejoins it), IllegalStateError when an assignment is gone already; any other
    error leaves the membership as it was."""
    feed = Feed(tmp_path, topic_prefix="t.")
    cp = Checkpoint(_AckingProducer(), _FailingConsumer(error), Topics("t"),  # type: ignore[arg-type]
                    1, Faults(), 0)
    ok = asyncio.run(cp.commit({TopicPartition("t.transaction", 0): SimpleNamespace(offset=4)},
                               {0: feed.logic}, {0: 7}))
    assert not ok
    assert cp.group_moved_on is moved_on


@pytest.mark.parametrize("moved_on", [True, False])
def test_a_zombie_takes_nothing_over_on_its_own_word(tmp_path: Path, moved_on: bool) -> None:
    """A commit the group refused (it moved on) drops the partitions' local state and
    leaves them to the rejoin's assignment, inputs paused: a take-over now would write
    a fence after the new owner's (DECISIONS 140). After any other failed commit the
    member still owns them and takes them over again at once."""
    w, consumer = unit_worker(tmp_path, partitions=(0, 1))
    closed: list[int] = []
    for p in (0, 1):
        w.logics[p] = SimpleNamespace(  # type: ignore[assignment]
            store=SimpleNamespace(path=tmp_path / f"p{p}", close=lambda p=p: closed.append(p)))
    taken: list[set[int]] = []
    w.assign_partitions = taken.append  # type: ignore[method-assign,assignment]
    open_ = Uncommitted()
    open_.add(0, [0, 1], {}, True)
    w._committed(open_, False, moved_on)
    assert sorted(closed) == [0, 1] and not w.logics
    if moved_on:
        assert taken == []
        assert consumer.paused() == {*w._tps(0), *w._tps(1)}
    else:
        assert taken == [{0, 1}]
