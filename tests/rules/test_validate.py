"""Shaping and validation on their own: depth, field names in details, the fallback
for Arrow types that cannot be searched."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.rules import validate
from engine.rules.model import Reason
from engine.rules.validate import field_label, shape_objects, shape_table, validate_transactions

PII = "123456789018"
REC = {"txn_id": "t", "operator_id": "paypay", "mykey_id": "Poison01", "kind": "purchase",
       "amount": 100, "occurred_at": "2020-09-13T12:00:00Z"}


def test_the_object_path_has_no_depth_limit() -> None:
    # decoded values handed over directly (settle_records, tests) are walked with a
    # stack: a number 50,000 levels down is found, a deep record without one passes
    deep: Any = PII
    for _ in range(50_000):
        deep = {"a": [deep]}
    s = shape_objects([{**REC, "deep": deep}, {**REC, "deep": [[[[["x"]]]]]}], "transaction")
    v = validate_transactions(s, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY)
    assert v.reason.tolist() == [Reason.PERSONAL_NUMBER_FORBIDDEN, 0]
    assert v.detail[0] == "field 'deep' holds an Individual Number (redacted)"


@pytest.mark.parametrize(("name", "label"), [
    ("note", "field 'note'"), ("a_b.c-d9", "field 'a_b.c-d9'"), ("x" * 32, "field '" + "x" * 32
                                                                   + "'"),
    ("x" * 33, "an extra field"), ("9lives", "an extra field"), ("a b", "an extra field"),
    ("", "an extra field"), ("\x00", "an extra field"), ("é", "an extra field"),
    ("(a field name)", "a field name"),
])
def test_details_name_only_short_plain_fields(name: str, label: str) -> None:
    assert field_label(name) == label


def test_a_long_field_name_is_not_echoed() -> None:
    s = shape_objects([{**REC, "n" * 100_000: PII}], "transaction")
    assert s.detail.tolist() == ["an extra field holds an Individual Number (redacted)"]


def test_an_arrow_type_that_cannot_be_searched_is_malformed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(arr: pa.Array) -> list[tuple[pa.Array, Any]]:
        raise TypeError(arr.type)

    monkeypatch.setattr(validate, "_children", refuse)
    table = pa.table({**{k: [v] for k, v in REC.items()}, "s": [{"a": "x"}], "n": [None]})
    s = shape_table(table, "transaction")
    assert s.reason.tolist() == [Reason.MALFORMED]
    assert s.detail.tolist() == ["field 's' has an Arrow type the engine cannot read"]


def test_a_consuming_concat_equals_a_copying_one_and_lets_the_parts_go() -> None:
    # settle joins a file's row groups this way: each column of the parts is let go
    # once joined (DECISIONS 109), the whole the same as the copying join's
    recs = [{**REC, "txn_id": f"t{i}", "amount": 100 + i} for i in range(7)]
    recs[3] = {**REC, "amount": "x"}

    def parts() -> list[validate.Validated]:
        return [validate_transactions(shape_objects(recs[a:b], "transaction"),
                                      DEFAULT_CAMPAIGN, DEFAULT_REGISTRY)
                for a, b in ((0, 2), (2, 5), (5, 7))]

    kept = parts()
    copied = validate.concat_validated(kept, "transaction")
    given = parts()
    consumed = validate.concat_validated(given, "transaction", consume=True)
    for name in validate._COLUMNS:
        a, b = getattr(copied, name), getattr(consumed, name)
        assert (a.equals(b) if isinstance(a, pa.Array) else a.tolist() == b.tolist()), name
        assert hasattr(kept[0], name) and not hasattr(given[0], name)
    assert consumed.n == 7 and consumed.reason.tolist()[3] == Reason.MALFORMED
