"""Keys and their dense codes: a transaction's 64-bit hash of
``operator_id/txn_id``, a person's packed ``mykey_id``, and the one coder that
numbers the keys a kernel call meets.

Both drivers decide with these keys: offline ``settle`` codes a file's
transactions with them, the streaming state stores them (engine.streams.entries),
so the two agree even on the one case a hash brings: two distinct transactions
of one person with the same key, the second a DUPLICATE. With at most
``person_limit`` (3,000) entries per person the chance is below
3,000² / 2⁶⁵ ≈ 2.4 × 10⁻¹³ for that person (about 10 entries each: 25 M people
× 45 pairs / 2⁶⁴ ≈ 6 × 10⁻¹¹ for the whole program); keys of different people are
never compared. The hash is part of the stored format (a test pins its value).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TypeAlias

import numba
import numpy as np
import pyarrow as pa

from engine.rules.strings import buffers

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@numba.njit(cache=True, nogil=True)
def _fnv(h, data, start, end):  # type: ignore[no-untyped-def]
    for k in range(start, end):
        h = (h ^ np.uint64(data[k])) * _FNV_PRIME
    return h


@numba.njit(cache=True, nogil=True)
def _hash_pairs(a_off, a_data, b_off, b_data, valid, out):  # type: ignore[no-untyped-def]
    """FNV-1a over the bytes of ``a/b`` (``a`` empty: over ``b`` alone, a whole key),
    then splitmix64's finalizer (FNV alone mixes the last bytes poorly); 0 is kept
    for "none"."""
    slash = np.uint64(ord("/"))
    for i in range(len(out)):
        if not valid[i]:
            out[i] = 0
            continue
        h = _fnv(_FNV_OFFSET, a_data, a_off[i], a_off[i + 1])
        if a_off[i + 1] > a_off[i]:
            h = (h ^ slash) * _FNV_PRIME
        h = _mix(_fnv(h, b_data, b_off[i], b_off[i + 1]))
        out[i] = h if h != 0 else np.uint64(1)


@numba.njit(cache=True, nogil=True)
def _xsm(h, s1, m1, s2, m2, s3):  # type: ignore[no-untyped-def]
    """xor-shift-multiply: with odd multipliers a bijection on uint64, in which every
    input bit moves every output bit."""
    h ^= h >> s1
    h *= m1
    h ^= h >> s2
    h *= m2
    h ^= h >> s3
    return h


@numba.njit(cache=True, nogil=True)
def _mix(h):  # type: ignore[no-untyped-def]
    """splitmix64's finalizer."""
    return _xsm(h, np.uint64(30), np.uint64(0xBF58476D1CE4E5B9), np.uint64(27),
                np.uint64(0x94D049BB133111EB), np.uint64(31))


def xor_shift_multiply(values: np.ndarray, shifts: tuple[int, int, int],
                       multipliers: tuple[int, int]) -> np.ndarray:
    """:func:`_xsm` of each value as uint64, with the given constants (the scenario
    generator's ids use their own, which fix the bytes a seed generates).

    >>> xor_shift_multiply(np.array([1]), (30, 27, 31),
    ...                    (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)).tolist()
    [6238072747940578789]
    """
    out = np.empty(len(values), np.uint64)
    (s1, s2, s3), (m1, m2) = shifts, multipliers
    _xsm_all(np.asarray(values).astype(np.uint64), out, np.uint64(s1), np.uint64(m1),
             np.uint64(s2), np.uint64(m2), np.uint64(s3))
    return out


@numba.njit(cache=True, nogil=True)
def _xsm_all(values, out, s1, m1, s2, m2, s3):  # type: ignore[no-untyped-def]
    for i in range(len(out)):
        out[i] = _xsm(values[i], s1, m1, s2, m2, s3)


Strings: TypeAlias = "pa.Array | pa.ChunkedArray | list[str | None]"


def _buffers(arr: Strings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return buffers(pa.array(arr, pa.string()) if isinstance(arr, list) else arr)


def key_hashes(keys: Strings) -> np.ndarray:
    """uint64 hash of each whole string (0 for a null): the hash :func:`entry_keys`
    makes of ``operator_id/txn_id`` given joined, and the stored key of a source
    ``topic/partition`` (engine.streams.state.source_key)."""
    off, data, valid = _buffers(keys)
    out = np.zeros(len(valid), np.uint64)
    _hash_pairs(np.zeros(len(valid) + 1, np.int64), data[:0], off, data, valid, out)
    return out


def entry_keys(operator_ids: Strings, txn_ids: Strings, out: np.ndarray | None = None
               ) -> np.ndarray:
    """The entry key of each (operator_id, txn_id): the hash of ``operator_id/txn_id``
    (0 where either is null), into ``out`` (uint64, one per pair) if given."""
    a_off, a_data, a_valid = _buffers(operator_ids)
    b_off, b_data, b_valid = _buffers(txn_ids)
    if out is None:
        out = np.empty(len(a_valid), np.uint64)
    _hash_pairs(a_off, a_data, b_off, b_data, a_valid & b_valid, out)
    return out


_FIB = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads keys that are not hashes


def fingerprints(at: np.ndarray, orig_keys: np.ndarray) -> np.ndarray:
    """uint32 fingerprint of each transaction's ``occurred_at`` (µs) and original's
    entry key (0: none): with kind and amount, what tells a DUPLICATE from a
    CONFLICTING_DUPLICATE (DECISIONS 102). Part of the stored format.

    >>> fingerprints(np.array([0, 0, 1]), np.array([0, 7, 0], np.uint64)).tolist()
    [0, 313405475, 3793791033]
    """
    out = np.empty(len(at), np.uint32)
    _fingerprints(at, orig_keys, out)
    return out


@numba.njit(cache=True, nogil=True)
def _fingerprints(at, orig, out):  # type: ignore[no-untyped-def]
    for i in range(len(out)):
        out[i] = _mix(np.uint64(at[i]) * _FIB ^ orig[i]) >> np.uint64(32)


def dense_codes(h: np.ndarray, repeats: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes 0.. of the distinct non-zero keys in ``h`` (uint64; -1 for 0), in
    order of first appearance, and the keys by code: the kernel's txn codes for one
    streaming call, and the people's codes of packed ``mykey_id`` values. Open
    addressing at most half full: sized for every key to be distinct, or, with
    ``repeats`` (keys that recur, as people do), started small and grown, so the table
    follows the distinct keys rather than the rows (a grown table costs a rehash per
    doubling). Codes are int32, like the kernel's positions: at 10^7 keys that is
    0.2 GB less at the peak of offline settle (DECISIONS 110)."""
    _check_size(h)
    # at least 256 slots; a small call (a live poll's few hundred keys) does not zero a
    # table of 2^16 (1 MiB) it will not fill
    if repeats:
        bits = max(8, min(16, (2 * len(h)).bit_length()))
    else:
        bits = max(8, int(2 * np.count_nonzero(h)).bit_length())
    codes = np.empty(len(h), np.int32)
    return codes, _dense_codes(h, bits, 1, 0, codes)


def spread_codes(h: np.ndarray, parts: int) -> tuple[np.ndarray, int]:
    """Codes of the distinct non-zero keys in ``h`` (-1 for 0) made on ``parts``
    threads, each coding the keys with ``key % parts == part`` as ``parts * c + part``
    (``c`` its own dense code), and a bound of the codes: for offline settle, where a
    code only has to name its key (DECISIONS 110). ``h`` holds hashes, so the parts
    are even."""
    _check_size(h)
    if parts == 1:
        codes, uniq = dense_codes(h)
        return codes, len(uniq)
    # sized for an even share of the keys; a part that gets more grows its table
    bits = max(8, int(2 * np.count_nonzero(h) // parts * 9 // 8).bit_length())
    codes = np.empty(len(h), np.int32)
    with ThreadPoolExecutor(max_workers=parts) as pool:
        counts = list(pool.map(lambda part: len(_dense_codes(h, bits, parts, part, codes)),
                               range(parts)))
    return codes, parts * max(counts)


def _check_size(h: np.ndarray) -> None:
    if len(h) >= 2**31:
        raise ValueError("dense codes are int32: fewer than 2**31 keys at once")


@numba.njit(cache=True, nogil=True)
def _dense_codes(h, bits, parts, part, codes):  # type: ignore[no-untyped-def]
    """Code the keys of ``h`` that are ``part`` modulo ``parts`` into ``codes``;
    returns the keys by (own) code."""
    n = len(h)
    slots = np.zeros(1 << bits, np.uint64)
    code_at = np.zeros(1 << bits, np.int32)
    uniq = np.empty(n, np.uint64)
    i, m = 0, 0
    while True:
        i, m = _fill(h, i, slots, code_at, codes, uniq, m, parts, part)
        if i == n:
            return uniq[:m]
        slots, code_at = _grow(slots, code_at)


@numba.njit(cache=True, nogil=True)
def _log2(size):  # type: ignore[no-untyped-def]
    bits = 0
    while (1 << bits) < size:
        bits += 1
    return bits


@numba.njit(cache=True, nogil=True)
def _fill(h, i, slots, code_at, codes, uniq, m, parts, part):  # type: ignore[no-untyped-def]
    """Code ``h[i:]`` (the part's keys) until the table is half full; returns where it
    stopped and the codes so far. (The table is not reassigned in here: that keeps the
    loop fast.)"""
    size = len(slots)
    mask = np.uint64(size - 1)
    shift = np.uint64(64 - _log2(size))
    n = len(h)
    while i < n:
        x = h[i]
        i += 1
        if x == 0:
            if part == 0:
                codes[i - 1] = -1
            continue
        # (uint64 and int64 mixed would make numba compute in float64)
        if parts > 1 and x % np.uint64(parts) != np.uint64(part):
            continue
        s = (x * _FIB) >> shift
        while True:
            k = slots[s]
            if k == x:
                codes[i - 1] = np.int64(code_at[s]) * parts + part
                break
            if k == 0:
                slots[s] = x
                code_at[s] = m
                uniq[m] = x
                codes[i - 1] = m * parts + part
                m += 1
                break
            s = (s + np.uint64(1)) & mask
        if 2 * m > size:
            break
    return i, m


@numba.njit(cache=True, nogil=True)
def _grow(slots, code_at):  # type: ignore[no-untyped-def]
    size = 2 * len(slots)
    mask = np.uint64(size - 1)
    shift = np.uint64(64 - _log2(size))
    new_slots = np.zeros(size, np.uint64)
    new_codes = np.zeros(size, np.int32)
    for q in range(len(slots)):
        x = slots[q]
        if x != 0:
            t = (x * _FIB) >> shift
            while new_slots[t] != 0:
                t = (t + np.uint64(1)) & mask
            new_slots[t] = x
            new_codes[t] = code_at[q]
    return new_slots, new_codes


@numba.njit(cache=True, nogil=True)
def _pack8(offsets, data, valid, out):  # type: ignore[no-untyped-def]
    # A valid mykey_id is exactly 8 ASCII bytes: packed into a uint64 it is its own
    # exact key (never 0, which stands for "none")
    for i in range(len(valid)):
        a = offsets[i]
        if not valid[i] or offsets[i + 1] - a != 8:
            out[i] = 0
            continue
        k = np.uint64(0)
        for j in range(8):
            k = (k << np.uint64(8)) | np.uint64(data[a + j])
        out[i] = k


def person_codes(*arrays: pa.Array) -> tuple[list[np.ndarray], int]:
    """Dense codes of ``mykey_id`` values (exactly 8 bytes; anything else -> -1),
    shared across arrays, numbered in order of first appearance.

    >>> [c.tolist() for c in person_codes(pa.array(["AB12cd34", None]),
    ...                                    pa.array(["zz99ZZ00", "AB12cd34"]))[0]]
    [[0, -1], [1, 0]]
    """
    packed = []
    for a in arrays:
        o, d, v = buffers(a)
        packed.append(np.zeros(len(v), np.uint64))
        _pack8(o, d, v, packed[-1])
    codes, uniq = dense_codes(np.concatenate(packed) if packed else np.zeros(0, np.uint64),
                              repeats=True)
    ends = np.cumsum([len(p) for p in packed]).tolist()
    return [codes[e - len(p):e] for p, e in zip(packed, ends, strict=True)], len(uniq)
