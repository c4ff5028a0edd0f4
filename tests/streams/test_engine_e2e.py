"""The streaming engine against the real broker: equal to offline settle,
record for record, also across SIGKILLs, restarts and rebalances."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from tests.streams.harness import (
    LAST_STATS,
    Scenario,
    collect_and_compare,
    make_scenario,
    publish,
    worker,
)

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    # every reason code occurs at this size (see tests/test_generate.py)
    return make_scenario(tmp_path_factory.mktemp("campaign"), 400, 4000, seed=7)


@pytest.mark.parametrize("batch", [1000, 1])
def test_stream_equals_offline(kafka_broker, topic_prefix, scenario, tmp_path: Path,
                               batch: int) -> None:
    prefix = topic_prefix()
    w = worker(kafka_broker.bootstrap, prefix, tmp_path).start()
    try:
        publish(kafka_broker.bootstrap, prefix, scenario, tmp_path / "m.parquet", batch)
        cmp, grants, _ = collect_and_compare(kafka_broker.bootstrap, prefix, scenario,
                                             tmp_path / "m.parquet")
    finally:
        w.stop()
    assert cmp.equal, str(cmp)
    assert grants.num_rows == scenario.offline.grants.num_rows > 1000


def test_sigkill_mid_stream_changes_nothing(kafka_broker, topic_prefix, scenario,
                                            tmp_path: Path) -> None:
    """SIGKILL the worker at random moments while it settles, restart it each
    time: no outcome missing, none doubled (by stable id), none different."""
    prefix = topic_prefix()
    rng = random.Random(20201)
    w = worker(kafka_broker.bootstrap, prefix, tmp_path, "w0").start()
    # publish slowly in the background so the kills land mid-stream
    t = threading.Thread(target=publish, args=(kafka_broker.bootstrap, prefix, scenario,
                                               tmp_path / "m.parquet", 1, 150.0))
    t.start()
    kills = 0
    try:
        for k in range(3):
            w.wait_for("assigned partitions")
            time.sleep(rng.uniform(0.3, 1.5))
            assert w.alive, "worker died on its own"
            w.kill()
            kills += t.is_alive()  # only kills while records still flow count
            w = worker(kafka_broker.bootstrap, prefix, tmp_path, f"w{k + 1}").start()
        t.join()
        cmp, _, _ = collect_and_compare(kafka_broker.bootstrap, prefix, scenario,
                                        tmp_path / "m.parquet")
    finally:
        w.stop()
        t.join()
    assert kills == 3, "a kill landed after publishing ended: slow publishing down"
    assert cmp.equal, str(cmp)


def test_scale_out_join_and_leave(kafka_broker, topic_prefix, scenario, tmp_path: Path) -> None:
    """Two workers on one group: one joins mid-stream, the first leaves."""
    prefix = topic_prefix()
    a = worker(kafka_broker.bootstrap, prefix, tmp_path, "a").start()
    t = threading.Thread(target=publish, args=(kafka_broker.bootstrap, prefix, scenario,
                                               tmp_path / "m.parquet", 1, 1500.0))
    t.start()
    b = None
    try:
        time.sleep(1.0)
        b = worker(kafka_broker.bootstrap, prefix, tmp_path, "b").start()
        time.sleep(1.5)
        assert a.stop() == 0, "the leaving worker must shut down cleanly"
        t.join()
        cmp, _, _ = collect_and_compare(kafka_broker.bootstrap, prefix, scenario,
                                        tmp_path / "m.parquet")
    finally:
        a.stop()
        if b is not None:
            b.stop()
        t.join()
    assert cmp.equal, str(cmp)


@pytest.mark.parametrize("stage", ["outputs", "state"])
def test_crash_at_an_exact_point_of_a_batch(kafka_broker, topic_prefix, scenario,
                                            tmp_path: Path, stage: str) -> None:
    """Crash injection at the two dangerous instants of the 4th batch: outcomes
    acknowledged but state not written (they are decided again, identically), and
    state written but offsets not committed (the redelivered records are skipped)."""
    prefix = topic_prefix()
    publish(kafka_broker.bootstrap, prefix, scenario, tmp_path / "m.parquet", 1)
    w = worker(kafka_broker.bootstrap, prefix, tmp_path, "crashing",
               env={"MYNAPOINT_CRASH_AT": f"{stage}:3"}).start()
    assert w.wait_exit() == -9, "the worker did not reach the crash point"
    w = worker(kafka_broker.bootstrap, prefix, tmp_path, "restarted").start()
    try:
        cmp, _, _ = collect_and_compare(kafka_broker.bootstrap, prefix, scenario,
                                        tmp_path / "m.parquet")
    finally:
        w.stop()
    assert cmp.equal, str(cmp)
    if stage == "outputs":
        # the crashed batch's outcomes were out already and were produced again
        assert LAST_STATS["copies"], LAST_STATS
