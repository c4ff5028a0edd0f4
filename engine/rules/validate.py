"""Stateless checks of a batch of records: Individual Number, MALFORMED,
INVALID_AMOUNT, OPERATOR_MISMATCH and UNKNOWN_OPERATOR, plus the per-record facts the stateful
checks need (JST days, window and lateness flags).

Records arrive in two shapes. Decoded JSON values (JSON Lines, one-record
Kafka messages) go through :func:`shape_objects`, a thin Python pass that only
sorts values by type — except plain texts, which engine.rules.plain_json reads
into the same columns without decoding them; Arrow tables (Parquet, Arrow IPC
messages) go through :func:`shape_table`, which is fully columnar. All produce a
:class:`Shaped` batch, and everything after that — formats, timestamps, amounts, operators —
is one vectorised implementation, so a record is judged the same way whichever
shape it came in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.rules import strings
from engine.rules.model import (
    KIND_NAMES,
    NO_KIND,
    NO_TIME,
    Campaign,
    Kind,
    Reason,
    Registry,
    jst_day,
)

TXN_STRING_FIELDS = ("txn_id", "operator_id", "mykey_id", "kind", "original_txn_id")
TXN_TIME_FIELDS = ("occurred_at", "received_at")
ENR_STRING_FIELDS = ("mykey_id", "operator_id", "earn_on")
ENR_TIME_FIELDS = ("applied_at", "received_at")
AMOUNT = "amount"

# amount classes decided while shaping; only AMOUNT_INT goes on to the range check
# (AMOUNT_HUGE: an integer beyond int64, which no max_amount admits)
AMOUNT_INT, AMOUNT_NOT_INTEGER, AMOUNT_WRONG_TYPE, AMOUNT_MISSING, AMOUNT_HUGE = 0, 1, 2, 3, 4
_INT64_MAX = 2**63 - 1


@dataclass
class Shaped:
    """Columns of a batch before any value check.

    ``strings``/``times`` hold every known field as an Arrow string array (null
    where absent); ``bad_type`` marks fields present with a non-string JSON type;
    ``times_us`` holds timestamp fields that arrived already typed.
    """

    n: int
    record_type: str
    reason: np.ndarray                      # int8, PERSONAL_NUMBER_FORBIDDEN / MALFORMED so far
    detail: np.ndarray                      # object
    columns: dict[str, pa.Array]
    bad_type: dict[str, np.ndarray] = field(default_factory=dict)
    # µs, present, within strings.TIME_RANGE
    times_us: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    amount: np.ndarray | None = None        # int64
    amount_class: np.ndarray | None = None  # int8
    ts_override: np.ndarray | None = None   # Kafka record timestamps (streaming only)
    # the operator each record came from (the operator of its input topic, or of the
    # file it was read from); null, or no column at all, where nobody says: then the
    # OPERATOR_MISMATCH check is skipped (SETTLEMENT_RULES.md v2)
    source_operator: pa.Array | None = None


def _is_pii(s: str) -> bool:
    return len(s) == 12 and strings.is_individual_number(s)


def _holds_pii(value: Any) -> bool:
    """An Individual Number in a string, or anywhere inside a JSON object or array
    (values and keys). An explicit stack, not recursion: nesting depth is the
    sender's choice."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _is_pii(v):
                return True
        elif isinstance(v, dict):
            for k, x in v.items():
                if isinstance(k, str) and _is_pii(k):
                    return True
                stack.append(x)
        elif isinstance(v, list):
            stack.extend(v)
    return False


def pii_field(obj: dict[str, Any]) -> str | None:
    """Name of the first top-level field holding an Individual Number anywhere
    in its name or value (nested values included), else None."""
    for k, v in obj.items():
        if isinstance(k, str) and _is_pii(k):
            return "(a field name)"
        if type(v) is str:  # the common flat record: no stack
            if _is_pii(v):
                return k
        elif isinstance(v, dict | list) and _holds_pii(v):
            return k
    return None


_SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")


def field_label(name: object) -> str:
    """How a detail names a field: quoted when it is short and plain, else a fixed
    phrase, so that a detail never echoes an unbounded or odd field name."""
    if isinstance(name, str) and _SAFE_NAME.fullmatch(name):
        return f"field {name!r}"
    return "an extra field" if name != "(a field name)" else "a field name"


def pii_detail(where: str) -> str:
    return f"{field_label(where)} holds an Individual Number (redacted)"


REPEATED_FIELD = "the record names a field more than once"
REPEATED_PII = "a repeated field holds an Individual Number (redacted)"
DEEP_PII = "a field nested too deep to decode holds an Individual Number (redacted)"


def shape_objects(objs: Sequence[Any], record_type: str,
                  raw: tuple[np.ndarray, np.ndarray] | None = None) -> Shaped:
    """Sort decoded JSON values into columns by type; no value is judged here
    except the Individual Number test, which must precede everything, and a
    repeated field name.

    ``raw`` is :func:`engine.rules.strings.json_facts` of the texts the values were
    decoded from, where there are texts: it finds numbers the decoded objects no
    longer show (a repeated key keeps only its last value) and repeated keys, and
    spares the walk through records that hold no number."""
    n = len(objs)
    sfields = TXN_STRING_FIELDS if record_type == "transaction" else ENR_STRING_FIELDS
    tfields = TXN_TIME_FIELDS if record_type == "transaction" else ENR_TIME_FIELDS
    names = sfields + tfields
    reason = np.zeros(n, dtype=np.int8)
    detail = np.full(n, None, dtype=object)
    cols: dict[str, list[str | None]] = {f: [None] * n for f in names}
    bad = {f: np.zeros(n, dtype=np.bool_) for f in names}
    amount = np.zeros(n, dtype=np.int64)
    aclass = np.full(n, AMOUNT_MISSING, dtype=np.int8)
    is_txn = record_type == "transaction"
    for i, obj in enumerate(objs):
        if raw is not None and raw[0][i] and getattr(obj, "too_deep", False):
            # an object too deep to decode: its number still comes first
            reason[i] = Reason.PERSONAL_NUMBER_FORBIDDEN
            detail[i] = DEEP_PII
            continue
        if not isinstance(obj, dict):
            reason[i] = Reason.MALFORMED
            # a reader's stand-in for an undecodable line carries its own detail
            detail[i] = getattr(obj, "detail", None) or "record is not a JSON object"
            continue
        if raw is None or raw[0][i]:
            where = pii_field(obj)
            if where is not None or raw is not None:
                reason[i] = Reason.PERSONAL_NUMBER_FORBIDDEN
                detail[i] = pii_detail(where) if where is not None else REPEATED_PII
                continue
        if raw is not None and raw[1][i] != len(obj):
            reason[i] = Reason.MALFORMED
            detail[i] = REPEATED_FIELD
            continue
        for f in names:
            v = obj.get(f)
            if v is None:
                continue
            if type(v) is str:
                cols[f][i] = v
            else:
                bad[f][i] = True
        if is_txn:
            a = obj.get(AMOUNT)
            if a is None:
                continue
            ta = type(a)
            if ta is int:
                if -_INT64_MAX <= a <= _INT64_MAX:
                    amount[i] = a
                    aclass[i] = AMOUNT_INT
                else:
                    aclass[i] = AMOUNT_HUGE
            elif ta is float:
                aclass[i] = AMOUNT_NOT_INTEGER
            else:
                aclass[i] = AMOUNT_WRONG_TYPE
    columns = {f: pa.array(cols[f], type=pa.string()) for f in names}
    return Shaped(n, record_type, reason, detail, columns, bad,
                  amount=amount if is_txn else None, amount_class=aclass if is_txn else None)


def _plain(arr: pa.Array) -> pa.Array:
    """The values of a column without encodings: dictionary decoded, run ends
    expanded, extension types as their storage."""
    while True:
        t = arr.type
        if isinstance(t, pa.BaseExtensionType):
            arr = arr.storage
        elif pa.types.is_dictionary(t):
            arr = arr.dictionary_decode()
        elif pa.types.is_run_end_encoded(t):
            arr = pc.run_end_decode(arr)
        else:
            return arr


def _as_string_column(arr: pa.Array) -> pa.Array | None:
    t = arr.type
    if pa.types.is_string(t):
        return arr
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return arr.cast(pa.string())
    return None


def _is_text(t: pa.DataType) -> bool:
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t))


def _holds_no_text(t: pa.DataType) -> bool:
    return (pa.types.is_null(t) or pa.types.is_boolean(t) or pa.types.is_integer(t)
            or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_temporal(t)
            or pa.types.is_interval(t))


def _valid(arr: pa.Array) -> np.ndarray:
    return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)


def _children(arr: pa.Array) -> list[tuple[pa.Array, np.ndarray]]:
    """The child arrays of a nested array, each with the row of ``arr`` every child
    value belongs to (values behind a null row are not the row's values)."""
    t = arr.type
    n = len(arr)
    rows = np.arange(n, dtype=np.int64)
    if pa.types.is_struct(t):
        return [(pc.struct_field(arr, [k]), rows) for k in range(t.num_fields)]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        off = arr.offsets.to_numpy().astype(np.int64)
        lengths = np.diff(off) * _valid(arr)
        parents = np.repeat(rows, np.diff(off))
        keep = np.repeat(lengths > 0, np.diff(off))
        values = arr.values.slice(int(off[0]), int(off[-1] - off[0]))
        return [(values.filter(pa.array(keep)), parents[keep])]
    if pa.types.is_fixed_size_list(t):
        size = t.list_size
        values = arr.values.slice(arr.offset * size, n * size)
        parents = np.repeat(rows, size)
        keep = np.repeat(_valid(arr), size)
        return [(values.filter(pa.array(keep)), parents[keep])]
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return [(arr.flatten(), pc.list_parent_indices(arr).to_numpy().astype(np.int64))]
    if pa.types.is_union(t):
        codes = np.asarray(arr.type_codes.to_numpy(zero_copy_only=False))
        out = []
        for k in range(t.num_fields):
            sel = codes == t.type_codes[k]
            child = arr.field(k)
            if t.mode == "dense":
                offsets = np.asarray(arr.offsets.to_numpy(zero_copy_only=False))
                out.append((child.take(pa.array(offsets[sel])), rows[sel]))
            else:
                out.append((child.filter(pa.array(sel)), rows[sel]))
        return out
    raise TypeError(t)


def pii_in_arrow(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(Individual Number anywhere in the row, row holds a type that cannot be
    searched) for every row of a column. Walks nested types with an explicit
    stack, whatever their depth."""
    n = len(arr)
    hit = np.zeros(n, dtype=np.bool_)
    odd = np.zeros(n, dtype=np.bool_)
    stack: list[tuple[pa.Array, np.ndarray | None]] = [(arr, None)]
    while stack:
        a, rows = stack.pop()
        a = _plain(a)
        t = a.type
        if len(a) == 0 or a.null_count == len(a) or _holds_no_text(t):
            continue
        if _is_text(t):
            found = strings.individual_number_mask(a)
            hit[found if rows is None else rows[found]] = True
            continue
        try:
            children = _children(a)
        except TypeError:
            valid = _valid(a)
            odd[valid if rows is None else rows[valid]] = True
            continue
        if pa.types.is_struct(t) and any(_is_pii(t.field(k).name) for k in range(t.num_fields)):
            valid = _valid(a)  # a nested field name, as a key of every such object
            hit[valid if rows is None else rows[valid]] = True
        for child, child_rows in children:
            stack.append((child, child_rows if rows is None else rows[child_rows]))
    return hit, odd


def _typed_times(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(µs, within the representable range) of a typed timestamp column, exact for
    every unit: seconds and milliseconds are range-checked before scaling,
    nanoseconds are truncated like a long fraction in a string."""
    raw = np.asarray(arr.cast(pa.int64()).fill_null(0).to_numpy(), dtype=np.int64)
    unit = arr.type.unit
    if unit == "ns":
        us = raw // 1000
        return us, strings.in_time_range(us)
    scale = {"s": 1_000_000, "ms": 1000, "us": 1}[unit]
    fits = (raw >= strings.MIN_US // scale) & (raw < strings.END_US // scale)
    return np.where(fits, raw, 0) * scale, fits


def shape_table(table: pa.Table, record_type: str) -> Shaped:
    """Columnar shaping of an Arrow table (Parquet file, Arrow IPC message)."""
    n = table.num_rows
    is_txn = record_type == "transaction"
    sfields = TXN_STRING_FIELDS if is_txn else ENR_STRING_FIELDS
    tfields = TXN_TIME_FIELDS if is_txn else ENR_TIME_FIELDS
    reason = np.zeros(n, dtype=np.int8)
    detail = np.full(n, None, dtype=object)
    names = table.column_names
    # by position: a table may name a column twice
    cols = [strings.one_array(c) for c in table.columns]
    odd_where: list[tuple[np.ndarray, str]] = []
    for name, arr in zip(names, cols, strict=True):
        if strings.is_individual_number(name):
            hit = np.ones(n, dtype=np.bool_)
            where = "(a field name)"
        else:
            hit, odd = pii_in_arrow(arr)
            where = name
            if odd.any():
                odd_where.append((odd, name))
        new = hit & (reason == 0)
        if new.any():
            reason[new] = Reason.PERSONAL_NUMBER_FORBIDDEN
            detail[new] = pii_detail(where)
    if len(set(names)) != len(names):
        new = reason == 0
        reason[new] = Reason.MALFORMED
        detail[new] = REPEATED_FIELD
    for odd, name in odd_where:
        new = odd & (reason == 0)
        reason[new] = Reason.MALFORMED
        detail[new] = f"{field_label(name)} has an Arrow type the engine cannot read"
    first = {name: i for i, name in reversed(list(enumerate(names)))}
    by_name = {f: _plain(cols[first[f]]) for f in (*sfields, *tfields, AMOUNT) if f in first}
    columns: dict[str, pa.Array] = {}
    bad: dict[str, np.ndarray] = {}
    times_us: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    null_col = pa.nulls(n, type=pa.string())
    for f in sfields + tfields:
        col = by_name.get(f)
        columns[f] = null_col
        if col is None or col.null_count == n:
            continue
        if f in tfields and pa.types.is_timestamp(col.type):
            # the values live in times_us
            valid = _valid(col)
            if col.type.tz is None:
                # a naive timestamp column has no offset: every value is malformed
                bad[f] = valid
                times_us[f] = (np.zeros(n, dtype=np.int64), valid, valid)
                continue
            us, in_range = _typed_times(col)
            times_us[f] = (us, valid, in_range)
            continue
        s = _as_string_column(col)
        if s is None:
            bad[f] = _valid(col)
            continue
        columns[f] = s
    amount = aclass = None
    if is_txn:
        aclass = np.full(n, AMOUNT_MISSING, dtype=np.int8)
        amount = np.zeros(n, dtype=np.int64)
        col = by_name.get(AMOUNT)
        if col is not None:
            valid = _valid(col)
            t = col.type
            if pa.types.is_integer(t):
                if pa.types.is_uint64(t):
                    raw = col.fill_null(0).to_numpy()
                    big = raw > np.uint64(_INT64_MAX)
                    amount = np.where(big, 0, raw).astype(np.int64)
                    aclass = np.where(valid, np.where(big, AMOUNT_HUGE, AMOUNT_INT),
                                      AMOUNT_MISSING).astype(np.int8)
                else:
                    amount = col.fill_null(0).cast(pa.int64()).to_numpy()
                    aclass = np.where(valid, AMOUNT_INT, AMOUNT_MISSING).astype(np.int8)
            elif pa.types.is_floating(t) or pa.types.is_decimal(t):
                aclass = np.where(valid, AMOUNT_NOT_INTEGER, AMOUNT_MISSING).astype(np.int8)
            elif not pa.types.is_null(t):
                aclass = np.where(valid, AMOUNT_WRONG_TYPE, AMOUNT_MISSING).astype(np.int8)
    return Shaped(n, record_type, reason, detail, columns, bad, times_us, amount, aclass)


@dataclass
class Validated:
    """A batch after the stateless checks, in the array form the kernel takes.

    ``reason`` is the first failed stateless check (0 = passed them); the
    ``out_*`` string columns are what a rejection may show: null where the
    value is absent, malformed or redacted.
    """

    n: int
    record_type: str
    reason: np.ndarray          # int8
    detail: np.ndarray          # object (str | None)
    mykey_id: pa.Array          # valid ids only (used for state and outputs)
    operator_id: pa.Array
    txn_id: pa.Array
    original_txn_id: pa.Array
    op: np.ndarray              # int32 operator code, -1 unknown
    kind: np.ndarray            # int8 (transactions: kind; enrollments: effective earn kind)
    amount: np.ndarray          # int64
    at: np.ndarray              # int64 µs: occurred_at / applied_at
    day: np.ndarray             # int32 JST day of ``at``
    received: np.ndarray        # int64 µs, NO_TIME when absent
    too_late: np.ndarray        # bool: txn LATE           | enrollment ENROLLMENT_CLOSED
    outside: np.ndarray         # bool: txn OUTSIDE_WINDOW | enrollment SELECTION_NOT_OPEN
    bad_earn_on: np.ndarray     # bool: -                  | enrollment INVALID_EARN_ON
    earn_given: np.ndarray      # bool (enrollments)

    def take(self, idx: np.ndarray) -> Validated:
        """The records at ``idx`` (int64 positions), in that order."""
        arrow_idx = pa.array(idx, type=pa.int64())
        return self._rows(len(idx), lambda a: a.take(arrow_idx), lambda a: a[idx])

    def slice(self, start: int, stop: int) -> Validated:
        """The records ``start:stop``, without copying (views and Arrow slices)."""
        return self._rows(stop - start, lambda a: a.slice(start, stop - start),
                          lambda a: a[start:stop])

    def _rows(self, n: int, arrow: Callable[[pa.Array], pa.Array],
              array: Callable[[np.ndarray], np.ndarray]) -> Validated:
        cols = {name: getattr(self, name) for name in _COLUMNS}
        return Validated(n=n, record_type=self.record_type,
                         **{k: arrow(v) if isinstance(v, pa.Array) else array(v)
                            for k, v in cols.items()})


# the record columns of a Validated, in field order
_COLUMNS = tuple(f.name for f in fields(Validated) if f.name not in ("n", "record_type"))


class _Checker:
    """Assigns the first failing check, in the order checks are called."""

    def __init__(self, s: Shaped) -> None:
        self.reason = s.reason.copy()
        self.detail = s.detail.copy()

    def fail(self, mask: np.ndarray, reason: Reason, detail: str) -> None:
        new = mask & (self.reason == 0)
        if new.any():
            self.reason[new] = reason
            self.detail[new] = detail


def _time_field(s: Shaped, chk: _Checker, f: str, required: bool) -> tuple[np.ndarray, np.ndarray]:
    """(µs, present and usable) for a timestamp field, failing MALFORMED where it is
    bad. A bad value is not usable: it must not move stream time either."""
    badtype = s.bad_type.get(f)
    if f in s.times_us:
        us, present, in_range = s.times_us[f]
        ok = np.ones(s.n, dtype=np.bool_)
        if badtype is not None:
            chk.fail(badtype, Reason.MALFORMED, f"field {f!r} has no offset (naive timestamp)")
            ok = ~badtype
    else:
        arr = s.columns[f]
        present = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
        us, ok = strings.parse_timestamps(arr)
        if badtype is not None:
            chk.fail(badtype, Reason.MALFORMED, f"field {f!r} must be an RFC 3339 string")
            present = present | badtype
        chk.fail(present & ~ok, Reason.MALFORMED,
                 f"field {f!r} is not an RFC 3339 timestamp with an offset (Z or +09:00)")
        in_range = ~ok | strings.in_time_range(us)
    if required:
        chk.fail(~present, Reason.MALFORMED, f"missing required field {f!r}")
    chk.fail(present & ~in_range, Reason.MALFORMED,
             f"field {f!r} is outside {strings.TIME_RANGE}")
    return us, present & ok & in_range


def _string_field(s: Shaped, chk: _Checker, f: str, required: bool) -> np.ndarray:
    arr = s.columns[f]
    present = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
    badtype = s.bad_type.get(f)
    if badtype is not None:
        chk.fail(badtype, Reason.MALFORMED, f"field {f!r} must be a string")
        present = present | badtype
    if required:
        chk.fail(~present, Reason.MALFORMED, f"missing required field {f!r}")
    return present


def _mykey_field(s: Shaped, chk: _Checker) -> np.ndarray:
    """MALFORMED unless ``mykey_id`` is present and 8 characters [0-9A-Za-z]; returns ok."""
    present = _string_field(s, chk, "mykey_id", True)
    ok = strings.mykey_ok(s.columns["mykey_id"])
    chk.fail(present & ~ok, Reason.MALFORMED,
             "field 'mykey_id' must be exactly 8 characters [0-9A-Za-z]")
    return ok


def _received(s: Shaped, chk: _Checker, received: np.ndarray,
              present: np.ndarray) -> np.ndarray:
    """received_at in µs, NO_TIME where absent. In Kafka the record timestamp stands in
    for a missing received_at (``ts_override``, NO_TIME where the message has none)."""
    if s.ts_override is not None:
        lent = ~present & (s.ts_override != NO_TIME)
        usable = strings.in_time_range(s.ts_override)
        chk.fail(lent & ~usable, Reason.MALFORMED,
                 f"the Kafka record timestamp (received_at) is outside {strings.TIME_RANGE}")
        received = np.where(present, received, s.ts_override)
        present = present | (lent & usable)
    return np.where(present, received, NO_TIME)


def _keep(arr: pa.Array, ok: np.ndarray) -> pa.Array:
    """``arr`` with null where not ``ok`` (no copy when everything is ok)."""
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
    if np.array_equal(ok, valid):
        return arr
    return pc.if_else(pa.array(ok, type=pa.bool_()), arr, pa.scalar(None, pa.string()))


def _operator_mismatch(s: Shaped, chk: _Checker) -> None:
    """OPERATOR_MISMATCH where the record names another operator than the one it
    came from. The detail names the source operator (a registered id, taken from a
    topic or a file's tag) but never echoes the record's own claim."""
    src = s.source_operator
    if src is None or src.null_count == len(src):
        return
    src = src.cast(pa.string())
    differs = pc.fill_null(pc.not_equal(s.columns["operator_id"], src), False)
    mask = np.asarray(differs.to_numpy(zero_copy_only=False), dtype=np.bool_)
    if not mask.any():
        return
    # one vectorised pass per source operator: a batch comes from a handful of them
    for name in pc.unique(src.filter(pa.array(mask))).to_pylist():
        same = np.asarray(pc.equal(src, name).fill_null(False).to_numpy(zero_copy_only=False),
                          dtype=np.bool_)
        chk.fail(mask & same, Reason.OPERATOR_MISMATCH,
                 f"field 'operator_id' is not {name!r}, the operator the record came from")


def _operator_codes(arr: pa.Array, registry: Registry) -> np.ndarray:
    ids = pa.array([op.id for op in registry.operators], type=pa.string())
    return pc.index_in(arr, value_set=ids).fill_null(-1).to_numpy().astype(np.int32)


def validate_transactions(s: Shaped, campaign: Campaign, registry: Registry) -> Validated:
    chk = _Checker(s)
    n = s.n
    # MALFORMED, field by field in the order of the Records section
    txn_present = _string_field(s, chk, "txn_id", True)
    txn_ok = strings.txn_id_ok(s.columns["txn_id"])
    chk.fail(txn_present & ~txn_ok, Reason.MALFORMED,
             "field 'txn_id' must be 1 to 64 characters [0-9A-Za-z._:-]")
    _string_field(s, chk, "operator_id", True)
    key_ok = _mykey_field(s, chk)
    kind_present = _string_field(s, chk, "kind", True)
    kind_codes = pc.index_in(s.columns["kind"], value_set=pa.array(KIND_NAMES))
    kind = kind_codes.fill_null(NO_KIND).to_numpy().astype(np.int8)
    chk.fail(kind_present & (kind == NO_KIND), Reason.MALFORMED,
             "field 'kind' must be \"charge\", \"purchase\" or \"refund\"")
    assert s.amount is not None and s.amount_class is not None
    chk.fail(s.amount_class == AMOUNT_MISSING, Reason.MALFORMED, "missing required field 'amount'")
    chk.fail(s.amount_class == AMOUNT_WRONG_TYPE, Reason.MALFORMED,
             "field 'amount' must be a JSON integer (yen)")
    occurred, _ = _time_field(s, chk, "occurred_at", True)
    orig_present = _string_field(s, chk, "original_txn_id", False)
    chk.fail((kind == Kind.REFUND) & ~orig_present, Reason.MALFORMED,
             "a refund needs field 'original_txn_id'")
    orig_ok = strings.txn_id_ok(s.columns["original_txn_id"])
    chk.fail(orig_present & ~orig_ok, Reason.MALFORMED,
             "field 'original_txn_id' must be 1 to 64 characters [0-9A-Za-z._:-]")
    received, recv_present = _time_field(s, chk, "received_at", False)
    received = _received(s, chk, received, recv_present)
    # INVALID_AMOUNT
    amount = s.amount
    chk.fail(s.amount_class == AMOUNT_NOT_INTEGER, Reason.INVALID_AMOUNT,
             "field 'amount' must be a JSON integer, not a fraction or exponent form "
             "(or an integer beyond 64 bits, which JSON parsers read as one)")
    chk.fail(((s.amount_class == AMOUNT_INT) & ((amount < 1) | (amount > campaign.max_amount)))
             | (s.amount_class == AMOUNT_HUGE),
             Reason.INVALID_AMOUNT, f"field 'amount' must be in 1..{campaign.max_amount} yen")
    _operator_mismatch(s, chk)
    op = _operator_codes(s.columns["operator_id"], registry)
    chk.fail(op < 0, Reason.UNKNOWN_OPERATOR, "field 'operator_id' is not a registered operator")
    # facts for the stateful checks
    day = jst_day(occurred).astype(np.int32)
    late = (received != NO_TIME) & (received >= campaign.accept_end)
    last_day = np.array([o.last_day if o.last_day is not None else 2**31 - 1
                         for o in registry.operators] + [2**31 - 1], dtype=np.int64)
    outside = ((occurred < campaign.window_start) | (occurred >= campaign.window_end)
               | (day > last_day[op]))
    pii = chk.reason == Reason.PERSONAL_NUMBER_FORBIDDEN
    op_ok = strings.operator_id_ok(s.columns["operator_id"])
    return Validated(
        n=n, record_type="transaction", reason=chk.reason, detail=chk.detail,
        mykey_id=_keep(s.columns["mykey_id"], key_ok & ~pii),
        operator_id=_keep(s.columns["operator_id"], op_ok & ~pii),
        txn_id=_keep(s.columns["txn_id"], txn_ok & ~pii),
        original_txn_id=_keep(s.columns["original_txn_id"], orig_ok & ~pii),
        op=op, kind=kind, amount=amount, at=occurred, day=day, received=received,
        too_late=late, outside=outside, bad_earn_on=np.zeros(n, dtype=np.bool_),
        earn_given=np.zeros(n, dtype=np.bool_),
    )


def validate_enrollments(s: Shaped, campaign: Campaign, registry: Registry) -> Validated:
    chk = _Checker(s)
    n = s.n
    key_ok = _mykey_field(s, chk)
    _string_field(s, chk, "operator_id", True)
    applied, _ = _time_field(s, chk, "applied_at", True)
    earn_present = _string_field(s, chk, "earn_on", False)
    earn = pc.index_in(s.columns["earn_on"], value_set=pa.array(KIND_NAMES[:2]))
    earn_code = earn.fill_null(NO_KIND).to_numpy().astype(np.int8)
    chk.fail(earn_present & (earn_code == NO_KIND), Reason.MALFORMED,
             "field 'earn_on' must be \"charge\" or \"purchase\"")
    received, recv_present = _time_field(s, chk, "received_at", False)
    received = _received(s, chk, received, recv_present)
    _operator_mismatch(s, chk)
    op = _operator_codes(s.columns["operator_id"], registry)
    chk.fail(op < 0, Reason.UNKNOWN_OPERATOR, "field 'operator_id' is not a registered operator")
    day = jst_day(applied).astype(np.int32)
    opens = np.array([o.selection_opens for o in registry.operators] + [0], dtype=np.int64)
    # operator's earning kinds as a 2-bit mask: 1 = charge, 2 = purchase
    kinds_mask = np.array([sum(1 << int(k) for k in o.earns_on) for o in registry.operators]
                          + [0], dtype=np.int8)
    only_kind = np.array([int(o.earns_on[0]) if len(o.earns_on) == 1 else NO_KIND
                          for o in registry.operators] + [NO_KIND], dtype=np.int8)
    mask = kinds_mask[op]
    given = earn_code != NO_KIND
    earn_ok = np.where(given, (mask >> np.maximum(earn_code, 0)) & 1 == 1, only_kind[op] >= 0)
    effective = np.where(given, earn_code, only_kind[op]).astype(np.int8)
    pii = chk.reason == Reason.PERSONAL_NUMBER_FORBIDDEN
    op_ok = strings.operator_id_ok(s.columns["operator_id"])
    nulls = pa.nulls(n, type=pa.string())
    return Validated(
        n=n, record_type="enrollment", reason=chk.reason, detail=chk.detail,
        mykey_id=_keep(s.columns["mykey_id"], key_ok & ~pii),
        operator_id=_keep(s.columns["operator_id"], op_ok & ~pii),
        txn_id=nulls, original_txn_id=nulls,
        op=op, kind=effective, amount=np.zeros(n, dtype=np.int64), at=applied,
        day=day, received=received,
        too_late=applied >= campaign.enroll_end,
        outside=day < opens[op],
        bad_earn_on=~earn_ok,
        earn_given=given,
    )


def concat_validated(parts: list[Validated], record_type: str,
                     consume: bool = False) -> Validated:
    """One batch of several validated ones (several files, topics or messages).
    ``consume``: the parts are not used again, so each column of theirs is let go as
    soon as it is joined; the whole then costs one column more than its own size
    instead of twice its size (10 M transactions: ~0.9 GB, DECISIONS 109)."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return empty_validated(record_type)

    def cat(name: str) -> Any:
        vals = [getattr(p, name) for p in parts]
        if consume:
            for p in parts:
                delattr(p, name)
        if isinstance(vals[0], pa.Array):
            return pa.concat_arrays([x.cast(pa.string()) for x in vals])
        return np.concatenate(vals)

    n = sum(p.n for p in parts)
    return Validated(n=n, record_type=record_type, **{k: cat(k) for k in _COLUMNS})


def empty_validated(record_type: str) -> Validated:
    """A batch of no records (an input with nothing in it)."""
    s = shape_objects([], record_type)
    validate = validate_transactions if record_type == "transaction" else validate_enrollments
    return validate(s, Campaign(), Registry(()))
