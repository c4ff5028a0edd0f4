"""``engine.kafka.topics.retrying``: which admin failures are tried again. The
cluster case it exists for (a killed node still in the metadata) runs on real
brokers in ``tests/devtools/test_cluster.py``. ``delete_topics`` on the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaError,
    NodeNotReadyError,
    TopicAuthorizationFailedError,
    UnknownTopicOrPartitionError,
)

from engine.devtools.broker import free_port
from engine.kafka.client_config import default_client
from engine.kafka.topics import delete_topics, retrying, topic_partitions


def _failing(errors: list[KafkaError]) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    """An attempt that raises ``errors`` in turn, then answers "ok"; and its call count."""
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "ok"
    return calls, attempt


def test_retriable_errors_are_tried_again_until_an_answer() -> None:
    calls, attempt = _failing([NodeNotReadyError("node 2"), NodeNotReadyError("node 3")])
    assert asyncio.run(retrying(attempt, within=5.0, first_pause=0.01)) == "ok"
    assert len(calls) == 3


@pytest.mark.parametrize("error", [TopicAuthorizationFailedError("denied"),
                                   UnknownTopicOrPartitionError("gone")])
def test_an_error_that_retrying_cannot_mend_is_raised_at_once(error: KafkaError) -> None:
    assert error.retriable is (type(error) is UnknownTopicOrPartitionError)
    calls, attempt = _failing([error])
    also = (lambda e: False) if error.retriable else (lambda e: True)
    with pytest.raises(type(error)):
        asyncio.run(retrying(attempt, within=5.0, first_pause=0.01, also=also))
    assert len(calls) == 1


def test_retrying_gives_up_after_its_time_with_the_last_error() -> None:
    calls, attempt = _failing([NodeNotReadyError(f"try {i}") for i in range(1000)])
    t0 = time.monotonic()
    with pytest.raises(NodeNotReadyError, match="try"):
        asyncio.run(retrying(attempt, within=0.5, first_pause=0.05))
    assert 0.3 < time.monotonic() - t0 < 1.5
    assert 3 <= len(calls) < 10


def test_a_bootstrap_nobody_answers_is_not_retried() -> None:
    """``collect``, ``status`` and the sink report an unreachable broker at once, not
    after the retry time."""
    t0 = time.monotonic()
    with pytest.raises(KafkaError):
        asyncio.run(topic_partitions(f"127.0.0.1:{free_port()}", ["x"]))  # nobody listens
    assert time.monotonic() - t0 < 5.0


def test_delete_topics_takes_the_named_and_the_prefixed_and_never_the_brokers_own(
        kafka_broker: Any, topic_prefix: Any) -> None:
    mine = [f"{topic_prefix}.a", f"{topic_prefix}.b"]
    named, other = f"{topic_prefix()}.named", f"{topic_prefix()}.other"

    async def go() -> tuple[list[str], dict[str, int]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap,
                                    **default_client())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, 1, 1) for t in [*mine, named, other]])
        finally:
            await admin.close()
        gone = await delete_topics(kafka_broker.bootstrap, [named, "__consumer_offsets"],
                                   prefix=topic_prefix)
        for _ in range(50):  # deletion is asynchronous on the broker
            left = await topic_partitions(kafka_broker.bootstrap, [*mine, named, other])
            if len(left) == 1:
                break
            await asyncio.sleep(0.1)
        return gone, left

    gone, left = asyncio.run(go())
    assert gone == sorted([*mine, named])  # not the broker's own, though named
    assert set(left) == {other}
