"""Example-based tests: every reason code, the JST and half-open boundaries, rounding,
refunds and the cap. Each example runs through the engine *and* the reference model
(tests/reference_model.py) and both must give the expected decisions."""

from __future__ import annotations

import dataclasses

import pytest

from engine.config import DEFAULT_REGISTRY
from engine.rules.model import Campaign, Kind, Operator, Registry, Rounding
from engine.rules.settlement import settle_records
from tests import reference_model
from tests.builders import JAN_APPLY, A, B, day, enr, refund, txn

PII = "123456789018"          # a valid Individual Number (check digit 8)
NOT_PII = "123456789019"      # 12 digits, wrong check digit


FILLER_ENROLLMENT = {"mykey_id": "FILL0000", "operator_id": "paypay", "applied_at": JAN_APPLY}
FILLER_TRANSACTION = "filler"


def _key(o: object) -> tuple:
    return tuple(getattr(o, f) for f in ("record_type", "index", "reason", "points",
                                         "cumulative_points", "capped", "seq"))


def settle(enrollments: list, transactions: list, campaign: Campaign | None = None,
           registry: Registry | None = None) -> list:
    """Engine outcomes, after checking that the reference model agrees on every field
    but ``detail``.

    Empty inputs have their own tests (test_empty_inputs); here an empty list gets one
    filler record, whose outcome is dropped, so that each test checks one thing."""
    campaign = campaign or Campaign()
    registry = registry or DEFAULT_REGISTRY
    es = enrollments or [FILLER_ENROLLMENT]
    ts = transactions or [FILLER_TRANSACTION]
    got = settle_records(es, ts, campaign, registry)
    ref = reference_model.settle_records(es, ts, campaign, registry)
    assert [_key(o) for o in got] == [_key(o) for o in ref]
    return [o for o in got
            if (o.record_type == "enrollment" and enrollments)
            or (o.record_type == "transaction" and transactions)]


def tx_outcomes(enrollments: list, transactions: list, **kw: object) -> list:
    return [o for o in settle(enrollments, transactions, **kw)  # type: ignore[arg-type]
            if o.record_type == "transaction"]


def reasons(enrollments: list, transactions: list, **kw: object) -> list[str | None]:
    return [o.reason for o in tx_outcomes(enrollments, transactions, **kw)]


def enr_reasons(enrollments: list, **kw: object) -> list[str | None]:
    return [o.reason for o in settle(enrollments, [], **kw)]  # type: ignore[arg-type]


# ------------------------------------------------------------------ enrollments


def test_enrollment_accepted_and_outcome_fields() -> None:
    [o] = settle([enr()], [])
    assert (o.record_type, o.index, o.reason, o.points, o.cumulative_points, o.capped,
            o.seq) == ("enrollment", 0, None, 0, 0, False, 0)


@pytest.mark.parametrize("record", [
    enr(note=PII),
    enr(extra={"deep": [1, {"x": PII}]}),
    enr(tags=["a", PII]),
    enr(**{PII: "a field named like a number"}),
    enr(mykey=PII),                              # also malformed, but privacy comes first
    {"mykey_id": A, "operator_id": PII, "applied_at": 3},
])
def test_enrollment_personal_number_forbidden(record: dict) -> None:
    [o] = settle([record], [])
    assert o.reason == "PERSONAL_NUMBER_FORBIDDEN"
    assert PII not in (o.detail or "")


def test_enrollment_twelve_digits_with_wrong_check_digit_is_fine() -> None:
    assert enr_reasons([enr(note=NOT_PII), enr(B, note=int(PII))]) == [None, None]


@pytest.mark.parametrize("record", [
    "not an object", 42, None, [enr()], True,
    {k: v for k, v in enr().items() if k != "mykey_id"},
    enr(mykey="AAAA000"), enr(mykey="AAAA00012"), enr(mykey="AAAA-001"),
    enr(mykey="AAAAＡ001"), enr(mykey=12345678),
    {k: v for k, v in enr().items() if k != "operator_id"}, enr(op=7), enr(op=None),
    {k: v for k, v in enr().items() if k != "applied_at"},
    enr(applied="2020-09-01T10:00:00"), enr(applied="2020-09-01"), enr(applied=1598918400),
    enr(applied="2020-02-30T10:00:00+09:00"),
    enr(earn_on="refund"), enr(earn_on="Purchase"), enr(earn_on=1),
    enr(received_at="2020-09-01T10:00:00"),
])
def test_enrollment_malformed(record: object) -> None:
    [o] = settle([record], [])
    assert o.reason == "MALFORMED"


def test_enrollment_unknown_operator() -> None:
    assert enr_reasons([enr(op="no-such-pay"), enr(B, op="PayPay")]) == [
        "UNKNOWN_OPERATOR", "UNKNOWN_OPERATOR"]


def test_enrollment_duplicate_same_operator_and_kind() -> None:
    assert enr_reasons([
        enr(), enr(applied="2020-09-05T10:00:00+09:00"), enr(earn_on="purchase"),
        enr(B, "waon", earn_on="charge"), enr(B, "waon", earn_on="charge"),
    ]) == [None, "DUPLICATE", "DUPLICATE", None, "DUPLICATE"]


def test_enrollment_already_enrolled_anything_different() -> None:
    assert enr_reasons([
        enr(), enr(op="aupay"), enr(earn_on="charge"),           # paypay only earns on purchase
        enr(B, "waon", earn_on="charge"), enr(B, "waon", earn_on="purchase"),
        enr(B, "waon"),                                          # no earn_on: not "the same"
        enr(B, "paypay"),
    ]) == [None, "ALREADY_ENROLLED", "ALREADY_ENROLLED",
           None, "ALREADY_ENROLLED", "ALREADY_ENROLLED", "ALREADY_ENROLLED"]


def test_enrollment_rejected_ones_do_not_block() -> None:
    assert enr_reasons([enr(applied="2021-10-01T00:00:00+09:00"), enr(op="aupay")]) == [
        "ENROLLMENT_CLOSED", None]


def test_enrollment_closed_boundary_is_exclusive() -> None:
    assert enr_reasons([
        enr(A, applied="2021-09-30T23:59:59.999999+09:00"),
        enr(B, applied="2021-09-30T15:00:00Z"),                  # == enroll_end
    ]) == [None, "ENROLLMENT_CLOSED"]


def test_selection_not_open_uses_the_jst_date() -> None:
    # kyash opens 2020-09-01 (JST)
    assert enr_reasons([
        enr(A, "kyash", "2020-08-31T23:59:59+09:00", earn_on="charge"),
        enr(B, "kyash", "2020-08-31T15:00:00Z", earn_on="charge"),   # 2020-09-01 00:00 JST
    ]) == ["SELECTION_NOT_OPEN", None]


def test_invalid_earn_on() -> None:
    assert enr_reasons([
        enr(A, "paypay", earn_on="charge"),
        enr(B, "waon"),                                           # both kinds, none chosen
        enr("CCCC0003", "waon", earn_on="purchase"),
        enr("DDDD0004", "aupay", earn_on="charge"),
    ]) == ["INVALID_EARN_ON", "INVALID_EARN_ON", None, None]


def test_enrollment_check_order() -> None:
    # unknown operator before the duplicate check, closed before selection, selection
    # before earn_on
    assert enr_reasons([
        enr(), enr(op="nope"),
        enr(B, "kyash", "2021-10-02T00:00:00+09:00", earn_on="refund"),
        enr(B, "kyash", "2021-10-02T00:00:00+09:00", earn_on="charge", note=PII),
        enr(B, "kyash", "2021-10-02T00:00:00+09:00"),
        enr(B, "kyash", "2020-08-01T00:00:00+09:00"),
    ]) == [None, "UNKNOWN_OPERATOR", "MALFORMED", "PERSONAL_NUMBER_FORBIDDEN",
           "ENROLLMENT_CLOSED", "SELECTION_NOT_OPEN"]


# ------------------------------------------------------------------ transactions


def test_accepted_purchase_points() -> None:
    [o] = tx_outcomes([enr()], [txn(amount=1000)])
    assert (o.record_type, o.index, o.reason, o.points, o.cumulative_points, o.capped,
            o.seq) == ("transaction", 0, None, 250, 250, False, 1)


@pytest.mark.parametrize("field", ["txn_id", "extra", "nested", "mykey_id", "original"])
def test_transaction_personal_number_forbidden_does_not_leak(field: str) -> None:
    t = txn()
    if field == "txn_id":
        t["txn_id"] = PII                       # a well-formed txn_id, but an Individual Number
    elif field == "extra":
        t["memo"] = PII
    elif field == "nested":
        t["meta"] = {"lines": [{"note": "x"}, {"note": PII}]}
    elif field == "mykey_id":
        t["mykey_id"] = PII
    else:
        t = refund(txn(), 10)
        t["original_txn_id"] = PII
    [o] = tx_outcomes([enr()], [t])
    assert o.reason == "PERSONAL_NUMBER_FORBIDDEN"
    assert o.points == 0 and o.cumulative_points == 0 and not o.capped
    assert PII not in (o.detail or "")


def test_personal_number_check_comes_before_everything() -> None:
    bad = {"txn_id": 5, "amount": "x", "memo": PII}
    assert reasons([], [bad, {PII: "as a field name"}, {"a": {PII: 1}}]) == [
        "PERSONAL_NUMBER_FORBIDDEN"] * 3


def test_a_non_object_has_no_fields_so_it_is_malformed() -> None:
    # check 1 is about fields; the rejection carries no part of the value
    out = tx_outcomes([], [[PII], PII, [{"memo": PII}]])
    assert [o.reason for o in out] == ["MALFORMED"] * 3
    assert all(PII not in (o.detail or "") for o in out)


def _drop(t: dict, k: str) -> dict:
    return {key: v for key, v in t.items() if key != k}


@pytest.mark.parametrize("record", [
    "x", 1, None, [], [txn()],
    _drop(txn(), "txn_id"), txn(txn_id=""), txn(txn_id="x" * 65), txn(txn_id="a b"),
    txn(txn_id="t/1"),
    _drop(txn(), "operator_id"), txn(op=None), txn(op=3),
    _drop(txn(), "mykey_id"), txn(mykey="AAAA00011"), txn(mykey=None),
    _drop(txn(), "kind"), txn(kind="Purchase"), txn(kind="reversal"), txn(kind=None),
    _drop(txn(), "amount"), txn(amount="100"), txn(amount=True), txn(amount=False),
    txn(amount=None), txn(amount=[100]), txn(amount={"yen": 100}),
    _drop(txn(), "occurred_at"), txn(at="2020-10-01T12:00:00"), txn(at="2020-10-01"),
    txn(at="2020-13-01T12:00:00Z"), txn(at=1601521200),
    txn(received_at="2020-10-01T12:00:00"),
    txn("refund", 10),                                      # refund without original_txn_id
    txn("refund", 10, original_txn_id=None),
    txn("refund", 10, original_txn_id=""),
    txn("refund", 10, original_txn_id=7),
    txn(amount="100", at="no time"),                          # malformed wins over amount
    txn(amount=1.5, at="2020-10-01T12:00:00"),                # malformed before INVALID_AMOUNT
])
def test_transaction_malformed(record: object) -> None:
    assert reasons([enr()], [record]) == ["MALFORMED"]


@pytest.mark.parametrize("amount", [1.5, 1.0, 100.0, 0, -5, 10_000_001, 0.0, -0.5])
def test_invalid_amount(amount: object) -> None:
    assert reasons([enr()], [txn(amount=amount)]) == ["INVALID_AMOUNT"]


def test_amount_limits_are_inclusive() -> None:
    out = tx_outcomes([enr(), enr(B)], [txn(amount=1), txn(amount=10_000_000, mykey=B)])
    assert [(o.reason, o.points) for o in out] == [(None, 0), (None, 5000)]


def test_max_amount_is_configurable() -> None:
    c = dataclasses.replace(Campaign(), max_amount=100)
    assert reasons([enr()], [txn(amount=100), txn(amount=101)], campaign=c) == [
        None, "INVALID_AMOUNT"]


def test_invalid_amount_comes_before_unknown_operator() -> None:
    assert reasons([enr()], [txn(amount=0, op="nope"), txn(op="nope")]) == [
        "INVALID_AMOUNT", "UNKNOWN_OPERATOR"]


def test_duplicate_ignores_received_at_and_offset_notation() -> None:
    first = txn(at="2020-10-01T12:00:00+09:00", received_at="2020-10-01T12:00:01+09:00")
    again = dict(first, received_at="2020-10-02T00:00:00Z")
    same_instant = dict(first, occurred_at="2020-10-01T03:00:00Z")
    assert reasons([enr()], [first, again, same_instant]) == [None, "DUPLICATE", "DUPLICATE"]


@pytest.mark.parametrize("change", [
    {"amount": 1001}, {"occurred_at": "2020-10-01T12:00:01+09:00"}, {"kind": "charge"},
])
def test_conflicting_duplicate(change: dict) -> None:
    first = txn()
    assert reasons([enr()], [first, dict(first, **change)]) == [None, "CONFLICTING_DUPLICATE"]


def test_duplicate_key_is_per_person_and_operator() -> None:
    t = txn(txn_id="same")
    other_person = txn(txn_id="same", mykey=B)
    other_operator = txn(txn_id="same", op="dbarai")
    out = reasons([enr(), enr(B)], [t, other_person, other_operator])
    assert out == [None, None, "WRONG_OPERATOR"]


def test_first_one_stands_even_when_rejected() -> None:
    early = txn(at="2020-08-20T12:00:00+09:00")                 # OUTSIDE_WINDOW
    fixed = dict(early, occurred_at="2020-10-01T12:00:00+09:00")
    assert reasons([enr()], [early, dict(early), fixed]) == [
        "OUTSIDE_WINDOW", "DUPLICATE", "CONFLICTING_DUPLICATE"]


def test_records_failing_checks_1_to_4_do_not_claim_the_key() -> None:
    bad = txn(txn_id="k", amount=0)
    good = txn(txn_id="k", amount=100)
    assert reasons([enr()], [bad, good, dict(good)]) == ["INVALID_AMOUNT", None, "DUPLICATE"]


def test_late_boundary() -> None:
    assert reasons([enr()], [
        txn(received_at="2021-10-31T23:59:59.999999+09:00"),
        txn(received_at="2021-11-01T00:00:00+09:00"),           # == accept_end: late
        txn(received_at="2021-10-31T15:00:00Z"),                # same instant
        txn(),                                                   # no received_at: never late
    ]) == [None, "LATE", "LATE", None]


def test_late_before_outside_window_and_not_enrolled() -> None:
    assert reasons([], [txn(at="2019-01-01T00:00:00Z", received_at="2022-01-01T00:00:00Z")]) == [
        "LATE"]


def test_window_edges() -> None:
    assert reasons([enr(applied="2020-08-15T00:00:00+09:00")], [
        txn(at="2020-08-31T23:59:59.999999+09:00"),
        txn(at="2020-09-01T00:00:00+09:00"),                  # window_start: inclusive
        txn(at="2020-08-31T15:00:00Z"),                       # the same instant in UTC
        txn(at="2021-09-30T23:59:59.999999+09:00"),
        txn(at="2021-10-01T00:00:00+09:00"),                  # window_end: exclusive
        txn(at="2021-09-30T15:00:00Z"),
    ]) == ["OUTSIDE_WINDOW", None, None, None, "OUTSIDE_WINDOW", "OUTSIDE_WINDOW"]


def test_window_extension_is_config_only() -> None:
    c = dataclasses.replace(Campaign(), window_end=Campaign().window_end + 92 * 86_400_000_000)
    t = txn(at="2021-12-31T23:59:59+09:00")
    assert reasons([enr()], [t]) == ["OUTSIDE_WINDOW"]
    assert reasons([enr()], [dict(t)], campaign=c) == [None]


def test_operator_last_day_in_jst() -> None:
    # yucho-pay: last_day 2021-03-31
    e = enr(op="yucho-pay")
    assert reasons([e], [
        txn(op="yucho-pay", at="2021-03-31T23:59:59+09:00"),
        txn(op="yucho-pay", at="2021-03-31T14:59:59Z"),
        txn(op="yucho-pay", at="2021-03-31T15:00:00Z"),       # 2021-04-01 in Japan
        txn(op="yucho-pay", at="2021-04-01T00:00:00+09:00"),
    ]) == [None, None, "OUTSIDE_WINDOW", "OUTSIDE_WINDOW"]


def test_not_enrolled() -> None:
    assert reasons([enr(op="nope"), enr(mykey=B)], [txn(), txn(mykey="CCCC0003")]) == [
        "NOT_ENROLLED", "NOT_ENROLLED"]


def test_wrong_operator() -> None:
    assert reasons([enr()], [txn(op="dbarai")]) == ["WRONG_OPERATOR"]


def test_kind_not_eligible() -> None:
    assert reasons([enr(), enr(B, "waon", earn_on="charge")], [
        txn("charge"), txn("purchase", mykey=B, op="waon"), txn("charge", mykey=B, op="waon"),
    ]) == ["KIND_NOT_ELIGIBLE", "KIND_NOT_ELIGIBLE", None]


def test_application_day_is_a_jst_date() -> None:
    e = enr(applied="2020-09-10T16:00:00Z")                    # 2020-09-11 01:00 JST
    assert reasons([e], [
        txn(at="2020-09-10T15:30:00Z"),                        # 2020-09-11 00:30 JST: counts
        txn(at="2020-09-10T15:00:00Z"),                        # 2020-09-11 00:00 JST: counts
        txn(at="2020-09-10T14:59:59.999999Z"),                 # 2020-09-10 JST
        txn(at="2020-09-10T23:59:59+09:00"),
    ]) == [None, None, "BEFORE_APPLICATION", "BEFORE_APPLICATION"]


def test_earlier_time_on_the_application_day_counts() -> None:
    e = enr(applied="2020-09-20T23:00:00+09:00")
    assert reasons([e], [txn(at="2020-09-20T00:00:01+09:00")]) == [None]


def test_transaction_check_order_after_duplicates() -> None:
    # LATE > OUTSIDE_WINDOW > NOT_ENROLLED > WRONG_OPERATOR > KIND > BEFORE_APPLICATION
    e = [enr(applied="2020-10-10T00:00:00+09:00")]
    assert reasons(e, [
        txn(mykey=B, at="2020-08-01T00:00:00+09:00"),
        txn(mykey=B, op="dbarai"),
        txn("charge", op="dbarai", at="2020-09-02T00:00:00+09:00"),
        txn("charge", at="2020-09-02T00:00:00+09:00"),
        txn(at="2020-09-02T00:00:00+09:00"),
    ]) == ["OUTSIDE_WINDOW", "NOT_ENROLLED", "WRONG_OPERATOR", "KIND_NOT_ELIGIBLE",
           "BEFORE_APPLICATION"]


# ------------------------------------------------------------------ rounding and the cap


@pytest.mark.parametrize(("rounding", "points"), [
    (Rounding.CUMULATIVE_FLOOR, [0, 1, 1, -1]),
    (Rounding.PER_TRANSACTION_FLOOR, [0, 0, 0, 0]),
])
def test_rounding_modes_differ(rounding: Rounding, points: list[int]) -> None:
    c = dataclasses.replace(Campaign(), rounding=rounding)
    p = [txn(amount=3) for _ in range(3)]
    out = tx_outcomes([enr()], [*p, refund(p[0], 3)], campaign=c)
    assert [o.reason for o in out] == [None] * 4
    assert [o.points for o in out] == points
    assert sum(points) == out[-1].cumulative_points


def test_per_transaction_floor_refund_takes_back_its_own_floor() -> None:
    c = dataclasses.replace(Campaign(), rounding=Rounding.PER_TRANSACTION_FLOOR)
    p = txn(amount=7)                                          # floor(1.75) = 1
    out = tx_outcomes([enr()], [p, refund(p, 3), refund(p, 4)], campaign=c)
    # the refunds floor to 0 and 1: per record, not of the running sum
    assert [(o.reason, o.points, o.cumulative_points) for o in out] == [
        (None, 1, 1), (None, 0, 1), (None, -1, 0)]


def test_cap_and_clawback_after_the_cap() -> None:
    c = dataclasses.replace(Campaign(), cap_points=10)
    p1, p2, p3 = txn(amount=30), txn(amount=30), txn(amount=30)
    out = tx_outcomes([enr()], [
        p1,                    # c=30  -> 7
        p2,                    # c=60  -> 15 -> 10 (capped)
        p3,                    # c=90  -> 10, 0 points
        refund(p1, 30),        # c=60  -> still 10: clawback of 0 points
        refund(p2, 25),        # c=35  -> 8: -2
        refund(p3, 30),        # c=5   -> 1: -7
    ], campaign=c)
    assert [(o.points, o.cumulative_points, o.capped) for o in out] == [
        (7, 7, False), (3, 10, True), (0, 10, True), (0, 10, True), (-2, 8, False),
        (-7, 1, False)]


def test_default_cap_is_5000_points() -> None:
    out = tx_outcomes([enr()], [txn(amount=19_996), txn(amount=8), txn(amount=100)])
    assert [(o.points, o.cumulative_points, o.capped) for o in out] == [
        (4999, 4999, False), (1, 5000, True), (0, 5000, True)]


def test_rate_percent_is_honoured() -> None:
    c = dataclasses.replace(Campaign(), rate_percent=10)
    out = tx_outcomes([enr()], [txn(amount=1234)], campaign=c)
    assert out[0].points == 123


def test_points_are_per_person() -> None:
    out = tx_outcomes([enr(), enr(B)], [txn(amount=100), txn(amount=100, mykey=B),
                                        txn(amount=4, mykey=B)])
    assert [o.cumulative_points for o in out] == [25, 25, 26]


# ------------------------------------------------------------------ refunds


def test_refund_accepted_claws_back() -> None:
    p = txn(amount=1000)
    out = tx_outcomes([enr()], [p, refund(p, 400)])
    assert [(o.reason, o.points, o.cumulative_points) for o in out] == [
        (None, 250, 250), (None, -100, 150)]


def test_partial_refunds_and_refund_exceeding() -> None:
    p = txn(amount=100)
    out = tx_outcomes([enr()], [p, refund(p, 40), refund(p, 61), refund(p, 60),
                                refund(p, 1)])
    assert [(o.reason, o.cumulative_points) for o in out] == [
        (None, 25), (None, 15), ("REFUND_EXCEEDS_ORIGINAL", 0), (None, 0),
        ("REFUND_EXCEEDS_ORIGINAL", 0)]


def test_refund_before_its_original_waits_for_it() -> None:
    p = txn(amount=100)
    other = txn(amount=8)
    r = refund(p, 100)
    out = settle([enr()], [r, other, p])
    t = [o for o in out if o.record_type == "transaction"]
    assert [(o.reason, o.points, o.cumulative_points) for o in t] == [
        (None, -25, 2), (None, 2, 2), (None, 25, 27)]
    # decided right after its original: other (seq 1), original (2), refund (3)
    assert [o.seq for o in t] == [3, 1, 2]


def test_waiting_refunds_are_decided_in_arrival_order() -> None:
    p = txn(amount=100)
    out = tx_outcomes([enr()], [refund(p, 60), refund(p, 50), refund(p, 40), p])
    assert [(o.reason, o.seq) for o in out] == [
        (None, 2), ("REFUND_EXCEEDS_ORIGINAL", 3), (None, 4), (None, 1)]


def test_three_refunds_waiting_for_one_original() -> None:
    p = txn(amount=100)
    out = tx_outcomes([enr()], [refund(p, 10), refund(p, 10), refund(p, 10), p])
    assert [(o.reason, o.points, o.cumulative_points, o.seq) for o in out] == [
        (None, -3, 22, 2), (None, -2, 20, 3), (None, -3, 17, 4), (None, 25, 25, 1)]


def test_refund_waiting_for_a_key_that_arrives_as_a_refund() -> None:
    # r waits for "x"; "x" arrives as a refund (itself waiting for "y"): from then on no
    # original "x" can ever pass check 5, so r is decided right after "x" arrives, exactly
    # as it would be had it arrived after "x"
    y = txn(amount=100, txn_id="y")
    x = refund(y, 10, txn_id="x")
    r = refund(x, 5)
    other = txn(amount=8)
    out = tx_outcomes([enr()], [r, x, other, y])
    assert [(o.reason, o.seq) for o in out] == [
        ("ORIGINAL_NOT_FOUND", 1), (None, 4), (None, 2), (None, 3)]


def test_original_not_found() -> None:
    p = txn(amount=100)
    out = tx_outcomes([enr(), enr(B)], [
        refund(p, 10, txn_id="r1"),                           # original never comes
        refund(p, 10, mykey=B),                               # another person's purchase
        txn(amount=5),
    ])
    assert [(o.reason, o.seq) for o in out] == [
        ("ORIGINAL_NOT_FOUND", 3), ("ORIGINAL_NOT_FOUND", 4), (None, 2)]


def test_original_must_be_of_the_same_operator() -> None:
    p = txn(amount=100)
    assert reasons([enr()], [p, refund(p, 10, op="dbarai")]) == [None, "ORIGINAL_NOT_FOUND"]


def test_original_that_failed_checks_1_to_4_is_not_found() -> None:
    p = txn(amount=0)
    assert reasons([enr()], [p, refund(p, 1)]) == ["INVALID_AMOUNT", "ORIGINAL_NOT_FOUND"]


def test_refund_of_a_refund_is_not_found() -> None:
    p = txn(amount=100)
    r1 = refund(p, 10)
    r2 = refund(r1, 5)
    assert reasons([enr()], [p, r1, r2]) == [None, None, "ORIGINAL_NOT_FOUND"]


def test_original_key_taken_by_a_refund_is_not_found() -> None:
    p = txn(amount=100, txn_id="x")
    r = refund(p, 10, txn_id="x")                              # refunds "itself"
    assert reasons([enr()], [r, p, refund(p, 10)]) == [
        "ORIGINAL_NOT_FOUND", "CONFLICTING_DUPLICATE", "ORIGINAL_NOT_FOUND"]


def test_original_not_eligible() -> None:
    early = txn(amount=100, at="2020-08-01T00:00:00+09:00")
    other = txn(amount=100, mykey=B)
    assert reasons([enr()], [refund(early, 10), early, refund(early, 10), other,
                             refund(other, 10)]) == [
        "ORIGINAL_NOT_ELIGIBLE", "OUTSIDE_WINDOW", "ORIGINAL_NOT_ELIGIBLE", "NOT_ENROLLED",
        "ORIGINAL_NOT_ELIGIBLE"]


def test_refund_after_the_campaign_still_takes_points_back() -> None:
    p = txn(amount=100)
    r = refund(p, 100, at="2022-06-01T00:00:00+09:00")
    out = tx_outcomes([enr()], [p, r])
    assert [(o.reason, o.points) for o in out] == [(None, 25), (None, -25)]


def test_late_refund() -> None:
    p = txn(amount=100)
    assert reasons([enr()], [p, refund(p, 10, received_at="2021-11-01T00:00:00+09:00")]) == [
        None, "LATE"]


def test_refund_duplicates() -> None:
    p = txn(amount=100)
    r = refund(p, 10)
    assert reasons([enr()], [r, dict(r), dict(r, amount=11), p]) == [
        None, "DUPLICATE", "CONFLICTING_DUPLICATE", None]


def test_refund_amount_checks() -> None:
    p = txn(amount=100)
    assert reasons([enr()], [p, refund(p, 0), refund(p, "10"), refund(p, 10.0)]) == [
        None, "INVALID_AMOUNT", "MALFORMED", "INVALID_AMOUNT"]


# ------------------------------------------------------------------ misc


def test_custom_registry_operator_fields() -> None:
    reg = Registry((Operator("opa", "Op A", (Kind.CHARGE,), day("2020-09-05"),
                             day("2020-09-30")),))
    assert enr_reasons([enr(A, "opa", "2020-09-04T23:59:59+09:00")], registry=reg) == [
        "SELECTION_NOT_OPEN"]
    e = [enr(A, "opa", "2020-09-05T00:00:00+09:00")]
    assert reasons(e, [txn("charge", op="opa", at="2020-09-30T23:59:59+09:00"),
                       txn("charge", op="opa", at="2020-10-01T00:00:00+09:00")],
                   registry=reg) == [None, "OUTSIDE_WINDOW"]


def test_every_record_gets_one_outcome_in_input_order() -> None:
    es = [enr(), "junk", enr(B)]
    ts = [txn(), 5, refund(txn(), 1), txn(mykey=B)]
    out = settle(es, ts)
    assert [(o.record_type, o.index) for o in out] == [
        ("enrollment", 0), ("enrollment", 1), ("enrollment", 2),
        ("transaction", 0), ("transaction", 1), ("transaction", 2), ("transaction", 3)]
    assert sorted(o.seq for o in out) == list(range(7))


@pytest.mark.parametrize(("enrollments", "transactions", "expected"), [
    ([], [], []),
    ([enr()], [], [("enrollment", None, 0)]),
    ([], [txn()], [("transaction", "NOT_ENROLLED", 0)]),
    (["x"], [], [("enrollment", "MALFORMED", 0)]),
    ([], [5], [("transaction", "MALFORMED", 0)]),
])
def test_empty_inputs(enrollments: list, transactions: list, expected: list) -> None:
    for impl in (settle_records, reference_model.settle_records):
        out = impl(enrollments, transactions, Campaign(), DEFAULT_REGISTRY)
        assert [(o.record_type, o.reason, o.seq) for o in out] == expected
