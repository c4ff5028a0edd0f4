"""The shard store without Kafka: what is applied survives a reopen, a kill leaves
a consistent checkpoint, and the index of waiting people matches them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.config import DEFAULT_CAMPAIGN
from engine.rules.model import NO_TIME
from engine.rules.strings import parse_utc
from engine.rules.txn_keys import entry_keys, fingerprints
from engine.streams import shard, state_file
from engine.streams.entries import ENTRY, WIDE_ENTRY
from engine.streams.state import (
    FENCE_KEY,
    META_KEY,
    NO_DEADLINE,
    WAIT_PREFIX,
    ChangelogRecord,
    Fence,
    Parked,
    PersonState,
    ShardMeta,
    ShardStore,
    TxnEntry,
    WaitIndex,
    checkpointed,
    decode_person,
    decode_wait,
    encode,
    encode_wait,
    is_person_key,
    source_key,
)
from tests import builders
from tests.streams.feed import PERSON, T0, Feed, H, reasons, txn


def _entry(txn_id: str = "t1", amount: int = 100, **fields: int) -> bytes:
    row = np.zeros(1, ENTRY)
    row["key"] = entry_keys(["paypay"], [txn_id])
    row["amount"] = amount
    for name, value in fields.items():
        row[name] = value
    return row.tobytes()


def _rows(entries: bytes) -> np.ndarray:
    return np.frombuffer(entries, ENTRY)


def test_applied_state_survives_a_reopen(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "p0", NO_TIME)
    for i in range(5):
        st = store.get(f"person{i:02d}")
        st.c = 100 * i
        st.entries = _entry(amount=100 * i)
        store.apply({f"person{i:02d}": encode(st)}, changelog_offset=i)
    assert store.get("person03").c == 300
    assert _rows(store.get("person04").entries)["amount"].tolist() == [400]
    store.meta.stream_time = 42
    store.apply({}, changelog_offset=9)
    store.close()
    again = ShardStore(tmp_path / "p0", NO_TIME)
    assert again.meta.changelog_offset == 9 and again.meta.stream_time == 42
    assert again.get("person02").c == 200
    assert again.get("nobody00") == PersonState()
    again.close()


def test_pending_values_are_read_first_and_forgotten_with_a_failed_batch(tmp_path: Path) -> None:
    """What a decide staged (not applied yet) is what the next decide reads; a failed
    batch's discard goes back to the state as applied, and apply takes it all."""
    store = ShardStore(tmp_path / "p0", NO_TIME)
    store.apply({"personAA": encode(PersonState(c=1))}, 0)
    store.flush()
    store.pending["personAA"] = encode(PersonState(c=2))
    store.pending["personBB"] = encode(PersonState(c=5))
    assert [store.get(k).c for k in ("personAA", "personBB", "personCC")] == [2, 5, 0]
    store.discard_unapplied(timeout=1)
    assert [store.get(k).c for k in ("personAA", "personBB")] == [1, 0]
    store.pending["personAA"] = encode(PersonState(c=3))
    store.apply(dict(store.pending), 1)
    assert not store.pending and store.get("personAA").c == 3
    store.close()


_KILLED_WRITER = """
import os, sys
from engine.rules.model import NO_TIME
from engine.streams import state_file
from engine.streams.state import PersonState, ShardStore, encode
store = ShardStore(__import__("pathlib").Path(sys.argv[1]), NO_TIME, flush_bytes=0)

def torn(self, writes):  # the kill lands half-way through the segment's bytes
    self.drain()  # the writes before it have landed
    seg = b"".join(state_file.encode_parts(list(writes), list(writes.values())))
    with open(self.path, "ab") as f:
        f.write(seg[:len(seg) // 2])
    os.kill(os.getpid(), 9)

for i in range(6):
    if i == 3:
        state_file.SegmentFile.append = torn
    store.apply({f"person{j:02d}": encode(PersonState(c=100 * i)) for j in range(50)},
                changelog_offset=i)
"""


def test_a_store_killed_mid_write_keeps_the_checkpoint_before_that_write(
        tmp_path: Path) -> None:
    """A kill in the middle of a checkpoint write leaves the write before it whole,
    values and position together, from which a restore reads the changelog on; the
    torn end is cut off, so that the next write follows the last whole one."""
    import subprocess
    import sys
    path = tmp_path / "p"
    r = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(path)],
                       cwd=Path(__file__).parents[2], capture_output=True)
    assert r.returncode == -9, r.stderr.decode()
    whole = state_file.read(path / state_file.FILE_NAME)[1]
    assert 0 < whole < (path / state_file.FILE_NAME).stat().st_size  # the torn write
    store = ShardStore(path, NO_TIME)
    assert store.meta.changelog_offset == 2  # not 3: the torn write is not read
    assert {store.get(f"person{j:02d}").c for j in range(50)} == {200}
    store.apply({"person00": encode(PersonState(c=700))}, changelog_offset=7)
    store.close()
    again = ShardStore(path, NO_TIME)
    assert again.meta.changelog_offset == 7 and again.get("person00").c == 700
    assert again.get("person01").c == 200


_WRITES = st.lists(st.dictionaries(st.sampled_from([b"a", b"b", b"c", b"__wait__/a",
                                                    "é".encode()]),
                                   st.none() | st.binary(min_size=1, max_size=40),
                                   max_size=5), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=_WRITES, data=st.data())
def test_a_damaged_or_cut_checkpoint_file_reads_as_its_last_whole_write(
        tmp_path: Path, writes: list[dict[bytes, bytes | None]], data: st.DataObject) -> None:
    """Against a model applying each write in turn: a file cut anywhere, or with any
    byte changed, reads as the state after the last write wholly before the damage."""
    path = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
    path.mkdir()
    f = state_file.SegmentFile(path)
    model: dict[bytes, bytes] = {}
    states, ends = [dict(model)], [0]
    for w in writes:
        f.append(w)
        for k, v in w.items():
            if v is None:
                model.pop(k, None)
            else:
                model[k] = v
        states.append(dict(model))
        ends.append(f.size)
    f.drain()
    raw = bytearray(f.path.read_bytes())
    assert len(raw) == ends[-1] and state_file.read(f.path) == (states[-1], len(raw))
    at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
    if raw and data.draw(st.booleans()):
        raw[at] ^= data.draw(st.integers(1, 255))
    else:
        del raw[at:]
    f.path.write_bytes(bytes(raw))
    last = max(i for i, e in enumerate(ends) if e <= at)
    assert state_file.read(f.path) == (states[last], ends[last])
    assert f.load() == states[last] and f.size == ends[last]


_KILLED_BEFORE_FLUSH = """
import os, sys
from engine.rules.model import NO_TIME
from engine.streams.state import PersonState, ShardStore, encode
store = ShardStore(__import__("pathlib").Path(sys.argv[1]), NO_TIME)
for i in range(6):
    store.apply({f"person{j:02d}": encode(PersonState(c=100 * i)) for j in range(50)},
                changelog_offset=i)
    if i == 2:
        store.flush()
        store.file.drain()  # on disk, so that only the unflushed applies are at stake
assert store.get("person00").c == 500  # applied, though not written to the file
os.kill(os.getpid(), 9)
"""


def test_applied_state_reaches_the_file_when_flushed_and_a_kill_loses_only_the_rest(
        tmp_path: Path) -> None:
    """DECISIONS 106: applies wait in memory for the next flush; a kill before it
    leaves the last flushed checkpoint (the changelog has the rest)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_FLUSH, str(tmp_path / "p")],
                       cwd=Path(__file__).parents[2], capture_output=True)
    assert r.returncode == -9, r.stderr.decode()
    store = ShardStore(tmp_path / "p", NO_TIME)
    assert store.meta.changelog_offset == 2
    assert {store.get(f"person{j:02d}").c for j in range(50)} == {200}
    store.close()


def _on_disk(store: ShardStore) -> dict[str, bytes]:
    """What the store's checkpoint file holds once the writes handed over landed."""
    store.file.drain()
    return {k.decode(): v for k, v in checkpointed(store.path).items()}


def test_a_store_flushes_by_size_and_by_time_and_on_close(tmp_path: Path) -> None:
    value = encode(PersonState(c=1))
    small = ShardStore(tmp_path / "a", NO_TIME, flush_bytes=10 * len(value),
                       flush_seconds=3600)
    small.apply({f"person{j:02d}": value for j in range(5)}, 0)
    assert "person00" not in _on_disk(small) and small.value("person00") == value
    assert small.get("person00").c == 1
    small.apply({f"person{j:02d}": value for j in range(5, 10)}, 1)
    assert _on_disk(small).get("person09") == value and not small.unflushed
    small.close()
    slow = ShardStore(tmp_path / "b", NO_TIME, flush_bytes=1 << 30, flush_seconds=0.2)
    slow.apply({"person00": value}, 0)
    assert "person00" not in _on_disk(slow)
    import time
    time.sleep(0.25)
    slow.apply({"person01": value}, 1)
    held = _on_disk(slow)
    assert held.get("person00") == value == held.get("person01")
    slow.apply({"person02": value, "person00": None}, 2)
    slow.close()
    again = ShardStore(tmp_path / "b", NO_TIME)
    assert again.meta.changelog_offset == 2
    assert _on_disk(again).get("person02") == value and "person00" not in _on_disk(again)
    again.close()


def test_a_discarded_batch_goes_back_to_the_state_as_applied_not_as_flushed(
        tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "p", NO_TIME, flush_bytes=1 << 30, flush_seconds=3600)
    store.apply({"personAA": encode(PersonState(c=1))}, 0)
    store.flush()
    store.apply({"personAA": encode(PersonState(c=2)),
                 WAIT_PREFIX + "personBB": encode(5)}, 1)
    store.meta.stream_time = 99
    store.apply({"personAA": encode(PersonState(c=3))}, 2)  # not flushed
    store.get("personAA").c = 4  # a batch that failed half-way had changed it
    store.meta.stream_time = 123
    store.discard_unapplied(timeout=10)
    assert store.get("personAA").c == 3 and store.meta.stream_time == 99
    assert store.meta.changelog_offset == 2 and store.parked == {"personBB": 15}
    store.close()


def test_restore_applies_only_newer_changelog_records(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "p1", NO_TIME)
    a, b = PersonState(c=1), PersonState(c=2)
    store.restore([(b"personAA", encode(a), 0, None), (b"personAA", encode(b), 1, None),
                   (META_KEY.encode(), encode(store.meta.__class__(stream_time=7)), 2, None)])
    assert store.get("personAA").c == 2 and store.meta.stream_time == 7
    store.restore([(b"personAA", encode(a), 1, None)])  # already applied: ignored
    assert store.get("personAA").c == 2
    store.close()


# a few keys, so that one key is written, deleted and written again within a chunk;
# now and then a fence (a reset or not), the meta, and writers with their fence tags
_KEY_NAMES = [b"personAA", b"personBB", b"personCC", (WAIT_PREFIX + "pA").encode()]
_RECORDS = st.lists(st.one_of(
    st.tuples(st.sampled_from(_KEY_NAMES), st.one_of(st.none(), st.binary(min_size=1, max_size=4))),
    st.tuples(st.just(FENCE_KEY), st.booleans()),
    st.tuples(st.just(META_KEY.encode()), st.integers(0, 9))), max_size=40)


def _changelog(ops: list[tuple[bytes, Any]], tags: list[int | None]) -> list[ChangelogRecord]:
    out: list[ChangelogRecord] = []
    for off, ((k, v), tag) in enumerate(zip(ops, tags, strict=True)):
        if k == FENCE_KEY:
            v = encode(Fence(reset=v))
        elif k == META_KEY.encode():
            v = encode(ShardMeta(stream_time=v))
        out.append((k, v, off, tag))
    return out


def _replayed(records: list[ChangelogRecord]) -> tuple[dict[bytes, bytes], int, int]:
    """The rules of a changelog, one record at a time: (what is stored, stream time,
    records ignored as a fenced-off writer's)."""
    stored: dict[bytes, bytes] = {}
    fence, stream_time, ignored = -1, NO_TIME, 0
    for k, v, off, tag in records:
        if k == FENCE_KEY:
            fence = off
            if msgspec.msgpack.decode(cast(bytes, v), type=Fence).reset:
                stored, stream_time = {}, NO_TIME
        elif tag is not None and tag < fence:
            ignored += 1
        else:
            if tag is not None:  # a writer's record names its fence (DECISIONS 148)
                fence = max(fence, tag)
            if k == META_KEY.encode():
                meta = msgspec.msgpack.decode(cast(bytes, v), type=ShardMeta)
                stream_time = max(stream_time, meta.stream_time)
            elif v is None:
                stored.pop(k, None)
            else:
                stored[k] = v
    return stored, stream_time, ignored


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_RECORDS, data=st.data(), flushed=st.booleans())
def test_restore_leaves_the_state_its_changelog_records_make_one_by_one(
        tmp_path: Path, ops: list[tuple[bytes, Any]], data: st.DataObject,
        flushed: bool) -> None:
    """Against a model that applies each record in turn: a restore writes a chunk's
    records as one update of the state in memory (DECISIONS 144), yet of a key
    written more than once the last record still decides its value or its absence,
    a zombie's records are still ignored and a reset still voids what came before,
    across chunks, with the local copy flushed between them or not."""
    # each record its own writer, or one writer for all (a zombie's, once a fence
    # came after its own)
    tag = st.sampled_from([None, 0, 3, 7])
    tags: list[int | None] = data.draw(st.lists(tag, min_size=len(ops), max_size=len(ops))
                                       | tag.map(lambda t: [t] * len(ops)))
    records = _changelog(ops, tags)
    cut = data.draw(st.integers(0, len(records)))
    path = tmp_path / f"p{len(list(tmp_path.iterdir()))}"
    store = ShardStore(path, NO_TIME)
    ignored = store.restore(records[:cut])
    if flushed:
        store.close()
        store = ShardStore(path, NO_TIME)
    ignored += store.restore(records[cut:])
    ignored += store.restore(records[:cut])  # read again: already applied, nothing changes
    stored, stream_time, want_ignored = _replayed(records)
    assert {k: store.value(k.decode()) for k in _KEY_NAMES} == {
        k: stored.get(k) for k in _KEY_NAMES}
    assert (store.meta.stream_time, ignored) == (stream_time, want_ignored)
    if records:
        assert store.meta.changelog_offset == records[-1][2]
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
    # the keys the owner writes again, so that a zombie's record is not their newest
    assert store.fenced_off == {"personAA", "personBB"}
    store.close()
    # the checkpoint remembers the fence: a later tail is judged against it
    again = ShardStore(tmp_path / "p2", NO_TIME)
    assert again.restore([(b"personBB", encode(PersonState(c=7)), 6, 0)]) == 1
    assert again.restore([(b"personBB", encode(PersonState(c=8)), 7, 2)]) == 0
    assert again.get("personBB").c == 8
    again.close()


def test_restore_ignores_a_zombie_after_the_owner_s_record_where_its_fence_is_gone(
        tmp_path: Path) -> None:
    """Compaction keeps only the newest fence: once a third worker's fence is written,
    the fence that superseded a zombie may be gone. The record of the owner it
    fenced out, read before the zombie's, still names it (DECISIONS 148)."""
    store = ShardStore(tmp_path / "p2", NO_TIME)
    ignored = store.restore([
        (b"personAA", encode(PersonState(c=100)), 1, 0),      # A (its fence: gone)
        (b"personAA", encode(PersonState(c=300)), 3, 2),      # B (its fence: gone)
        (b"personAA", encode(PersonState(c=100)), 4, 0),      # A, a zombie: stale
        (b"personBB", encode(PersonState(c=5)), 5, 0),        # A, a zombie: stale
        (META_KEY.encode(), encode(ShardMeta(stream_time=9)), 6, 0),  # A's meta
        (FENCE_KEY, encode(Fence()), 7, None),                # C takes over
    ])
    assert ignored == 3
    assert store.get("personAA").c == 300 and store.value("personBB") is None
    assert store.meta.stream_time == NO_TIME and store.meta.fence == 7
    assert store.fenced_off == {"personAA", "personBB", META_KEY}
    store.close()


def test_the_keys_a_restore_owes_outlive_the_process(tmp_path: Path) -> None:
    """The keys of which a restore ignored a zombie's record are kept with the
    restore's write: the copy's position is past that record, so a take-over after a
    kill (or after a take-over cancelled before the owner wrote them again) would
    not read it again, and the key would keep the zombie's record as its newest
    (DECISIONS 140). Written again, they are owed no more; a reset voids them."""
    fence = encode(Fence())
    store = ShardStore(tmp_path / "p0", NO_TIME)
    assert store.restore([
        (FENCE_KEY, fence, 0, None),
        (b"personAA", encode(PersonState(c=100)), 1, 0),
        (FENCE_KEY, fence, 2, None),
        (b"personAA", encode(PersonState(c=9)), 3, 0),  # zombies'
        (b"personBB", encode(PersonState(c=9)), 4, 0),
    ]) == 2
    store.close()
    again = ShardStore(tmp_path / "p0", NO_TIME)
    assert again.meta.changelog_offset == 4 and again.fenced_off == {"personAA", "personBB"}
    again.written_again({"personAA"})
    again.close()
    again = ShardStore(tmp_path / "p0", NO_TIME)
    assert again.fenced_off == {"personBB"}
    assert again.restore([(FENCE_KEY, encode(Fence(reset=True)), 5, None)]) == 0
    assert again.fenced_off == set()
    again.close()
    again = ShardStore(tmp_path / "p0", NO_TIME)
    assert again.fenced_off == set()
    again.close()


def test_compaction_can_leave_a_person_only_a_zombies_ignored_record(tmp_path: Path) -> None:
    """Why an owner writes again what a zombie wrote after it (docs/RELIABILITY.md,
    "Zombies and compaction"; recovery.write_again): a zombie's state record for a
    person, newer than the owner's, is the one compaction keeps (the newest of its
    key), and a restore from scratch ignores it, so the person's state would be gone
    there. A restore that stopped ignoring the zombie, or a compaction of another
    kind, fails this test, and the reason for the engine's rewrite with it."""
    old_owner, new_owner = PersonState(c=100), PersonState(c=300)
    log: list[ChangelogRecord] = [
        (b"personAA", encode(old_owner), 0, -1),         # written under the first owner
        (FENCE_KEY, encode(Fence()), 1, None),           # a new owner takes over
        (b"personAA", encode(new_owner), 2, 1),          # its own record of the person
        (b"personAA", encode(PersonState(c=200)), 3, -1)]  # the zombie's, later
    whole = ShardStore(tmp_path / "whole", NO_TIME)
    assert whole.restore(log) == 1
    assert whole.get("personAA").c == 300  # uncompacted: the owner's value
    whole.close()
    kept = builders.compacted(log)
    assert [r[2] for r in kept] == [1, 3]
    scratch = ShardStore(tmp_path / "scratch", NO_TIME)
    assert scratch.restore(kept) == 1
    assert scratch.value("personAA") is None  # the person's state is lost there
    scratch.close()


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
    # without received_at (a chunk's record): no deadline (DECISIONS 118)
    st.tuples(st.just("timeless"), st.sampled_from(_PEOPLE), st.integers(0, 60)),
    st.tuples(st.just("enr"), st.sampled_from(_PEOPLE), st.integers(0, 60)),
    st.tuples(st.just("expire"), st.just(""), st.integers(0, 60)),
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, min_size=1, max_size=12))
def test_wait_index_equals_a_scan_of_every_person_also_after_restore(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, int]]) -> None:
    """The ``__wait__/`` keys (what a take-over reads instead of every person) always
    name exactly the people with waiting records, their earliest deadline and how many
    records wait: the reference is a decode of every person; both in the local copy
    and in a store restored from the changelog records the batches wrote (tombstones
    included)."""
    tmp = tmp_path_factory.mktemp("wait")
    f = Feed(tmp)
    written: list[dict[str, bytes | None]] = []
    commit = f.logic.commit

    def logged(changelog_offset: int) -> None:
        written.append(f.logic.snapshot())
        commit(changelog_offset)

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
            extra: dict[str, Any] = {"kind": "refund", "original_txn_id": "missing",
                                     "amount": 10} if what == "refund" else {}
            f.poll("transaction", [txn(f"t{n}", None if what == "timeless" else ts,
                                       person=person, **extra)])
        scan = {}
        f.store.flush()
        for k, v in f.store.items():
            if is_person_key(k):
                waiting = decode_person(v).parked
                if waiting:
                    first = min((p.received for p in waiting if p.received != NO_TIME),
                                default=NO_DEADLINE)
                    scan[k.decode()] = (first + timeout, len(waiting))
        assert _index(f.store.parked) == scan
        f.store.rebuild_parked_index(timeout)
        assert _index(f.store.parked) == scan
    f.store.close()
    restored = ShardStore(tmp / "restored", NO_TIME)
    offset = 0
    records: list[ChangelogRecord] = []
    for snap in written:
        for name, value in snap.items():
            records.append((name.encode(), value, offset, None))
            offset += 1
    restored.restore(records)
    restored.rebuild_parked_index(timeout)
    assert _index(restored.parked) == scan
    restored.close()


def _index(index: WaitIndex) -> dict[str, tuple[int, int]]:
    """The wait index as person -> (deadline, records waiting); checks the total."""
    got = {k: (index[k], index.count(k)) for k in index}
    assert index.records == sum(n for _, n in got.values())
    return got


def test_a_wait_key_of_the_format_before_the_count_counts_one_record() -> None:
    assert decode_wait(encode(5)) == (5, 1)
    assert decode_wait(encode_wait(5, 3)) == (5, 3)


# few people and deadlines, so that one person is parked again and again
_WAITERS = st.sampled_from([f"p{i}" for i in range(5)])
_WAIT_OPS = st.lists(st.one_of(
    st.tuples(st.just("park"), _WAITERS, st.integers(0, 12)),
    st.tuples(st.just("release"), _WAITERS, st.just(0)),
    st.tuples(st.just("pop"), _WAITERS, st.just(0)),
    st.tuples(st.just("due"), st.just(""), st.integers(0, 14)),
    st.tuples(st.just("clear"), st.just(""), st.just(0))), max_size=120)


@settings(max_examples=300, deadline=None)
@given(_WAIT_OPS)
# parked again with another deadline, then with the first one again: the person is due
# once, not once per heap entry
@example([("park", "p1", 5), ("park", "p1", 7), ("park", "p1", 5), ("due", "", 10),
          ("due", "", 10)])
def test_the_wait_index_finds_what_a_scan_of_every_waiting_person_finds(
        ops: list[tuple[str, str, int]]) -> None:
    """Against the dict it replaced (a scan of every waiting person per decide): the
    same people due, in the same order, whatever was parked, re-parked, released."""
    got, ref = WaitIndex(), dict[str, int]()
    for op, key, t in ops:
        if op == "park":
            got[key] = ref[key] = t
        elif op == "release" and key in ref:
            del got[key], ref[key]
        elif op == "pop":
            assert got.pop(key) == ref.pop(key, None)
        elif op == "due":
            assert got.due_before(t) == [k for k, d in ref.items() if d < t]
        elif op == "clear":
            got.clear()
            ref.clear()
        assert list(got) == list(ref) and len(got) == len(ref)
        assert got.keys() == ref.keys() and all(got.get(k) == d for k, d in ref.items())


def test_an_ended_wait_deletes_its_index_key_locally_and_in_the_changelog(
        tmp_path: Path) -> None:
    f = Feed(tmp_path)
    f.poll("transaction", [txn("waits", T0)])
    key = WAIT_PREFIX + "Wait0001"
    assert f.store.value(key) is not None
    # the enrollment ends the wait: the index key goes, as a tombstone
    staged: list[dict[str, bytes | None]] = []
    commit = f.logic.commit

    def logged(changelog_offset: int) -> None:
        staged.append(f.logic.snapshot())
        commit(changelog_offset)

    f.logic.commit = logged  # type: ignore[method-assign]
    f.poll("enrollment", [{"rec": builders.enr("Wait0001"), "ts": T0 + 1}])
    assert staged[0][WAIT_PREFIX + "Wait0001"] is None
    assert f.store.value(key) is None and not f.store.parked
    f.store.rebuild_parked_index(DEFAULT_CAMPAIGN.park_timeout)  # not flushed yet
    assert not f.store.parked
    f.store.close()


def test_people_in_memory_are_not_walked_by_the_cycle_collector() -> None:
    """A decoded person, its entries and its waits are untracked (state.py: a full
    collection walked every cached one)."""
    import gc

    st = PersonState(enr_op="paypay", c=100, entries=_entry())
    st.parked.append(Parked(1, 1, "paypay", "t2", None, 5, 0, 0, 0, "t/0/1"))
    back = decode_person(encode(st))
    assert back == st
    for obj in (back, back.parked[0]):
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


def test_a_refund_changes_only_its_originals_row_and_adds_its_own(tmp_path: Path) -> None:
    """Entries are packed rows in the order first seen; a batch writes the others
    back unchanged."""
    f = Feed(tmp_path)
    f.poll("enrollment", [{"rec": builders.enr(PERSON), "ts": T0}])
    f.poll("transaction", [txn(f"h{i}", T0 + 1 + i) for i in range(5)])
    before = _rows(decode_person(f.stored()).entries).copy()
    assert before["key"].tolist() == entry_keys(["paypay"] * 5,
                                                [f"h{i}" for i in range(5)]).tolist()
    f.poll("transaction", [txn("back", T0 + 11, kind="refund", original_txn_id="h2",
                               amount=1000)])
    after = _rows(decode_person(f.stored()).entries)
    assert len(after) == 6
    changed = [i for i in range(5) if after[i].tobytes() != before[i].tobytes()]
    assert changed == [2] and after[2]["refunded"] == 1000
    assert after[5]["key"] == entry_keys(["paypay"], ["back"])[0]
    assert after[5]["kind"] == 2 and after[5]["amount"] == 1000
    # the refund's fingerprint covers its original; the originals' has none
    at = np.array([parse_utc("2020-09-13T12:00:00Z")])
    assert after[5]["fp"] == fingerprints(at, entry_keys(["paypay"], ["h2"]))[0]
    assert before[2]["fp"] == fingerprints(at, np.zeros(1, np.uint64))[0] != after[5]["fp"]
    f.store.close()


def test_the_kernel_is_handed_only_the_stored_entries_a_record_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long history is read, not registered (DECISIONS 129): a batch naming two of
    forty stored transactions (a duplicate and a refund's original) gives the kernel
    those two, decides as if it had all, and writes the other rows back unchanged."""
    handed: list[int] = []
    real = shard.kernel.decide

    def spy(people: Any, recs: Any, reg: Any, n_entries: int, *rest: Any) -> Any:
        handed.append(n_entries)
        return real(people, recs, reg, n_entries, *rest)

    monkeypatch.setattr(shard.kernel, "decide", spy)
    f = Feed(tmp_path)
    f.poll("enrollment", [{"rec": builders.enr(PERSON), "ts": T0}])
    f.poll("transaction", [txn(f"h{i}", T0 + 1 + i, amount=100) for i in range(40)])
    before = _rows(decode_person(f.stored()).entries).copy()
    handed.clear()
    res = f.poll("transaction", [txn("h3", T0 + 50, amount=100),
                                 txn("back", T0 + 51, kind="refund", original_txn_id="h7",
                                     amount=60),
                                 txn("fresh", T0 + 52, amount=100)])
    assert handed == [2]
    assert reasons(res) == {"h3": "DUPLICATE", "back": "granted", "fresh": "granted"}
    after = _rows(decode_person(f.stored()).entries)
    assert len(after) == 42
    changed = [i for i in range(40) if after[i].tobytes() != before[i].tobytes()]
    assert changed == [7] and after[7]["refunded"] == 60
    assert after[40:]["key"].tolist() == entry_keys(["paypay"] * 2, ["back", "fresh"]).tolist()
    # a second refund of the same original sees the first one's sum
    res = f.poll("transaction", [txn("back2", T0 + 53, kind="refund", original_txn_id="h7",
                                     amount=50)])
    assert reasons(res) == {"back2": "REFUND_EXCEEDS_ORIGINAL"} and handed[-1] == 1
    f.store.close()


class _OldPerson(msgspec.Struct, array_like=True):
    """A person as stored before DECISIONS 101: entries by ``operator_id/txn_id``."""

    enr_op: str | None
    enr_kind: int
    enr_day: int
    c: int
    r: int
    txns: dict[str, TxnEntry]
    parked: list[Parked]
    marks: dict[str, int]


class _WidePerson(msgspec.Struct, array_like=True):
    """A person as stored under DECISIONS 101: 42-byte rows with time and original."""

    enr_op: str | None
    enr_kind: int
    enr_day: int
    c: int
    r: int
    txns: dict[str, msgspec.Raw]
    parked: list[Parked]
    marks: dict[str, int]
    entries: bytes


def _as_old(st: PersonState, recs: list[dict[str, Any]]) -> bytes:
    """``st`` written in the format before DECISIONS 101; ``recs``: the transactions
    of its entries, in order (the rows keep neither ids nor times)."""
    rows = _rows(st.entries)
    txns = {f"paypay/{t['txn_id']}": TxnEntry(
        int(e["kind"]), int(e["amount"]), parse_utc(t["occurred_at"]),
        t.get("original_txn_id"), int(e["status"]), int(e["refunded"]))
        for e, t in zip(rows, recs, strict=True)}
    return encode(_OldPerson(st.enr_op, st.enr_kind, st.enr_day, st.c, st.r, txns,
                             st.parked, _named(st.marks)))


def _as_wide(st: PersonState, recs: list[dict[str, Any]]) -> bytes:
    """``st`` written in the format of DECISIONS 101 (see :func:`_as_old`)."""
    rows = _rows(st.entries)
    wide = np.zeros(len(rows), WIDE_ENTRY)
    for name in ("key", "amount", "refunded", "kind", "status"):
        wide[name] = rows[name]
    wide["at"] = [parse_utc(t["occurred_at"]) for t in recs]
    wide["orig"] = entry_keys(["paypay"] * len(recs),
                              [t.get("original_txn_id") for t in recs])
    return encode(_WidePerson(st.enr_op, st.enr_kind, st.enr_day, st.c, st.r, {},
                              st.parked, _named(st.marks), wide.tobytes()))


def _named(marks: dict[int, int]) -> dict[str, int]:
    """Marks by source name, as stored before DECISIONS 103 (Feed's sources)."""
    named = {n: marks[source_key(n)] for n in ("enrollment/0", "transaction/0")
             if source_key(n) in marks}
    assert len(named) == len(marks) == 2
    return named


_FORMATS = {"txns map (before 101)": _as_old, "42-byte rows (101)": _as_wide}


@pytest.mark.parametrize("write", _FORMATS.values(), ids=_FORMATS.keys())
def test_a_person_stored_in_an_old_format_reads_as_the_same_state(
        tmp_path: Path, write: Callable[[PersonState, list[dict[str, Any]]], bytes]) -> None:
    """Changelogs and local copies written before the current rows still read:
    the old entries become the rows the new code would have written."""
    f = Feed(tmp_path)
    f.poll("enrollment", [{"rec": builders.enr(PERSON), "ts": T0}])
    items = [txn("h0", T0 + 1), txn("h1", T0 + 2),
             txn("back", T0 + 3, kind="refund", original_txn_id="h0", amount=400)]
    f.poll("transaction", items)
    new = decode_person(f.stored())
    assert new.n_entries == 3 and _rows(new.entries)["refunded"].tolist() == [400, 0, 0]
    old = write(new, [i["rec"] for i in items])
    assert new.entries not in old  # the rows are in another format there
    assert decode_person(old) == new
    f.store.close()


@pytest.mark.parametrize("write", _FORMATS.values(), ids=_FORMATS.keys())
def test_decisions_go_on_from_a_person_stored_in_an_old_format(
        tmp_path: Path, write: Callable[[PersonState, list[dict[str, Any]]], bytes]) -> None:
    """A duplicate of an old-format entry is found (and a changed time or original
    makes it conflicting), and a refund is matched to it."""
    from tests.streams.feed import reasons

    f = Feed(tmp_path)
    f.poll("enrollment", [{"rec": builders.enr(PERSON), "ts": T0}])
    items = [txn("h0", T0 + 1), txn("h1", T0 + 2), txn("r0", T0 + 3, kind="refund",
                                                     original_txn_id="h0", amount=10)]
    f.poll("transaction", items)
    old = write(decode_person(f.stored()), [i["rec"] for i in items])
    f.store.flush()
    f.store.data[PERSON.encode()] = old  # as a restore of an old changelog writes it
    moved = txn("h0", T0 + 4)
    moved["rec"]["occurred_at"] = "2020-09-13T12:00:01Z"
    res = f.poll("transaction", [txn("h0", T0 + 4),
                                 moved,
                                 txn("r0", T0 + 4, kind="refund", original_txn_id="h0",
                                     amount=10),
                                 txn("r0", T0 + 4, kind="refund", original_txn_id="h1",
                                     amount=10),
                                 txn("h1", T0 + 5, amount=999),
                                 txn("back", T0 + 6, kind="refund", original_txn_id="h1",
                                     amount=4000),
                                 txn("more", T0 + 7, kind="refund", original_txn_id="h1",
                                     amount=1)])
    assert [(r["txn_id"], r["reason"]) for _, r in res.rejections] == [
        ("h0", "DUPLICATE"), ("h0", "CONFLICTING_DUPLICATE"), ("r0", "DUPLICATE"),
        ("r0", "CONFLICTING_DUPLICATE"), ("h1", "CONFLICTING_DUPLICATE"),
        ("more", "REFUND_EXCEEDS_ORIGINAL")]
    assert reasons(res)["back"] == "granted" and len(res.grants) == 1
    assert decode_person(f.stored()).n_entries == 5
    f.store.close()


def test_state_keeps_a_decided_transactions_id_only_as_a_hash(tmp_path: Path) -> None:
    """docs/PRIVACY.md: a decided transaction's id is not in the stored person (its
    key is a hash); one that waits keeps its id, needed for its outcome."""
    f = Feed(tmp_path)
    f.poll("transaction", [txn("waiting-for-enrolment-7", T0)])
    assert b"waiting-for-enrolment-7" in f.stored()
    f.poll("enrollment", [{"rec": builders.enr(PERSON), "ts": T0 + 1}])
    f.poll("transaction", [txn("decided-at-once-8", T0 + 2)])
    blob = f.stored()
    assert decode_person(blob).n_entries == 2
    assert b"waiting-for-enrolment-7" not in blob and b"decided-at-once-8" not in blob
    f.store.close()


def test_a_checkpoint_file_is_rewritten_whole_once_it_has_outgrown_its_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same people written again and again: the file stays within twice the
    state plus the margin, and a reopen reads the state as last applied."""
    monkeypatch.setattr(state_file, "REWRITE_SLACK", 4096)
    store = ShardStore(tmp_path / "p", NO_TIME, flush_bytes=0)
    sizes = []
    for i in range(200):
        store.apply({f"person{j:02d}": encode(PersonState(c=i)) for j in range(20)}, i)
        sizes.append(store.file.size)
    whole = state_file.segment_size(list(store.data), list(store.data.values()))
    assert max(sizes) <= 2 * whole + 4096 + whole  # at most one write past the bound
    assert min(sizes[100:]) < max(sizes[100:])  # it was rewritten, more than once
    store.close()
    again = ShardStore(tmp_path / "p", NO_TIME)
    assert again.meta.changelog_offset == 199
    assert {again.get(f"person{j:02d}").c for j in range(20)} == {199}


def test_a_store_of_the_rocksdb_format_is_removed_and_restored_from_the_changelog(
        tmp_path: Path) -> None:
    """A directory RocksDB wrote (before DECISIONS 144) is not read: its files (people's
    data) go, and the store starts empty, with no changelog position."""
    old = tmp_path / "p"
    old.mkdir()
    (old / "CURRENT").write_text("MANIFEST-000001\n")
    (old / "000004.sst").write_bytes(b"person00 and more")
    store = ShardStore(old, NO_TIME)
    assert store.meta.changelog_offset == -1 and not store.data
    assert sorted(f.name for f in old.iterdir()) == []
    store.apply({"person00": encode(PersonState(c=1))}, 0)
    store.close()
    assert sorted(f.name for f in old.iterdir()) == [state_file.FILE_NAME]


def test_a_restore_of_most_of_the_state_reaches_the_file_whole_not_piece_by_piece(
        tmp_path: Path) -> None:
    """A take-over from scratch writes its restored state as one segment: the file is
    not a second copy of the restore in appended pieces. A small restore on top of a
    large state appends."""
    store = ShardStore(tmp_path / "p", NO_TIME, flush_bytes=1)
    people: list[ChangelogRecord] = [
        (f"person{j:02d}".encode(), encode(PersonState(c=j)), j + 1, None) for j in range(60)]
    store.restore([(FENCE_KEY, encode(Fence()), 0, None), *people[:30]])
    store.restore(people[30:])
    store.flush()
    store.file.drain()
    whole = state_file.segment_size(list(store.data), list(store.data.values()))
    assert store.file.size == whole == (tmp_path / "p" / state_file.FILE_NAME).stat().st_size
    store.restore([(b"person00", encode(PersonState(c=99)), 61, None)])
    store.flush()
    store.close()
    assert store.file.size > whole  # appended
    again = ShardStore(tmp_path / "p", NO_TIME)
    assert again.get("person00").c == 99 and again.get("person59").c == 59
    assert again.meta.changelog_offset == 61


def test_a_failed_checkpoint_write_is_raised_by_the_next_flush(tmp_path: Path) -> None:
    """Writes land on the store's writer thread; one that fails is not lost in it."""
    store = ShardStore(tmp_path / "p", NO_TIME, flush_bytes=1)
    (tmp_path / "p" / state_file.FILE_NAME).mkdir()  # the file cannot be opened
    store.apply({"person00": encode(PersonState(c=1))}, 0)  # handed over, fails there
    import concurrent.futures
    assert store.file._last is not None
    concurrent.futures.wait([store.file._last])
    with pytest.raises(IsADirectoryError):
        store.apply({"person01": encode(PersonState(c=1))}, 1)
    with pytest.raises(IsADirectoryError):  # and by a close
        store.close()


def test_a_failed_write_stops_the_writes_after_it_and_is_raised_though_they_were_queued(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first of two queued writes fails: the second is not appended behind it (a
    torn segment would hide it from every load), and the error is not lost."""
    import threading
    f = state_file.SegmentFile(tmp_path)
    gate, calls = threading.Event(), []
    real = state_file.SegmentFile._append

    def failing_once(self: state_file.SegmentFile, parts: list[state_file.Part]) -> None:
        gate.wait()
        calls.append(len(parts))
        if len(calls) == 1:
            raise OSError("disk full")
        real(self, parts)

    monkeypatch.setattr(state_file.SegmentFile, "_append", failing_once)
    f.append({b"a": b"1"})
    f.append({b"b": b"2"})  # queued behind the first
    gate.set()
    with pytest.raises(OSError, match="disk full"):
        f.drain()
    assert calls == [5] and not f.path.exists()
    with pytest.raises(OSError, match="disk full"):
        f.append({b"c": b"3"})
