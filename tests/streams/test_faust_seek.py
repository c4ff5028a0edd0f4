"""The Faust runtime's seek back to the group's commit, on the broker: every input
Faust drops fetched records of must be read again, an input nobody committed yet
included (DECISIONS 151)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from engine.kafka.client_config import default_client, faust_credentials
from engine.kafka.produce import Outgoing
from engine.streams import faust_runtime
from engine.streams.faust_runtime import EngineApp, seek_to_committed
from tests.kafka_fixtures import create_topic, produce

pytestmark = pytest.mark.kafka


async def _read_all(c: AIOKafkaConsumer, tps: list[TopicPartition]) -> list[tuple[int, int]]:
    """(partition, offset) of everything ``c`` returns until its positions reach the
    ends; the group's assignment first."""
    while set(c.assignment()) != set(tps):
        await c.getmany(timeout_ms=200)
    ends = await c.end_offsets(tps)
    got: list[tuple[int, int]] = []
    while any([await c.position(tp) < ends[tp] for tp in tps]):
        for tp, msgs in (await c.getmany(timeout_ms=500)).items():
            got += [(tp.partition, m.offset) for m in msgs]
    return sorted(got)


async def _scenario(bootstrap: str, topic: str, group: str) -> dict[str, Any]:
    await create_topic(bootstrap, topic, 2)
    await produce(bootstrap, [(topic, Outgoing(p, b"k", b"v%d" % i, -1))
                              for p in (0, 1) for i in range(3)])
    tps = [TopicPartition(topic, p) for p in (0, 1)]
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, **default_client(),
                         group_id=group, enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    try:
        first = await _read_all(c, tps)
        await c.commit({tps[0]: OffsetAndMetadata(2, "")})  # partition 1: no commit
        # aiokafka's own seek, which Faust's perform_seek calls: back to a commit above
        # 0 only
        await c.seek_to_committed()
        plain = {tp.partition: await c.position(tp) for tp in tps}
        await _read_all(c, tps)
        committed = await seek_to_committed(c)
        ours = {tp.partition: await c.position(tp) for tp in tps}
        again = await _read_all(c, tps)
    finally:
        await c.stop()
    return {"first": first, "plain": plain, "ours": ours, "again": again,
            "committed": {tp.partition: o for tp, o in committed.items()}}


def test_an_input_without_a_commit_is_read_again_from_its_beginning(
        kafka_broker, topic_prefix) -> None:
    prefix = topic_prefix()
    r = asyncio.run(_scenario(kafka_broker.bootstrap, f"{prefix}.seek", f"{prefix}-g"))
    assert r["first"] == [(p, o) for p in (0, 1) for o in range(3)]
    # the premise: aiokafka leaves the partition nobody committed where it was
    assert r["plain"] == {0: 2, 1: 3}
    assert r["ours"] == {0: 2, 1: 0}
    assert r["again"] == [(0, 2), (1, 0), (1, 1), (1, 2)]
    # Faust's perform_seek takes the commits as aiokafka answers them
    assert r["committed"] == {0: 2, 1: None}


def test_faust_s_seek_back_is_the_engine_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's ``perform_seek`` (after every rebalance, and whenever it drops what it
    fetched while its flow is stopped) reaches :func:`seek_to_committed` through the
    app's consumer thread, on that thread's aiokafka consumer."""
    seeks: list[Any] = []

    async def recorded(consumer: Any) -> dict[Any, int | None]:
        seeks.append(consumer)
        return {}

    monkeypatch.setattr(faust_runtime, "seek_to_committed", recorded)
    app = EngineApp("g", broker="kafka://127.0.0.1:1")
    thread = app.consumer._thread  # type: ignore[attr-defined]
    aiokafka_consumer = object()
    thread._ensure_consumer = lambda: aiokafka_consumer

    async def on_this_loop(fn: Any, *args: Any) -> Any:  # Faust's thread, not started
        return await fn(*args)

    thread.call_thread = on_this_loop
    asyncio.run(app.consumer.perform_seek())
    assert seeks == [aiokafka_consumer]


class _App(faust.App):
    """A bare Faust app on the engine's transport, as EngineApp builds it."""

    _new_transport = EngineApp._new_transport


async def _dropped_while_stopped(bootstrap: str, topic: str, group: str, datadir: Path
                                 ) -> tuple[list[int], list[int]]:
    """Records Faust fetched while its flow was stopped, of an input the group never
    committed: the offsets its agent saw before, and from the moment the flow stopped
    on."""
    await create_topic(bootstrap, topic, 1)
    app = _App(group, broker=f"kafka://{bootstrap}",
               broker_credentials=faust_credentials(default_client()), datadir=str(datadir),
               consumer_auto_offset_reset="earliest", web_enabled=False,
               topic_allow_declare=False, topic_disable_leader=True)
    seen: list[int] = []

    @app.agent(app.topic(topic, acks=False, key_serializer="raw", value_serializer="raw"))
    async def read(stream: Any) -> None:
        async for event in stream.noack().events():
            seen.append(event.message.offset)

    async def until(what: Any, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while not what():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)

    await app.start()
    try:
        consumer = app.consumer
        await until(lambda: len(consumer.assignment()) == 1)
        await produce(bootstrap, [(topic, Outgoing(0, b"k", b"v%d" % i, -1)) for i in range(3)])
        await until(lambda: len(seen) == 3)
        before = list(seen)
        # the window of a rebalance: a fetch that returns after the flow was stopped
        # (Faust then drops what it returned and seeks back to the commit)
        fetch = consumer._wait_next_records  # type: ignore[attr-defined]
        mark: list[int] = []  # how many the agent had seen when the flow stopped

        async def stopped_on_return(timeout: float) -> Any:
            records, active = await fetch(timeout)
            if records and not mark:
                mark.append(len(seen))
                consumer.stop_flow()
            return records, active

        consumer._wait_next_records = stopped_on_return  # type: ignore[attr-defined]
        await asyncio.sleep(1.5)  # the fetch already waiting returns empty
        await produce(bootstrap, [(topic, Outgoing(0, b"k", b"v%d" % i, -1))
                                  for i in range(3, 6)])
        await until(lambda: bool(mark))
        await asyncio.sleep(0.5)
        consumer.resume_flow()
        await until(lambda: 5 in seen[mark[0]:], 20.0)
        return before, seen[mark[0]:]
    finally:
        await app.stop()


def test_records_faust_dropped_of_an_input_without_a_commit_are_read_again(
        kafka_broker, topic_prefix, tmp_path: Path) -> None:
    """Faust's own path (Consumer.getmany with its flow stopped, then perform_seek),
    on the broker: the input nobody committed is read again from its beginning."""
    prefix = topic_prefix()
    before, after = asyncio.run(_dropped_while_stopped(
        kafka_broker.bootstrap, f"{prefix}.faust-drop", f"{prefix}-fg", tmp_path))
    assert before == [0, 1, 2]
    assert after == [0, 1, 2, 3, 4, 5]
