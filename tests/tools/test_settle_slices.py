"""``mynapoint settle`` beyond memory: an input decided in slices of people spilled to
disk (``--slice-rows``) writes the same files, byte for byte, as one decided whole."""

from __future__ import annotations

import gc
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.cli import main
from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.io.readers import Sources
from engine.rules.strings import kafka_partitions
from engine.rules.validate import Validated, concat_validated
from engine.tools.generate import generate_tables, parquet_view, write_jsonl
from engine.tools.settle import _validated_pieces
from engine.tools.slices import Spill
from tests.builders import enr, refund, txn, write_lines
from tests.poison_records import enrollment_poison, json_poison

OUTPUTS = ("grants.parquet", "rejections.parquet", "summary.json")


def _settle(enrollments: Path, transactions: Path, out: Path, *extra: str) -> int:
    return main(["settle", "--enrollments", str(enrollments), "--transactions",
                 str(transactions), "--out", str(out), "--quiet", *extra])


def _same_files(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module", params=[5, 11])
def campaign(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A messy generated campaign (waiting refunds, duplicates, every rejection the
    generator makes) as JSON Lines and as Parquet in small row groups."""
    d = tmp_path_factory.mktemp(f"slices-{request.param}")
    e, t = generate_tables(300, 4000, seed=request.param)
    write_jsonl(e, d / "enrollments.jsonl")
    write_jsonl(t, d / "transactions.jsonl")
    pq.write_table(parquet_view(e), d / "enrollments.parquet", row_group_size=70)
    pq.write_table(parquet_view(t), d / "transactions.parquet", row_group_size=333)
    return d


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_slices_of_people_write_the_files_of_the_whole_run(campaign: Path, tmp_path: Path,
                                                           ext: str) -> None:
    e, t = campaign / f"enrollments.{ext}", campaign / f"transactions.{ext}"
    assert _settle(e, t, tmp_path / "whole") == 0
    assert _settle(e, t, tmp_path / "sliced", "--slice-rows", "700") == 0   # 6 slices
    _same_files(tmp_path / "whole", tmp_path / "sliced")
    # nothing spilled is left behind
    assert sorted(p.name for p in (tmp_path / "sliced").iterdir()) == sorted(OUTPUTS)
    assert pq.read_table(tmp_path / "whole" / "grants.parquet").num_rows > 1000


def test_slices_within_a_partition_write_that_partition_s_files(campaign: Path,
                                                               tmp_path: Path) -> None:
    e, t = campaign / "enrollments.parquet", campaign / "transactions.parquet"
    part = ("--partitions", "3", "--partition", "1")
    assert _settle(e, t, tmp_path / "whole", *part) == 0
    assert _settle(e, t, tmp_path / "sliced", *part, "--slice-rows", "300") == 0
    _same_files(tmp_path / "whole", tmp_path / "sliced")
    summary = json.loads((tmp_path / "sliced" / "summary.json").read_text())
    assert summary["partition"] == {"index": 1, "count": 3}
    assert 0 < summary["records_in"]["transactions"] < 4000


def _keys_in_different_slices(n: int) -> tuple[str, str]:
    candidates = [f"KEY{i:05d}" for i in range(50)]
    parts = kafka_partitions(pa.array(candidates), n).tolist()
    a = candidates[0]
    b = next(k for k, p in zip(candidates, parts, strict=True) if p != parts[0])
    return a, b


def test_a_release_during_an_arrival_that_waits_keeps_the_whole_run_order(
        tmp_path: Path) -> None:
    # A refund (line 4) whose own original never comes releases an earlier refund
    # waiting on its txn_id (line 2) and then waits itself: line 2 is decided during
    # line 4's arrival, after line 3 of another person in another slice.
    a, b = _keys_in_different_slices(5)
    first = refund({"txn_id": "k", "mykey_id": a, "operator_id": "paypay"}, 100,
                   txn_id="r1")
    second = refund({"txn_id": "z", "mykey_id": a, "operator_id": "paypay"}, 100,
                    txn_id="k")
    stranger = [txn(mykey=b) for _ in range(3)]
    e = write_lines(tmp_path / "e.jsonl", [orjson.dumps(enr(a))])
    t = write_lines(tmp_path / "t.jsonl", [orjson.dumps(r) for r in (
        stranger[0], first, stranger[1], second, stranger[2])])
    assert _settle(e, t, tmp_path / "whole") == 0
    assert _settle(e, t, tmp_path / "sliced", "--slice-rows", "1") == 0   # 5 slices
    _same_files(tmp_path / "whole", tmp_path / "sliced")
    rej = pq.read_table(tmp_path / "whole" / "rejections.parquet").to_pylist()
    assert [(r["source"], r["reason"]) for r in rej] == [
        ("t.jsonl:1", "NOT_ENROLLED"), ("t.jsonl:3", "NOT_ENROLLED"),
        ("t.jsonl:2", "ORIGINAL_NOT_FOUND"), ("t.jsonl:5", "NOT_ENROLLED"),
        ("t.jsonl:4", "ORIGINAL_NOT_FOUND")]


def test_an_unreadable_input_in_a_sliced_run_exits_2_and_writes_nothing(
        campaign: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    out = tmp_path / "out"
    assert main(["settle", "--enrollments", str(campaign / "enrollments.parquet"),
                 "--transactions", str(campaign / "transactions.parquet"),
                 "--transactions", str(bad), "--out", str(out), "--quiet",
                 "--slice-rows", "700"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err
    assert not out.exists()


def test_a_slice_read_back_through_its_map_outlives_its_file(campaign: Path,
                                                             tmp_path: Path) -> None:
    """A slice is read back through a memory map and its file unlinked once the slice
    is decided (DECISIONS 123): what was read must not depend on the file."""
    pieces = list(_validated_pieces([(None, campaign / "transactions.parquet")],
                                    "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, None))
    spill, first = _spilled(pieces, tmp_path, 2)
    got, got_src, got_index = spill.read("transaction", 1)
    spill.path("transaction", 1).unlink()
    gc.collect()
    assert len(pieces) > 1 and got_index.tolist() == list(range(1, first, 2))
    want = concat_validated([v for v, _ in pieces], "transaction").take(got_index)
    _same_validated(got, want)
    # one input file: a record's source is its row, counted from 1
    assert got_src.position.tolist() == (got_index + 1).tolist()


def _spilled(pieces: list[tuple[Validated, Sources]], directory: Path, count: int
             ) -> tuple[Spill, int]:
    """``pieces`` spilled into ``count`` slices, record ``i`` of the whole input into
    slice ``i % count``; and how many records there were."""
    spill = Spill(directory, count)
    first = 0
    for v, src in pieces:
        index = np.arange(first, first + v.n, dtype=np.int64)
        spill.add((index % count).astype(np.int64), v, src, index)
        first += v.n
    spill.close()
    return spill, first


def _same_validated(got: Validated, want: Validated) -> None:
    """Every column alike, with its type: the spill packs some and derives others."""
    assert (got.n, got.record_type) == (want.n, want.record_type)
    for f in fields(Validated):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, pa.Array):
            assert a.equals(b), f.name
        elif isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and a.tolist() == b.tolist(), f.name


@pytest.mark.parametrize("record_type", ["enrollment", "transaction"])
def test_a_spilled_slice_reads_back_every_column_of_what_was_spilled(
        record_type: str, tmp_path: Path) -> None:
    """Poison and clean records alike: every rejection's columns, the checks' flags (set
    for some records, clear for others), and the JST day, which the spill does not keep
    but makes again from the record's time."""
    if record_type == "enrollment":
        poison = enrollment_poison("S")
        times = ["2020-07-01T10:00:00+09:00", "2020-09-02T23:30:00+09:00",
                 "2021-10-05T10:00:00+09:00", "2020-12-31T15:30:00Z"]
        clean = [enr(f"P{i:07d}", "paypay", times[i % 4]) for i in range(40)]
    else:
        poison = json_poison("S")
        times = ["2020-08-31T14:59:59Z", "2020-09-13T15:00:00Z", "2021-09-30T14:59:59Z"]
        clean = [txn(mykey=f"P{i % 7:07d}", at=times[i % 3], txn_id=f"T{i}",
                     **({"received_at": "2021-11-02T00:00:00Z"} if i % 5 == 0 else {}))
                 for i in range(40)]
    path = write_lines(tmp_path / f"{record_type}s.jsonl",
                       [p.text for p in poison if p.text] + [orjson.dumps(r) for r in clean])
    pieces = list(_validated_pieces([(None, path)], record_type, DEFAULT_CAMPAIGN,
                                    DEFAULT_REGISTRY, None))
    whole = concat_validated([v for v, _ in pieces], record_type)
    assert whole.reason.any() and not whole.reason.all()
    for name in ("outside", "too_late"):
        assert getattr(whole, name).any() and not getattr(whole, name).all(), name
    (tmp_path / "spill").mkdir()
    spill, _ = _spilled(pieces, tmp_path / "spill", 3)
    for k in range(3):
        got, _, got_index = spill.read(record_type, k)
        _same_validated(got, whole.take(got_index))
