"""The order in which one partition's enrollment topics are decided.

Every operator has its own enrollments topic, and Kafka orders records within a
topic-partition only. Which of two operators a person applied with first decides
which application stands (``ALREADY_ENROLLED`` for the other), so the worker cannot
take the topics in whatever order fetches happen to return them: that would make
the outcome depend on timing, and a replay could differ from the original run.

The rule (docs/DECISIONS.md): the enrollment messages of a partition are merged by
(message timestamp, topic name), each topic's own order kept, as Kafka Streams
merges a task's partitions. A message is released only when every topic that may
still hold an earlier record has a fetched message to compare it with; a topic that
is read to where it ended when the message was fetched holds nothing back
(MergeViews). So whenever the input is already in Kafka (a replay, a backlog, a
restart), the order does not depend on how the records were fetched; only a
message appended later with an older timestamp than one already decided (or than
one whose view it missed) is taken in arrival order, the one thing no merge can
avoid.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from itertools import accumulate
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)


def merge_key(msg: Any) -> int:
    ts = msg.timestamp
    return ts if ts is not None and ts >= 0 else -1


def merge_topics(fetched: Mapping[str, Sequence[Any]], unread: Collection[str],
                 before: Callable[[str, Any], bool] | None = None
                 ) -> tuple[list[Any], dict[str, list[Any]]]:
    """Merge ``fetched`` messages per topic; return (released in order, held back per
    topic). ``unread``: topics with records in Kafka beyond those fetched (or not known
    yet); the merge stops when such a topic has no fetched message left to compare the
    next one with. ``before(topic, msg)``, when given, narrows that: whether the unread
    records of ``topic`` may come before ``msg`` (the worker knows which records were
    in Kafka when ``msg`` was fetched); without it, any may.

    >>> from collections import namedtuple
    >>> M = namedtuple("M", "topic offset timestamp")
    >>> a = [M("a", 0, 10), M("a", 1, 30)]
    >>> b = [M("b", 0, 20)]
    >>> done, held = merge_topics({"a": a, "b": b}, {"b"})
    >>> [(m.topic, m.offset) for m in done], {t: len(h) for t, h in held.items()}
    ([('a', 0), ('b', 0)], {'a': 1})
    >>> [(m.topic, m.offset) for m in merge_topics({"a": a, "b": b}, set())[0]]
    [('a', 0), ('b', 0), ('a', 1)]
    >>> late = lambda t, m: m.offset > 0  # b's unread records came after a's first
    >>> [(m.topic, m.offset) for m in merge_topics({"a": a}, {"b"}, late)[0]]
    [('a', 0)]
    """
    pos = {t: 0 for t in fetched}
    heap = [(merge_key(m[0]), t) for t, m in fetched.items() if m]
    heapq.heapify(heap)
    # unread topics with no fetched message left: each may hold one that comes next
    waiting = {t for t in unread if not fetched.get(t)}
    released: list[Any] = []
    while heap:
        t = heap[0][1]
        msg = fetched[t][pos[t]]
        if waiting and (before is None or any(before(u, msg) for u in waiting)):
            break
        heapq.heappop(heap)
        released.append(msg)
        pos[t] += 1
        if pos[t] < len(fetched[t]):
            heapq.heappush(heap, (merge_key(fetched[t][pos[t]]), t))
        elif t in unread:
            waiting.add(t)
    held = {t: list(m[pos[t]:]) for t, m in fetched.items() if pos[t] < len(m)}
    return released, held


class MergeViews:
    """What one partition's merge compares its messages with, over several merges.

    A fetch's end of a topic is stale by the time another topic's fetch arrives, so
    the worker takes a view at every merge: each topic's end in Kafka, and how far
    each had been returned. A message waits for a topic with no fetched message left
    only while that topic is below the ends of the first view taken after the message
    was returned: a record appended after that is taken as later than the message (as
    one appended after a decision already is). Views are kept oldest first and
    dropped once no held message needs one.

    Asking instead whether anything was appended since the last look waited for
    records newer than the message too; while applications kept arriving on several
    operators' topics there nearly always were some, and the merge, and the
    transactions behind it, fell behind for good (docs/DECISIONS.md 126).
    """

    def __init__(self) -> None:
        self._views: list[tuple[dict[str, int], dict[str, int]]] = []

    def __len__(self) -> int:
        return len(self._views)

    def merge(self, fetched: Mapping[str, Sequence[Any]], returned: Mapping[str, int],
              ends: Mapping[str, int], unseen: Collection[str] = ()
              ) -> tuple[list[Any], dict[str, list[Any]]]:
        """``merge_topics`` of ``fetched`` (messages with ``topic`` and ``offset``)
        against a new view: ``returned``, each topic's position now; ``ends``, its end
        in Kafka now; ``unseen``, topics with fetched messages this merge does not see
        (beyond the batch budget), which hold back whatever they may precede."""
        views = self._views
        views.append((dict(returned), dict(ends)))
        lagging = [set(unseen) | {t for t, end in v[1].items() if returned.get(t, end) < end}
                   for v in views]
        marks = {t: [v[0].get(t, 0) for v in views] for t in returned}
        last = len(views) - 1

        def view_of(msg: Any) -> int:
            m = marks.get(msg.topic)  # none: a topic this view does not hold (revoked)
            return min(bisect_right(m, msg.offset), last) if m else last

        released, held = merge_topics(fetched, set().union(*lagging),
                                      lambda t, msg: t in lagging[view_of(msg)])
        del views[:min((view_of(m[0]) for m in held.values()), default=len(views))]
        return released, held


def fair_prefixes(sizes: Mapping[K, Sequence[int]], budget: int) -> dict[K, int]:
    """How many leading messages of each key (topic-partition) one batch takes, given
    the messages' ``sizes`` in bytes, so that the batch holds about ``budget`` bytes.

    Every key with messages gets at least one (so every topic advances and the merge,
    which may wait for a topic, always gets it); beyond that the budget is shared
    max-min fairly (water-filling): a key needing less than an equal share takes all
    it has, and what it leaves is shared by the others. A batched backlog thus
    becomes bounded batches instead of one poll of a million records.

    >>> fair_prefixes({"a": [5, 5, 5, 5], "b": [1, 1]}, 12)
    {'b': 2, 'a': 2}
    >>> fair_prefixes({"a": [50], "b": [50]}, 10)
    {'a': 1, 'b': 1}
    >>> fair_prefixes({"a": [1, 2], "b": []}, 10)
    {'a': 2, 'b': 0}
    """
    cums = {k: list(accumulate(v)) for k, v in sizes.items()}
    if sum(c[-1] for c in cums.values() if c) <= budget:
        return {k: len(c) for k, c in cums.items()}
    order = sorted(cums, key=lambda k: cums[k][-1] if cums[k] else 0)
    out: dict[K, int] = {}
    left = budget
    for i, k in enumerate(order):
        cum = cums[k]
        if not cum:
            out[k] = 0
            continue
        n = max(1, bisect_right(cum, max(left, 0) // (len(order) - i)))
        out[k] = n
        left -= cum[n - 1]
    return out
