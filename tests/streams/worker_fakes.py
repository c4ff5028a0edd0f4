"""A worker and a consumer without a broker, for the worker's unit tests: what the
pausing, the batch's ends, the quiet-input look and the top-up read ask of a consumer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka.topics import Topics
from engine.streams.worker import Worker


class FakeConsumer:
    """The assignment, positions and pauses set by the test; the broker's ends
    (``end_offsets``, each look recorded in ``looked``); and what the fetches told
    (``told``: tp -> (high watermark, when, in ms), as aiokafka keeps them)."""

    def __init__(self, tps: Iterable[TopicPartition] = ()) -> None:
        self.tps = set(tps)
        self.positions = dict.fromkeys(self.tps, 0)
        self.ends = dict(self.positions)
        self.told: dict[TopicPartition, tuple[int, float]] = {}
        self.paused_tps: set[TopicPartition] = set()
        self.looked: list[set[TopicPartition]] = []
        self.answers: list[dict[TopicPartition, list[Any]]] = []  # what reads return, in turn
        self.reads: list[tuple[int, int | None]] = []  # each read's (timeout_ms, max_records)

    def assignment(self) -> set[TopicPartition]:
        return self.tps

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_tps)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_tps.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_tps.difference_update(tps)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.told[tp][0] if tp in self.told else None

    def last_poll_timestamp(self, tp: TopicPartition) -> float | None:
        return self.told[tp][1] if tp in self.told else None

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None
                      ) -> dict[TopicPartition, list[Any]]:
        self.reads.append((timeout_ms, max_records))
        return self.answers.pop(0) if self.answers else {}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.looked.append(set(tps))
        return {tp: self.ends[tp] for tp in tps}


def unit_worker(tmp: Path, partitions: Iterable[int] = (0,),
                **kwargs: Any) -> tuple[Worker, FakeConsumer]:
    """A worker of topics ``t`` (group ``g``) on ``partitions`` of a fake consumer."""
    w = Worker("127.0.0.1:1", Topics("t", "g"), DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, tmp,
               **kwargs)
    c = FakeConsumer(tp for p in partitions for tp in w._tps(p))
    w.consumer = c  # type: ignore[assignment]
    return w, c
