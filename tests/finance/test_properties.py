"""Statements, settlement, reconcile and diff against tests/finance/reference.py
for random ledgers and claims (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.finance import ledger
from engine.finance.reconcile import diff, reconcile
from engine.finance.statements import settlement, statements
from engine.io.outputs_schema import GRANT_SCHEMA
from engine.rules.model import Kind, Operator, Registry
from tests.finance import reference
from tests.finance.example import grant, memory_ledger

OPS = {"opa": "same_month", "opb": "next_month", "opc": "month_after_next", "opd": "same_month"}
LAGS = {"opa": 0, "opb": 1, "opc": 2, "opd": 0}
REGISTRY = Registry(tuple(Operator(o, o, (Kind.CHARGE,), 0, payout=p) for o, p in OPS.items()))
# month ends in JST, where the UTC and JST months differ, and a year boundary
BOUNDARIES = [datetime(2020, 9, 30, 15, tzinfo=UTC), datetime(2020, 12, 31, 15, tzinfo=UTC),
              datetime(2021, 2, 28, 15, tzinfo=UTC)]

instants = st.builds(lambda b, s: b + timedelta(seconds=s), st.sampled_from(BOUNDARIES),
                     st.integers(-40 * 86_400, 40 * 86_400))
grant_rows = st.lists(
    st.tuples(st.sampled_from(["opa", "opb", "opc"]), st.sampled_from(["k1", "k2", "k3"]),
              st.sampled_from([f"t{i}" for i in range(8)]),
              st.sampled_from(["charge", "purchase", "refund"]), st.integers(1, 20_000),
              st.sampled_from([0, 0, 1, 250, 5000, -1, -250, -4999]), instants),
    max_size=30)


def build(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    by_key: dict[tuple[str, str, str], dict[str, Any]] = {}
    for op, key, txn, kind, amount, points, at in rows:
        by_key.setdefault((op, key, txn), grant(op, key, txn, kind, amount, points, 0,
                                                at.isoformat()))
    return list(by_key.values())




@settings(max_examples=60, deadline=None)
@given(grant_rows, st.lists(st.tuples(st.sampled_from(sorted(OPS)), st.integers(-500, 9000)),
                            max_size=5))
def test_statements_and_settlement(rows: list[tuple[Any, ...]],
                                   paid: list[tuple[str, int]]) -> None:
    grants = build(rows)
    con = memory_ledger(grants)
    try:
        got = statements(con, REGISTRY, "ops")
        advances = pa.table({"operator_id": [o for o, _ in paid],
                             "payout_month": ["2021-01"] * len(paid),
                             "paid_points": pa.array([p for _, p in paid], pa.int64()),
                             "line": pa.array(range(2, len(paid) + 2), pa.int64())})
        settled = settlement(con, REGISTRY, "ops", advances, "a.csv")
    finally:
        con.close()
    want = reference.statements(grants, LAGS)
    assert [tuple(r.values()) for r in got.table.to_pylist()] == want
    control = got.control.to_pylist()[0]
    assert control["ties_out"] and control["net_points"] == sum(g["points"] for g in grants)
    assert [tuple(r.values()) for r in settled.to_pylist()] == reference.settlement(
        grants, list(OPS), [(o, "2021-01", p) for o, p in paid])


claims = st.lists(st.tuples(st.sampled_from(["opa", "opa", "opa", "opb"]),
                            st.sampled_from([f"t{i}" for i in range(8)]),
                            st.sampled_from(["k1", "k2", "k3"]),
                            st.sampled_from([0, 1, 250, 5000, -250, -1])), max_size=25)


@settings(max_examples=60, deadline=None)
@given(grant_rows, claims, st.booleans())
def test_reconcile(rows: list[tuple[Any, ...]], claim: list[tuple[str, str, str, int]],
                   copy_ledger: bool) -> None:
    grants = build(rows)
    if copy_ledger:  # a claim made from the ledger itself, then perturbed by `claim`
        claim = [(g["operator_id"], g["txn_id"], g["mykey_id"], g["points"]) for g in grants
                 if g["operator_id"] == "opa" and g["points"]] + claim
    table = pa.table({"operator_id": [c[0] for c in claim], "txn_id": [c[1] for c in claim],
                      "mykey_id": [c[2] for c in claim],
                      "points": pa.array([c[3] for c in claim], pa.int64()),
                      "line": pa.array(range(2, len(claim) + 2), pa.int64())})
    con = memory_ledger(grants)
    try:
        got = reconcile(con, "opa", table)
    finally:
        con.close()
    want, matched = reference.reconcile(grants, "opa", claim)
    assert [tuple(r.values()) for r in got.differences.to_pylist()] == want
    assert got.matched == matched


@settings(max_examples=40, deadline=None)
@given(grant_rows, grant_rows)
def test_diff(rows_a: list[tuple[Any, ...]], rows_b: list[tuple[Any, ...]]) -> None:
    a, b = build(rows_a), build(rows_a[: len(rows_a) // 2] + rows_b)
    con = memory_ledger(a)
    try:
        con.execute("ATTACH ':memory:' AS against")
        ledger.initialize(con, "against")
        con.register("_b", pa.Table.from_pylist(b, schema=GRANT_SCHEMA))
        con.execute("INSERT INTO against.grants SELECT * FROM _b")
        got = diff(con, "against")
    finally:
        con.close()
    assert [tuple(r.values()) for r in got.result.differences.to_pylist()] == \
        reference.diff(a, b)
    totals = {r["operator_id"]: r["difference"] for r in got.operators.to_pylist()}
    for op in {g["operator_id"] for g in a + b}:
        assert totals.get(op, 0) == (sum(g["points"] for g in b if g["operator_id"] == op)
                              - sum(g["points"] for g in a if g["operator_id"] == op))
