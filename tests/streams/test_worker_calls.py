"""A poll's partitions go to the settlement logic in few calls (worker._calls,
DECISIONS 130): a live poll's few records a partition in one call, a drain's large
partitions apart, so that the event loop runs between them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.streams.worker import CALL_RECORDS, _calls


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
