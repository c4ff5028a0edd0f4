"""The shard store without Kafka: what is applied survives a cache drop and a
reopen, the cache stays bounded, and the index of waiting people matches them."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import DEFAULT_CAMPAIGN
from engine.rules.model import NO_TIME
from engine.streams.state import (
    FENCE_KEY,
    META_KEY,
    WAIT_PREFIX,
    Fence,
    PersonState,
    ShardStore,
    TxnEntry,
    decode_entry,
    decode_person,
    encode,
    encode_entry,
    is_person_key,
)
from tests import builders
from tests.streams.feed import PERSON, T0, Feed, H, txn


def test_applied_state_survives_cache_drops_and_reopen(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "p0", NO_TIME, cache_limit=2)
    for i in range(5):
        st = store.get(f"person{i:02d}")
        st.c = 100 * i
        st.txns["paypay/t1"] = encode_entry(TxnEntry(1, 100 * i, 0, None, 1))
        store.apply({f"person{i:02d}": encode(st)}, changelog_offset=i)
        assert len(store.cache) <= 3  # bounded: dropped once over the limit
    assert store.get("person03").c == 300
    assert decode_entry(store.get("person04").txns["paypay/t1"]).amount == 400
    store.meta.stream_time = 42
    store.apply({}, changelog_offset=9)
    store.close()
    again = ShardStore(tmp_path / "p0", NO_TIME)
    assert again.meta.changelog_offset == 9 and again.meta.stream_time == 42
    assert again.get("person02").c == 200
    assert again.get("nobody00") == PersonState()
    again.close()


def test_restore_applies_only_newer_changelog_records(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "p1", NO_TIME)
    a, b = PersonState(c=1), PersonState(c=2)
    store.restore([(b"personAA", encode(a), 0, None), (b"personAA", encode(b), 1, None),
                   (META_KEY.encode(), encode(store.meta.__class__(stream_time=7)), 2, None)])
    assert store.get("personAA").c == 2 and store.meta.stream_time == 7
    store.restore([(b"personAA", encode(a), 1, None)])  # already applied: ignored
    assert store.get("personAA").c == 2
    store.close()


def test_restore_ignores_a_zombies_writes_after_a_newer_fence(tmp_path: Path) -> None:
    """Worker A took the partition at fence 0 and wrote under it; worker B took it
    over at fence 2; A, stalled, then wrote stale state tagged with fence 0."""
    store = ShardStore(tmp_path / "p2", NO_TIME)
    fence = encode(Fence())
    ignored = store.restore([
        (FENCE_KEY, fence, 0, None),
        (b"personAA", encode(PersonState(c=100)), 1, 0),      # A, legitimately
        (FENCE_KEY, fence, 2, None),                          # B takes over
        (b"personAA", encode(PersonState(c=300)), 3, 2),      # B decides on
        (b"personAA", encode(PersonState(c=100)), 4, 0),      # A, a zombie: stale
        (b"personBB", encode(PersonState(c=5)), 5, 0),        # A, a zombie: stale
    ])
    assert ignored == 2
    assert store.get("personAA").c == 300
    assert store.get("personBB") == PersonState()
    assert store.meta.fence == 2 and store.meta.changelog_offset == 5
    store.close()
    # the checkpoint remembers the fence: a later tail is judged against it
    again = ShardStore(tmp_path / "p2", NO_TIME)
    assert again.restore([(b"personBB", encode(PersonState(c=7)), 6, 0)]) == 1
    assert again.restore([(b"personBB", encode(PersonState(c=8)), 7, 2)]) == 0
    assert again.get("personBB").c == 8
    again.close()


def test_a_reset_fence_voids_everything_before_it(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "p3", NO_TIME)
    store.restore([(b"personAA", encode(PersonState(c=1)), 0, None),
                   (META_KEY.encode(), encode(store.meta.__class__(stream_time=9)), 1, None)])
    store.restore([(FENCE_KEY, encode(Fence(reset=True)), 2, None),
                   (b"personBB", encode(PersonState(c=2)), 3, 2)])
    assert store.get("personAA") == PersonState()
    assert store.get("personBB").c == 2
    assert store.meta.stream_time == NO_TIME and store.meta.changelog_offset == 3
    store.close()


def test_state_slots_are_locked_per_process_not_by_pid(tmp_path: Path) -> None:
    """Two workers on one machine never share local state; a slot is free again
    as soon as its holder is gone (the kernel drops the flock), whatever PIDs say."""
    from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
    from engine.kafka.topics import Topics
    from engine.streams.worker import Worker

    def new() -> Worker:
        return Worker("127.0.0.1:1", Topics("t", "g"), DEFAULT_CAMPAIGN, DEFAULT_REGISTRY,
                      tmp_path)

    a, b = new(), new()
    a._lock_slot()
    b._lock_slot()
    assert a.state_dir != b.state_dir
    assert a.state_dir is not None and a.state_dir.name == "slot-0"
    assert a._slot_lock is not None
    a._slot_lock.close()  # the holder is gone
    c = new()
    c._lock_slot()
    assert c.state_dir == a.state_dir


def test_reset_forgets_a_foreign_local_copy_position_included(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "p4", NO_TIME)
    store.restore([(FENCE_KEY, encode(Fence()), 5, None),
                   (b"personAA", encode(PersonState(c=1)), 6, 5)])
    store.reset()
    assert store.get("personAA") == PersonState()
    assert (store.meta.changelog_offset, store.meta.fence) == (-1, -1)
    store.close()
    again = ShardStore(tmp_path / "p4", NO_TIME)
    assert again.meta.changelog_offset == -1 and again.get("personAA") == PersonState()
    again.close()


_PEOPLE = ["Wait0001", "Wait0002", "Wait0003"]
_op = st.one_of(
    st.tuples(st.just("txn"), st.sampled_from(_PEOPLE), st.integers(0, 60)),
    st.tuples(st.just("refund"), st.sampled_from(_PEOPLE), st.integers(0, 60)),
    st.tuples(st.just("enr"), st.sampled_from(_PEOPLE), st.integers(0, 60)),
    st.tuples(st.just("expire"), st.just(""), st.integers(0, 60)),
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, min_size=1, max_size=12))
def test_wait_index_equals_a_scan_of_every_person_also_after_restore(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, int]]) -> None:
    """The ``__wait__/`` keys (what a take-over reads instead of every person) always
    name exactly the people with waiting records and their earliest deadline: the
    reference is a decode of every person; both in the local copy and in a store
    restored from the changelog records the batches wrote (tombstones included)."""
    tmp = tmp_path_factory.mktemp("wait")
    f = Feed(tmp)
    written: list[dict[str, bytes | None]] = []
    commit = f.logic.commit

    def logged(offset: int) -> None:
        written.append(f.logic.snapshot())
        commit(offset)

    f.logic.commit = logged  # type: ignore[method-assign]
    timeout = DEFAULT_CAMPAIGN.park_timeout
    for n, (what, person, hours) in enumerate(ops):
        ts = T0 + hours * H
        if what == "expire":
            f.logic.expire(ts * 1000)
            f.logic.commit(f.batches)
        elif what == "enr":
            f.poll("enrollment", [{"rec": builders.enr(person), "ts": ts}])
        else:
            extra = {"kind": "refund", "original_txn_id": "missing", "amount": 10} \
                if what == "refund" else {}
            f.poll("transaction", [txn(f"t{n}", ts, person=person, **extra)])
        scan = {}
        for k, v in f.store.db.items():
            if is_person_key(k):
                waiting = decode_person(v).parked
                if waiting:
                    scan[k.decode()] = min(p.received for p in waiting) + timeout
        assert f.store.parked == scan
        f.store.rebuild_parked_index(timeout)
        assert f.store.parked == scan
    f.store.close()
    restored = ShardStore(tmp / "restored", NO_TIME)
    offset = 0
    records = []
    for snap in written:
        for k, v in snap.items():
            records.append((k.encode(), v, offset, None))
            offset += 1
    restored.restore(records)
    restored.rebuild_parked_index(timeout)
    assert restored.parked == scan
    restored.close()


def test_an_ended_wait_deletes_its_index_key_locally_and_in_the_changelog(
        tmp_path: Path) -> None:
    f = Feed(tmp_path)
    f.poll("transaction", [txn("waits", T0)])
    key = (WAIT_PREFIX + "Wait0001").encode()
    assert f.store.db.get(key) is not None
    # the enrollment ends the wait: the index key goes, as a tombstone
    staged: list[dict[str, bytes | None]] = []
    commit = f.logic.commit
    f.logic.commit = lambda o: (staged.append(f.logic.snapshot()), commit(o))[1]  # type: ignore[method-assign]
    f.poll("enrollment", [{"rec": builders.enr("Wait0001"), "ts": T0 + 1}])
    assert staged[0][WAIT_PREFIX + "Wait0001"] is None
    assert f.store.db.get(key) is None and not f.store.parked
    f.store.close()


def test_people_in_memory_are_not_walked_by_the_cycle_collector() -> None:
    """A decoded person, its entries and its waits are untracked (state.py: a full
    collection walked every cached one)."""
    import gc

    from engine.streams.state import Parked

    st = PersonState(enr_op="paypay", c=100)
    st.txns["paypay/t1"] = encode_entry(TxnEntry(1, 100, 0, None, 1))
    st.parked.append(Parked(1, 1, "paypay", "t2", None, 5, 0, 0, 0, "t/0/1"))
    back = decode_person(encode(st))
    assert back == st
    for obj in (back, back.txns, back.txns["paypay/t1"], back.parked[0],
                decode_entry(back.txns["paypay/t1"])):
        assert not gc.is_tracked(obj), obj


def test_a_worker_process_collects_with_the_larger_thresholds(tmp_path: Path) -> None:
    """build_worker (both runtimes) sets the collector thresholds of DECISIONS 98."""
    import gc

    from engine.cli import build_parser
    from engine.streams.worker import GC_THRESHOLDS, Worker, build_worker

    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        args = build_parser().parse_args(["worker", "--broker", "127.0.0.1:1",
                                          "--state-dir", str(tmp_path)])
        assert isinstance(build_worker(args), Worker)
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.set_threshold(*before)


def test_a_batch_re_encodes_only_the_entries_its_records_name(tmp_path: Path) -> None:
    """A person read from RocksDB holds its entries as bytes; a batch writes the
    other entries back as the bytes they were read as, and encodes again only the
    refunded original (new sum) and the refund's own new entry."""
    f = Feed(tmp_path)
    f.poll("enrollment", [{"rec": builders.enr(PERSON), "ts": T0}])
    f.poll("transaction", [txn(f"h{i}", T0 + 1 + i) for i in range(5)])
    f.store.cache.clear()  # read back from RocksDB: the entries come as bytes
    before = decode_person(f.store.db[PERSON.encode()]).txns
    assert all(type(v) is msgspec.Raw for v in f.store.get(PERSON).txns.values())
    f.poll("transaction", [txn("back", T0 + 11, kind="refund", original_txn_id="h2",
                               amount=1000)])
    after = decode_person(f.store.db[PERSON.encode()]).txns
    assert set(after) == set(before) | {"paypay/back"}
    changed = {k for k in before if bytes(after[k]) != bytes(before[k])}
    assert changed == {"paypay/h2"}
    assert decode_entry(after["paypay/h2"]).refunded == 1000
    assert decode_entry(after["paypay/back"]).kind == 2
    f.store.close()


def test_entries_kept_encoded_write_the_same_bytes_as_decoded_ones() -> None:
    """Keeping entries as msgspec.Raw does not change the format: a blob is byte for
    byte the encoding of the person with decoded entries (changelogs and local
    copies written before read the same)."""
    from engine.streams.state import Parked

    class Decoded(msgspec.Struct, array_like=True):
        enr_op: str | None
        enr_kind: int
        enr_day: int
        c: int
        r: int
        txns: dict[str, TxnEntry]
        parked: list[Parked]
        marks: dict[str, int]

    entries = {"paypay/t1": TxnEntry(1, 100, 5, None, 1),
               "paypay/t2": TxnEntry(2, 30, 6, "t1", 2, 0)}
    st = PersonState("paypay", 1, 18_506, 100, 25,
                     {k: encode_entry(e) for k, e in entries.items()},
                     [Parked(1, 1, "paypay", "t3", None, 5, 0, 0, 0, "t/0/1")], {"t/0": 7})
    old = Decoded(st.enr_op, st.enr_kind, st.enr_day, st.c, st.r, entries, st.parked,
                  st.marks)
    assert encode(st) == encode(old)
    assert {k: decode_entry(v) for k, v in decode_person(encode(old)).txns.items()} == entries
