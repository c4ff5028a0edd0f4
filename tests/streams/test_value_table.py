"""The state's table of key bytes -> value bytes against a dict (DECISIONS 145)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.streams import value_table
from engine.streams.value_table import ValueTable, columns_of

# few distinct keys, so that puts replace and delete each other's keys often
_KEY = st.builds(lambda a, b: a + b, st.sampled_from([b"", b"__wait__/", b"pe"]),
                 st.binary(min_size=0, max_size=3))
_VALUE = st.none() | st.binary(max_size=40)
_BATCH = st.lists(st.tuples(_KEY, _VALUE), max_size=12)


@contextlib.contextmanager
def _evacuating_often(on: bool) -> Iterator[None]:
    """No slack, an arena evacuated a byte per byte put, and an index of four slots
    drained into a larger one a slot per record put: every stage of the arenas' and
    the index's life (growth, evacuation or draining under way, finished early, freed)
    within a small test."""
    with pytest.MonkeyPatch.context() as mp:
        if on:
            mp.setattr(value_table, "COMPACT_SLACK", 0)
            mp.setattr(value_table, "EVACUATE_MIN", 0)
            mp.setattr(value_table, "EVACUATE_PACE", 1)
            mp.setattr(value_table, "_MIN_SLOTS", 4)
            mp.setattr(value_table, "INDEX_AT_ONCE", 0)
            mp.setattr(value_table, "INDEX_MIN", 0)
            mp.setattr(value_table, "INDEX_PACE", 1)
        yield


def _put_both(table: ValueTable | None, model: dict[bytes, bytes],
              batch: list[tuple[bytes, bytes | None]]) -> None:
    """A batch into the table (if any) and into the dict it is checked against."""
    if table is not None and batch:
        table.put(*columns_of([k for k, _ in batch], [v for _, v in batch]))
    for k, v in batch:
        if v is None:
            model.pop(k, None)
        else:
            model[k] = v


def _snapshot_dict(snap: value_table.Snapshot) -> dict[bytes, bytes]:
    klen, vlen, body = snap.parts()
    raw = body.tobytes()
    keys_end = int(klen.sum())
    kends, vends = np.cumsum(klen).tolist(), (keys_end + np.cumsum(vlen)).tolist()
    return {raw[ke - k:ke]: raw[ve - v:ve]
            for ke, k, ve, v in zip(kends, klen.tolist(), vends, vlen.tolist(), strict=True)}


@settings(max_examples=300, deadline=None)
@given(st.lists(_BATCH, max_size=25), st.integers(0, 24), st.booleans())
def test_a_table_reads_as_a_dict_given_the_same_puts(
        batches: list[list[tuple[bytes, bytes | None]]], snap_at: int, tight: bool) -> None:
    """Each batch in order (a later record of a key wins, None deletes), with the arena
    grown, evacuated a few bytes a put (no slack, when ``tight``) and the index rebuilt
    along the way; a snapshot keeps reading as the state it was taken of while puts go
    on."""
    with _evacuating_often(tight):
        table, model = ValueTable(capacity=8), dict[bytes, bytes]()
        snap = snapped = None
        for i, batch in enumerate(batches):
            if i == snap_at:
                snap, snapped = table.snapshot(), dict(model)
            if i % 3 == 2:  # room made ahead, as a restore does
                table.reserve(len(batch), 16)
            _put_both(table, model, batch)
            assert len(table) == len(model)
            assert table.live_bytes == sum(len(k) + len(v) for k, v in model.items())
        assert dict(table.items()) == model
        asked = [*model, b"absent", b"pe"]
        assert table.values_of(asked) == [model.get(k) for k in asked]
        assert all((k in table) == (k in model) for k in asked)
        assert sorted(table.prefixed(b"__wait__/")) == sorted(
            (k, v) for k, v in model.items() if k.startswith(b"__wait__/"))
        assert _snapshot_dict(table.snapshot()) == model
        if snap is not None:
            assert _snapshot_dict(snap) == snapped


def test_compaction_keeps_memory_within_a_bound_under_rewrites() -> None:
    """The same 1,000 keys rewritten 200 times: the arenas stay under two and a half
    times the live bytes (1.25 × each, the old one while it is evacuated) and the
    margin each is given, not 200 times them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(value_table, "COMPACT_SLACK", 0)
        table = ValueTable()
        keys = [b"person%04d" % i for i in range(1000)]
        for round_ in range(200):
            table.update({k: bytes([round_ % 256]) * 100 for k in keys})
        assert table.values_of(keys[:2]) == [bytes([199]) * 100] * 2
        assert table.live_bytes == 1000 * 110
        assert sum(a.nbytes for a in table._arenas) <= 2.5 * table.live_bytes + (2 << 16)


@settings(max_examples=200, deadline=None)
@given(_BATCH, st.binary(max_size=20), st.lists(_BATCH, max_size=8), st.booleans())
def test_rows_pointing_into_an_adopted_arena_read_as_the_same_puts(
        first: list[tuple[bytes, bytes | None]], junk: bytes,
        later: list[list[tuple[bytes, bytes | None]]], tight: bool) -> None:
    """A checkpoint's load: bytes read into the arena (after some that are no row's),
    rows pointed at its keys and values in place; then puts, growth and compactions
    as for any table."""
    with _evacuating_often(tight):
        buf, kat, klen, vat, vlen = columns_of([k for k, _ in first], [v for _, v in first])
        arena = np.zeros(len(junk) + len(buf) + 4, np.uint8)
        arena[:len(junk)] = np.frombuffer(junk, np.uint8)
        arena[len(junk):len(junk) + len(buf)] = buf
        table, model = ValueTable(), dict[bytes, bytes]()
        table.adopt(arena, len(junk) + len(buf))
        table.refer(kat + len(junk), klen, vat + len(junk), vlen)
        _put_both(None, model, first)  # the table has them already
        for batch in later:
            _put_both(table, model, batch)
        assert dict(table.items()) == model
        assert table.live_bytes == sum(len(k) + len(v) for k, v in model.items())
        table.compact()
        assert dict(table.items()) == model and table.garbage == 0


def test_an_arena_is_evacuated_a_little_at_every_put() -> None:
    """Past the garbage share, a put moves a bounded number of the old arena's bytes
    (not all of them at once), and the old arena is freed when none is left."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(value_table, "COMPACT_SLACK", 0)
        table = ValueTable()
        keys = [b"p%05d" % i for i in range(20_000)]
        table.update({k: b"a" * 200 for k in keys})
        moved, freed = [], 0
        for round_ in range(30):
            for chunk in range(0, len(keys), 1000):
                cur, used, during = table._cur, table._used[table._cur], table._cursor >= 0
                table.update({k: bytes([round_]) * 200 for k in keys[chunk:chunk + 100]})
                if during and table._cur == cur:
                    moved.append(table._used[cur] - used - 100 * 206)
                    freed += table._cursor < 0 and not len(table._arenas[1 - cur])
        assert len(moved) > 10 and freed, (len(moved), freed)
        # a put of 100 rows moves at most pace × its bytes (+ the minimum) of old rows
        assert 0 < max(moved) <= (value_table.EVACUATE_PACE * 100 * 206
                                  + value_table.EVACUATE_MIN + 206)
        assert max(moved) < table.live_bytes // 2
        assert dict(table.items()) == {
            k: (bytes([29]) * 200 if i % 1000 < 100 else b"a" * 200)
            for i, k in enumerate(keys)}


def test_a_growing_table_never_copies_its_arena_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """New keys past the arena's end, with little garbage (the table grows), move the
    live rows to a larger arena a little at every put, as an evacuation does, not by
    a copy of the whole arena in one put (for a million people 0.56 s, in the first
    batch after a take-over, whose restore filled the arena it reserved)."""
    copied: list[int] = []
    real = value_table._grown

    def grown(a: np.ndarray, size: int) -> np.ndarray:
        if a.ndim == 1 and a.dtype == np.uint8:  # an arena, not the rows
            copied.append(len(a))
        return real(a, size)

    monkeypatch.setattr(value_table, "COMPACT_SLACK", 0)
    monkeypatch.setattr(value_table, "_grown", grown)
    table, model = ValueTable(capacity=1 << 12), {}
    switches, cur = 0, table._cur
    for round_ in range(300):
        batch = {b"k%06d" % (round_ * 40 + i): bytes([round_ % 256]) * 100
                 for i in range(40)}
        if round_ % 7 == 0:  # a few rewrites: some garbage, below the share
            batch[b"k%06d" % (round_ // 2)] = b"again"
        table.update(batch)
        model.update(batch)
        switches += table._cur != cur
        cur = table._cur
    assert switches >= 3
    assert max(copied) == 0, copied  # only empty arenas were ever grown
    assert dict(table.items()) == model


def test_a_growing_index_is_drained_a_little_at_every_put(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past INDEX_AT_ONCE keys an index that must grow is not rebuilt in one put (every
    key hashed: 0.15-0.42 s a million): the old one is drained into the larger one a
    bounded number of slots a put, a look-up asks both meanwhile, and a key deleted
    after its slot moved does not come back from the old one."""
    monkeypatch.setattr(value_table, "INDEX_AT_ONCE", 100)
    monkeypatch.setattr(value_table, "INDEX_MIN", 16)
    table, model = ValueTable(), dict[bytes, bytes]()
    drained: list[int] = []
    for round_ in range(60):
        batch: list[tuple[bytes, bytes | None]] = [
            (b"k%05d" % (round_ * 50 + i), b"v%d" % round_) for i in range(50)]
        # deletes and rewrites of keys from earlier rounds, some of them in the old index
        batch += [(b"k%05d" % (round_ * 37 % (round_ * 50 + 1)), None),
                  (b"k%05d" % (round_ * 13 % (round_ * 50 + 1)), b"again")]
        before = table._drained if len(table._old) else None
        _put_both(table, model, batch)
        if before is not None and len(table._old):
            drained.append(table._drained - before)
        asked = [k for k, _ in batch] + [b"k%05d" % i for i in range(0, round_ * 50, 97)]
        assert table.values_of(asked) == [model.get(k) for k in asked]
    assert drained and max(drained) <= value_table.INDEX_PACE * 52 + 16
    assert dict(table.items()) == model


def test_a_restores_reserve_leaves_rows_for_a_quarter_more() -> None:
    """The rows reserved for a restore have room for a quarter more keys, so the first
    new people after it do not copy every row into larger arrays (0.1 s a million)."""
    table = ValueTable()
    table.reserve(4000, 10)
    table.update({b"k%05d" % i: b"v" for i in range(4000)})  # the restore
    fields = table._row_fields
    table.update({b"n%05d" % i: b"v" for i in range(900)})  # people new after it
    assert table._row_fields is fields
    assert len(table) == 4900


def test_a_deleted_keys_row_number_is_taken_again() -> None:
    """Keys set and deleted over and over (the waits' index entries) do not grow the
    rows: a new key takes a deleted one's row."""
    table = ValueTable()
    keys = [b"__wait__/p%03d" % i for i in range(100)]
    for round_ in range(500):
        table.update({k: b"%d" % round_ for k in keys})
        table.update({k: None for k in keys[round_ % 2::2]})
    assert table._rows <= 2 * len(keys)
    assert len(table) == 50
