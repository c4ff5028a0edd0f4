"""Reconciliation and ledger diff against the hand-computed example."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from tests.finance.example import GRANTS, grant, make_ledger, read_csv, run

HEADER = "category,operator_id,mykey_id,txn_id,ledger_points,claimed_points,line"

CLAIM = """\ufeffoperator_id,txn_id,mykey_id,points
opa,t2,k1,4000
opa,t4,k1,-700
opa,t2,k1,4000
opa,t3,k1,10
opb,t5,k2,2500
opa,t99,k9,50
"""

DIFFERENCES = f"""{HEADER}
duplicate_in_claim,opa,k1,t2,4000,4000,4
missing_from_claim,opa,k1,t1,1000,,
not_in_ledger,opa,k1,t3,,10,5
not_in_ledger,opa,k9,t99,,50,7
points_differ,opa,k1,t4,-750,-700,3
wrong_operator,opb,k2,t5,,2500,6
"""


def test_reconcile_by_hand(tmp_path: Path) -> None:
    led = make_ledger(tmp_path / "l.duckdb", GRANTS)
    claim = tmp_path / "claim.csv"
    claim.write_text(CLAIM, encoding="utf-8")
    r = run("reconcile", "--ledger", str(led), "--operator", "opa", "--claim", str(claim),
            "--out", str(tmp_path / "rc"))
    assert r.returncode == 1, r.stderr
    assert read_csv(tmp_path / "rc" / "differences.csv") == DIFFERENCES
    assert pq.read_table(tmp_path / "rc" / "differences.parquet").num_rows == 6
    lines = r.stdout.splitlines()
    assert lines[0] == "matched: 1"
    assert "not_in_ledger: 2 rows, ledger 0 points, claimed 60 points" in lines
    assert "points_differ: 1 rows, ledger -750 points, claimed -700 points" in lines


def test_reconcile_without_difference(tmp_path: Path) -> None:
    led = make_ledger(tmp_path / "l.duckdb", GRANTS)
    claim = tmp_path / "claim.csv"
    # CRLF, no BOM, any order of rows; the zero-point grant t3 is not claimed
    claim.write_bytes(b"operator_id,txn_id,mykey_id,points\r\nopa,t4,k1,-750\r\n"
                      b"opa,t1,k1,1000\r\nopa,t2,k1,4000\r\n")
    r = run("reconcile", "--ledger", str(led), "--operator", "opa", "--claim", str(claim),
            "--out", str(tmp_path / "rc"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["matched: 3"]
    assert read_csv(tmp_path / "rc" / "differences.csv") == HEADER + "\n"


def test_reconcile_operator_without_grants(tmp_path: Path) -> None:
    led = make_ledger(tmp_path / "l.duckdb", GRANTS)
    claim = tmp_path / "claim.csv"
    claim.write_text("operator_id,txn_id,mykey_id,points\nopd,t1,k1,5\n")
    r = run("reconcile", "--ledger", str(led), "--operator", "opd", "--claim", str(claim),
            "--out", str(tmp_path / "rc"))
    assert r.returncode == 1
    assert read_csv(tmp_path / "rc" / "differences.csv").splitlines()[1] == \
        "not_in_ledger,opd,k1,t1,,5,2"


def test_diff_by_hand(tmp_path: Path) -> None:
    a = make_ledger(tmp_path / "a.duckdb", GRANTS)
    changed = [dict(g, points=900) if g["txn_id"] == "t1" else g
               for g in GRANTS if g["txn_id"] != "t8"]
    changed.append(grant("opd", "k6", "t10", "charge", 1200, 300, 300,
                         "2021-03-01T12:00:00+09:00"))
    b = make_ledger(tmp_path / "b.duckdb", changed)
    r = run("diff", "--ledger", str(a), "--against", str(b), "--out", str(tmp_path / "df"))
    assert r.returncode == 1, r.stderr
    assert read_csv(tmp_path / "df" / "differences.csv") == """\
category,operator_id,mykey_id,txn_id,ledger_points,against_points
missing_from_claim,opc,k5,t8,100,
not_in_ledger,opd,k6,t10,,300
points_differ,opa,k1,t1,1000,900
"""
    assert read_csv(tmp_path / "df" / "people.csv") == """\
mykey_id,ledger_points,against_points,difference
k1,4250,4150,-100
k5,100,0,-100
k6,0,300,300
"""
    assert read_csv(tmp_path / "df" / "operators.csv") == """\
operator_id,ledger_grants,against_grants,ledger_points,against_points,difference
opa,3,3,4250,4150,-100
opb,2,2,3500,3500,0
opc,3,2,100,0,-100
opd,0,1,0,300,300
"""
    assert r.stdout.splitlines()[0] == "matched: 6"
    same = run("diff", "--ledger", str(a), "--against", str(make_ledger(
        tmp_path / "c.duckdb", list(reversed(GRANTS)))), "--out", str(tmp_path / "same"))
    assert same.returncode == 0, same.stderr


def test_claim_columns_in_any_order(tmp_path: Path) -> None:
    led = make_ledger(tmp_path / "l.duckdb", GRANTS)
    claim = tmp_path / "claim.csv"
    claim.write_text("points,mykey_id,txn_id,operator_id\n1000,k1,t1,opa\n4000,k1,t2,opa\n"
                     "-750,k1,t4,opa\n")
    r = run("reconcile", "--ledger", str(led), "--operator", "opa", "--claim", str(claim),
            "--out", str(tmp_path / "rc"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["matched: 3"]
