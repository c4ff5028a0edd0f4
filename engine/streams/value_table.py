"""Key bytes -> value bytes for one partition's state, without a Python object per key.

The store of DECISIONS 144 kept its applied values in a dict: two bytes objects and a
slot per person (about 130 B of overhead a person on top of a 271 B value), one Python
object made per record in a restore and per key in a load of the checkpoint. Here
(DECISIONS 145) keys and values lie in byte arenas; a row per key (which arena, where
the key and the value start, their lengths) and an open-addressing hash index of row
numbers find it. A restore and a rewrite of the checkpoint move columns (a buffer,
starts, lengths) through compiled loops; a load of the checkpoint reads the file into
an arena and points its rows where the keys and values already lie
(:meth:`ValueTable.adopt`): no copy, and no memory touched twice.

A put appends the key and its value to the current arena and points the key's row
there (a key keeps its row number for its life, so the index changes only for new and
deleted keys); the bytes it replaces are garbage. Once the current arena is full, a
new arena becomes the current one, with a quarter of the state as room if the garbage
is more than an eighth of the live bytes (and a margin), else as much room as the state
(the table grows), and the old one is **evacuated a little at every put** (its live
rows copied to the new one, a few times the bytes put): no pause proportional to the
state, as a whole compaction at once would make (0.2-0.9 s for a million people,
measured), or a copy of the arena into a larger one (0.56 s). The old arena is freed
once nothing points into it. The index grows the same way past INDEX_AT_ONCE keys: the
old one is drained into the larger one a little at every put. A :class:`Snapshot` (the
row arrays copied, the arenas shared: bytes a row points at are never changed) stays
valid while the table goes on: the checkpoint writer encodes it on its own thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numba
import numpy as np

from engine.rules.strings import put_bytes

_EMPTY = -1  # an index slot never used
_GONE = -2  # an index slot whose key was deleted (probing goes on past it)
# garbage tolerated beyond the share below before an arena is evacuated: a small table
# is not moved at every put
COMPACT_SLACK = 4 << 20
# an arena is evacuated once it is full and its garbage is more than this share of the
# live bytes (1 / GARBAGE_SHARE); the new one gets a quarter of the state as room, so
# memory stays near 1.25 times the state, and 2.5 times it while one is evacuated (a
# growing table's new arena has twice the state's size, so up to three times then)
GARBAGE_SHARE = 8
# bytes of the old arena's rows moved per byte put while it is evacuated: it must be
# empty before the new arena's room (a quarter of the state) is used up
EVACUATE_PACE = 8
EVACUATE_MIN = 1 << 16
_MIN_SLOTS = 1024
# an index that must grow past this many keys is drained into the larger one a little
# at every put (INDEX_PACE old slots a record, at least INDEX_MIN) rather than rebuilt
# at once: a rebuild hashed every key in one put, 0.15-0.42 s a million
INDEX_AT_ONCE = 1 << 16
INDEX_PACE = 8
INDEX_MIN = 1 << 12


@numba.njit(cache=True, nogil=True)
def _hash(src, at, n):  # type: ignore[no-untyped-def]
    """FNV-1a over the key's bytes, then a finalizer that spreads them to the low bits
    the index masks by."""
    h = np.uint64(0xCBF29CE484222325)
    for i in range(at, at + n):
        h = (h ^ np.uint64(src[i])) * np.uint64(0x100000001B3)
    h = (h ^ (h >> np.uint64(33))) * np.uint64(0xFF51AFD7ED558CCD)
    return h ^ (h >> np.uint64(33))


@numba.njit(cache=True, nogil=True)
def _equal(a, at, b, bt, n):  # type: ignore[no-untyped-def]
    """``a[at:at + n] == b[bt:bt + n]``, without making either slice."""
    for j in range(n):  # noqa: SIM110 (a loop: numba compiles no all() of a generator)
        if a[at + j] != b[bt + j]:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _probe(a0, a1, gen, kat, klen, slots, src, at, n, h):  # type: ignore[no-untyped-def]
    """(slot, row) of the key ``src[at:at + n]`` (hash ``h``) in the index ``slots``;
    row -1 when absent, the slot then the one a put takes (the first deleted one on
    its probe, else the empty one)."""
    mask = np.int64(len(slots) - 1)
    i = np.int64(h & np.uint64(mask))
    free = np.int64(-1)
    while True:
        r = slots[i]
        if r == _EMPTY:
            return (free if free >= 0 else i), -1
        if r == _GONE:
            if free < 0:
                free = i
        elif klen[r] == n and _equal(a0 if gen[r] == 0 else a1, kat[r], src, at, n):
            return i, r
        i = (i + 1) & mask


@numba.njit(cache=True, nogil=True)
def _find(a0, a1, gen, kat, klen, slots, old, src, at, n):  # type: ignore[no-untyped-def]
    """(slot, row, in_old) of the key ``src[at:at + n]``: looked up in the index, then
    in the ``old`` one while it is drained into it (empty otherwise); absent (row -1),
    the index's slot a put takes."""
    h = _hash(src, at, n)
    slot, r = _probe(a0, a1, gen, kat, klen, slots, src, at, n, h)
    if r < 0 and len(old):
        o, q = _probe(a0, a1, gen, kat, klen, old, src, at, n, h)
        if q >= 0:
            return o, q, True
    return slot, r, False


@numba.njit(cache=True, nogil=True)
def _put(a0, a1, cur, used, gen, kat, klen, vat, vlen, rows, free, nfree, slots, old,
         counts, src, key_at, key_len, value_at, value_len, copy):  # type: ignore[no-untyped-def]
    """Apply each (key, value) in order (value length -1: delete the key); the caller
    made room for every record. ``copy``: the records lie in ``src`` and are appended
    to arena ``cur``; else ``src`` is arena ``cur`` and the rows point where they lie.
    A new key takes a freed row number, else a new one. ``counts`` (live rows, live
    bytes, garbage of arena 0, of arena 1, deleted slots) is updated in place. Returns
    (bytes used in ``cur``, rows made, free row numbers)."""
    arena = a0 if cur == 0 else a1
    for i in range(len(key_at)):
        at, n = key_at[i], key_len[i]
        slot, r, in_old = _find(a0, a1, gen, kat, klen, slots, old, src, at, n)
        if r >= 0:
            size = klen[r] + vlen[r]
            counts[1] -= size
            counts[2 + gen[r]] += size
        m = value_len[i]
        if m < 0:
            if r >= 0:
                klen[r] = -1
                if in_old:
                    old[slot] = _GONE
                else:
                    slots[slot] = _GONE
                    counts[4] += 1
                counts[0] -= 1
                free[nfree] = r
                nfree += 1
            continue
        if r < 0:
            if nfree > 0:
                nfree -= 1
                r = free[nfree]
            else:
                r = rows
                rows += 1
            if slots[slot] == _GONE:
                counts[4] -= 1
            slots[slot] = r
            counts[0] += 1
        if copy:
            put_bytes(arena, used, src, at, at + n)
            put_bytes(arena, used + n, src, value_at[i], value_at[i] + m)
            kat[r], vat[r] = used, used + n
            used += n + m
        else:  # bytes of the arena that were garbage until now
            kat[r], vat[r] = at, value_at[i]
            counts[2 + cur] -= n + m
        gen[r] = cur
        klen[r], vlen[r] = n, m
        counts[1] += n + m
    return used, rows, nfree


@numba.njit(cache=True, nogil=True)
def _get(a0, a1, gen, kat, klen, slots, old, src, key_at, key_len):  # type: ignore[no-untyped-def]
    out = np.empty(len(key_at), np.int64)
    for i in range(len(key_at)):
        out[i] = _find(a0, a1, gen, kat, klen, slots, old, src, key_at[i], key_len[i])[1]
    return out


@numba.njit(cache=True, nogil=True)
def _drain(a0, a1, gen, kat, klen, slots, old, start, budget):  # type: ignore[no-untyped-def]
    """Move the keys of ``old``'s slots from ``start`` on into the index ``slots``, at
    most ``budget`` slots; a moved slot is marked deleted in ``old`` (its key is in the
    index now; probes go on past it). Returns the next slot to drain."""
    mask = np.int64(len(slots) - 1)
    end = min(start + budget, len(old))
    for j in range(start, end):
        r = old[j]
        if r >= 0:
            i = np.int64(_hash(a0 if gen[r] == 0 else a1, kat[r], klen[r]) & np.uint64(mask))
            while slots[i] != _EMPTY:
                i = (i + 1) & mask
            slots[i] = r
            old[j] = _GONE
    return end


@numba.njit(cache=True, nogil=True)
def _evacuate(a0, a1, old, used, gen, kat, klen, vat, vlen, cursor, rows, budget,
              counts):  # type: ignore[no-untyped-def]
    """Move the live rows of arena ``old`` from row ``cursor`` on to the other arena
    (appended from ``used``), key and value, until ``budget`` bytes are moved or every
    row is passed. Returns (the next cursor, bytes used in the other arena)."""
    src = a0 if old == 0 else a1
    dst = a1 if old == 0 else a0
    moved = 0
    while cursor < rows and moved < budget:
        r = cursor
        if klen[r] < 0 or gen[r] != old:
            cursor += 1
            continue
        n, m = klen[r], vlen[r]
        if used + n + m > len(dst):
            break  # no room left: the next put makes some, or evacuates the rest
        cursor += 1
        put_bytes(dst, used, src, kat[r], kat[r] + n)
        put_bytes(dst, used + n, src, vat[r], vat[r] + m)
        kat[r], vat[r] = used, used + n
        gen[r] = 1 - old
        used += n + m
        moved += n + m
        counts[2 + old] += n + m  # what stays behind in the old arena is garbage
    return cursor, used


@numba.njit(cache=True, nogil=True)
def _gather(a0, a1, gen, kat, klen, vat, vlen, out):  # type: ignore[no-untyped-def]
    """The rows' keys, then their values, each in row order, into ``out``."""
    p = 0
    for r in range(len(kat)):
        arena = a0 if gen[r] == 0 else a1
        p = put_bytes(out, p, arena, kat[r], kat[r] + klen[r])
    for r in range(len(vat)):
        arena = a0 if gen[r] == 0 else a1
        p = put_bytes(out, p, arena, vat[r], vat[r] + vlen[r])


@numba.njit(cache=True, nogil=True)
def _gather_rows(a0, a1, gen, vat, vlen, rows, b, b_at, b_size):  # type: ignore[no-untyped-def]
    """Each row's value (-1: the span ``b_at``, ``b_size`` of ``b`` instead, maybe
    empty) laid end to end: the buffer and its len + 1 offsets."""
    offs = np.zeros(len(rows) + 1, np.int64)
    for i in range(len(rows)):
        r = rows[i]
        offs[i + 1] = offs[i] + (vlen[r] if r >= 0 else b_size[i])
    out = np.empty(offs[-1], np.uint8)
    for i in range(len(rows)):
        r = rows[i]
        if r >= 0:
            arena = a0 if gen[r] == 0 else a1
            put_bytes(out, offs[i], arena, vat[r], vat[r] + vlen[r])
        else:
            put_bytes(out, offs[i], b, b_at[i], b_at[i] + b_size[i])
    return out, offs


@numba.njit(cache=True, nogil=True)
def _prefixed(a0, a1, gen, kat, klen, n_rows, prefix):  # type: ignore[no-untyped-def]
    out = np.empty(n_rows, np.int64)
    k = 0
    m = len(prefix)
    for r in range(n_rows):
        if klen[r] >= m and _equal(a0 if gen[r] == 0 else a1, kat[r], prefix, 0, m):
            out[k] = r
            k += 1
    return out[:k]


class Snapshot(NamedTuple):
    """The live rows of a table at one moment: the arenas (never changed where those
    rows point, so shared) and copies of the row columns."""

    a0: np.ndarray
    a1: np.ndarray
    gen: np.ndarray
    kat: np.ndarray
    klen: np.ndarray
    vat: np.ndarray
    vlen: np.ndarray

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(key lengths int32, value lengths int32, the keys' bytes then the values')."""
        out = np.empty(self.size, np.uint8)
        _gather(self.a0, self.a1, self.gen, self.kat, self.klen, self.vat, self.vlen, out)
        return self.klen.astype(np.int32), self.vlen.astype(np.int32), out

    @property
    def size(self) -> int:
        return int(self.klen.sum(dtype=np.int64)) + int(self.vlen.sum(dtype=np.int64))


def starts(lengths: np.ndarray) -> np.ndarray:
    """Where each of pieces of these lengths starts, laid end to end from 0."""
    out = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=out[1:])
    return out


def columns_of(keys: list[bytes], values: list[bytes | None]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keys and values (None: delete) as the columns :meth:`ValueTable.put` takes:
    (buffer, key starts, key lengths, value starts, value lengths)."""
    klen = np.fromiter(map(len, keys), np.int64, len(keys))
    vlen = value_lengths(values, np.int64)
    buf = np.frombuffer(b"".join([*keys, *filter(None, values)]), np.uint8)
    return buf, starts(klen), klen, starts(np.maximum(vlen, 0)) + int(klen.sum()), vlen


def value_lengths(values: list[bytes | None], dtype: type) -> np.ndarray:
    """Each value's length, -1 for None (a deletion)."""
    if None in values:
        return np.fromiter((-1 if v is None else len(v) for v in values), dtype, len(values))
    return np.fromiter(map(len, values), dtype, len(values))  # type: ignore[arg-type]


def cut(buf: np.ndarray | bytes, offs: np.ndarray) -> list[bytes]:
    """``buf`` cut at ``offs`` into bytes objects, by C-level slicing (no Python frame
    a piece)."""
    raw = buf if isinstance(buf, bytes) else buf.tobytes()
    ends = offs.tolist()
    return list(map(raw.__getitem__, map(slice, ends[:-1], ends[1:])))


def key_columns(keys: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys as (buffer, starts, lengths)."""
    klen = np.fromiter(map(len, keys), np.int64, len(keys))
    return np.frombuffer(b"".join(keys), np.uint8), starts(klen), klen


_NO_BYTES = np.empty(0, np.uint8)
_NO_SLOTS = np.empty(0, np.int64)


class ValueTable(Mapping[bytes, bytes]):
    """A mapping of key bytes to value bytes in arenas (the module's docstring).
    Batches go through :meth:`put` and :meth:`get_rows`; the mapping's methods make a
    bytes object per key asked, for the few keys (meta, tests, a locate) that want one.
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._arenas = [np.empty(capacity, np.uint8), np.empty(0, np.uint8)]
        self._used = [0, 0]
        self._cur = 0  # the arena puts go to
        self._cursor = -1  # the next row of the other arena to evacuate (-1: none is)
        # a row's fields side by side (one cache line, where five arrays took up to
        # five misses a put); the columns are views of it
        self._row_fields = np.zeros((1024, 5), np.int64)
        self._views()
        self._free = np.empty(1024, np.int64)  # row numbers of deleted keys
        self._nfree = 0
        self._rows = 0  # row numbers made
        self._slots = np.full(_MIN_SLOTS, _EMPTY, np.int64)
        self._old = _NO_SLOTS  # the index being drained into _slots (empty: none)
        self._drained = 0  # its next slot to drain
        # live rows, live bytes (keys and values), garbage bytes of arena 0 and of
        # arena 1, index slots marked deleted
        self._counts = np.zeros(5, np.int64)

    def _views(self) -> None:
        f = self._row_fields
        self._kat, self._vat, self._klen, self._vlen, self._gen = (
            f[:, 0], f[:, 1], f[:, 2], f[:, 3], f[:, 4])

    @property
    def live(self) -> int:
        return int(self._counts[0])

    @property
    def live_bytes(self) -> int:
        return int(self._counts[1])

    @property
    def garbage(self) -> int:
        return int(self._counts[2] + self._counts[3])

    # ------------------------------------------------------------------ batches
    def put(self, src: np.ndarray, key_at: np.ndarray, key_len: np.ndarray,
            value_at: np.ndarray, value_len: np.ndarray) -> None:
        """Set each key ``src[key_at:key_at + key_len]`` to its value, in order (a later
        one of the same key wins); a value length of -1 deletes the key."""
        n = len(key_at)
        if not n:
            return
        need = int(key_len.sum()) + int(np.maximum(value_len, 0).sum())
        self._room(n, need)
        self._put(src, key_at, key_len, value_at, value_len, True)
        if self._cursor >= 0:
            self._evacuate(EVACUATE_PACE * need + EVACUATE_MIN)
        if len(self._old):
            self._drain_index(INDEX_PACE * n + INDEX_MIN)

    def adopt(self, arena: np.ndarray, used: int) -> None:
        """Take ``arena[:used]`` (bytes read from a checkpoint file, say) as this empty
        table's arena, all of it garbage until :meth:`refer` points rows at it; the rest
        of ``arena`` is room for later puts."""
        assert not self._rows, "adopted by an empty table only"
        self._arenas[0], self._used[0], self._counts[2] = arena, used, used

    def refer(self, key_at: np.ndarray, key_len: np.ndarray, value_at: np.ndarray,
              value_len: np.ndarray) -> None:
        """:meth:`put` of keys and values that already lie in the arena (adopted): the
        rows point at them, nothing is copied."""
        if len(key_at):
            self._room(len(key_at), 0)  # rows and index; no arena bytes
            self._put(self._arenas[self._cur], key_at, key_len, value_at, value_len, False)

    def _put(self, src: np.ndarray, key_at: np.ndarray, key_len: np.ndarray,
             value_at: np.ndarray, value_len: np.ndarray, copy: bool) -> None:
        cur = self._cur
        self._used[cur], self._rows, self._nfree = _put(
            self._arenas[0], self._arenas[1], cur, self._used[cur], self._gen, self._kat,
            self._klen, self._vat, self._vlen, self._rows, self._free, self._nfree,
            self._slots, self._old, self._counts, src, key_at.astype(np.int64, copy=False),
            key_len.astype(np.int64, copy=False), value_at.astype(np.int64, copy=False),
            value_len.astype(np.int64, copy=False), copy)

    def update(self, writes: Mapping[bytes, bytes | None]) -> None:  # type: ignore[override]
        """:meth:`put` of a dict (None: delete)."""
        if writes:
            self.put(*columns_of(list(writes), list(writes.values())))

    def get_rows(self, keys: list[bytes]) -> np.ndarray:
        """Each key's row (-1: absent)."""
        if not keys:
            return np.empty(0, np.int64)
        src, kat, klen = key_columns(keys)
        return _get(self._arenas[0], self._arenas[1], self._gen, self._kat, self._klen,  # type: ignore[no-any-return]
                    self._slots, self._old, src, kat, klen)

    def gather(self, rows: np.ndarray, b: np.ndarray = _NO_BYTES,
               b_at: np.ndarray | None = None, b_size: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The rows' values laid end to end in one writable buffer, with ``len(rows) +
        1`` offsets; where a row is -1, the span ``b_at``, ``b_size`` of ``b`` (none:
        empty)."""
        if b_at is None or b_size is None:
            b_at = b_size = np.zeros(len(rows), np.int64)
        return _gather_rows(self._arenas[0], self._arenas[1], self._gen, self._vat,  # type: ignore[no-any-return]
                            self._vlen, rows, b, b_at, b_size)

    def values_of(self, keys: list[bytes]) -> list[bytes | None]:
        """Each key's value (None: absent), gathered in one compiled pass."""
        rows = self.get_rows(keys)
        got: list[bytes | None] = cut(*self.gather(rows))  # type: ignore[assignment]
        for i in np.flatnonzero(rows < 0).tolist():
            got[i] = None
        return got

    def _bytes(self, r: int, at: np.ndarray, size: np.ndarray) -> bytes:
        s = int(at[r])
        return self._arenas[int(self._gen[r])][s:s + int(size[r])].tobytes()

    def _live_rows(self) -> np.ndarray:
        return np.flatnonzero(self._klen[:self._rows] >= 0)

    def prefixed(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """The keys starting with ``prefix``, with their values (a compiled scan: no
        object per other key)."""
        rows = _prefixed(self._arenas[0], self._arenas[1], self._gen, self._kat, self._klen,
                         self._rows, np.frombuffer(prefix, np.uint8)).tolist()
        return [(self._bytes(r, self._kat, self._klen), self._bytes(r, self._vat, self._vlen))
                for r in rows]

    def snapshot(self) -> Snapshot:
        rows = self._live_rows()
        return Snapshot(self._arenas[0], self._arenas[1], self._gen[rows], self._kat[rows],
                        self._klen[rows], self._vat[rows], self._vlen[rows])

    @property
    def memory(self) -> int:
        """Bytes this table has written (its arenas up to their last put: live and
        superseded values; the room beyond is not touched, so not resident), its rows
        and its index."""
        per_row = self._row_fields[0].nbytes + self._free.itemsize
        return sum(self._used) + self._rows * per_row + self._slots.nbytes + self._old.nbytes

    # ------------------------------------------------------------------ room
    def reserve(self, n: int, size: int) -> None:
        """Room for ``n`` more rows of ``size`` bytes each, made at once (the room is
        not touched, so not resident, until puts fill it); rows for a quarter more, so
        that the puts after a restore do not copy them all at once (0.1 s a million)."""
        self._rows_room(n + n // 4)
        self._arena_room(n * size)
        self._index_room(n)

    def _rows_room(self, n: int) -> None:
        if self._rows + n > len(self._kat):
            size = max(self._rows + n, len(self._kat) * 2)
            self._row_fields = _grown(self._row_fields, size)
            self._views()
            self._free = _grown(self._free, size)

    def _arena_room(self, need: int) -> None:
        """``need`` more bytes in the current arena (its bytes copied to a larger one:
        their positions stay)."""
        cur = self._cur
        if self._used[cur] + need > len(self._arenas[cur]):
            # twice: a restore grows an arena from nothing, and each growth copies what
            # it holds; the room is not touched (not resident) until used
            self._arenas[cur] = _grown(self._arenas[cur][:self._used[cur]],
                                       max(self._used[cur] + need, 2 * len(self._arenas[cur])))

    def _room(self, n: int, need: int) -> None:
        self._rows_room(n)
        cur = self._cur
        if self._used[cur] + need > len(self._arenas[cur]):
            if self._cursor >= 0:
                # the new arena filled before the old was evacuated: the rest now
                self._arena_room(need + self._counts[1])
                self._evacuate(-1)
            elif self._used[cur] <= COMPACT_SLACK:
                self._arena_room(need)  # a small table: its copy costs next to nothing
            else:
                # never a copy of the whole arena in one put (a million people's took
                # 0.56 s, in the first batch after a take-over): its live rows move to
                # a new one a little at every put. The room: a quarter of the state past
                # the garbage share; else the table grows, and gets a doubling's room
                grows = self._counts[2 + cur] <= self.live_bytes // GARBAGE_SHARE + COMPACT_SLACK
                self._switch(need, self.live_bytes if grows else self.live_bytes // 4)
        self._index_room(n)

    def _switch(self, need: int, room: int) -> None:
        """Start evacuating the current arena into a new one, with room for ``need``
        bytes and ``room`` more beside the state (the old one is freed once empty)."""
        old = self._cur
        self._cur = 1 - old
        self._arenas[self._cur] = np.empty(self.live_bytes + room + need + (1 << 16), np.uint8)
        self._used[self._cur] = 0
        self._counts[2 + self._cur] = 0
        self._cursor = 0

    def _evacuate(self, budget: int) -> None:
        """Move up to ``budget`` bytes (-1: all) of the old arena's live rows to the
        current one; free the old arena once nothing points into it."""
        cur, old = self._cur, 1 - self._cur
        limit = budget if budget >= 0 else int(self._counts[1]) + 1
        self._cursor, self._used[cur] = _evacuate(
            self._arenas[0], self._arenas[1], old, self._used[cur], self._gen, self._kat,
            self._klen, self._vat, self._vlen, self._cursor, self._rows, limit, self._counts)
        if self._cursor >= self._rows:
            self._arenas[old] = np.empty(0, np.uint8)
            self._used[old] = 0
            self._counts[2 + old] = 0
            self._cursor = -1

    def compact(self) -> None:
        """Evacuate the current arena into a new one at once (tests, the warm-up)."""
        if self._cursor >= 0:
            self._arena_room(self.live_bytes)
            self._evacuate(-1)
        self._switch(0, self.live_bytes // 4)
        self._evacuate(-1)

    def tidy(self) -> None:
        """Evacuate the current arena now if its garbage is beyond the share a put lets
        it reach (a checkpoint read with superseded writes: at a take-over, not in the
        middle of the puts of a quiet partition that might never finish it)."""
        if (self._cursor < 0 and self._counts[2 + self._cur]
                > self.live_bytes // GARBAGE_SHARE + COMPACT_SLACK):
            self._switch(0, self.live_bytes // 4)
            self._evacuate(-1)

    def _index_room(self, n: int) -> None:
        # the index at most half full, deleted slots counted: probes stay short
        if 2 * (self.live + int(self._counts[4]) + n) > len(self._slots):
            if len(self._old):  # the one before is still drained: the rest now
                self._drain_index(len(self._old))
            size = len(self._slots)
            while 2 * (self.live + n) > size // 2:
                size *= 2
            self._old, self._drained = self._slots, 0
            self._slots = np.full(size, _EMPTY, np.int64)
            self._counts[4] = 0
            if self.live <= INDEX_AT_ONCE:
                self._drain_index(len(self._old))
            # else drained by the puts to come; until then a look-up asks both

    def _drain_index(self, budget: int) -> None:
        """Move up to ``budget`` slots of the old index into the index; forget the old
        one once every slot is passed."""
        self._drained = _drain(self._arenas[0], self._arenas[1], self._gen, self._kat,
                               self._klen, self._slots, self._old, self._drained, budget)
        if self._drained >= len(self._old):
            self._old, self._drained = _NO_SLOTS, 0

    # ------------------------------------------------------------------ mapping
    def __getitem__(self, key: bytes) -> bytes:
        got = self.values_of([key])[0]
        if got is None:
            raise KeyError(key)
        return got

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.update({key: value})

    def pop(self, key: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        got = self.values_of([key])[0]
        if got is not None:
            self.update({key: None})
        return default if got is None else got

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and bool(self.get_rows([key])[0] >= 0)

    def __len__(self) -> int:
        return self.live

    def __iter__(self) -> Iterator[bytes]:
        return iter([self._bytes(r, self._kat, self._klen)
                     for r in self._live_rows().tolist()])

    def items(self) -> Iterator[tuple[bytes, bytes]]:  # type: ignore[override]
        return iter([(self._bytes(r, self._kat, self._klen),
                      self._bytes(r, self._vat, self._vlen))
                     for r in self._live_rows().tolist()])


def _grown(a: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((size, *a.shape[1:]), a.dtype)
    out[:len(a)] = a
    return out
