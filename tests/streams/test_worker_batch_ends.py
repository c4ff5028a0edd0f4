"""The enrollments' ends a batch's messages are noted with (Worker._batch_ends,
DECISIONS 127): the consumer's own high watermarks where its fetches told them no
earlier than they brought the messages, the broker asked for the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from engine.streams.faust_runtime import FaustWorker
from engine.streams.worker import Worker
from tests.streams.worker_fakes import FakeConsumer, unit_worker


def _worker(tmp: Path) -> tuple[Worker, FakeConsumer]:
    w, c = unit_worker(tmp, partitions=(0, 1))
    c.ends = dict.fromkeys(c.ends, 10_000)  # the broker's, ahead of any fetch's
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
    w.AIOKAFKA_FETCHES = FaustWorker.AIOKAFKA_FETCHES  # the Faust runtime's worker
    enr0, = w._enrollment_tps(0)
    txn0, = w._transaction_tps(0)
    c.told = {txn0: (50, 1_000), enr0: (700, 1_000)}
    assert asyncio.run(w._batch_ends(_batch(w, 0))) == {enr0: 10_000}
    assert c.looked == [{enr0}]
