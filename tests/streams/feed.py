"""One-record messages fed to a partition's settlement logic, without a broker."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Any

import orjson

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka.topics import Topics
from engine.rules.model import NO_TIME, Campaign
from engine.streams.decode import decode_messages
from engine.streams.logic import PartitionLogic
from engine.streams.shard import ShardResult
from engine.streams.state import ShardStore
from tests import builders

Msg = namedtuple("Msg", "topic partition offset timestamp key value headers")
PERSON = "Wait0001"
H = 3600 * 1000  # ms


def txn(txn_id: str, received_ms: int | None, kind: str = "purchase", person: str = PERSON,
         **extra: Any) -> dict[str, Any]:
    """A transaction (tests.builders.txn) and the time it was received (ms; None: a
    message without a timestamp, so a record without received_at)."""
    extra.setdefault("amount", 4000)
    rec = builders.txn(kind, mykey=person, at="2020-09-13T12:00:00Z", txn_id=txn_id, **extra)
    return {"rec": rec, "ts": received_ms}


class Feed:
    """One-record messages on partition 0 of one topic per record type."""

    def __init__(self, tmp: Path, campaign: Campaign = DEFAULT_CAMPAIGN,
                 topic_prefix: str = "") -> None:
        self.topic_prefix = topic_prefix
        self.campaign = campaign
        self.store = ShardStore(tmp / "p0", NO_TIME)
        self.logic = PartitionLogic(campaign, DEFAULT_REGISTRY, 1, 0, self.store)
        self.offset = 0
        self.batches = 0

    def poll(self, record_type: str, items: list[dict[str, Any]],
             topic: str | None = None, caught_up: frozenset[str] = frozenset()
             ) -> ShardResult:
        """``topic``: the input the messages arrive on (default: one that belongs to no
        operator, so no OPERATOR_MISMATCH check and one stream time)."""
        msgs = []
        for it in items:
            key = it["rec"]["mykey_id"].encode()
            msgs.append(Msg(topic or self.topic_prefix + record_type, 0, self.offset, it["ts"],
                            key, orjson.dumps(it["rec"]), None))
            self.offset += 1
        b = decode_messages(msgs, record_type, self.campaign, DEFAULT_REGISTRY, 1 << 20,
                            source_operator=Topics.operator_of)
        res = self.logic.decide(b if record_type == "enrollment" else None,
                                b if record_type == "transaction" else None, caught_up)
        self.logic.commit(self.batches)
        self.batches += 1
        return res

    def stored(self, person: str = PERSON) -> bytes:
        """The value the store holds for ``person``, who must have one."""
        raw = self.store.value(person)
        assert raw is not None, f"no state stored for {person}"
        return raw


def reasons(res: ShardResult) -> dict[str, str]:
    out = {r["txn_id"]: r["reason"] for _, r in res.rejections}
    out.update({g["txn_id"]: "granted" for _, g in res.grants})
    return out


T0 = 1_600_000_000_000  # 2020-09-13T12:26:40Z
