"""The named phases of a partition's settlement logic (engine.streams.logic):
expire, final and discard, driven without a broker. ``decide`` in any batching is
tests/streams/test_shard_batches.py."""

from __future__ import annotations

from pathlib import Path

import orjson

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.rules.settlement import settle_records
from engine.streams.decode import decode_messages
from engine.streams.state import decode_person
from tests.streams.feed import PERSON, T0, Feed, H, Msg, reasons, txn


def test_expire_decides_the_waits_stream_time_passed_without_input(tmp_path: Path) -> None:
    f = Feed(tmp_path)
    f.poll("transaction", [txn("early", T0), txn("later", T0 + 10 * H)])
    assert f.logic.waiting == 1
    # 24 h after the first record's receipt: its wait is not over yet (deadline < time)
    assert reasons(f.logic.expire((T0 + 24 * H) * 1000)) == {}
    res = f.logic.expire((T0 + 24 * H + 1) * 1000)
    assert reasons(res) == {"early": "NOT_ENROLLED"} and f.logic.waiting == 1
    assert f.logic.stream_time == (T0 + 24 * H + 1) * 1000
    f.logic.commit(f.batches)
    # stream time never goes back
    assert reasons(f.logic.expire(T0 * 1000)) == {}
    assert f.logic.stream_time == (T0 + 24 * H + 1) * 1000
    f.store.close()


def test_final_decides_every_wait_like_the_end_of_offline_input(tmp_path: Path) -> None:
    items = [txn("no-enrollment", T0), txn("refund", T0 + 1, kind="refund",
                                             original_txn_id="never", amount=100),
             txn("other", T0 + 2, person="Other001")]
    f = Feed(tmp_path)
    assert reasons(f.poll("transaction", items)) == {}
    res = f.logic.final()
    offline = settle_records([], [it["rec"] for it in items], DEFAULT_CAMPAIGN,
                             DEFAULT_REGISTRY)
    assert reasons(res) == {it["rec"]["txn_id"]: o.reason for it, o in
                             zip(items, offline, strict=True)}
    assert set(reasons(res).values()) == {"NOT_ENROLLED", "ORIGINAL_NOT_FOUND"}
    f.logic.commit(f.batches)
    assert f.logic.waiting == 0 and not f.store.parked
    f.store.close()


def test_discard_forgets_what_was_not_committed(tmp_path: Path) -> None:
    f = Feed(tmp_path)
    f.poll("transaction", [txn("kept", T0)])
    b = decode_messages([Msg("transaction", 0, 99, T0 + 1, PERSON.encode(),
                             orjson.dumps(txn("lost", T0 + 1)["rec"]), None)],
                        "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20)
    f.logic.decide(None, b)
    assert f.logic.snapshot()  # staged, not durable
    f.logic.discard()
    assert f.logic.snapshot() == {}
    parked = decode_person(f.stored()).parked
    assert [p.txn_id for p in parked] == ["kept"]
    # decided again from the checkpoint, the same record waits again
    f.logic.decide(None, b)
    f.logic.commit(f.batches)
    assert [p.txn_id for p in decode_person(f.stored()).parked] == [
        "kept", "lost"]
    f.store.close()
