"""A worker's batch is bounded in bytes, not only in messages (engine.streams.worker)."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from engine.streams import worker as worker_mod
from engine.streams.worker import Worker

Msg = namedtuple("Msg", "offset value")


class _Seeks:
    def __init__(self) -> None:
        self.to: dict[TopicPartition, int] = {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.to[tp] = offset


def _bounded(data: dict[Any, list[Any]]) -> tuple[dict[Any, list[Any]], dict[Any, int]]:
    seeks = _Seeks()
    out = Worker._bounded(SimpleNamespace(consumer=seeks), data)  # type: ignore[arg-type]
    return out, seeks.to


def test_a_poll_beyond_the_budget_is_cut_and_the_rest_sought_back(monkeypatch) -> None:
    monkeypatch.setattr(worker_mod, "MAX_BATCH_BYTES", 1000)
    a, b, c = (TopicPartition("t", p) for p in range(3))
    data = {a: [Msg(o, b"x" * 300) for o in range(10, 13)],   # 900 bytes: all kept
            b: [Msg(o, b"x" * 300) for o in range(50, 53)],   # crosses the budget
            c: [Msg(7, b"x" * 10)]}                           # past it: none kept
    out, seeks = _bounded(data)
    assert [m.offset for m in out[a]] == [10, 11, 12]
    assert [m.offset for m in out[b]] == [50]
    assert c not in out
    assert seeks == {b: 51, c: 7}
    # nothing is lost or doubled: what is kept plus what is sought back is the poll
    for tp, msgs in data.items():
        kept = [m.offset for m in out.get(tp, [])]
        assert kept + [m.offset for m in msgs if m.offset >= seeks.get(tp, 1 << 62)] == \
            [m.offset for m in msgs]


def test_one_message_larger_than_the_budget_still_makes_a_batch(monkeypatch) -> None:
    monkeypatch.setattr(worker_mod, "MAX_BATCH_BYTES", 100)
    tp = TopicPartition("t", 0)
    out, seeks = _bounded({tp: [Msg(3, b"x" * 500), Msg(4, b"x")]})
    assert [m.offset for m in out[tp]] == [3] and seeks == {tp: 4}
