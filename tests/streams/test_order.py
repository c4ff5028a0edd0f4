"""The merge of a partition's enrollment topics (engine.streams.order): however the
records happen to be fetched, the decision order is the one of the whole input."""

from __future__ import annotations

from collections import namedtuple

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.streams.order import MergeViews, fair_prefixes, merge_topics

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


TOPICS = ["m.a.enrollments", "m.b.enrollments", "m.c.enrollments"]


def run_with_views(appends: list[list[tuple[str, int]]], data: st.DataObject
                   ) -> tuple[list[M], int]:
    """The worker's merge (MergeViews) over a live input: at each step the records of
    ``appends[step]`` (topic, timestamp) are appended, every topic fetches some of its
    records not yet fetched (held topics too: they are not paused), and the merge
    takes a view (each topic's fetched count and end now). Then steps go on, every
    fetch reading its topic to the end, until everything is decided. Returns
    (decided, views kept at the end)."""
    log: dict[str, list[M]] = {t: [] for t in TOPICS}
    read = dict.fromkeys(TOPICS, 0)
    views, held = MergeViews(), dict[str, list[M]]()
    decided: list[M] = []
    for step in range(len(appends) + 3):
        for t, ts in appends[step] if step < len(appends) else []:
            log[t].append(M(t, len(log[t]), ts))
        fetched = {t: list(held.get(t, [])) for t in TOPICS}
        for t in TOPICS:
            left = len(log[t]) - read[t]
            # once nothing more comes, every fetch reads a topic to its end
            k = data.draw(st.integers(0, left)) if step < len(appends) else left
            fetched[t] += log[t][read[t]:read[t] + k]
            read[t] += k
        released, held = views.merge({t: m for t, m in fetched.items() if m}, read,
                                     {t: len(m) for t, m in log.items()})
        decided += released
        if step >= len(appends) and not held and all(read[t] == len(log[t]) for t in TOPICS):
            break
    return decided, len(views)


appends_ = st.lists(st.lists(st.tuples(st.sampled_from(TOPICS), stamps), max_size=4),
                    max_size=12)


@settings(max_examples=300, deadline=None)
@given(appends_, st.data())
def test_views_under_a_steady_flow_give_the_order_of_the_whole_input(
        appends: list[list[tuple[str, int]]], data: st.DataObject) -> None:
    """Records appended over time with timestamps in the order they were appended (a
    live input whose clocks agree): however the fetches interleave with the appends,
    the merge against views decides in the order of the whole input, everything gets
    decided, and no view outlives the messages that need it."""
    stamped = [[(t, 0) for t, _ in batch] for batch in appends]
    n = 0
    for batch in stamped:
        for i, (t, _) in enumerate(batch):
            batch[i] = (t, n)
            n += 1
    decided, kept = run_with_views(stamped, data)
    whole: dict[str, list[M]] = {t: [] for t in TOPICS}
    for batch in stamped:
        for t, ts in batch:
            whole[t].append(M(t, len(whole[t]), ts))
    assert decided == reference(whole)
    assert kept == 0


@settings(max_examples=300, deadline=None)
@given(appends_, st.data())
def test_views_over_a_backlog_give_the_order_of_the_whole_input(
        appends: list[list[tuple[str, int]]], data: st.DataObject) -> None:
    """Everything in Kafka before the first fetch, any timestamps (a replay, a worker
    catching up): the order of the whole input, as without views."""
    backlog = [[r for batch in appends for r in batch]]
    decided, _ = run_with_views(backlog, data)
    whole: dict[str, list[M]] = {t: [] for t in TOPICS}
    for t, ts in backlog[0]:
        whole[t].append(M(t, len(whole[t]), ts))
    assert decided == reference(whole)


def test_a_message_waits_only_for_what_was_in_kafka_when_it_was_fetched() -> None:
    """b is read to where it ended when a's first message was fetched; what b got
    since is later and does not hold it, but it does hold a's message fetched after."""
    views = MergeViews()
    a0, a1 = M("a", 0, 50), M("a", 1, 60)
    released, held = views.merge({"a": [a0]}, {"a": 1, "b": 3}, {"a": 1, "b": 3})
    assert released == [a0] and held == {}
    # b got a record after that view; a's next message is fetched with it unread
    released, held = views.merge({"a": [a1]}, {"a": 2, "b": 3}, {"a": 2, "b": 4})
    assert released == [] and held == {"a": [a1]}
    assert len(views) == 1  # the view a1 waits on; the first one is dropped
    # b read to that view's end: a1 goes, and no view is kept
    b3 = M("b", 3, 70)
    released, held = views.merge({"a": [a1], "b": [b3]}, {"a": 2, "b": 4},
                                 {"a": 2, "b": 4})
    assert released == [a1, b3] and held == {} and len(views) == 0


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
