"""The JSON record loader's details, and the byte-level scan of JSON texts against
a plain walk of the decoded values (the reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.io.readers import (
    BadRecord,
    Sources,
    count_rows,
    iter_records,
    load_record,
    read_records,
)
from engine.rules.strings import is_individual_number, json_facts

PII = "123456789018"


@pytest.mark.parametrize(("text", "detail"), [
    (b'{"a": NaN}', "NaN and Infinity are not JSON numbers"),
    (b'{"a": -Infinity}', "NaN and Infinity are not JSON numbers"),
    (b'{"a": 1e400}', "too large for a 64-bit float"),
    (b'{"a": "\\ud800"}', "unpaired UTF-16 surrogate"),
    (b'{"a": "\\udc00"}', "unpaired UTF-16 surrogate"),
    (b'{"a": ' + b"[" * 1025 + b"]" * 1025 + b"}", "nested deeper than 1024 levels"),
    (b'{"a": 1', "record is not valid JSON"),
    (b'\xef\xbb\xbf{"a": 1}', "record starts with a UTF-8 byte order mark"),
    (b'{"a": "\xff"}', "record is not valid UTF-8"),
])
def test_undecodable_records_say_why(text: bytes, detail: str) -> None:
    r = load_record(text)
    assert isinstance(r, BadRecord) and detail in r.detail, (text[:20], r)
    assert r.too_deep == (detail.startswith("nested") and text.startswith(b"{"))


def test_json_numbers_the_parser_keeps() -> None:
    assert load_record(str(2**64).encode()) == float(2**64)  # beyond 64 bits: a float
    assert load_record(str(2**63).encode()) == 2**63
    assert load_record(b"1e3") == 1000.0 and type(load_record(b"1e3")) is float


def _reference(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str) and is_individual_number(v):
            return True
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _encode(value: Any, escape: st.DataObject) -> bytes:
    """JSON text with each string character escaped as \\uXXXX at random (and
    whitespace around separators), so the scan must decode what the parser does."""
    if isinstance(value, str):
        out = []
        for c in value:
            if escape.draw(st.booleans()) and ord(c) < 0x10000:
                out.append(f"\\u{ord(c):04x}")
            else:
                out.append(orjson.dumps(c).decode()[1:-1])
        return ('"' + "".join(out) + '"').encode()
    ws = escape.draw(st.sampled_from([b"", b" ", b"\n\t "]))
    if isinstance(value, dict):
        return b"{" + b",".join(_encode(k, escape) + ws + b":" + ws + _encode(v, escape)
                                for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(ws + _encode(v, escape) for v in value) + b"]"
    return orjson.dumps(value)


_strings = st.one_of(st.text(max_size=14), st.sampled_from(
    [PII, "123456789019", PII + "0", " " + PII, '"', "\\", "\\u0031", "x"]))
_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False, allow_infinity=False) | _strings)
_json = st.recursive(_scalars, lambda c: st.lists(c, max_size=4)
                     | st.dictionaries(_strings, c, max_size=4), max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(st.lists(_json, min_size=1, max_size=5), st.data())
def test_the_text_scan_finds_exactly_what_the_decoded_values_hold(
        values: list[Any], data: st.DataObject) -> None:
    texts = [_encode(v, data) for v in values]
    assert [orjson.loads(t) for t in texts] == values  # the encoder is right
    pii, keys = json_facts(texts)
    assert pii.tolist() == [_reference(v) for v in values]
    assert keys.tolist() == [len(v) if isinstance(v, dict) else 0 for v in values]


def test_the_text_scan_sees_what_a_repeated_key_hid() -> None:
    text = b'{"a": {"n": "' + PII.encode() + b'", "n": 1}, "b": 2, "b": 3}'
    pii, keys = json_facts([text])
    assert not _reference(orjson.loads(text))
    assert pii.tolist() == [True] and keys.tolist() == [3]


def test_parquet_is_read_a_row_group_at_a_time_with_file_wide_sources(tmp_path: Path) -> None:
    rows = [{"mykey_id": f"AB12cd{i:02d}", "operator_id": "paypay",
             "applied_at": "2020-09-01T10:00:00+09:00"} for i in range(7)]
    path = tmp_path / "e.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)
    pieces = list(iter_records(path, "enrollment"))
    assert [s.n for s, _ in pieces] == [3, 3, 1]
    assert [x for _, src in pieces for x in src.take(np.arange(len(src))).to_pylist()] == [
        f"e.parquet:{i}" for i in range(1, 8)]
    whole, _ = read_records(path, "enrollment")
    assert pa.concat_arrays([s.columns["mykey_id"] for s, _ in pieces]).equals(
        whole.columns["mykey_id"])
    assert count_rows(path) == 7


def test_sources_are_made_only_for_the_rows_asked_for() -> None:
    s = Sources.concat([Sources.of("a.jsonl", np.array([1, 3])),
                        Sources.of("b.parquet", np.array([1, 2])),
                        Sources.of("a.jsonl", np.array([9]))])
    assert s.names == ("a.jsonl", "b.parquet") and len(s) == 5
    assert s.take(pa.array([4, 2, 0, 3])).to_pylist() == [
        "a.jsonl:9", "b.parquet:1", "a.jsonl:1", "b.parquet:2"]
    assert s.select(np.array([3, 1])).take(np.array([1, 0])).to_pylist() == [
        "a.jsonl:3", "b.parquet:2"]
    assert s.take(np.zeros(0, np.int64)).to_pylist() == []


def test_count_rows_of_json_lines_counts_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2}\n')
    assert count_rows(path) == 3
    assert count_rows(tmp_path / "missing.parquet") == 0
