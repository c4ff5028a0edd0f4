"""The decoder with and without its compiled path for plain JSON records
(engine.rules.plain_json): one-record messages (their Kafka key and timestamp
included) and JSON Lines chunks, plain and odd records mixed, re-routed or not, give
the same batch, field for field, and the same bad-message counts."""

from __future__ import annotations

import dataclasses
import json
from collections import namedtuple
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.io import readers
from engine.kafka.topics import FORMAT_HEADER, FORMAT_JSONL, SOURCE_HEADER
from engine.rules.strings import END_US
from engine.rules.validate import Shaped
from engine.streams.decode import InBatch, decode_messages
from tests.poison_records import PII

Msg = namedtuple("Msg", "topic partition offset timestamp key value headers")
END_MS = END_US // 1000  # the year 10000 in Kafka's milliseconds: beyond any record
TS_MS = 1_599_955_200_000  # 2020-09-13T00:00:00Z
PERSONS = ["Plain001", "Plain002"]

real_shape_plain = readers.shape_plain


def nothing_plain(lines: list[bytes], record_type: str, limit: int | None = None
                  ) -> tuple[Shaped, np.ndarray]:
    """The compiled path switched off: every text goes the object path."""
    return real_shape_plain([], record_type, limit)[0], np.zeros(len(lines), np.bool_)


def decode(msgs: list[Msg], monkeypatch: pytest.MonkeyPatch, compiled: bool,
           internal: bool = False) -> InBatch:
    with monkeypatch.context() as mp:
        if not compiled:
            mp.setattr(readers, "shape_plain", nothing_plain)
        return decode_messages(msgs, "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 400,
                               internal=internal)


def plain_of(v: Any) -> Any:
    if isinstance(v, pa.Array):
        return v.to_pylist()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def as_dict(b: InBatch) -> dict[str, Any]:
    out = {f.name: plain_of(getattr(b.v, f.name)) for f in dataclasses.fields(b.v)}
    out.update(source=b.source, arrival=b.arrival.tolist(), rerouted=b.rerouted.tolist(),
               bad=b.bad_messages, origins=b.origins, origin=b.origin.tolist(),
               origin_at=b.origin_at.tolist())
    return out


def record(person: str, i: int, **extra: Any) -> dict[str, Any]:
    return {"txn_id": f"p-{i}", "operator_id": "paypay", "mykey_id": person,
            "kind": "purchase", "amount": 1000 + i,
            "occurred_at": "2020-09-13T10:00:00+09:00",
            "received_at": "2020-09-13T10:00:05+09:00", **extra}


# what may be done to a plain record: nothing (it stays plain), or one thing that sends
# it to the object path
ODDS: list[Any] = [
    None, None, None,
    lambda r: {**r, "note": "x"},
    lambda r: {**r, "amount": 10.5},
    lambda r: {**r, "received_at": PII},
    lambda r: {**r, "mykey_id": None},
    lambda r: {k: v for k, v in r.items() if k != "received_at"},
    lambda r: {**r, "txn_id": "é"},
    lambda r: {**r, "note": "y" * 500},  # over the decoder's record limit (400 bytes)
]


@st.composite
def texts(draw: st.DrawFn) -> bytes:
    i = draw(st.integers(0, 50))
    r = record(draw(st.sampled_from(PERSONS)), i)
    odd = draw(st.sampled_from(ODDS))
    if odd is not None:
        r = odd(r)
    if draw(st.booleans()) and not draw(st.booleans()):
        return b""  # an empty message
    return json.dumps(r, separators=(",", ":")).encode()


@st.composite
def messages(draw: st.DrawFn) -> list[Msg]:
    out = []
    for offset in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            chunk = draw(st.lists(texts(), min_size=1, max_size=4))
            out.append(Msg("t", 0, offset, None, None, b"\n".join(t or b"{}" for t in chunk),
                           [(FORMAT_HEADER, FORMAT_JSONL)]))
            continue
        text = draw(texts())
        key = draw(st.sampled_from([None, *[p.encode() for p in PERSONS]]))
        headers = ([(SOURCE_HEADER, b"t/3/7")] if draw(st.booleans()) else None)
        out.append(Msg("t", 0, offset, TS_MS + offset, key, text, headers))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(msgs=messages(), internal=st.booleans())
def test_the_compiled_path_changes_nothing(msgs: list[Msg], internal: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert as_dict(decode(msgs, monkeypatch, True, internal)) == \
        as_dict(decode(msgs, monkeypatch, False, internal))


def test_plain_one_record_messages_are_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain message's envelope: the Kafka timestamp is its received_at, and its key
    is checked against its mykey_id, on the compiled path too."""
    calls: list[int] = []

    def counting(lines: list[bytes], record_type: str, limit: int | None = None
                 ) -> tuple[Shaped, np.ndarray]:
        plain, mask = real_shape_plain(lines, record_type, limit)
        calls.append(plain.n)
        return plain, mask

    monkeypatch.setattr(readers, "shape_plain", counting)
    r = json.dumps(record("Plain001", 1)).encode()
    msgs = [Msg("t", 0, 0, TS_MS, b"Plain001", r, None),
            Msg("t", 0, 1, TS_MS + 1, b"Plain002", r, None),
            Msg("t", 0, 2, TS_MS + 2, None, r, None)]
    b = decode_messages(msgs, "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20)
    assert calls == [3]
    assert b.v.received.tolist() == [(TS_MS + k) * 1000 for k in range(3)]
    assert b.bad_messages == {"wrong_key": 1, "no_key": 1}


@st.composite
def envelopes(draw: st.DrawFn) -> list[Msg]:
    """Messages of a poll's partitions, as the worker decodes them in one call: runs of
    header-less one-record messages of a topic-partition, broken by another
    partition's or by a message with headers (a chunk, a re-routed record), with any
    Kafka timestamp (none, negative, beyond the year 9999), key and value (none too)."""
    out = []
    next_offset: dict[tuple[str, int], int] = {}
    for _ in range(draw(st.integers(1, 12))):
        tp = (draw(st.sampled_from(["t", "u"])), draw(st.integers(0, 1)))
        offset = next_offset[tp] = next_offset.get(tp, draw(st.integers(0, 2**40))) + 1
        ts = draw(st.sampled_from([TS_MS, TS_MS + offset, None, -1, 0, END_MS - 1, END_MS,
                                   2**62]))
        key = draw(st.sampled_from([None, *[p.encode() for p in PERSONS]]))
        value = draw(st.one_of(texts(), st.none()))
        headers = draw(st.sampled_from([None, [], [(SOURCE_HEADER, b"t/3/7")],
                                        [(FORMAT_HEADER, FORMAT_JSONL)]]))
        out.append(Msg(*tp, offset, ts, key, value, headers))
    return out


@settings(max_examples=200, deadline=None)
@given(msgs=envelopes(), internal=st.booleans())
def test_runs_of_header_less_messages_decode_as_each_message_alone(
        msgs: list[Msg], internal: bool) -> None:
    """Header-less messages are decoded a run at a time; a header the engine does not
    read sends each message the general way, one by one: both give the same batch,
    field for field, with the same first record per message (``starts``)."""
    def run(ms: list[Msg]) -> tuple[dict[str, Any], list[int]]:
        starts: list[int] = []
        b = decode_messages(ms, "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 400,
                            internal=internal, starts=starts)
        return as_dict(b), starts

    one_by_one = [m._replace(headers=[*(m.headers or []), ("traceparent", b"00-1")])
                  for m in msgs]
    assert run(msgs) == run(one_by_one)
