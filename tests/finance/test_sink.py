"""``ledger load --from-kafka`` against the real broker: the ledger built from the
worker's output topics equals the ledger built from offline ``settle`` row for row,
also after SIGKILLs of the sink mid-load; copies are skipped, conflicts refused."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from engine.finance import ledger
from engine.finance.ledger import InputError
from engine.finance.sink import CRASH_ENV, client_options
from engine.tools.compare import compare
from tests.builders import grant_topic, rejection_topic
from tests.finance.example import assert_derived_consistent
from tests.streams.harness import Scenario, collect_and_compare, make_scenario, publish, worker

pytestmark = pytest.mark.kafka


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", "ledger", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def sink_args(bootstrap: str, prefix: str, path: Path, *extra: str) -> list[str]:
    return ["load", "--ledger", str(path), "--from-kafka", "--broker", bootstrap,
            "--topic-prefix", prefix, *extra]


def rows(path: Path) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        row = con.execute("SELECT (SELECT count(*) FROM grants) + "
                          "(SELECT count(*) FROM rejections)").fetchone()
    assert row is not None
    return int(row[0])


def tables(path: Path) -> dict[str, Any]:
    """The rows and the derived tables (grant_months, grant_people) of a ledger."""
    con = ledger.connect(path)
    try:
        return {**{k: ledger.read_table(con, k) for k in ledger.KINDS},
                **{t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                   for t in ("grant_months", "grant_people")}}
    finally:
        con.close()


def assert_derived_consistent_file(path: Path) -> None:
    con = ledger.connect(path)
    try:
        assert_derived_consistent(con)
    finally:
        con.close()


class Stream:
    def __init__(self, bootstrap: str, prefix: str, scenario: Scenario, manifest: Path,
                 collected: Path) -> None:
        self.bootstrap, self.prefix, self.scenario = bootstrap, prefix, scenario
        self.manifest, self.collected = manifest, collected


@pytest.fixture(scope="module")
def stream(kafka_broker, tmp_path_factory: pytest.TempPathFactory) -> Stream:
    """A campaign settled by a real worker into fresh output topics; the outputs
    collected (which also waits until every outcome is on the topics)."""
    from tests.kafka_fixtures import new_prefix

    d = tmp_path_factory.mktemp("sink")
    sc = make_scenario(d / "campaign", 400, 4000, seed=7)
    prefix = new_prefix()
    w = worker(kafka_broker.bootstrap, prefix, d / "w").start()
    try:
        publish(kafka_broker.bootstrap, prefix, sc, d / "m.parquet", 1000)
        cmp, grants, rejections = collect_and_compare(kafka_broker.bootstrap, prefix, sc,
                                                      d / "m.parquet")
    finally:
        w.stop()
    assert cmp.equal, str(cmp)
    (d / "collected").mkdir()
    pq.write_table(grants, d / "collected" / "grants.parquet")
    pq.write_table(rejections, d / "collected" / "rejections.parquet")
    return Stream(kafka_broker.bootstrap, prefix, sc, d / "m.parquet", d / "collected")


def assert_equals_offline(s: Stream, path: Path) -> None:
    got = tables(path)
    m = pq.read_table(s.manifest)
    mapping = dict(zip(m["kafka_source"].to_pylist(), m["input_source"].to_pylist(),
                       strict=True))
    cmp = compare(s.scenario.offline.grants, s.scenario.offline.rejections, got["grant"],
                  got["rejection"], mapping)
    assert cmp.equal, str(cmp)


def test_stream_ledger_equals_offline_ledger(stream: Stream, tmp_path: Path) -> None:
    path = tmp_path / "stream.duckdb"
    r = cli(*sink_args(stream.bootstrap, stream.prefix, path))
    assert r.returncode == 0, r.stderr
    assert "conflicting copies refused" in r.stdout
    # offline settle's ledger, row for row, Kafka positions mapped to file lines
    assert_equals_offline(stream, path)
    # and exactly the ledger loaded from collect's Parquet files
    offline = tmp_path / "collected.duckdb"
    assert cli("load", "--ledger", str(offline), "--from", str(stream.collected)).returncode == 0
    assert tables(path) == tables(offline)
    assert_derived_consistent_file(path)
    # caught up: a second run reads nothing new and changes nothing
    before = tables(path)
    r = cli(*sink_args(stream.bootstrap, stream.prefix, path))
    assert r.returncode == 0 and "added 0 grants and 0 rejections" in r.stdout
    assert tables(path) == before


def test_sigkill_mid_load_leaves_every_outcome_once(stream: Stream, tmp_path: Path) -> None:
    total = stream.scenario.expected_outcomes
    path = tmp_path / "killed.duckdb"
    at_kill = []
    # injected SIGKILLs inside the transaction (rows written, not committed) and right
    # after a commit
    for point in ("before_commit:3", "after_commit:4", "before_commit:1"):
        r = cli(*sink_args(stream.bootstrap, stream.prefix, path, "--max-batch", "300"),
                env={CRASH_ENV: point})
        assert r.returncode == -signal.SIGKILL, r.stderr
        at_kill.append(rows(path))
    # and SIGKILLs from outside at an arbitrary moment: as soon as a commit reached the
    # write-ahead log, i.e. while the load is in flight
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "ledger",
                                 *sink_args(stream.bootstrap, stream.prefix, path,
                                            "--max-batch", "40")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wal = Path(f"{path}.wal")
        deadline = time.monotonic() + 120
        while not (wal.exists() and wal.stat().st_size > 0) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        at_kill.append(rows(path))
    # every kill landed mid-load: some rows committed, not all
    assert all(0 < n < total for n in at_kill), (at_kill, total)
    assert at_kill == sorted(at_kill)
    r = cli(*sink_args(stream.bootstrap, stream.prefix, path))
    assert r.returncode == 0, r.stderr
    assert rows(path) == total
    assert_equals_offline(stream, path)
    # the derived tables were written with the rows, so the kills left them consistent
    assert_derived_consistent_file(path)


def fresh_topics(bootstrap: str) -> Any:
    from engine.kafka.topics import Topics, ensure_topics
    from tests.kafka_fixtures import new_prefix

    topics = Topics(new_prefix(), operators=("paypay",))
    asyncio.run(ensure_topics(bootstrap, topics, 2))
    return topics


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from engine.kafka.produce import Outgoing
    from tests.kafka_fixtures import produce

    await produce(bootstrap, [(topic, Outgoing(0, None, v)) for v in values])


def test_copies_skipped_conflicts_reported_never_written(kafka_broker, stream: Stream,
                                                         tmp_path: Path) -> None:
    """On topics of their own (a copy of the stream's grants, then redeliveries)."""
    from engine.streams.codec_out import grant_to_json

    topics = fresh_topics(stream.bootstrap)
    prefix = topics.prefix
    grants = stream.scenario.offline.grants.slice(0, 50).to_pylist()
    values = [grant_to_json(g) for g in grants]
    changed = dict(grants[7], points=grants[7]["points"] + 1)
    asyncio.run(_produce(stream.bootstrap, grant_topic(topics), values))
    asyncio.run(_produce(stream.bootstrap, rejection_topic(topics), [b"{}"]))  # undecodable
    path = tmp_path / "l.duckdb"
    r = cli(*sink_args(stream.bootstrap, prefix, path))
    assert r.returncode == 0, r.stderr
    assert "1 undecodable" in r.stdout
    first = tables(path)
    assert first["grant"].num_rows == 50
    # redelivery: identical copies and one conflicting copy; the load goes on after it
    asyncio.run(_produce(stream.bootstrap, grant_topic(topics),
                         [values[3], grant_to_json(changed), values[9]]))
    extra = dict(grants[0], grant_id="c/x/AB12cd34/new", txn_id="new")
    asyncio.run(_produce(stream.bootstrap, grant_topic(topics), [grant_to_json(extra)]))
    r = cli(*sink_args(stream.bootstrap, prefix, path))
    assert r.returncode == 1
    assert "2 identical copies skipped; 1 conflicting copies refused" in r.stdout
    conflict_lines = [x for x in r.stderr.splitlines() if "conflict" in x]
    assert len(conflict_lines) == 1 and repr(grants[7]["grant_id"]) in conflict_lines[0]
    assert "points" in conflict_lines[0]
    after = tables(path)
    assert after["grant"].num_rows == 51  # only the new grant was added
    old = {g["grant_id"]: g for g in after["grant"].to_pylist()}
    assert old[grants[7]["grant_id"]]["points"] == grants[7]["points"]


def test_follow_serves_metrics_and_stops_on_sigterm(kafka_broker, stream: Stream,
                                                    tmp_path: Path) -> None:
    from engine.devtools.broker import free_port
    from engine.streams.codec_out import grant_to_json

    topics = fresh_topics(stream.bootstrap)
    prefix = topics.prefix
    grants = stream.scenario.offline.grants.slice(0, 5).to_pylist()
    asyncio.run(_produce(stream.bootstrap, grant_topic(topics), [grant_to_json(g) for g in grants]))
    asyncio.run(_produce(stream.bootstrap, rejection_topic(topics), []))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "ledger",
                             *sink_args(stream.bootstrap, prefix, tmp_path / "l.duckdb",
                                        "--follow", "--metrics-port", str(port))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        changed = dict(grants[1], points=grants[1]["points"] + 1)
        asyncio.run(_produce(stream.bootstrap, grant_topic(topics), [grant_to_json(changed)]))
        deadline = time.monotonic() + 60
        text = ""
        while "mynapoint_ledger_conflicts_total 1.0" not in text:
            assert time.monotonic() < deadline, text
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as resp:
                    text = resp.read().decode()
            except OSError:
                pass
            time.sleep(0.2)
        assert 'mynapoint_ledger_outcomes_added_total{kind="grant"} 5.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err  # stopped cleanly; 1: a conflict was refused
    assert "added 5 grants" in out and "conflict" in err


def test_client_config(tmp_path: Path) -> None:
    f = tmp_path / "client.properties"
    f.write_text("# comment\nsecurity.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n"
                 'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule '
                 'required username="ledger" password="p\\\\\\"w";\n')  # Java escapes
    assert client_options(f) == {"security_protocol": "SASL_PLAINTEXT",
                                 "sasl_mechanism": "SCRAM-SHA-512",
                                 "sasl_plain_username": "ledger",
                                 "sasl_plain_password": 'p"w'}
    f.write_text("security.protocol=SASL_PLAINTEXT\nbootstrap.servers=x:1\n")
    with pytest.raises(InputError, match=r"client\.properties: .*bootstrap\.servers"):
        client_options(f)
    r = cli("load", "--ledger", str(tmp_path / "l.duckdb"), "--from-kafka",
            "--client-config", str(f))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "bootstrap.servers" in r.stderr
