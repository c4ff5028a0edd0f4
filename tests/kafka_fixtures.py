"""Pytest plugin: a real local Kafka broker for the test session.

Enabled from tests/conftest.py with ``pytest_plugins = ["tests.kafka_fixtures"]``.

- ``kafka_broker`` (session): a broker on a free loopback port, data in
  ``.kafka/test-<port>``; stopped and deleted at the end of the session. If it cannot
  start, the tests using it fail (never skip): a missing broker is a broken setup.
  The broker is secured (SASL/SCRAM, ACLs); the fixture points
  ``$MYNAPOINT_CLIENT_CONFIG`` at the admin credentials for the session, and
  ``kafka_broker.credentials(principal)`` / ``.client(principal)`` give any
  principal's file / aiokafka arguments.
- ``own_broker`` (function): a broker of the test's own, restartable on its port, for
  a test that kills it; ``own_cluster`` (function): three such brokers in one cluster.
- ``topic_prefix`` (function): a fresh prefix such as ``t1a2b3c4d`` for each test, so
  tests never share topics or consumer groups. It is a ``str``; calling it returns a
  further fresh prefix, for a test that needs several independent pipelines.

Tests that use ``kafka_broker``, ``own_broker`` or ``own_cluster`` are marked ``kafka``
automatically, so ``pytest -m "not kafka"`` runs without Java.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.devtools import broker as devbroker
from engine.devtools import security
from engine.kafka.client_config import ENV
from engine.kafka.produce import Outgoing


class TopicPrefix(str):
    __slots__ = ()

    def __call__(self) -> str:
        return new_prefix()


def new_prefix() -> str:
    # Starts with a letter: topic and group names are also used as file names.
    return f"t{uuid.uuid4().hex[:8]}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kafka: needs a real local Kafka broker (Java; jars fetched by Maven)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if {"kafka_broker", "own_broker", "own_cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


def session_broker_dir(port: int) -> str:
    """The session broker's data directory under ``.kafka/``: named by the pytest-xdist
    process too (DECISIONS 136), so that two processes of one run never share, nor
    delete, each other's broker data, even if both were handed the same free port."""
    return f"test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{port}"


@pytest.fixture(scope="session")
def kafka_broker(request: pytest.FixtureRequest) -> Iterator[devbroker.Broker]:
    port = devbroker.free_port()
    data_dir = request.config.rootpath / ".kafka" / session_broker_dir(port)
    # A leftover from a crashed run on a recycled port would carry old topics.
    shutil.rmtree(data_dir, ignore_errors=True)
    broker = devbroker.start(port=port, data_dir=data_dir, wait=120.0)
    # The broker is secured (SCRAM, ACLs): the suite's own clients and every command it
    # runs, in process or as a subprocess, authenticate as admin unless a test says
    # otherwise (engine.kafka.client_config.ENV).
    try:
        with client_config_of(broker.credentials(security.ADMIN)):
            yield broker
    finally:
        # its data is deleted next: a clean shutdown, which for the thousands of
        # partitions a session leaves ran into its 30 s timeout, would keep nothing
        running = devbroker.status(port=port, data_dir=data_dir)
        if running is not None:
            running.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[devbroker.Broker]:
    """A broker for this test alone, on a port it can be restarted on: the test kills
    it. Its clients authenticate as its admin for the test."""
    data = tmp_path / "broker"
    broker = devbroker.start(port=devbroker.restartable_port(), data_dir=data, wait=120.0)
    try:
        with client_config_of(broker.credentials()):
            yield broker
    finally:
        devbroker.stop(port=broker.port, data_dir=data)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[devbroker.Cluster]:
    """Three brokers of this test's own (one KRaft cluster, RF 3, min ISR 2), on ports
    they can be restarted on: the test kills one. Its clients authenticate as its admin
    for the test."""
    c = devbroker.start_cluster(3, port=devbroker.restartable_port(3), root=tmp_path / "cluster",
                                wait=120.0)
    try:
        with client_config_of(c.credentials()):
            yield c
    finally:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)


@contextlib.contextmanager
def client_config_of(path: Path) -> Iterator[None]:
    """Make ``path`` the default client properties (``$MYNAPOINT_CLIENT_CONFIG``) for
    a block: a test with a secured broker of its own."""
    previous = os.environ.get(ENV)
    os.environ[ENV] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous


@pytest.fixture
def topic_prefix() -> TopicPrefix:
    return TopicPrefix(new_prefix())


async def read_topic(bootstrap: str, topic: str, partitions: int) -> list[Any]:
    """Every message of ``topic`` (as admin, from the beginning to the current end), in
    (partition, offset) order."""
    return await read_topics(bootstrap, [topic], partitions)


async def read_topics(bootstrap: str, topics: list[str], partitions: int) -> list[Any]:
    """Every message of ``topics`` (as admin, from the beginning to the current end),
    in (topic, partition, offset) order: one consumer for all of them."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from engine.kafka.client_config import default_client

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            batch = await consumer.getmany(timeout_ms=500)
            for msgs in batch.values():
                out.extend(msgs)
        return sorted(out, key=lambda m: (m.topic, m.partition, m.offset))
    finally:
        await consumer.stop()


async def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    """``topic`` made with ``partitions`` (one replica), as admin."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from engine.kafka.client_config import default_client

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce(bootstrap: str, messages: Iterable[tuple[str, Outgoing]]) -> None:
    """Send each ``(topic, message)`` as admin and wait for its acknowledgement, in
    order: the tests' producer, where a test needs messages the engine did not write."""
    from aiokafka import AIOKafkaProducer

    from engine.kafka.client_config import default_client

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(), acks="all")
    await p.start()
    try:
        for topic, m in messages:
            await p.send_and_wait(topic, m.value, key=m.key, partition=m.partition,
                                  timestamp_ms=m.timestamp_ms, headers=m.headers or None)
    finally:
        await p.stop()


async def produce_one(bootstrap: str, topic: str, client: dict[str, Any]) -> None:
    """One record as the principal of ``client``; a refusal raises (ACL, TLS tests)."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **client)
    try:  # a refused start too: a producer left unclosed is reported when collected,
        # in whatever later test's output that happens
        await asyncio.wait_for(p.start(), 40)
        await asyncio.wait_for(p.send_and_wait(topic, b"{}", key=b"AB12cd34"), 30)
    finally:
        await p.stop()


@contextlib.asynccontextmanager
async def one_partition_clients(bootstrap: str, tp: Any, fetch_max_wait_ms: int = 20
                                ) -> AsyncIterator[tuple[Any, Any]]:
    """``tp``'s topic made with one partition; a producer (acks=all) and a consumer
    assigned ``tp`` from its start (no group), as admin: for tests of what the client
    itself does (a read, a fetch)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from engine.kafka.client_config import default_client

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(tp.topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(), acks="all")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=fetch_max_wait_ms)
    await producer.start()
    await consumer.start()
    try:
        consumer.assign([tp])
        yield producer, consumer
    finally:
        await consumer.stop()
        await producer.stop()
