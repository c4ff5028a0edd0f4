"""A small decide call's short paths (DECISIONS 121) decide exactly as the general ones:
the same outcomes, grant messages and stored state, with the people looked up one
record at a time or coded first, and the ids taken from the batch's column or from the
whole call's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from engine.streams import shard
from tests import builders
from tests.streams.feed import T0, Feed, H, reasons, txn

PEOPLE = [f"Smal{i:04d}" for i in range(12)]


def _polls() -> list[tuple[str, list[dict[str, Any]]]]:
    """Enrollments for most people, then transactions that repeat people inside a poll
    (first appearance is not code order), wait for an enrollment, and release waits."""
    enr = [{"rec": builders.enr(mykey=p), "ts": T0} for p in PEOPLE[:9]]
    polls: list[tuple[str, list[dict[str, Any]]]] = [("enrollment", enr)]
    for k in range(6):
        people = [PEOPLE[(k * 5 + j * 7) % len(PEOPLE)] for j in range(9)]
        polls.append(("transaction", [txn(f"t{k}-{j}", T0 + k * H + j, person=p,
                                          amount=1000 + 100 * j)
                                      for j, p in enumerate(people)]))
    polls.append(("enrollment", [{"rec": builders.enr(mykey=p), "ts": T0 + 7 * H}
                                 for p in PEOPLE[9:]]))
    polls.append(("transaction", [txn("late", T0 + 8 * H, person=PEOPLE[10])]))
    return polls


def _run(tmp: Path) -> tuple[list[dict[str, str]], list[list[bytes]], dict[str, bytes]]:
    f = Feed(tmp)
    outcomes, grants = [], []
    for rtype, items in _polls():
        res = f.poll(rtype, items)
        outcomes.append(reasons(res))
        grants.append(res.grant_messages.values.to_pylist() if len(res.grant_messages)
                      else [])
    stored = {p: f.stored(p) for p in PEOPLE}
    f.store.close()
    return outcomes, grants, stored


def test_short_and_general_paths_decide_alike(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(shard, "SMALL_ROWS", 0)  # every batch coded first
        m.setattr(shard._Call, "ids",  # every id gathered from the whole call's column
                  lambda call, name, at: call.column(name).take(pa.array(at)))
        general = _run(tmp_path / "general")
    monkeypatch.setattr(shard, "SMALL_ROWS", 1 << 30)  # every batch looked up per record
    short = _run(tmp_path / "short")
    assert short == general
    outcomes = general[0]
    # the polls reach both id paths: records that wait (ids from the whole column) and
    # grants of calls without waiting records (ids from the batch's column)
    assert any("granted" in o.values() for o in outcomes)
    assert any(len(o) < 9 for o in outcomes[1:7])  # some transactions waited
