"""When an operator's input counts as quiet, on the real broker (DECISIONS 78, 112).

A refund waits up to 24 h of its own input's stream time for its original. Another
operator's input running days ahead must not end that wait while the refund's input
is merely read to its end — its publisher may be stalled behind a leader change —
but once the input has delivered nothing for ``--quiet-seconds``, its waits follow
the partition's stream time, and do so without any further input arriving.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from aiokafka import TopicPartition

from engine.devtools import broker as devbroker
from engine.rules.strings import kafka_partitions
from engine.tools.collect import collect
from engine.tools.publish import publish_files
from tests.builders import write_lines
from tests.kafka_fixtures import read_topic
from tests.streams.harness import PARTITIONS, topics_for, worker
from tests.streams.worker_fakes import unit_worker

QUIET = 10.0
A, B = "paypay", "aupay"


def _same_partition_keys(n: int) -> list[str]:
    """``n`` mykey_ids of one Kafka partition: their records meet in one shard."""
    keys = [f"Quiet{i:03d}" for i in range(200)]
    parts = kafka_partitions(pa.array([k.encode() for k in keys], pa.binary()), PARTITIONS)
    same = [k for k, p in zip(keys, parts.tolist(), strict=True) if p == parts[0]]
    return same[:n]


def _txn(txn_id: str, operator: str, person: str, kind: str, received: str,
         original: str | None = None) -> bytes:
    rec = {"txn_id": txn_id, "operator_id": operator, "mykey_id": person, "kind": kind,
           "amount": 2000, "occurred_at": received, "received_at": received}
    if original:
        rec["original_txn_id"] = original
    return orjson.dumps(rec)


def _publish(bootstrap: str, prefix: str, directory: Path, enrollments: list[bytes],
             transactions: list[bytes]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    enr = write_lines(directory / "e.jsonl", enrollments) if enrollments else None
    txn = write_lines(directory / "t.jsonl", transactions)
    asyncio.run(publish_files(bootstrap, topics_for(prefix), enr, txn, batch=1,
                              partitions=PARTITIONS))


def test_quiet_counts_only_time_the_input_could_be_seen(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker away (fetches unanswered) restarts an input's quiet period: its
    publisher may be stalled by the same fault, so the outage is not quiet time."""
    w, c = unit_worker(tmp_path, quiet_seconds=30)
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    monkeypatch.setattr(time, "time", lambda: now[0])
    tp = TopicPartition("t.paypay.transactions", 0)

    def quiet_after(seconds: float, answered: bool = True) -> bool:
        now[0] += seconds
        if answered:
            c.told[tp] = (0, now[0] * 1000)
        return w._quiet(tp)

    assert not quiet_after(0)        # never fetched from: cannot tell
    assert not quiet_after(0)        # its period starts now
    assert not quiet_after(29)
    assert quiet_after(1)            # 30 s of answered fetches, nothing delivered
    assert not quiet_after(6, answered=False)  # fetches lapsed: restarts
    assert not quiet_after(29)
    assert quiet_after(1)
    w._active[tp] = now[0]           # a record arrived (Worker.step)
    assert not quiet_after(29)
    assert quiet_after(1)


@pytest.mark.kafka
def test_a_stalled_input_keeps_its_waits_and_a_quiet_one_ends_them_unprompted(
        kafka_broker: devbroker.Broker, topic_prefix, tmp_path: Path, runtime: str) -> None:
    bootstrap, prefix = kafka_broker.bootstrap, topic_prefix()
    x, y = _same_partition_keys(2)
    w = worker(bootstrap, prefix, tmp_path / "w", runtime=runtime, quiet=QUIET).start()
    try:
        w.wait_for("assigned partitions [0, 1, 2, 3]")
        # A's refund arrives before its original; B's spending runs four days ahead
        # on the same partition, far past the refund's 24 h wait
        _publish(bootstrap, prefix, tmp_path / "first", [
            orjson.dumps({"mykey_id": x, "operator_id": A,
                          "applied_at": "2020-09-01T09:00:00+09:00"}),
            orjson.dumps({"mykey_id": y, "operator_id": B,
                          "applied_at": "2020-09-01T09:00:00+09:00"})], [
            _txn("r1", A, x, "refund", "2020-10-01T01:00:00Z", original="p1"),
            _txn("b1", B, y, "charge", "2020-10-05T01:00:00Z")])
        sent = time.monotonic()
        # B's charge decided: the partition's stream time is four days past the refund
        grants, _ = asyncio.run(collect(bootstrap, topics_for(prefix), expect=1,
                                        idle_timeout=QUIET / 2))
        assert grants["txn_id"].to_pylist() == ["b1"]
        # A's input was read to its end but not quiet for QUIET: the original, late
        # like a publisher stalled behind a leader change, still finds the refund
        assert time.monotonic() - sent < QUIET - 2, "too slow to show a stalled input"
        # ... and a second refund whose original never comes
        _publish(bootstrap, prefix, tmp_path / "second", [], [
            _txn("p1", A, x, "purchase", "2020-10-01T01:30:00Z"),
            _txn("r2", A, x, "refund", "2020-10-01T02:00:00Z", original="never")])
        published_ms = time.time() * 1000
        # nothing more is published: only the idle worker can end r2's wait
        grants, rejections = asyncio.run(collect(bootstrap, topics_for(prefix), expect=4,
                                                 idle_timeout=QUIET * 3))
    finally:
        w.stop()
    assert sorted(grants["txn_id"].to_pylist()) == ["b1", "p1", "r1"], rejections.to_pylist()
    assert [(r["txn_id"], r["reason"]) for r in rejections.to_pylist()] == [
        ("r2", "ORIGINAL_NOT_FOUND")]
    stamps = [m.timestamp for m in asyncio.run(read_topic(
        bootstrap, topics_for(prefix).outcome_topic("rejection", A), PARTITIONS))]
    # r2's wait ended once A's input had been quiet for QUIET seconds, not before
    waited = (stamps[0] - published_ms) / 1000
    assert QUIET - 1 <= waited <= QUIET + 15, waited
