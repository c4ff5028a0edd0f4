"""The source operator of records read from Kafka: the operator of the input topic a
message was published to, or, for a record the engine re-routed, of the topic its
trusted source header names; never a header on a public topic."""

from __future__ import annotations

from collections import namedtuple

import orjson

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka.topics import FORMAT_HEADER, FORMAT_JSONL, SOURCE_HEADER, Topics
from engine.rules.model import Reason
from engine.streams.decode import InBatch, decode_messages

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


def test_a_source_header_on_a_public_topic_is_not_believed() -> None:
    forged = [(SOURCE_HEADER, b"mynapoint.aupay.transactions/3/17")]
    b = decode([Msg("mynapoint.paypay.transactions", 0, 0, TS_MS, b"AB12cd34", txn("aupay"),
                    forged)])
    assert reasons(b) == ["OPERATOR_MISMATCH"] and b.source == ["mynapoint.paypay.transactions/0/0"]


def test_a_topic_of_no_operator_skips_the_check() -> None:
    b = decode([Msg("mynapoint.transactions", 0, 0, TS_MS, b"AB12cd34", txn("aupay"), [])])
    assert reasons(b) == [None]
