"""Finance CSV files in and out.

Out: every table is written twice, as CSV that Excel in Japan opens correctly
(UTF-8 with a byte order mark) and as Parquet, atomically (all files or none).

In: claims and advances are CSV with a fixed header. Each physical line must be one
row (no line breaks inside quoted fields), so that row ``i`` is line ``i + 2`` and
every problem can be reported with its line number; the fast path reads with
Arrow, the first problem is located by a plain re-scan only when there is one.
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from engine.finance.ledger import InputError

BOM = codecs.BOM_UTF8
_INTEGER = r"^-?[0-9]{1,18}$"  # int64 without overflow checks; 19 digits are not yen here


def csv_bytes(table: pa.Table) -> bytes:
    """UTF-8 CSV with a BOM, header first, strings quoted, nulls empty.

    >>> csv_bytes(pa.table({"a": ["x,y", None], "n": [1, -2]}))
    b'\\xef\\xbb\\xbf"a","n"\\n"x,y",1\\n,-2\\n'
    """
    import pyarrow.csv as pcsv

    buf = io.BytesIO()
    buf.write(BOM)
    pcsv.write_csv(table, buf, pcsv.WriteOptions(quoting_style="needed"))
    return buf.getvalue()


def write_tables(out_dir: str | Path, tables: dict[str, pa.Table],
                 extra: dict[str, bytes] | None = None) -> list[Path]:
    """``name.csv`` and ``name.parquet`` for every table (plus ``extra`` files),
    all or nothing. Returns the CSV paths."""
    from engine.io.outputs import write_atomically

    out = Path(out_dir)
    files: dict[str, pa.Table | bytes] = {}
    for name, t in tables.items():
        files[f"{name}.csv"] = csv_bytes(t)
        files[f"{name}.parquet"] = t
    files.update(extra or {})
    write_atomically(out, files)
    return [out / f"{name}.csv" for name in tables]


def read_csv_input(path: str | Path, columns: tuple[str, ...],
                   integers: tuple[str, ...] = (),
                   patterns: dict[str, tuple[str, str]] | None = None) -> pa.Table:
    """Read a CSV whose header names exactly ``columns`` (any order, a BOM allowed)
    into string columns plus ``line`` (int64, 1 = header); ``integers`` become
    int64. ``patterns`` maps a column to (regex, description) every value must
    match. Raises :class:`InputError` naming file, line and problem."""
    import pyarrow.csv as pcsv

    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.readline()
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from None
    header = _header(p, head, columns)
    bad_rows: list[str] = []

    def invalid(_row: object) -> str:
        bad_rows.append("x")
        return "skip"

    try:
        t = pcsv.read_csv(
            p,
            read_options=pcsv.ReadOptions(column_names=header, skip_rows=1),
            parse_options=pcsv.ParseOptions(newlines_in_values=False, ignore_empty_lines=False,
                                            invalid_row_handler=invalid),
            convert_options=pcsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()),
                strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowException, OSError):
        bad_rows.append("x")
    if bad_rows:
        raise InputError(_first_problem(p, header))
    t = t.select(list(columns))
    n = t.num_rows
    t = t.append_column("line", pa.array(range(2, n + 2), type=pa.int64()))
    for c in columns:
        empty = pc.equal(pc.utf8_length(t[c]), 0)
        _fail_first(p, t, empty, f"{c} is empty")
        if c in integers:
            ok = pc.match_substring_regex(t[c], _INTEGER)
            _fail_first(p, t, pc.invert(ok), f"{c} is not an integer")
        if patterns and c in patterns:
            regex, what = patterns[c]
            _fail_first(p, t, pc.invert(pc.match_substring_regex(t[c], regex)),
                        f"{c} is not {what}")
    for c in integers:
        t = t.set_column(t.column_names.index(c), c, t[c].cast(pa.int64()))
    return t


def _header(p: Path, head: bytes, columns: tuple[str, ...]) -> list[str]:
    want = ",".join(columns)
    try:
        text = head.removeprefix(BOM).decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise InputError(f"{p}: line 1: not UTF-8 text") from None
    names = next(csv.reader([text]), [])
    for c in columns:
        if c not in names:
            raise InputError(f"{p}: line 1: missing column {c} (the header must be {want})")
    extra = [c for c in names if c not in columns]
    if extra or len(names) != len(columns):
        raise InputError(f"{p}: line 1: unexpected column {(extra or names)[0]!r} "
                         f"(the header must be {want})")
    return names


def _fail_first(p: Path, t: pa.Table, mask: pa.ChunkedArray, problem: str) -> None:
    if pc.any(mask).as_py():
        line = t["line"].filter(mask)[0].as_py()
        raise InputError(f"{p}: line {line}: {problem}")


def _first_problem(p: Path, header: list[str]) -> str:
    """Where Arrow refused the file: re-read it line by line (error path only)."""
    with p.open("rb") as f:
        f.readline()
        for no, raw in enumerate(f, start=2):
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                return f"{p}: line {no}: not UTF-8 text"
            if text.count('"') % 2:
                return f"{p}: line {no}: unbalanced quote (a field may not span lines)"
            fields = next(csv.reader([text]), [])
            if len(fields) != len(header):
                return (f"{p}: line {no}: {len(fields)} fields, expected {len(header)} "
                        f"({','.join(header)})")
    return f"{p}: not readable as CSV"


MONTH = (r"^[0-9]{4}-(0[1-9]|1[0-2])$", "a month like 2020-09")
__all__ = ["BOM", "MONTH", "csv_bytes", "read_csv_input", "write_tables"]
