"""Vectorised checks over Arrow string arrays, compiled with numba.

The kernels read an Arrow string array's raw buffers (offsets + UTF-8 bytes) so
that format checks, RFC 3339 parsing and the Individual Number test run over a
whole batch without a Python-level loop. Every check is byte-exact and
locale-free, which is what makes the streaming and offline paths agree.
"""

from __future__ import annotations

import re
from datetime import datetime

import numba
import numpy as np
import pyarrow as pa
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from engine.rules.model import US_PER_DAY, US_PER_SECOND, epoch_us

# Character classes of the Records section, as 256-entry lookup tables.
_ALNUM = np.zeros(256, dtype=np.bool_)
for _c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
    _ALNUM[_c] = True
_TXN_CHARS = _ALNUM.copy()
for _c in b"._:-":
    _TXN_CHARS[_c] = True
_OPERATOR_CHARS = np.zeros(256, dtype=np.bool_)
for _c in b"0123456789abcdefghijklmnopqrstuvwxyz_-":
    _OPERATOR_CHARS[_c] = True


def one_array(c: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as one array; one chunk (a Parquet row group's) as it is, since
    ``combine_chunks`` copies even that."""
    if not isinstance(c, pa.ChunkedArray):
        return c
    return c.chunk(0) if c.num_chunks == 1 else c.combine_chunks()


def buffers(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets int64[n+1], data uint8[], valid bool[n]) of a string array."""
    arr = one_array(arr)
    if arr.type in (pa.large_string(), pa.large_binary()):
        off_dtype: type = np.int64
    else:
        # binary has the string layout (raw keys that need not be UTF-8)
        if arr.type not in (pa.string(), pa.binary()):
            binary_like = (pa.types.is_fixed_size_binary(arr.type)
                           or pa.types.is_binary_view(arr.type))
            arr = arr.cast(pa.binary() if binary_like else pa.string())
        off_dtype = np.int32
    n = len(arr)
    bufs = arr.buffers()
    offsets: np.ndarray = np.frombuffer(bufs[1], dtype=off_dtype,
                                        count=n + 1 + arr.offset)[arr.offset:]
    data = (np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None
            else np.zeros(0, dtype=np.uint8))
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
    return offsets.astype(np.int64, copy=False), data, valid


def string_array(offsets: np.ndarray, data: np.ndarray, valid: np.ndarray | None = None
                 ) -> pa.Array:
    """The Arrow array over raw buffers (int64 offsets, UTF-8 bytes; ``valid``: False
    where null): ``string`` where the bytes fit its 32-bit offsets, else
    ``large_string``. The inverse of :func:`buffers`.

    >>> string_array(np.array([0, 2, 2, 5]), np.frombuffer(b"abcde", np.uint8),
    ...              np.array([True, False, True])).to_pylist()
    ['ab', None, 'cde']
    """
    n = len(offsets) - 1
    nulls = 0 if valid is None else n - int(np.count_nonzero(valid))
    bitmap = (pa.py_buffer(np.packbits(valid, bitorder="little"))
              if valid is not None and nulls else None)
    if offsets[-1] <= np.iinfo(np.int32).max:
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int32)),
                                           pa.py_buffer(data), bitmap, nulls)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data),
                                            bitmap, nulls)


@intrinsic
def _memcpy(typingctx, dst, dst_at, src, src_at, n):  # type: ignore[no-untyped-def]
    """LLVM's memcpy between two byte arrays (numba's slice assignment builds two array
    views per copy, and a byte loop is not vectorised: both cost several times more for
    the short copies of text assembly)."""
    sig = types.void(dst, types.intp, src, types.intp, types.intp)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        d, d_at, s, s_at, k = args
        dp = builder.gep(context.make_array(signature.args[0])(context, builder, d).data,
                         [d_at])
        sp = builder.gep(context.make_array(signature.args[2])(context, builder, s).data,
                         [s_at])
        cgutils.raw_memcpy(builder, dp, sp, k, 1)

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def put_bytes(buf, at, src, a, b):  # type: ignore[no-untyped-def]
    """Copy ``src[a:b]`` into ``buf`` at ``at`` (the caller sized ``buf``); returns
    the position after it."""
    _memcpy(buf, at, src, a, b - a)  # type: ignore[call-arg]  # numba supplies typingctx
    return at + b - a


@numba.njit(cache=True, nogil=True)
def _charset_ok(offsets, data, valid, table, lo, hi):  # type: ignore[no-untyped-def]
    n = len(valid)
    out = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        if not valid[i]:
            continue
        a, b = offsets[i], offsets[i + 1]
        if b - a < lo or b - a > hi:
            continue
        ok = True
        for j in range(a, b):
            if not table[data[j]]:
                ok = False
                break
        out[i] = ok
    return out


def mykey_ok(arr: pa.Array) -> np.ndarray:
    """``mykey_id``: exactly 8 characters ``[0-9A-Za-z]`` (False where null)."""
    o, d, v = buffers(arr)
    return _charset_ok(o, d, v, _ALNUM, 8, 8)


def txn_id_ok(arr: pa.Array) -> np.ndarray:
    """``txn_id``: 1 to 64 characters ``[0-9A-Za-z._:-]`` (False where null)."""
    o, d, v = buffers(arr)
    return _charset_ok(o, d, v, _TXN_CHARS, 1, 64)


@numba.njit(cache=True, nogil=True)
def _operator_id_ok(offsets, data, valid, table):  # type: ignore[no-untyped-def]
    out = _charset_ok(offsets, data, valid, table, 1, 32)
    for i in range(len(valid)):
        if out[i]:
            c = data[offsets[i]]
            if c == 95 or c == 45:  # '_' or '-' may not lead
                out[i] = False
    return out


def operator_id_ok(arr: pa.Array) -> np.ndarray:
    """``operator_id`` pattern ``[a-z0-9][a-z0-9_-]{0,31}`` (False where null)."""
    o, d, v = buffers(arr)
    return _operator_id_ok(o, d, v, _OPERATOR_CHARS)


@numba.njit(cache=True, nogil=True)
def _digits(data, a, n):  # type: ignore[no-untyped-def]
    v = 0
    for j in range(a, a + n):
        c = data[j] - 48
        if c < 0 or c > 9:
            return -1
        v = v * 10 + c
    return v


@numba.njit(cache=True, nogil=True)
def _days_from_civil(y, m, d):  # type: ignore[no-untyped-def]
    # Howard Hinnant's days_from_civil: proleptic Gregorian, exact for all years.
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@numba.njit(cache=True, nogil=True)
def _parse_rfc3339(offsets, data, valid, out, ok):  # type: ignore[no-untyped-def]
    # YYYY-MM-DD(T|t)HH:MM:SS[.fraction](Z|z|+hh:mm|-hh:mm); fraction truncated to µs,
    # which preserves every "<" comparison against microsecond boundaries.
    mdays = np.array([31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
    for i in range(len(valid)):
        ok[i] = False
        if not valid[i]:
            continue
        a, b = offsets[i], offsets[i + 1]
        if b - a < 20:
            continue
        if (data[a + 4] != 45 or data[a + 7] != 45 or data[a + 13] != 58
                or data[a + 16] != 58 or (data[a + 10] != 84 and data[a + 10] != 116)):
            continue
        y = _digits(data, a, 4)
        mo = _digits(data, a + 5, 2)
        d = _digits(data, a + 8, 2)
        h = _digits(data, a + 11, 2)
        mi = _digits(data, a + 14, 2)
        s = _digits(data, a + 17, 2)
        if y < 0 or mo < 1 or mo > 12 or d < 1 or h < 0 or h > 23 or mi < 0 or mi > 59:
            continue
        if s < 0 or s > 59:
            continue
        leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
        if d > mdays[mo - 1] or (mo == 2 and d == 29 and not leap):
            continue
        p = a + 19
        frac = 0
        if data[p] == 46:
            p += 1
            nd = 0
            while p < b and 48 <= data[p] <= 57:
                if nd < 6:
                    frac = frac * 10 + (data[p] - 48)
                nd += 1
                p += 1
            if nd == 0:
                continue
            while nd < 6:
                frac *= 10
                nd += 1
        if p >= b:
            continue
        c = data[p]
        off = 0
        if c == 90 or c == 122:
            if p + 1 != b:
                continue
        elif c == 43 or c == 45:
            if p + 6 != b or data[p + 3] != 58:
                continue
            oh = _digits(data, p + 1, 2)
            om = _digits(data, p + 4, 2)
            if oh < 0 or oh > 23 or om < 0 or om > 59:
                continue
            off = (oh * 60 + om) * 60
            if c == 45:
                off = -off
        else:
            continue
        days = _days_from_civil(y, mo, d)
        secs = days * 86400 + h * 3600 + mi * 60 + s - off
        out[i] = secs * 1_000_000 + frac
        ok[i] = True


# Instants the engine represents: 0001-01-01T00:00:00Z <= t < 10000-01-01T00:00:00Z (the
# proleptic years RFC 3339 and Python's datetime can write, far inside int64 µs).
MIN_US = -62_135_596_800 * US_PER_SECOND
END_US = 253_402_300_800 * US_PER_SECOND
TIME_RANGE = "0001-01-01T00:00:00Z..9999-12-31T23:59:59Z"


def in_time_range(us: np.ndarray) -> np.ndarray:
    """True where an instant lies in the range above."""
    return (us >= MIN_US) & (us < END_US)  # type: ignore[no-any-return]


def parse_timestamps(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """RFC 3339 strings with an offset to UTC microseconds.

    Returns ``(micros int64[n], ok bool[n])``; a string without an offset, with
    a bad field or an impossible date is not ok.

    >>> us, ok = parse_timestamps(pa.array(["2020-09-01T00:00:00+09:00",
    ...     "2020-08-31T15:00:00Z", "2020-09-01T00:00:00", "2021-02-29T00:00:00Z"]))
    >>> bool(us[0] == us[1]), ok.tolist()
    (True, [True, True, False, False])
    """
    o, d, v = buffers(arr)
    out = np.zeros(len(v), dtype=np.int64)
    ok = np.zeros(len(v), dtype=np.bool_)
    _parse_rfc3339(o, d, v, out, ok)
    return out, ok


_Q = np.array([2, 3, 4, 5, 6, 7, 2, 3, 4, 5, 6], dtype=np.int64)  # Q(n), n = 1..11 from right


@numba.njit(cache=True, nogil=True)
def _individual_number(offsets, data, valid, q):  # type: ignore[no-untyped-def]
    n = len(valid)
    out = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        if not valid[i]:
            continue
        a, b = offsets[i], offsets[i + 1]
        if b - a != 12:
            continue
        if _digits(data, a, 12) < 0:
            continue
        r = 0
        for k in range(11):  # k-th digit from the right of the first 11, n = k + 1
            r += (data[a + 10 - k] - 48) * q[k]
        r %= 11
        check = 0 if r <= 1 else 11 - r
        out[i] = data[a + 11] - 48 == check
    return out


def individual_number_mask(arr: pa.Array) -> np.ndarray:
    """True where a string is a 12-digit Individual Number with a valid check digit."""
    o, d, v = buffers(arr)
    return _individual_number(o, d, v, _Q)


@numba.njit(cache=True, nogil=True)
def _json_facts(data, starts, ends, q, pii, keys):  # type: ignore[no-untyped-def]
    # Walks the string tokens of valid JSON texts (what orjson accepted): an Individual
    # Number in any string, key or value, at any depth, including values a repeated
    # key overwrote in the decoded object, and digits written as \u003N escapes; and
    # the number of keys of the top-level object, which exceeds the decoded object's
    # size exactly when a key is repeated. Iterative: no depth limit of its own.
    digits = np.zeros(12, dtype=np.int64)
    for i in range(len(starts)):
        a, b = starts[i], ends[i]
        depth = 0
        found = False
        nkeys = 0
        j = a
        while j < b:
            c = data[j]
            if c == 34:  # '"': one string token, up to the closing quote
                k = j + 1
                length = 0
                number = True
                while k < b and data[k] != 34:
                    d = -1
                    if data[k] == 92:  # backslash escape
                        if k + 5 < b and data[k + 1] == 117 and data[k + 2] == 48 \
                                and data[k + 3] == 48 and data[k + 4] == 51 \
                                and 48 <= data[k + 5] <= 57:  # \u0030..\u0039
                            d = data[k + 5] - 48
                            k += 6
                        elif k + 1 < b and data[k + 1] == 117:
                            k += 6
                        else:
                            k += 2
                    else:
                        if 48 <= data[k] <= 57:
                            d = data[k] - 48
                        k += 1
                    if d < 0:
                        number = False
                    elif number and length < 12:
                        digits[length] = d
                    length += 1
                if number and length == 12 and not found:
                    r = 0
                    for m in range(11):
                        r += digits[10 - m] * q[m]
                    r %= 11
                    found = digits[11] == (0 if r <= 1 else 11 - r)
                if depth == 1:
                    m = k + 1
                    while m < b and (data[m] == 32 or data[m] == 9 or data[m] == 10
                                     or data[m] == 13):
                        m += 1
                    if m < b and data[m] == 58:  # ':' makes it a key
                        nkeys += 1
                j = k + 1
                continue
            if c == 123 or c == 91:
                depth += 1
            elif c == 125 or c == 93:
                depth -= 1
            j += 1
        pii[i] = found
        keys[i] = nkeys


def json_facts(texts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """For JSON texts a parser accepted: (holds an Individual Number anywhere, number of
    keys written in the top-level object), one call for a whole batch.

    >>> pii, keys = json_facts([rb'{"a": "\u0031234567890\u00318"}', b'{"a": 1, "a": 2}'])
    >>> pii.tolist(), keys.tolist()
    ([True, False], [1, 2])
    """
    n = len(texts)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
    ends = np.cumsum(lengths)
    data = np.frombuffer(b"".join(texts), dtype=np.uint8)
    pii = np.zeros(n, dtype=np.bool_)
    keys = np.zeros(n, dtype=np.int64)
    _json_facts(data, ends - lengths, ends, _Q, pii, keys)
    return pii, keys


def check_digit(first11: str) -> int:
    """Check digit of an Individual Number from its first 11 digits (rules, Privacy).

    >>> check_digit("12345678901")
    8
    """
    r = sum(int(first11[10 - k]) * int(_Q[k]) for k in range(11)) % 11
    return 0 if r <= 1 else 11 - r


def is_individual_number(s: str) -> bool:
    """Scalar form of :func:`individual_number_mask`, for keys and odd places.

    >>> is_individual_number("123456789018"), is_individual_number("123456789012")
    (True, False)
    """
    if len(s) != 12 or not s.isascii() or not s.isdigit():
        return False
    return int(s[11]) == check_digit(s[:11])


@numba.njit(cache=True, nogil=True)
def _murmur2_partitions(offsets, data, valid, n_partitions):  # type: ignore[no-untyped-def]
    # Kafka's Java murmur2 (what the default partitioner uses), in 32-bit arithmetic
    mask = 0xFFFFFFFF
    m = 0x5BD1E995
    out = np.full(len(valid), -1, dtype=np.int64)
    for i in range(len(valid)):
        if not valid[i]:
            continue
        a = offsets[i]
        length = offsets[i + 1] - a
        h = (0x9747B28C ^ length) & mask
        for q in range(length // 4):
            j = a + 4 * q
            k = (data[j] | (data[j + 1] << 8) | (data[j + 2] << 16) | (data[j + 3] << 24))
            k = (k * m) & mask
            k ^= k >> 24
            k = (k * m) & mask
            h = (h * m) & mask
            h ^= k
        t = a + (length & ~3)
        rest = length % 4
        if rest == 3:
            h ^= data[t + 2] << 16
        if rest >= 2:
            h ^= data[t + 1] << 8
        if rest >= 1:
            h ^= data[t]
            h = (h * m) & mask
        h ^= h >> 13
        h = (h * m) & mask
        h ^= h >> 15
        out[i] = (h & 0x7FFFFFFF) % n_partitions
    return out


def kafka_partitions(arr: pa.Array, n_partitions: int) -> np.ndarray:
    """The partition Kafka's default partitioner gives each string key (-1 for null).

    >>> from aiokafka.partitioner import murmur2
    >>> keys = ["AB12cd34", "x", "xy", "xyz", "0123456789abc"]
    >>> kafka_partitions(pa.array(keys), 8).tolist() == [
    ...     (murmur2(k.encode()) & 0x7FFFFFFF) % 8 for k in keys]
    True
    """
    o, d, v = buffers(arr)
    return _murmur2_partitions(o, d, v, n_partitions)



@numba.njit(cache=True, nogil=True)
def _prefix_codes(offsets, data, sep):  # type: ignore[no-untyped-def]
    n = len(offsets) - 1
    codes = np.empty(n, dtype=np.int64)
    starts = np.empty(n, dtype=np.int64)  # each code's prefix: data[starts:ends]
    ends = np.empty(n, dtype=np.int64)
    firsts = np.empty(n, dtype=np.int64)
    k = 0
    last = -1
    for i in range(n):
        a = offsets[i]
        p = a
        while p < offsets[i + 1] and data[p] != sep:
            p += 1
        code = -1
        # rows come in runs of one prefix: the previous row's code first, then all
        for t in range(-1, k):
            c = last if t < 0 else t
            if c >= 0 and ends[c] - starts[c] == p - a and \
                    np.all(data[starts[c]:ends[c]] == data[a:p]):
                code = c
                break
        if code < 0:
            code = k
            starts[k], ends[k], firsts[k] = a, p, i
            k += 1
        codes[i] = code
        last = code
    return codes, firsts[:k]


def prefix_codes(arr: pa.Array, sep: str) -> tuple[np.ndarray, np.ndarray]:
    """Each string's text before the first ``sep`` (all of it without one), as a
    code per row and the first row of each code, exact and in order of appearance.

    >>> codes, firsts = prefix_codes(pa.array(["a/1", "b/1", "a/2", "a", "a/"]), "/")
    >>> codes.tolist(), firsts.tolist()
    ([0, 1, 0, 0, 0], [0, 1])
    """
    o, d, _ = buffers(arr)
    return _prefix_codes(o, d, ord(sep))  # type: ignore[no-any-return]

# --------------------------------------------------------------------- RFC 3339 text
#
# The one place instants become text. Rows are assembled from a per-day and a
# per-second byte table (table lookups instead of digit arithmetic, no Python string
# per row until the caller asks for one); the generator builds the operators'
# renderings on the same heads.

_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)
_TOD_TABLE: np.ndarray | None = None
_UTC_FORM = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z")


def strings_from_matrix(mat: np.ndarray) -> pa.Array:
    """A StringArray straight from a byte matrix (row i = string i), zero-copy.

    Python string objects are never created, which is what keeps ten million ids and
    timestamps within a second or two.
    """
    n, w = mat.shape
    offsets = np.arange(0, (n + 1) * w, w, dtype=np.int64)
    data = pa.py_buffer(np.ascontiguousarray(mat).reshape(-1))
    if offsets[-1] < 2**31:
        off32 = pa.py_buffer(offsets.astype(np.int32))
        return pa.Array.from_buffers(pa.string(), n, [None, off32, data])
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), data])


def _tod_table() -> np.ndarray:
    """"HH:MM:SS" for every second of a day, as an (86400, 8) byte table."""
    global _TOD_TABLE
    if _TOD_TABLE is None:
        sec = np.arange(86400)
        t = np.empty((86400, 8), dtype=np.uint8)
        for col, v in ((0, sec // 3600), (3, sec // 60 % 60), (6, sec % 60)):
            t[:, col] = _DIGITS[v // 10]
            t[:, col + 1] = _DIGITS[v % 10]
        t[:, 2] = t[:, 5] = ord(":")
        _TOD_TABLE = t
    return _TOD_TABLE


def _date_rows(days: np.ndarray) -> np.ndarray:
    """``YYYY-MM-DDT`` byte rows of day numbers since the epoch."""
    d0, d1 = int(days.min()), int(days.max())
    if d1 - d0 < max(4 * len(days), 1024):   # a campaign spans a few hundred days
        table_days, index = np.arange(d0, d1 + 1), days - d0
    else:                                    # a few instants far apart
        table_days, index = np.unique(days, return_inverse=True)
    dates = np.datetime_as_string(table_days.astype("datetime64[D]"), unit="D")
    table = np.empty((len(table_days), 11), dtype=np.uint8)
    table[:, :10] = np.char.encode(dates, "ascii").view(np.uint8).reshape(-1, 10)
    table[:, 10] = ord("T")
    return table[index]  # type: ignore[no-any-return]


def datetime_heads(us: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``YYYY-MM-DDTHH:MM:SS`` byte rows (n, 19) of wall-clock instants in µs (UTC, or
    already shifted to another zone by the caller), and each one's µs within the second.
    Instants must lie in :data:`TIME_RANGE`."""
    us = np.asarray(us, dtype=np.int64)
    mat = np.empty((len(us), 19), dtype=np.uint8)
    if len(us) == 0:
        return mat, np.zeros(0, dtype=np.int64)
    days = us // US_PER_DAY
    sod = us - days * US_PER_DAY
    mat[:, :11] = _date_rows(days)
    mat[:, 11:] = _tod_table()[sod // US_PER_SECOND]
    return mat, sod % US_PER_SECOND


def rfc3339_array(us: np.ndarray, suffix: str = "Z") -> pa.Array:
    """The engine's RFC 3339 text of UTC µs instants: ``YYYY-MM-DDTHH:MM:SS`` then
    ``.ffffff`` only when the fraction is not zero, then ``suffix`` (the form of
    ``schemas/grant.schema.json``). ``suffix=""`` writes a wall-clock time without
    offset.

    >>> rfc3339_array(np.array([1598886000000000, 1598886000123456, -1])).to_pylist()
    ['2020-08-31T15:00:00Z', '2020-08-31T15:00:00.123456Z', '1969-12-31T23:59:59.999999Z']
    """
    us = np.asarray(us, dtype=np.int64)
    if not in_time_range(us).all():
        # only unchecked input gets here (publish of a foreign Parquet column): years
        # beyond four digits, written as numpy writes them, one by one
        return pa.array([_far_instant(int(u), suffix) for u in us], type=pa.string())
    head, frac = datetime_heads(us)
    n = len(frac)
    tail = suffix.encode("ascii")
    width = 26 + len(tail)
    full = np.empty((n, width), dtype=np.uint8)
    full[:, :19] = head
    full[:, 19] = ord(".")
    for k in range(6):
        full[:, 25 - k] = _DIGITS[frac // 10**k % 10]
    full[:, 26:] = np.frombuffer(tail, dtype=np.uint8)
    has_frac = frac != 0
    keep = np.ones((n, width), dtype=np.bool_)
    keep[~has_frac, 19:26] = False
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.where(has_frac, width, width - 7), out=offsets[1:])
    data = pa.py_buffer(full[keep])
    if offsets[-1] < 2**31:
        return pa.Array.from_buffers(pa.string(), n,
                                     [None, pa.py_buffer(offsets.astype(np.int32)), data])
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), data])


def _far_instant(us: int, suffix: str) -> str:
    text = str(np.datetime64(us, "us"))
    return (text[:-7] if text.endswith(".000000") else text) + suffix


def rfc3339_utc(us: np.ndarray) -> list[str]:
    """:func:`rfc3339_array` as Python strings.

    >>> rfc3339_utc(np.array([1598886000123456]))
    ['2020-08-31T15:00:00.123456Z']
    """
    return rfc3339_array(us).to_pylist()  # type: ignore[no-any-return]


def format_utc(us: int | datetime) -> str:
    """One instant (µs since the epoch, or an aware datetime) in the engine's form.

    >>> format_utc(0), format_utc(-1)
    ('1970-01-01T00:00:00Z', '1969-12-31T23:59:59.999999Z')
    """
    if isinstance(us, datetime):
        us = epoch_us(us)
    return rfc3339_utc(np.array([us], dtype=np.int64))[0]


def is_utc_form(text: str) -> bool:
    """True when ``text`` has the form :func:`format_utc` writes (the calendar unchecked)."""
    return _UTC_FORM.fullmatch(text) is not None


def parse_utc(text: str) -> int:
    """The inverse of :func:`format_utc`: only the UTC ``Z`` form the engine writes
    (up to six fraction digits), values checked by :func:`parse_timestamps`.

    >>> parse_utc("2020-09-13T12:26:40.25Z") == 1_600_000_000_250_000
    True
    """
    if not is_utc_form(text):
        raise ValueError(f"not an RFC 3339 UTC timestamp ending in Z: {text!r}")
    us, ok = parse_timestamps(pa.array([text], type=pa.string()))
    if not ok[0]:
        raise ValueError(f"no such date or time of day: {text!r}")
    return int(us[0])


