"""Building the output tables (grants, rejections) from decided batches.

Shared by offline ``settle`` and ``collect`` so both write identical columns:
the Arrow schemas in :mod:`engine.io.outputs_schema` are the contract.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA, TIMESTAMP
from engine.rules.model import KIND_NAMES, REASON_NAMES, Reason
from engine.rules.settlement import STATEFUL_DETAIL
from engine.rules.strings import buffers, one_array, put_bytes, string_array
from engine.rules.validate import Validated


def repeat(value: str, n: int) -> pa.Array:
    """A string column of one value, without n Python objects."""
    return pa.array([value], type=pa.string()).take(pa.array(np.zeros(n, dtype=np.int64)))


def grant_ids(campaign: str, operator_id: pa.Array, mykey_id: pa.Array,
              txn_id: pa.Array) -> pa.Array:
    """``campaign/operator_id/mykey_id/txn_id``: unique because an accepted
    transaction is unique per person, operator and txn_id (later copies are
    duplicates), and stable across redelivery, replay, and offline vs stream.

    >>> grant_ids("c", pa.array(["paypay"]), pa.array(["AB12cd34"]), pa.array(["t1"]))[0]
    <pyarrow.StringScalar: 'c/paypay/AB12cd34/t1'>
    """
    head = np.frombuffer(f"{campaign}/".encode(), np.uint8)
    (ao, ad, _), (bo, bd, _), (co, cd, _) = (buffers(a) for a in (operator_id, mykey_id,
                                                                  txn_id))
    return string_array(*_joined(head, ao, ad, bo, bd, co, cd))


@numba.njit(cache=True, nogil=True)
def _joined(head, ao, ad, bo, bd, co, cd):  # type: ignore[no-untyped-def]
    """``head + a + "/" + b + "/" + c`` row by row, as (offsets, bytes): a third of
    Arrow's ``binary_join_element_wise`` time, which goes through its general kernel
    per row."""
    n = len(ao) - 1
    h = len(head)
    offsets = np.empty(n + 1, np.int64)
    offsets[0] = 0
    total = 0
    for i in range(n):
        total += h + 2 + (ao[i + 1] - ao[i]) + (bo[i + 1] - bo[i]) + (co[i + 1] - co[i])
        offsets[i + 1] = total
    buf = np.empty(total, np.uint8)
    at = 0
    for i in range(n):
        at = put_bytes(buf, at, head, 0, h)
        at = put_bytes(buf, at, ad, ao[i], ao[i + 1])
        buf[at] = 47  # "/"
        at = put_bytes(buf, at + 1, bd, bo[i], bo[i + 1])
        buf[at] = 47
        at = put_bytes(buf, at + 1, cd, co[i], co[i + 1])
    return offsets, buf


def decision_order(mask: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Positions where ``mask`` holds, in decision order (``seq``)."""
    idx = np.flatnonzero(mask)
    order = np.argsort(seq[idx], kind="stable")
    if len(order) and not np.all(order[1:] > order[:-1]):
        idx = idx[order]
    return idx


# What a grant row carries before its derived columns (grant_id, campaign, kind's
# name, capped, the timestamp type): settle's slices spill and merge these, and only
# the merged rows are made into output rows (DECISIONS 109).
GRANT_CORE = pa.schema([
    pa.field("mykey_id", pa.string()), pa.field("operator_id", pa.string()),
    pa.field("txn_id", pa.string()), pa.field("kind", pa.int8()),
    pa.field("amount", pa.int64()), pa.field("points", pa.int64()),
    pa.field("cumulative_points", pa.int64()), pa.field("occurred_at", pa.int64()),
])


def grant_core(v: Validated, idx: np.ndarray, points: np.ndarray, cum: np.ndarray
               ) -> pa.Table:
    """The :data:`GRANT_CORE` columns of the accepted transactions at ``idx``."""
    take = pa.array(idx, type=pa.int64())
    return pa.table({
        "mykey_id": v.mykey_id.take(take), "operator_id": v.operator_id.take(take),
        "txn_id": v.txn_id.take(take), "kind": pa.array(v.kind[idx], type=pa.int8()),
        "amount": pa.array(v.amount[idx], type=pa.int64()),
        "points": pa.array(points[idx], type=pa.int64()),
        "cumulative_points": pa.array(cum[idx], type=pa.int64()),
        "occurred_at": pa.array(v.at[idx], type=pa.int64()),
    }, schema=GRANT_CORE)


def grants_from_core(core: pa.Table, source: pa.Array, campaign: str, cap: int) -> pa.Table:
    """Output grant rows of :func:`grant_core` rows and their sources."""
    def col(name: str) -> pa.Array:
        return one_array(core.column(name))

    op, key, txn = col("operator_id"), col("mykey_id"), col("txn_id")
    n = core.num_rows
    cum = col("cumulative_points")
    return pa.table({
        "grant_id": grant_ids(campaign, op, key, txn),
        "campaign": repeat(campaign, n),
        "mykey_id": key, "operator_id": op, "txn_id": txn,
        "kind": pa.array(KIND_NAMES, type=pa.string()).take(col("kind")),
        "amount": col("amount"), "points": col("points"), "cumulative_points": cum,
        "capped": pc.equal(cum, pa.scalar(cap, pa.int64())),
        "occurred_at": col("occurred_at").cast(TIMESTAMP),
        "source": source,
    }, schema=GRANT_SCHEMA)


def grants_table(v: Validated, idx: np.ndarray, points: np.ndarray, cum: np.ndarray,
                 source: Any, campaign: str, cap: int) -> pa.Table:
    """The grants of the accepted transactions at ``idx``, in that order."""
    return grants_from_core(grant_core(v, idx, points, cum),
                            source.take(pa.array(idx, type=pa.int64())), campaign, cap)


def rejection_details(v: Validated, reason: np.ndarray, idx: np.ndarray) -> np.ndarray:
    det = v.detail[idx].copy()
    missing = np.array([d is None for d in det], dtype=np.bool_)
    if missing.any():
        det[missing] = [STATEFUL_DETAIL[Reason(int(r))] for r in reason[idx][missing]]
    return det


def rejections_table(v: Validated, reason: np.ndarray, idx: np.ndarray,
                     source: Any) -> pa.Table:
    """The rejections of the records at ``idx``, in that order (``source``: anything
    whose ``take`` gives the source strings, an Arrow array or
    :class:`engine.io.readers.Sources`)."""
    take = pa.array(idx, type=pa.int64())
    n = len(idx)
    return pa.table({
        "record_type": repeat(v.record_type, n),
        "reason": pa.array(REASON_NAMES, type=pa.string()).take(
            pa.array(reason[idx].astype(np.int64))),
        "detail": pa.array(rejection_details(v, reason, idx), type=pa.string()),
        "txn_id": v.txn_id.take(take),
        "operator_id": v.operator_id.take(take),
        "mykey_id": v.mykey_id.take(take),
        "source": source.take(take),
    }, schema=REJECTION_SCHEMA)


# Ids, sources and keys are near-unique, high-entropy strings: compressing them or
# keeping min/max statistics for them costs seconds on 10^7 rows and gains little.
_UNIQUE = ("grant_id", "source", "txn_id", "mykey_id")
_REPEATING = ("campaign", "operator_id", "kind", "record_type", "reason", "detail")
# Points are bounded by the cap (at most 2 * cap + 1 values, clawbacks included): a
# dictionary page of them is smaller than their snappy-compressed values and quicker to
# write (1.7 against 2.7-3.0 MB and 8-14 against 18-23 ms per row group of 2^20 grants;
# DECISIONS 135). Amounts and times are not bounded like that and stay as they were.
_BOUNDED = ("points", "cumulative_points")


ROW_GROUP = 1 << 20  # rows per output row group, however the rows are handed over


class TableWriter:
    """An output Parquet file written a row group at a time: settle never holds a
    whole output table, and a table written whole or in pieces gives the same file."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        cols = schema.names
        self._schema = schema
        self._writer = pq.ParquetWriter(
            path, schema,
            compression={c: ("none" if c in _UNIQUE + _BOUNDED else "snappy") for c in cols},
            use_dictionary=[c for c in cols if c in _REPEATING + _BOUNDED],
            write_statistics=[c for c in cols if c not in _UNIQUE],
            # the writer's per-batch work, at its default of 1,024 values a batch, was a
            # tenth of a row group's encoding time; the file is the same size
            write_batch_size=65_536)
        self._pending: list[pa.Table] = []
        self._rows = 0
        self._written = False

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= ROW_GROUP:
            t = pa.concat_tables(self._pending)
            full = t.num_rows - t.num_rows % ROW_GROUP
            self._emit(t.slice(0, full))
            self._pending = [t.slice(full)]
            self._rows = t.num_rows - full

    def _emit(self, table: pa.Table) -> None:
        self._writer.write_table(table, row_group_size=ROW_GROUP)
        self._written = True

    def close(self) -> None:
        if self._rows or not self._written:
            self._emit(pa.concat_tables(self._pending) if self._pending
                       else self._schema.empty_table())
        self._writer.close()


class Writes:
    """Output tables written on a second thread while the caller makes the next ones
    (Parquet encoding and Arrow's compute functions release the GIL); at most one
    waits. A context manager: leaving it waits for the last write."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: Future[None] | None = None

    def put(self, write: Callable[[], None]) -> None:
        if self._pending is not None:
            self._pending.result()
        self._pending = self._pool.submit(write)

    def __enter__(self) -> Writes:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._pending is not None:
                self._pending.result()
        finally:
            self._pool.shutdown()


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling directory whose files replace those in ``out_dir`` when
    the block succeeds: a failure part-way leaves the previous outputs untouched
    (and no ``out_dir`` where there was none)."""
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir))
    try:
        yield tmp
        for f in sorted(tmp.iterdir()):
            if f.is_file():
                os.replace(f, out_dir / f.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_atomically(out_dir: Path, files: dict[str, pa.Table | bytes]) -> None:
    """Write every file into a temporary sibling directory, then move them in:
    a failure part-way leaves the previous outputs untouched."""
    with atomic_dir(out_dir) as tmp:
        for name, content in files.items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                w = TableWriter(tmp / name, content.schema)
                w.write(content)
                w.close()
