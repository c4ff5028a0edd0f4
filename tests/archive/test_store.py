"""The archive's audit: a missing, altered or unlisted file or a hole is found, and
settle refuses such an archive (no broker needed)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from engine.archive.archiver import archive_rows
from engine.archive.replay import Msg
from engine.archive.store import Archive, Entry
from engine.cli import main as cli


def _write(root: Path, starts: list[int]) -> Archive:
    a = Archive(root)
    for s in starts:
        msgs = [Msg("m.enrollments", 0, o, 1599000000000, b"AB12cd34", orjson.dumps(
            {"mykey_id": "AB12cd34", "operator_id": "paypay",
             "applied_at": "2020-09-01T10:00:00+09:00"}), []) for o in (s, s + 1)]
        a.write_file(archive_rows(msgs, "enrollment"),
                     Entry("m.enrollments", "enrollment", 0, s, s + 2, 2, first=s, last=s + 1))
    return a


def test_a_sound_archive_verifies_and_settles(tmp_path: Path, capsys) -> None:
    _write(tmp_path / "a", [0, 2])
    assert cli(["archive", "--out", str(tmp_path / "a"), "--verify"]) == 0
    assert "verified, no problem" in capsys.readouterr().out
    assert cli(["settle", "--archive", str(tmp_path / "a"), "--out", str(tmp_path / "o"),
                "--quiet"]) == 0


@pytest.mark.parametrize("damage", ["alter", "delete", "extra", "hole"])
def test_damage_is_found_and_settle_refuses(tmp_path: Path, capsys, damage: str) -> None:
    a = _write(tmp_path / "a", [0, 4] if damage == "hole" else [0, 2])
    first = tmp_path / "a" / str(a.files()[0].file)
    if damage == "alter":
        first.write_bytes(first.read_bytes()[:-1] + b"x")
    elif damage == "delete":
        first.unlink()
    elif damage == "extra":
        (first.parent / "stray.parquet").write_bytes(b"x")
    assert cli(["archive", "--out", str(tmp_path / "a"), "--verify"]) == 1
    found = capsys.readouterr().out
    expected = {"alter": "altered", "delete": "missing", "extra": "not in the manifest",
                "hole": "offsets 2..3 are in no file"}[damage]
    assert expected in found
    assert cli(["settle", "--archive", str(tmp_path / "a"), "--out", str(tmp_path / "o"),
                "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and expected in err
    assert not (tmp_path / "o").exists()


def test_unlisted_files_left_by_a_crash_are_removed(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", [0])
    left = tmp_path / "a" / "data" / "m.enrollments" / "0" / "x.parquet.tmp"
    left.write_bytes(b"partial")
    assert Archive.open(tmp_path / "a").remove_unlisted() == [
        "data/m.enrollments/0/x.parquet.tmp"]
    assert a.verify() == []


def test_settle_needs_files_or_an_archive(tmp_path: Path, capsys) -> None:
    assert cli(["settle", "--out", str(tmp_path / "o")]) == 2
    assert cli(["settle", "--archive", str(tmp_path), "--enrollments", "x",
                "--out", str(tmp_path / "o")]) == 2
    assert cli(["settle", "--archive", str(tmp_path / "none"), "--out",
                str(tmp_path / "o")]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 3
