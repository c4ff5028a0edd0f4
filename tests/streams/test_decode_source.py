"""The source operator of records read from Kafka: the operator of the input topic a
message was published to, or, for a record the engine re-routed, of the topic its
trusted source header names; never a header on a public topic."""

from __future__ import annotations

import itertools
from collections import namedtuple
from typing import Any

import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka.topics import (
    FORMAT_ARROW,
    FORMAT_HEADER,
    FORMAT_JSONL,
    REPLAY_HEADER,
    SOURCE_HEADER,
    Topics,
)
from engine.rules.model import Reason
from engine.streams.decode import (
    InBatch,
    concat_batches,
    decode_messages,
    parse_source,
    replay_header,
)
from tests.builders import arrow_ipc

Msg = namedtuple("Msg", "topic partition offset timestamp key value headers")
T = Topics("mynapoint")
TS_MS = 1_601_510_400_000  # 2020-10-01T00:00:00Z


def txn(op: str, i: int = 0) -> bytes:
    return orjson.dumps({"txn_id": f"t{i}", "operator_id": op, "mykey_id": "AB12cd34",
                         "kind": "purchase", "amount": 1000,
                         "occurred_at": "2020-10-01T09:00:00+09:00"})


def decode(msgs: list[Msg], internal: bool = False) -> InBatch:
    return decode_messages(msgs, "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20,
                           internal=internal, source_operator=T.operator_of)


def reasons(b: InBatch) -> list[str | None]:
    return [Reason(int(r)).name if r else None for r in b.v.reason]


def test_a_record_must_name_the_operator_of_its_topic() -> None:
    b = decode([Msg("mynapoint.paypay.transactions", 0, 0, TS_MS, b"AB12cd34", txn("paypay"), []),
                Msg("mynapoint.paypay.transactions", 0, 1, TS_MS, b"AB12cd34", txn("aupay"), []),
                Msg("mynapoint.paypay.transactions", 0, 2, TS_MS, None,
                    txn("paypay", 3) + b"\n" + txn("aupay", 4),
                    [(FORMAT_HEADER, FORMAT_JSONL)])])
    assert reasons(b) == [None, "OPERATOR_MISMATCH", None, "OPERATOR_MISMATCH"]
    assert b.v.detail[1] == ("field 'operator_id' is not 'paypay', the operator the record "
                             "came from")


def test_a_rerouted_record_keeps_the_operator_of_its_first_topic() -> None:
    origin = [(SOURCE_HEADER, b"mynapoint.aupay.transactions/3/17")]
    internal = T.reroute_transactions
    b = decode([Msg(internal, 0, 0, TS_MS, b"AB12cd34", txn("aupay"), origin),
                Msg(internal, 0, 1, TS_MS, b"AB12cd34", txn("paypay"), origin)], internal=True)
    assert reasons(b) == [None, "OPERATOR_MISMATCH"]
    # a source of no parseable position still names its topic
    odd = [(SOURCE_HEADER, b"mynapoint.aupay.transactions/3/x17")]
    b = decode([Msg(internal, 0, 2, TS_MS, b"AB12cd34", txn("paypay"), odd),
                Msg(internal, 0, 3, TS_MS, b"AB12cd34", txn("aupay"), odd)], internal=True)
    assert b.origin.tolist() == [-1, -1] and reasons(b) == ["OPERATOR_MISMATCH", None]


def test_a_source_header_on_a_public_topic_is_not_believed() -> None:
    forged = [(SOURCE_HEADER, b"mynapoint.aupay.transactions/3/17")]
    b = decode([Msg("mynapoint.paypay.transactions", 0, 0, TS_MS, b"AB12cd34", txn("aupay"),
                    forged)])
    assert reasons(b) == ["OPERATOR_MISMATCH"] and b.source == ["mynapoint.paypay.transactions/0/0"]


def test_a_topic_of_no_operator_skips_the_check() -> None:
    b = decode([Msg("mynapoint.transactions", 0, 0, TS_MS, b"AB12cd34", txn("aupay"), [])])
    assert reasons(b) == [None]


_ARROW = pa.schema([(k, pa.int64() if k == "amount" else pa.string())
                    for k in orjson.loads(txn("paypay"))])

_SOURCES = st.one_of(
    st.builds(lambda t, p, o: f"{t}/{p}/{o}", st.sampled_from(["m.t", "a/b", "x#y"]),
              st.integers(0, 9), st.integers(0, 2**40)),
    st.text(alphabet="/#0123456789ab+", max_size=10))


@st.composite
def _messages(draw: st.DrawFn) -> tuple[list[Msg], list[Msg]]:
    """Public messages (one record, a JSON Lines or Arrow chunk, empty ones too, a
    malformed one, replays) and re-routed ones whose source headers may hold anything."""
    public: list[Msg] = []
    internal: list[Msg] = []
    for offset in range(draw(st.integers(1, 6))):
        form = draw(st.sampled_from(["one", "chunk", "arrow", "bad", "replay", "rerouted"]))
        headers: list[tuple[str, bytes]] = []
        value = txn("paypay", offset)
        if form in ("chunk", "replay"):
            value = b"\n".join(txn("paypay", k) for k in range(draw(st.integers(0, 4))))
            headers.append((FORMAT_HEADER, FORMAT_JSONL))
        if form == "arrow":
            rows = [orjson.loads(txn("paypay", k)) for k in range(draw(st.integers(0, 3)))]
            value = arrow_ipc(pa.Table.from_pylist(rows, schema=_ARROW))
            headers.append((FORMAT_HEADER, FORMAT_ARROW))
        if form == "bad":
            headers.append((FORMAT_HEADER, b"no-such-format"))
        if form == "replay":
            headers.append((REPLAY_HEADER, replay_header(draw(_SOURCES), [])))
        if form == "rerouted":
            headers.append((SOURCE_HEADER, draw(_SOURCES).encode()))
            internal.append(Msg(T.reroute_transactions, 0, offset, TS_MS, b"AB12cd34", value,
                                headers))
        else:
            public.append(Msg("mynapoint.paypay.transactions", 0, offset, TS_MS,
                              b"AB12cd34", value, headers))
    return public, internal


@settings(max_examples=150, deadline=None)
@given(_messages())
def test_where_a_record_was_first_read_is_its_sources_parse(
        msgs: tuple[list[Msg], list[Msg]]) -> None:
    """The redelivery marks read a record's first topic/partition and arrival from
    ``InBatch.origins``/``origin_at`` (one parse per message): they equal the parse of
    its source string, also after public and re-routed batches are concatenated; a
    record without one (-1) is parsed from its source by the shard."""
    public, internal = msgs
    parts = [decode_messages(ms, "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20,
                             internal=trusted, replay=not trusted,
                             source_operator=T.operator_of)
             for ms, trusted in ((public, False), (internal, True)) if ms]
    b = concat_batches(parts)
    assert b is not None and len(b.origin) == len(b.origin_at) == len(b.source) == b.v.n
    for i, source in enumerate(b.source):
        k = int(b.origin[i])
        if k >= 0:
            assert (b.origins[k], int(b.origin_at[i])) == parse_source(source)
        else:
            try:
                parse_source(source)
            except ValueError:
                continue
            # parsed per record only where the message's base holds a "#"
            assert "#" in source.rpartition("#")[0], source


@settings(max_examples=150, deadline=None)
@given(_messages())
def test_records_are_counted_by_the_topic_of_their_source(
        msgs: tuple[list[Msg], list[Msg]]) -> None:
    """The worker's per-topic record counts (metrics), counted per origin, equal a
    count of every record's source topic, odd sources included."""
    from collections import Counter

    from engine.streams.decode import records_by_topic

    public, internal = msgs
    for ms, trusted in ((public, False), (internal, True)):
        if not ms:
            continue
        b = decode_messages(ms, "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20,
                            internal=trusted, replay=not trusted,
                            source_operator=T.operator_of)
        assert records_by_topic(b) == Counter(s.partition("/")[0] for s in b.source)


@settings(max_examples=150, deadline=None)
@given(_messages(), st.lists(st.integers(0, 6), max_size=4))
def test_groups_decoded_together_are_each_group_decoded_alone(
        msgs: tuple[list[Msg], list[Msg]], cuts: list[int]) -> None:
    """The worker decodes the messages of all partitions of a poll in one call and
    slices it per partition (decode_groups): each slice holds exactly what decoding
    that partition's messages alone gives, empty groups included."""
    from dataclasses import fields

    import numpy as np

    from engine.streams.decode import decode_groups

    public, internal = msgs
    for ms, trusted in ((public, False), (internal, True)):
        bounds = [0, *sorted(min(c, len(ms)) for c in cuts), len(ms)]
        groups = [ms[lo:hi] for lo, hi in itertools.pairwise(bounds)]
        kw: dict[str, Any] = {"internal": trusted, "replay": not trusted,
                              "source_operator": T.operator_of}
        whole, sliced = decode_groups(groups, "transaction", DEFAULT_CAMPAIGN,
                                      DEFAULT_REGISTRY, 1 << 20, **kw)
        assert sum(g.v.n for g in sliced) == whole.v.n
        for g, got in zip(groups, sliced, strict=True):
            alone = decode_messages(g, "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY,
                                    1 << 20, **kw)
            assert got.source == alone.source
            assert got.arrival.tolist() == alone.arrival.tolist()
            assert got.rerouted.tolist() == alone.rerouted.tolist()
            assert ([(got.origins[k] if k >= 0 else None, at) for k, at
                     in zip(got.origin.tolist(), got.origin_at.tolist(), strict=True)]
                    == [(alone.origins[k] if k >= 0 else None, at) for k, at
                        in zip(alone.origin.tolist(), alone.origin_at.tolist(), strict=True)])
            for f in fields(alone.v):
                a, b = getattr(got.v, f.name), getattr(alone.v, f.name)
                if isinstance(a, np.ndarray):
                    assert a.tolist() == b.tolist(), f.name
                elif isinstance(a, pa.Array):
                    assert a.to_pylist() == b.to_pylist(), f.name
                else:
                    assert a == b, f.name
