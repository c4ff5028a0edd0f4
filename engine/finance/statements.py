"""Monthly statements and the final settlement (FINANCE_RULES.md, version 1).

Both are single DuckDB queries over the ledger's ``grant_months`` table: the
per-(operator, JST spending month) counts and sums that :func:`engine.finance.
ledger.append` keeps with the grants. An operator's payout month is its spending
month shifted by the operator's lag, one to one, so the statement rows are those
of ``grant_months`` with the month moved and no grant needs to be read again. The
control totals are computed from the grants themselves, so ``ties_out`` checks the
derived table against the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from engine.finance.ledger import InputError, LedgerError
from engine.rules.model import PAYOUT_MONTHS, Registry

STATEMENT_COLUMNS = ("operator_id", "payout_month", "grants", "points_granted", "clawbacks",
                     "points_clawed_back", "net_points", "people", "net_amount")
SETTLEMENT_COLUMNS = ("operator_id", "owed_points", "paid_points", "balance")
ADVANCE_COLUMNS = ("operator_id", "payout_month", "paid_points")


def payout_lags(registry: Registry) -> pa.Table:
    return pa.table({
        "operator_id": [op.id for op in registry.operators],
        "lag_months": pa.array([PAYOUT_MONTHS[op.payout] for op in registry.operators],
                               type=pa.int32()),
    })


def check_operators(con: Any, registry: Registry, file: str) -> None:
    """Every operator in the ledger must be in the registry (its payout is needed)."""
    con.register("_registry", payout_lags(registry))
    unknown = con.execute("SELECT DISTINCT operator_id FROM grant_months WHERE operator_id NOT IN "
                          "(SELECT operator_id FROM _registry) ORDER BY 1 LIMIT 1").fetchall()
    if unknown:
        raise LedgerError(f"the ledger has grants of operator {unknown[0][0]!r}, which is "
                          f"not in {file}")


STATEMENTS_SQL = """
SELECT operator_id, strftime(spending_month + to_months(r.lag_months), '%Y-%m') AS payout_month,
       grants, points_granted, clawbacks, points_clawed_back,
       points_granted - points_clawed_back AS net_points, people, net_amount
FROM grant_months JOIN _registry r USING (operator_id)
WHERE grants + clawbacks > 0
ORDER BY operator_id, payout_month
"""


@dataclass
class Statements:
    table: pa.Table
    control: pa.Table  # one row: the totals finance ties out


def statements(con: Any, registry: Registry, operators_file: str) -> Statements:
    check_operators(con, registry, operators_file)
    t = con.execute(STATEMENTS_SQL).to_arrow_table()
    t = t.cast(pa.schema([pa.field(f.name, pa.int64() if pa.types.is_integer(f.type)
                                   else f.type) for f in t.schema]))
    ledger_grants, ledger_points = con.execute(
        "SELECT count(*), CAST(coalesce(sum(points), 0) AS BIGINT) FROM grants").fetchone()
    sums = {c: sum(t[c].to_pylist()) for c in ("grants", "points_granted", "clawbacks",
                                                "points_clawed_back", "net_points")}
    control = pa.table({
        "rows": [t.num_rows], **{c: [v] for c, v in sums.items()},
        "ledger_grants": [ledger_grants], "ledger_points": [ledger_points],
        "ties_out": [sums["net_points"] == ledger_points],
    })
    return Statements(t, control)


SETTLEMENT_SQL = """
WITH owed AS (SELECT operator_id, sum(net_points) AS owed FROM _statements GROUP BY ALL),
     paid AS (SELECT operator_id, sum(paid_points) AS paid FROM _advances GROUP BY ALL)
SELECT r.operator_id,
       CAST(coalesce(owed, 0) AS BIGINT) AS owed_points,
       CAST(coalesce(paid, 0) AS BIGINT) AS paid_points,
       CAST(coalesce(owed, 0) - coalesce(paid, 0) AS BIGINT) AS balance
FROM _registry r LEFT JOIN owed USING (operator_id) LEFT JOIN paid USING (operator_id)
ORDER BY r.operator_id
"""


def settlement(con: Any, registry: Registry, operators_file: str, advances: pa.Table,
               advances_file: str) -> pa.Table:
    """One row per registry operator (those without grants too: owed 0)."""
    known = {op.id for op in registry.operators}
    for op_id, line in zip(advances["operator_id"].to_pylist(), advances["line"].to_pylist(),
                           strict=True):
        if op_id not in known:
            raise InputError(f"{advances_file}: line {line}: operator {op_id!r} is not in "
                             f"{operators_file}")
    st = statements(con, registry, operators_file)
    con.register("_statements", st.table)
    con.register("_advances", advances)
    return con.execute(SETTLEMENT_SQL).to_arrow_table()
