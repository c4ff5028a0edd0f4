"""``ledger load --from``: rows only ever added, copies skipped, conflicts refused."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.finance import ledger
from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA
from tests.finance.example import GRANTS, REJECTIONS, run


def write_outputs(d: Path, grants: list[dict], rejections: list[dict]) -> Path:  # type: ignore[type-arg]
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(grants, schema=GRANT_SCHEMA), d / "grants.parquet")
    pq.write_table(pa.Table.from_pylist(rejections, schema=REJECTION_SCHEMA),
                   d / "rejections.parquet")
    return d


def contents(path: Path) -> dict[str, list[dict]]:  # type: ignore[type-arg]
    con = ledger.connect(path)
    try:
        return {k: ledger.read_table(con, k).to_pylist() for k in ledger.KINDS}
    finally:
        con.close()


def test_load_twice_changes_nothing(tmp_path: Path) -> None:
    out = write_outputs(tmp_path / "out", GRANTS, REJECTIONS)
    led = tmp_path / "l.duckdb"
    r = run("load", "--ledger", str(led), "--from", str(out))
    assert r.returncode == 0, r.stderr
    assert "added 9 grants and 1 rejections" in r.stdout
    first = contents(led)
    r = run("load", "--ledger", str(led), "--from", str(out))
    assert r.returncode == 0 and "added 0 grants and 0 rejections; 10 identical" in r.stdout
    assert contents(led) == first
    assert sorted(g["grant_id"] for g in first["grant"]) == sorted(g["grant_id"] for g in GRANTS)


def test_conflicts_are_reported_and_never_written(tmp_path: Path) -> None:
    led = tmp_path / "l.duckdb"
    run("load", "--ledger", str(led), "--from", str(write_outputs(tmp_path / "a", GRANTS[:4],
                                                                   [])))
    changed = dict(GRANTS[1], points=1)
    # a conflicting copy of a ledger row, a new row, and within the file a repeated new row
    # (identical: one copy kept) and a repeated key with other content (first copy wins)
    rows = [changed, GRANTS[5], GRANTS[5], GRANTS[6], dict(GRANTS[6], amount=1)]
    r = run("load", "--ledger", str(led), "--from", str(write_outputs(tmp_path / "b", rows, [])))
    assert r.returncode == 1
    assert "added 2 grants and 0 rejections; 1 identical copies skipped; 2 conflicting" \
        in r.stdout
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 2
    assert any(GRANTS[1]["grant_id"] in e and "points" in e and "the ledger" in e
               for e in errors)
    assert any(GRANTS[6]["grant_id"] in e and "amount" in e and "the same input" in e
               for e in errors)
    got = {g["grant_id"]: g for g in contents(led)["grant"]}
    assert len(got) == 6
    assert got[GRANTS[1]["grant_id"]]["points"] == GRANTS[1]["points"]
    assert got[GRANTS[6]["grant_id"]]["amount"] == GRANTS[6]["amount"]


def test_wrong_parquet_file_writes_nothing(tmp_path: Path) -> None:
    out = write_outputs(tmp_path / "out", GRANTS, REJECTIONS)
    pq.write_table(pa.table({"grant_id": ["x"]}), out / "grants.parquet")
    led = tmp_path / "l.duckdb"
    r = run("load", "--ledger", str(led), "--from", str(out))
    assert r.returncode == 2 and "missing column campaign" in r.stderr
    assert not led.exists()
