"""The output columns made by compiled code: against the plain Python they replace."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.io.outputs import grant_ids
from engine.io.readers import sources
from engine.rules.strings import buffers, string_array

_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20), st.lists(st.tuples(_TEXT, _TEXT, _TEXT), max_size=30),
       st.integers(0, 3))
def test_grant_ids_join_campaign_operator_person_and_txn(
        campaign: str, rows: list[tuple[str, str, str]], skip: int) -> None:
    # columns that are slices of larger arrays (offset buffers), as row groups are
    pad = [("x", "y", "z")] * skip
    cols = [pa.array([r[k] for r in pad + rows], pa.string())[skip:] for k in range(3)]
    got = grant_ids(campaign, *cols)
    assert got.type == pa.string()
    assert got.to_pylist() == [f"{campaign}/{op}/{key}/{txn}" for op, key, txn in rows]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20), st.lists(st.integers(0, 2**63 - 1), max_size=40))
def test_sources_name_each_position(name: str, positions: list[int]) -> None:
    got = sources(name, np.array(positions, dtype=np.int64))
    assert got.type == pa.string()
    assert got.to_pylist() == [f"{name}:{p}" for p in positions]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), _TEXT), max_size=30))
def test_string_array_is_the_inverse_of_buffers(values: list[str | None]) -> None:
    arr = pa.array(values, pa.string())
    back = string_array(*buffers(arr))
    assert back.type == pa.string() and back.to_pylist() == values
    big = string_array(np.array([0, 2**31], np.int64), np.zeros(2**31, np.uint8))
    assert big.type == pa.large_string() and len(big) == 1
