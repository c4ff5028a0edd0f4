"""bench.sweep_cost: the costing of DECISIONS 141 against a commit-by-commit model."""

from __future__ import annotations

import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from bench.sweep_cost import cost


def walk(people: int, size: int, touched: int, pace: float, min_slice: int,
         commits: int) -> tuple[float, list[float], list[int]]:
    """The sweep played one commit at a time: where each generation starts, and what a
    restore after each commit reads from the newest complete one."""
    touch = touched * size
    per_slice = max(1, int(max(pace * touch, min_slice)) // size)
    cursor = written = 0
    gen_start = complete = None
    reads, counts = [], []
    for records in range(1, commits + 1):  # records written once this commit is
        if cursor == 0:
            gen_start = (written, records - 1)
        written += touch + per_slice * size
        cursor += per_slice
        if cursor >= people:
            cursor, complete = 0, gen_start
        if complete is not None:
            reads.append((written - complete[0]) / (people * size))
            counts.append(records - complete[1])
    return (touch + per_slice * size) / touch, reads, counts


@settings(max_examples=200, deadline=None)
@given(people=st.integers(1, 500), size=st.integers(1, 300), touched=st.integers(1, 50),
       pace=st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_slice=st.integers(1, 5_000),
       commits=st.integers(1, 400))
def test_the_costing_agrees_with_the_sweep_played_commit_by_commit(
        people: int, size: int, touched: int, pace: float, min_slice: int,
        commits: int) -> None:
    factor, reads, counts = walk(people, size, touched, pace, min_slice, commits)
    if not reads:  # no generation completes in so few commits: nothing to cost
        return
    got = cost(people, size, touched, pace, min_slice, commits)
    assert got.write_factor == factor
    assert got.read_max == max(reads)
    assert got.records_max == max(counts)
    assert got.read_median == statistics.median(reads)
    assert got.records_median == int(statistics.median(counts))


def test_a_quiet_partition_pays_for_the_smallest_slice() -> None:
    # one person of 281 B a commit, slices of at least 64 KiB: 233 people swept a commit
    c = cost(1_000_000, 281, 1, 1.0, 64 << 10, 40_000)
    assert c.write_factor == (281 + 233 * 281) / 281
    assert 1.0 < c.read_median < c.read_max <= 2.01
