"""The settlement of one partition as a small object with named phases.

A runtime drives it (cf. bytewax's ``StatefulBatchLogic``); it knows nothing of
Kafka, so the aiokafka worker, the tests, and later another runtime (a Faust
agent) drive the same object:

- :meth:`PartitionLogic.decide` — a batch of enrollments and transactions
  (already validated, :class:`~engine.streams.decode.InBatch`) → outcomes;
  :func:`decide_together` — the same for several partitions' logic objects in one
  call, each partition's outcomes and state as if decided alone (a live poll brings
  each partition a few dozen records: a call's fixed cost is paid once);
- :meth:`PartitionLogic.expire` — stream time moved without input → the outcomes
  of the waits that ended;
- :meth:`PartitionLogic.final` — end of input (a closed campaign, a file) → every
  record still waiting is decided without what it waited for;
- :meth:`PartitionLogic.snapshot` — the state changes not yet durable, to persist;
  :meth:`PartitionLogic.commit` — they are durable (in the changelog; the local
  copy takes them at its next flush);
  :meth:`PartitionLogic.discard` — they never will be (the batch failed half-way);
- :meth:`PartitionLogic.restore` — changelog records read at a take-over.

The crash-safety order around these phases is the runtime's
(:mod:`engine.streams.checkpoint`): outcomes acknowledged, then the snapshot
durable, then input offsets committed, then :meth:`commit`.
"""

from __future__ import annotations

from engine.rules.model import NO_TIME, Campaign, Registry
from engine.streams.decode import InBatch
from engine.streams.shard import Part, ShardDecider, ShardResult
from engine.streams.state import ChangelogRecord, ShardMeta, ShardStore, Staged


class PartitionLogic:
    def __init__(self, campaign: Campaign, registry: Registry, partitions: int,
                 partition: int, store: ShardStore) -> None:
        self.partition = partition
        self.store = store
        self.park_timeout = campaign.park_timeout
        self._decider = ShardDecider(campaign, registry, partitions)

    # ------------------------------------------------------------------ phases
    def decide(self, enrollments: InBatch | None, transactions: InBatch | None,
               caught_up: frozenset[str] = frozenset()) -> ShardResult:
        """``caught_up``: operators whose transactions input has nothing unread (""
        for the unattributed input; see ShardDecider.decide)."""
        return self._decider.decide(self.store, self.partition, enrollments, transactions,
                                    caught_up=caught_up)

    def part(self, enrollments: InBatch | None, transactions: InBatch | None,
             caught_up: frozenset[str] = frozenset()) -> Part:
        return Part(self.store, self.partition, enrollments, transactions, caught_up)

    def expire(self, stream_time: int) -> ShardResult:
        """Move stream time to ``stream_time`` (never back) and decide the waits
        whose deadline it passed."""
        return self._decider.decide(self.store, self.partition, None, None, clock=stream_time)

    def final(self) -> ShardResult:
        return self._decider.decide(self.store, self.partition, None, None, final=True)

    def snapshot(self) -> Staged:
        """State records (key → value, None: deleted) changed since the last :meth:`commit`
        (the store's pending values: what the next decide reads, too)."""
        return dict(self.store.pending)

    def commit(self, changelog_offset: int) -> None:
        """The snapshot is in the changelog up to ``changelog_offset`` (and the input
        offsets are committed): make it the local checkpoint."""
        self.store.apply(self.store.pending, changelog_offset)

    def discard(self) -> None:
        """Forget changes that will not become durable: decide again from the
        local checkpoint."""
        self.store.discard_unapplied(self.park_timeout)

    def restore(self, records: list[ChangelogRecord]) -> int:
        """Apply changelog records (key, value, offset, fence tag); returns how many
        a fenced-off writer wrote (ignored)."""
        ignored = self.store.restore(records)
        self.store.rebuild_parked_index(self.park_timeout)
        return ignored

    # ------------------------------------------------------------------ views
    @property
    def meta(self) -> ShardMeta:
        return self.store.meta

    @property
    def stream_time(self) -> int | None:
        st = self.store.meta.stream_time
        return None if st == NO_TIME else st

    @property
    def waiting(self) -> int:
        """People with records waiting."""
        return len(self.store.parked)


def decide_together(work: list[tuple[PartitionLogic, InBatch | None, InBatch | None,
                                     frozenset[str]]]) -> list[ShardResult]:
    """:meth:`PartitionLogic.decide` of each ``(logic, enrollments, transactions,
    caught_up)``, in one call (DECISIONS 130): the logic objects are of one campaign,
    registry and partition count (one runtime's), each of its own partition."""
    if not work:
        return []
    decider = work[0][0]._decider
    return decider.decide_parts([logic.part(e, t, c) for logic, e, t, c in work])
