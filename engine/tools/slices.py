"""Offline settle beyond memory: validated records spilled to disk by slices of people,
each slice decided on its own, the slices' outputs merged back into decision order.

A person's records are decided only during the arrivals of that person's own records
(:class:`engine.rules.kernel.Decided`), so deciding the people of each slice apart and
ordering every outcome by (the arrival that decided it in the whole input, its order
within the slice) gives the whole run's outcomes in the whole run's order, record for
record (docs/DECISIONS.md). Records are spilled after validation: an Individual Number
never reaches the disk, only the redacted columns a rejection may show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.io.outputs import ROW_GROUP, TableWriter, Writes
from engine.io.readers import Sources
from engine.rules.model import jst_day
from engine.rules.validate import Validated, empty_validated

KEY = "_order"  # column of the slices' output files: position in the whole run's order
# Uncompressed: the spill and the runs are written once and read once, soon after, from
# the page cache; LZ4 cost more CPU than the bytes it saved, and an uncompressed spill
# is read back through a memory map without a copy (DECISIONS 123)
_SPILL_OPTIONS = pa.ipc.IpcWriteOptions(compression=None)
MERGE_BATCH = 1 << 17  # rows per spilled output batch (the merge holds one per slice)

_ARRAYS = ("reason", "op", "kind", "amount", "at", "received")
# the four checks' booleans spilled as the bits of one byte: Arrow packs a boolean
# column into bits, and a take of each of the four cost as much as an int64 column's
_FLAGS = ("too_late", "outside", "bad_earn_on", "earn_given")
_STRINGS = ("mykey_id", "operator_id", "txn_id", "original_txn_id")


def to_batch(v: Validated, source: Sources, index: np.ndarray,
             names: dict[str, int]) -> pa.RecordBatch:
    """A validated batch as Arrow columns, with each record's source (as a number
    into ``names``, which grows) and its position in the whole input."""
    cols: dict[str, pa.Array] = {name: pa.array(getattr(v, name)) for name in _ARRAYS}
    flags = np.zeros(v.n, np.uint8)
    for bit, name in enumerate(_FLAGS):
        flags |= getattr(v, name).astype(np.uint8) << bit
    cols["flags"] = pa.array(flags)
    # ``day`` is not spilled: it is the JST day of ``at`` (engine.rules.validate), made
    # again on reading
    cols.update({name: getattr(v, name).cast(pa.string()) for name in _STRINGS})
    cols["detail"] = pa.array(v.detail, type=pa.string())
    codes = np.array([names.setdefault(n, len(names)) for n in source.names] or [0], np.int32)
    cols["source_file"] = pa.array(codes[source.file])
    cols["source_position"] = pa.array(source.position)
    cols["index"] = pa.array(index, type=pa.int64())
    return pa.RecordBatch.from_pydict(cols)


def from_table(t: pa.Table, record_type: str, names: dict[str, int]
               ) -> tuple[Validated, Sources, np.ndarray]:
    """The inverse of :func:`to_batch` (of several batches)."""
    t = t.combine_chunks()

    def col(name: str) -> pa.Array:
        c = t.column(name)
        return c.chunk(0) if c.num_chunks == 1 else pa.concat_arrays(c.chunks)

    def arr(name: str) -> np.ndarray:
        return np.asarray(col(name).to_numpy(zero_copy_only=False))

    arrays = {name: arr(name) for name in _ARRAYS}
    flags = arr("flags")
    v = Validated(n=t.num_rows, record_type=record_type,
                  detail=np.asarray(col("detail").to_numpy(zero_copy_only=False), dtype=object),
                  day=jst_day(arrays["at"]).astype(np.int32), **arrays,
                  **{name: (flags >> bit) & 1 == 1 for bit, name in enumerate(_FLAGS)},
                  **{name: col(name) for name in _STRINGS})
    src = Sources(tuple(names), arr("source_file"), arr("source_position"))
    return v, src, arr("index")


class Spill:
    """One Arrow IPC file per slice and record type, appended to batch by batch."""

    def __init__(self, directory: Path, count: int) -> None:
        self.dir = directory
        self.count = count
        self._writers: dict[tuple[str, int], pa.ipc.RecordBatchStreamWriter] = {}
        self.names: dict[str, int] = {}  # the input files' names, numbered

    def path(self, record_type: str, k: int) -> Path:
        return self.dir / f"{record_type}-{k}.arrows"

    def add(self, slices: np.ndarray, v: Validated, source: Sources, index: np.ndarray
            ) -> None:
        """Append each record to the file of its type of its slice (``slices``: a slice
        number per record, -1 for a record of no slice). The records are ordered by
        slice once and each slice's rows written as a zero-copy slice of them: a take per
        slice and piece made the spill of a 100 M run a quarter longer (DECISIONS 122)."""
        keep = np.flatnonzero(slices >= 0)
        # numpy's stable sort is a radix sort for 16-bit keys (a merge sort for wider)
        keys = slices[keep].astype(np.int16 if self.count <= 1 << 15 else np.int64)
        order = keep[np.argsort(keys, kind="stable")]
        counts = np.bincount(keys, minlength=self.count)
        batch = to_batch(v, source, index, self.names).take(pa.array(order, type=pa.int64()))
        start = 0
        for k in np.flatnonzero(counts):
            part = batch.slice(start, int(counts[k]))
            start += int(counts[k])
            w = self._writers.get((v.record_type, int(k)))
            if w is None:
                w = pa.ipc.new_stream(str(self.path(v.record_type, int(k))), part.schema,
                                      options=_SPILL_OPTIONS)
                self._writers[(v.record_type, int(k))] = w
            w.write_batch(part)

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()

    def read(self, record_type: str, k: int) -> tuple[Validated, Sources, np.ndarray]:
        """Slice ``k``'s records of that type, their sources and their positions in
        the whole input."""
        p = self.path(record_type, k)
        if not p.exists():
            return (empty_validated(record_type), Sources.concat([]), np.zeros(0, np.int64))
        # the columns are copied out of the map once, by from_table's concatenation
        # (a buffer still in the map keeps it alive after the file is closed)
        with pa.memory_map(str(p)) as f:
            t = pa.ipc.open_stream(f).read_all()
        return from_table(t, record_type, self.names)


class SortedRun:
    """Output rows of one slice, in the slice's decision order, with their :data:`KEY`."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = path
        self.schema = schema.append(pa.field(KEY, pa.int64(), nullable=False))
        self._w = pa.ipc.new_stream(str(path), self.schema, options=_SPILL_OPTIONS)

    def write(self, table: pa.Table, key: np.ndarray) -> None:
        t = table.append_column(self.schema.field(KEY), pa.array(key, type=pa.int64()))
        self._w.write_table(t, max_chunksize=MERGE_BATCH)

    def close(self) -> None:
        self._w.close()


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    with pa.OSFile(str(path)) as f:
        for b in pa.ipc.open_stream(f):
            if b.num_rows:
                yield b


def merge_runs(paths: list[Path], sink: TableWriter,
               finish: Callable[[pa.Table], pa.Table] | None = None) -> None:
    """Merge slices' sorted runs into ``sink`` by :data:`KEY`, a batch at a time. Two
    slices never share a key (an arrival belongs to one person), and within a slice
    keys do not decrease, so a stable sort of what is below every run's horizon is
    the whole run's order. ``finish`` makes merged rows into output rows; the sink
    writes them on a second thread while the next batch is merged."""
    with Writes() as w:
        for t in _row_groups(_merged(paths), finish):
            w.put(partial(sink.write, t))


def _row_groups(tables: Iterator[pa.Table], finish: Callable[[pa.Table], pa.Table] | None
                ) -> Iterator[pa.Table]:
    """The merged tables as output rows, handed over a row group's worth at a time.
    The sink encodes a row group once it has one: handed a merged batch at a time, the
    writer thread encoded while the merge waited to hand it the next batch, then idled
    while the merge made the next seven, so the two ran one after the other (one core
    busy through the whole merge of a 100 M run, DECISIONS 122)."""
    held: list[pa.Table] = []
    rows = 0
    for t in tables:
        t = t.drop_columns([KEY])
        held.append(finish(t) if finish else t)
        rows += t.num_rows
        if rows >= ROW_GROUP:
            yield pa.concat_tables(held)
            held, rows = [], 0
    if held:
        yield pa.concat_tables(held)


def _merged(paths: list[Path]) -> Iterator[pa.Table]:
    sources = [_batches(p) for p in paths]
    heads: list[pa.RecordBatch | None] = [next(s, None) for s in sources]
    while True:
        live = [i for i, h in enumerate(heads) if h is not None]
        if not live:
            return
        keys = {i: np.asarray(heads[i].column(KEY).to_numpy())  # type: ignore[union-attr]
                for i in live}
        horizon = min(int(k[-1]) for k in keys.values())
        parts: list[pa.RecordBatch] = []
        for i in live:
            head = heads[i]
            assert head is not None
            cut = int(np.searchsorted(keys[i], horizon, side="right"))
            parts.append(head.slice(0, cut))
            heads[i] = head.slice(cut) if cut < head.num_rows else next(sources[i], None)
        t = pa.Table.from_batches(parts)
        keys_t = np.asarray(t.column(KEY).to_numpy())
        if len(keys_t) > 1 and not np.all(keys_t[1:] >= keys_t[:-1]):
            t = t.take(pa.array(np.argsort(keys_t, kind="stable")))
        yield t
