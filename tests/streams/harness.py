"""Shared machinery for end-to-end stream tests against the real broker.

A :class:`Scenario` is one generated campaign settled offline (the reference);
:func:`run_and_compare` publishes it, lets worker processes settle it, collects
the output topics and compares record for record via the publisher's manifest.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from aiokafka import TopicPartition

from engine.config import DEFAULT_REGISTRY
from engine.devtools.worker_process import WorkerProcess
from engine.kafka.topics import Topics, end_offsets, partition_for
from engine.tools.collect import collect
from engine.tools.compare import Comparison, compare
from engine.tools.publish import publish_files
from tests.builders import Scenario, make_scenario  # noqa: F401  (the streams tests' import)
from tests.kafka_fixtures import read_topics

PARTITIONS = 4
LAST_STATS: dict[str, object] = {}  # collect's counts from the last collect_and_compare
# counts of the fault tests' last run, quoted by docs/RELIABILITY.md
REPORT_DIR = Path(__file__).resolve().parents[2] / ".reliability"
# Quiet inputs' waits follow after 2 s instead of the shipped 30 (DECISIONS 112), so
# that a test's last waits end soon after its input; the broker-fault tests, whose
# publisher stalls behind a leader change, keep a longer one (QUIET_ACROSS_FAULTS).
QUIET_SECONDS = 2.0
QUIET_ACROSS_FAULTS = 20.0


def topics_for(prefix: str) -> Topics:
    """The topics of a test deployment: the shipped registry's operators (the ones
    the worker processes are started with)."""
    return Topics(prefix, f"{prefix}-engine", tuple(o.id for o in DEFAULT_REGISTRY.operators))


def worker(bootstrap: str, prefix: str, log_dir: Path, name: str = "w",
           env: dict[str, str] | None = None, extra: list[str] | None = None,
           runtime: str = "aiokafka", quiet: float = QUIET_SECONDS) -> WorkerProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    return WorkerProcess(bootstrap, prefix, PARTITIONS, state_dir=log_dir / "state",
                         log_path=log_dir / f"{name}.log",
                         extra=["--group", f"{prefix}-engine", "--max-batch", "500",
                                "--runtime", runtime, "--quiet-seconds", str(quiet),
                                *(extra or [])], env=env)


def publish(bootstrap: str, prefix: str, sc: Scenario, manifest: Path, batch: int,
            rate: float = 0.0) -> dict[str, object]:
    return asyncio.run(publish_files(bootstrap, topics_for(prefix), sc.enrollments,
                                     sc.transactions, batch=batch, rate=rate,
                                     partitions=PARTITIONS, manifest=manifest))


def from_doubled_input(diff: str) -> bool:
    """A difference explained by an input record Kafka stored twice: the second copy's
    DUPLICATE rejection, a rejection at an offset the publisher never recorded (the
    copy of a record rejected before the duplicate check, e.g. INVALID_AMOUNT), or a
    grant whose first copy is not in the manifest."""
    return (("only on the right" in diff
             and ("'reason': 'DUPLICATE'" in diff or diff.startswith("rejection ?")))
            or (diff.startswith("grant ") and "/'?" in diff and diff.count("=") == 1))


def collect_and_compare(bootstrap: str, prefix: str, sc: Scenario, manifest: Path,
                        idle: float = 30.0) -> tuple[Comparison, pa.Table, pa.Table]:
    """Collect the output topics until offline's count of outcomes is there, and
    compare. A record Kafka stored twice (a broker SIGKILL under the idempotent
    publisher) has an outcome of its own, so reaching the count does not mean every
    published record's outcome is in: collect again, expecting one more per copy."""
    m = pq.read_table(manifest)
    mapping = dict(zip(m["kafka_source"].to_pylist(), m["input_source"].to_pylist(),
                       strict=True))
    expect = sc.expected_outcomes
    while True:
        stats: dict[str, object] = {}
        grants, rejections = asyncio.run(collect(bootstrap, topics_for(prefix), expect=expect,
                                                 idle_timeout=idle, stats=stats))
        # a redelivered outcome must be byte-for-byte the same decision
        assert not stats.get("conflicts"), stats
        cmp = compare(sc.offline.grants, sc.offline.rejections, grants, rejections, mapping)
        copies = sum(d.startswith("rejection") and from_doubled_input(d)
                     for d in cmp.differences)
        if sc.expected_outcomes + copies <= expect:
            break
        expect = sc.expected_outcomes + copies
    LAST_STATS.clear()
    LAST_STATS.update(stats)
    return cmp, grants, rejections


async def output_end_offsets(bootstrap: str, prefix: str) -> dict[TopicPartition, int]:
    return await end_offsets(bootstrap, [TopicPartition(x, p) for x in topics_for(prefix).outputs
                                         for p in range(PARTITIONS)])


def grants_in_decision_order(bootstrap: str, prefix: str) -> dict[str, list[int]]:
    """README guarantee 6, checked on the grants as a consumer reads them (partition
    by partition, in offset order): each is keyed by its person's ``mykey_id`` and lies
    on that key's partition, and each person's ``cumulative_points`` moves by exactly
    the grant's ``points`` (up, 0 when capped, down on a clawback) from the one before.
    Returns each person's running totals, in the order read."""
    topics = [t for t, kind in topics_for(prefix).outcomes.items() if kind == "grant"]
    totals: dict[str, list[int]] = {}
    for m in asyncio.run(read_topics(bootstrap, topics, PARTITIONS)):
        g = json.loads(m.value)
        person = g["mykey_id"]
        assert m.key == person.encode(), (m.topic, m.partition, m.offset, m.key)
        assert m.partition == partition_for(m.key, PARTITIONS), (m.topic, m.offset, person)
        seen = totals.setdefault(person, [])
        before = seen[-1] if seen else 0
        assert g["cumulative_points"] == before + g["points"], (person, seen, g)
        seen.append(g["cumulative_points"])
    return totals


def output_end(bootstrap: str, prefix: str) -> int:
    """Outcome messages in the output topics so far (all partitions, copies included)."""
    return sum(asyncio.run(output_end_offsets(bootstrap, prefix)).values())


def records_in(sc: Scenario) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in (sc.enrollments, sc.transactions))


def report_name(name: str, runtime: str) -> str:
    """A fault report's name: the default runtime's keeps the name RELIABILITY.md has
    always quoted, another runtime's gets its suffix."""
    return name if runtime == "aiokafka" else f"{name}_{runtime}"


def fault_report(name: str, sc: Scenario, cmp: Comparison, **facts: object) -> dict[str, object]:
    """Counts of a fault test for docs/RELIABILITY.md: records in, outcomes out,
    missing, doubled (one id, two contents), different from offline."""
    missing = sum("only on the left" in d for d in cmp.differences)
    doubled = LAST_STATS.get("conflicts") or 0
    assert isinstance(doubled, int), LAST_STATS  # collect counts them
    report = {"test": name, "records_in": records_in(sc),
              "outcomes_out": cmp.grants_right + cmp.rejections_right,
              "offline_outcomes": sc.expected_outcomes,
              "missing": missing, "doubled": doubled,
              "different": len(cmp.differences) - missing, **facts}
    write_report(name, report)
    return report


def write_report(name: str, report: dict[str, object]) -> None:
    REPORT_DIR.mkdir(exist_ok=True)
    (REPORT_DIR / f"{name}.json").write_text(json.dumps({"test": name, **report}, indent=1)
                                             + "\n")
