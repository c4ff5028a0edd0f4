"""A poll's partitions go to the settlement logic in few calls (worker._calls,
DECISIONS 130): a live poll's few records a partition in one call, a drain's large
partitions apart, so that the event loop runs between them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.streams import worker as worker_module
from engine.streams.shard import ShardResult
from engine.streams.worker import CALL_RECORDS, _calls
from tests.streams.worker_fakes import unit_worker


def test_a_live_poll_is_one_call() -> None:
    records = {p: 25 for p in range(8)}
    assert _calls(list(range(8)), records) == [list(range(8))]


def test_a_drain_poll_is_cut_and_a_large_partition_is_a_call_of_its_own() -> None:
    big = CALL_RECORDS + 1
    records = {0: 100, 1: big, 2: CALL_RECORDS // 2, 3: CALL_RECORDS // 2, 4: 1}
    assert _calls([0, 1, 2, 3, 4], records) == [[0], [1], [2, 3], [4]]


@given(st.lists(st.integers(0, 2 * CALL_RECORDS), max_size=12))
def test_calls_keep_the_order_and_fill_each_call_as_far_as_the_next_partition_allows(
        sizes: list[int]) -> None:
    parts = list(range(len(sizes)))
    calls = _calls(parts, dict(enumerate(sizes)))
    assert [p for c in calls for p in c] == parts
    for i, c in enumerate(calls):
        total = sum(sizes[p] for p in c)
        assert len(c) == 1 or total <= CALL_RECORDS
        if i + 1 < len(calls):  # the next call's first partition did not fit
            assert total + sizes[calls[i + 1][0]] > CALL_RECORDS


def test_the_event_loop_runs_between_a_polls_calls(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats and fetches are tasks of the same event loop: a poll cut into two
    calls lets another task run between them (and one call's partitions get one
    result each)."""
    w, _ = unit_worker(tmp_path, partitions=(0, 1, 2))
    w.logics = dict.fromkeys((0, 1, 2))  # type: ignore[assignment]  # the fake ignores them
    w._followed = dict.fromkeys((0, 1, 2), frozenset())
    events: list[str] = []

    def fake_decide(work: list[Any]) -> list[ShardResult]:
        events.append(f"call of {len(work)}")
        return [ShardResult() for _ in work]

    monkeypatch.setattr(worker_module, "CALL_RECORDS", 6)
    monkeypatch.setattr(worker_module, "decide_together", fake_decide)
    batch = SimpleNamespace(v=SimpleNamespace(n=3))

    async def other_task() -> None:
        events.append("other task")

    async def poll() -> dict[int, ShardResult]:
        other = asyncio.create_task(other_task())
        results = await w._decide([0, 1, 2], {0: batch}, {1: batch, 2: batch})  # type: ignore[dict-item]
        await other
        return results

    results = asyncio.run(poll())
    assert sorted(results) == [0, 1, 2]
    # 3 + 3 records fit in 6, the third partition's do not: two calls
    assert events == ["call of 2", "other task", "call of 1"]
