"""Every bad input: exit 2, one line naming the file (and line) and the problem,
nothing written."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA
from tests.finance.example import ADVANCES_CSV, GRANTS, OPERATORS_TOML, make_ledger, run

CLAIM_HEAD = "operator_id,txn_id,mykey_id,points\n"


def assert_refused(r, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize(("text", "needles"), [
    ("operator_id,txn_id,points\nopa,t1,5\n", ["line 1", "missing column mykey_id"]),
    (CLAIM_HEAD + "opa,t1,k1,1.5\n", ["line 2", "points is not an integer"]),
    (CLAIM_HEAD + "opa,t1,k1,1000\nopa,t2,k1,ten\n", ["line 3", "points is not an integer"]),
    (CLAIM_HEAD + "opa,t1,k1,1000\nopa,t2,k1\n", ["line 3", "3 fields, expected 4"]),
    (CLAIM_HEAD + "opa,t1,k1,1,9\n", ["line 2", "5 fields, expected 4"]),
    (CLAIM_HEAD + "opa,,k1,1\n", ["line 2", "txn_id is empty"]),
    (CLAIM_HEAD + "opa,t1,k1,1\n\nopa,t2,k1,1\n", ["line 3", "is empty"]),
    (CLAIM_HEAD + "opa,t1,k1,99999999999999999999\n", ["line 2", "not an integer"]),
    ("operator_id,txn_id,mykey_id,points,extra\n", ["line 1", "unexpected column 'extra'"]),
    (CLAIM_HEAD + 'opa,"t1\n', ["line 2"]),
])
def test_bad_claim(tmp_path: Path, text: str, needles: list[str]) -> None:
    led = make_ledger(tmp_path / "l.duckdb", GRANTS)
    claim = tmp_path / "claim.csv"
    claim.write_text(text)
    r = run("reconcile", "--ledger", str(led), "--operator", "opa", "--claim", str(claim),
            "--out", str(tmp_path / "rc"))
    assert_refused(r, "claim.csv", *needles)
    assert not (tmp_path / "rc").exists()


def test_claim_not_utf8(tmp_path: Path) -> None:
    led = make_ledger(tmp_path / "l.duckdb", GRANTS)
    claim = tmp_path / "claim.csv"
    claim.write_bytes(CLAIM_HEAD.encode() + "opa,t1,キー,1\n".encode("shift_jis"))
    r = run("reconcile", "--ledger", str(led), "--operator", "opa", "--claim", str(claim),
            "--out", str(tmp_path / "rc"))
    assert_refused(r, "claim.csv", "line 2", "not UTF-8")


@pytest.mark.parametrize(("text", "needles"), [
    (ADVANCES_CSV + "ope,2021-01,5\n", ["line 6", "operator 'ope' is not in"]),
    (ADVANCES_CSV + "opa,2021-13,5\n", ["line 6", "payout_month is not a month"]),
    (ADVANCES_CSV + "opa,2021-01,5.5\n", ["line 6", "paid_points is not an integer"]),
    ("operator_id,paid_points\nopa,5\n", ["line 1", "missing column payout_month"]),
])
def test_bad_advances(tmp_path: Path, text: str, needles: list[str]) -> None:
    led = make_ledger(tmp_path / "l.duckdb", GRANTS)
    ops = tmp_path / "operators.toml"
    ops.write_text(OPERATORS_TOML)
    adv = tmp_path / "advances.csv"
    adv.write_text(text)
    r = run("settlement", "--ledger", str(led), "--advances", str(adv), "--out",
            str(tmp_path / "se"), "--operators", str(ops))
    assert_refused(r, "advances.csv", *needles)
    assert not (tmp_path / "se").exists()


def not_a_ledger(tmp_path: Path, what: str) -> Path:
    p = tmp_path / "x.duckdb"
    if what == "text":
        p.write_text("hello, I am not a database\n")
    elif what == "duckdb":
        with duckdb.connect(str(p)) as con:
            con.execute("CREATE TABLE t (a INTEGER)")
    elif what == "wrong-format":
        with duckdb.connect(str(p)) as con:
            con.execute("CREATE TABLE ledger_meta (key VARCHAR, value VARCHAR)")
            con.execute("INSERT INTO ledger_meta VALUES ('format', 'something-else')")
    return p


@pytest.mark.parametrize("what", ["text", "duckdb", "wrong-format", "missing"])
@pytest.mark.parametrize("command", ["statements", "report", "reconcile", "diff", "load"])
def test_not_a_ledger(tmp_path: Path, what: str, command: str) -> None:
    if what == "missing" and command == "load":
        return  # load creates a new ledger: covered by every load test
    p = not_a_ledger(tmp_path, what)
    claim = tmp_path / "claim.csv"
    claim.write_text(CLAIM_HEAD)
    good = make_ledger(tmp_path / "good.duckdb", GRANTS)
    extra = {"reconcile": ["--operator", "opa", "--claim", str(claim)],
             "diff": ["--against", str(good)],
             "load": ["--from", str(outputs(tmp_path / "out"))]}.get(command, [])
    out = ["--out", str(tmp_path / "o")] if command != "load" else []
    r = run(command, "--ledger", str(p), *out, *extra)
    assert_refused(r, str(p), "no such ledger file" if what == "missing" else "not a ledger")
    assert not (tmp_path / "o").exists()
    if command == "diff":  # the --against side is checked too
        r = run(command, "--ledger", str(good), "--against", str(p), *out)
        assert_refused(r, str(p))


def outputs(d: Path) -> Path:
    d.mkdir()
    pq.write_table(pa.Table.from_pylist(GRANTS, schema=GRANT_SCHEMA), d / "grants.parquet")
    pq.write_table(pa.Table.from_pylist([], schema=REJECTION_SCHEMA), d / "rejections.parquet")
    return d


def test_load_from_a_directory_without_outputs(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    r = run("load", "--ledger", str(tmp_path / "l.duckdb"), "--from", str(tmp_path / "out"))
    assert_refused(r, "grants.parquet", "no such file")
    (tmp_path / "out" / "grants.parquet").write_text("not parquet")
    (tmp_path / "out" / "rejections.parquet").write_text("not parquet")
    r = run("load", "--ledger", str(tmp_path / "l.duckdb"), "--from", str(tmp_path / "out"))
    assert_refused(r, "grants.parquet", "cannot read as Parquet")
    assert not (tmp_path / "l.duckdb").exists()


def test_bad_configuration(tmp_path: Path) -> None:
    led = make_ledger(tmp_path / "l.duckdb", GRANTS)
    ops = tmp_path / "operators.toml"
    ops.write_text(OPERATORS_TOML.replace('payout = "next_month"', 'payout = "weekly"'))
    r = run("statements", "--ledger", str(led), "--out", str(tmp_path / "st"), "--operators",
            str(ops))
    assert_refused(r, "operators.toml", "payout")
    assert not (tmp_path / "st").exists()


def test_ledger_in_use_by_a_writer(tmp_path: Path) -> None:
    import subprocess
    import sys

    led = make_ledger(tmp_path / "l.duckdb", GRANTS)
    writer = subprocess.Popen([sys.executable, "-c",
                               "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('open', flush=True); time.sleep(60)", str(led)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "open\n"
        r = subprocess.run([sys.executable, "-m", "engine.cli", "ledger", "statements",
                            "--ledger", str(led), "--out", str(tmp_path / "st")],
                           capture_output=True, text=True, timeout=120)
    finally:
        writer.kill()
        writer.wait()
    assert_refused(r, str(led), "in use by another process")
