"""The fault matrix of docs/RELIABILITY.md, against the real broker: worker kills
inside batches, a frozen zombie, scale-out while records flow, a wiped state
directory, a deleted changelog, a recreated input topic. Each row ends with the
stream compared to offline ``settle``, record for record, and its counts written
to ``.reliability/``."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaConsumer

from engine.devtools.broker import free_port
from engine.kafka.client_config import default_client
from engine.kafka.produce import Outgoing
from engine.kafka.topics import Topics, delete_topics, partition_for
from engine.rules.model import NO_TIME
from engine.streams.rebuild import rebuild_state
from engine.streams.recovery import read_range
from engine.streams.state import FENCE_KEY, ChangelogRecord, ShardStore
from tests.builders import compacted, txn_topic
from tests.kafka_fixtures import produce
from tests.streams.harness import (
    LAST_STATS,
    PARTITIONS,
    Scenario,
    collect_and_compare,
    fault_report,
    make_scenario,
    output_end,
    output_end_offsets,
    publish,
    report_name,
    topics_for,
    worker,
    write_report,
)

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return make_scenario(tmp_path_factory.mktemp("faults"), 300, 3000, seed=11)


def _publisher(bootstrap: str, prefix: str, sc: Scenario, manifest: Path,
               rate: float) -> threading.Thread:
    t = threading.Thread(target=publish, args=(bootstrap, prefix, sc, manifest, 1, rate))
    t.start()
    return t


def _outcomes_beyond(bootstrap: str, prefix: str, count: int, wait: float = 60.0) -> int:
    """Wait until more than ``count`` outcomes are out; return how many."""
    deadline = time.monotonic() + wait
    while (n := output_end(bootstrap, prefix)) <= count:
        assert time.monotonic() < deadline, f"no outcome beyond {count} within {wait} s"
        time.sleep(0.2)
    return n


def _ignored_in_logs(log_dir: Path) -> int:
    return sum(int(n) for f in log_dir.glob("*.log")
               for n in re.findall(r"\((\d+) of a fenced-off writer ignored\)",
                                   f.read_text(errors="replace")))


def test_sigkill_three_times_inside_batches(kafka_broker, topic_prefix, scenario,
                                            tmp_path: Path, runtime: str) -> None:
    """SIGKILL the worker three times at random moments, each proven to land while
    it was inside a batch, restart it each time: nothing missing, doubled or
    different."""
    prefix = topic_prefix()
    rng = random.Random(20201)
    marker = tmp_path / "batch.marker"
    env = {"MYNAPOINT_BATCH_MARKER": str(marker)}
    w = worker(kafka_broker.bootstrap, prefix, tmp_path, "w0", env=env, runtime=runtime).start()
    t = _publisher(kafka_broker.bootstrap, prefix, scenario, tmp_path / "m.parquet", 90.0)
    kills = 0
    try:
        for k in range(3):
            w.wait_for("assigned partitions")
            time.sleep(rng.uniform(0.3, 1.5))
            assert w.alive, "worker died on its own"
            w.kill_inside_batch(marker)
            kills += t.is_alive()  # only kills while records still flow count
            marker.unlink(missing_ok=True)
            w = worker(kafka_broker.bootstrap, prefix, tmp_path, f"w{k + 1}", env=env,
                       runtime=runtime).start()
        t.join()
        cmp, _, _ = collect_and_compare(kafka_broker.bootstrap, prefix, scenario,
                                        tmp_path / "m.parquet")
    finally:
        w.stop()
        t.join()
    fault_report(report_name("sigkill_x3", runtime), scenario, cmp, kills_inside_batches=kills)
    assert kills == 3, "a kill landed after publishing ended: slow publishing down"
    assert cmp.equal, str(cmp)


def test_zombie_frozen_past_its_session_writes_nothing_that_survives(
        kafka_broker, topic_prefix, scenario, tmp_path: Path) -> None:
    """Worker A freezes (SIGSTOP) right after its 6th batch's outcomes were
    acknowledged, before its state is written; B takes every partition over; A is
    resumed and, a zombie now, writes its stale state to the changelog and fails
    to commit. Later restores ignore that state, and the outcomes equal offline."""
    prefix = topic_prefix()
    a = worker(kafka_broker.bootstrap, prefix, tmp_path, "a",
               env={"MYNAPOINT_STALL_AT": "outputs:5"}).start()
    t = _publisher(kafka_broker.bootstrap, prefix, scenario, tmp_path / "m.parquet", 100.0)
    b = None
    try:
        a.wait_for("stalling at outputs:5")
        time.sleep(0.5)  # SIGSTOP has landed once the log line is out
        b = worker(kafka_broker.bootstrap, prefix, tmp_path, "b").start()
        b.wait_for(f"assigned partitions {list(range(PARTITIONS))}", 60)
        assert t.is_alive(), "records must still flow while the zombie is frozen"
        time.sleep(1.0)
        a.resume()
        a.wait_for("offset commit failed", 60)  # the zombie finished its batch
        time.sleep(3.0)
        assert b.stop() == 0  # A now restores every partition, the zombie's writes included
        a.wait_for(f"assigned partitions {list(range(PARTITIONS))}", 60)
        t.join()
        cmp, _, _ = collect_and_compare(kafka_broker.bootstrap, prefix, scenario,
                                        tmp_path / "m.parquet")
    finally:
        a.resume()
        a.stop()
        if b is not None:
            b.stop()
        t.join()
    ignored = _ignored_in_logs(tmp_path)
    rewritten = sum(int(n) for f in tmp_path.glob("*.log")
                    for n in re.findall(r"(\d+) keys of another writer's state records",
                                        f.read_text(errors="replace")))
    changelog = _changelog(kafka_broker.bootstrap, prefix)
    lost = _lost_to_compaction(changelog, tmp_path / "compacted")
    # one writer fenced off per partition, the zombie: a second would be an owner
    # fenced off by a fence the zombie wrote (DECISIONS 140)
    fenced = [_fenced_off_tags(records) for records in changelog]
    owners_fenced = sum(len(tags) > 1 for tags in fenced)
    fault_report("zombie_sigstop", scenario, cmp, zombie_records_ignored=ignored,
                 zombie_keys_written_again=rewritten, lost_to_compaction=len(lost),
                 owners_fenced_off=owners_fenced)
    assert ignored > 0, "the zombie's stale changelog writes were not seen and ignored"
    assert owners_fenced == 0, f"fenced-off writers per partition: {fenced}"
    assert rewritten > 0, "the owner did not write again what the zombie wrote after it"
    assert lost == [], "a compacted changelog would restore these keys otherwise"
    assert cmp.equal, str(cmp)


def _changelog(bootstrap: str, prefix: str) -> list[list[ChangelogRecord]]:
    """Every record of each changelog partition, in order."""
    topics = topics_for(prefix)

    async def read() -> list[list[ChangelogRecord]]:
        reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                                  enable_auto_commit=False)
        await reader.start()
        try:
            return [await read_range(reader, topics, p, 0, 1 << 62) for p in range(PARTITIONS)]
        finally:
            await reader.stop()

    return asyncio.run(read())


def _fenced_off_tags(records: list[ChangelogRecord]) -> set[int]:
    """The fence tags (each a writer's generation) of the records a restore ignores:
    written under a fence older than one before them."""
    fence, tags = -1, set()
    for k, _, off, tag in records:
        if k == FENCE_KEY:
            fence = off
        elif tag is not None and tag < fence:
            tags.add(tag)
    return tags


def _lost_to_compaction(changelog: list[list[ChangelogRecord]], work: Path) -> list[str]:
    """The keys whose state a restore from scratch of the compacted changelog (the
    newest record of each key) would give otherwise than one of the whole changelog:
    a zombie's record newest of its key (docs/RELIABILITY.md)."""
    lost = []
    for p, records in enumerate(changelog):
        kept = compacted(records)
        whole = ShardStore(work / f"whole-{p}", NO_TIME)
        after = ShardStore(work / f"compacted-{p}", NO_TIME)
        whole.restore(records)
        after.restore(kept)
        lost += [f"{p}/{k.decode()}" for k, *_ in kept
                 if k != FENCE_KEY and whole.value(k.decode()) != after.value(k.decode())]
        whole.close()
        after.close()
    return lost


def test_scale_out_join_and_leave_while_records_flow(kafka_broker, topic_prefix, scenario,
                                                      tmp_path: Path, runtime: str) -> None:
    """A second worker joins while records flow, then the first leaves: both owned
    partitions, and outcomes were produced before, between and after the changes."""
    prefix = topic_prefix()
    bootstrap = kafka_broker.bootstrap
    a = worker(bootstrap, prefix, tmp_path, "a", runtime=runtime).start()
    # a Faust member takes longer to join and leave (its own rebalance protocol)
    rate = 120.0 if runtime == "aiokafka" else 60.0
    t = _publisher(bootstrap, prefix, scenario, tmp_path / "m.parquet", rate)
    b = None
    try:
        a.wait_for("assigned partitions [0")
        before_join = _outcomes_beyond(bootstrap, prefix, 0)
        b = worker(bootstrap, prefix, tmp_path, "b", runtime=runtime).start()
        b.wait_for("assigned partitions [", 60)
        before_leave = _outcomes_beyond(bootstrap, prefix, before_join)
        assert a.stop() == 0, "the leaving worker must shut down cleanly"
        after_leave = output_end(bootstrap, prefix)
        assert t.is_alive(), "records must still flow after both changes"
        t.join()
        cmp, _, _ = collect_and_compare(bootstrap, prefix, scenario, tmp_path / "m.parquet")
        total = output_end(bootstrap, prefix)
    finally:
        a.stop()
        if b is not None:
            b.stop()
        t.join()
    fault_report(report_name("scale_out", runtime), scenario, cmp, outcomes_before_join=before_join,
                 outcomes_before_leave=before_leave, outcomes_after_leave=after_leave)
    assert 0 < before_join < before_leave <= after_leave < total
    assert cmp.equal, str(cmp)


def test_wiped_state_directory_is_rebuilt_from_the_changelog(kafka_broker, topic_prefix,
                                                             scenario, tmp_path: Path) -> None:
    prefix = topic_prefix()
    bootstrap = kafka_broker.bootstrap
    w = worker(bootstrap, prefix, tmp_path, "first").start()
    t = _publisher(bootstrap, prefix, scenario, tmp_path / "m.parquet", 300.0)
    try:
        _outcomes_beyond(bootstrap, prefix, 0)  # the first run decided something
        assert t.is_alive()
        w.stop()
        shutil.rmtree(tmp_path / "state")
        w = worker(bootstrap, prefix, tmp_path, "second").start()
        t.join()
        cmp, _, _ = collect_and_compare(bootstrap, prefix, scenario, tmp_path / "m.parquet")
    finally:
        w.stop()
        t.join()
    log = (tmp_path / "second.log").read_text()
    restored = sum(int(n) for n in re.findall(r"restored: (\d+) changelog records", log))
    fault_report("wiped_state_dir", scenario, cmp, changelog_records_restored=restored)
    assert restored > 0
    assert cmp.equal, str(cmp)


def _refused(metrics_port: int) -> set[int]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                  timeout=5).read().decode()
    return {int(p) for p, v in re.findall(
        r'mynapoint_partition_refused\{partition="(\d+)"\} (\S+)', text) if float(v) == 1}


def _delete_topics(bootstrap: str, names: list[str]) -> None:
    asyncio.run(delete_topics(bootstrap, names))
    time.sleep(2.0)  # deletion is asynchronous on the broker


def _wait_refused(port: int, want: set[int]) -> None:
    deadline = time.monotonic() + 60
    while (got := _refused(port)) != want:
        assert time.monotonic() < deadline, f"refused partitions {got}, expected {want}"
        time.sleep(0.5)


def _refuses_every_partition(bootstrap: str, prefix: str, tmp_path: Path, reason: str) -> int:
    """Start a worker that must refuse every partition (metric and one log line
    each matching ``reason``) and emit nothing; return the outcome count."""
    outputs = output_end(bootstrap, prefix)
    port = free_port()
    w = worker(bootstrap, prefix, tmp_path, "refusing",
               extra=["--metrics-port", str(port)]).start()
    try:
        _wait_refused(port, set(range(PARTITIONS)))
        log = (tmp_path / "refusing.log").read_text()
        assert len(re.findall(reason, log)) == PARTITIONS, log
        time.sleep(2.0)
        assert output_end(bootstrap, prefix) == outputs, "outcomes emitted while refused"
    finally:
        w.stop()
    return outputs


def test_lost_changelog_is_refused_until_rebuilt(kafka_broker, topic_prefix, scenario,
                                                 tmp_path: Path) -> None:
    """The changelog topic is deleted while the worker is down. On restart the
    worker refuses every partition (one log line each, a metric), emits nothing
    from empty state, and after `admin rebuild-state` decides everything again,
    identically."""
    prefix = topic_prefix()
    bootstrap = kafka_broker.bootstrap
    w = worker(bootstrap, prefix, tmp_path, "before").start()
    publish(bootstrap, prefix, scenario, tmp_path / "m.parquet", 1000)
    collect_and_compare(bootstrap, prefix, scenario, tmp_path / "m.parquet")
    w.stop()
    shutil.rmtree(tmp_path / "state")  # and the local copies: nothing of the state is left
    _delete_topics(bootstrap, [topics_for(prefix).changelog])
    outputs = _refuses_every_partition(bootstrap, prefix, tmp_path,
                                       r"partition \d refused: .*state changelog was deleted")
    done = asyncio.run(rebuild_state(bootstrap, Topics(prefix, f"{prefix}-engine"), None))
    assert sorted(done) == list(range(PARTITIONS))
    w = worker(bootstrap, prefix, tmp_path, "rebuilt").start()
    try:
        cmp, _, _ = collect_and_compare(bootstrap, prefix, scenario, tmp_path / "m.parquet")
        deadline = time.monotonic() + 60
        while (again := output_end(bootstrap, prefix)) < 2 * outputs:
            assert time.monotonic() < deadline, "the input was not decided again"
            time.sleep(0.5)
    finally:
        w.stop()
    fault_report("changelog_deleted", scenario, cmp, partitions_refused=PARTITIONS,
                 outcomes_emitted_while_refused=0, outcomes_reemitted=again - outputs)
    assert cmp.equal and not LAST_STATS["conflicts"], str(cmp)


def test_recreated_input_topic_is_refused_not_skipped(kafka_broker, topic_prefix, scenario,
                                                       tmp_path: Path) -> None:
    """The transactions topic is deleted and recreated with fewer, new records
    while the worker is down. The worker refuses the partitions whose committed
    offsets no longer match instead of skipping the new records; after
    `admin rebuild-state` every new record gets exactly one outcome."""
    prefix = topic_prefix()
    bootstrap = kafka_broker.bootstrap
    w = worker(bootstrap, prefix, tmp_path, "before").start()
    publish(bootstrap, prefix, scenario, tmp_path / "m1.parquet", 1)
    collect_and_compare(bootstrap, prefix, scenario, tmp_path / "m1.parquet")
    w.stop()
    _delete_topics(bootstrap, list(topics_for(prefix).transaction_inputs))
    fresh = make_scenario(tmp_path / "fresh", 60, 200, seed=99)
    only_txn = Scenario(tmp_path / "none.jsonl", fresh.transactions, fresh.offline)
    only_txn.enrollments.write_text("")
    publish(bootstrap, prefix, only_txn, tmp_path / "m2.parquet", 1)
    new_sources = set(pq.read_table(tmp_path / "m2.parquet")["kafka_source"].to_pylist())
    # None of these people applied: each charge waits a day of stream time for an
    # application, so the last of each partition would wait for ever. A later record
    # per partition (not counted) lets every wait end, as the rest of a campaign would.
    asyncio.run(produce(bootstrap, [(txn_topic(topics_for(prefix)), _clock_record(p))
                                    for p in range(PARTITIONS)]))
    _refuses_every_partition(bootstrap, prefix, tmp_path,
                             r"refused: .*transactions/\d .*input topic was")
    asyncio.run(rebuild_state(bootstrap, Topics(prefix, f"{prefix}-engine"), None))
    # the old run's outcomes stay on the outputs, and a recreated topic's offsets start
    # again at 0: its new records' sources can equal old ones, so only what the rebuilt
    # worker writes counts
    before = asyncio.run(output_end_offsets(bootstrap, prefix))
    w = worker(bootstrap, prefix, tmp_path, "rebuilt").start()
    try:
        deadline = time.monotonic() + 90
        while True:
            written = asyncio.run(_written_since(bootstrap, before))
            decided = [s for s in written if s in new_sources]
            if len(set(decided)) == len(new_sources) or time.monotonic() > deadline:
                break
            time.sleep(2.0)
    finally:
        w.stop()
    missing = len(new_sources - set(decided))
    report = {"records_in": len(new_sources), "outcomes_out": len(decided),
              "missing": missing, "doubled": len(decided) - len(set(decided))}
    write_report("input_recreated", {**report, "different": 0,
                                     "partitions_refused": PARTITIONS})
    assert missing == 0 and len(decided) == len(new_sources), sorted(
        new_sources - set(decided))


def _clock_record(partition: int) -> Outgoing:
    """A paypay purchase on ``partition``, received three weeks after every generated
    record and before the campaign stops accepting records."""
    key = next(f"Clock{i:03d}" for i in range(1000)
               if partition_for(f"Clock{i:03d}".encode(), PARTITIONS) == partition)
    rec = {"txn_id": f"clock-{partition}", "operator_id": "paypay", "mykey_id": key,
           "kind": "purchase", "amount": 100, "occurred_at": "2021-09-29T00:00:00Z",
           "received_at": "2021-10-20T00:00:00Z"}
    return Outgoing(partition, key.encode(), orjson.dumps(rec), 1_634_688_000_000)


async def _written_since(bootstrap: str, since: dict[Any, int]) -> list[str]:
    """The ``source`` of every outcome message written after the offsets ``since``."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                         enable_auto_commit=False)
    await c.start()
    try:
        tps = list(since)
        c.assign(tps)
        for tp, offset in since.items():
            c.seek(tp, offset)
        ends = await c.end_offsets(tps)
        out: list[str] = []
        while [tp for tp in tps if await c.position(tp) < ends[tp]]:
            for msgs in (await c.getmany(timeout_ms=1000)).values():
                out.extend(orjson.loads(m.value)["source"] for m in msgs)
        return out
    finally:
        await c.stop()


def test_a_failed_take_over_is_retried_and_lag_is_exported_for_every_topic(
        kafka_broker, topic_prefix, scenario, tmp_path: Path) -> None:
    """An exception while taking a partition over is not swallowed with the
    partition left assigned and unserved: it is logged and retried. And consumer
    lag is exported for the transactions topic too, not only enrollments."""
    prefix = topic_prefix()
    bootstrap = kafka_broker.bootstrap
    port = free_port()
    w = worker(bootstrap, prefix, tmp_path, "w", env={"MYNAPOINT_FAIL_AT": "takeover:0"},
               extra=["--metrics-port", str(port)]).start()
    try:
        w.wait_for(f"assigned partitions {list(range(PARTITIONS))}", 60)
        publish(bootstrap, prefix, scenario, tmp_path / "m.parquet", 1000)
        cmp, _, _ = collect_and_compare(bootstrap, prefix, scenario, tmp_path / "m.parquet")
        time.sleep(1.5)  # lag is exported at most once a second
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                      timeout=5).read().decode()
    finally:
        w.stop()
    log = (tmp_path / "w.log").read_text()
    assert re.search(r"taking over partition \d failed \(KafkaConnectionError: .*injected", log)
    assert cmp.equal, str(cmp)
    lag_topics = set(re.findall(r'mynapoint_consumer_lag\{partition="\d",topic="([^"]+)"\}',
                                text))
    assert set(topics_for(prefix).consumed) <= lag_topics, lag_topics
