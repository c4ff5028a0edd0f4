"""Messages the consumer went past are held, not dropped, while their partition is
still this worker's but not decided on (DECISIONS 151): before its take-over, and
when it is taken over again after a failed commit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.streams.worker_fakes import unit_worker


@dataclass
class Msg:
    offset: int
    value: bytes = b"{}"


def _logic(path: Path) -> Any:
    """What letting go of a partition touches of its logic: the store's files."""
    path.mkdir()
    return SimpleNamespace(store=SimpleNamespace(path=path, close=lambda: None))


def test_messages_of_a_partition_not_yet_taken_over_wait_for_it(tmp_path: Path) -> None:
    """Under Faust a member's first assignment delivers records before the callback
    that starts the take-over: they are held, their topic paused, and come first in
    the batch after the take-over."""
    w, c = unit_worker(tmp_path, partitions=(0, 1))
    (tp0, *_), (tp1, *_) = w._transaction_tps(0), w._transaction_tps(1)
    w.logics = {1: None}  # type: ignore[dict-item]  # only the partition's number is read
    batch = w._budget({tp0: [Msg(5), Msg(6)], tp1: [Msg(9)]})
    assert batch == {tp1: [Msg(9)]}
    assert w._held == {tp0: [Msg(5), Msg(6)]}
    assert tp0 in c.paused_tps
    assert w._budget({}) == {}  # still taking over: still held
    assert w._held == {tp0: [Msg(5), Msg(6)]}
    w.logics[0] = None  # type: ignore[assignment]  # taken over
    batch = w._budget({tp0: [Msg(7)]})
    assert [m.offset for m in batch[tp0]] == [5, 6, 7]
    assert w._held == {}


def test_messages_of_a_partition_given_up_or_refused_go(tmp_path: Path) -> None:
    """Its next owner, or the restart, reads them from the commit."""
    w, c = unit_worker(tmp_path, partitions=(0, 1))
    (tp0, *_), (tp1, *_) = w._transaction_tps(0), w._transaction_tps(1)
    c.tps -= set(w._tps(0))  # revoked
    w.refused[1] = "input deleted unread"
    assert w._budget({tp0: [Msg(1)], tp1: [Msg(2)]}) == {}
    assert w._held == {}


@pytest.mark.parametrize("take_over_again", [True, False])
def test_a_failed_commit_keeps_what_waits_for_a_partition_taken_over_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, take_over_again: bool) -> None:
    """Taken over again at once (a commit failed, the group did not move on), a
    partition keeps its held messages, which its consumer went past. When the group
    moved on, or the partition is no longer assigned, they go: the rejoin, or the next
    owner, reads them from the commit."""
    w, c = unit_worker(tmp_path, partitions=(0, 1))
    (tp0, *_), (tp1, *_) = w._transaction_tps(0), w._transaction_tps(1)
    taken: list[set[int]] = []
    monkeypatch.setattr(w, "assign_partitions", taken.append)
    w.logics = {0: _logic(tmp_path / "p0"), 1: _logic(tmp_path / "p1")}
    w._held = {tp0: [Msg(3), Msg(4)], tp1: [Msg(8)]}
    c.tps -= set(w._tps(1))  # partition 1 went elsewhere meanwhile
    w._drop_local_state({0, 1}, take_over_again=take_over_again)
    assert w.logics == {}
    assert not (tmp_path / "p0").exists()  # restored from the changelog instead
    if take_over_again:
        assert taken == [{0}]
        assert w._held == {tp0: [Msg(3), Msg(4)]}
    else:
        assert taken == []
        assert w._held == {}
        assert set(w._tps(0)) <= c.paused_tps
