"""The merge of a partition's enrollment topics (engine.streams.order): however the
records happen to be fetched, the decision order is the one of the whole input."""

from __future__ import annotations

from collections import namedtuple

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.streams.order import fair_prefixes, merge_topics

M = namedtuple("M", "topic offset timestamp")


def reference(seqs: dict[str, list[M]]) -> list[M]:
    """Head with the smallest (timestamp, topic) first, each topic in its own order."""
    pos = dict.fromkeys(seqs, 0)
    out: list[M] = []
    while True:
        heads = [(max(s[pos[t]].timestamp, -1), t) for t, s in seqs.items() if pos[t] < len(s)]
        if not heads:
            return out
        _, t = min(heads)
        out.append(seqs[t][pos[t]])
        pos[t] += 1


stamps = st.one_of(st.integers(0, 20), st.just(-1))
inputs = st.dictionaries(st.sampled_from(["m.a.enrollments", "m.b.enrollments",
                                          "m.c.enrollments"]),
                         st.lists(stamps, max_size=12), min_size=1)


@settings(max_examples=300, deadline=None)
@given(inputs, st.data())
def test_any_fetch_pattern_gives_the_order_of_the_whole_input(raw: dict[str, list[int]],
                                                              data: st.DataObject) -> None:
    seqs = {t: [M(t, i, ts) for i, ts in enumerate(v)] for t, v in raw.items()}
    read = dict.fromkeys(seqs, 0)
    held: dict[str, list[M]] = {}
    decided: list[M] = []
    for _ in range(200):
        fetched = {t: list(held.get(t, [])) for t in seqs}
        for t, s in seqs.items():
            if t in held:  # a held topic is paused: nothing new is fetched for it
                continue
            left = len(s) - read[t]
            k = data.draw(st.integers(min(1, left), left))  # a resumed topic gets a fetch
            fetched[t] += s[read[t]:read[t] + k]
            read[t] += k
        unread = {t for t, s in seqs.items() if read[t] < len(s)}
        released, held = merge_topics({t: m for t, m in fetched.items() if m}, unread)
        decided += released
        if not unread and not held:
            break
    assert decided == reference(seqs)


def test_a_topic_with_unread_records_and_nothing_fetched_holds_everything_back() -> None:
    a = [M("a", 0, 5)]
    released, held = merge_topics({"a": a}, {"b"})
    assert released == [] and held == {"a": a}


def water_level(totals: list[int], budget: int) -> int:
    """The reference share: the largest level L with sum(min(total, L)) <= budget."""
    lo, hi = 0, max(totals, default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(t, mid) for t in totals) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def prefix_within(sizes: list[int], limit: int) -> int:
    n = used = 0
    for size in sizes:
        if used + size > limit:
            break
        used, n = used + size, n + 1
    return n


sizes = st.dictionaries(st.integers(0, 6), st.lists(st.integers(1, 400), max_size=15),
                        min_size=1)


@settings(max_examples=500, deadline=None)
@given(sizes, st.integers(1, 3000))
def test_fair_prefixes_bound_a_batch_and_starve_no_topic(raw: dict[int, list[int]],
                                                         budget: int) -> None:
    take = fair_prefixes(raw, budget)
    assert set(take) == set(raw)
    for k, v in raw.items():
        assert (1 if v else 0) <= take[k] <= len(v)  # every topic advances
    taken = sum(sum(v[:take[k]]) for k, v in raw.items())
    total = sum(sum(v) for v in raw.values())
    if total <= budget:
        assert all(take[k] == len(v) for k, v in raw.items())
    # beyond the budget only by the one message each topic is always given
    assert taken <= budget + sum(v[0] for v in raw.values() if v)
    if all(v[0] * len(raw) <= budget for v in raw.values() if v):
        # max-min fair: nobody gets less than the water level of the reference allows
        level = water_level([sum(v) for v in raw.values()], budget)
        for k, v in raw.items():
            assert take[k] >= prefix_within(v, min(sum(v), level)), (k, level)
