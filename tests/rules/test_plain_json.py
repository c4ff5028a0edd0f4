"""The compiled path for plain JSON records against the object path it stands in for:
``shape_lines`` (plain texts compiled, the rest decoded, merged in order) gives what
decoding every text and ``shape_objects`` give, and the compiled path takes exactly
the plain texts."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.io.readers import load_record, shape_lines
from engine.rules.plain_json import shape_plain
from engine.rules.strings import is_individual_number, json_facts
from engine.rules.validate import (
    ENR_STRING_FIELDS,
    ENR_TIME_FIELDS,
    TXN_STRING_FIELDS,
    TXN_TIME_FIELDS,
    Shaped,
    shape_objects,
)

PII = "123456789018"  # a valid check digit

FIELDS = {"transaction": (*TXN_STRING_FIELDS, *TXN_TIME_FIELDS, "amount"),
          "enrollment": (*ENR_STRING_FIELDS, *ENR_TIME_FIELDS)}

PLAIN_TXN = (b'{"txn_id":"t-1","operator_id":"paypay","mykey_id":"Mk000001","kind":"purchase",'
             b'"amount":1200,"occurred_at":"2020-09-01T10:00:00+09:00"}')


def by_objects(lines: list[bytes], record_type: str) -> Shaped:
    return shape_objects([load_record(t) for t in lines], record_type, json_facts(lines))


def same(a: Shaped, b: Shaped) -> None:
    assert (a.n, a.record_type) == (b.n, b.record_type)
    assert a.reason.tolist() == b.reason.tolist()
    assert a.detail.tolist() == b.detail.tolist()
    assert list(a.columns) == list(b.columns)
    for name, col in a.columns.items():
        assert col.type == b.columns[name].type, name
        assert col.to_pylist() == b.columns[name].to_pylist(), name
    assert {k: v.tolist() for k, v in a.bad_type.items()} == \
        {k: v.tolist() for k, v in b.bad_type.items()}
    for name in ("amount", "amount_class"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            assert x.tolist() == y.tolist(), name


def check(lines: list[bytes], record_type: str) -> np.ndarray:
    """Compare both paths on ``lines``; which of them the compiled path took."""
    same(shape_lines(lines, record_type)[0], by_objects(lines, record_type))
    plain, mask = shape_plain(lines, record_type)
    assert plain.n == int(mask.sum())
    return mask


# values a field may hold: printable ASCII strings (the plain ones) and everything that
# must send the whole call to the object path
ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=127), max_size=12)
odd_text = st.text(max_size=6)  # escapes, control and non-ASCII characters
# what JSON writes without an escape
unescaped = st.text(st.characters(min_codepoint=32, max_codepoint=127,
                                  exclude_characters='"\\'), max_size=12)
values = st.one_of(ascii_text, st.none(), st.integers(-10**20, 10**20), odd_text,
                   st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                   st.just(PII), st.lists(st.integers(), max_size=2))


@st.composite
def records(draw: st.DrawFn, record_type: str) -> bytes:
    names = list(FIELDS[record_type])
    keys = draw(st.lists(st.sampled_from([*names, "extra"]), max_size=9))
    pairs = [(k, draw(values)) for k in keys]
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,\t", " :\r")]))
    # json.dumps writes a repeated key as often as it is listed (a dict would not)
    body = sep[0].join(f"{json.dumps(k)}{sep[1]}{json.dumps(v)}" for k, v in pairs)
    pad = draw(st.sampled_from(["", " ", "\t"]))
    return f"{pad}{{{body}}}{pad}".encode()


@pytest.mark.parametrize("record_type", ["transaction", "enrollment"])
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_agrees_with_the_object_path(record_type: str, data: st.DataObject) -> None:
    lines = data.draw(st.lists(records(record_type), min_size=1, max_size=4))
    check(lines, record_type)


@st.composite
def plain_records(draw: st.DrawFn) -> bytes:
    names = draw(st.permutations(FIELDS["transaction"]))
    chosen = names[:draw(st.integers(0, len(names)))]
    obj = {k: draw(st.integers(-10**18 + 1, 10**18 - 1) | st.none() if k == "amount"
                   else unescaped.filter(lambda s: not is_individual_number(s)) | st.none())
           for k in chosen}
    return orjson.dumps(obj)


@settings(max_examples=300, deadline=None)
@given(st.lists(plain_records(), min_size=1, max_size=6))
def test_plain_records_take_the_compiled_path(lines: list[bytes]) -> None:
    assert check(lines, "transaction").all()


@pytest.mark.parametrize("odd", [
    b'{"txn_id":"t-1","txn_id":"t-2"}',             # a repeated field
    b'{"txn_id":"t-1","note":"x"}',                  # an extra field
    b'{"txn_id":"t\\u002d1"}',                       # an escape
    '{"txn_id":"t\u00e91"}'.encode(),                # a non-ASCII character
    b'{"amount":1.0}',                               # a float
    b'{"amount":1e3}',                               # an exponent
    b'{"amount":0123}',                              # not JSON
    b'{"amount":1234567890123456789}',               # 19 digits
    b'{"amount":"1200"}',                            # a string amount
    b'{"txn_id":1}',                                 # a number for a string field
    b'{"txn_id":"' + PII.encode() + b'"}',           # an Individual Number
    b'{"txn_id":"t-1",}',                            # a trailing comma
    b'{"txn_id":"t-1"} x',                           # text after the object
    b'["t-1"]',                                      # not an object
    b'{"txn_id":nul}',                               # not JSON
])
def test_leaves_to_the_object_path_what_it_does_not_read(odd: bytes) -> None:
    assert check([PLAIN_TXN, odd, PLAIN_TXN], "transaction").tolist() == [True, False, True]


def test_a_record_over_the_size_limit_is_left_to_the_object_path() -> None:
    short = b'{"txn_id":"t-1"}'
    _, mask = shape_plain([PLAIN_TXN, short], "transaction", limit=len(short))
    assert mask.tolist() == [False, True]
    bad: dict[str, int] = {}
    s, _ = shape_lines([PLAIN_TXN, short], "transaction", limit=len(short), bad=bad)
    assert bad == {"too_large": 1} and s.reason.tolist()[1] == 0 and s.reason[0] != 0


def test_values_land_in_their_columns() -> None:
    lines = [PLAIN_TXN, b'{"amount":-7,"kind":null}', b"{}"]
    assert check(lines, "transaction").all()
    s, _ = shape_lines(lines, "transaction")
    assert s.columns["txn_id"].to_pylist() == ["t-1", None, None]
    assert s.columns["kind"].to_pylist() == ["purchase", None, None]
    assert s.amount is not None and s.amount_class is not None
    assert s.amount.tolist()[:2] == [1200, -7]
    assert np.array_equal(s.amount_class, [0, 0, 3])
