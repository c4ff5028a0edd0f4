"""The streaming decider without a broker: records whose wait is already over are
decided at once, and a person's state stays bounded (PERSON_LIMIT), the same way
offline ``settle`` decides."""

from __future__ import annotations

import dataclasses
from collections import namedtuple
from pathlib import Path
from typing import Any

import orjson

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.rules.model import NO_TIME, Campaign
from engine.rules.settlement import settle_records
from engine.streams.decode import decode_messages
from engine.streams.logic import PartitionLogic
from engine.streams.shard import ShardResult
from engine.streams.state import ShardStore, decode_person
from tests.builders import txn

Msg = namedtuple("Msg", "topic partition offset timestamp key value headers")
PERSON = "Wait0001"
H = 3600 * 1000  # ms


def _txn(txn_id: str, received_ms: int, kind: str = "purchase", person: str = PERSON,
         **extra: Any) -> dict[str, Any]:
    rec = {**txn(kind, 4000, txn_id=txn_id, mykey=person, at="2020-09-13T12:00:00Z"), **extra}
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

    def poll(self, record_type: str, items: list[dict[str, Any]]) -> ShardResult:
        msgs = []
        for it in items:
            key = it["rec"]["mykey_id"].encode()
            msgs.append(Msg(self.topic_prefix + record_type, 0, self.offset, it["ts"], key,
                            orjson.dumps(it["rec"]), None))
            self.offset += 1
        b = decode_messages(msgs, record_type, self.campaign, DEFAULT_REGISTRY, 1 << 20)
        res = self.logic.decide(b if record_type == "enrollment" else None,
                                b if record_type == "transaction" else None)
        self.logic.commit(self.batches)
        self.batches += 1
        return res


def _reasons(res: ShardResult) -> dict[str, str]:
    out = {r["txn_id"]: r["reason"] for _, r in res.rejections}
    out.update({g["txn_id"]: "granted" for _, g in res.grants})
    return out


T0 = 1_600_000_000_000  # 2020-09-13T12:26:40Z


def test_a_record_arriving_after_its_deadline_is_decided_at_once(tmp_path: Path) -> None:
    f = Feed(tmp_path)
    # stream time moves to T0 + 30 h with somebody else's record
    f.poll("transaction", [_txn("other", T0 + 30 * H, person="Other001")])
    # received 25 h before stream time (e.g. re-routed late): its 24 h wait is over
    res = f.poll("transaction", [_txn("late-charge", T0 + 5 * H),
                                 _txn("late-refund", T0 + 5 * H, kind="refund",
                                      original_txn_id="never", amount=100)])
    assert _reasons(res) == {"late-charge": "NOT_ENROLLED", "late-refund": "ORIGINAL_NOT_FOUND"}
    assert PERSON not in f.store.parked  # (only Other001 waits)
    # a record still inside its wait does wait
    res = f.poll("transaction", [_txn("in-time", T0 + 7 * H)])
    assert _reasons(res) == {} and PERSON in f.store.parked
    f.store.close()


def test_a_wait_that_ends_with_the_last_record_of_a_batch_ends_in_that_batch(
        tmp_path: Path) -> None:
    f = Feed(tmp_path)
    assert _reasons(f.poll("transaction", [_txn("waits", T0)])) == {}
    # the only other record moves stream time past the deadline: decided now, not later
    res = f.poll("transaction", [_txn("mover", T0 + 25 * H, person="Other001")])
    assert _reasons(res)["waits"] == "NOT_ENROLLED"
    assert PERSON not in f.store.parked
    f.store.close()


def test_expire_decides_the_waits_stream_time_passed_without_input(tmp_path: Path) -> None:
    f = Feed(tmp_path)
    f.poll("transaction", [_txn("early", T0), _txn("later", T0 + 10 * H)])
    assert f.logic.waiting == 1
    # 24 h after the first record's receipt: its wait is not over yet (deadline < time)
    assert _reasons(f.logic.expire((T0 + 24 * H) * 1000)) == {}
    res = f.logic.expire((T0 + 24 * H + 1) * 1000)
    assert _reasons(res) == {"early": "NOT_ENROLLED"} and f.logic.waiting == 1
    assert f.logic.stream_time == (T0 + 24 * H + 1) * 1000
    f.logic.commit(f.batches)
    # stream time never goes back
    assert _reasons(f.logic.expire(T0 * 1000)) == {}
    assert f.logic.stream_time == (T0 + 24 * H + 1) * 1000
    f.store.close()


def test_final_decides_every_wait_like_the_end_of_offline_input(tmp_path: Path) -> None:
    items = [_txn("no-enrollment", T0), _txn("refund", T0 + 1, kind="refund",
                                             original_txn_id="never", amount=100),
             _txn("other", T0 + 2, person="Other001")]
    f = Feed(tmp_path)
    assert _reasons(f.poll("transaction", items)) == {}
    res = f.logic.final()
    offline = settle_records([], [it["rec"] for it in items], DEFAULT_CAMPAIGN,
                             DEFAULT_REGISTRY)
    assert _reasons(res) == {it["rec"]["txn_id"]: o.reason for it, o in
                             zip(items, offline, strict=True)}
    assert set(_reasons(res).values()) == {"NOT_ENROLLED", "ORIGINAL_NOT_FOUND"}
    f.logic.commit(f.batches)
    assert f.logic.waiting == 0 and not f.store.parked
    f.store.close()


def test_discard_forgets_what_was_not_committed(tmp_path: Path) -> None:
    f = Feed(tmp_path)
    f.poll("transaction", [_txn("kept", T0)])
    b = decode_messages([Msg("transaction", 0, 99, T0 + 1, PERSON.encode(),
                             orjson.dumps(_txn("lost", T0 + 1)["rec"]), None)],
                        "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20)
    f.logic.decide(None, b)
    assert f.logic.snapshot()  # staged, not durable
    f.logic.discard()
    assert f.logic.snapshot() == {}
    parked = decode_person(f.store.db[PERSON.encode()]).parked
    assert [p.txn_id for p in parked] == ["kept"]
    # decided again from the checkpoint, the same record waits again
    f.logic.decide(None, b)
    f.logic.commit(f.batches)
    assert [p.txn_id for p in decode_person(f.store.db[PERSON.encode()]).parked] == [
        "kept", "lost"]
    f.store.close()


def test_person_limit_bounds_the_state_and_matches_offline(tmp_path: Path) -> None:
    campaign = dataclasses.replace(DEFAULT_CAMPAIGN, person_limit=50)
    f = Feed(tmp_path, campaign)
    items = [_txn(f"t{i:04d}", T0 + i) for i in range(400)]
    got: dict[str, str] = {}
    for k in range(0, 400, 64):
        got.update(_reasons(f.poll("transaction", items[k:k + 64])))
    # the first 50 wait for an enrollment (they keep state); the rest is refused
    assert sum(r == "PERSON_LIMIT" for r in got.values()) == 350
    assert f.store.parked[PERSON] == T0 * 1000 + campaign.park_timeout  # the first one's
    st = decode_person(f.store.db[PERSON.encode()])
    assert len(st.txns) == 50 and len(st.parked) == 50
    f.store.close()
    offline = settle_records([], [it["rec"] for it in items], campaign, DEFAULT_REGISTRY)
    assert {items[o.index]["rec"]["txn_id"]: o.reason for o in offline
            if o.reason == "PERSON_LIMIT"} == {k: v for k, v in got.items()
                                               if v == "PERSON_LIMIT"}


def test_shipped_limit_keeps_a_full_person_under_the_broker_message_size(
        tmp_path: Path) -> None:
    """A person at the shipped limit with the longest ids the contract allows:
    the state blob (one changelog message) stays under 1 MiB, Kafka's default."""
    limit = DEFAULT_CAMPAIGN.person_limit
    f = Feed(tmp_path, topic_prefix="mynapoint-production-2020." * 4)
    longest = "x" * 48
    items = [_txn(f"{longest}{i:016d}", T0 + i, kind="refund", original_txn_id=f"o{i}",
                  amount=1) for i in range(limit + 10)]
    for k in range(0, len(items), 1000):
        f.poll("transaction", items[k:k + 1000])
    blob = f.store.db[PERSON.encode()]
    assert len(decode_person(blob).txns) == limit
    assert len(blob) < 1 << 20, len(blob)
    f.store.close()


def test_stream_time_is_every_transaction_timestamp_and_no_enrollment(
        tmp_path: Path) -> None:
    """The rules page's definition: the largest record timestamp seen on the
    partition holding the waiting record (its transactions topic). A malformed
    record's timestamp counts; an enrollment's does not."""
    f = Feed(tmp_path)
    assert _reasons(f.poll("transaction", [_txn("waits", T0)])) == {}
    enr = {"rec": {"mykey_id": "Other001", "operator_id": "paypay",
                   "applied_at": "2020-09-01T09:00:00+09:00"}, "ts": T0 + 50 * H}
    f.poll("enrollment", [enr])
    assert PERSON in f.store.parked and f.store.meta.stream_time == T0 * 1000
    bad = {"rec": {"mykey_id": "Other001", "txn_id": 5}, "ts": T0 + 25 * H}
    res = f.poll("transaction", [bad])
    assert _reasons(res) == {"waits": "NOT_ENROLLED", None: "MALFORMED"}
    assert f.store.meta.stream_time == (T0 + 25 * H) * 1000
    f.store.close()


def test_a_late_far_future_record_does_not_expire_every_wait(tmp_path: Path) -> None:
    """A record received in year 9999 is LATE; it must not move stream time there
    (which would decide every waiting record of the partition at once)."""
    f = Feed(tmp_path)
    assert _reasons(f.poll("transaction", [_txn("waits", T0)])) == {}
    rogue = _txn("rogue", 253_402_300_000_000, person="Other001")  # 9999-12-31
    res = f.poll("transaction", [rogue])
    assert _reasons(res) == {"rogue": "LATE"}
    assert PERSON in f.store.parked and f.store.meta.stream_time == T0 * 1000
    f.store.close()
