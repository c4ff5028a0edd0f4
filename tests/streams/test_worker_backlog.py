"""When a partition's enrollments count as a backlog, so that its transactions are
not fetched (Worker._prioritise_enrollments, DECISIONS 126): below where they ended
in Kafka at the last backlog look, a look ago; a steady flow is not a backlog."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka.topics import Topics
from engine.streams.worker import BACKLOG_LOOK_SECONDS, Worker


class _Consumer:
    """What the pausing asks of a consumer, for one partition: positions and ends
    set by the test, pauses recorded, end_offsets counted."""

    def __init__(self, tps: list[TopicPartition]) -> None:
        self.tps = set(tps)
        self.positions = {tp: 0 for tp in tps}
        self.ends = dict(self.positions)
        self.paused_tps: set[TopicPartition] = set()
        self.looks = 0

    def assignment(self) -> set[TopicPartition]:
        return self.tps

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_tps)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_tps.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_tps.difference_update(tps)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def highwater(self, tp: TopicPartition) -> int:
        return self.positions[tp]  # what the last fetch saw: behind the broker

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.looks += 1
        return {tp: self.ends[tp] for tp in tps}


def test_enrollments_are_a_backlog_only_below_where_they_ended_a_look_ago(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    topics = Topics("t", "g")
    w = Worker("127.0.0.1:1", topics, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, tmp_path)
    enrollments, = w._enrollment_tps(0)
    transactions, = w._transaction_tps(0)
    c = _Consumer([*w._tps(0)])
    w.consumer = c  # type: ignore[assignment]
    w.logics = {0: None}  # type: ignore[dict-item]  # only the partition's number is read
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])

    def step(seconds: float, read_to: int, end: int) -> bool:
        """A step ``seconds`` after the last, enrollments read to ``read_to`` of
        ``end`` in Kafka: whether the transactions are paused."""
        now[0] += seconds
        c.positions[enrollments], c.ends[enrollments] = read_to, end
        asyncio.run(w._prioritise_enrollments())
        return transactions in c.paused_tps

    # a worker's first step has not looked yet: paused for that step only, and the
    # look it ends with (1,000 in Kafka) is what the next steps compare with
    assert step(0, read_to=0, end=1_000)
    assert c.looks == 1
    assert step(0.1, read_to=400, end=1_000)        # a backlog: still below the look
    assert not step(0.1, read_to=1_000, end=1_000)  # read to where it ended
    # a steady flow: always something unread, never a backlog, the look not
    # repeated before BACKLOG_LOOK_SECONDS
    assert not step(0.3, read_to=1_100, end=1_150)
    assert not step(0.3, read_to=1_200, end=1_250)
    assert c.looks == 1
    # the next look (1,400) is compared from the step after it: a flow that keeps up
    # passes it, one that stalls below it is a backlog again
    assert not step(BACKLOG_LOOK_SECONDS, read_to=1_300, end=1_400)
    assert c.looks == 2
    assert not step(0.2, read_to=1_450, end=1_500)
    assert not step(BACKLOG_LOOK_SECONDS, read_to=1_460, end=1_600)  # looks: 1,600
    assert c.looks == 3
    assert step(0.2, read_to=1_500, end=1_650)      # stalled below it
    assert not step(0.2, read_to=1_600, end=1_700)  # caught up
