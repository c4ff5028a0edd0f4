"""Statements and settlement against the hand-computed example (tests/finance/example.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.parquet as pq

from tests.finance.example import (
    ADVANCES_CSV,
    GRANTS,
    OPERATORS_TOML,
    REJECTIONS,
    SETTLEMENT_CSV,
    STATEMENTS_CSV,
    make_ledger,
    read_csv,
    run,
)


def setup(tmp_path: Path) -> tuple[Path, Path]:
    ops = tmp_path / "operators.toml"
    ops.write_text(OPERATORS_TOML)
    return make_ledger(tmp_path / "l.duckdb", GRANTS, REJECTIONS), ops


def test_statements_by_hand(tmp_path: Path) -> None:
    led, ops = setup(tmp_path)
    r = run("statements", "--ledger", str(led), "--out", str(tmp_path / "st"),
            "--operators", str(ops))
    assert r.returncode == 0, r.stderr
    assert read_csv(tmp_path / "st" / "statements.csv") == STATEMENTS_CSV
    parquet = pq.read_table(tmp_path / "st" / "statements.parquet")
    assert parquet.column_names == STATEMENTS_CSV.splitlines()[0].split(",")
    assert parquet["net_points"].to_pylist() == [5000, -750, 1000, 2500, 600, -500]
    control = orjson.loads((tmp_path / "st" / "statements_control.json").read_bytes())
    assert control == {"rows": 6, "grants": 6, "points_granted": 9100, "clawbacks": 2,
                       "points_clawed_back": 1250, "net_points": 7850, "ledger_grants": 9,
                       "ledger_points": 7850, "ties_out": True}
    assert "ties out" in r.stdout
    assert read_csv(tmp_path / "st" / "statements_control.csv").splitlines()[1] == \
        "6,6,9100,2,1250,7850,9,7850,true"


def test_statements_need_every_ledger_operator_in_the_registry(tmp_path: Path) -> None:
    led, _ = setup(tmp_path)
    r = run("statements", "--ledger", str(led), "--out", str(tmp_path / "st"))
    assert r.returncode == 2 and "'opa'" in r.stderr and "operators.toml" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "st").exists()


def test_settlement_by_hand(tmp_path: Path) -> None:
    led, ops = setup(tmp_path)
    adv = tmp_path / "advances.csv"
    adv.write_text(ADVANCES_CSV)
    r = run("settlement", "--ledger", str(led), "--advances", str(adv), "--out",
            str(tmp_path / "se"), "--operators", str(ops))
    assert r.returncode == 0, r.stderr
    assert read_csv(tmp_path / "se" / "settlement.csv") == SETTLEMENT_CSV
    assert pq.read_table(tmp_path / "se" / "settlement.parquet").num_rows == 4


def test_empty_ledger(tmp_path: Path) -> None:
    ops = tmp_path / "operators.toml"
    ops.write_text(OPERATORS_TOML)
    led = make_ledger(tmp_path / "l.duckdb", [])
    r = run("statements", "--ledger", str(led), "--out", str(tmp_path / "st"),
            "--operators", str(ops))
    assert r.returncode == 0, r.stderr
    assert read_csv(tmp_path / "st" / "statements.csv") == STATEMENTS_CSV.splitlines()[0] + "\n"
