"""The columnar changelog's protocol (DECISIONS 138, 148), checked on its model before
the build: any compaction Kafka may do leaves a restore from the committed ``T`` what
was committed; reading from the log's start instead may not; the log stays bounded."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.streams.changelog_model import FENCE, Changelog, Committed, Owner, Record

PEOPLE = [f"p{i}" for i in range(12)]

ops = st.lists(st.one_of(
    st.tuples(st.just("touch"), st.sampled_from(PEOPLE), st.integers(0, 99)),
    st.tuples(st.just("delete"), st.sampled_from(PEOPLE)),
    st.tuples(st.just("commit")),
    st.tuples(st.just("compact"), st.integers(0, 2**32)),
    st.tuples(st.just("take_over")),
    st.tuples(st.just("crash")),
    st.tuples(st.just("zombie")),
    st.tuples(st.just("zombie_writes"), st.sampled_from(PEOPLE), st.integers(100, 199)),
), max_size=120)


@settings(max_examples=1500, deadline=None)
@given(ops=ops, slice_size=st.integers(1, 5))
def test_a_restore_from_the_committed_start_reads_what_was_committed(
        ops: list[tuple], slice_size: int) -> None:  # type: ignore[type-arg]
    log = Changelog()
    owner = Owner(log, Committed(), slice_size)
    owner.take_over()
    committed: dict[str, int] = {}
    zombies: list[Owner] = []
    for op in ops:
        if op[0] == "touch":
            owner.touch(op[1], op[2])
        elif op[0] == "delete":
            owner.touch(op[1], None)
        elif op[0] == "commit":
            owner.commit()
            committed = dict(owner.state)
        elif op[0] == "compact":
            log.compact(random.Random(op[1]))
        elif op[0] == "take_over":  # what it staged since its commit is decided again
            owner = Owner(log, owner.committed, slice_size)
            owner.take_over()
            assert owner.state == committed
        elif op[0] == "zombie":  # taken over while it goes on (frozen for now)
            zombies.append(owner)
            owner = Owner(log, owner.committed, slice_size)
            owner.take_over()
            assert owner.state == committed
        elif op[0] == "zombie_writes":  # one more record of its own, whenever it wakes
            # (a person touched, perhaps a generation completed), then its commit fails
            if zombies:
                zombie = zombies.pop(0)
                zombie.touch(op[1], op[2])
                zombie.commit()
        else:  # killed between its record and its commit: the next owner reads the
            # record, from the start the commit before it left (DECISIONS 138)
            before = owner.committed
            owner.commit()
            committed = dict(owner.state)
            owner = Owner(log, before, slice_size)
            owner.take_over()
            assert owner.state == committed
        assert log.restore(owner.committed.start) == committed


@settings(max_examples=200, deadline=None)
@given(touches=st.lists(st.tuples(st.sampled_from(PEOPLE), st.integers(0, 99)),
                        min_size=1, max_size=300),
       slice_size=st.integers(1, 4))
def test_compaction_keeps_the_log_to_a_few_generations(
        touches: list[tuple[str, int]], slice_size: int) -> None:
    """Whatever the history, once the cleaner has caught up the log holds the records
    of the current generation and of the two newest complete ones, no more."""
    log = Changelog()
    owner = Owner(log, Committed(), slice_size)
    owner.take_over()
    for person, value in touches:
        owner.touch(person, value)
        owner.commit()
    log.compact()
    sweep = -(-len(PEOPLE) // slice_size)  # records of a generation, at most
    present = [r for r in log.records if r is not None and not r.key.startswith(FENCE)]
    assert len(present) <= 3 * sweep
    assert log.restore(owner.committed.start) == owner.state


def test_read_from_the_start_a_compacted_log_can_bring_back_a_deleted_person() -> None:
    """Why a restore starts at ``T``: the tombstones of a generation reach the records
    of a person's value and of its deletion, and the cleaner may remove the deletion
    first; only the records from ``T`` on say the person is gone."""
    log = Changelog()
    owner = Owner(log, Committed(), slice_size=1)
    owner.take_over()
    owner.touch("a", 1)
    owner.commit()        # generation 0: "a" set
    owner.touch("a", None)
    owner.touch("b", 2)
    for _ in range(6):    # generation 1 deletes "a"; later ones pass "b" alone
        owner.commit()
    assert "a" not in owner.state
    # the cleaner took the deletion's record and not yet the one that set "a"
    for off, r in enumerate(log.records):
        if r is not None and r.people is not None and r.people.get("a", 0) is None:
            assert any(t is not None and t.key == r.key and t.people is None
                       for t in log.records[off + 1:]), "the deletion is tombstoned"
            log.records[off] = None
    assert log.restore(0).get("a") == 1
    assert log.restore(owner.committed.start) == owner.state


def test_a_zombie_record_after_the_owner_s_fence_is_ignored() -> None:
    """A writer that lost the partition and goes on writing (a zombie, DECISIONS 26)
    writes under its old fence: a restore that reads the newer fence ignores it."""
    log = Changelog()
    zombie = Owner(log, Committed(), slice_size=1)
    zombie.take_over()
    for p in "abc":
        zombie.touch(p, 1)
    committed = zombie.commit()
    owner = Owner(log, committed, slice_size=1)
    owner.take_over()
    owner.touch("d", 2)
    assert owner.commit().start == committed.start  # its own sweep is not complete
    zombie.touch("a", 666)
    zombie.commit()
    assert any(r is not None and r.people == {"a": 666} for r in log.records)
    assert log.restore(owner.committed.start) == {"a": 1, "b": 1, "c": 1, "d": 2}


def test_the_model_s_compaction_keeps_the_newest_record_of_every_key() -> None:
    log = Changelog()
    for i in range(3):
        log.append(Record("k", i, {"a": i}))
    log.append(Record(f"{FENCE}3", -1, None, fence=True))
    log.append(Record("t", 0, {"a": 1}))
    log.append(Record("t", 0, None))
    for seed in range(20):
        log.compact(random.Random(seed))
    assert log.records[2] is not None and log.records[3] is not None
    log.compact()
    assert [r is not None for r in log.records] == [False, False, True, True, False, False]


def test_a_zombie_s_completed_sweep_leaves_the_generation_a_restore_starts_at() -> None:
    """Why two complete generations stay: a zombie may complete a sweep of its own and
    tombstone what is older; the generation its last commit named, where the new
    owner's restores start until it completes a sweep, is not among them."""
    log = Changelog()
    zombie = Owner(log, Committed(), slice_size=1)
    zombie.take_over()
    zombie.touch("a", 1)
    zombie.commit()
    zombie.commit()            # a second complete generation: ("a")
    owner = Owner(log, zombie.committed, slice_size=1)
    owner.take_over()
    zombie.touch("a", 666)
    zombie.commit()            # completes a third, tombstones the first
    log.compact()
    assert log.restore(owner.committed.start) == {"a": 1}


def test_a_zombie_writing_after_the_owner_s_sweep_is_ignored_without_its_fence() -> None:
    """A restore that starts past the fence that superseded a zombie tells the zombie's
    records by the owner's own, read before them."""
    log = Changelog()
    zombie = Owner(log, Committed(), slice_size=1)
    zombie.take_over()
    zombie.touch("a", 1)
    zombie.commit()
    owner = Owner(log, zombie.committed, slice_size=1)
    owner.take_over()
    owner.commit()
    owner.commit()             # its own complete generation, past its fence
    assert owner.committed.start > owner.fence
    zombie.touch("a", 666)
    zombie.commit()
    assert log.restore(owner.committed.start) == {"a": 1}


def test_a_sweep_completed_by_a_writer_killed_before_its_commit_keeps_its_fence() -> None:
    """Why a completed sweep tombstones only the fences before the start the commit
    before it named: should that commit never happen, the next owner restores from
    that start, and tells a zombie's records there by the fences after it."""
    log = Changelog()
    zombie = Owner(log, Committed(), slice_size=1)
    zombie.take_over()
    owner = Owner(log, zombie.committed, slice_size=1)
    owner.take_over()
    zombie.touch("a", 666)
    zombie.commit()
    before = owner.committed
    owner.touch("b", 2)
    owner.commit()             # completes its first sweep; killed before the commit
    log.compact()
    last = Owner(log, before, slice_size=1)
    last.take_over()
    assert last.state == {"b": 2}
