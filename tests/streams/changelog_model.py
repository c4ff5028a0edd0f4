"""The columnar changelog of DECISIONS 138 as a small model, checked before it is built.

A partition's state is people -> value. Each commit writes one record holding the
people it touched (a deletion as None) and the next slice of a sweep over everyone
alive when the sweep's generation began, under a key of the writer's own
(``pack/<fence>/<generation>/<n>``). A generation is complete once its sweep has passed
everyone; the offset of its first record (``T``) goes into the commit's metadata, and a
restore reads from the ``T`` of the newest complete generation to the end. Generations
older than the two newest complete ones are tombstoned, a tombstone per record.

A worker taking the partition over writes a fence, under a key of its own
(``fence/<offset>``), not the one key that compaction would reduce to the newest fence.
A restore ignores a record whose writer's fence is older than the newest fence, or
the newest writer's record, it has read: a worker that lost the partition and writes
on (a zombie, DECISIONS 26) is ignored even where the fence that superseded it is no
longer in the log, or lies before ``T``. A commit that completes a generation tombstones
the fences before the start the commit before it left.

Compaction is modelled as Kafka's: a record may be removed once a later record has its
key (for these keys: its tombstone), and a tombstone may be removed at any time after
that. Nothing else is removed. The engine's build is meant to be tested against this
model (``tests/streams/test_changelog_model.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FENCE = "fence/"


@dataclass(frozen=True)
class Record:
    key: str
    tag: int                            # the writer's fence (its fence record's offset)
    people: dict[str, int | None] | None  # None: a tombstone or a fence
    fence: bool = False


@dataclass(frozen=True)
class Generation:
    fence: int
    number: int
    records: int
    start: int                          # offset of its first record: T


@dataclass
class Committed:
    """What a commit's metadata carries: where a restore starts, and the complete
    generations still in the log (a later owner tombstones them in turn)."""

    start: int = 0
    live: tuple[Generation, ...] = ()
    fences: tuple[int, ...] = ()        # offsets of the fences still in the log


class Changelog:
    def __init__(self) -> None:
        self.records: list[Record | None] = []  # by offset; None: compacted away

    def append(self, r: Record) -> int:
        self.records.append(r)
        return len(self.records) - 1

    def compact(self, rnd: random.Random | None = None) -> None:
        """Remove some of what Kafka's cleaner may remove, at random; all of it without
        ``rnd`` (a cleaner that has caught up, ``delete.retention.ms`` past)."""
        newest: dict[str, int] = {}
        for off, r in enumerate(self.records):
            if r is not None:
                newest[r.key] = off
        for off, r in enumerate(self.records):
            if r is None:
                continue
            superseded = newest[r.key] > off
            tombstone = r.people is None and not r.fence
            if (superseded or tombstone) and (rnd is None or rnd.random() < 0.5):
                self.records[off] = None

    def restore(self, start: int) -> dict[str, int]:
        """Apply the records from ``start`` to the end, in order, ignoring a writer's
        records once a later fence, or a later writer's record, has been read."""
        state: dict[str, int] = {}
        fence = -1
        for off in range(start, len(self.records)):
            r = self.records[off]
            if r is None:
                continue
            if r.fence:
                fence = max(fence, off)
            elif r.people is not None and r.tag >= fence:
                fence = r.tag
                for person, value in r.people.items():
                    if value is None:
                        state.pop(person, None)
                    else:
                        state[person] = value
        return state


@dataclass
class Owner:
    """A partition's writer: takes it over (a fence, then the restore from the
    committed ``T``), touches people, commits."""

    log: Changelog
    committed: Committed
    slice_size: int
    fence: int = -1
    state: dict[str, int] = field(default_factory=dict)
    staged: dict[str, int | None] = field(default_factory=dict)
    generation: int = 0
    written: int = 0                    # records of the current generation
    start: int = -1
    sweep: list[str] = field(default_factory=list)  # the people still to pass

    def take_over(self) -> None:
        self.fence = self.log.append(Record(f"{FENCE}{len(self.log.records)}", -1, None,
                                            fence=True))
        self.committed = Committed(self.committed.start, self.committed.live,
                                   (*self.committed.fences, self.fence))
        self.state = self.log.restore(self.committed.start)
        self._begin()

    def _begin(self) -> None:
        self.written, self.start = 0, -1
        self.sweep = sorted(self.state, reverse=True)  # popped from the end

    def touch(self, person: str, value: int | None) -> None:
        self.staged[person] = value
        if value is None:
            self.state.pop(person, None)
        else:
            self.state[person] = value

    def commit(self) -> Committed:
        """One record: what was staged, and the sweep's next slice as decided so far
        (DECISIONS 147: never an older value than a record before it carries)."""
        people: dict[str, int | None] = {}
        while self.sweep and len(people) < self.slice_size:
            p = self.sweep.pop()
            if p in self.state:  # gone since the generation began: nothing to carry
                people[p] = self.state[p]
        people.update(self.staged)
        self.staged = {}
        off = self.log.append(Record(
            f"pack/{self.fence}/{self.generation}/{self.written}", self.fence, people))
        if self.start < 0:
            self.start = off
        self.written += 1
        live = self.committed.live
        if not self.sweep:
            done = Generation(self.fence, self.generation, self.written, self.start)
            live = (*live, done)
            # one generation more than a restore needs: a writer that completes a sweep
            # and dies before its commit leaves the previous T committed, still whole
            for old in live[:-2]:
                for n in range(old.records):
                    self.log.append(Record(f"pack/{old.fence}/{old.number}/{n}",
                                           self.fence, None))
            live = live[-2:]
            # a fence before the start this commit replaces: a restore reads neither
            # from there nor from before it (should this commit fail, it reads from
            # that start, and the fences after it are still there)
            cut, fences = self.committed.start, self.committed.fences
            for f in fences:
                if f < cut:
                    self.log.append(Record(f"{FENCE}{f}", self.fence, None))
            fences = tuple(f for f in fences if f >= cut)
            self.committed = Committed(done.start, live, fences)
            self.generation += 1
            self._begin()
        else:
            self.committed = Committed(self.committed.start, live, self.committed.fences)
        return self.committed
