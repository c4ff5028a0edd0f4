"""Input files: JSON Lines or Parquet, chosen by extension.

A file that cannot be opened at all is an :class:`InputError` (exit 2, nothing
written). Anything wrong *inside* a record — invalid JSON on one line, a wrong
type in one row — is that record's MALFORMED rejection, never an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numba
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from engine.rules.plain_json import merge, shape_plain
from engine.rules.strings import json_facts, put_bytes, string_array
from engine.rules.validate import Shaped, shape_objects, shape_table


class InputError(Exception):
    """An input file is unusable as a whole. ``str()`` names the file."""


class BadRecord:
    """Stands in for a line or message that is not a JSON value at all; ``kind`` is
    the metrics label of what is wrong with it."""

    __slots__ = ("detail", "kind", "too_deep")

    def __init__(self, detail: str, kind: str = "invalid_json", too_deep: bool = False) -> None:
        self.detail = detail
        self.kind = kind
        # a JSON object nested beyond the parser's limit (still searched for numbers)
        self.too_deep = too_deep


JSON_MAX_DEPTH = 1024  # orjson's nesting limit: deeper texts are not decoded at all

# What orjson's error says, to the fixed sentence a rejection shows (its own message
# would quote positions, and some inputs are not JSON in ways worth naming).
_JSON_ERRORS = (
    ("depth limit exceeded", f"record is nested deeper than {JSON_MAX_DEPTH} levels"),
    ("number is infinity", "record holds a number too large for a 64-bit float (like 1e400)"),
    ("surrogate", "record holds an unpaired UTF-16 surrogate escape"),
    ("byte order mark", "record starts with a UTF-8 byte order mark"),
)


def load_record(line: bytes, limit: int | None = None) -> Any:
    """One JSON value, or a :class:`BadRecord` saying why it is not one."""
    if limit is not None and len(line) > limit:
        return BadRecord(f"record exceeds the size limit of {limit} bytes", "too_large")
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as e:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return BadRecord("record is not valid UTF-8", "invalid_utf8")
        msg = str(e)
        for needle, detail in _JSON_ERRORS:
            if needle in msg:
                return BadRecord(detail, too_deep=needle.startswith("depth")
                                 and line.lstrip()[:1] == b"{")
        return BadRecord("record is not valid JSON (NaN and Infinity are not JSON numbers)"
                         if b"NaN" in line or b"Infinity" in line
                         else "record is not valid JSON")


def split_lines(data: bytes) -> tuple[list[bytes], np.ndarray]:
    """Non-blank lines and their 1-based line numbers.

    Blank lines carry no record and are skipped, but numbering counts them so
    that ``source`` always points at the physical line.
    """
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    keep = [i for i, line in enumerate(raw) if line.strip()]
    return [raw[i] for i in keep], np.asarray(keep, dtype=np.int64) + 1


@numba.njit(cache=True, nogil=True)
def _prefixed_numbers(prefix: np.ndarray, positions: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    n = len(positions)
    p = len(prefix)
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[0] = 0
    total = 0
    for i in range(n):
        v = positions[i]
        total += p + 1
        while v >= 10:
            v //= 10
            total += 1
        offsets[i + 1] = total
    data = np.empty(total, dtype=np.uint8)
    for i in range(n):
        put_bytes(data, offsets[i], prefix, 0, p)
        v = positions[i]
        j = offsets[i + 1] - 1
        while True:
            data[j] = 48 + v % 10
            v //= 10
            j -= 1
            if v == 0:
                break
    return offsets, data


def sources(name: str, positions: np.ndarray) -> pa.Array:
    """``name:position`` for every record (positions are 1-based, non-negative).

    >>> sources("t.jsonl", np.array([1, 20])).to_pylist()
    ['t.jsonl:1', 't.jsonl:20']
    """
    prefix = np.frombuffer((name + ":").encode(), dtype=np.uint8)
    return string_array(*_prefixed_numbers(prefix, np.asarray(positions, dtype=np.int64))
                        ).cast(pa.string())


def count_rows(path: str | Path) -> int:
    """How many records a file holds, from Parquet metadata (a directory of parts:
    their sum); JSON Lines counts its newline bytes. Raises InputError like
    :func:`read_records`. Offline settle sizes its slices with it."""
    p = Path(path)
    try:
        if p.suffix.lower() == ".parquet":
            if p.is_dir():
                return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted(p.rglob("*"))
                           if f.is_file() and not f.name.startswith(("_", ".")))
            return int(pq.ParquetFile(p).metadata.num_rows)
        with p.open("rb") as f:
            return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b""))
    except (OSError, pa.ArrowException):
        return 0  # read_records names what is wrong with it


def iter_records(path: str | Path, record_type: str,
                 progress: Callable[[int], None] | None = None
                 ) -> Iterator[tuple[Shaped, Sources]]:
    """:func:`read_records` one piece at a time: a Parquet file row group by row group
    (every check is per record, so the pieces are judged exactly as the whole
    would be), anything else in one piece."""
    for piece in record_pieces(path, record_type, progress):
        yield piece()


def record_pieces(path: str | Path, record_type: str,
                  progress: Callable[[int], None] | None = None
                  ) -> Iterator[Callable[[], tuple[Shaped, Sources]]]:
    """:func:`iter_records` as functions that each read and shape one piece, so
    that a caller can read the next row group while it checks this one. Each opens
    the file for itself (safe on separate threads)."""
    p = Path(path)
    if p.suffix.lower() != ".parquet" or p.is_dir():
        yield partial(_read_whole, p, record_type, progress)
        return
    try:
        with pq.ParquetFile(p) as f:
            sizes = [f.metadata.row_group(g).num_rows for g in range(f.metadata.num_row_groups)]
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{p}: cannot read Parquet ({e})") from None
    if not sizes:
        yield partial(_read_row_group, p, None, record_type, 1, progress)
    first = 1
    for g, size in enumerate(sizes):
        yield partial(_read_row_group, p, g, record_type, first, progress)
        first += size


def _read_whole(p: Path, record_type: str,
                progress: Callable[[int], None] | None) -> tuple[Shaped, Sources]:
    shaped, numbers = _read_file(p, record_type, progress)
    return shaped, Sources.of(p.name, numbers)


def _read_row_group(p: Path, group: int | None, record_type: str, first: int,
                    progress: Callable[[int], None] | None) -> tuple[Shaped, Sources]:
    """Row group ``group`` of a Parquet file (None: the whole file, which has none)."""
    try:
        with pq.ParquetFile(p) as f:
            table = f.read() if group is None else f.read_row_group(group)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{p}: cannot read Parquet ({e})") from None
    if progress:
        progress(table.num_rows)
    return _shaped_parquet(p, table, record_type), Sources.of(
        p.name, np.arange(first, first + table.num_rows, dtype=np.int64))


def _shaped_parquet(p: Path, table: pa.Table, record_type: str) -> Shaped:
    try:
        return shape_table(table, record_type)
    except Exception as e:  # a last line of defence: a whole-file error, no traceback
        raise InputError(f"{p}: a column has a layout the engine cannot read "
                         f"({type(e).__name__})") from None


@dataclass(frozen=True)
class Sources:
    """The ``file:position`` source of every record of a batch, made into strings only
    for the rows an output shows (ten million of them would hold 300 MB). ``take``
    gives the strings, like an Arrow array's."""

    names: tuple[str, ...]
    file: np.ndarray      # int32, index into names
    position: np.ndarray  # int64, 1-based line or row number

    @classmethod
    def of(cls, name: str, positions: np.ndarray) -> Sources:
        return cls((name,), np.zeros(len(positions), np.int32),
                   np.asarray(positions, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.position)

    def take(self, idx: pa.Array | np.ndarray) -> pa.Array:
        rows = np.asarray(idx.to_numpy() if isinstance(idx, pa.Array) else idx, np.int64)
        files = self.file[rows]
        first = int(files[0]) if len(files) else 0
        if len(self.names) <= 1 or bool((files == first).all()):
            return sources(self.names[first] if self.names else "", self.position[rows])
        parts, at = [], []
        for f in np.unique(files).tolist():
            where = np.flatnonzero(files == f)
            parts.append(sources(self.names[f], self.position[rows[where]]))
            at.append(where)
        return pa.concat_arrays(parts).take(pa.array(np.argsort(np.concatenate(at))))

    def select(self, idx: np.ndarray) -> Sources:
        """The sources of the records at ``idx``, still as numbers."""
        return Sources(self.names, self.file[idx], self.position[idx])

    @staticmethod
    def concat(parts: list[Sources]) -> Sources:
        names: dict[str, int] = {}
        files = []
        for p in parts:
            codes = np.array([names.setdefault(n, len(names)) for n in p.names] or [0],
                             dtype=np.int32)
            files.append(codes[p.file])
        return Sources(tuple(names), np.concatenate(files or [np.zeros(0, np.int32)]),
                       np.concatenate([p.position for p in parts] or [np.zeros(0, np.int64)]))


def read_records(path: str | Path, record_type: str,
                 progress: Callable[[int], None] | None = None) -> tuple[Shaped, pa.Array]:
    """Read one input file into a shaped batch plus its ``source`` column."""
    shaped, numbers = _read_file(Path(path), record_type, progress)
    return shaped, sources(Path(path).name, numbers)


def _read_file(p: Path, record_type: str, progress: Callable[[int], None] | None
               ) -> tuple[Shaped, np.ndarray]:
    """A whole file shaped, with the line or row number of each record."""
    suffix = p.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".parquet"):
        raise InputError(f"{p}: unknown input format (use .jsonl or .parquet)")
    if suffix == ".parquet":
        try:
            if p.is_dir():  # a directory of parts, as Spark writes them
                table = pq.read_table(p)
            else:
                # (not read_table: its dataset layer refuses a repeated column name,
                # which is each row's MALFORMED, not the file's error)
                with pq.ParquetFile(p) as f:
                    table = f.read()
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{p}: cannot read Parquet ({e})") from None
        if progress:
            progress(table.num_rows)
        return (_shaped_parquet(p, table, record_type),
                np.arange(1, table.num_rows + 1, dtype=np.int64))
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"{p}: cannot read file ({e.strerror})") from None
    lines, numbers = split_lines(data)
    shaped, _ = shape_lines(lines, record_type)
    if progress:
        progress(len(lines))
    return shaped, numbers


def shape_lines(lines: list[bytes], record_type: str, limit: int | None = None,
                bad: dict[str, int] | None = None,
                decode: Callable[[int], Any] | None = None) -> tuple[Shaped, np.ndarray]:
    """JSON texts shaped, and which of them were plain: the plain ones in one compiled
    pass (engine.rules.plain_json), the rest as objects — ``decode(i)`` gives text
    ``i``'s value (by default :func:`load_record`, texts over ``limit`` bytes refused,
    the undecodable counted in ``bad`` by kind)."""
    plain, mask = shape_plain(lines, record_type, limit)
    if plain.n == len(lines):
        return plain, mask
    rest = np.flatnonzero(~mask).tolist()
    if decode is None:
        objs = [load_record(lines[i], limit) for i in rest]
        if bad is not None:
            for obj in objs:
                if isinstance(obj, BadRecord):
                    bad[obj.kind] = bad.get(obj.kind, 0) + 1
    else:
        objs = [decode(i) for i in rest]
    shaped = shape_objects(objs, record_type, json_facts([lines[i] for i in rest]))
    return (merge(plain, mask, shaped) if plain.n else shaped), mask
