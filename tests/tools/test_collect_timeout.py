"""``collect --timeout`` does what its help says: with --expect it gives up after that
many seconds without a message; without --expect it stops at the end and never waits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from engine.devtools import broker as devbroker
from engine.kafka.topics import Topics, ensure_topics
from engine.tools.collect import collect


def timed(bootstrap: str, topics: Topics, expect: int, idle: float) -> tuple[float, Any]:
    stats: dict[str, Any] = {}
    t0 = time.monotonic()
    asyncio.run(collect(bootstrap, topics, expect=expect, idle_timeout=idle, stats=stats))
    return time.monotonic() - t0, stats


def test_timeout_is_idle_time_with_expect_and_unused_without(
        kafka_broker: devbroker.Broker, topic_prefix: str) -> None:
    topics = Topics(prefix=topic_prefix)
    asyncio.run(ensure_topics(kafka_broker.bootstrap, topics, 2))
    # nothing expected: stops at the (empty) end at once, however long --timeout is
    took, stats = timed(kafka_broker.bootstrap, topics, expect=0, idle=60.0)
    assert took < 15 and stats["reached_end"]
    # an outcome expected that never comes: waits the idle time, then gives up
    took, stats = timed(kafka_broker.bootstrap, topics, expect=1, idle=3.0)
    assert 3.0 <= took < 15 and not stats["reached_end"]
