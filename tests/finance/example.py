"""The hand-computed example of tests/finance: four operators (one per payout
schedule, one without grants) and grants chosen for each rule of FINANCE_RULES.md:
a JST month boundary, payout lag across a year boundary, a refund in a later
month, a clawback after the cap, a zero-point grant."""

from __future__ import annotations

import contextlib
import io
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from engine.cli import main
from engine.finance import ledger
from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA

OPERATORS_TOML = """
[[operators]]
id = "opa"
name = "A (same month)"
earns_on = ["purchase"]
selection_opens = 2020-07-01

[[operators]]
id = "opb"
name = "B (next month)"
earns_on = ["charge"]
selection_opens = 2020-07-01
payout = "next_month"

[[operators]]
id = "opc"
name = "C (month after next)"
earns_on = ["purchase"]
selection_opens = 2020-07-01
payout = "month_after_next"

[[operators]]
id = "opd"
name = "D (no grants)"
earns_on = ["charge"]
selection_opens = 2020-07-01
"""


def grant(op: str, key: str, txn: str, kind: str, amount: int, points: int, cum: int,
          at: str) -> dict[str, Any]:
    return {"grant_id": f"c/{op}/{key}/{txn}", "campaign": "c", "mykey_id": key,
            "operator_id": op, "txn_id": txn, "kind": kind, "amount": amount,
            "points": points, "cumulative_points": cum, "capped": cum == 5000,
            "occurred_at": datetime.fromisoformat(at), "source": f"t.jsonl:{txn}"}


GRANTS = [
    # 00:00 JST on 1 October is still 30 September in UTC: spending month 2020-10
    grant("opa", "k1", "t1", "purchase", 4000, 1000, 1000, "2020-09-30T15:00:00+00:00"),
    grant("opa", "k1", "t2", "purchase", 20000, 4000, 5000, "2020-10-15T12:00:00+09:00"),
    # after the cap: zero points, counted in net_amount only (no statement row of its own)
    grant("opa", "k1", "t3", "purchase", 1000, 0, 5000, "2020-11-02T12:00:00+09:00"),
    # a refund after the cap, two months later: clawback in its own month
    grant("opa", "k1", "t4", "refund", 8000, -750, 4250, "2020-12-05T12:00:00+09:00"),
    # next_month: December 2020 (JST, 1 s before midnight) pays out in January 2021 ...
    grant("opb", "k3", "t6", "charge", 4000, 1000, 1000, "2020-12-31T14:59:59+00:00"),
    # ... and 00:30 JST on New Year's Day is January, paid out in February
    grant("opb", "k2", "t5", "charge", 10000, 2500, 2500, "2020-12-31T15:30:00+00:00"),
    # month_after_next: November 2020 pays out in January 2021
    grant("opc", "k4", "t7", "purchase", 2000, 500, 500, "2020-11-10T12:00:00+09:00"),
    grant("opc", "k5", "t8", "purchase", 400, 100, 100, "2020-11-20T12:00:00+09:00"),
    # a refund in a later month: December's clawback is paid out in February
    grant("opc", "k4", "t9", "refund", 2000, -500, 0, "2020-12-01T12:00:00+09:00"),
]

REJECTIONS = [
    {"record_type": "transaction", "reason": "NOT_ENROLLED", "detail": "no enrollment",
     "txn_id": "t10", "operator_id": "opd", "mykey_id": "k6", "source": "t.jsonl:10"},
]

STATEMENTS_CSV = """\
operator_id,payout_month,grants,points_granted,clawbacks,points_clawed_back,net_points,people,net_amount
opa,2020-10,2,5000,0,0,5000,1,24000
opa,2020-12,0,0,1,750,-750,1,-8000
opb,2021-01,1,1000,0,0,1000,1,4000
opb,2021-02,1,2500,0,0,2500,1,10000
opc,2021-01,2,600,0,0,600,2,2400
opc,2021-02,0,0,1,500,-500,1,-2000
"""

ADVANCES_CSV = """\
operator_id,payout_month,paid_points
opa,2020-10,3000
opa,2020-10,2000
opb,2021-01,3500
opd,2021-01,100
"""

SETTLEMENT_CSV = """\
operator_id,owed_points,paid_points,balance
opa,4250,5000,-750
opb,3500,3500,0
opc,100,0,100
opd,0,100,-100
"""


def fill(con: Any, grants: list[dict[str, Any]],
         rejections: list[dict[str, Any]] | None = None) -> None:
    with ledger.transaction(con):
        for kind, rows, schema in (("grant", grants, GRANT_SCHEMA),
                                   ("rejection", rejections or [], REJECTION_SCHEMA)):
            con.register("_t", pa.Table.from_pylist(rows, schema=schema))
            ledger.append(con, kind, "_t")
            con.unregister("_t")


def make_ledger(path: Path, grants: list[dict[str, Any]],
                rejections: list[dict[str, Any]] | None = None) -> Path:
    con = ledger.connect(path, write=True)
    try:
        fill(con, grants, rejections)
    finally:
        con.close()
    return path


def memory_ledger(grants: list[dict[str, Any]]) -> Any:
    """An in-memory ledger (fast, for property tests) with ``grants``."""
    con = duckdb.connect()
    ledger.initialize(con)
    fill(con, grants)
    return con


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """``mynapoint ledger ARGS`` in this process (the imports are paid once), with
    exit code, stdout and stderr as from a subprocess."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["ledger", *args])
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
    return subprocess.CompletedProcess(["mynapoint", "ledger", *args], code, out.getvalue(),
                                       err.getvalue())


def read_csv(path: Path) -> str:
    """A written CSV as plain text: checks the BOM, drops it and the quotes."""
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf"), "CSV for Excel in Japan must start with a BOM"
    return data[3:].decode("utf-8").replace('"', "")


def derived(con: Any) -> dict[str, list[tuple[Any, ...]]]:
    """The ledger's derived tables, sorted, next to their recomputation from its grants
    by tests/finance/reference.py."""
    from tests.finance import reference

    grants = ledger.read_table(con, "grant").to_pylist()
    return {
        "grant_months": con.execute("SELECT * FROM grant_months ORDER BY ALL").fetchall(),
        "grant_people": con.execute("SELECT * FROM grant_people ORDER BY ALL").fetchall(),
        "reference_months": reference.grant_months(grants),
        "reference_people": reference.grant_people(grants),
    }


def assert_derived_consistent(con: Any) -> None:
    d = derived(con)
    assert d["grant_months"] == d["reference_months"]
    assert d["grant_people"] == d["reference_people"]
