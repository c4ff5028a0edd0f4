"""engine.kafka.record_batch writes the bytes aiokafka's own batch builder writes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from aiokafka.record import default_records
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from aiokafka.record.util import calc_crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.kafka.record_batch import pick_crc32c, record_batches

TS = 1_601_510_400_123


# aiokafka's reference builder in Python; the compiled one (what the producer uses)
# writes the same bytes but may start a new batch a little earlier near the limit
_PY_BUILDER = default_records._DefaultRecordBatchBuilderPy


def _aiokafka(msgs: list[tuple[bytes | None, bytes | None]], max_bytes: int,
              state: tuple[int, int, int] | None, headers: list[tuple[str, bytes]],
              builder: type = DefaultRecordBatchBuilder) -> list[bytes]:
    """What aiokafka's builder makes of ``msgs`` appended in turn (a new batch when
    one is full), with the producer state the producer would set."""
    out: list[bytes] = []
    b: Any = None
    j = 0

    def finish() -> None:
        assert b is not None
        if state is not None:
            b.set_producer_state(*state)
        out.append(bytes(b.build()))

    for key, value in msgs:
        if b is not None and b.append(j, TS, key, value, headers) is not None:
            j += 1
            continue
        if b is not None:
            finish()
        b = builder(2, 0, 0, -1, -1, 0, max_bytes)
        assert b.append(0, TS, key, value, headers) is not None
        j = 1
    if b is not None:
        finish()
    return out


_MSG = st.tuples(st.one_of(st.none(), st.binary(max_size=40)),
                 st.one_of(st.none(), st.binary(max_size=300)))
_HEADERS = st.lists(st.tuples(st.text(max_size=10), st.binary(max_size=70)), max_size=3)


@settings(max_examples=200, deadline=None)
@given(msgs=st.lists(_MSG, max_size=60), max_bytes=st.sampled_from([100, 700, 1 << 20]),
       state=st.one_of(st.none(), st.tuples(st.integers(0, 2**40), st.integers(0, 300),
                                            st.integers(0, 2**30))),
       headers=_HEADERS, shuffle=st.randoms())
def test_same_bytes_as_aiokafka(msgs: list[tuple[bytes | None, bytes | None]], max_bytes: int,
                                state: tuple[int, int, int] | None,
                                headers: list[tuple[str, bytes]], shuffle) -> None:  # type: ignore[no-untyped-def]
    # the messages of one partition are picked out of a larger column, in order
    pool = msgs + [(b"other", b"not sent")] * 3
    pos = list(range(len(pool)))
    shuffle.shuffle(pos)
    keys: list[bytes | None] = [b""] * len(pool)
    values: list[bytes | None] = [b""] * len(pool)
    for (k, v), at in zip(pool, pos, strict=True):
        keys[at], values[at] = k, v
    rows = np.array(pos[:len(msgs)], dtype=np.int64)
    got = record_batches(pa.array(keys, pa.binary()), pa.array(values, pa.large_binary()),
                         rows, max_bytes, headers, TS)
    if state is not None:
        for g in got:
            g._set_producer_state(*state)
    want = _aiokafka(msgs, max_bytes, state, headers, _PY_BUILDER)
    assert [g._build() for g in got] == want
    if max_bytes == 1 << 20:  # no split near: also what the producer's builder writes
        assert want == _aiokafka(msgs, max_bytes, state, headers)
    for g in got:
        assert g.size() <= max_bytes or g.record_count() == 1
    assert [g.record_count() for g in got] == [DefaultRecordBatch(w).next_offset
                                               for w in want]
    for g in got:
        assert DefaultRecordBatch(bytearray(g._build())).validate_crc()


def test_checksum_follows_the_producer_state() -> None:
    [b] = record_batches(pa.array([b"k"]), pa.array([b"v"]), np.array([0]), 1 << 20,
                         timestamp_ms=TS)
    first = bytes(b._build())  # the batch itself is handed over, and changes
    b._set_producer_state(7, 1, 42)  # a retry under a new producer epoch
    again = DefaultRecordBatch(bytearray(b._build()))
    assert again.validate_crc() and b._build() != first
    assert (again.producer_id, again.producer_epoch, again.base_sequence) == (7, 1, 42)
    assert [(r.key, r.value, r.timestamp) for r in again] == [(b"k", b"v", TS)]


@pytest.mark.parametrize("implementation", ["c", "python"])
def test_either_checksum_is_kafkas_crc32c(implementation: str) -> None:
    """google-crc32c's where it is compiled, aiokafka's where google-crc32c would fall
    back to pure Python: both Kafka's CRC-32C."""
    data = bytes(range(256)) * 41
    assert pick_crc32c(implementation)(data) == calc_crc32c(data)
    assert (pick_crc32c(implementation) is calc_crc32c) == (implementation != "c")
