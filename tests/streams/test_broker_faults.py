"""Broker faults under live traffic, against real brokers: the worker rides them out
without a restart of its own and the outcomes still equal offline ``settle``.

Each test writes its counts to ``.reliability/<test>.json`` (docs quote the last run).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from engine.devtools import broker as devbroker
from engine.kafka.client_config import default_client
from engine.tools.compare import Comparison
from tests.kafka_fixtures import TopicPrefix
from tests.streams.harness import (
    LAST_STATS,
    QUIET_ACROSS_FAULTS,
    Scenario,
    collect_and_compare,
    fault_report,
    from_doubled_input,
    make_scenario,
    output_end,
    output_end_offsets,
    publish,
    records_in,
    report_name,
    topics_for,
    worker,
)

pytestmark = pytest.mark.kafka

DOWN_SECONDS = 10.0  # a killed single broker stays down this long
MAX_STALL_SECONDS = 30.0  # the longest pause in outcome production a cluster may show
RATE = 150.0  # records/s: slow enough that the kill lands while records flow


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return make_scenario(tmp_path_factory.mktemp("faults"), 300, 3000, seed=11)


class Publisher(threading.Thread):
    """``publish`` in the background; keeps its counts or its exception."""

    def __init__(self, bootstrap: str, prefix: str, sc: Scenario, manifest: Path) -> None:
        super().__init__(daemon=True)
        self.args = (bootstrap, prefix, sc, manifest, 1, RATE)
        self.counts: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.counts = publish(*self.args)
        except BaseException as e:  # reported by the test, not lost in the thread
            self.error = e


def wait_for_outputs(bootstrap: str, prefix: str, at_least: int, wait: float = 90.0,
                     any_after: float | None = None) -> int:
    """Block until the worker has produced ``at_least`` outcomes, or any once the
    monotonic clock passes ``any_after``; return the count."""
    deadline = time.monotonic() + wait
    while (n := output_end(bootstrap, prefix)) < at_least:
        if any_after is not None and n > 0 and time.monotonic() >= any_after:
            break
        assert time.monotonic() < deadline, f"only {n} outcomes after {wait} s"
        time.sleep(0.5)
    return n


async def _production_times(bootstrap: str, prefix: str) -> list[int]:
    ends = await output_end_offsets(bootstrap, prefix)
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(), enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    stamps: list[int] = []
    try:
        tps = [tp for tp, end in ends.items() if end > 0]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        left = {tp: ends[tp] for tp in tps}
        while left:
            for tp, msgs in (await c.getmany(*left, timeout_ms=1000)).items():
                stamps.extend(m.timestamp for m in msgs)
                if msgs and msgs[-1].offset + 1 >= left[tp]:
                    del left[tp]
    finally:
        await c.stop()
    return sorted(stamps)


def longest_stall(bootstrap: str, prefix: str) -> float:
    """Longest pause, in seconds, between two consecutive outcome productions.

    The worker leaves an outcome's timestamp to its producer, which stamps the
    moment the outcome was handed over: the gaps are the worker's own pauses.
    """
    stamps = asyncio.run(asyncio.wait_for(_production_times(bootstrap, prefix), 120))
    assert len(stamps) > 1
    return max(b - a for a, b in itertools.pairwise(stamps)) / 1000


def _story(log_dir: Path, lines: int = 30) -> str:
    """The worker's own log lines (not aiokafka's), for a failure message."""
    text = (log_dir / "w.log").read_text(errors="replace").splitlines()
    return "\n".join([x for x in text if "mynapoint" in x or "Error" in x[:80]][-lines:])


def settle_through(bootstrap: str, prefix: str, sc: Scenario, tmp_path: Path,
                   fault: Callable[[], dict[str, Any]], runtime: str = "aiokafka"
                   ) -> tuple[Comparison, dict[str, Any], bool]:
    """One worker settles ``sc`` published in the background; ``fault()`` runs once a
    tenth of the outcomes are out. Returns the comparison with offline, the facts
    for the report, and whether the publisher was still sending at the fault."""
    w = worker(bootstrap, prefix, tmp_path, "w", runtime=runtime,
               quiet=QUIET_ACROSS_FAULTS).start()
    pub = Publisher(bootstrap, prefix, sc, tmp_path / "m.parquet")
    try:
        w.wait_for("assigned partitions")
        pid = w.proc.pid if w.proc else None
        pub.start()
        # A tenth of the outcomes, or, where the worker is slow to start deciding (seen
        # with three brokers: a few outcomes in the first 20 s), any outcome
        # once 60 % of the publishing is done: either way the fault lands while
        # records are still being published and decided.
        produced = wait_for_outputs(bootstrap, prefix, sc.expected_outcomes // 10,
                                    any_after=time.monotonic() + 0.6 * records_in(sc) / RATE)
        in_flight = pub.is_alive()
        facts = fault()
        assert w.alive, f"the worker died in the fault:\n{_story(tmp_path)}"
        pub.join(300)
        assert not pub.is_alive(), f"publishing did not finish:\n{_story(tmp_path)}"
        assert pub.error is None, f"publishing failed: {pub.error!r}"
        cmp, _, _ = collect_and_compare(bootstrap, prefix, sc, tmp_path / "m.parquet",
                                        idle=60.0)
        assert w.alive and w.proc is not None and w.proc.pid == pid, \
            f"the worker exited:\n{_story(tmp_path)}"
        stall = longest_stall(bootstrap, prefix)
    finally:
        w.stop()
        pub.join(60)
    assert pub.error is None, f"publishing failed: {pub.error!r}"
    assert pub.counts is not None
    if not cmp.equal:
        cmp.differences.append(f"worker log:\n{_story(tmp_path)}")
    return cmp, {"publish_seconds": round(pub.counts["seconds"], 1), "outputs_at_fault": produced,
                 "redelivered_identical_copies": LAST_STATS.get("copies"),
                 "longest_stall_seconds": round(stall, 1), "worker_pid": pid,
                 **facts}, in_flight


def test_doubled_input_tolerance_covers_copies_only() -> None:
    """The differences of a real failed run whose only cause was a record Kafka
    stored twice are tolerated; the same rejection of a record the publisher did
    record (a manifested source) is not."""
    copy_invalid = ("rejection ?t5.dbarai.transactions/0/63: only on the right: "
                    "{'record_type': 'transaction', 'reason': 'INVALID_AMOUNT', "
                    "'txn_id': 'edge:00032', 'source': '?t5.dbarai.transactions/0/63'}")
    copy_first = ("rejection transactions.jsonl:496: only on the right: {'record_type': "
                  "'transaction', 'reason': 'DUPLICATE', 'source': 'transactions.jsonl:496'}")
    grant_moved = ("grant mynapoint-2020/suica/t0jbn6vd/tx-1: source='transactions.jsonl:496'"
                   "/'?t5.suica.transactions/3/15'")
    assert all(map(from_doubled_input, (copy_invalid, copy_first, grant_moved)))
    manifested = copy_invalid.replace("?t5.dbarai.transactions/0/63", "transactions.jsonl:7")
    assert not from_doubled_input(manifested)
    assert not from_doubled_input(grant_moved.replace("/'?t5", "/'t5"))
    assert not from_doubled_input(copy_invalid.replace("only on the right", "only on the left"))


def assert_unharmed(request: pytest.FixtureRequest, sc: Scenario,
                    outcome: tuple[Comparison, dict[str, Any], bool],
                    tolerate_doubled_input: bool = False,
                    runtime: str = "aiokafka") -> dict[str, Any]:
    cmp, facts, in_flight = outcome
    doubled_input = [d for d in cmp.differences if from_doubled_input(d)]
    facts["input_records_stored_twice_by_kafka"] = sum(
        d.startswith("rejection") for d in doubled_input)
    counts: dict[str, Any] = fault_report(report_name(request.node.originalname, runtime), sc,
                                          cmp, **facts)
    print(f"{request.node.name}: {json.dumps(counts)}")
    assert in_flight, "publishing had ended before the fault: slow it down"
    assert 0 < counts["outputs_at_fault"] < sc.expected_outcomes, "the fault missed the stream"
    if tolerate_doubled_input:
        # OPEN (docs/RELIABILITY.md): across the only broker's SIGKILL the idempotent
        # publisher sometimes stores a record twice; the engine then rightly rejects the
        # second copy DUPLICATE. Everything else must still equal offline.
        rest = [d for d in cmp.differences if d not in doubled_input
                and not d.startswith("worker log:")]
        assert not rest, str(cmp)
    else:
        assert cmp.equal, str(cmp)
    assert counts["missing"] == counts["doubled"] == 0
    return counts


# ------------------------------------------------------------------ one failed batch


# every stage under the default runtime; under Faust the one that leaves most behind
# (outcomes and state written, offsets not committed): the facade's seek back is shared
@pytest.mark.parametrize(("stage", "runtime"), [("decided", "aiokafka"), ("outputs", "aiokafka"),
                                                ("state", "aiokafka"), ("state", "faust")])
def test_failed_batch_is_retried_in_process(kafka_broker: devbroker.Broker,
                                            topic_prefix: TopicPrefix, scenario: Scenario,
                                            tmp_path: Path, stage: str, runtime: str) -> None:
    """A Kafka error in the middle of a batch (injected: decided in memory only,
    outcomes acknowledged, state written) makes the same worker process read the
    batch, and every batch since its last commit, again from the first offsets
    fetched since that commit and decide them again from durable state."""
    bootstrap = kafka_broker.bootstrap
    prefix = topic_prefix()
    publish(bootstrap, prefix, scenario, tmp_path / "m.parquet", 1)
    w = worker(bootstrap, prefix, tmp_path, "w", env={"MYNAPOINT_FAIL_AT": f"{stage}:3"},
               runtime=runtime)
    w.start()
    try:
        cmp, _, _ = collect_and_compare(bootstrap, prefix, scenario, tmp_path / "m.parquet")
        assert w.alive, "the worker exited on the fault"
    finally:
        w.stop()
    log = (tmp_path / "w.log").read_text()
    assert f"injected fault after {stage} of batch 3" in log and "retrying it in" in log
    assert cmp.equal, str(cmp)


# ------------------------------------------------------------------ single broker


def test_single_broker_sigkill_and_restart(own_broker: devbroker.Broker, topic_prefix: TopicPrefix,
                                           scenario: Scenario, tmp_path: Path,
                                           request: pytest.FixtureRequest, runtime: str) -> None:
    """SIGKILL the only broker mid-stream, keep it down 10 s, restart it on its data:
    the same worker process finishes, and the outcomes equal offline."""

    def fault() -> dict[str, Any]:
        own_broker.kill()
        killed_at = time.monotonic()
        time.sleep(DOWN_SECONDS)
        restarted = devbroker.start(port=own_broker.port, data_dir=own_broker.data_dir,
                                wait=120.0)
        return {"broker_down_seconds": round(time.monotonic() - killed_at, 1),
                "broker_restart_seconds": round(restarted.startup_seconds or 0.0, 1)}

    outcome = settle_through(own_broker.bootstrap, topic_prefix(), scenario, tmp_path, fault,
                             runtime)
    assert_unharmed(request, scenario, outcome, tolerate_doubled_input=True, runtime=runtime)


# ------------------------------------------------------------------ three brokers


async def _coordinator(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    await admin.start()
    try:
        return await admin.find_coordinator(group)
    finally:
        await admin.close()


def test_cluster_loses_a_broker(own_cluster: devbroker.Cluster, topic_prefix: TopicPrefix,
                                scenario: Scenario, tmp_path: Path,
                                request: pytest.FixtureRequest, runtime: str) -> None:
    """Three brokers (RF 3, min ISR 2): SIGKILL the one coordinating the workers'
    group mid-stream and leave it dead. No outcome pause longer than 30 s, and
    the outcomes equal offline."""
    prefix = topic_prefix()

    def fault() -> dict[str, Any]:
        victim = asyncio.run(_coordinator(own_cluster.bootstrap, topics_for(prefix).group_id))
        own_cluster.kill(victim)
        return {"killed_node": victim, "killed_node_role": "group coordinator"}

    outcome = settle_through(own_cluster.bootstrap, prefix, scenario, tmp_path, fault, runtime)
    counts = assert_unharmed(request, scenario, outcome, runtime=runtime)
    assert counts["longest_stall_seconds"] <= MAX_STALL_SECONDS, counts
