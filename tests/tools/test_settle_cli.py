"""``mynapoint settle`` as a user runs it: outputs, contracts, errors, privacy."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import jsonschema
import orjson
import pyarrow.parquet as pq
import pytest

from engine.cli import main
from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA
from engine.rules.model import ENGINE_LIMIT_REASONS, ENROLLMENT_REASONS, TRANSACTION_REASONS
from engine.streams.codec_out import grant_to_json, rejection_to_json
from engine.tools import settle
from engine.tools.generate import generate_tables, write_jsonl
from tests.builders import calling_threads, write_campaign
from tests.poison_records import (
    ENROLLMENT,
    GRANT,
    PARQUET_CANNOT_HOLD,
    Poison,
    arrow_poison,
    enrollment_poison,
    json_poison,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
PII = "123456789018"  # a valid Individual Number (check digit 8)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = write_campaign(tmp_path_factory.mktemp("settle-cli"), 300, 3000, 5,
                       formats=("jsonl", "parquet"))
    # an Individual Number in an extra field and in a known field, on top of the
    # generator's own cases
    with open(d / "transactions.jsonl", "ab") as f:
        f.write(orjson.dumps({"txn_id": "pii-1", "operator_id": "paypay", "mykey_id": PII[:8],
                              "kind": "purchase", "amount": 100, "note": PII,
                              "occurred_at": "2020-10-01T00:00:00Z"}) + b"\n")
        f.write(orjson.dumps({"txn_id": PII, "operator_id": "paypay", "mykey_id": "AbCd1234",
                              "kind": "purchase", "amount": 100,
                              "occurred_at": "2020-10-01T00:00:00Z"}) + b"\n")
    return d


def _settle(d: Path, out: Path, ext: str = "jsonl", *extra: str) -> int:
    return main(["settle", "--enrollments", str(d / f"enrollments.{ext}"),
                 "--transactions", str(d / f"transactions.{ext}"), "--out", str(out), *extra])


def test_outputs_have_the_contract_columns_and_every_reason_occurs(
        campaign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # plus one file of each kind from paypay, holding a record that claims aupay
    forged = {"mykey_id": "Forged01", "operator_id": "aupay",
              "applied_at": "2020-09-01T10:00:00+09:00"}
    (tmp_path / "pp-e.jsonl").write_bytes(orjson.dumps(forged) + b"\n")
    (tmp_path / "pp-t.jsonl").write_bytes(orjson.dumps(
        {"txn_id": "f1", "operator_id": "aupay", "mykey_id": "Forged01", "kind": "purchase",
         "amount": 100, "occurred_at": "2020-10-01T00:00:00Z"}) + b"\n")
    assert _settle(campaign, tmp_path / "out", "jsonl",
                   "--enrollments", f"paypay={tmp_path / 'pp-e.jsonl'}",
                   "--transactions", f"paypay={tmp_path / 'pp-t.jsonl'}") == 0
    grants = pq.read_table(tmp_path / "out" / "grants.parquet")
    rejections = pq.read_table(tmp_path / "out" / "rejections.parquet")
    assert grants.schema.equals(GRANT_SCHEMA)
    assert rejections.schema.equals(REJECTION_SCHEMA)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["records_in"]["transactions"] == 3003
    assert (summary["accepted"]["transactions"] + summary["rejected"]["transaction"]
            == 3003)
    mismatched = [r for r in rejections.to_pylist() if r["reason"] == "OPERATOR_MISMATCH"]
    assert [(r["source"], r["operator_id"]) for r in mismatched] == [
        ("pp-e.jsonl:1", "aupay"), ("pp-t.jsonl:1", "aupay")]
    assert grants.num_rows == summary["accepted"]["transactions"]
    seen = {(r["record_type"], r["reason"]) for r in rejections.to_pylist()}
    expected = ({("enrollment", r.name) for r in ENROLLMENT_REASONS}
                | {("transaction", r.name) for r in TRANSACTION_REASONS
                   if r not in ENGINE_LIMIT_REASONS})
    assert expected <= seen, expected - seen
    printed = capsys.readouterr().out
    assert "Settlement summary" in printed and "Rejections by reason" in printed
    # sources point at real lines
    lines = (campaign / "transactions.jsonl").read_bytes().split(b"\n")
    for g in grants.slice(0, 50).to_pylist():
        name, line = g["source"].rsplit(":", 1)
        assert name == "transactions.jsonl"
        assert orjson.loads(lines[int(line) - 1])["txn_id"] == g["txn_id"]


def test_an_input_tagged_with_an_unknown_operator_exits_2(
        campaign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _settle(campaign, tmp_path / "out", "jsonl",
                   "--transactions", f"nopay={campaign / 'transactions.jsonl'}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nopay'" in err and "not a registered operator" in err
    assert not (tmp_path / "out").exists()


def test_outputs_conform_to_the_published_json_schemas(campaign: Path, tmp_path: Path) -> None:
    assert _settle(campaign, tmp_path / "out", "jsonl", "--quiet") == 0
    for name, to_json, table in (
            ("grant", grant_to_json, "grants"), ("rejection", rejection_to_json, "rejections")):
        schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
        validator = jsonschema.Draft202012Validator(schema)
        rows = pq.read_table(tmp_path / "out" / f"{table}.parquet").to_pylist()
        assert rows
        for row in rows:
            if "occurred_at" in row:
                row["occurred_at"] = int(row["occurred_at"].timestamp() * 1_000_000)
            validator.validate(orjson.loads(to_json(row)))


def test_generated_records_conform_to_the_input_schemas(campaign: Path) -> None:
    """Clean generated records are valid by the published contract; the rejected ones
    the engine refuses for a format reason are refused by the schema too."""
    enr, txn = generate_tables(100, 1000, seed=9, clean=True)
    for name, table in (("enrollment", enr), ("transaction", txn)):
        v = jsonschema.Draft202012Validator(
            json.loads((SCHEMAS / f"{name}.schema.json").read_text()))
        tmp = campaign / f"clean-{name}.jsonl"
        write_jsonl(table, tmp)
        for line in tmp.read_bytes().splitlines():
            v.validate(orjson.loads(line))


def test_jsonl_and_parquet_inputs_decide_alike(campaign: Path, tmp_path: Path) -> None:
    """Parquet holds the typed rows of the same campaign: every one of them gets the
    same outcome as in the JSON Lines file."""
    assert _settle(campaign, tmp_path / "j", "jsonl", "--quiet") == 0
    assert _settle(campaign, tmp_path / "p", "parquet", "--quiet") == 0
    pg = {g["grant_id"]: g for g in pq.read_table(tmp_path / "p" / "grants.parquet").to_pylist()}
    jg = {g["grant_id"]: g for g in pq.read_table(tmp_path / "j" / "grants.parquet").to_pylist()}
    assert set(pg) <= set(jg) and len(pg) > 0.9 * len(jg)
    same = [k for k in pg if (pg[k]["points"], pg[k]["cumulative_points"])
            == (jg[k]["points"], jg[k]["cumulative_points"])]
    assert len(same) > 0.9 * len(pg)


def test_a_parquet_directory_of_parts_is_one_input(campaign: Path, tmp_path: Path) -> None:
    d = tmp_path / "in"
    parts = d / "transactions.parquet"
    parts.mkdir(parents=True)
    table = pq.read_table(campaign / "transactions.parquet")
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), parts / "part-0.parquet")
    pq.write_table(table.slice(half), parts / "part-1.parquet")
    (d / "enrollments.parquet").write_bytes((campaign / "enrollments.parquet").read_bytes())
    assert _settle(d, tmp_path / "dir", "parquet", "--quiet") == 0
    assert _settle(campaign, tmp_path / "file", "parquet", "--quiet") == 0
    for name in ("grants.parquet", "rejections.parquet"):
        assert (pq.read_table(tmp_path / "dir" / name).num_rows
                == pq.read_table(tmp_path / "file" / name).num_rows > 0)


def test_individual_number_appears_in_no_output_and_nothing_printed(
        campaign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _settle(campaign, tmp_path / "out") == 0
    printed = capsys.readouterr()
    assert PII not in printed.out + printed.err
    for f in (tmp_path / "out").iterdir():
        assert PII.encode() not in f.read_bytes(), f.name
    rej = pq.read_table(tmp_path / "out" / "rejections.parquet").to_pylist()
    pii = [r for r in rej if r["reason"] == "PERSONAL_NUMBER_FORBIDDEN"]
    assert len(pii) >= 2
    assert all(r["mykey_id"] is None and r["txn_id"] is None for r in pii)
    assert any("'note'" in r["detail"] for r in pii)


@pytest.mark.parametrize("content,key", [
    ('window_start = 2021-01-01T00:00:00+09:00\nwindow_end = 2020-01-01T00:00:00+09:00\n',
     "window_end"),
    ('rounding = "nearest"\n', "rounding"),
    ('park_timeout = "1 day"\n', "park_timeout"),
    ('rate_percnt = 25\n', "rate_percnt"),
])
def test_bad_campaign_exits_2_naming_file_and_key_and_writes_nothing(
        campaign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
        key: str) -> None:
    bad = tmp_path / "campaign.toml"
    bad.write_text(content)
    out = tmp_path / "out"
    assert _settle(campaign, out, "jsonl", "--campaign", str(bad)) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and key in err
    assert not out.exists()


def test_bad_operator_registry_exits_2(campaign: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "operators.toml"
    bad.write_text('[[operators]]\nid = "x"\nname = "X"\nearns_on = ["cash"]\n'
                   'selection_opens = 2020-07-01\n')
    assert _settle(campaign, tmp_path / "out", "jsonl", "--operators", str(bad)) == 2
    err = capsys.readouterr().err
    assert "operators.toml" in err and "earns_on" in err


def test_unreadable_input_exits_2_and_keeps_previous_outputs(
        campaign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert _settle(campaign, out, "jsonl", "--quiet") == 0
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    rc = main(["settle", "--enrollments", str(campaign / "enrollments.jsonl"),
               "--transactions", str(tmp_path / "broken.parquet"), "--out", str(out)])
    assert rc == 2
    assert "broken.parquet" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    rc = main(["settle", "--enrollments", str(tmp_path / "missing.jsonl"),
               "--transactions", str(campaign / "transactions.jsonl"), "--out", str(out)])
    assert rc == 2
    assert "missing.jsonl" in capsys.readouterr().err
    # both unusable: the enrollments, read first, are the ones named
    rc = main(["settle", "--enrollments", str(tmp_path / "missing.jsonl"),
               "--transactions", str(tmp_path / "broken.parquet"), "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "missing.jsonl" in err and "broken.parquet" not in err
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before


def _outcomes(out: Path) -> dict[str, tuple[str, str | None]]:
    res: dict[str, tuple[str, str | None]] = {
        g["source"]: (GRANT, None) for g in pq.read_table(out / "grants.parquet").to_pylist()}
    for r in pq.read_table(out / "rejections.parquet").to_pylist():
        assert r["source"] not in res  # one outcome each
        res[r["source"]] = (r["reason"], r["detail"])
    return res


def _matches(p: Poison, got: tuple[str, str | None]) -> bool:
    reason, detail = got
    return reason == p.reason and (not p.detail or p.detail in (detail or "")) \
        and len(detail or "") <= 200 and PII not in (detail or "")


def test_poison_records_settle_with_their_rejections_and_exit_0(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "enrollments.jsonl").write_bytes(orjson.dumps(ENROLLMENT) + b"\n")
    catalogue = json_poison("cli")
    (d / "transactions.jsonl").write_bytes(b"\n".join(c.text for c in catalogue) + b"\n")
    assert _settle(d, tmp_path / "out", "jsonl", "--quiet") == 0
    got = _outcomes(tmp_path / "out")
    for i, c in enumerate(catalogue):
        assert _matches(c, got[f"transactions.jsonl:{i + 1}"]), (c.name, got)
    # Parquet: one file per Arrow poison (their column types differ)
    tables = [c for c in arrow_poison("cli") + catalogue
              if c.table is not None and c.name not in PARQUET_CANNOT_HOLD]
    for k, c in enumerate(tables):
        assert c.table is not None
        pq.write_table(c.table, d / "transactions.parquet")
        out = tmp_path / f"out-{k}"
        assert main(["settle", "--enrollments", str(d / "enrollments.jsonl"), "--transactions",
                     str(d / "transactions.parquet"), "--out", str(out), "--quiet"]) == 0
        got = _outcomes(out)
        assert len(got) == c.table.num_rows, c.name  # (an accepted enrollment has none)
        for i in range(c.table.num_rows):
            assert _matches(c, got[f"transactions.parquet:{i + 1}"]), (c.name, got)
    # enrollments: JSON Lines, and Parquet one file per table
    enrollments = enrollment_poison("cli")
    texts = [c for c in enrollments if c.text]
    (d / "enrollments.jsonl").write_bytes(b"\n".join(c.text for c in texts) + b"\n")
    (d / "transactions.jsonl").write_bytes(b"")
    assert _settle(d, tmp_path / "enr", "jsonl", "--quiet") == 0
    got = _outcomes(tmp_path / "enr")
    for i, c in enumerate(texts):
        assert _matches(c, got[f"enrollments.jsonl:{i + 1}"]), (c.name, got)
    for k, c in enumerate(c for c in enrollments
                          if c.table is not None and c.name not in PARQUET_CANNOT_HOLD):
        assert c.table is not None
        pq.write_table(c.table, d / "enrollments.parquet")
        out = tmp_path / f"enr-{k}"
        assert main(["settle", "--enrollments", str(d / "enrollments.parquet"),
                     "--transactions", str(d / "transactions.jsonl"), "--out", str(out),
                     "--quiet"]) == 0
        got = _outcomes(out)
        if c.reason == GRANT:  # an accepted enrollment has no outcome record
            assert got == {}, c.name
        else:
            assert _matches(c, got["enrollments.parquet:1"]), (c.name, got)
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err and printed.err == ""


def test_the_summary_is_tallied_beside_the_writes(
        campaign: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DECISIONS 135: only the summary file, written last, needs it, so it is tallied
    on a thread of its own while the outputs are written."""
    tallied = calling_threads(monkeypatch, settle, "summarize_arrays")
    assert _settle(campaign, tmp_path / "out", "parquet", "--quiet") == 0
    assert len(tallied) == 1 and tallied[0] != threading.get_ident()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["campaign"]
