"""Reconciliation of an operator's claim against the ledger, and the comparison
of two ledgers (FINANCE_RULES.md, version 1).

Both compare a set of (operator_id, mykey_id, txn_id, points) rows with the
ledger's non-zero grants by one full outer join in DuckDB (:data:`COMPARE_SQL`);
reconciliation compares the first line of each key of the operator's claim rows,
and reports claim rows of another operator and the later lines of a repeated key
separately. Output rows are sorted by category (text order), then ``txn_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

CLAIM_COLUMNS = ("operator_id", "txn_id", "mykey_id", "points")
DIFFERENCE_COLUMNS = ("category", "operator_id", "mykey_id", "txn_id", "ledger_points",
                      "claimed_points", "line")
CATEGORIES = ("duplicate_in_claim", "missing_from_claim", "not_in_ledger", "points_differ",
              "wrong_operator")

# _ours: the ledger's side (operator_id, mykey_id, txn_id, points); _theirs: the other side
# with a line number (NULL when it has none) and how often the key is listed. One row per
# key on each side. Kept: the differences, and the keys listed more than once (their
# ledger points are those of the duplicate_in_claim rows, without a second ledger scan).
COMPARE_SQL = """
CREATE OR REPLACE TEMP TABLE _compared AS
SELECT * FROM (
    SELECT CASE WHEN t.txn_id IS NULL THEN 'missing_from_claim'
                WHEN o.txn_id IS NULL THEN 'not_in_ledger'
                WHEN o.points <> t.points THEN 'points_differ' END AS category,
           coalesce(o.operator_id, t.operator_id) AS operator_id,
           coalesce(o.mykey_id, t.mykey_id) AS mykey_id,
           coalesce(o.txn_id, t.txn_id) AS txn_id,
           o.points AS ledger_points, t.points AS claimed_points, t.line AS line, t.listed
    FROM _ours o FULL OUTER JOIN _theirs t
      ON o.operator_id = t.operator_id AND o.mykey_id = t.mykey_id AND o.txn_id = t.txn_id)
WHERE category IS NOT NULL OR listed > 1
"""


@dataclass
class Reconciliation:
    differences: pa.Table
    matched: int
    summary: pa.Table  # category, rows, ledger_points, claimed_points


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _nonzero_grants(ledger: str, operator: str | None) -> str:
    # a literal rather than a parameter: views cannot be prepared, and a view lets
    # DuckDB push the operator filter into the scan
    where = "points <> 0" + (f" AND operator_id = {_literal(operator)}"
                             if operator is not None else "")
    return f"SELECT operator_id, mykey_id, txn_id, points FROM {ledger}.grants WHERE {where}"


def _finish(con: Any) -> Reconciliation:
    """The differences: those of :data:`COMPARE_SQL` (run before) and ``_extra``."""
    diffs = con.execute(
        f"SELECT {', '.join(DIFFERENCE_COLUMNS)} FROM _compared WHERE category IS NOT NULL "
        "UNION ALL SELECT * FROM _extra "
        "ORDER BY category, txn_id, operator_id, mykey_id, line NULLS FIRST").to_arrow_table()
    summary = diffs.group_by("category").aggregate([
        ("category", "count"), ("ledger_points", "sum"), ("claimed_points", "sum")])
    summary = pa.table({
        "category": summary["category"],
        "rows": summary["category_count"].cast(pa.int64()),
        "ledger_points": summary["ledger_points_sum"].fill_null(0).cast(pa.int64()),
        "claimed_points": summary["claimed_points_sum"].fill_null(0).cast(pa.int64()),
    }).sort_by("category")
    # every first claim row is matched unless it is not in the ledger or differs
    compared = con.execute("SELECT count(*) FROM _theirs").fetchone()[0]
    counts = dict(zip(summary["category"].to_pylist(), summary["rows"].to_pylist(),
                      strict=True))
    matched = compared - counts.get("not_in_ledger", 0) - counts.get("points_differ", 0)
    return Reconciliation(diffs, matched, summary)


CLAIM_SCHEMA = pa.schema([("operator_id", pa.string()), ("txn_id", pa.string()),
                          ("mykey_id", pa.string()), ("points", pa.int64()),
                          ("line", pa.int64())])


def reconcile(con: Any, operator: str, claim: pa.Table) -> Reconciliation:
    """``claim``: columns :data:`CLAIM_COLUMNS` plus ``line``, as read by
    :func:`engine.finance.files.read_csv_input`."""
    con.register("_claim", claim.select(CLAIM_SCHEMA.names).cast(CLAIM_SCHEMA))
    params = {"op": operator}
    # The first line of each key is compared, its later lines are duplicates: one hash
    # aggregate finds both (numbering the rows of each key with a window sorted a
    # million partitions and took most of the time).
    con.execute("CREATE OR REPLACE TEMP TABLE _theirs AS "
                "SELECT operator_id, mykey_id, txn_id, arg_min(points, line) AS points, "
                "min(line) AS line, count(*) AS listed FROM _claim WHERE operator_id = $op "
                "GROUP BY operator_id, mykey_id, txn_id", params)
    con.execute(f"CREATE OR REPLACE TEMP VIEW _ours AS {_nonzero_grants('main', operator)}")
    try:
        con.execute(COMPARE_SQL)
        con.execute("""
            CREATE OR REPLACE TEMP TABLE _extra AS
            SELECT 'wrong_operator' AS category, operator_id, mykey_id, txn_id,
                   CAST(NULL AS BIGINT) AS ledger_points, points AS claimed_points, line
            FROM _claim WHERE operator_id <> $op
            UNION ALL
            SELECT 'duplicate_in_claim', c.operator_id, c.mykey_id, c.txn_id,
                   k.ledger_points, c.points, c.line
            FROM _claim c JOIN (SELECT * FROM _compared WHERE listed > 1) k
              ON c.operator_id = k.operator_id AND c.mykey_id = k.mykey_id
             AND c.txn_id = k.txn_id AND c.line > k.line""", params)
        return _finish(con)
    finally:
        for stmt in ("DROP TABLE IF EXISTS _extra", "DROP TABLE IF EXISTS _compared",
                     "DROP TABLE _theirs", "DROP VIEW _ours"):
            con.execute(stmt)
        con.unregister("_claim")


DIFF_PEOPLE_SQL = """
WITH a AS (SELECT mykey_id, sum(points) AS p FROM _ours GROUP BY ALL),
     b AS (SELECT mykey_id, sum(points) AS p FROM _theirs GROUP BY ALL)
SELECT coalesce(a.mykey_id, b.mykey_id) AS mykey_id,
       CAST(coalesce(a.p, 0) AS BIGINT) AS ledger_points,
       CAST(coalesce(b.p, 0) AS BIGINT) AS against_points,
       CAST(coalesce(b.p, 0) - coalesce(a.p, 0) AS BIGINT) AS difference
FROM a FULL OUTER JOIN b USING (mykey_id)
WHERE coalesce(a.p, 0) <> coalesce(b.p, 0)
ORDER BY mykey_id
"""

DIFF_OPERATORS_SQL = """
WITH a AS (SELECT operator_id, sum(points) AS p, count(*) AS n FROM _ours GROUP BY ALL),
     b AS (SELECT operator_id, sum(points) AS p, count(*) AS n FROM _theirs GROUP BY ALL)
SELECT coalesce(a.operator_id, b.operator_id) AS operator_id,
       coalesce(a.n, 0) AS ledger_grants, coalesce(b.n, 0) AS against_grants,
       CAST(coalesce(a.p, 0) AS BIGINT) AS ledger_points,
       CAST(coalesce(b.p, 0) AS BIGINT) AS against_points,
       CAST(coalesce(b.p, 0) - coalesce(a.p, 0) AS BIGINT) AS difference
FROM a FULL OUTER JOIN b USING (operator_id)
ORDER BY operator_id
"""


@dataclass
class LedgerDiff:
    result: Reconciliation  # categories as in reconciliation, the --against ledger as claim
    people: pa.Table
    operators: pa.Table


def diff_files(con: Any, against: str) -> LedgerDiff:
    """:func:`diff` with the ledger file ``against``, attached read-only."""
    path = against.replace("'", "''")
    con.execute(f"ATTACH '{path}' AS against (READ_ONLY)")
    try:
        return diff(con, "against")
    finally:
        con.execute("DETACH against")


def diff(con: Any, against: str) -> LedgerDiff:
    """Compare the ledger open on ``con`` with the attached ledger database
    ``against``: the non-zero grants of every operator, the second ledger in the
    role of the claim."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW _ours AS {_nonzero_grants('main', None)}")
    con.execute("CREATE OR REPLACE TEMP VIEW _theirs AS SELECT operator_id, mykey_id, "
                "txn_id, points, CAST(NULL AS BIGINT) AS line, 1 AS listed "
                f"FROM {against}.grants WHERE points <> 0")
    con.execute(COMPARE_SQL)
    con.execute("CREATE OR REPLACE TEMP TABLE _extra AS SELECT * FROM (SELECT "
                "NULL::VARCHAR AS category, NULL::VARCHAR AS operator_id, "
                "NULL::VARCHAR AS mykey_id, NULL::VARCHAR AS txn_id, "
                "NULL::BIGINT AS ledger_points, NULL::BIGINT AS claimed_points, "
                "NULL::BIGINT AS line) WHERE false")
    res = _finish(con)
    people = con.execute(DIFF_PEOPLE_SQL).to_arrow_table()
    operators = con.execute(DIFF_OPERATORS_SQL).to_arrow_table()
    for stmt in ("DROP TABLE _extra", "DROP TABLE _compared", "DROP VIEW _ours",
                 "DROP VIEW _theirs"):
        con.execute(stmt)
    diffs = res.differences.drop_columns(["line"]).rename_columns(
        ["category", "operator_id", "mykey_id", "txn_id", "ledger_points", "against_points"])
    summary = res.summary.rename_columns(["category", "rows", "ledger_points",
                                          "against_points"])
    return LedgerDiff(Reconciliation(diffs, res.matched, summary), people, operators)
