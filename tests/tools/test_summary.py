"""The two summary paths (decision arrays for settle, output tables for collect)
must agree exactly, or finance would reconcile against two different numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, load_campaign
from engine.tools.generate import generate_tables, write_jsonl
from engine.tools.settle import settle_files
from engine.tools.summary import summarize


@pytest.mark.parametrize("cap", [5000, 0, 300])
def test_summary_from_arrays_equals_summary_from_tables(tmp_path: Path, cap: int) -> None:
    enr, txn = generate_tables(300, 3000, seed=3)
    write_jsonl(enr, tmp_path / "e.jsonl")
    write_jsonl(txn, tmp_path / "t.jsonl")
    (tmp_path / "c.toml").write_text(f"cap_points = {cap}\n")
    campaign = load_campaign(tmp_path / "c.toml") if cap != 5000 else DEFAULT_CAMPAIGN
    r = settle_files(tmp_path / "e.jsonl", tmp_path / "t.jsonl", campaign, DEFAULT_REGISTRY)
    from_tables = summarize(r.grants, r.rejections, r.summary["records_in"],
                            campaign.cap_points, campaign.id)
    assert r.summary == from_tables
    assert r.summary["rejected"]["transaction"] == r.rejections.filter(
        r.rejections["record_type"].to_numpy(zero_copy_only=False) == "transaction").num_rows
    assert r.summary["points_granted"] == sum(r.grants["points"].to_pylist())


def test_summary_of_outputs_alone_has_no_negative_counts(tmp_path: Path) -> None:
    """``collect`` knows outputs only: accepted transactions are the grants, and what
    it cannot know (accepted enrollments leave no output) is None, never negative."""
    enr, txn = generate_tables(200, 2000, seed=5)
    write_jsonl(enr, tmp_path / "e.jsonl")
    write_jsonl(txn, tmp_path / "t.jsonl")
    r = settle_files(tmp_path / "e.jsonl", tmp_path / "t.jsonl", DEFAULT_CAMPAIGN,
                     DEFAULT_REGISTRY)
    assert r.rejections.num_rows > 0
    s = summarize(r.grants, r.rejections, None, 5000, "c")
    assert s["accepted"]["transactions"] == r.grants.num_rows == \
        r.summary["accepted"]["transactions"]
    assert s["accepted"]["enrollments"] is None and s["people_enrolled"] is None
    assert s["rejected"] == r.summary["rejected"]
