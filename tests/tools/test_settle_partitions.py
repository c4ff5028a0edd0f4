"""``mynapoint settle --partitions N --partition K``: N slices that together are the
whole run, record for record, sliced like the input topics (Kafka's murmur2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from aiokafka.partitioner import murmur2

from engine.cli import main
from tests.builders import write_campaign

N = 3
PII = "123456789018"  # a valid Individual Number (check digit 8)
TIMES = {"occurred_at": "2020-10-01T03:00:00Z", "received_at": "2020-10-01T03:05:00Z"}
# records whose mykey_id no partitioner can place on a person (docs/DECISIONS.md: slice 0)
KEYLESS = [
    {"txn_id": "nokey-null", "operator_id": "paypay", "mykey_id": None, "kind": "purchase",
     "amount": 100, **TIMES},
    {"txn_id": "nokey-short", "operator_id": "paypay", "mykey_id": "AB12", "kind": "purchase",
     "amount": 100, **TIMES},
    {"txn_id": "nokey-symbol", "operator_id": "paypay", "mykey_id": "AB12cd3!",
     "kind": "purchase", "amount": 100, **TIMES},
    {"txn_id": "nokey-pii", "operator_id": "paypay", "mykey_id": PII, "kind": "purchase",
     "amount": 100, **TIMES},
    {"txn_id": "nokey-number", "operator_id": "paypay", "mykey_id": 12345678,
     "kind": "purchase", "amount": 100, **TIMES},
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = write_campaign(tmp_path_factory.mktemp("slices"), 400, 4000, 17,
                       formats=("jsonl", "parquet"))
    with open(d / "transactions.jsonl", "ab") as f:
        for r in KEYLESS:
            f.write(orjson.dumps(r) + b"\n")
    return d


def _settle(d: Path, ext: str, out: Path, *extra: str) -> int:
    return main(["settle", "--enrollments", str(d / f"enrollments.{ext}"),
                 "--transactions", str(d / f"transactions.{ext}"), "--out", str(out),
                 "--quiet", *extra])


def _rows(out: Path, name: str) -> list[dict[str, Any]]:
    return pq.read_table(out / f"{name}.parquet").to_pylist()


def _key(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_slices_together_are_the_whole_run(inputs: Path, tmp_path: Path, ext: str) -> None:
    assert _settle(inputs, ext, tmp_path / "whole") == 0
    slices = []
    for k in range(N):
        assert _settle(inputs, ext, tmp_path / f"s{k}", "--partitions", str(N),
                       "--partition", str(k)) == 0
        slices.append(tmp_path / f"s{k}")
    for name in ("grants", "rejections"):
        whole = _rows(tmp_path / "whole", name)
        parts = [_rows(s, name) for s in slices]
        assert all(parts), f"every slice has {name}"
        # record for record: ids, points, cumulative points, reasons, details, sources
        union = sorted(_key(r) for p in parts for r in p)
        assert union == sorted(_key(r) for r in whole)
        sources = [r["source"] for p in parts for r in p]
        assert len(sources) == len(set(sources))          # no record in two slices
    for k, s in enumerate(slices):
        people = {r["mykey_id"] for r in _rows(s, "grants")}
        assert all((murmur2(p.encode()) & 0x7FFFFFFF) % N == k for p in people)
        summary = json.loads((s / "summary.json").read_text())
        assert summary["partition"] == {"index": k, "count": N}
    whole_summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert "partition" not in whole_summary
    assert sum(json.loads((s / "summary.json").read_text())["points_granted"]
               for s in slices) == whole_summary["points_granted"]


def test_records_without_a_valid_mykey_id_go_to_slice_0(inputs: Path, tmp_path: Path) -> None:
    n_lines = len((inputs / "transactions.jsonl").read_bytes().splitlines())
    keyless = {f"transactions.jsonl:{n_lines - i}" for i in range(len(KEYLESS))}
    found: dict[int, set[str]] = {}
    for k in range(N):
        out = tmp_path / f"s{k}"
        assert _settle(inputs, "jsonl", out, "--partitions", str(N), "--partition", str(k)) == 0
        rej = pq.read_table(out / "rejections.parquet").to_pylist()
        found[k] = {r["source"] for r in rej} & keyless
        assert PII not in {v for r in rej for v in r.values()}
    # the Individual Number's record too (rejected, its mykey_id redacted)
    assert found == {0: keyless, 1: set(), 2: set()}


@pytest.mark.parametrize(("extra", "says"), [
    (["--partition", "1"], "--partition needs --partitions"),
    (["--partitions", "3", "--partition", "3"], "between 0 and 2"),
    (["--partitions", "0", "--partition", "0"], "at least 1"),
    (["--partitions", "2", "--partition", "-1"], "between 0 and 1"),
])
def test_bad_slices_exit_2(inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           extra: list[str], says: str) -> None:
    assert _settle(inputs, "jsonl", tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
