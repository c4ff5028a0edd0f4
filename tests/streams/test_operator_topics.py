"""Per-operator topics on the real secured broker: the broker is the trust boundary.

A worker runs as the ``engine`` principal, operators publish with their own
credentials through ``mynapoint publish --operator``. A record that claims another
operator gets one OPERATOR_MISMATCH on the publishing operator's rejections and
leaves the claimed operator's customer untouched.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.devtools import broker as devbroker
from engine.devtools import security
from engine.kafka.client_config import ENV
from engine.kafka.topics import ensure_topics
from engine.tools.collect import collect
from tests.builders import write_lines
from tests.ops.http import get
from tests.streams.harness import PARTITIONS, topics_for, worker

pytestmark = pytest.mark.kafka

PERSON = "Forge001"
NEW = "latepay"  # an operator id no other test adds to the session's broker
# the shipped registry, read as engine.config reads it
SHIPPED_OPERATORS = resources.files("engine.config").joinpath("defaults", "operators.toml")


def _publish_as(kafka_broker: devbroker.Broker, principal: str, operator: str, prefix: str,
                directory: Path, applied: str, amount: int, occurred: str,
                claims: str = "aupay", kind: str = "charge"
                ) -> subprocess.CompletedProcess[str]:
    """``mynapoint publish --operator OPERATOR`` with ``principal``'s credentials (and
    nothing else): an application and a ``kind`` of PERSON, both claiming ``claims``."""
    directory.mkdir(parents=True, exist_ok=True)
    enr = write_lines(directory / "e.jsonl", [orjson.dumps(
        {"mykey_id": PERSON, "operator_id": claims, "applied_at": applied})])
    txn = write_lines(directory / "t.jsonl", [orjson.dumps(
        {"txn_id": "t1", "operator_id": claims, "mykey_id": PERSON, "kind": kind,
         "amount": amount, "occurred_at": occurred})])
    env = {k: v for k, v in os.environ.items() if k != ENV}  # nothing but its own file
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "publish", "--broker", kafka_broker.bootstrap,
         "--client-config", str(kafka_broker.credentials(principal)), "--operator", operator,
         "--topic-prefix", prefix, "--partitions", str(PARTITIONS), "--batch", "1",
         "--enrollments", str(enr), "--transactions", str(txn), "--quiet"],
        env=env, capture_output=True, text=True, timeout=120)


def test_a_forged_record_is_one_mismatch_on_the_senders_outputs_and_changes_nothing(
        kafka_broker: devbroker.Broker, topic_prefix, tmp_path: Path, runtime: str) -> None:
    prefix = topic_prefix()
    topics = topics_for(prefix)
    asyncio.run(ensure_topics(kafka_broker.bootstrap, topics, PARTITIONS))
    devbroker.add_acls(kafka_broker.bootstrap, kafka_broker.data_dir,
                       security.acl_plan(topics, topics.operators))
    port = devbroker.free_port()
    w = worker(kafka_broker.bootstrap, prefix, tmp_path / "w",
               env={ENV: str(kafka_broker.credentials(security.ENGINE))},
               runtime=runtime, extra=["--metrics-port", str(port)]).start()
    try:
        # paypay sends, on its own topics, an application and a charge claiming aupay
        forged = _publish_as(kafka_broker, "paypay", "paypay", prefix, tmp_path / "forged",
                             "2020-09-01T09:00:00+09:00", 9000, "2020-10-01T12:00:00+09:00")
        assert forged.returncode == 0, forged.stderr
        # then aupay's genuine ones for the same person, with the same txn_id
        genuine = _publish_as(kafka_broker, "aupay", "aupay", prefix, tmp_path / "genuine",
                              "2020-09-02T09:00:00+09:00", 3000, "2020-10-02T12:00:00+09:00")
        assert genuine.returncode == 0, genuine.stderr
        # an operator publishing as another is refused by the broker, nothing written
        impostor = _publish_as(kafka_broker, "paypay", "aupay", prefix, tmp_path / "impostor",
                               "2020-09-02T09:00:00+09:00", 3000, "2020-10-02T12:00:00+09:00")
        assert impostor.returncode == 2 and "not authorized" in impostor.stderr.lower(), \
            impostor.stderr
        stats: dict[str, object] = {}
        grants, rejections = asyncio.run(collect(kafka_broker.bootstrap, topics, expect=3,
                                                 idle_timeout=20.0, stats=stats))
        metrics = get(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        w.stop()
    rej = rejections.to_pylist()
    assert [(r["record_type"], r["reason"], r["operator_id"]) for r in rej] == [
        ("enrollment", "OPERATOR_MISMATCH", "aupay"),
        ("transaction", "OPERATOR_MISMATCH", "aupay")]
    assert all(r["source"].startswith(f"{prefix}.paypay.") for r in rej)
    assert "'paypay'" in rej[1]["detail"]  # names where it came from
    # the alert's metric counts them under the operator whose input they arrived on
    mismatches = {s.labels["operator"]: s.value
                  for f in text_string_to_metric_families(metrics)
                  for s in f.samples if s.name == "mynapoint_operator_mismatches_total"}
    # (every operator of the registry is exported, at 0 until one of its records is)
    assert mismatches["aupay"] == 0 and {o: n for o, n in mismatches.items() if n} == {
        "paypay": 2.0}
    # decided as if the forged records had never existed: accepted, full points
    assert [(g["txn_id"], g["points"], g["source"].split("/")[0]) for g in grants.to_pylist()] \
        == [("t1", 750, f"{prefix}.aupay.transactions")]
    # and each outcome is on the outputs of the operator whose input it arrived on
    ends = asyncio.run(_output_counts(kafka_broker, topics))
    assert {t: n for t, n in ends.items() if n} == {
        topics.outcome_topic("rejection", "paypay"): 2,
        topics.outcome_topic("grant", "aupay"): 1}


async def _output_counts(kafka_broker: devbroker.Broker, topics) -> dict[str, int]:  # type: ignore[no-untyped-def]
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=kafka_broker.bootstrap,
                         **kafka_broker.client(security.FINANCE))
    await c.start()
    try:
        ends = await c.end_offsets([TopicPartition(t, p) for t in topics.outputs
                                    for p in range(PARTITIONS)])
    finally:
        await c.stop()
    out: dict[str, int] = {}
    for tp, n in ends.items():
        out[tp.topic] = out.get(tp.topic, 0) + n
    return out


def test_an_operator_added_to_a_running_broker_is_settled_once_in_the_registry(
        kafka_broker: devbroker.Broker, topic_prefix, tmp_path: Path) -> None:
    """README: `kafka add-operator ID` adds a principal, its ACLs and its topics to a
    running broker; a worker consumes them once the operator is in operators.toml."""
    prefix = topic_prefix()
    topics = topics_for(prefix)
    asyncio.run(ensure_topics(kafka_broker.bootstrap, topics, PARTITIONS))
    devbroker.add_acls(kafka_broker.bootstrap, kafka_broker.data_dir,
                       security.acl_plan(topics, topics.operators))
    devbroker.add_operator(kafka_broker.bootstrap, kafka_broker.data_dir, NEW, topics)
    registry = tmp_path / "operators.toml"
    registry.write_text(SHIPPED_OPERATORS.read_text(encoding="utf-8") + f"""
[[operators]]
id = "{NEW}"
payout = "next_month"
name = "A late payment operator"
earns_on = ["purchase"]
selection_opens = 2020-07-01
""")
    w = worker(kafka_broker.bootstrap, prefix, tmp_path / "w",
               env={ENV: str(kafka_broker.credentials(security.ENGINE))},
               extra=["--operators", str(registry)]).start()
    try:
        sent = _publish_as(kafka_broker, NEW, NEW, prefix, tmp_path / "new",
                           "2020-09-01T09:00:00+09:00", 4000, "2020-10-01T12:00:00+09:00",
                           claims=NEW, kind="purchase")
        assert sent.returncode == 0, sent.stderr
        grants, rejections = asyncio.run(collect(
            kafka_broker.bootstrap, topics.with_operators([*topics.operators, NEW]),
            expect=1, idle_timeout=20.0))
    finally:
        w.stop()
    assert rejections.num_rows == 0
    assert [(g["txn_id"], g["points"], g["source"].split("/")[0])
            for g in grants.to_pylist()] == [("t1", 1000, f"{prefix}.{NEW}.transactions")]
