"""A catalogue of poison records, shared by the decoder, offline and real-broker tests.

Each entry is one transaction of the enrolled person ``PERSON`` (paypay, purchase,
2020-09-13) with one thing wrong with it — or odd but acceptable — and the outcome
the rules give it: a reason and a piece of the detail, or ``GRANT``.

- :func:`json_poison`: JSON texts (one per line of a JSON Lines file, or one Kafka
  message), with their one-row Arrow form where the same record is representable.
- :func:`arrow_poison`: Arrow tables whose column types are the poison.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

PERSON = "Poison01"
PII = "123456789018"  # a valid Individual Number (check digit 8)
GRANT = "GRANT"
ENROLLMENT = {"mykey_id": PERSON, "operator_id": "paypay",
              "applied_at": "2020-09-01T09:00:00+09:00"}
LONG = 70_000  # characters: long, yet a whole chunk of these stays under Kafka's 1 MB
TOO_DEEP = 1100  # beyond orjson's 1024 levels
DEEP = 900  # decodable, but far beyond what a recursive walk survives


@dataclass(frozen=True)
class Poison:
    name: str
    txn_id: str
    text: bytes               # the JSON text ("" for Arrow-only entries)
    reason: str               # expected reason, or GRANT
    detail: str = ""          # a piece of the expected detail
    table: pa.Table | None = None  # the same record as Arrow (or the Arrow poison)
    stream: bool = True       # usable in a live stream (False: it would move stream time)


def base(txn_id: str) -> dict[str, object]:
    return {"txn_id": txn_id, "operator_id": "paypay", "mykey_id": PERSON,
            "kind": "purchase", "amount": 100, "occurred_at": "2020-09-13T12:00:00Z"}


_RAW = "@@raw@@"


def _tid(prefix: str, name: str) -> str:
    return f"{prefix}-" + re.sub(r"[^0-9A-Za-z._:-]", "_", name)


def _text(txn_id: str, raw: bytes | None = None, tail: bytes = b"",
          fields: dict[str, object] | None = None) -> bytes:
    """JSON text of a base record; ``raw`` replaces the value given as ``_RAW``, ``tail``
    is appended verbatim as further members."""
    t = orjson.dumps({**base(txn_id), **(fields or {})})
    if raw is not None:
        t = t.replace(orjson.dumps(_RAW), raw)
    return t[:-1] + tail + b"}" if tail else t


def _nest_array(depth: int, leaf: bytes) -> bytes:
    return b"[" * depth + leaf + b"]" * depth


def _nest_object(depth: int, leaf: bytes) -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


def _arrow_form(text: bytes) -> pa.Table | None:
    try:
        return pa.Table.from_pylist([orjson.loads(text)])
    except (orjson.JSONDecodeError, pa.ArrowException, TypeError, ValueError, OverflowError):
        return None


def json_poison(prefix: str) -> list[Poison]:
    """Poison JSON texts; txn ids start with ``prefix`` (one catalogue per format)."""
    rows: list[tuple[str, bytes, str, str, bool]] = []  # name, text, reason, detail, arrow

    def add(name: str, reason: str, detail: str = "", *, arrow: bool = True,
            raw: bytes | None = None, tail: bytes = b"", **fields: object) -> None:
        rows.append((name, _text(_tid(prefix, name), raw, tail, fields), reason, detail,
                     arrow))

    # nesting
    add("too-deep", "MALFORMED", "nested deeper than 1024 levels", arrow=False,
        tail=b',"deep":' + _nest_array(TOO_DEEP, b"1"))
    add("too-deep-pii", "PERSONAL_NUMBER_FORBIDDEN", "nested too deep", arrow=False,
        tail=b',"deep":' + _nest_array(TOO_DEEP, orjson.dumps(PII)))
    add("deep-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'deep'", arrow=False,
        tail=b',"deep":' + _nest_object(DEEP, orjson.dumps(PII)))
    add("deep-pii-key", "PERSONAL_NUMBER_FORBIDDEN", "field 'deep'", arrow=False,
        tail=b',"deep":' + _nest_array(DEEP, b'{"' + PII.encode() + b'":1}'))
    add("deep", GRANT, arrow=False, tail=b',"deep":' + _nest_object(DEEP, b'"x"'))
    # numbers JSON has no word for, or a double cannot hold
    add("nan", "MALFORMED", "NaN and Infinity", arrow=False, raw=b"NaN", amount=_RAW)
    add("infinity", "MALFORMED", "NaN and Infinity", arrow=False, raw=b"Infinity",
        amount=_RAW)
    add("minus-infinity", "MALFORMED", "not valid JSON", arrow=False, raw=b"-Infinity",
        amount=_RAW)
    add("1e400", "MALFORMED", "too large for a 64-bit float", arrow=False, raw=b"1e400",
        amount=_RAW)
    add("1e400-extra", "MALFORMED", "too large for a 64-bit float", arrow=False,
        raw=b"-1e400", note=_RAW)
    # amounts that are numbers but not usable integers
    add("2**64", "INVALID_AMOUNT", "beyond 64 bits", raw=str(2**64).encode(), amount=_RAW)
    add("-2**70", "INVALID_AMOUNT", "beyond 64 bits", raw=str(-(2**70)).encode(),
        amount=_RAW)
    add("2**63", "INVALID_AMOUNT", "must be in 1..10000000", raw=str(2**63).encode(),
        amount=_RAW)
    add("100.0", "INVALID_AMOUNT", "fraction or exponent", raw=b"100.0", amount=_RAW)
    add("1e3", "INVALID_AMOUNT", "fraction or exponent", raw=b"1e3", amount=_RAW)
    add("tiny", "INVALID_AMOUNT", "fraction or exponent", raw=b"1e-400", amount=_RAW)
    # strings
    add("lone-surrogate", "MALFORMED", "unpaired UTF-16 surrogate", arrow=False,
        raw=b'"\\ud800"', note=_RAW)
    add("lone-low-surrogate", "MALFORMED", "unpaired UTF-16 surrogate", arrow=False,
        raw=b'"a\\udc00"', mykey_id=_RAW)
    add("escaped-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'note'",
        raw=b'"' + b"".join(b"\\u%04x" % ord(c) for c in PII) + b'"', note=_RAW)
    add("pii-key-nested", "PERSONAL_NUMBER_FORBIDDEN", "field 'x'", x={PII: 1})
    # Any: mypy cannot see that this computed name is none of add's own parameters
    long_name: dict[str, Any] = {"n" * LONG: PII}
    add("pii-long-name", "PERSONAL_NUMBER_FORBIDDEN", "an extra field holds", **long_name)
    add("long-txn-id", "MALFORMED", "field 'txn_id' must be 1 to 64", txn_id="t" * LONG)
    add("long-mykey", "MALFORMED", "field 'mykey_id'", mykey_id="A" * LONG)
    add("long-operator", "UNKNOWN_OPERATOR", "operator_id", operator_id="p" * LONG)
    add("long-kind", "MALFORMED", "field 'kind'", kind="k" * LONG)
    add("long-time", "MALFORMED", "field 'occurred_at'", occurred_at="2" * LONG)
    add("long-extra", GRANT, note="x" * LONG)
    add("control-chars-id", "MALFORMED", "field 'txn_id'", txn_id="a\x00b\x1f")
    add("control-chars-extra", GRANT, note="\x00\x07\x1b[31m\r\n\t")
    add("non-bmp-mykey", "MALFORMED", "field 'mykey_id'", mykey_id="Poison0\U0001F600")
    add("non-bmp-id", "MALFORMED", "field 'txn_id'", txn_id="t\U0001F600")
    # timestamps
    for name, ts, reason, detail in [
        ("year-0000", "0000-01-01T00:00:00Z", "MALFORMED", "is outside 0001-01-01"),
        ("year-0001-jst", "0001-01-01T00:00:00+09:00", "MALFORMED", "is outside 0001-01-01"),
        ("year-9999-west", "9999-12-31T23:00:00-01:00", "MALFORMED", "is outside 0001-01-01"),
        ("year-10000", "10000-01-01T00:00:00Z", "MALFORMED", "not an RFC 3339 timestamp"),
        ("year-0001", "0001-01-01T00:00:00Z", "OUTSIDE_WINDOW", ""),
        ("year-9999", "9999-12-31T23:59:59Z", "OUTSIDE_WINDOW", ""),
        ("leap-second", "2020-09-13T23:59:60Z", "MALFORMED", "not an RFC 3339 timestamp"),
        ("offset-24h", "2020-09-13T12:00:00+24:00", "MALFORMED", "not an RFC 3339 timestamp"),
        ("offset-60m", "2020-09-13T12:00:00+09:60", "MALFORMED", "not an RFC 3339 timestamp"),
        ("fraction-12", "2020-09-13T12:00:00.123456789012Z", GRANT, ""),
        ("lower-case", "2020-09-13t12:00:00z", GRANT, ""),
        ("no-offset", "2020-09-13T12:00:00", "MALFORMED", "with an offset"),
    ]:
        add(name, reason, detail, occurred_at=ts)
    # repeated keys: the decoded object keeps only the last value
    add("repeated-key", "MALFORMED", "names a field more than once", arrow=False,
        tail=b',"amount":100')
    add("repeated-key-pii", "PERSONAL_NUMBER_FORBIDDEN", "a repeated field", arrow=False,
        note=PII, tail=b',"note":"x"')
    add("repeated-key-nested-pii", "PERSONAL_NUMBER_FORBIDDEN", "a repeated field", arrow=False,
        tail=b',"x":{"a":"' + PII.encode() + b'","a":"y"}')
    out = [Poison(name, _tid(prefix, name), text, reason, detail,
                  _arrow_form(text) if arrow else None)
           for name, text, reason, detail, arrow in rows]
    # a received_at far in the future is LATE; in a live stream it would also move
    # stream time (see the report), so it is tested offline and in the decoder only
    text = _text(_tid(prefix, "received-9999"), fields={"received_at": "9999-12-31T23:59:59Z"})
    out.append(Poison("received-9999", _tid(prefix, "received-9999"), text, "LATE", "",
                      _arrow_form(text), stream=False))
    return out


def enrollment_poison(prefix: str) -> list[Poison]:
    """Poison enrollments, JSON texts and Arrow tables; each names its own person
    (the first four characters of ``prefix``, alphanumeric, and a number), so none
    is another's duplicate. ``GRANT`` here means accepted (no outcome record)."""
    out: list[Poison] = []
    people = iter(range(10**4))

    def person() -> str:
        return f"{(prefix + 'xxxx')[:4]}{next(people):04d}"

    def add(name: str, reason: str, detail: str = "", raw: bytes | None = None,
            tail: bytes = b"", **fields: object) -> None:
        t = orjson.dumps({**ENROLLMENT, "mykey_id": person(), **fields})
        if raw is not None:
            t = t.replace(orjson.dumps(_RAW), raw)
        out.append(Poison(name, "", t[:-1] + tail + b"}" if tail else t, reason, detail))

    def add_table(name: str, reason: str, detail: str, repeat: str | None = None,
                  **columns: pa.Array) -> None:
        cols = {k: pa.array([v]) for k, v in {**ENROLLMENT, "mykey_id": person()}.items()}
        cols.update(columns)
        t = pa.table(cols)
        if repeat is not None:
            t = t.append_column(repeat, t.column(repeat))
        out.append(Poison(name, "", b"", reason, detail, t))

    add("too-deep", "MALFORMED", "nested deeper than 1024 levels",
        tail=b',"deep":' + _nest_array(TOO_DEEP, b"1"))
    add("too-deep-pii", "PERSONAL_NUMBER_FORBIDDEN", "nested too deep",
        tail=b',"deep":' + _nest_array(TOO_DEEP, orjson.dumps(PII)))
    add("deep-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'deep'",
        tail=b',"deep":' + _nest_object(DEEP, orjson.dumps(PII)))
    add("nan", "MALFORMED", "NaN and Infinity", raw=b"NaN", note=_RAW)
    add("1e400", "MALFORMED", "too large for a 64-bit float", raw=b"1e400", note=_RAW)
    add("lone-surrogate", "MALFORMED", "unpaired UTF-16 surrogate", raw=b'"\\ud800"',
        earn_on=_RAW)
    add("repeated-key", "MALFORMED", "names a field more than once",
        tail=b',"operator_id":"paypay"')
    add("repeated-key-pii", "PERSONAL_NUMBER_FORBIDDEN", "a repeated field", note=PII,
        tail=b',"note":"x"')
    add("year-0000", "MALFORMED", "is outside 0001-01-01", applied_at="0000-01-01T00:00:00Z")
    add("leap-second", "MALFORMED", "not an RFC 3339", applied_at="2020-09-01T23:59:60Z")
    add("long-earn-on", "MALFORMED", "field 'earn_on'", earn_on="e" * LONG)
    add("non-bmp-mykey", "MALFORMED", "field 'mykey_id'", mykey_id="Poison0\U0001F600")
    add_table("dup-columns", "MALFORMED", "names a field more than once", "operator_id")
    add_table("ts-s-overflow", "MALFORMED", "is outside 0001-01-01",
              applied_at=pa.array([2**62], pa.timestamp("s", tz="UTC")))
    add_table("ts-ms", GRANT, "", applied_at=pa.array([1_598_918_400_000],
                                                      pa.timestamp("ms", tz="UTC")))
    add_table("map-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'm'",
              m=pa.array([[(PII, "v")]], pa.map_(pa.string(), pa.string())))
    add_table("earn-on-binary", "MALFORMED", "field 'earn_on' must be a string",
              earn_on=pa.array([b"purchase"], pa.binary()))
    return out


def _one(tid: str, **columns: pa.Array) -> pa.Table:
    """A one-row table of the base record with some columns replaced or added
    (a column given as None is left out)."""
    cols: dict[str, pa.Array] = {k: pa.array([v]) for k, v in base(tid).items()}
    for k, v in columns.items():
        if v is None:
            cols.pop(k, None)
        else:
            cols[k] = v
    return pa.table(cols)


def _invalid_utf8() -> pa.Array:
    return pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(
        np.array([0, 2], dtype=np.int32).tobytes()), pa.py_buffer(b"\xff\xfe")])


def arrow_poison(prefix: str) -> list[Poison]:
    """Arrow tables with poison column types (one row each unless said)."""
    out: list[Poison] = []

    def add(name: str, reason: str, detail: str = "", table: pa.Table | None = None,
            **columns: pa.Array) -> None:
        t = table if table is not None else _one(_tid(prefix, name), **columns)
        out.append(Poison(name, _tid(prefix, name), b"", reason, detail, t))

    tid = f"{prefix}-dup-columns"
    dup = _one(tid)
    add("dup-columns", "MALFORMED", "names a field more than once",
        dup.append_column("amount", pa.array([100])))
    add("dup-extra-columns", "MALFORMED", "names a field more than once",
        _one(f"{prefix}-dup-extra-columns").append_column("n", pa.array([1]))
        .append_column("n", pa.array(["x"])))
    t_us = 1_599_998_400_000_000  # 2020-09-13T12:00:00Z
    for unit, scale in (("s", 10**-6), ("ms", 10**-3), ("us", 1), ("ns", 1000)):
        v = int(t_us * scale)
        add(f"ts-{unit}", GRANT, occurred_at=pa.array([v], pa.timestamp(unit, tz="UTC")))
        add(f"ts-{unit}-naive", "MALFORMED", "no offset",
            occurred_at=pa.array([v], pa.timestamp(unit)))
    add("ts-ns-fraction", GRANT,
        occurred_at=pa.array([t_us * 1000 + 999], pa.timestamp("ns", tz="UTC")))
    add("ts-tokyo", GRANT, occurred_at=pa.array([t_us], pa.timestamp("us", tz="Asia/Tokyo")))
    add("ts-s-overflow", "MALFORMED", "is outside 0001-01-01",
        occurred_at=pa.array([2**62], pa.timestamp("s", tz="UTC")))
    add("ts-ms-overflow", "MALFORMED", "is outside 0001-01-01",
        occurred_at=pa.array([-(2**62)], pa.timestamp("ms", tz="UTC")))
    add("ts-us-year-200000", "MALFORMED", "is outside 0001-01-01",
        occurred_at=pa.array([2**62], pa.timestamp("us", tz="UTC")))
    add("ts-received-overflow", "MALFORMED", "field 'received_at' is outside",
        received_at=pa.array([2**62], pa.timestamp("s", tz="UTC")))
    add("date-type", "MALFORMED", "must be an RFC 3339 string",
        occurred_at=pa.array([18518], pa.int32()).cast(pa.date32()))
    add("map-extra-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'm'",
        m=pa.array([[(PII, "v")]], pa.map_(pa.string(), pa.string())))
    add("map-extra", GRANT, m=pa.array([[("k", "v")]], pa.map_(pa.string(), pa.string())))
    add("map-known", "MALFORMED", "field 'txn_id' must be a string",
        txn_id=pa.array([[("k", "v")]], pa.map_(pa.string(), pa.string())))
    add("binary-extra-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'b'",
        b=pa.array([PII.encode()], pa.binary()))
    add("large-binary-extra-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'b'",
        b=pa.array([PII.encode()], pa.large_binary()))
    add("binary-known", "MALFORMED", "field 'kind' must be a string",
        kind=pa.array([b"purchase"], pa.binary()))
    add("large-string-known", GRANT, kind=pa.array(["purchase"], pa.large_string()))
    add("string-view-known", GRANT, kind=pa.array(["purchase"], pa.string_view()))
    add("dictionary-known", GRANT, kind=pa.array(["purchase"]).dictionary_encode())
    add("dictionary-amount", GRANT, amount=pa.array([100]).dictionary_encode())
    add("dictionary-extra-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'd'",
        d=pa.array([PII]).dictionary_encode())
    add("run-end-known", GRANT, kind=pc.run_end_encode(pa.array(["purchase"])))
    add("struct-list-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 's'",
        s=pa.array([{"a": 1, "b": [["x", PII]]}]))
    add("struct-name-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 's'",
        s=pa.array([{PII: 1}]))
    add("struct-extra", GRANT, s=pa.array([{"a": 1, "b": [["x"]]}]))
    add("list-list-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'l'",
        l=pa.array([[["a"], [PII]]]))
    add("fixed-list-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'l'",
        l=pa.array([["a", PII]], pa.list_(pa.string(), 2)))
    add("large-list-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'l'",
        l=pa.array([["a", PII]], pa.large_list(pa.large_string())))
    add("list-view-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'l'",
        l=pa.array([["a", PII]], pa.list_view(pa.string())))
    add("fixed-binary-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'b'",
        b=pa.array([PII.encode()], pa.binary(12)))
    add("binary-view-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'b'",
        b=pa.array([PII.encode()], pa.binary_view()))
    add("extension-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'e'",
        e=pa.ExtensionArray.from_storage(pa.opaque(pa.string(), "t", "v"), pa.array([PII])))
    add("sparse-union-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'u'",
        u=pa.UnionArray.from_sparse(pa.array([1], pa.int8()),
                                    [pa.array([1]), pa.array([PII])]))
    add("dense-union-pii", "PERSONAL_NUMBER_FORBIDDEN", "field 'u'",
        u=pa.UnionArray.from_dense(pa.array([1], pa.int8()), pa.array([0], pa.int32()),
                                   [pa.array([1]), pa.array([PII])]))
    add("struct-known", "MALFORMED", "field 'mykey_id' must be a string",
        mykey_id=pa.array([{"a": PERSON}]))
    add("list-known", "MALFORMED", "field 'txn_id' must be a string",
        txn_id=pa.array([["t"]]))
    add("null-extra", GRANT, n=pa.nulls(1))
    add("null-amount", "MALFORMED", "missing required field 'amount'", amount=pa.nulls(1))
    add("pii-column-name", "PERSONAL_NUMBER_FORBIDDEN", "a field name holds",
        **{PII: pa.array([1])})
    add("pii-known-field", "PERSONAL_NUMBER_FORBIDDEN", "field 'txn_id'",
        txn_id=pa.array([PII]))
    add("amount-float-nan", "INVALID_AMOUNT", "fraction or exponent",
        amount=pa.array([float("nan")]))
    add("amount-float-inf", "INVALID_AMOUNT", "fraction or exponent",
        amount=pa.array([float("inf")]))
    add("amount-float", "INVALID_AMOUNT", "fraction or exponent", amount=pa.array([100.0]))
    add("amount-decimal", "INVALID_AMOUNT", "fraction or exponent",
        amount=pa.array([Decimal("100.00")]))
    add("amount-string", "MALFORMED", "field 'amount' must be a JSON integer",
        amount=pa.array(["100"]))
    add("amount-bool", "MALFORMED", "field 'amount' must be a JSON integer",
        amount=pa.array([True]))
    add("amount-uint64", "INVALID_AMOUNT", "must be in 1..10000000",
        amount=pa.array([2**64 - 1], pa.uint64()))
    add("amount-int8", GRANT, amount=pa.array([100], pa.int8()))
    add("zero-rows", GRANT, table=_one(f"{prefix}-zero-rows").slice(0, 0))
    add("no-columns", "MALFORMED", "missing required field 'txn_id'",
        table=pa.table({"x": pa.array([1])}).drop_columns(["x"]).append_column(
            "y", pa.nulls(1)))
    return out


# Parquet's writer refuses these (it stores seconds as milliseconds, which overflow)
PARQUET_CANNOT_HOLD = {"ts-s-overflow", "ts-received-overflow", "run-end-known",
                       "sparse-union-pii", "dense-union-pii"}


def invalid_utf8_table(prefix: str) -> pa.Table:
    """Not a valid table at all (invalid UTF-8 in a string column): an Arrow IPC
    message carrying it is unreadable as a whole."""
    return _one(f"{prefix}-bad-utf8", note=_invalid_utf8())


def ipc(table: pa.Table, compression: str | None = None) -> bytes:
    """An Arrow IPC stream message of a table (``compression``: of the buffers)."""
    buf = io.BytesIO()
    with pa.ipc.new_stream(buf, table.schema,
                           options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table)
    return buf.getvalue()


def expected_count(p: Poison) -> int:
    """Outcomes the entry produces in a table (its rows), or one for a text."""
    return p.table.num_rows if p.table is not None and not p.text else 1
