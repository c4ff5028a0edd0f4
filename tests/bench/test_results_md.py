"""bench/results_md.py: one section of bench/RESULTS.md rewritten where it stands."""

from __future__ import annotations

from pathlib import Path

from bench.results_md import replace_section, write_section

DOC = """# Benchmark results

## Offline settle
old settle

## Streaming
old stream
### Notes (not generated)
written by hand

## State restore
restore
"""


def test_a_section_is_replaced_in_place_keeping_hand_written_notes() -> None:
    out = replace_section(DOC, "## Streaming\nnew stream\n")
    assert out == DOC.replace("old stream\n", "new stream\n\n")
    assert replace_section(out, "## Streaming\nnew stream\n") == out  # idempotent


def test_a_new_section_is_appended_and_head_may_be_given(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    write_section("## Finance ledger\nledger\n", path=path)
    write_section("## Offline settle\nsettle\n", path=path)
    write_section("## Offline settle (10 M)\nsettle 2\n", "## Offline settle", path)
    assert path.read_text() == ("# Benchmark results\n\n## Finance ledger\nledger\n\n"
                                "## Offline settle (10 M)\nsettle 2\n")
