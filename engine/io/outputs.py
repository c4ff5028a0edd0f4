"""Building the output tables (grants, rejections) from decided batches.

Shared by offline ``settle`` and ``collect`` so both write identical columns:
the Arrow schemas in :mod:`engine.io.outputs_schema` are the contract.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA
from engine.rules.model import KIND_NAMES, REASON_NAMES, Reason
from engine.rules.settlement import STATEFUL_DETAIL
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
    return pc.binary_join_element_wise(pa.scalar(campaign), operator_id, mykey_id, txn_id, "/")


def grants_table(v: Validated, reason: np.ndarray, points: np.ndarray, cum: np.ndarray,
                 seq: np.ndarray, source: pa.Array, campaign: str, cap: int) -> pa.Table:
    """One row per accepted transaction, in decision order."""
    mask = reason == 0
    idx = np.flatnonzero(mask)
    order = np.argsort(seq[idx], kind="stable")
    if np.all(order[1:] > order[:-1]):
        # decision order is input order (nothing waited): a filter is cheaper than a take
        def pick(a: pa.Array) -> pa.Array:
            return a.filter(pa.array(mask))
    else:
        idx = idx[order]
        take = pa.array(idx, type=pa.int64())

        def pick(a: pa.Array) -> pa.Array:
            return a.take(take)
    op = pick(v.operator_id)
    key = pick(v.mykey_id)
    txn = pick(v.txn_id)
    kinds = pa.array(KIND_NAMES, type=pa.string()).take(pa.array(v.kind[idx]))
    c = cum[idx]
    return pa.table({
        "grant_id": grant_ids(campaign, op, key, txn),
        "campaign": repeat(campaign, len(idx)),
        "mykey_id": key, "operator_id": op, "txn_id": txn, "kind": kinds,
        "amount": pa.array(v.amount[idx], type=pa.int64()),
        "points": pa.array(points[idx], type=pa.int64()),
        "cumulative_points": pa.array(c, type=pa.int64()),
        "capped": pa.array(c == cap, type=pa.bool_()),
        "occurred_at": pa.array(v.at[idx], type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "source": pick(source),
    }, schema=GRANT_SCHEMA)


def rejection_details(v: Validated, reason: np.ndarray, idx: np.ndarray) -> np.ndarray:
    det = v.detail[idx].copy()
    missing = np.array([d is None for d in det], dtype=np.bool_)
    if missing.any():
        det[missing] = [STATEFUL_DETAIL[Reason(int(r))] for r in reason[idx][missing]]
    return det


def rejections_table(v: Validated, reason: np.ndarray, seq: np.ndarray,
                     source: pa.Array) -> pa.Table:
    """One row per rejected record, in decision order."""
    idx = np.flatnonzero(reason > 0)
    idx = idx[np.argsort(seq[idx], kind="stable")]
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


def _parquet_options(t: pa.Table) -> dict[str, object]:
    cols = t.column_names
    return {
        "compression": {c: ("none" if c in _UNIQUE else "snappy") for c in cols},
        "use_dictionary": [c for c in cols if c in _REPEATING],
        "write_statistics": [c for c in cols if c not in _UNIQUE],
    }


def write_atomically(out_dir: Path, files: dict[str, pa.Table | bytes]) -> None:
    """Write every file into a temporary sibling directory, then move them in:
    a failure part-way leaves the previous outputs untouched."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir))
    try:
        for name, content in files.items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                pq.write_table(content, tmp / name, **_parquet_options(content))
        for name in files:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
