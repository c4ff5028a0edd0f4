"""Input deleted by time-based retention before any worker read it (a worker down
longer than ``MYNAPOINT_INPUT_RETENTION``): the restarted worker neither hangs
nor skips it silently."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from engine.cli import main as cli
from engine.devtools import broker as devbroker
from engine.kafka.client_config import ENV, default_client
from engine.kafka.topics import ensure_topics, partition_for
from engine.tools.collect import collect
from tests.builders import enr_topic, txn_topic
from tests.streams.harness import PARTITIONS, topics_for, worker
from tests.test_cli import mynapoint

pytestmark = pytest.mark.kafka

WHEN = "2020-09-02T12:00:00+09:00"
PERSON = "Zz00aa50"
P = partition_for(PERSON.encode(), PARTITIONS)


def _txn(txn_id: str, person: str = PERSON) -> bytes:
    return orjson.dumps({"txn_id": txn_id, "operator_id": "paypay", "mykey_id": person,
                         "kind": "purchase", "amount": 1000, "occurred_at": WHEN})


async def _send(bootstrap: str, msgs: list[tuple[str, bytes]], ahead_ms: int = 0,
                person: str = PERSON) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client())
    await p.start()
    try:
        for topic, value in msgs:
            await p.send_and_wait(topic, value, key=person.encode(),
                                  partition=partition_for(person.encode(), PARTITIONS),
                                  timestamp_ms=int(time.time() * 1000) + ahead_ms)
    finally:
        await p.stop()


async def _log_start(bootstrap: str, topic: str) -> int:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client())
    await c.start()
    try:
        tp = TopicPartition(topic, P)
        return int((await c.beginning_offsets([tp]))[tp])
    finally:
        await c.stop()


def _metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def _decide_t1(bootstrap: str, prefix: str, tmp_path: Path) -> None:
    """PERSON's enrollment and T1 (offset 0 of the transactions topic), decided by a
    worker ("first") that then stops."""
    t = topics_for(prefix)
    enr = orjson.dumps({"mykey_id": PERSON, "operator_id": "paypay", "applied_at": WHEN})
    w = worker(bootstrap, prefix, tmp_path, "first").start()
    try:
        asyncio.run(_send(bootstrap, [(enr_topic(t), enr), (txn_topic(t), _txn("T1"))]))
        # received now, so LATE: what matters is that T1 was decided
        g, r = asyncio.run(collect(bootstrap, t, expect=1, idle_timeout=20.0))
        assert g.num_rows + r.num_rows == 1
    finally:
        w.stop()


def _await_refusal_of_t2(metrics_port: int, log_file: Path, topic: str,
                         offset: int = 1) -> str:
    """Wait until the worker refuses partition P for T2 (``offset`` of ``topic``)
    deleted unread, with the message and remedy the runbook names; return its log."""
    deadline = time.monotonic() + 60
    while not re.search(rf'mynapoint_partition_refused\{{partition="{P}"\}} 1',
                        _metrics(metrics_port)):
        assert time.monotonic() < deadline, log_file.read_text()
        time.sleep(0.3)
    log = log_file.read_text()
    assert re.search(rf"partition {P} refused: {topic}/{P} offsets {offset} to {offset} "
                     r"\(1 records\) "
                     r"were deleted by retention before the engine decided them.*"
                     r"admin accept-loss", log), log
    return log


def test_input_deleted_unread_is_refused_as_lost_then_accepted(
        topic_prefix, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    port = devbroker.free_port()
    data_dir = tmp_path / "broker"
    broker = devbroker.start(port=port, data_dir=data_dir, wait=120.0,
                             extra_properties={"log.retention.check.interval.ms": "500"})
    monkeypatch.setenv(ENV, str(broker.credentials()))
    monkeypatch.setenv("MYNAPOINT_INPUT_RETENTION", "PT3S")
    bootstrap = broker.bootstrap
    try:
        prefix = topic_prefix()
        t = topics_for(prefix)
        asyncio.run(ensure_topics(bootstrap, t, PARTITIONS, input_configs={
            "segment.ms": "500", "segment.bytes": "16384", "file.delete.delay.ms": "0"}))
        _decide_t1(bootstrap, prefix, tmp_path)
        # while no worker runs: T2, then records an hour ahead, which roll T2's
        # segment (segment.ms counts record time) and outlive the test's retention
        asyncio.run(_send(bootstrap, [(txn_topic(t), _txn("T2"))]))
        asyncio.run(_send(bootstrap, [(txn_topic(t), _txn("F1")),
                                      (txn_topic(t), _txn("F2"))], ahead_ms=3_600_000))
        deadline = time.monotonic() + 90
        while asyncio.run(_log_start(bootstrap, txn_topic(t))) < 2:
            assert time.monotonic() < deadline, "retention did not delete T2"
            time.sleep(0.5)
        metrics_port = devbroker.free_port()
        w = worker(bootstrap, prefix, tmp_path, "second",
                   extra=["--metrics-port", str(metrics_port)]).start()
        try:
            _await_refusal_of_t2(metrics_port, tmp_path / "second.log", txn_topic(t))
            # what on-call sees: `status` degraded, naming the partition and why
            r = mynapoint("status", "--broker", bootstrap, "--topic-prefix", prefix,
                          "--group", t.group_id)
            verdict = r.stdout.rstrip().splitlines()[-1]
            assert r.returncode == 1, r.stdout + r.stderr
            assert verdict.startswith("DEGRADED: worker ") and (
                f" not ready: partition {P} refused: {txn_topic(t)}/{P} offsets 1 to 1 "
                "(1 records) were deleted by retention") in verdict, r.stdout
            # the other partitions are decided; this one emits nothing
            time.sleep(2.0)
            g, r = asyncio.run(collect(bootstrap, t, idle_timeout=3.0))
            assert g.num_rows + r.num_rows == 1
        finally:
            w.stop()
        assert asyncio.run(_log_start(bootstrap, txn_topic(t))) == 2
        assert cli(["admin", "accept-loss", "--partition", str(P), "--broker", bootstrap,
                    "--topic-prefix", prefix, "--group", f"{prefix}-engine"]) == 0
        out = capsys.readouterr().out
        assert f"{txn_topic(t)}/{P}: offsets 1 to 1 (1 records) accepted as lost" in out, out
        w = worker(bootstrap, prefix, tmp_path, "third",
                   extra=["--metrics-port", str(metrics_port)]).start()
        try:
            w.wait_for(f"partition {P} restored")
            # what retention kept after the accepted range is decided, T2 never
            g, r = asyncio.run(collect(bootstrap, t, expect=3, idle_timeout=20.0))
            decided = sorted(r.column("txn_id").to_pylist() + g.column("txn_id").to_pylist())
            assert decided == ["F1", "F2", "T1"]
            assert re.search(rf'mynapoint_partition_refused\{{partition="{P}"\}} 0',
                             _metrics(metrics_port))
        finally:
            w.stop()
        # the acceptance covers that loss only: T3, deleted unread later, is refused again
        asyncio.run(_send(bootstrap, [(txn_topic(t), _txn("T3")), (txn_topic(t), _txn("T4"))]))
        asyncio.run(_delete_before(bootstrap, txn_topic(t), 5))
        w = worker(bootstrap, prefix, tmp_path, "fourth",
                   extra=["--metrics-port", str(metrics_port)]).start()
        try:
            _await_refusal_of_t2(metrics_port, tmp_path / "fourth.log", txn_topic(t), 4)
        finally:
            w.stop()
    finally:
        devbroker.stop(port=port, data_dir=data_dir)


async def _delete_before(bootstrap: str, topic: str, offset: int) -> None:
    """Partition P of ``topic`` starts at ``offset`` from now on (DeleteRecords)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.records_to_delete import RecordsToDelete

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, P): RecordsToDelete(offset)})
    finally:
        await admin.close()


async def _append_and_delete_while_stopped(bootstrap: str, topic: str, pid: int) -> None:
    """With the worker stopped: T2 and F1 appended, then T2 deleted. The clients are
    connected first, so the worker stays stopped well within its session timeout; and
    it stays stopped longer than its fetch wait (20 ms) before T2 is appended, so the
    fetch it had pending is answered empty and cannot carry T2 into its socket."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.records_to_delete import RecordsToDelete

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client())
    await admin.start()
    await producer.start()
    try:
        await producer.partitions_for(topic)  # metadata, then the leader's connection
        assert await producer.client.ready(
            producer.client.cluster.leader_for_partition(TopicPartition(topic, P)))
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.5)
            for txn_id in ("T2", "F1"):
                md = await producer.send_and_wait(topic, _txn(txn_id), key=PERSON.encode(),
                                                  partition=P)
                assert md.offset == {"T2": 1, "F1": 2}[txn_id], md
            await admin.delete_records({TopicPartition(topic, P): RecordsToDelete(2)})
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        await producer.stop()
        await admin.close()


def test_input_deleted_while_running_unread_is_refused_not_skipped(
        kafka_broker, topic_prefix, tmp_path: Path) -> None:
    """A running worker that has not read T2 when its records are deleted (retention
    while it lags; here DeleteRecords while it is stopped for a moment) is told the
    offset is out of range and would go on from the new log start: it refuses the
    partition instead of deciding F1 as if T2 had never been sent, with the
    take-over's message and remedy, and keeps deciding the other partitions."""
    bootstrap, prefix = kafka_broker.bootstrap, topic_prefix()
    t = topics_for(prefix)
    port = devbroker.free_port()
    w = worker(bootstrap, prefix, tmp_path, extra=["--metrics-port", str(port)]).start()
    try:
        w.wait_for("assigned partitions [0, 1, 2, 3]")
        enr = orjson.dumps({"mykey_id": PERSON, "operator_id": "paypay", "applied_at": WHEN})
        asyncio.run(_send(bootstrap, [(enr_topic(t), enr), (txn_topic(t), _txn("T1"))]))
        g, r = asyncio.run(collect(bootstrap, t, expect=1, idle_timeout=20.0))
        assert g.num_rows + r.num_rows == 1
        assert w.proc is not None
        asyncio.run(_append_and_delete_while_stopped(bootstrap, txn_topic(t), w.proc.pid))
        log = _await_refusal_of_t2(port, tmp_path / "w.log", txn_topic(t))
        # found while deciding, not by a take-over after a rebalance
        assert log.count(f"partition {P} taken over") == 1, log
        # the other partitions go on: a transaction on another partition is decided
        other = next(f"Zz00aa{i:02d}" for i in range(10, 99)
                     if partition_for(f"Zz00aa{i:02d}".encode(), PARTITIONS) != P)
        other_enr = orjson.dumps({"mykey_id": other, "operator_id": "paypay",
                                  "applied_at": WHEN})
        asyncio.run(_send(bootstrap, [(enr_topic(t), other_enr),
                                      (txn_topic(t), _txn("O1", other))], person=other))
        g, r = asyncio.run(collect(bootstrap, t, expect=2, idle_timeout=20.0))
        # F1 was never decided: only T1 and the other person's O1
        assert g.num_rows + r.num_rows == 2
        assert "F1" not in r.column("txn_id").to_pylist() + g.column("txn_id").to_pylist()
    finally:
        w.stop()


def test_a_take_over_after_retention_deleted_only_decided_input_goes_on(
        kafka_broker, topic_prefix, tmp_path: Path) -> None:
    """docs/PRIVACY.md: a take-over that finds the message it last decided deleted by
    retention (and nothing undecided with it) does not compare that message and does
    not refuse the partition: it decides what comes next."""
    bootstrap, prefix = kafka_broker.bootstrap, topic_prefix()
    t = topics_for(prefix)
    _decide_t1(bootstrap, prefix, tmp_path)
    asyncio.run(_delete_before(bootstrap, txn_topic(t), 1))  # T1, decided, is gone
    w = worker(bootstrap, prefix, tmp_path, "second").start()
    try:
        w.wait_for(f"partition {P} restored")
        asyncio.run(_send(bootstrap, [(txn_topic(t), _txn("T2"))]))
        g, r = asyncio.run(collect(bootstrap, t, expect=2, idle_timeout=20.0))
    finally:
        w.stop()
    decided = sorted(r.column("txn_id").to_pylist() + g.column("txn_id").to_pylist())
    assert decided == ["T1", "T2"]
    assert "refused" not in (tmp_path / "second.log").read_text()
