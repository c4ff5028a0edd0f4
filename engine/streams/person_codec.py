"""People's stored values read and written in bulk, as columns.

A person's value is the msgpack of :class:`~engine.streams.state.PersonState` (an
array of its eleven fields, as msgspec writes it). Decoding each into an object
and writing each back from one cost several microseconds of Python per person
touched, the largest share of a batch's state work. Most values have the same
simple shape — enrollment, ``c``, ``r``, packed entries, marks; no waiting
record, nothing of an older format — so the people of a batch are read here in
one compiled pass over their concatenated values into columns, and written back
in one: the same bytes msgspec reads and writes (the stored format does not
change; ``tests/streams/test_person_codec.py`` holds both to it). A value of any
other shape is flagged, and the caller takes msgspec's object path for it.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np

from engine.rules.strings import put_bytes
from engine.streams.entries import ENTRY

_U8 = np.uint64(8)
_FF = np.uint64(0xFF)
_I64_MAX = np.uint64(2**63 - 1)
_ROW = ENTRY.itemsize
# byte offsets of the two fields a decision changes in a stored row (patch_rows)
_REFUNDED = ENTRY.fields["refunded"][1]  # type: ignore[index]  # a structured dtype's
_STATUS = ENTRY.fields["status"][1]  # type: ignore[index]


@numba.njit(cache=True, nogil=True, inline="always")
def _read_int(buf: np.ndarray, p: int, end: int) -> tuple[np.uint64, bool, int]:
    """The msgpack integer at ``p``: (its 64 bits, whether it is signed-negative,
    the position after it), the position -1 if there is none."""
    if p >= end:
        return np.uint64(0), False, -1
    b = buf[p]
    if b <= 0x7F:
        return np.uint64(b), False, p + 1
    if b >= 0xE0:
        return np.uint64(np.int64(b) - 256), True, p + 1
    if 0xCC <= b <= 0xD3:  # uint8/16/32/64, then int8/16/32/64
        signed = b >= 0xD0
        n = 1 << (b - (0xD0 if signed else 0xCC))
    else:
        return np.uint64(0), False, -1
    if p + 1 + n > end:
        return np.uint64(0), False, -1
    v = np.uint64(0)
    for k in range(n):
        v = (v << _U8) | np.uint64(buf[p + 1 + k])
    neg = False
    if signed and buf[p + 1] >= 0x80:  # sign-extend to 64 bits
        neg = True
        if n < 8:
            v |= ~((np.uint64(1) << np.uint64(8 * n)) - np.uint64(1))
    return v, neg, p + 1 + n


@numba.njit(cache=True, nogil=True)
def _decode(buf: np.ndarray, offs: np.ndarray, names: np.ndarray, name_offs: np.ndarray,
            ok: np.ndarray, op: np.ndarray, kind: np.ndarray, day: np.ndarray,
            c: np.ndarray, r: np.ndarray, ent: np.ndarray, mstart: np.ndarray,
            mcount: np.ndarray, mkeys: np.ndarray, mvals: np.ndarray) -> None:
    m = 0
    fields = np.zeros(4, np.int64)  # enr_kind, enr_day, c, r
    for i in range(len(offs) - 1):
        p, end = offs[i], offs[i + 1]
        mstart[i] = m
        ok[i] = True
        op[i] = -1
        kind[i] = -1
        ent[i, 0] = ent[i, 1] = 0
        if p == end:  # no value: a person not seen before
            continue
        good = False
        # a loop run once, so that a malformed or unusual value can ``break`` out
        while True:
            if buf[p] != 0x9B:  # an array of PersonState's 11 fields
                break
            p += 1
            if p >= end:
                break
            b = buf[p]
            enrolled = True
            code = -1
            if b == 0xC0:
                enrolled = False
                p += 1
            else:
                if 0xA0 <= b <= 0xBF:
                    ln, s = np.int64(b & 0x1F), p + 1
                elif b == 0xD9 and p + 1 < end:
                    ln, s = np.int64(buf[p + 1]), p + 2
                else:
                    break
                if s + ln > end:
                    break
                for j in range(len(name_offs) - 1):
                    a, z = name_offs[j], name_offs[j + 1]
                    if z - a == ln:
                        same = True
                        for k in range(ln):
                            if names[a + k] != buf[s + k]:
                                same = False
                                break
                        if same:
                            code = j
                            break
                if code < 0:  # an operator the registry no longer has: msgspec's path
                    break
                p = s + ln
            for f in range(4):
                v, neg, p = _read_int(buf, p, end)
                if p < 0 or (not neg and v > _I64_MAX):
                    p = -1
                    break
                fields[f] = np.int64(v)
            if p < 0 or p + 6 > end:
                break
            # txns {}, parked [], named_marks {}, wide b"": anything else is not this shape
            if (buf[p] != 0x80 or buf[p + 1] != 0x90 or buf[p + 2] != 0x80
                    or buf[p + 3] != 0xC4 or buf[p + 4] != 0):
                break
            p += 5
            b = buf[p]
            if b == 0xC4 and p + 2 <= end:
                ln, s = np.int64(buf[p + 1]), p + 2
            elif b == 0xC5 and p + 3 <= end:
                ln, s = (np.int64(buf[p + 1]) << 8) | np.int64(buf[p + 2]), p + 3
            elif b == 0xC6 and p + 5 <= end:
                ln = ((np.int64(buf[p + 1]) << 24) | (np.int64(buf[p + 2]) << 16)
                      | (np.int64(buf[p + 3]) << 8) | np.int64(buf[p + 4]))
                s = p + 5
            else:
                break
            if s + ln > end or ln % _ROW:
                break
            ent[i, 0], ent[i, 1] = s, ln
            p = s + ln
            if p >= end:
                break
            b = buf[p]
            if 0x80 <= b <= 0x8F:
                nm, p = np.int64(b & 0x0F), p + 1
            elif b == 0xDE and p + 3 <= end:
                nm, p = (np.int64(buf[p + 1]) << 8) | np.int64(buf[p + 2]), p + 3
            else:
                break
            for _ in range(nm):
                key, kneg, p = _read_int(buf, p, end)
                if p < 0 or kneg:
                    p = -1
                    break
                v, neg, p = _read_int(buf, p, end)
                if p < 0 or (not neg and v > _I64_MAX):
                    p = -1
                    break
                mkeys[m] = key
                mvals[m] = np.int64(v)
                m += 1
            if p != end:
                break
            good = True
            op[i] = code
            if enrolled:
                kind[i] = fields[0]
                day[i] = fields[1]
            c[i] = fields[2]
            r[i] = fields[3]
            break
        if not good:
            ok[i] = False
            op[i] = -1
            kind[i] = -1
            ent[i, 0] = ent[i, 1] = 0
            m = mstart[i]
        mcount[i] = m - mstart[i]


class StoredPeople(NamedTuple):
    """Decoded people, one row each: ``ok`` False where the value has another shape
    (the caller decodes that one with msgspec, as one naming an operator not in the
    table); ``op`` the enrolled operator's code in the table (-1: not enrolled),
    ``kind``/``day`` the enrollment's (-1/0 if none), ``entries`` (start, length) of the packed
    entries in the buffer, and the marks as ``mkeys``/``mvals`` rows
    ``mstart[i]:mstart[i] + mcount[i]``, in their stored order."""

    ok: np.ndarray
    op: np.ndarray
    kind: np.ndarray
    day: np.ndarray
    c: np.ndarray
    r: np.ndarray
    entries: np.ndarray
    mstart: np.ndarray
    mcount: np.ndarray
    mkeys: np.ndarray
    mvals: np.ndarray


def name_table(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Operator names as one byte buffer and its offsets (the codes are the positions)."""
    raw = [n.encode() for n in names]
    offs = np.zeros(len(raw) + 1, np.int64)
    offs[1:] = np.cumsum([len(x) for x in raw])
    return np.frombuffer(b"".join(raw), np.uint8).copy(), offs


def decode_people(buf: np.ndarray, offs: np.ndarray,
                  names: tuple[np.ndarray, np.ndarray]) -> StoredPeople:
    """The people whose values are ``buf[offs[i]:offs[i + 1]]`` (empty: none stored)."""
    n = len(offs) - 1
    cap = len(buf) // 2 + 1  # a mark takes two bytes at least
    p = StoredPeople(np.zeros(n, np.bool_), np.zeros(n, np.int32), np.zeros(n, np.int64),
                     np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64),
                     np.zeros((n, 2), np.int64), np.zeros(n, np.int64),
                     np.zeros(n, np.int64), np.empty(cap, np.uint64), np.empty(cap, np.int64))
    _decode(buf, offs, names[0], names[1], p.ok, p.op, p.kind, p.day, p.c, p.r, p.entries,
            p.mstart, p.mcount, p.mkeys, p.mvals)
    return p


@numba.njit(cache=True, nogil=True, inline="always")
def _put_uint(out: np.ndarray, p: int, v: np.uint64) -> int:
    if v <= np.uint64(0x7F):
        out[p] = np.uint8(v)
        return p + 1
    if v <= np.uint64(0xFF):
        out[p], n = 0xCC, 1
    elif v <= np.uint64(0xFFFF):
        out[p], n = 0xCD, 2
    elif v <= np.uint64(0xFFFFFFFF):
        out[p], n = 0xCE, 4
    else:
        out[p], n = 0xCF, 8
    for k in range(n):
        out[p + 1 + k] = np.uint8((v >> np.uint64(8 * (n - 1 - k))) & _FF)
    return p + 1 + n


@numba.njit(cache=True, nogil=True, inline="always")
def _put_int(out: np.ndarray, p: int, v: np.int64) -> int:
    """msgspec's choice: the shortest form, unsigned ones for v ≥ 0."""
    if v >= 0:
        return _put_uint(out, p, np.uint64(v))
    if v >= -32:
        out[p] = np.uint8(v + 256)
        return p + 1
    if v >= -128:
        out[p], n = 0xD0, 1
    elif v >= -32768:
        out[p], n = 0xD1, 2
    elif v >= -2147483648:
        out[p], n = 0xD2, 4
    else:
        out[p], n = 0xD3, 8
    u = np.uint64(v)
    for k in range(n):
        out[p + 1 + k] = np.uint8((u >> np.uint64(8 * (n - 1 - k))) & _FF)
    return p + 1 + n


@numba.njit(cache=True, nogil=True, inline="always")
def _put_len(out: np.ndarray, p: int, n: int, fix: int, fix_max: int, c8: int, c16: int,
             c32: int) -> int:
    """A str/bin/map header of length ``n`` (``c8`` 0: the type has no 8-bit form)."""
    if n <= fix_max:
        out[p] = fix | n
        return p + 1
    if c8 and n <= 0xFF:
        out[p] = c8
        out[p + 1] = n
        return p + 2
    if n <= 0xFFFF:
        out[p] = c16
        out[p + 1] = n >> 8
        out[p + 2] = n & 0xFF
        return p + 3
    out[p] = c32
    for k in range(4):
        out[p + 1 + k] = (n >> (8 * (3 - k))) & 0xFF
    return p + 5


@numba.njit(cache=True, nogil=True)
def _encode(op: np.ndarray, kind: np.ndarray, day: np.ndarray, c: np.ndarray, r: np.ndarray,
            ebuf: np.ndarray, espans: np.ndarray, nbuf: np.ndarray, nspans: np.ndarray,
            names: np.ndarray, name_offs: np.ndarray,
            mkeys: np.ndarray, mvals: np.ndarray, mstart: np.ndarray, mcount: np.ndarray,
            xkeys: np.ndarray, xvals: np.ndarray, xstart: np.ndarray, xcount: np.ndarray,
            out: np.ndarray, offs: np.ndarray) -> int:
    p = 0
    for i in range(len(op)):
        offs[i] = p
        out[p] = 0x9B
        p += 1
        o = op[i]
        if o < 0:
            out[p] = 0xC0
            p += 1
        else:
            a, z = name_offs[o], name_offs[o + 1]
            p = _put_len(out, p, z - a, 0xA0, 31, 0xD9, 0xDA, 0xDB)
            for k in range(a, z):
                out[p] = names[k]
                p += 1
        p = _put_int(out, p, kind[i])
        p = _put_int(out, p, day[i])
        p = _put_int(out, p, c[i])
        p = _put_int(out, p, r[i])
        out[p], out[p + 1], out[p + 2], out[p + 3], out[p + 4] = 0x80, 0x90, 0x80, 0xC4, 0
        p += 5
        e0, ln = espans[i, 0], espans[i, 1]
        n0, nn = nspans[i, 0], nspans[i, 1]
        p = _put_len(out, p, ln + nn, 0, -1, 0xC4, 0xC5, 0xC6)
        p = put_bytes(out, p, ebuf, e0, e0 + ln)
        p = put_bytes(out, p, nbuf, n0, n0 + nn)
        p = _put_len(out, p, mcount[i] + xcount[i], 0x80, 15, 0, 0xDE, 0xDF)
        for k in range(mstart[i], mstart[i] + mcount[i]):
            p = _put_uint(out, p, mkeys[k])
            p = _put_int(out, p, mvals[k])
        for k in range(xstart[i], xstart[i] + xcount[i]):
            p = _put_uint(out, p, xkeys[k])
            p = _put_int(out, p, xvals[k])
    offs[len(op)] = p
    return p


def encode_people(op: np.ndarray, kind: np.ndarray, day: np.ndarray, c: np.ndarray,
                  r: np.ndarray, entries: np.ndarray, entry_spans: np.ndarray,
                  names: tuple[np.ndarray, np.ndarray],
                  marks: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  added: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  new_entries: tuple[np.ndarray, np.ndarray] | None = None,
                  ) -> tuple[bytes, np.ndarray]:
    """Values of people with no waiting record (``op`` -1: not enrolled), as msgspec
    writes a PersonState: entries the (start, length) ``entry_spans[i]`` of ``entries``
    followed by ``new_entries`` (a buffer and a span per person, the same way: the
    stored rows and the new ones need not be copied into one buffer first), the
    marks ``marks`` (keys, values, start, count per person) followed by
    ``added`` (the same, for marks new in this batch). Returns the bytes and the
    offsets of each value in them."""
    n = len(op)
    names_b, name_offs = names
    if new_entries is None:
        new_entries = (np.zeros(0, np.uint8), np.zeros((n, 2), np.int64))
    longest = int(np.diff(name_offs).max()) if len(name_offs) > 1 else 0
    size = (n * (1 + 5 + longest + 4 * 9 + 5 + 5 + 5) + int(entry_spans[:, 1].sum())
            + int(new_entries[1][:, 1].sum()) + 18 * int(marks[3].sum() + added[3].sum()))
    out = np.empty(size, np.uint8)
    offs = np.empty(n + 1, np.int64)
    end = _encode(op, kind, day, c, r, entries, entry_spans.astype(np.int64), new_entries[0],
                  new_entries[1].astype(np.int64), names_b, name_offs, *marks, *added, out,
                  offs)
    return out[:end].tobytes(), offs


@numba.njit(cache=True, nogil=True)
def gather(buf: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """The byte ranges ``spans`` (start, length) of ``buf``, concatenated."""
    out = np.empty(spans[:, 1].sum(), np.uint8)
    p = 0
    for i in range(len(spans)):
        s, n = spans[i, 0], spans[i, 1]
        p = put_bytes(out, p, buf, s, s + n)
    return out


# Fibonacci hashing, as engine.rules.txn_keys codes keys. The table below lives here,
# not there: numba's on-disk cache of a function does not notice a change in a compiled
# function of another module that it calls, and would keep running the old code.
_FIB = np.uint64(0x9E3779B97F4A7C15)


@numba.njit(cache=True, nogil=True)
def _key_table(uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.uint64]:
    """A table of ``uniq`` (distinct non-zero keys, a key's code its position) for
    :func:`_table_code`: open addressing at most a quarter full, and a filter of 2^16
    bits by the keys' top bits, so that a key not among them (the usual case: a
    batch's few keys against long histories) is mostly told by one bit."""
    bits = 8
    while (1 << bits) < 4 * len(uniq):
        bits += 1
    slots = np.zeros(1 << bits, np.uint64)
    code_at = np.zeros(1 << bits, np.int32)
    seen = np.zeros(1 << 10, np.uint64)
    mask = np.uint64((1 << bits) - 1)
    shift = np.uint64(64 - bits)
    for c in range(len(uniq)):
        x = uniq[c]
        top = x >> np.uint64(48)
        seen[top >> np.uint64(6)] |= np.uint64(1) << (top & np.uint64(63))
        s = (x * _FIB) >> shift
        while slots[s] != 0:
            s = (s + np.uint64(1)) & mask
        slots[s] = x
        code_at[s] = c
    return slots, code_at, seen, shift


@numba.njit(cache=True, nogil=True, inline="always")
def _table_code(slots: np.ndarray, code_at: np.ndarray, seen: np.ndarray, shift: np.uint64,
                x: np.uint64) -> int:
    """The code of key ``x`` in a :func:`_key_table` (``shift``: 64 less its bits), -1
    if it is not there. (Written as plain comparisons: ``x == 0 or not ...`` here made
    every probe about ten times slower.)"""
    top = x >> np.uint64(48)
    if (seen[top >> np.uint64(6)] >> (top & np.uint64(63))) & np.uint64(1) == 0:
        return -1  # (0, no key, is never in a table: its probe ends at an empty slot)
    mask = np.uint64(len(slots) - 1)
    s = (x * _FIB) >> shift
    while slots[s] != 0:
        if slots[s] == x:
            return int(code_at[s])
        s = (s + np.uint64(1)) & mask
    return -1


@numba.njit(cache=True, nogil=True)
def named_rows(buf: np.ndarray, spans: np.ndarray,
               uniq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packed entries in the byte ranges ``spans`` of ``buf`` (a person each)
    whose key is among ``uniq`` (distinct keys coded by position, as
    engine.rules.txn_keys.dense_codes returns them): the
    position of each one's row in ``buf``, its key's code and its person, in order.
    What picks the few rows of long histories a batch's records name, without
    copying the rest."""
    slots, code_at, seen, shift = _key_table(uniq)
    n = 0
    for i in range(len(spans)):
        n += spans[i, 1] // _ROW
    pos = np.empty(n, np.int64)  # written only where a row is named: n is a bound
    code = np.empty(n, np.int64)
    owner = np.empty(n, np.int32)
    m = 0
    for i in range(len(spans)):
        for q in range(spans[i, 0], spans[i, 0] + spans[i, 1], _ROW):
            k = np.uint64(0)
            for b in range(7, -1, -1):  # ENTRY's key: the row's first 8 bytes, little-endian
                k = (k << _U8) | np.uint64(buf[q + b])
            c = _table_code(slots, code_at, seen, shift, k)
            if c >= 0:
                pos[m], code[m], owner[m] = q, c, i
                m += 1
    return pos[:m], code[:m], owner[:m]


@numba.njit(cache=True, nogil=True)
def patch_rows(buf: np.ndarray, pos: np.ndarray, status: np.ndarray,
               refunded: np.ndarray) -> None:
    """Write a new status and refunded sum into the packed rows at ``pos`` of ``buf``
    (the fields of an entry a decision can change)."""
    for i in range(len(pos)):
        q = pos[i]
        v = np.uint64(refunded[i])
        for b in range(4):
            buf[q + _REFUNDED + b] = np.uint8((v >> np.uint64(8 * b)) & _FF)
        buf[q + _STATUS] = np.uint8(status[i])


@numba.njit(cache=True, nogil=True)
def find_marks(mkeys: np.ndarray, mstart: np.ndarray, mcount: np.ndarray,
               person: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Where each (person, key) is among its person's marks (-1: not there); a
    person has one per source topic-partition, so a scan is the fastest lookup."""
    out = np.full(len(person), -1, np.int64)
    for i in range(len(person)):
        p = person[i]
        for k in range(mstart[p], mstart[p] + mcount[p]):
            if mkeys[k] == key[i]:
                out[i] = k
                break
    return out
