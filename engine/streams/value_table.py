"""Key bytes -> value bytes for one partition's state, without a Python object per key.

The store of DECISIONS 144 kept its applied values in a dict: two bytes objects and a
slot per person (about 130 B of overhead a person on top of a 271 B value), one Python
object made per record in a restore and per key in a load of the checkpoint. Here
(DECISIONS 145) every key and value lies in one byte arena; a row per key (where the
key and the value start, their lengths) and an open-addressing hash index of row
numbers find it. A restore and a rewrite of the checkpoint move columns (a buffer,
starts, lengths) through compiled loops; a load of the checkpoint reads the file into
the arena and points its rows where the keys and values already lie
(:meth:`ValueTable.adopt`): no copy, and no memory touched twice.

A put appends; the row it replaces is garbage until a compaction copies the live rows
into a new arena with a quarter of the state as room, once the arena is full and the
garbage is more than an eighth of the live bytes (and more than a margin): memory stays
near 1.25 times the state. The arena's bytes
are never changed once a row points at them, so a :class:`Snapshot` (the row arrays
copied, the arena shared) stays valid while the table goes on: the checkpoint writer
encodes it on its own thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numba
import numpy as np

_EMPTY = -1  # an index slot never used
_GONE = -2  # an index slot whose key was deleted (probing goes on past it)
# garbage tolerated beyond half the live bytes before a compaction: a small table is not
# compacted at every put
COMPACT_SLACK = 4 << 20
# compacted when the arena is full and garbage is more than this share of the live
# bytes (1 / GARBAGE_SHARE): it is then given a quarter of the state as room, so memory
# stays near 1.25 times the state (DECISIONS 145)
GARBAGE_SHARE = 8
_MIN_SLOTS = 1024


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
def _find(arena, kat, klen, slots, src, at, n):  # type: ignore[no-untyped-def]
    """(slot, row) of the key ``src[at:at + n]``; row -1 when absent, the slot then
    the one a put takes (the first deleted one on its probe, else the empty one)."""
    mask = np.uint64(len(slots) - 1)
    i = np.int64(_hash(src, at, n) & mask)
    free = np.int64(-1)
    while True:
        r = slots[i]
        if r == _EMPTY:
            return (free if free >= 0 else i), -1
        if r == _GONE:
            if free < 0:
                free = i
        elif klen[r] == n:
            s = kat[r]
            same = True
            for j in range(n):
                if arena[s + j] != src[at + j]:
                    same = False
                    break
            if same:
                return i, r
        i = (i + 1) & np.int64(mask)


@numba.njit(cache=True, nogil=True)
def _put(arena, used, kat, klen, vat, vlen, rows, slots, src, key_at, key_len, value_at,
         value_len, copy):  # type: ignore[no-untyped-def]
    """Apply each (key, value) in order (value length -1: delete the key); the caller
    made room for every record. ``copy``: the records lie in ``src`` and are appended
    to the arena; else ``src`` is the arena and the rows point where they lie. Returns
    (bytes used, rows, live-row change, live-byte change, garbage-byte change, deleted
    slots made)."""
    d_live = 0
    d_bytes = 0
    d_garbage = 0
    gone = 0
    for i in range(len(key_at)):
        at, n = key_at[i], key_len[i]
        slot, old = _find(arena, kat, klen, slots, src, at, n)
        if old >= 0:
            size = klen[old] + vlen[old]
            d_bytes -= size
            d_garbage += size
            klen[old] = -1
            d_live -= 1
        m = value_len[i]
        if m < 0:
            if old >= 0:
                slots[slot] = _GONE
                gone += 1
            continue
        if copy:
            arena[used:used + n] = src[at:at + n]
            arena[used + n:used + n + m] = src[value_at[i]:value_at[i] + m]
            kat[rows], vat[rows] = used, used + n
            used += n + m
        else:  # bytes of the arena that were garbage until now
            kat[rows], vat[rows] = at, value_at[i]
            d_garbage -= n + m
        klen[rows], vlen[rows] = n, m
        if old < 0 and slots[slot] == _GONE:
            gone -= 1
        slots[slot] = rows
        rows += 1
        d_live += 1
        d_bytes += n + m
    return used, rows, d_live, d_bytes, d_garbage, gone


@numba.njit(cache=True, nogil=True)
def _get(arena, kat, klen, slots, src, key_at, key_len):  # type: ignore[no-untyped-def]
    out = np.empty(len(key_at), np.int64)
    for i in range(len(key_at)):
        out[i] = _find(arena, kat, klen, slots, src, key_at[i], key_len[i])[1]
    return out


@numba.njit(cache=True, nogil=True)
def _index(arena, kat, klen, rows, slots):  # type: ignore[no-untyped-def]
    """Put every live row of ``rows`` in the empty index ``slots``."""
    mask = np.int64(len(slots) - 1)
    for r in rows:
        i = np.int64(_hash(arena, kat[r], klen[r]) & np.uint64(mask))
        while slots[i] != _EMPTY:
            i = (i + 1) & mask
        slots[i] = r


@numba.njit(cache=True, nogil=True)
def _gather(arena, kat, klen, vat, vlen, out):  # type: ignore[no-untyped-def]
    """The rows' keys, then their values, each in row order, into ``out``."""
    p = 0
    for r in range(len(kat)):
        out[p:p + klen[r]] = arena[kat[r]:kat[r] + klen[r]]
        p += klen[r]
    for r in range(len(vat)):
        out[p:p + vlen[r]] = arena[vat[r]:vat[r] + vlen[r]]
        p += vlen[r]


@numba.njit(cache=True, nogil=True)
def _gather_values(arena, vat, vlen, rows, out):  # type: ignore[no-untyped-def]
    p = 0
    for r in rows:
        out[p:p + vlen[r]] = arena[vat[r]:vat[r] + vlen[r]]
        p += vlen[r]


@numba.njit(cache=True, nogil=True)
def _copy_pieces(arena, at, size, rows, out, p, out_at):  # type: ignore[no-untyped-def]
    """The rows' pieces (``at``, ``size``: their keys, or their values) into ``out``
    from ``p`` on; pieces that lie end to end in ``arena`` (a checkpoint's keys, the
    values of rows compacted before) are copied as one run. Returns where it ended."""
    run_from = 0  # the run of ``arena`` being gathered
    run_to = 0
    for j in range(len(rows)):
        r = rows[j]
        s = at[r]
        if s != run_to:
            out[p:p + run_to - run_from] = arena[run_from:run_to]
            p += run_to - run_from
            run_from = s
            run_to = s
        out_at[j] = p + s - run_from
        run_to = s + size[r]
    out[p:p + run_to - run_from] = arena[run_from:run_to]
    return p + run_to - run_from


def _copy_rows(arena: np.ndarray, kat: np.ndarray, klen: np.ndarray, vat: np.ndarray,
               vlen: np.ndarray, rows: np.ndarray, out: np.ndarray, out_kat: np.ndarray,
               out_vat: np.ndarray) -> None:
    """The rows' keys, then their values, into a new arena (a compaction): laid out as
    a checkpoint file lays them, so that the next compaction copies long runs too."""
    end = _copy_pieces(arena, kat, klen, rows, out, 0, out_kat)
    _copy_pieces(arena, vat, vlen, rows, out, end, out_vat)


@numba.njit(cache=True, nogil=True)
def _prefixed(arena, kat, klen, n_rows, prefix):  # type: ignore[no-untyped-def]
    out = np.empty(n_rows, np.int64)
    k = 0
    m = len(prefix)
    for r in range(n_rows):
        if klen[r] < m:
            continue
        s = kat[r]
        same = True
        for j in range(m):
            if arena[s + j] != prefix[j]:
                same = False
                break
        if same:
            out[k] = r
            k += 1
    return out[:k]


class Snapshot(NamedTuple):
    """The live rows of a table at one moment: the arena (never changed where those
    rows lie, so shared) and copies of the row columns."""

    arena: np.ndarray
    kat: np.ndarray
    klen: np.ndarray
    vat: np.ndarray
    vlen: np.ndarray

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(key lengths int32, value lengths int32, the keys' bytes then the values')."""
        out = np.empty(self.size, np.uint8)
        _gather(self.arena, self.kat, self.klen, self.vat, self.vlen, out)
        return self.klen, self.vlen, out

    @property
    def size(self) -> int:
        return int(self.klen.sum(dtype=np.int64)) + int(self.vlen.sum(dtype=np.int64))


def columns_of(keys: list[bytes], values: list[bytes | None]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keys and values (None: delete) as the columns :meth:`ValueTable.put` takes:
    (buffer, key starts, key lengths, value starts, value lengths)."""
    n = len(keys)
    klen = np.fromiter(map(len, keys), np.int64, n)
    if None in values:
        vlen = np.fromiter((-1 if v is None else len(v) for v in values), np.int64, n)
    else:  # no Python frame per value
        vlen = np.fromiter(map(len, values), np.int64, n)  # type: ignore[arg-type]
    buf = np.frombuffer(b"".join([*keys, *filter(None, values)]), np.uint8)
    return buf, starts(klen), klen, starts(np.maximum(vlen, 0)) + int(klen.sum()), vlen


def starts(lengths: np.ndarray) -> np.ndarray:
    """Where each of pieces of these lengths starts, laid end to end from 0."""
    out = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=out[1:])
    return out


def key_columns(keys: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys as (buffer, starts, lengths)."""
    klen = np.fromiter(map(len, keys), np.int64, len(keys))
    return np.frombuffer(b"".join(keys), np.uint8), starts(klen), klen


@numba.njit(cache=True, nogil=True)
def _gather_spans(a, b, at, size, from_b):  # type: ignore[no-untyped-def]
    """Spans (start, size) of ``a``, or of ``b`` where ``from_b``, laid end to end: the
    buffer and its len + 1 offsets."""
    offs = np.zeros(len(at) + 1, np.int64)
    for i in range(len(at)):
        offs[i + 1] = offs[i] + size[i]
    out = np.empty(offs[-1], np.uint8)
    for i in range(len(at)):
        src = b if from_b[i] else a
        out[offs[i]:offs[i + 1]] = src[at[i]:at[i] + size[i]]
    return out, offs


def gather_spans(a: np.ndarray, b: np.ndarray, at: np.ndarray, size: np.ndarray,
                 from_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _gather_spans(a, b, at, size, from_b)  # type: ignore[no-any-return]


class ValueTable(Mapping[bytes, bytes]):
    """A mapping of key bytes to value bytes in one arena (the module's docstring).
    Batches go through :meth:`put` and :meth:`get_rows`; the mapping's methods make a
    bytes object per key asked, for the few keys (meta, tests, a locate) that want one.
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._arena = np.empty(capacity, np.uint8)
        self._used = 0
        self._kat = np.empty(1024, np.int64)
        self._klen = np.empty(1024, np.int32)
        self._vat = np.empty(1024, np.int64)
        self._vlen = np.empty(1024, np.int32)
        self._rows = 0  # rows made (live and dead)
        self._slots = np.full(_MIN_SLOTS, _EMPTY, np.int64)
        self._gone = 0  # index slots marked deleted
        self.live = 0  # live rows
        self.live_bytes = 0  # their keys' and values' bytes
        self.garbage = 0  # arena bytes of dead rows

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

    def adopt(self, arena: np.ndarray, used: int) -> None:
        """Take ``arena[:used]`` (bytes read from a checkpoint file, say) as this empty
        table's arena, all of it garbage until :meth:`refer` points rows at it; the rest
        of ``arena`` is room for later puts."""
        assert not self._rows, "adopted by an empty table only"
        self._arena, self._used, self.garbage = arena, used, used

    def refer(self, key_at: np.ndarray, key_len: np.ndarray, value_at: np.ndarray,
              value_len: np.ndarray) -> None:
        """:meth:`put` of keys and values that already lie in the arena (adopted): the
        rows point at them, nothing is copied."""
        if len(key_at):
            self._room(len(key_at), 0, compact=False)  # the rows point into this arena
            self._put(self._arena, key_at, key_len, value_at, value_len, False)

    def _put(self, src: np.ndarray, key_at: np.ndarray, key_len: np.ndarray,
             value_at: np.ndarray, value_len: np.ndarray, copy: bool) -> None:
        (self._used, self._rows, d_live, d_bytes, d_garbage, gone) = _put(
            self._arena, self._used, self._kat, self._klen, self._vat, self._vlen,
            self._rows, self._slots, src, key_at.astype(np.int64, copy=False),
            key_len.astype(np.int64, copy=False), value_at.astype(np.int64, copy=False),
            value_len.astype(np.int64, copy=False), copy)
        self.live += d_live
        self.live_bytes += d_bytes
        self.garbage += d_garbage
        self._gone += gone

    def update(self, writes: Mapping[bytes, bytes | None]) -> None:  # type: ignore[override]
        """:meth:`put` of a dict (None: delete)."""
        if writes:
            self.put(*columns_of(list(writes), list(writes.values())))

    def get_rows(self, keys: list[bytes]) -> np.ndarray:
        """Each key's row (-1: absent)."""
        if not keys:
            return np.empty(0, np.int64)
        src, kat, klen = key_columns(keys)
        return _get(self._arena, self._kat, self._klen, self._slots, src, kat, klen)  # type: ignore[no-any-return]

    def value_spans(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each row's value lies in :attr:`arena` and its size (0, 0 for -1)."""
        r = np.maximum(rows, 0)
        here = rows >= 0
        at = np.where(here, self._vat[r], 0)
        return at, np.where(here, self._vlen[r], 0).astype(np.int64)

    @property
    def arena(self) -> np.ndarray:
        return self._arena

    def values_of(self, keys: list[bytes]) -> list[bytes | None]:
        """Each key's value (None: absent), gathered in one compiled pass and cut by
        C-level slicing (no Python frame per key)."""
        rows = self.get_rows(keys)
        found = rows[rows >= 0]
        size = self._vlen[found].astype(np.int64)
        out = np.empty(int(size.sum()), np.uint8)
        _gather_values(self._arena, self._vat, self._vlen, found, out)
        raw = out.tobytes()
        ends = np.cumsum(size)
        got = list(map(raw.__getitem__, map(slice, (ends - size).tolist(), ends.tolist())))
        if len(found) == len(rows):
            return got  # type: ignore[return-value]
        vals = np.full(len(rows), None, object)
        vals[rows >= 0] = got
        return vals.tolist()  # type: ignore[no-any-return]

    def _value(self, r: int) -> bytes:
        s = int(self._vat[r])
        return self._arena[s:s + int(self._vlen[r])].tobytes()

    def _key(self, r: int) -> bytes:
        s = int(self._kat[r])
        return self._arena[s:s + int(self._klen[r])].tobytes()

    def _live_rows(self) -> np.ndarray:
        return np.flatnonzero(self._klen[:self._rows] >= 0)

    def prefixed(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """The keys starting with ``prefix``, with their values (a compiled scan: no
        object per other key)."""
        rows = _prefixed(self._arena, self._kat, self._klen, self._rows,
                         np.frombuffer(prefix, np.uint8)).tolist()
        return [(self._key(r), self._value(r)) for r in rows]

    def snapshot(self) -> Snapshot:
        rows = self._live_rows()
        return Snapshot(self._arena, self._kat[rows], self._klen[rows], self._vat[rows],
                        self._vlen[rows])

    @property
    def memory(self) -> int:
        """Bytes this table has written (its arena up to the last put: live and
        superseded values; the room beyond is not touched, so not resident), its rows
        and its index."""
        return (self._used + self._rows * 24 + self._slots.nbytes)

    # ------------------------------------------------------------------ room
    def reserve(self, n: int, size: int) -> None:
        """Room for ``n`` more rows of ``size`` bytes each, made at once (the room is
        not touched, so not resident, until puts fill it)."""
        if self._rows + n > len(self._kat):
            self._rows_room(self._rows + n)
        if self._used + n * size > len(self._arena):
            self._arena = _grown(self._arena[:self._used], self._used + n * size)
        self._index_room(n)

    def _rows_room(self, size: int) -> None:
        self._kat = _grown(self._kat, size)
        self._klen = _grown(self._klen, size)
        self._vat = _grown(self._vat, size)
        self._vlen = _grown(self._vlen, size)

    def _room(self, n: int, need: int, compact: bool = True) -> None:
        if self._rows + n > len(self._kat) or self._used + need > len(self._arena):
            if compact and self.garbage > self.live_bytes // GARBAGE_SHARE + COMPACT_SLACK:
                self.compact(n, need)
            if self._rows + n > len(self._kat):
                self._rows_room(max(self._rows + n, len(self._kat) * 2))
            if self._used + need > len(self._arena):
                # twice: a restore grows the arena from nothing, and each growth copies
                # what it holds; the room is not touched (not resident) until used
                self._arena = _grown(self._arena[:self._used],
                                     max(self._used + need, len(self._arena) * 2))
        self._index_room(n)

    def _index_room(self, n: int) -> None:
        # the index at most half full, deleted slots counted: probes stay short
        if 2 * (self.live + self._gone + n) > len(self._slots):
            size = len(self._slots)
            while 2 * (self.live + n) > size // 2:
                size *= 2
            self._reindex(size)

    def _reindex(self, size: int) -> None:
        self._slots = np.full(size, _EMPTY, np.int64)
        self._gone = 0
        _index(self._arena, self._kat, self._klen, self._live_rows(), self._slots)

    def tidy(self) -> None:
        """Compact now if the garbage is beyond the share a put lets it reach."""
        if self.garbage > self.live_bytes // GARBAGE_SHARE + COMPACT_SLACK:
            self.compact()

    def compact(self, n: int = 0, need: int = 0) -> None:
        """Copy the live rows into a new arena, in row order, as rows 0..live-1, with
        room for ``n`` rows of ``need`` bytes more and a quarter of the state."""
        rows = self._live_rows()
        arena = np.empty(max(self.live_bytes * 5 // 4 + need, 1 << 16), np.uint8)
        kat = np.empty(max(len(rows) * 5 // 4 + n, 1024), np.int64)
        vat = np.empty(len(kat), np.int64)
        _copy_rows(self._arena, self._kat, self._klen, self._vat, self._vlen, rows, arena,
                   kat, vat)
        klen, vlen = _grown(self._klen[rows], len(kat)), _grown(self._vlen[rows], len(kat))
        self._arena, self._kat, self._klen, self._vat, self._vlen = arena, kat, klen, vat, vlen
        self._used, self._rows, self.garbage = self.live_bytes, len(rows), 0
        self._reindex(len(self._slots))

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
        return iter([self._key(r) for r in self._live_rows().tolist()])

    def items(self) -> Iterator[tuple[bytes, bytes]]:  # type: ignore[override]
        return iter([(self._key(r), self._value(r)) for r in self._live_rows().tolist()])


def _grown(a: np.ndarray, size: int) -> np.ndarray:
    out = np.empty(size, a.dtype)
    out[:len(a)] = a
    return out
