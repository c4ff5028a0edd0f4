"""The streaming decider without a broker: records whose wait is already over are
decided at once, and a person's state stays bounded (PERSON_LIMIT), the same way
offline ``settle`` decides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.rules.settlement import settle_records
from engine.streams.state import NO_DEADLINE, decode_person
from tests.streams.feed import PERSON, T0, Feed, H, reasons, txn


def test_a_record_arriving_after_its_deadline_is_decided_at_once(tmp_path: Path) -> None:
    f = Feed(tmp_path)
    # stream time moves to T0 + 30 h with somebody else's record
    f.poll("transaction", [txn("other", T0 + 30 * H, person="Other001")])
    # received 25 h before stream time (e.g. re-routed late): its 24 h wait is over
    res = f.poll("transaction", [txn("late-charge", T0 + 5 * H),
                                 txn("late-refund", T0 + 5 * H, kind="refund",
                                      original_txn_id="never", amount=100)])
    assert reasons(res) == {"late-charge": "NOT_ENROLLED", "late-refund": "ORIGINAL_NOT_FOUND"}
    assert PERSON not in f.store.parked  # (only Other001 waits)
    # a record still inside its wait does wait
    res = f.poll("transaction", [txn("in-time", T0 + 7 * H)])
    assert reasons(res) == {} and PERSON in f.store.parked
    f.store.close()


def test_a_wait_that_ends_with_the_last_record_of_a_batch_ends_in_that_batch(
        tmp_path: Path) -> None:
    f = Feed(tmp_path)
    assert reasons(f.poll("transaction", [txn("waits", T0)])) == {}
    # the only other record moves stream time past the deadline: decided now, not later
    res = f.poll("transaction", [txn("mover", T0 + 25 * H, person="Other001")])
    assert reasons(res)["waits"] == "NOT_ENROLLED"
    assert PERSON not in f.store.parked
    f.store.close()


def test_person_limit_bounds_the_state_and_matches_offline(tmp_path: Path) -> None:
    campaign = dataclasses.replace(DEFAULT_CAMPAIGN, person_limit=50)
    f = Feed(tmp_path, campaign)
    items = [txn(f"t{i:04d}", T0 + i) for i in range(400)]
    got: dict[str, str] = {}
    for k in range(0, 400, 64):
        res = f.poll("transaction", items[k:k + 64])
        got.update(reasons(res))
    # the first 50 wait for an enrollment (they keep state); the rest is refused
    assert sum(r == "PERSON_LIMIT" for r in got.values()) == 350
    # the parked gauge counts the records that wait, not the people
    assert res.parked == 50 and len(f.store.parked) == 1
    assert f.store.parked[PERSON] == T0 * 1000 + campaign.park_timeout  # the first one's
    st = decode_person(f.stored())
    assert st.n_entries == 50 and len(st.parked) == 50
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
    items = [txn(f"{longest}{i:016d}", T0 + i, kind="refund", original_txn_id=f"o{i}",
                  amount=1) for i in range(limit + 10)]
    for k in range(0, len(items), 1000):
        f.poll("transaction", items[k:k + 1000])
    blob = f.stored()
    assert decode_person(blob).n_entries == limit
    assert len(blob) < 1 << 20, len(blob)
    f.store.close()


def test_stream_time_is_every_transaction_timestamp_and_no_enrollment(
        tmp_path: Path) -> None:
    """The rules page's definition: the largest record timestamp seen on the
    partition holding the waiting record (its transactions topic). A malformed
    record's timestamp counts; an enrollment's does not."""
    f = Feed(tmp_path)
    assert reasons(f.poll("transaction", [txn("waits", T0)])) == {}
    enr = {"rec": {"mykey_id": "Other001", "operator_id": "paypay",
                   "applied_at": "2020-09-01T09:00:00+09:00"}, "ts": T0 + 50 * H}
    f.poll("enrollment", [enr])
    assert PERSON in f.store.parked and f.store.meta.stream_time == T0 * 1000
    bad = {"rec": {"mykey_id": "Other001", "txn_id": 5}, "ts": T0 + 25 * H}
    res = f.poll("transaction", [bad])
    assert reasons(res) == {"waits": "NOT_ENROLLED", None: "MALFORMED"}
    assert f.store.meta.stream_time == (T0 + 25 * H) * 1000
    f.store.close()


def test_a_late_far_future_record_does_not_expire_every_wait(tmp_path: Path) -> None:
    """A record received in year 9999 is LATE; it must not move stream time there
    (which would decide every waiting record of the partition at once)."""
    f = Feed(tmp_path)
    assert reasons(f.poll("transaction", [txn("waits", T0)])) == {}
    rogue = txn("rogue", 253_402_300_000_000, person="Other001")  # 9999-12-31
    res = f.poll("transaction", [rogue])
    assert reasons(res) == {"rogue": "LATE"}
    assert PERSON in f.store.parked and f.store.meta.stream_time == T0 * 1000
    f.store.close()


def test_one_operators_input_running_ahead_does_not_end_anothers_waits(
        tmp_path: Path) -> None:
    """Stream time is per input (the rules: "the input partition that holds the
    waiting record"): with a topic per operator, another operator's records do not
    end a wait, the waiting record's own input does."""
    f = Feed(tmp_path)
    paypay, aupay = "m.paypay.transactions", "m.aupay.transactions"
    refund = txn("refund", T0, kind="refund", original_txn_id="orig", amount=100)
    assert reasons(f.poll("transaction", [refund], topic=paypay)) == {}
    res = f.poll("transaction", [txn("ahead", T0 + 50 * H, person="Other001", op="aupay")],
                 topic=aupay)
    assert "refund" not in reasons(res) and PERSON in f.store.parked
    res = f.poll("transaction", [txn("mover", T0 + 25 * H, person="Other002")], topic=paypay)
    assert reasons(res)["refund"] == "ORIGINAL_NOT_FOUND"
    assert f.store.meta.lanes == {"paypay": (T0 + 25 * H) * 1000,
                                  "aupay": (T0 + 50 * H) * 1000}
    assert f.store.meta.stream_time == (T0 + 50 * H) * 1000  # the partition's, for metrics
    f.store.close()


def test_the_waits_of_an_input_read_to_its_end_follow_the_partition_clock(
        tmp_path: Path) -> None:
    """An operator that went quiet (nothing unread on its topic) must not hold its
    waiting records for ever: after a batch they end by the partition's clock."""
    f = Feed(tmp_path)
    paypay, aupay = "m.paypay.transactions", "m.aupay.transactions"
    refund = txn("refund", T0, kind="refund", original_txn_id="orig", amount=100)
    assert reasons(f.poll("transaction", [refund], topic=paypay)) == {}
    ahead = txn("ahead", T0 + 50 * H, person="Other001", op="aupay")
    assert "refund" not in reasons(f.poll("transaction", [ahead], topic=aupay))
    more = txn("more", T0 + 51 * H, person="Other001", op="aupay")
    res = f.poll("transaction", [more], topic=aupay, caught_up=frozenset({"paypay"}))
    assert reasons(res)["refund"] == "ORIGINAL_NOT_FOUND"
    assert f.store.meta.lanes["paypay"] == T0 * 1000  # its own clock did not move
    f.store.close()


def test_a_record_on_another_operators_topic_is_a_mismatch_and_changes_nothing(
        tmp_path: Path) -> None:
    """A forged record (claims aupay, published on paypay's input) gets one
    OPERATOR_MISMATCH and leaves the person as if it never existed."""
    f = Feed(tmp_path)
    enr = {"rec": {"mykey_id": PERSON, "operator_id": "aupay",
                   "applied_at": "2020-09-01T09:00:00+09:00"}, "ts": T0}
    res = f.poll("enrollment", [enr], topic="m.paypay.enrollments")
    assert [(r["reason"], r["operator_id"]) for _, r in res.rejections] == [
        ("OPERATOR_MISMATCH", "aupay")]
    assert f.store.value(PERSON) is None  # no state at all
    forged = txn("t1", T0, kind="charge", op="aupay")
    res = f.poll("transaction", [forged], topic="m.paypay.transactions")
    assert reasons(res) == {"t1": "OPERATOR_MISMATCH"}
    # the genuine aupay records, on aupay's inputs: decided as if nothing came before
    assert reasons(f.poll("enrollment", [enr], topic="m.aupay.enrollments")) == {}
    res = f.poll("transaction", [txn("t1", T0 + H, kind="charge", op="aupay")],
                 topic="m.aupay.transactions")
    assert [g["txn_id"] for _, g in res.grants] == ["t1"] and reasons(res) == {"t1": "granted"}
    f.store.close()


def test_a_record_without_received_at_waits_for_its_enrollment(tmp_path: Path) -> None:
    """A record without ``received_at`` (a chunk's record, a message without a
    timestamp) has no deadline: stream time moving on must not end its wait — it
    waits for its enrollment and, failing that, for the end of the input (the rules
    page: "a record without received_at is never late"; offline it would wait to the
    end too)."""
    f = Feed(tmp_path)
    nots = txn("no-time", None)
    assert reasons(f.poll("transaction", [nots])) == {}
    assert f.store.parked[PERSON] == NO_DEADLINE + f.campaign.park_timeout
    # somebody else's records move stream time far past any deadline
    res = f.poll("transaction", [txn("mover", T0 + 50 * H, person="Other001")])
    assert "no-time" not in reasons(res)
    assert PERSON in f.store.parked
    # counted as waiting, but never among the people a later batch reloads for expiry
    assert PERSON not in f.store.parked.due_before(253_402_300_800_000_000)  # year 9999
    # the refund of a record without received_at waits for its original the same way
    rf = txn("no-time-refund", None, kind="refund", original_txn_id="later", amount=100)
    assert reasons(f.poll("transaction", [rf])) == {}
    res = f.poll("transaction", [txn("mover2", T0 + 80 * H, person="Other001")])
    assert "no-time-refund" not in reasons(res)
    enr = {"rec": {"mykey_id": PERSON, "operator_id": "paypay",
                   "applied_at": "2020-09-01T09:00:00+09:00"}, "ts": T0 + 81 * H}
    res = f.poll("enrollment", [enr])
    assert reasons(res) == {"no-time": "granted"}
    # a timed wait beside it ends by its own deadline, the timeless one goes on
    f.poll("transaction", [txn("timed", T0 + 81 * H, kind="refund", original_txn_id="x",
                               amount=100)])
    res = f.poll("transaction", [txn("mover3", T0 + 106 * H, person="Other001")])
    assert reasons(res)["timed"] == "ORIGINAL_NOT_FOUND" and "no-time-refund" not in reasons(res)
    assert f.store.parked[PERSON] == NO_DEADLINE + f.campaign.park_timeout
    # the end of the input decides it, as offline
    assert reasons(f.logic.final()) == {"no-time-refund": "ORIGINAL_NOT_FOUND",
                                        "mover3": "NOT_ENROLLED"}
    f.store.close()
