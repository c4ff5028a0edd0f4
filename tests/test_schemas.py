"""The published record contracts in schemas/: valid JSON Schemas that accept and refuse
what the settlement rules say, and agree with the engine's reason codes and Arrow
output schemas."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator

from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA
from engine.rules.model import ENROLLMENT_REASONS, TRANSACTION_REASONS, Reason

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
NAMES = ("enrollment", "transaction", "grant", "rejection")


def load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load(name))


def with_(base: dict[str, Any], /, **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    out.update(changes)
    return out


def without(record: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in keys}


ENROLLMENT = {"mykey_id": "A1b2C3d4", "operator_id": "paypay",
              "applied_at": "2020-09-01T10:15:00+09:00"}
PURCHASE = {"txn_id": "tx-000001", "operator_id": "paypay", "mykey_id": "A1b2C3d4",
            "kind": "purchase", "amount": 3000, "occurred_at": "2020-09-15T12:34:56+09:00"}
REFUND = with_(PURCHASE, txn_id="tx-000002", kind="refund", amount=1000,
               original_txn_id="tx-000001")
GRANT = {"grant_id": "mynapoint-2020/paypay/A1b2C3d4/tx-000001", "campaign": "mynapoint-2020",
         "mykey_id": "A1b2C3d4", "operator_id": "paypay", "txn_id": "tx-000001",
         "kind": "purchase", "amount": 3000, "points": 750, "cumulative_points": 750,
         "capped": False, "occurred_at": "2020-09-15T03:34:56Z",
         "source": "mynapoint.transactions/3/1200#17"}
REJECTION = {"record_type": "transaction", "reason": "NOT_ENROLLED",
             "detail": "mykey_id: no accepted enrollment", "txn_id": "tx-000009",
             "operator_id": "paypay", "mykey_id": "Q9w8E7r6",
             "source": "mynapoint.transactions/5/310#2"}

VALID: dict[str, list[dict[str, Any]]] = {
    "enrollment": [
        ENROLLMENT,
        with_(ENROLLMENT, operator_id="waon", earn_on="charge"),
        with_(ENROLLMENT, earn_on="purchase", received_at="2020-09-01T01:15:00.123456Z"),
        with_(ENROLLMENT, applied_at="2020-09-01T01:15:00Z"),
        with_(ENROLLMENT, applied_at="2020-09-01T01:15:00-05:30"),
        with_(ENROLLMENT, applied_at="2020-09-01t01:15:00z"),  # RFC 3339 allows lowercase
        with_(ENROLLMENT, mykey_id="00000000"),
        with_(ENROLLMENT, operator_id="a"),
        with_(ENROLLMENT, operator_id="rakuten-edy_2"),
        with_(ENROLLMENT, channel="app", attempt=2, meta={"x": [1, 2]}),  # extra: ignored
    ],
    "transaction": [
        PURCHASE,
        REFUND,
        with_(PURCHASE, kind="charge"),
        with_(PURCHASE, amount=1),
        with_(PURCHASE, amount=10_000_000),
        with_(PURCHASE, txn_id="x"),
        with_(PURCHASE, txn_id="A" * 64),
        with_(PURCHASE, txn_id="2020.09.15_shop-7:0001"),
        with_(PURCHASE, txn_id="tx-0123456789"),  # 13 characters
        with_(PURCHASE, occurred_at="2020-09-15T03:34:56.5Z"),
        with_(PURCHASE, received_at="2020-09-15T03:35:00+00:00"),
        with_(PURCHASE, original_txn_id="tx-000000"),  # not used, but allowed
        with_(PURCHASE, terminal="T-1", amount_tax=272),
    ],
    "grant": [
        GRANT,
        with_(GRANT, kind="refund", points=-250, cumulative_points=500),
        with_(GRANT, kind="refund", points=0, cumulative_points=5000, capped=True),
        with_(GRANT, points=0, cumulative_points=5000, capped=True),
        with_(GRANT, occurred_at="2020-09-15T03:34:56.250000Z"),
        with_(GRANT, source="transactions.jsonl:42"),
        with_(GRANT, source="C:/data/transactions.parquet:1"),
        with_(GRANT, source="mynapoint.transactions/0/0"),
        with_(GRANT, source="mynapoint.transactions/0/0#0"),
    ],
    "rejection": [
        REJECTION,
        with_(REJECTION, txn_id=None, operator_id=None, mykey_id=None,
              reason="PERSONAL_NUMBER_FORBIDDEN", detail="mykey_id: [REDACTED]"),
        with_(REJECTION, record_type="enrollment", reason="ALREADY_ENROLLED", txn_id=None),
        with_(REJECTION, reason="MALFORMED", mykey_id="not a key", source="mynapoint.t/1/9"),
        with_(REJECTION, source="enrollments.jsonl:7"),
    ],
}

INVALID: dict[str, list[tuple[str, Any]]] = {
    "enrollment": [
        ("not an object", [ENROLLMENT]),
        ("a string", json.dumps(ENROLLMENT)),
        ("mykey_id missing", without(ENROLLMENT, "mykey_id")),
        ("operator_id missing", without(ENROLLMENT, "operator_id")),
        ("applied_at missing", without(ENROLLMENT, "applied_at")),
        ("mykey_id 7 chars", with_(ENROLLMENT, mykey_id="A1b2C3d")),
        ("mykey_id 9 chars", with_(ENROLLMENT, mykey_id="A1b2C3d4e")),
        ("mykey_id punctuation", with_(ENROLLMENT, mykey_id="A1b2-3d4")),
        ("mykey_id full-width", with_(ENROLLMENT, mykey_id="Ａ1b2C3d4")),
        ("mykey_id number", with_(ENROLLMENT, mykey_id=12345678)),
        ("operator_id uppercase", with_(ENROLLMENT, operator_id="PayPay")),
        ("operator_id leading dash", with_(ENROLLMENT, operator_id="-paypay")),
        ("operator_id 33 chars", with_(ENROLLMENT, operator_id="a" * 33)),
        ("timestamp without offset", with_(ENROLLMENT, applied_at="2020-09-01T10:15:00")),
        ("offset without colon", with_(ENROLLMENT, applied_at="2020-09-01T10:15:00+0900")),
        ("date only", with_(ENROLLMENT, applied_at="2020-09-01")),
        ("space separator", with_(ENROLLMENT, applied_at="2020-09-01 10:15:00+09:00")),
        ("full-width digits", with_(ENROLLMENT, applied_at="２０20-09-01T10:15:00Z")),
        ("epoch number", with_(ENROLLMENT, applied_at=1598923000)),
        ("earn_on refund", with_(ENROLLMENT, earn_on="refund")),
        ("earn_on null", with_(ENROLLMENT, earn_on=None)),
        ("received_at without offset", with_(ENROLLMENT, received_at="2020-09-01T10:15:00")),
    ],
    "transaction": [
        ("refund without original_txn_id", without(REFUND, "original_txn_id")),
        ("refund with empty original_txn_id", with_(REFUND, original_txn_id="")),
        ("timestamp without offset", with_(PURCHASE, occurred_at="2020-09-15T12:34:56")),
        ("amount as string", with_(PURCHASE, amount="3000")),
        ("amount boolean", with_(PURCHASE, amount=True)),
        ("amount fraction", with_(PURCHASE, amount=1.5)),
        ("amount zero", with_(PURCHASE, amount=0)),
        ("amount negative", with_(PURCHASE, amount=-100)),
        ("amount over max", with_(PURCHASE, amount=10_000_001)),
        ("amount null", with_(PURCHASE, amount=None)),
        ("txn_id over 64 chars", with_(PURCHASE, txn_id="A" * 65)),
        ("txn_id empty", with_(PURCHASE, txn_id="")),
        ("txn_id slash", with_(PURCHASE, txn_id="tx/1")),
        ("txn_id space", with_(PURCHASE, txn_id="tx 1")),
        ("txn_id non-ASCII", with_(PURCHASE, txn_id="取引1")),
        ("txn_id number", with_(PURCHASE, txn_id=1)),
        ("kind unknown", with_(PURCHASE, kind="payment")),
        ("kind uppercase", with_(PURCHASE, kind="PURCHASE")),
        ("mykey_id bad", with_(PURCHASE, mykey_id="A1b2C3d")),
        ("operator_id bad", with_(PURCHASE, operator_id="Pay Pay")),
        *((f"{k} missing", without(PURCHASE, k))
          for k in ("txn_id", "operator_id", "mykey_id", "kind", "amount", "occurred_at")),
        ("received_at without offset", with_(PURCHASE, received_at="2020-09-15T12:34:56")),
    ],
    "grant": [
        ("extra field", with_(GRANT, note="x")),
        *((f"{k} missing", without(GRANT, k)) for k in GRANT),
        ("amount as string", with_(GRANT, amount="3000")),
        ("points fraction", with_(GRANT, points=1.5)),
        ("negative points for a purchase", with_(GRANT, points=-1)),
        ("positive points for a refund", with_(GRANT, kind="refund", points=1)),
        ("negative cumulative", with_(GRANT, cumulative_points=-1)),
        ("capped as string", with_(GRANT, capped="false")),
        ("occurred_at not UTC", with_(GRANT, occurred_at="2020-09-15T12:34:56+09:00")),
        ("occurred_at nanoseconds", with_(GRANT, occurred_at="2020-09-15T03:34:56.123456789Z")),
        ("source without offset", with_(GRANT, source="mynapoint.transactions/3")),
        ("source line 0", with_(GRANT, source="transactions.jsonl:0")),
        ("source bad index", with_(GRANT, source="mynapoint.transactions/3/12#x")),
        ("kind unknown", with_(GRANT, kind="payment")),
    ],
    "rejection": [
        ("extra field", with_(REJECTION, record={"mykey_id": "A1b2C3d4"})),
        *((f"{k} missing", without(REJECTION, k)) for k in REJECTION),
        ("reason OK", with_(REJECTION, reason="OK")),
        ("reason unknown", with_(REJECTION, reason="FRAUD")),
        ("enrollment reason on a transaction",
         with_(REJECTION, reason="ALREADY_ENROLLED")),
        ("transaction reason on an enrollment",
         with_(REJECTION, record_type="enrollment", reason="NOT_ENROLLED")),
        ("record_type grant", with_(REJECTION, record_type="grant")),
        ("mykey_id number", with_(REJECTION, mykey_id=12345678)),
        ("detail null", with_(REJECTION, detail=None)),
        ("detail empty", with_(REJECTION, detail="")),
    ],
}


@pytest.mark.parametrize("name", NAMES)
def test_is_a_valid_draft_2020_12_schema(name: str) -> None:
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.schema.json")
    assert schema["title"] and schema["description"]
    for field, spec in schema["properties"].items():
        assert spec.get("description"), f"{name}.{field} has no description"


@pytest.mark.parametrize("name", NAMES)
def test_own_examples_are_valid(name: str) -> None:
    schema = load(name)
    v = Draft202012Validator(schema)
    for example in schema.get("examples", []):
        v.validate(example)


@pytest.mark.parametrize(("name", "record"),
                         [(n, r) for n, rs in VALID.items() for r in rs])
def test_valid_examples(name: str, record: dict[str, Any]) -> None:
    validator(name).validate(record)


@pytest.mark.parametrize(("name", "why", "record"),
                         [(n, why, r) for n, rs in INVALID.items() for why, r in rs])
def test_invalid_examples(name: str, why: str, record: Any) -> None:
    assert not validator(name).is_valid(record), why


def test_inputs_allow_unknown_fields_outputs_do_not() -> None:
    assert load("enrollment")["additionalProperties"] is True
    assert load("transaction")["additionalProperties"] is True
    assert load("grant")["additionalProperties"] is False
    assert load("rejection")["additionalProperties"] is False


@pytest.mark.parametrize("name", ["enrollment", "transaction"])
def test_inputs_warn_about_individual_numbers(name: str) -> None:
    description = load(name)["description"]
    assert "Individual Number" in description
    assert "PERSONAL_NUMBER_FORBIDDEN" in description


def test_max_amount_is_the_default_campaign_and_said_to_be_configurable() -> None:
    from engine.rules.model import Campaign

    amount = load("transaction")["properties"]["amount"]
    assert amount["maximum"] == Campaign().max_amount
    assert "max_amount" in amount["description"]


def test_reason_enum_is_every_reason_code() -> None:
    schema = load("rejection")
    assert set(schema["properties"]["reason"]["enum"]) == {
        r.name for r in Reason if r is not Reason.OK}
    by_type = {}
    for rule in schema["allOf"]:
        record_type = rule["if"]["properties"]["record_type"]["const"]
        by_type[record_type] = rule["then"]["properties"]["reason"]["enum"]
    assert by_type == {"enrollment": [r.name for r in ENROLLMENT_REASONS],
                       "transaction": [r.name for r in TRANSACTION_REASONS]}


def test_enum_of_record_types_and_kinds() -> None:
    from engine.rules.model import KIND_NAMES

    assert load("transaction")["properties"]["kind"]["enum"] == list(KIND_NAMES)
    assert load("grant")["properties"]["kind"]["enum"] == list(KIND_NAMES)
    assert load("enrollment")["properties"]["earn_on"]["enum"] == list(KIND_NAMES[:2])


_ARROW_TO_JSON = {pa.string(): "string", pa.int64(): "integer", pa.bool_(): "boolean",
                  pa.timestamp("us", tz="UTC"): "string"}


@pytest.mark.parametrize(("name", "arrow"), [("grant", GRANT_SCHEMA),
                                             ("rejection", REJECTION_SCHEMA)])
def test_arrow_output_schemas_match_json_schemas(name: str, arrow: pa.Schema) -> None:
    schema = load(name)
    props = schema["properties"]
    assert arrow.names == list(props)
    assert set(schema["required"]) == set(props)  # every column is always present
    for field in arrow:
        json_type = props[field.name]["type"]
        types = set(json_type) if isinstance(json_type, list) else {json_type}
        assert types - {"null"} == {_ARROW_TO_JSON[field.type]}, field.name
        assert field.nullable == ("null" in types), field.name
        if pa.types.is_timestamp(field.type):
            assert props[field.name]["format"] == "date-time"


# The schemas' patterns and the engine's own validators must agree, or operators who
# validate against the published contract would still see MALFORMED rejections.

def _pattern(name: str, field: str) -> str:
    return load(name)["properties"][field]["pattern"]


def _schema_accepts(pattern: str, values: list[str]) -> list[bool]:
    v = Draft202012Validator({"type": "string", "pattern": pattern})
    return [v.is_valid(x) for x in values]


TIMESTAMPS = [
    "2020-09-01T00:00:00+09:00", "2020-08-31T15:00:00Z", "2020-09-01t00:00:00z",
    "2020-09-01T00:00:00.5+09:00", "2020-09-01T00:00:00.123456789Z", "2020-09-01T23:59:59-00:00",
    "2020-09-01T00:00:00", "2020-09-01 00:00:00Z", "2020-09-01T00:00:00+0900",
    "2020-09-01T00:00:60Z", "2020-09-01T24:00:00Z", "2020-09-01T00:00:00+24:00",
    "2020-09-01T00:00:00+09:60", "2020-09-01T00:00:00.Z", "2020-13-01T00:00:00Z",
    "2020-09-00T00:00:00Z", "2020-9-01T00:00:00Z", "", "2020-09-01",
]


def test_timestamp_pattern_agrees_with_engine() -> None:
    from engine.rules.strings import parse_timestamps

    _us, ok = parse_timestamps(pa.array(TIMESTAMPS))
    for name, field in (("enrollment", "applied_at"), ("transaction", "occurred_at"),
                        ("transaction", "received_at"), ("enrollment", "received_at")):
        assert _schema_accepts(_pattern(name, field), TIMESTAMPS) == ok.tolist(), field


def test_id_patterns_agree_with_engine() -> None:
    from engine.rules import strings

    cases = {
        ("enrollment", "mykey_id", strings.mykey_ok): [
            "A1b2C3d4", "00000000", "zzzzzzzz", "A1b2C3d", "A1b2C3d4e", "A1b2-3d4", "",
            "Ａ1b2C3d4", "A1b2C3é4"],
        ("transaction", "txn_id", strings.txn_id_ok): [
            "x", "A" * 64, "A" * 65, "", "tx/1", "tx 1", "a.b_c:d-e", "取引1", "tx#1"],
        ("transaction", "operator_id", strings.operator_id_ok): [
            "a", "paypay", "rakuten-edy", "a_b", "0abc", "a" * 32, "a" * 33, "-a", "_a",
            "PayPay", "", "pay pay"],
    }
    for (name, field, engine_ok), values in cases.items():
        expected = engine_ok(pa.array(values)).tolist()
        assert _schema_accepts(_pattern(name, field), values) == expected, field
