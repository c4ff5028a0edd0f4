"""The consumer's fetch wait follows the flow (Worker._pace_fetches, DECISIONS 134):
short while records come, long once none came for a second.

The broker test shows the premises on the real broker and client: a long wait asks
far less often while idle, and the broker answers a waiting fetch on the first byte,
so the long wait costs an idle worker's first record no latency.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from engine import cli
from engine.devtools import broker as devbroker
from engine.streams import worker as worker_module
from engine.streams.faust_runtime import FaustWorker
from engine.streams.worker import (
    IDLE_AFTER_SECONDS,
    IDLE_FETCH_WAIT_MS,
    LIVE_FETCH_WAIT_MS,
    MAX_IDLE_FETCH_WAIT_MS,
    Worker,
)
from tests.kafka_fixtures import one_partition_clients
from tests.streams.worker_fakes import unit_worker

RECORD = {TopicPartition("t", 0): [object()]}


def _with_fetcher(tmp: Path, **kwargs: Any) -> tuple[Worker, SimpleNamespace]:
    w, c = unit_worker(tmp, **kwargs)
    fetcher = SimpleNamespace(_fetch_max_wait_ms=LIVE_FETCH_WAIT_MS)
    c._fetcher = fetcher  # type: ignore[attr-defined]  # where aiokafka's consumer has it
    return w, fetcher


def test_the_wait_grows_after_a_second_without_records_and_shrinks_at_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w, fetcher = _with_fetcher(tmp_path, idle_fetch_wait_ms=700)
    clock = [1_000.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])

    def poll(after: float, data: dict[TopicPartition, list[object]]) -> int:
        clock[0] += after
        w._pace_fetches(data)
        return int(fetcher._fetch_max_wait_ms)

    assert poll(0, RECORD) == LIVE_FETCH_WAIT_MS
    assert poll(0.5, {}) == LIVE_FETCH_WAIT_MS
    # a poll whose partitions came back empty is not a record
    assert poll(0.49, {TopicPartition("t", 0): []}) == LIVE_FETCH_WAIT_MS
    assert poll(IDLE_AFTER_SECONDS - 0.99, {}) == 700
    assert poll(5, {}) == 700
    assert poll(0.1, RECORD) == LIVE_FETCH_WAIT_MS
    assert poll(IDLE_AFTER_SECONDS - 0.01, {}) == LIVE_FETCH_WAIT_MS


@pytest.mark.parametrize("waiting", ["_held", "_excess"])
def test_messages_waiting_in_memory_keep_the_short_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, waiting: str) -> None:
    w, fetcher = _with_fetcher(tmp_path)
    clock = [1_000.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: clock[0])
    w._pace_fetches(RECORD)
    getattr(w, waiting)[TopicPartition("t", 0)] = [object()]  # its topic paused
    clock[0] += 10 * IDLE_AFTER_SECONDS
    w._pace_fetches({})
    assert fetcher._fetch_max_wait_ms == LIVE_FETCH_WAIT_MS
    getattr(w, waiting).clear()  # decided: the wait grows a second later
    clock[0] += IDLE_AFTER_SECONDS - 0.01
    w._pace_fetches({})
    assert fetcher._fetch_max_wait_ms == LIVE_FETCH_WAIT_MS
    clock[0] += 0.01
    w._pace_fetches({})
    assert fetcher._fetch_max_wait_ms == IDLE_FETCH_WAIT_MS


def test_a_step_paces_the_fetches_it_sets_off(tmp_path: Path) -> None:
    w, fetcher = _with_fetcher(tmp_path)
    asyncio.run(w.step(0))  # no record since the worker started
    assert fetcher._fetch_max_wait_ms == IDLE_FETCH_WAIT_MS
    w._records_at = time.monotonic()
    asyncio.run(w.step(0))
    assert fetcher._fetch_max_wait_ms == LIVE_FETCH_WAIT_MS


def test_the_faust_runtime_leaves_its_consumer_alone(tmp_path: Path) -> None:
    w, fetcher = _with_fetcher(tmp_path)
    w.AIOKAFKA_FETCHES = FaustWorker.AIOKAFKA_FETCHES  # Faust's consumer fetches for it
    fetcher._fetch_max_wait_ms = 123
    w._pace_fetches({})
    assert fetcher._fetch_max_wait_ms == 123


@pytest.mark.parametrize("ms", [LIVE_FETCH_WAIT_MS - 1, MAX_IDLE_FETCH_WAIT_MS + 1])
def test_a_wait_out_of_bounds_is_refused(tmp_path: Path, ms: int,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="outside"):
        unit_worker(tmp_path, idle_fetch_wait_ms=ms)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["worker", "--idle-fetch-wait-ms", str(ms)])
    assert f"{ms} ms is outside" in capsys.readouterr().err
    assert cli.build_parser().parse_args(
        ["worker", "--idle-fetch-wait-ms", str(MAX_IDLE_FETCH_WAIT_MS)]
    ).idle_fetch_wait_ms == MAX_IDLE_FETCH_WAIT_MS


def test_a_wait_that_is_no_whole_number_is_refused(capsys: pytest.CaptureFixture[str]
                                                   ) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["worker", "--idle-fetch-wait-ms", "0.5s"])
    assert "not a whole number of ms: '0.5s'" in capsys.readouterr().err


def test_the_longest_wait_stays_well_inside_the_fetch_lapse() -> None:
    # a fetch unanswered for FETCH_LAPSE_SECONDS counts as a broker away (a quiet
    # input's period restarts): an idle worker's fetches must never look like that
    assert MAX_IDLE_FETCH_WAIT_MS / 1000 <= worker_module.FETCH_LAPSE_SECONDS / 2


def test_the_parser_repeats_the_workers_bounds() -> None:
    assert cli.IDLE_FETCH_WAIT_MS == (LIVE_FETCH_WAIT_MS, IDLE_FETCH_WAIT_MS,
                                      MAX_IDLE_FETCH_WAIT_MS)
    assert cli.build_parser().parse_args(["worker"]).idle_fetch_wait_ms == IDLE_FETCH_WAIT_MS


@pytest.mark.kafka
def test_an_idle_consumer_asks_less_and_still_gets_the_first_record_at_once(
        kafka_broker: devbroker.Broker, topic_prefix, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap
    tp = TopicPartition(f"{topic_prefix()}.idle", 0)

    async def go() -> tuple[int, int, float, int]:
        async with one_partition_clients(bootstrap, tp, LIVE_FETCH_WAIT_MS) as (producer,
                                                                                consumer):
            w, _ = unit_worker(tmp_path, idle_fetch_wait_ms=MAX_IDLE_FETCH_WAIT_MS)
            w.consumer = consumer
            fetcher = consumer._fetcher
            sent = [0]
            proc = fetcher._proc_fetch_request

            def counted(*args: object) -> object:
                sent[0] += 1
                return proc(*args)

            fetcher._proc_fetch_request = counted

            async def fetches_in(seconds: float) -> int:
                before = sent[0]
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    data = await consumer.getmany(timeout_ms=100)
                    assert not data, "nothing was published yet"
                return sent[0] - before

            w._pace_fetches(RECORD)  # as after a poll with records
            await fetches_in(0.5)  # the first position lookup is out of the way
            live = await fetches_in(2.0)
            w._records_at -= IDLE_AFTER_SECONDS
            w._pace_fetches({})
            await fetches_in(0.5)  # the last short fetch answered
            idle = await fetches_in(2.0 * 2)
            assert fetcher._fetch_max_wait_ms == MAX_IDLE_FETCH_WAIT_MS
            # a record appended right after a long fetch went out
            start = sent[0]
            while sent[0] == start:
                await asyncio.sleep(0.001)
            t0 = time.monotonic()
            await producer.send_and_wait(tp.topic, b"first")
            data: dict[TopicPartition, list[object]] = {}
            while not data:
                data = await consumer.getmany(timeout_ms=10_000)
            took = time.monotonic() - t0
            w._pace_fetches(data)
            return live, idle, took, int(fetcher._fetch_max_wait_ms)

    live, idle, took, after = asyncio.run(go())
    # 2 s at 20 ms: dozens of fetches; 4 s at 2 s: two or three
    assert idle <= 3 < live / 3, (live, idle)
    # a broker that held the fetch for its wait would have taken about 2 s
    assert took < MAX_IDLE_FETCH_WAIT_MS / 1000 / 2, took
    assert after == LIVE_FETCH_WAIT_MS
