"""When a partition's enrollments count as a backlog, so that its transactions are
not fetched (Worker._prioritise_enrollments, DECISIONS 126): below where they ended
in Kafka at the last backlog look, a look ago; a steady flow is not a backlog."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from engine.streams.worker import BACKLOG_LOOK_SECONDS
from tests.streams.worker_fakes import unit_worker


def test_enrollments_are_a_backlog_only_below_where_they_ended_a_look_ago(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w, c = unit_worker(tmp_path)
    enrollments, = w._enrollment_tps(0)
    transactions, = w._transaction_tps(0)
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
    assert len(c.looked) == 1
    assert step(0.1, read_to=400, end=1_000)        # a backlog: still below the look
    assert not step(0.1, read_to=1_000, end=1_000)  # read to where it ended
    # a steady flow: always something unread, never a backlog, the look not
    # repeated before BACKLOG_LOOK_SECONDS
    assert not step(0.3, read_to=1_100, end=1_150)
    assert not step(0.3, read_to=1_200, end=1_250)
    assert len(c.looked) == 1
    # the next look (1,400) is compared from the step after it: a flow that keeps up
    # passes it, one that stalls below it is a backlog again
    assert not step(BACKLOG_LOOK_SECONDS, read_to=1_300, end=1_400)
    assert len(c.looked) == 2
    assert not step(0.2, read_to=1_450, end=1_500)
    assert not step(BACKLOG_LOOK_SECONDS, read_to=1_460, end=1_600)  # looks: 1,600
    assert len(c.looked) == 3
    assert step(0.2, read_to=1_500, end=1_650)      # stalled below it
    assert not step(0.2, read_to=1_600, end=1_700)  # caught up
