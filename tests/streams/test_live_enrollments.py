"""Live input with applications arriving all the time, against the real broker:
transactions must not wait for an enrollments input that is never "read to its end"."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from engine.kafka.client_config import default_client
from engine.kafka.topics import ensure_topics, partition_for
from engine.tools.collect import collect
from tests.builders import enr, enr_topic, txn, txn_topic
from tests.streams.harness import PARTITIONS, output_end, topics_for, worker

pytestmark = pytest.mark.kafka

ENROLLED = 1_000
# per second, one record per message; Faust's consuming costs more per message, and
# on a loaded machine (the whole suite) it fell behind at the higher rate
TXN_RATE = {"aiokafka": 1_500, "faust": 800}
ENR_RATE = 300  # new applications per second, for the whole test
SEND_SECONDS = 8.0
DEADLINE = 40.0  # after the last transaction was sent, everything decided by then


@pytest.mark.parametrize("operators", [("paypay",), ("paypay", "waon", "aupay")])
def test_transactions_are_decided_while_applications_keep_arriving(
        kafka_broker, topic_prefix, tmp_path: Path, runtime: str,
        operators: tuple[str, ...]) -> None:
    """Transactions waited while an enrollments input of their partition had anything
    unread. aiokafka fetches ahead, so while applications keep coming a fetch has
    nearly always reported more than the last poll read, and the transactions behind
    them were starved: in a load of 15,000 transactions/s with 1,500 applications/s a
    quarter of the transactions was decided, the rest not within the 20 s the load
    generator waited. Now they wait only for what was in Kafka as the poll began
    (DECISIONS 126)."""
    prefix = topic_prefix()
    t = topics_for(prefix)
    bootstrap = kafka_broker.bootstrap
    people = [f"Live{i:04d}" for i in range(ENROLLED)]
    asyncio.run(ensure_topics(bootstrap, t, PARTITIONS))

    async def send(p: AIOKafkaProducer, topic: str, rec: dict[str, object]) -> None:
        key = str(rec["mykey_id"]).encode()
        await p.send(topic, orjson.dumps(rec), key=key,
                     partition=partition_for(key, PARTITIONS))

    async def enroll_first() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client())
        await p.start()
        try:
            for person in people:
                await send(p, enr_topic(t), enr(person))
            await p.flush()
        finally:
            await p.stop()

    async def load() -> tuple[set[str], int, float, set[str]]:
        """(transactions sent, applications sent meanwhile, seconds until every
        transaction had its outcome or the deadline, transactions decided then)."""
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(), linger_ms=5)
        await p.start()
        stop = asyncio.Event()
        applied = [0]

        async def applications() -> None:
            t0 = time.monotonic()
            while not stop.is_set():
                while applied[0] < ENR_RATE * (time.monotonic() - t0):
                    op = operators[applied[0] % len(operators)]
                    await send(p, enr_topic(t, op), enr(f"N{applied[0]:07d}", op))
                    applied[0] += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(applications())
        try:
            t0, sent = time.monotonic(), set[str]()
            while (elapsed := time.monotonic() - t0) < SEND_SECONDS:
                while len(sent) < TXN_RATE[runtime] * elapsed:
                    rec = txn(mykey=people[len(sent) % ENROLLED])
                    await send(p, txn_topic(t), rec)
                    sent.add(str(rec["txn_id"]))
                await asyncio.sleep(0.01)
            await p.flush()
            ended = time.monotonic()
            decided: set[str] = set()
            while time.monotonic() - ended < DEADLINE:  # applications go on meanwhile
                # outcome messages (those of applications too) first: a cheap count
                if await asyncio.to_thread(output_end, bootstrap, prefix) >= len(sent):
                    grants, rejections = await collect(bootstrap, t, idle_timeout=2.0)
                    decided = {x for table in (grants, rejections)
                               for x in table.column("txn_id").to_pylist()} & sent
                    if decided == sent:
                        break
                await asyncio.sleep(0.5)
            waited = time.monotonic() - ended
            if decided != sent:  # how far it got, for the message
                grants, rejections = await collect(bootstrap, t, idle_timeout=2.0)
                decided = {x for table in (grants, rejections)
                           for x in table.column("txn_id").to_pylist()} & sent
            return sent, applied[0], waited, decided
        finally:
            stop.set()
            await task
            await p.stop()

    asyncio.run(enroll_first())
    w = worker(bootstrap, prefix, tmp_path, runtime=runtime).start()
    try:
        sent, applied, waited, decided = asyncio.run(load())
    finally:
        w.stop()
    assert applied > ENR_RATE * SEND_SECONDS * 0.8  # applications kept arriving
    assert decided == sent, (f"{len(decided)} of {len(sent)} transactions decided "
                             f"{waited:.1f} s after the last was sent, {applied} "
                             "applications meanwhile")
