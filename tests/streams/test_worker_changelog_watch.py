"""The worker's watch over its changelog partitions (DECISIONS 139) without a broker:
when it looks, and what a broker away leaves for the next look. What it writes is
tested on the real broker (tests/streams/test_recovery.py, test_faults.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from engine.streams import recovery
from tests.streams.worker_fakes import unit_worker


class _Watcher:
    """The watch's consumer: the changelog's end offsets, or a broker error."""

    def __init__(self, end: int) -> None:
        self.end: int | None = end

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        if self.end is None:
            raise KafkaConnectionError("broker away")
        return {tp: self.end for tp in tps}


def _owner(changelog_offset: int) -> Any:
    return SimpleNamespace(meta=SimpleNamespace(changelog_offset=changelog_offset),
                           store=SimpleNamespace(fenced_off=set()))


def test_the_last_look_before_a_rebalance_is_at_the_changelog(tmp_path: Path) -> None:
    """Under the aiokafka runtime a rebalance commits what is open, then looks at the
    changelog once more while this worker still owns the partitions."""
    w, _ = unit_worker(tmp_path)
    calls: list[str] = []

    async def commit_open() -> None:
        calls.append("commit")

    async def watch() -> None:
        calls.append("watch")

    w._commit_open = commit_open  # type: ignore[method-assign]
    w._watch_changelog = watch  # type: ignore[method-assign]
    asyncio.run(w.commit_before_revoke())
    assert calls == ["commit", "watch"]


def test_a_broker_away_leaves_the_gaps_for_the_next_look(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records of another writer between this owner's writes (offsets 3-4) and after
    its last one (10-11): a broker error while they are read or written again fails
    no batch and loses neither; the next look writes them again, each range once."""
    w, _ = unit_worker(tmp_path)
    w.logics[0] = _owner(9)
    w.producer = object()  # type: ignore[assignment]
    watcher = _Watcher(12)
    w._watcher = watcher  # type: ignore[assignment]
    w._changelog_gaps[0] = [(3, 4)]
    given: list[list[tuple[int, int]]] = []

    async def broker_away(*args: Any) -> Any:
        given.append(args[-1])
        raise KafkaConnectionError("broker away")

    monkeypatch.setattr(recovery, "write_again", broker_away)
    asyncio.run(w._watch_changelog())
    assert w._changelog_gaps == {0: [(3, 4)]}
    watcher.end = None  # the end offsets cannot be asked for: nothing is lost either
    asyncio.run(w._watch_changelog())
    assert w._changelog_gaps == {0: [(3, 4)]}

    async def written(*args: Any) -> tuple[int, list[tuple[int, int]]]:
        given.append(args[-1])
        return 2, []

    watcher.end = 12
    monkeypatch.setattr(recovery, "write_again", written)
    asyncio.run(w._watch_changelog())
    assert given == [[(3, 4), (10, 11)], [(3, 4), (10, 11)]]
    assert w._changelog_gaps == {}
