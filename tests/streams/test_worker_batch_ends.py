"""The enrollments' ends a batch's messages are noted with (Worker._batch_ends,
DECISIONS 127): the consumer's own high watermarks where its fetches told them no
earlier than they brought the messages, the broker asked for the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka.topics import Topics
from engine.streams.worker import Worker


class _Consumer:
    """Per input: the high watermark and the time (ms) the last fetch answer told it,
    as aiokafka keeps them; the broker's ends apart, its looks counted."""

    def __init__(self, tps: list[TopicPartition]) -> None:
        self.tps = set(tps)
        self.told: dict[TopicPartition, tuple[int, int]] = {}  # tp -> (hw, at ms)
        self.ends = {tp: 10_000 for tp in tps}
        self.looked: list[set[TopicPartition]] = []

    def assignment(self) -> set[TopicPartition]:
        return self.tps

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.told[tp][0] if tp in self.told else None

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return self.told[tp][1] if tp in self.told else None

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.looked.append(set(tps))
        return {tp: self.ends[tp] for tp in tps}


def _worker(tmp: Path) -> tuple[Worker, _Consumer]:
    w = Worker("127.0.0.1:1", Topics("t", "g"), DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, tmp)
    c = _Consumer([tp for p in (0, 1) for tp in w._tps(p)])
    w.consumer = c  # type: ignore[assignment]
    return w, c


def _batch(w: Worker, *parts: int) -> dict[int, dict[str, list[Any]]]:
    """A batch of one transaction message per partition (the message itself is not read)."""
    return {p: {w._transaction_tps(p)[0].topic: [object()]} for p in parts}


def test_ends_told_by_a_fetch_as_new_as_the_messages_need_no_look(tmp_path: Path) -> None:
    w, c = _worker(tmp_path)
    enr0, = w._enrollment_tps(0)
    txn0, = w._transaction_tps(0)
    c.told = {txn0: (50, 1_000), enr0: (700, 1_000)}  # one answer told both
    assert asyncio.run(w._batch_ends(_batch(w, 0))) == {enr0: 700}
    c.told[enr0] = (720, 1_005)  # a later answer: a later end is as good
    assert asyncio.run(w._batch_ends(_batch(w, 0))) == {enr0: 720}
    assert c.looked == []


def test_an_end_told_before_the_messages_were_fetched_is_asked_of_the_broker(
        tmp_path: Path) -> None:
    w, c = _worker(tmp_path)
    enr0, = w._enrollment_tps(0)
    enr1, = w._enrollment_tps(1)
    txn0, = w._transaction_tps(0)
    txn1, = w._transaction_tps(1)
    # partition 0's enrollments not fetched since (paused over the budget, or their
    # fetched messages not handed over yet): their end is stale; partition 1's fresh
    c.told = {txn0: (50, 1_010), enr0: (700, 1_000), txn1: (60, 1_010), enr1: (800, 1_010)}
    assert asyncio.run(w._batch_ends(_batch(w, 0, 1))) == {enr0: 10_000, enr1: 800}
    assert c.looked == [{enr0}]  # one look, for the stale partition only


def test_ends_not_yet_told_are_asked_of_the_broker(tmp_path: Path) -> None:
    w, c = _worker(tmp_path)
    enr0, = w._enrollment_tps(0)
    txn0, = w._transaction_tps(0)
    c.told = {txn0: (50, 1_000)}  # the enrollments never fetched yet
    assert asyncio.run(w._batch_ends(_batch(w, 0))) == {enr0: 10_000}
    c.told = {enr0: (700, 1_000)}  # the messages' input with no time known
    assert asyncio.run(w._batch_ends(_batch(w, 0))) == {enr0: 10_000}
    assert len(c.looked) == 2


def test_a_runtime_whose_fetches_do_not_tell_ends_always_asks(tmp_path: Path) -> None:
    w, c = _worker(tmp_path)
    w.FETCHES_TELL_ENDS = False  # as the Faust runtime's worker
    enr0, = w._enrollment_tps(0)
    txn0, = w._transaction_tps(0)
    c.told = {txn0: (50, 1_000), enr0: (700, 1_000)}
    assert asyncio.run(w._batch_ends(_batch(w, 0))) == {enr0: 10_000}
    assert c.looked == [{enr0}]
