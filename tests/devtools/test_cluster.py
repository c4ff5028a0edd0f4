"""The local three-broker KRaft cluster (``mynapoint kafka start --brokers 3``),
against real brokers: layout, replication of the engine's topics, kill and restart
of one node on its own data, and the command line."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, KafkaError

from engine.devtools import broker as devbroker
from engine.devtools import security
from engine.kafka.client_config import default_client
from engine.kafka.topics import Topics, discover, ensure_topics, topic_partitions
from tests.builders import grant_topic, rejection_topic, txn_topic
from tests.kafka_fixtures import client_config_of, produce_one, read_topic

pytestmark = pytest.mark.kafka


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", "kafka", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devbroker.Cluster]:
    """Started with the command line, as a user would; handled through the Python API."""
    cwd = tmp_path_factory.mktemp("cluster")
    port = devbroker.restartable_port(3)
    started = _cli(cwd, "start", "--brokers", "3", "--port", str(port))
    assert started.returncode == 0, started.stderr
    assert "cluster of 3 brokers ready" in started.stdout
    assert "replication factor 3, min.insync.replicas 2" in started.stdout
    found = devbroker.cluster_status(port, cwd / ".kafka" / f"cluster-{port}")
    assert found is not None
    try:
        with client_config_of(found.credentials()):
            yield found
    finally:
        stopped = _cli(cwd, "stop", "--port", str(port))
        shutil.rmtree(cwd / ".kafka", ignore_errors=True)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped


def _status(c: devbroker.Cluster) -> subprocess.CompletedProcess[str]:
    return _cli(c.root.parent.parent, "status", "--port", str(c.layout.nodes[0].port))


def _run(coro, timeout: float = 90.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


async def _describe(bootstrap: str, names: list[str]) -> tuple[dict, dict]:
    """(partition metadata by topic, topic configs by topic)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    await admin.start()
    try:
        while True:
            # a node that has not yet caught up with the controller describes a new
            # topic without partitions for a moment
            meta = {m["topic"]: m["partitions"] for m in await admin.describe_topics(names)}
            if all(meta.get(n) for n in names):
                break
            await asyncio.sleep(0.2)
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            # the node asked may likewise not know a new topic's configs yet
            responses = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
            configs: dict[str, dict[str, str]] = {}
            for r in responses:
                for code, _msg, _type, name, entries in r.resources:
                    if code == 0 and entries:
                        configs[name] = {e[0]: e[1] for e in entries}
            if set(configs) >= set(names) or asyncio.get_running_loop().time() > deadline:
                return meta, configs
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def test_three_nodes_one_quorum(cluster: devbroker.Cluster) -> None:
    assert cluster.size == 3 and sorted(cluster.nodes) == [1, 2, 3]
    ports = sorted(b.port for b in cluster.nodes.values())
    assert ports == [ports[0], ports[0] + 1, ports[0] + 2]
    assert cluster.bootstrap == ",".join(f"127.0.0.1:{p}" for p in ports)
    dirs = {b.data_dir for b in cluster.nodes.values()}
    assert len(dirs) == 3 and all(d.parent == cluster.root for d in dirs)
    for b in cluster.nodes.values():
        props = (b.data_dir / "server.properties").read_text()
        assert f"node.id={b.node_id}\n" in props
        assert "controller.quorum.voters=1@127.0.0.1:" in props and ",3@127.0.0.1:" in props
        for line in ("default.replication.factor=3", "min.insync.replicas=2",
                     "offsets.topic.replication.factor=3",
                     "transaction.state.log.replication.factor=3",
                     "transaction.state.log.min.isr=2"):
            assert f"\n{line}\n" in props
        assert devbroker.is_ready(b.bootstrap, 5.0)


def test_engine_topics_get_three_replicas_and_two_in_sync(cluster: devbroker.Cluster,
                                                          topic_prefix: str) -> None:
    topics = Topics(topic_prefix, operators=("paypay",))
    assert _run(ensure_topics(cluster.bootstrap, topics, 4)) == 4
    names = [*topics.inputs, grant_topic(topics), rejection_topic(topics), topics.changelog]
    meta, configs = _run(_describe(cluster.bootstrap, names))
    for name in names:
        assert len(meta[name]) == 4
        assert all(sorted(p["replicas"]) == [1, 2, 3] for p in meta[name]), meta[name]
        assert configs[name]["min.insync.replicas"] == "2"
    assert configs[topics.changelog]["cleanup.policy"] == "compact"


def test_every_node_refuses_a_client_without_valid_credentials(cluster: devbroker.Cluster,
                                                               topic_prefix: str) -> None:
    """README: `--brokers 3` secures the cluster as the single broker is secured."""
    topics = Topics(topic_prefix, operators=("paypay",))
    _run(ensure_topics(cluster.bootstrap, topics, 1))
    topic = topics.input_of("paypay", "transaction")
    wrong = {**cluster.client(security.ENGINE), "sasl_plain_password": "not-it"}
    for node in cluster.nodes.values():
        for client in (wrong, {}):  # a wrong password; no SASL at all
            with pytest.raises((KafkaConnectionError, KafkaError, TimeoutError)):
                _run(produce_one(node.bootstrap, topic, client))
    _run(produce_one(cluster.bootstrap, topic, cluster.client()))  # admin may
    assert len(_run(read_topic(cluster.bootstrap, topic, 1))) == 1  # only that one


def test_single_broker_topics_keep_one_replica(kafka_broker: devbroker.Broker,
                                               topic_prefix: str) -> None:
    topics = Topics(topic_prefix, operators=("paypay",))
    with client_config_of(kafka_broker.credentials()):  # not the module's cluster
        _run(ensure_topics(kafka_broker.bootstrap, topics, 2))
        meta, configs = _run(_describe(kafka_broker.bootstrap, [grant_topic(topics)]))
    assert all(p["replicas"] == [1] for p in meta[grant_topic(topics)])
    assert configs[grant_topic(topics)]["min.insync.replicas"] == "1"


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(),
                         acks="all", enable_idempotence=True)
    await p.start()
    try:
        for v in values:
            await p.send(topic, v, key=v)
        await p.flush()
    finally:
        await p.stop()


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, **default_client(),
                         auto_offset_reset="earliest",
                         enable_auto_commit=False)
    await c.start()
    out: list[bytes] = []
    try:
        while len(out) < expected:
            for msgs in (await c.getmany(timeout_ms=1000)).values():
                out.extend(m.value for m in msgs if m.value is not None)
    finally:
        await c.stop()
    return out


async def _in_sync(bootstrap: str, topic: str) -> list[list[int]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    await admin.start()
    try:
        (meta,) = await admin.describe_topics([topic])
        return [sorted(p["isr"]) for p in meta["partitions"]]
    finally:
        await admin.close()


async def _ask_repeatedly(bootstrap: str, topics: Topics, topic: str,
                          times: int) -> list[tuple[dict[str, int], tuple[str, ...]]]:
    """What ``times`` fresh admin clients answer for ``topic``'s partitions and for
    the operators (as ``collect`` asks them)."""
    unnamed = Topics(topics.prefix)
    return [(await topic_partitions(bootstrap, [topic]),
             (await discover(bootstrap, unnamed)).operators) for _ in range(times)]


def test_kill_one_node_then_restart_it_on_its_data(cluster: devbroker.Cluster,
                                                   topic_prefix: str) -> None:
    """Writes with acks=all go on while one node is dead (two replicas in sync);
    the node comes back on the same data directory and rejoins every ISR."""
    topics = Topics(topic_prefix, operators=("paypay",))
    _run(ensure_topics(cluster.bootstrap, topics, 3))
    before = [f"before-{i}".encode() for i in range(50)]
    during = [f"during-{i}".encode() for i in range(50)]
    _run(_produce(cluster.bootstrap, grant_topic(topics), before))
    victim = cluster.nodes[2]
    cluster.kill(2)
    assert 2 not in cluster.nodes
    # Right after the kill the cluster's metadata still lists the dead node, and an
    # admin request goes to a random listed node: each of these fresh clients hit it
    # with chance 1/2 or 1/3 and, before the retry, failed with NodeNotReadyError.
    asks = _run(_ask_repeatedly(cluster.bootstrap, topics, grant_topic(topics), 12))
    assert asks == [({grant_topic(topics): 3}, ("paypay",))] * 12
    down = _status(cluster)
    assert down.returncode == 1
    assert "node 2: not running" in down.stdout and "node 3: running" in down.stdout
    _run(_produce(cluster.bootstrap, grant_topic(topics), during), timeout=120)
    back = cluster.restart(2)
    assert back.pid != victim.pid and back.data_dir == victim.data_dir
    assert back.port == victim.port
    deadline = time.monotonic() + 90
    while any(isr != [1, 2, 3] for isr in _run(_in_sync(cluster.bootstrap, grant_topic(topics)))):
        assert time.monotonic() < deadline, "the restarted node did not rejoin the ISRs"
        time.sleep(1.0)
    got = _run(_read_all(cluster.bootstrap, grant_topic(topics), 100))
    assert sorted(got) == sorted(before + during)


def test_cli_status_reports_each_node(cluster: devbroker.Cluster) -> None:
    ok = _status(cluster)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert [f"node {i}: running" in ok.stdout for i in (1, 2, 3)] == [True] * 3


@pytest.mark.parametrize("brokers", [0, devbroker.MAX_BROKERS + 1])
def test_bad_broker_count_is_one_line_exit_2(brokers: int, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(action="start", port=devbroker.free_port(), brokers=brokers)
    assert devbroker.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--brokers must be 1 to {devbroker.MAX_BROKERS}" in err
    assert not (tmp_path / ".kafka").exists()


async def _produce_stamped(bootstrap: str, topic: str, stamps_ms: list[int]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(), acks="all",
                         enable_idempotence=True)
    await p.start()
    try:
        for i, ts in enumerate(stamps_ms):
            await p.send_and_wait(topic, f"r{i}".encode(), partition=0, timestamp_ms=ts)
    finally:
        await p.stop()


def test_business_timestamps_do_not_roll_a_segment_per_append(kafka_broker: devbroker.Broker,
                                                              topic_prefix: str) -> None:
    """Records stamped with their business time, months apart (a campaign replay),
    stay in one segment: a roll per append also meant a producer-state snapshot per
    append, and with it a record doubled by an idempotent producer's retry across a
    broker SIGKILL (seen once in five runs before, never in eight after)."""
    topics = Topics(topic_prefix, operators=("paypay",))
    day = 86_400_000
    june_2020 = 1_591_000_000_000
    with client_config_of(kafka_broker.credentials()):  # not the module's cluster
        _run(ensure_topics(kafka_broker.bootstrap, topics, 1, changelog=False))
        _run(_produce_stamped(kafka_broker.bootstrap, txn_topic(topics),
                              [june_2020 + i * 10 * day for i in range(30)]))
    segments = list((kafka_broker.data_dir / "data" / f"{txn_topic(topics)}-0").glob("*.log"))
    assert len(segments) == 1, sorted(s.name for s in segments)
