"""``ledger load --from``: rows only ever added, copies skipped, conflicts refused; the
derived tables (grant_months, grant_people) always equal a recomputation from the rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.finance import ledger
from engine.finance.statements import statements
from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA
from tests.finance import reference
from tests.finance.example import (
    GRANTS,
    OPERATORS_TOML,
    REJECTIONS,
    STATEMENTS_CSV,
    assert_derived_consistent,
    fill,
    grant,
    memory_ledger,
    read_csv,
    run,
)
from tests.finance.test_properties import LAGS, REGISTRY

# either side of JST month ends, where the UTC and JST months differ
INSTANTS = [datetime(2020, 9, 30, 14, 59, 59, tzinfo=UTC), datetime(2020, 9, 30, 15, tzinfo=UTC),
            datetime(2020, 12, 31, 15, tzinfo=UTC) + timedelta(days=3),
            datetime(2021, 1, 31, 14, tzinfo=UTC)]


def operators_file(d: Path) -> Path:
    f = d / "operators.toml"
    f.write_text(OPERATORS_TOML)
    return f


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


batches = st.lists(st.lists(
    st.tuples(st.sampled_from(["opa", "opb", "opc"]), st.sampled_from(["k1", "k2", "k3"]),
              st.sampled_from(["t1", "t2", "t3", "t4"]),
              st.sampled_from(["charge", "purchase", "refund"]), st.integers(1, 9000),
              st.sampled_from([0, 0, 1, 250, -1, -250]), st.sampled_from(INSTANTS)),
    max_size=12), min_size=1, max_size=5)


@settings(max_examples=80, deadline=None)
@given(batches, st.lists(st.booleans(), min_size=5, max_size=5))
def test_derived_tables_equal_a_recomputation_from_the_rows(
        rows: list[list[tuple[str, str, str, str, int, int, datetime]]],
        reload: list[bool]) -> None:
    """grant_months and grant_people after any sequence of loads (repeats within a
    load, identical copies, conflicting copies of the same grant_id, a load repeated)
    equal their recomputation from the grants in the ledger; so do the statements."""
    con = memory_ledger([])
    try:
        for i, batch in enumerate(rows):
            grants = [grant(*r[:6], 0, r[6].isoformat()) for r in batch]
            fill(con, grants)
            if reload[i]:
                fill(con, grants)
            assert_derived_consistent(con)
        in_ledger = ledger.read_table(con, "grant").to_pylist()
        got = statements(con, REGISTRY, "ops")
    finally:
        con.close()
    assert [tuple(r.values()) for r in got.table.to_pylist()] == \
        reference.statements(in_ledger, LAGS)


def make_version_1(path: Path) -> None:
    """What a ledger written before the derived tables looked like."""
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE grant_months")
        con.execute("DROP TABLE grant_people")
        con.execute("UPDATE ledger_meta SET value = '1' WHERE key = 'version'")


def test_version_1_ledger_is_upgraded_by_a_load(tmp_path: Path) -> None:
    out = write_outputs(tmp_path / "out", GRANTS, REJECTIONS)
    led = tmp_path / "l.duckdb"
    assert run("load", "--ledger", str(led), "--from", str(out)).returncode == 0
    st_new = run("statements", "--ledger", str(led), "--out", str(tmp_path / "st"),
                 "--operators", str(operators_file(tmp_path)))
    assert st_new.returncode == 0, st_new.stderr
    make_version_1(led)
    # read-only commands cannot upgrade it: they say how, in one line
    r = run("statements", "--ledger", str(led), "--out", str(tmp_path / "st1"),
            "--operators", str(operators_file(tmp_path)))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "version 1" in r.stderr and "ledger load" in r.stderr
    assert not (tmp_path / "st1").exists()
    # a load (here of outputs already in it) upgrades it in place
    r = run("load", "--ledger", str(led), "--from", str(out))
    assert r.returncode == 0 and "added 0 grants" in r.stdout, r.stderr
    con = ledger.connect(led)
    try:
        assert con.execute("SELECT value FROM ledger_meta WHERE key = 'version'").fetchone() \
            == (ledger.LEDGER_VERSION,)
        assert_derived_consistent(con)
    finally:
        con.close()
    r = run("statements", "--ledger", str(led), "--out", str(tmp_path / "st2"),
            "--operators", str(operators_file(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert read_csv(tmp_path / "st2" / "statements.csv") == STATEMENTS_CSV
