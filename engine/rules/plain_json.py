"""Flat JSON records of known fields, shaped without Python per record.

:func:`engine.rules.validate.shape_objects` costs a JSON decode and a Python pass
per record, most of a batched message's decoding. Nearly every record an operator
publishes is *plain*: one flat object whose keys are fields of its record type,
each once, whose values are ``null``, strings without escapes or non-ASCII bytes,
or (``amount``) an integer of at most 18 digits. For such texts the result of JSON
decoding plus ``shape_objects`` is known from the bytes alone, so
:func:`shape_plain` reads them in one compiled pass straight into the
:class:`~engine.rules.validate.Shaped` columns.

A text that is not plain (an extra field, an escape, a float, a repeated key, an
Individual Number, a record over the size limit, ...) is left to the object path,
and :func:`merge` puts both back in order, so every rejection's reason and detail
come from one implementation. What the two paths give for plain texts is the same
by construction and by test (tests/rules/test_plain_json.py, against the object
path).
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa

from engine.rules.strings import individual_number_mask, put_bytes, string_array
from engine.rules.validate import (
    AMOUNT,
    AMOUNT_INT,
    AMOUNT_MISSING,
    ENR_STRING_FIELDS,
    ENR_TIME_FIELDS,
    TXN_STRING_FIELDS,
    TXN_TIME_FIELDS,
    Shaped,
)

_MAX_DIGITS = 18  # any integer this long fits int64; longer ones take the object path


def _name_table(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(n) for n in names)
    table = np.zeros((len(names), width), np.uint8)
    for f, n in enumerate(names):
        table[f, :len(n)] = np.frombuffer(n.encode(), np.uint8)
    return table, np.array([len(n) for n in names], np.int64)


# per record type: its string and time fields (the Shaped columns, in their order),
# then "amount" for transactions
_FIELDS = {
    "transaction": (*TXN_STRING_FIELDS, *TXN_TIME_FIELDS, AMOUNT),
    "enrollment": (*ENR_STRING_FIELDS, *ENR_TIME_FIELDS),
}
_TABLES = {t: _name_table(names) for t, names in _FIELDS.items()}


@numba.njit(cache=True, nogil=True, inline="always")
def _ws(data, j, b):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    while j < b and (data[j] == 32 or data[j] == 9 or data[j] == 13 or data[j] == 10):
        j += 1
    return j


@numba.njit(cache=True, nogil=True, inline="always")
def _string_end(data, j, b):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    # from the byte after an opening quote: the closing quote's position, or -1 where
    # the string holds an escape, a control character or a non-ASCII byte (or no end)
    while j < b:
        c = data[j]
        if c == 34:
            return j
        if c < 32 or c >= 128 or c == 92:
            return -1
        j += 1
    return -1


@numba.njit(cache=True, nogil=True)
def _scan(data, starts, ends, names, name_len, amount_field, vstart, vend, amount,
          aclass, plain):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    # plain[i]: whether text i is plain; vstart/vend: each field's string value as a
    # byte range of ``data`` (-1: absent or null), amount/aclass: its amount
    for i in range(len(starts)):
        plain[i] = _scan_one(data, starts[i], ends[i], names, name_len, amount_field,
                             vstart[i], vend[i], amount, aclass, i)


@numba.njit(cache=True, nogil=True)
def _scan_one(data, a, b, names, name_len, amount_field, vstart, vend, amount, aclass,
              i):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    n_fields = len(name_len)
    aclass[i] = AMOUNT_MISSING
    seen = 0
    j = _ws(data, a, b)
    if j >= b or data[j] != 123:  # '{'
        return False
    j = _ws(data, j + 1, b)
    if j < b and data[j] == 125:  # '}': the empty object
        return _ws(data, j + 1, b) == b
    while True:
        if j >= b or data[j] != 34:
            return False
        k = _string_end(data, j + 1, b)
        if k < 0:
            return False
        f = -1
        for g in range(n_fields):
            if name_len[g] == k - j - 1:
                same = True
                for q in range(name_len[g]):
                    if names[g, q] != data[j + 1 + q]:
                        same = False
                        break
                if same:
                    f = g
                    break
        if f < 0 or seen & (1 << f):
            return False  # a field of no record, or named twice
        seen |= 1 << f
        j = _ws(data, k + 1, b)
        if j >= b or data[j] != 58:  # ':'
            return False
        j = _ws(data, j + 1, b)
        if j >= b:
            return False
        c = data[j]
        if c == 34 and f != amount_field:
            k = _string_end(data, j + 1, b)
            if k < 0:
                return False
            vstart[f] = j + 1
            vend[f] = k
            j = k + 1
        elif c == 110:  # null: as if absent
            if j + 4 > b or data[j + 1] != 117 or data[j + 2] != 108 or data[j + 3] != 108:
                return False
            j += 4
        elif f == amount_field and (c == 45 or 48 <= c <= 57):
            neg = c == 45
            if neg:
                j += 1
            k = j
            v = 0
            while k < b and 48 <= data[k] <= 57:
                v = v * 10 + (data[k] - 48)
                k += 1
            if k == j or k - j > _MAX_DIGITS or (data[j] == 48 and k - j > 1):
                return False  # no digit, too long, or a leading zero
            amount[i] = -v if neg else v
            aclass[i] = AMOUNT_INT
            j = k
        else:
            return False  # any other value: the object path judges it
        j = _ws(data, j, b)
        if j < b and data[j] == 44:  # ','
            j = _ws(data, j + 1, b)
            continue
        if j < b and data[j] == 125:  # '}'
            return _ws(data, j + 1, b) == b
        return False  # a float's '.', an exponent, or no closing brace


@numba.njit(cache=True, nogil=True)
def _gather(data, vstart, vend, f):  # type: ignore[no-untyped-def]  # pragma: no cover
    n = vstart.shape[0]
    offsets = np.zeros(n + 1, np.int64)
    valid = np.zeros(n, np.bool_)
    total = 0
    for i in range(n):
        if vstart[i, f] >= 0:
            valid[i] = True
            total += vend[i, f] - vstart[i, f]
        offsets[i + 1] = total
    buf = np.empty(total, np.uint8)
    for i in range(n):
        a = vstart[i, f]
        if a >= 0:
            put_bytes(buf, offsets[i], data, a, vend[i, f])
    return offsets, buf, valid


def _column(data: np.ndarray, vstart: np.ndarray, vend: np.ndarray, f: int) -> pa.Array:
    offsets, buf, valid = _gather(data, vstart, vend, f)
    return string_array(offsets, buf, valid)  # the object path's type, where it fits


def shape_plain(lines: list[bytes], record_type: str, limit: int | None = None
                ) -> tuple[Shaped, np.ndarray]:
    """The plain texts among ``lines`` (module docstring; none over ``limit`` bytes)
    shaped as ``shape_objects([orjson.loads(t) ...], record_type, json_facts(...))``
    shapes them, and which of ``lines`` they are (a bool mask): the rest are for the
    object path (:func:`merge` puts the two together)."""
    n = len(lines)
    lengths = np.fromiter(map(len, lines), np.int64, n)
    ends = np.cumsum(lengths)
    data = np.frombuffer(b"".join(lines), np.uint8)
    names = _FIELDS[record_type]
    table, name_len = _TABLES[record_type]
    vstart = np.full((n, len(names)), -1, np.int64)
    vend = np.full((n, len(names)), -1, np.int64)
    amount = np.zeros(n, np.int64)
    aclass = np.full(n, AMOUNT_MISSING, np.int8)
    plain = np.zeros(n, np.bool_)
    amount_field = names.index(AMOUNT) if AMOUNT in names else -1
    _scan(data, ends - lengths, ends, table, name_len, amount_field, vstart, vend,
          amount, aclass, plain)
    if limit is not None:
        plain &= lengths <= limit
    strings = [f for f in names if f != AMOUNT]
    starts, stops = vstart[plain], vend[plain]
    columns = {f: _column(data, starts, stops, g) for g, f in enumerate(strings)}
    # an Individual Number must be rejected with the field that holds it named: left to
    # the object path, which names the first one in the record's own order
    pii = np.zeros(len(columns[strings[0]]), np.bool_)
    for col in columns.values():
        pii |= individual_number_mask(col)
    if pii.any():
        plain[np.flatnonzero(plain)[pii]] = False
        keep = pa.array(~pii)
        columns = {f: col.filter(keep) for f, col in columns.items()}
    m = int(np.count_nonzero(plain))
    is_txn = amount_field >= 0
    return Shaped(m, record_type, np.zeros(m, np.int8), np.full(m, None, object), columns,
                  {f: np.zeros(m, np.bool_) for f in strings},
                  amount=amount[plain] if is_txn else None,
                  amount_class=aclass[plain] if is_txn else None), plain


def merge(plain: Shaped, mask: np.ndarray, rest: Shaped) -> Shaped:
    """One batch of two made of the same texts: ``plain`` holds those where ``mask`` is
    True, ``rest`` the others, each in text order."""
    n = len(mask)
    assert plain.n + rest.n == n and not plain.times_us and not rest.times_us
    # position in the concatenation [plain, rest] of each text
    order = np.empty(n, np.int64)
    order[mask] = np.arange(plain.n)
    order[~mask] = np.arange(plain.n, n)
    take = pa.array(order)

    def arrays(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.empty(n, a.dtype)
        out[mask] = a
        out[~mask] = b
        return out

    def optional(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        return None if a is None or b is None else arrays(a, b)

    return Shaped(
        n, plain.record_type, arrays(plain.reason, rest.reason),
        arrays(plain.detail, rest.detail),
        {f: pa.concat_arrays([col, rest.columns[f]]).take(take)
         for f, col in plain.columns.items()},
        {f: arrays(b, rest.bad_type[f]) for f, b in plain.bad_type.items()},
        amount=optional(plain.amount, rest.amount),
        amount_class=optional(plain.amount_class, rest.amount_class))
