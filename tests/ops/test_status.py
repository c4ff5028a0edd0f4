"""``mynapoint status`` against a real broker and worker: the report, the verdict and
its exit code, and the errors that leave nothing to report."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from engine.devtools import broker as devbroker
from engine.kafka.topics import Topics
from engine.ops import status as status_mod
from engine.ops.status import PartitionStatus, WorkerStatus, judge
from tests.ops.http import poll
from tests.streams.harness import PARTITIONS, make_scenario, publish, topics_for, worker
from tests.test_cli import mynapoint


def test_status_of_a_running_then_stopped_engine(
        kafka_broker: devbroker.Broker, topic_prefix: str, tmp_path: Path) -> None:
    sc = make_scenario(tmp_path / "data", users=150, transactions=1200, seed=7)
    port = devbroker.free_port()
    w = worker(kafka_broker.bootstrap, topic_prefix, tmp_path / "logs")
    w.args += ["--metrics-port", str(port)]
    w.start()
    try:
        poll(f"http://127.0.0.1:{port}/readyz", 200)
        publish(kafka_broker.bootstrap, topic_prefix, sc, tmp_path / "m.parquet", batch=100)
        topics = topics_for(topic_prefix)
        deadline = time.monotonic() + 60
        while True:  # until every input record is committed
            report = asyncio.run(status_mod.status(kafka_broker.bootstrap, topics))
            if all(p.lag == 0 for p in report.partitions) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert report.verdict == "healthy" and report.exit_code == 0, report.reasons
        assert report.group_state == "Stable"
        (ws,) = report.workers
        assert ws.metrics_url == f"http://127.0.0.1:{port}" and ws.reachable and ws.ready
        assert ws.partitions == list(range(PARTITIONS))
        assert [(p.topic, p.partition) for p in report.partitions] == \
            [(t, p) for t in topics.consumed for p in range(PARTITIONS)]
        enrollments = sum(1 for ln in sc.enrollments.read_text().splitlines() if ln.strip())
        transactions = sum(1 for ln in sc.transactions.read_text().splitlines() if ln.strip())
        ends = {t: sum(p.end for p in report.partitions if p.topic == t) for t in topics.inputs}
        # batch messages of 100 records: the message count is what Kafka's offsets count
        assert sum(ends[t] for t in topics.enrollment_inputs) >= enrollments / 100
        assert sum(ends[t] for t in topics.transaction_inputs) >= transactions / 100
        assert {p.topic for p in report.partitions if p.internal} == \
            set(topics.consumed) - set(topics.inputs)
        for p in report.partitions:
            assert p.owner == ws.member_id and p.lag == 0
            # an empty partition (an unused re-routing one) has nothing to commit
            assert p.committed == p.end or (p.committed is None and p.end == 0)
            assert p.parked is not None and p.parked >= 0
            if p.end:
                assert p.stream_time is not None and p.stream_time > 1.5e9
                assert p.last_batch_age is not None and 0 <= p.last_batch_age < 120
        outputs = {t: sum(e.values()) for t, e in report.outputs.items()}
        assert set(outputs) == set(topics.outputs)
        # one message per outcome
        kinds = topics.outcomes
        assert sum(n for t, n in outputs.items() if kinds[t] == "grant") \
            >= sc.offline.grants.num_rows
        assert sum(n for t, n in outputs.items() if kinds[t] == "rejection") \
            >= sc.offline.rejections.num_rows

        r = mynapoint("status", "--broker", kafka_broker.bootstrap, "--topic-prefix",
                      topic_prefix, "--group", topics.group_id)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.rstrip().splitlines()[-1] == "HEALTHY"
        assert f"127.0.0.1:{port}" in r.stdout
        r = mynapoint("status", "--broker", kafka_broker.bootstrap, "--topic-prefix",
                      topic_prefix, "--group", topics.group_id, "--json")
        doc = json.loads(r.stdout)
        assert (r.returncode, doc["verdict"], doc["exit_code"]) == (0, "healthy", 0)
        assert len(doc["partitions"]) == len(topics.consumed) * PARTITIONS
    finally:
        w.stop()

    # the group outlives its last worker: a report, verdict down, exit 2
    r = mynapoint("status", "--broker", kafka_broker.bootstrap, "--topic-prefix",
                  topic_prefix, "--group", topics.group_id, "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 2 and doc["verdict"] == "down"
    assert doc["reasons"] == ["no worker is running in the consumer group: nothing is decided"]
    assert all(p["owner"] is None and p["lag"] == 0 for p in doc["partitions"])
    stream_times = {(p.topic, p.partition): p.stream_time for p in report.partitions}

    # a restarted worker shows the stream time of the state it restored, before it
    # has decided any batch (nothing is left to decide)
    w2 = worker(kafka_broker.bootstrap, topic_prefix, tmp_path / "logs", name="w2")
    w2.args += ["--metrics-port", str(port)]
    w2.start()
    try:
        poll(f"http://127.0.0.1:{port}/readyz", 200)
        again = asyncio.run(status_mod.status(kafka_broker.bootstrap, topics))
        assert again.verdict == "healthy", again.reasons
        for p in again.partitions:
            assert p.last_batch_age is None
            if p.end and p.topic in topics.inputs:
                assert p.stream_time == stream_times[(p.topic, p.partition)]
    finally:
        w2.stop()


def test_status_errors_are_one_line(kafka_broker: devbroker.Broker, topic_prefix: str) -> None:
    r = mynapoint("status", "--broker", kafka_broker.bootstrap, "--topic-prefix", topic_prefix)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("mynapoint status: no engine topics on")
    from engine.kafka.topics import ensure_topics
    # every topic a worker creates (a publisher creates the inputs only)
    asyncio.run(ensure_topics(kafka_broker.bootstrap, Topics(topic_prefix), 2))
    r = mynapoint("status", "--broker", kafka_broker.bootstrap, "--topic-prefix", topic_prefix,
                  "--group", "nobody-here")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("mynapoint status: consumer group nobody-here does not exist")


def _w(member: str, ready: bool | None = True, reachable: bool = True) -> WorkerStatus:
    return WorkerStatus(member, "mynapoint-worker@h:1", "h", [0], "http://h:1", reachable,
                        ready, None if ready else "restoring state of partitions 0")


def _p(owner: str | None, lag: int = 0, age: float | None = None) -> PartitionStatus:
    return PartitionStatus("x.transactions", 0, owner, 10, 10 + lag, lag, None, None, age)


@pytest.mark.parametrize(("workers", "partitions", "verdict", "why"), [
    ([], [_p(None)], "down", "no worker is running"),
    ([_w("a")], [_p("a"), _p("a", lag=5, age=3.0)], "healthy", None),
    ([_w("a")], [_p("a"), _p(None)], "degraded", "1 input partitions have no worker"),
    ([_w("a", ready=False)], [_p("a")], "degraded", "not ready: restoring state"),
    ([_w("a", ready=None, reachable=False)], [_p("a", lag=5)], "healthy", None),
    ([_w("a")], [_p("a", lag=5, age=61.0)], "degraded", "stalled: 5 unread records"),
    ([_w("a")], [_p("a", lag=0, age=600.0)], "healthy", None),   # idle is not stalled
    ([_w("a", reachable=False)], [_p("a", lag=100_001)], "degraded", "behind: 100,001"),
])
def test_verdicts(workers, partitions, verdict: str, why: str | None) -> None:
    got, reasons = judge(workers, partitions, stale_after=60.0, max_lag=100_000)
    assert got == verdict
    assert (why is None) == (not reasons)
    if why:
        assert why in reasons[0]
    assert status_mod.EXIT_CODES[got] == {"healthy": 0, "degraded": 1, "down": 2}[got]


def test_rebalancing_group_is_degraded_without_blaming_partitions() -> None:
    got, reasons = judge([_w("a")], [_p(None), _p(None)], 60.0, 100_000,
                         group_state="PreparingRebalance")
    assert got == "degraded"
    assert reasons == ["the consumer group is rebalancing (PreparingRebalance)"]


def test_render_names_unreachable_workers_and_ends_with_the_verdict(
        capsys: pytest.CaptureFixture[str]) -> None:
    workers = [WorkerStatus("m1", "mynapoint-worker@10.0.0.5:9100", "10.0.0.5", [0],
                            "http://10.0.0.5:9100"),
               WorkerStatus("m2", "mynapoint-worker@:9100", "10.0.0.6", [1],
                            "http://10.0.0.6:9100", True, False,
                            "restoring state of partitions 1", {"1": {"remaining": 1200}})]
    parts = [PartitionStatus("x.transactions", 0, "m1", 5, 9, 4),
             PartitionStatus("x.transactions", 1, "m2", None, 3, 3, 1.6e9, 2, 4.0)]
    verdict, reasons = judge(workers, parts, 60.0, 100_000)
    status_mod.render(status_mod.Report("b:9092", "x-engine", "Stable", verdict, reasons,
                                        parts, workers, {"x.grants": {"0": 7, "1": 5}}))
    out = capsys.readouterr().out
    lines = out.rstrip().splitlines()
    assert lines[-1] == ("DEGRADED: worker mynapoint-worker@:9100 (10.0.0.6) not ready: "
                         "restoring state of partitions 1")
    assert "unreachable" in out and "p1: 1,200 records left" in out
    assert "2020-09-13T12:26:40" in out and "4 s ago" in out
    assert "x.grants" in out and "12" in out


def test_a_refused_request_is_one_error_not_a_connection_failure(
        kafka_broker: devbroker.Broker, topic_prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # what a broker with ACLs answers a principal without DESCRIBE on the group
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import GroupAuthorizationFailedError

    from engine.kafka.topics import ensure_topics

    async def refuse(*_a: object, **_k: object) -> None:
        raise GroupAuthorizationFailedError("not authorized")

    asyncio.run(ensure_topics(kafka_broker.bootstrap, Topics(topic_prefix), 2))
    monkeypatch.setattr(AIOKafkaAdminClient, "describe_consumer_groups", refuse)
    with pytest.raises(status_mod.StatusError) as e:
        asyncio.run(status_mod.status(kafka_broker.bootstrap, Topics(topic_prefix)))
    assert str(e.value).startswith(f"the Kafka broker at {kafka_broker.bootstrap} refused "
                                   "a request (GroupAuthorizationFailedError")
