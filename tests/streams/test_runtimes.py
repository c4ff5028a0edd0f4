"""What differs between the worker's runtimes (aiokafka, faust) and must not matter.

Who commits input offsets: Under both, every committed input offset carries the
changelog position the state had (``"cl"``, which a take-over needs) and lies at
or behind what that state had decided, sampled while records flow. Under Faust this
proves that Faust's own commit path never ran: it would commit without metadata."""

from __future__ import annotations

import asyncio
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families

from engine.devtools.broker import free_port
from engine.kafka.client_config import default_client
from engine.kafka.topics import end_offsets
from engine.metrics import BATCH_PHASES
from engine.streams.faust_runtime import WORKER_ARGS_ENV
from engine.streams.recovery import changelog_need
from engine.streams.state import META_KEY, ShardMeta, decode_meta
from tests.kafka_fixtures import read_topic
from tests.ops.http import get, poll, wait_until
from tests.streams.harness import (
    PARTITIONS,
    QUIET_SECONDS,
    collect_and_compare,
    make_scenario,
    output_end,
    publish,
    records_in,
    topics_for,
    worker,
)

pytestmark = pytest.mark.kafka


async def _committed(bootstrap: str, group: str) -> dict[Any, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    await admin.start()
    try:
        return dict(await admin.list_consumer_group_offsets(group))
    except KafkaError:  # the group's coordinator not elected yet: no sample
        return {}
    finally:
        await admin.close()


def test_offsets_are_committed_only_behind_the_engines_state(
        kafka_broker, topic_prefix, tmp_path: Path, tmp_path_factory, runtime: str) -> None:
    sc = make_scenario(tmp_path_factory.mktemp("commits"), 100, 1200, seed=5)
    bootstrap, prefix = kafka_broker.bootstrap, topic_prefix()
    t = topics_for(prefix)
    w = worker(bootstrap, prefix, tmp_path, runtime=runtime).start()
    pub = threading.Thread(target=publish, args=(bootstrap, prefix, sc, tmp_path / "m.parquet",
                                                 1, 300.0))
    samples: list[dict[Any, Any]] = []
    try:
        pub.start()
        while pub.is_alive():
            samples.append(asyncio.run(_committed(bootstrap, t.group_id)))
            time.sleep(0.2)
        cmp, _, _ = collect_and_compare(bootstrap, prefix, sc, tmp_path / "m.parquet")
        samples.append(asyncio.run(_committed(bootstrap, t.group_id)))
    finally:
        w.stop()
        pub.join()
    assert cmp.equal, str(cmp)

    # every state snapshot's meta record, by changelog partition, in offset order
    metas: dict[int, list[tuple[int, ShardMeta]]] = {p: [] for p in range(PARTITIONS)}
    for m in asyncio.run(read_topic(bootstrap, t.changelog, PARTITIONS)):
        if m.key == META_KEY.encode():
            metas[m.partition].append((m.offset, decode_meta(m.value)))
    checked: set[tuple[str, int, int]] = set()
    for sample in samples:
        for tp, committed in sample.items():
            if tp.topic not in t.consumed or committed.offset <= 0:
                continue
            cl = changelog_need(committed)
            assert cl >= 0, f"{tp} committed at {committed.offset} without a changelog position"
            before = [meta for offset, meta in metas[tp.partition] if offset < cl]
            assert before, f"{tp} committed at {committed.offset}, no state before {cl}"
            decided = before[-1].inputs[tp.topic][0]
            assert committed.offset <= decided, (tp, committed, decided)
            checked.add((tp.topic, tp.partition, committed.offset))
    # commits were seen moving on every input partition while records flowed
    assert len(checked) >= 4 * PARTITIONS, checked


def _outcomes_counted(metrics_text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("mynapoint_outcomes_total{"))


def _phases_account_for_batches(metrics_text: str) -> None:
    """Every phase was observed, and the phases' times add up to the batches' (what
    is left is the step from the last lap to the batch's end)."""
    samples = {(s.name, s.labels.get("phase")): s.value
               for f in text_string_to_metric_families(metrics_text) for s in f.samples}
    batches = samples[("mynapoint_batch_seconds_count", None)]
    total = samples[("mynapoint_batch_seconds_sum", None)]
    assert batches >= 1
    for phase in BATCH_PHASES:
        assert samples[("mynapoint_batch_phase_seconds_count", phase)] >= 1, phase
    booked = sum(samples[("mynapoint_batch_phase_seconds_sum", p)] for p in BATCH_PHASES)
    # a tenth, plus 50 ms: when the batches took a tenth of a second in all, one pause of
    # a busy test machine between the last lap and the batch's end is more than a tenth
    assert booked <= total
    assert total - booked <= 0.1 * total + 0.05, (total, booked)


def test_metrics_and_health_alike_and_faust_cli(kafka_broker, topic_prefix, tmp_path: Path,
                                               tmp_path_factory, runtime: str) -> None:
    """The engine's /metrics, /healthz and /readyz under each runtime; the Faust one
    started as a plain Faust app (``faust -A engine.streams.faust_runtime:app worker``)
    with the worker's options in ``$MYNAPOINT_WORKER_ARGS``, its web server off."""
    sc = make_scenario(tmp_path_factory.mktemp("health"), 60, 500, seed=9)
    bootstrap, prefix = kafka_broker.bootstrap, topic_prefix()
    port = free_port()
    w = worker(bootstrap, prefix, tmp_path, runtime=runtime,
               extra=["--metrics-port", str(port)])
    if runtime == "faust":
        w.args = [sys.executable, "-m", "faust", "-A", "engine.streams.faust_runtime:app",
                  "worker", "-l", "info"]
        w.env[WORKER_ARGS_ENV] = shlex.join(
            ["--broker", bootstrap, "--topic-prefix", prefix, "--partitions",
             str(PARTITIONS), "--state-dir", str(tmp_path / "state"), "--group",
             f"{prefix}-engine", "--metrics-port", str(port),
             "--quiet-seconds", str(QUIET_SECONDS)])
    base = f"http://127.0.0.1:{port}"
    w.start()
    try:
        w.wait_for("assigned partitions [0, 1, 2, 3]")
        assert poll(base + "/readyz", 200)["broker"] is True
        assert get(base + "/healthz")[0] == 200
        publish(bootstrap, prefix, sc, tmp_path / "m.parquet", 1)
        cmp, _, _ = collect_and_compare(bootstrap, prefix, sc, tmp_path / "m.parquet")
        assert cmp.equal, str(cmp)
        def counted() -> str | None:
            text = get(base + "/metrics")[1]
            return text if _outcomes_counted(text) >= records_in(sc) else None

        # every input record decided once (enrollments count as accepted outcomes)
        text = wait_until("every record's outcome counted", counted)
        assert _outcomes_counted(text) == records_in(sc)
        assert "mynapoint_worker_up 1.0" in text
        _phases_account_for_batches(text)
        with socket.socket() as s:  # Faust's web server (port 6066) is not listening
            assert s.connect_ex(("127.0.0.1", 6066)) != 0
    finally:
        w.stop()


def test_a_clean_stop_commits_what_the_interval_had_not_yet(
        kafka_broker, topic_prefix, tmp_path: Path, tmp_path_factory, runtime: str) -> None:
    """Commits a minute apart (DECISIONS 131): the whole input is decided with nothing
    committed yet, and the clean stop commits it, every input's offset at its end
    (the Faust runtime commits every batch whatever the interval)."""
    sc = make_scenario(tmp_path_factory.mktemp("stop"), 60, 500, seed=11)
    bootstrap, prefix = kafka_broker.bootstrap, topic_prefix()
    t = topics_for(prefix)
    group = t.group_id
    publish(bootstrap, prefix, sc, tmp_path / "m.parquet", 1)
    w = worker(bootstrap, prefix, tmp_path, runtime=runtime,
               extra=["--commit-interval", "60"]).start()
    try:
        cmp, _, _ = collect_and_compare(bootstrap, prefix, sc, tmp_path / "m.parquet")
        before = asyncio.run(_committed(bootstrap, group))
    finally:
        assert w.stop() == 0
    after = asyncio.run(_committed(bootstrap, group))
    assert cmp.equal, str(cmp)
    inputs = [TopicPartition(topic, p) for topic in t.consumed for p in range(PARTITIONS)]
    ends = {tp: n for tp, n in asyncio.run(end_offsets(bootstrap, inputs)).items() if n > 0}
    assert ends and {tp: after[tp].offset if tp in after else None for tp in ends} == ends
    if runtime == "aiokafka":
        assert all(before.get(tp) is None or before[tp].offset < n for tp, n in ends.items())


def test_partitions_given_up_in_a_rebalance_are_committed_first(
        kafka_broker, topic_prefix, tmp_path: Path, tmp_path_factory) -> None:
    """Commits a minute apart (DECISIONS 131): a first worker has decided the whole
    input and committed none of it when a second joins; the partitions it gives up are
    committed before they go, so the newcomer decides nothing again (no outcome
    produced after the join)."""
    sc = make_scenario(tmp_path_factory.mktemp("rebalance"), 60, 500, seed=12)
    bootstrap, prefix = kafka_broker.bootstrap, topic_prefix()
    group = topics_for(prefix).group_id
    publish(bootstrap, prefix, sc, tmp_path / "m.parquet", 1)
    slow = ["--commit-interval", "60"]
    first = worker(bootstrap, prefix, tmp_path, "first", extra=slow).start()
    second = None
    try:
        cmp, _, _ = collect_and_compare(bootstrap, prefix, sc, tmp_path / "m.parquet")
        uncommitted = asyncio.run(_committed(bootstrap, group))
        out = output_end(bootstrap, prefix)
        second = worker(bootstrap, prefix, tmp_path, "second", extra=slow).start()
        second.wait_for("assigned partitions")
        first.wait_for("assigned partitions", 5)  # its own take-overs are long done
        time.sleep(5)  # what the newcomer would decide again, it would have by now
        after = output_end(bootstrap, prefix)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert cmp.equal, str(cmp)
    assert all(m.offset < 0 for m in uncommitted.values()), uncommitted  # nothing committed
    assert after == out
