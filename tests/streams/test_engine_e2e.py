"""The streaming engine against the real broker: equal to offline settle,
record for record, also across SIGKILLs, restarts and rebalances."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.devtools.broker import free_port
from tests.ops.http import get
from tests.streams.harness import (
    LAST_STATS,
    Scenario,
    collect_and_compare,
    grants_in_decision_order,
    make_scenario,
    publish,
    worker,
)

pytestmark = pytest.mark.kafka
# The batch the crash tests crash in: one whose outcomes include grants. Faust's
# agent gathers smaller batches (what arrived within 20 ms), the first ones only
# enrollments, which have no outcome unless rejected.
CRASH_BATCH = {"aiokafka": "3+", "faust": "8+"}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    # every reason code occurs at this size (see tests/tools/test_generate.py)
    return make_scenario(tmp_path_factory.mktemp("campaign"), 400, 4000, seed=7)


@pytest.mark.parametrize("batch", [1000, 1])
def test_stream_equals_offline(kafka_broker, topic_prefix, scenario, tmp_path: Path,
                               batch: int, runtime: str) -> None:
    prefix = topic_prefix()
    w = worker(kafka_broker.bootstrap, prefix, tmp_path, runtime=runtime).start()
    try:
        publish(kafka_broker.bootstrap, prefix, scenario, tmp_path / "m.parquet", batch)
        cmp, grants, _ = collect_and_compare(kafka_broker.bootstrap, prefix, scenario,
                                             tmp_path / "m.parquet")
    finally:
        w.stop()
    assert cmp.equal, str(cmp)
    assert grants.num_rows == scenario.offline.grants.num_rows > 1000
    totals = grants_in_decision_order(kafka_broker.bootstrap, prefix)
    # the order is exercised where it matters: totals that fall (refunds clawed back)
    assert any(b < a for t in totals.values() for a, b in itertools.pairwise(t))


@pytest.mark.parametrize("stage", ["outputs", "state", "commit"])
def test_crash_at_an_exact_point_of_a_batch(kafka_broker, topic_prefix, scenario,
                                            tmp_path: Path, stage: str, runtime: str) -> None:
    """Crash injection at the dangerous instants of a batch (CRASH_BATCH): outcomes
    acknowledged but state not written (they are decided again, identically),
    state in the changelog but offsets not committed (the redelivered records are
    skipped), and committed with the local checkpoint written (the restart reads
    the changelog from what the checkpoint had flushed, DECISIONS 105)."""
    prefix = topic_prefix()
    publish(kafka_broker.bootstrap, prefix, scenario, tmp_path / "m.parquet", 1)
    # commits 5 s apart: the crash finds several batches decided and not committed
    # (DECISIONS 131; the Faust runtime commits every batch whatever this says)
    w = worker(kafka_broker.bootstrap, prefix, tmp_path, "crashing",
               env={"MYNAPOINT_CRASH_AT": f"{stage}:{CRASH_BATCH[runtime]}"},
               runtime=runtime, extra=["--commit-interval", "5"]).start()
    assert w.wait_exit() == -9, "the worker did not reach the crash point"
    crash = re.search(r"crashing after \w+ of batch (\d+), batches (\d+)-\d+ since the last commit",
                      (tmp_path / "crashing.log").read_text())
    assert crash, "no crash logged"
    if runtime == "aiokafka" and stage != "commit":
        assert int(crash[2]) < int(crash[1]), crash[0]
    w = worker(kafka_broker.bootstrap, prefix, tmp_path, "restarted", runtime=runtime).start()
    try:
        cmp, _, _ = collect_and_compare(kafka_broker.bootstrap, prefix, scenario,
                                        tmp_path / "m.parquet")
    finally:
        w.stop()
    assert cmp.equal, str(cmp)
    if stage == "outputs":
        # the crashed batch's outcomes were out already and were produced again
        assert LAST_STATS["copies"], LAST_STATS


def test_a_backlog_beyond_the_batch_budget_is_decided_in_bounded_batches(
        kafka_broker, topic_prefix, scenario, tmp_path: Path, runtime: str) -> None:
    """The whole campaign in Kafka (batched messages) before the worker starts, and a
    byte budget of a few messages per batch: most fetched messages wait in memory for
    later batches (their topics paused, nothing sought back), and every record is
    still decided once, as offline."""
    prefix, port = topic_prefix(), free_port()
    publish(kafka_broker.bootstrap, prefix, scenario, tmp_path / "m.parquet", 100)
    w = worker(kafka_broker.bootstrap, prefix, tmp_path, runtime=runtime,
               extra=["--max-batch-bytes", "30000", "--metrics-port", str(port)]).start()
    try:
        cmp, _, _ = collect_and_compare(kafka_broker.bootstrap, prefix, scenario,
                                        tmp_path / "m.parquet")
        metrics = get(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        w.stop()
    assert cmp.equal, str(cmp)
    assert not LAST_STATS["copies"], LAST_STATS  # no batch decided twice
    deferred = {s.name: s.value for f in text_string_to_metric_families(metrics)
                for s in f.samples}["mynapoint_batch_deferred_messages_total"]
    assert deferred > 0
