"""A poll reads again what was appended while the previous batch was decided
(Worker._top_up, DECISIONS 128).

aiokafka asks a broker for more only once what it holds of that broker's partitions
has been read, so without the second read a record appended after the answer that
came in during a batch waits a whole further poll. The broker test shows that
premise on the real broker and client, and that the second read closes it.
"""

from __future__ import annotations

import asyncio
import time
from collections import namedtuple
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from engine.devtools import broker as devbroker
from engine.streams import worker as worker_module
from engine.streams.faust_runtime import FaustWorker
from engine.streams.worker import TOP_UP_AGE_MS, TOP_UP_WAIT_MS, Worker
from tests.kafka_fixtures import one_partition_clients
from tests.streams.worker_fakes import unit_worker

Msg = namedtuple("Msg", "offset")
NOW_MS = 1_000_000.0


def _stale_poll(tmp: Path, monkeypatch: pytest.MonkeyPatch, age_ms: float,
                max_batch: int = 100) -> tuple[Worker, dict[TopicPartition, list[Msg]]]:
    """A worker whose consumer answered a fetch ``age_ms`` ago with two messages."""
    w, c = unit_worker(tmp, max_batch=max_batch)
    monkeypatch.setattr(time, "time", lambda: NOW_MS / 1000)
    tp = w._transaction_tps(0)[0]
    c.told[tp] = (2, NOW_MS - age_ms)
    return w, {tp: [Msg(0), Msg(1)]}


def test_a_poll_fetched_a_while_ago_reads_again_in_offset_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w, data = _stale_poll(tmp_path, monkeypatch, age_ms=TOP_UP_AGE_MS + 5)
    c = w.consumer
    tp, = data
    other = w._enrollment_tps(0)[0]
    c.answers.append({tp: [Msg(2), Msg(3)], other: [Msg(7)]})  # type: ignore[union-attr]
    got = asyncio.run(w._top_up(data))
    assert {t: [m.offset for m in ms] for t, ms in got.items()} == {tp: [0, 1, 2, 3],
                                                                     other: [7]}
    # one short read, for no more than the batch has room for
    assert c.reads == [(TOP_UP_WAIT_MS, 98)]  # type: ignore[union-attr]


def test_a_rebalance_between_the_reads_returns_nothing_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w, data = _stale_poll(tmp_path, monkeypatch, age_ms=TOP_UP_AGE_MS + 5)
    tp, = data
    # the position went back to the committed offset 0 in between
    w.consumer.answers.append({tp: [Msg(0), Msg(1), Msg(2)]})  # type: ignore[union-attr]
    got = asyncio.run(w._top_up(data))
    assert [m.offset for m in got[tp]] == [0, 1, 2]


def test_a_fresh_poll_or_a_full_one_reads_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w, data = _stale_poll(tmp_path / "fresh", monkeypatch, age_ms=TOP_UP_AGE_MS - 1)
    assert asyncio.run(w._top_up(dict(data))) == data
    assert w.consumer.reads == []  # type: ignore[union-attr]
    w, data = _stale_poll(tmp_path / "full", monkeypatch, age_ms=500, max_batch=2)
    assert asyncio.run(w._top_up(dict(data))) == data
    assert w.consumer.reads == []  # type: ignore[union-attr]


def test_the_faust_runtime_reads_once(tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # its adapter hands over what the agent was given; a second read would only wait
    w, data = _stale_poll(tmp_path, monkeypatch, age_ms=500)
    w.AIOKAFKA_FETCHES = FaustWorker.AIOKAFKA_FETCHES  # the Faust runtime's worker
    assert asyncio.run(w._top_up(dict(data))) == data
    assert w.consumer.reads == []  # type: ignore[union-attr]


@pytest.mark.kafka
def test_a_poll_reads_what_was_appended_while_the_last_batch_was_decided(
        kafka_broker: devbroker.Broker, topic_prefix, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap = kafka_broker.bootstrap
    tp = TopicPartition(f"{topic_prefix()}.probe", 0)
    # the claim is about what the second read returns, not how fast: a slow machine
    # must not fail it
    monkeypatch.setattr(worker_module, "TOP_UP_WAIT_MS", 5_000)

    async def go() -> tuple[list[bytes], list[bytes]]:
        async with one_partition_clients(bootstrap, tp) as (producer, consumer):
            w, _ = unit_worker(tmp_path)
            w.consumer = consumer

            async def poll_after_a_batch(tag: str, top_up: bool) -> list[bytes]:
                md = await producer.send_and_wait(tp.topic, f"{tag}-fetched".encode())
                # "the batch": the client holds the record once a fetch answer told
                # an end past it (that answer brought it)
                deadline = time.monotonic() + 30
                while (consumer.highwater(tp) or 0) <= md.offset:
                    assert time.monotonic() < deadline, "the record was never fetched"
                    await asyncio.sleep(0.01)
                await producer.send_and_wait(tp.topic, f"{tag}-appended".encode())
                await asyncio.sleep(0.5)  # time for a fetch, were the client to send one
                data = await consumer.getmany(timeout_ms=0)
                if top_up:
                    data = await w._top_up(data)
                return [m.value for m in data.get(tp, [])]

            plain = await poll_after_a_batch("a", top_up=False)
            await consumer.getmany(timeout_ms=10_000)  # "a-appended", read by itself
            topped = await poll_after_a_batch("b", top_up=True)
            return plain, topped

    plain, topped = asyncio.run(go())
    assert plain == [b"a-fetched"]  # the premise: the client had not asked for more
    assert topped == [b"b-fetched", b"b-appended"]
