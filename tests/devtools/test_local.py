"""The local broker management in engine.devtools.broker, against a real Kafka 3.9 broker."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from engine.devtools import broker as devbroker
from engine.kafka.client_config import ENV, default_client
from tests.kafka_fixtures import create_topic, session_broker_dir

pytestmark = pytest.mark.kafka


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(), acks="all",
                                enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, group: str, expected: int,
                   isolation_level: str = "read_uncommitted") -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, **default_client(),
                                group_id=group,
                                auto_offset_reset="earliest", isolation_level=isolation_level)
    await consumer.start()
    out: list[tuple[bytes, bytes]] = []
    try:
        while len(out) < expected:
            batches = await consumer.getmany(timeout_ms=1000)
            for messages in batches.values():
                out.extend((m.key, m.value) for m in messages if m.key is not None
                           and m.value is not None)
    finally:
        await consumer.stop()
    return out


def _run(coro, timeout: float = 60.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def _records(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"user-{i % 17}".encode(), f"record-{i}".encode()) for i in range(n)]


def test_start_is_idempotent(kafka_broker: devbroker.Broker) -> None:
    assert kafka_broker.bootstrap == f"127.0.0.1:{kafka_broker.port}"
    assert devbroker.is_ready(kafka_broker.bootstrap, 5.0)
    again = devbroker.start(port=kafka_broker.port, data_dir=kafka_broker.data_dir)
    assert again.pid == kafka_broker.pid
    assert again.startup_seconds is None  # found running, not started
    assert again.bootstrap == kafka_broker.bootstrap
    assert devbroker.status(kafka_broker.port, kafka_broker.data_dir) == again


def test_broker_listens_on_loopback_only(kafka_broker: devbroker.Broker) -> None:
    props = (kafka_broker.data_dir / devbroker.SERVER_PROPERTIES).read_text()
    assert f"advertised.listeners=BROKER://127.0.0.1:{kafka_broker.port}\n" in props
    # clients authenticate (SCRAM) and ACLs deny by default; only the controller
    # listener, on loopback, is PLAINTEXT
    assert "listener.security.protocol.map=BROKER:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT\n" \
        in props
    assert "allow.everyone.if.no.acl.found=false\n" in props
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" \
        in props
    for line in props.splitlines():
        if line.startswith("listeners="):
            assert all("//127.0.0.1:" in url for url in line.split("=", 1)[1].split(","))


def test_broker_runs_with_kafkas_own_jvm_settings(kafka_broker: devbroker.Broker) -> None:
    """DECISIONS 108: a heap fixed at its size and the G1 settings of Kafka's start
    scripts, on the process actually running."""
    args = Path(f"/proc/{kafka_broker.pid}/cmdline").read_bytes().decode().split("\0")
    heap = {a for a in args if a.startswith(("-Xms", "-Xmx"))}
    assert heap == {"-Xms1g", "-Xmx1g"}
    assert {"-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35"} <= set(args)


def test_produce_consume_round_trip(kafka_broker: devbroker.Broker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}-roundtrip"
    records = _records(200)
    _run(create_topic(kafka_broker.bootstrap, topic))
    _run(_produce(kafka_broker.bootstrap, topic, records))
    got = _run(_consume(kafka_broker.bootstrap, topic, f"{topic_prefix}-g", len(records)))
    assert sorted(got) == sorted(records)


def test_transactional_producer_commits(kafka_broker: devbroker.Broker, topic_prefix: str) -> None:
    # A single-node broker needs the transaction-log settings, or this hangs.
    topic = f"{topic_prefix}-tx"
    _run(create_topic(kafka_broker.bootstrap, topic))

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, **default_client(),
                                    transactional_id=f"{topic_prefix}-txid")
        await producer.start()
        try:
            async with producer.transaction():
                for key, value in _records(10):
                    await producer.send(topic, value, key=key)
        finally:
            await producer.stop()

    _run(produce())
    got = _run(_consume(kafka_broker.bootstrap, topic, f"{topic_prefix}-g", 10,
                        isolation_level="read_committed"))
    assert sorted(got) == sorted(_records(10))


def test_topic_prefix_is_fresh(topic_prefix: str) -> None:
    assert topic_prefix.startswith("t") and len(topic_prefix) == 9
    other = topic_prefix()  # type: ignore[operator]
    assert other != topic_prefix and len(other) == 9


def test_stop_never_kills_an_unrelated_process(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    # Looks like a broker, but of another data dir.
    lookalike = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                  "kafka.Kafka", "/elsewhere/server.properties"])
    try:
        for proc in (sleeper, lookalike):
            (tmp_path / devbroker.PID_FILE).write_text(f"{proc.pid}\n")
            assert devbroker.stop(port=devbroker.free_port(), data_dir=tmp_path) is False
            assert proc.poll() is None, "stop() killed a process that is not its broker"
            assert not (tmp_path / devbroker.PID_FILE).exists(), "stale pid file was kept"
        # Nothing recorded at all: a no-op.
        assert devbroker.stop(port=devbroker.free_port(), data_dir=tmp_path) is False
        assert devbroker.stop(port=devbroker.free_port(), data_dir=tmp_path / "missing") is False
    finally:
        for proc in (sleeper, lookalike):
            proc.kill()
            proc.wait()


def test_kill_then_start_recovers_data(request: pytest.FixtureRequest, topic_prefix: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    port = devbroker.free_port()
    data_dir = request.config.rootpath / ".kafka" / f"test-{port}"
    shutil.rmtree(data_dir, ignore_errors=True)
    topic = f"{topic_prefix}-durable"
    records = _records(500)
    try:
        broker = devbroker.start(port=port, data_dir=data_dir, wait=120.0)
        monkeypatch.setenv(ENV, str(broker.credentials()))
        _run(create_topic(broker.bootstrap, topic))
        _run(_produce(broker.bootstrap, topic, records))

        broker.kill()
        assert devbroker.status(port, data_dir) is None
        assert not devbroker.is_ready(broker.bootstrap, 0)

        restarted = devbroker.start(port=port, data_dir=data_dir, wait=120.0)
        assert restarted.pid != broker.pid
        assert restarted.startup_seconds is not None
        got = _run(_consume(restarted.bootstrap, topic, f"{topic_prefix}-g", len(records)))
        assert sorted(got) == sorted(records)
        assert restarted.stop() is True
        assert not devbroker.is_ready(restarted.bootstrap, 0)
    finally:
        devbroker.stop(port=port, data_dir=data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def test_port_taken_by_something_else_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(devbroker.KafkaError, match=f"port {port} .* already in use"):
            devbroker.start(port=port, data_dir=tmp_path / "broker")
    assert not (tmp_path / "broker").exists()


def test_missing_java_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(devbroker.KafkaError, match="`java` not found on PATH"):
        devbroker.start(port=devbroker.free_port(), data_dir=tmp_path / "broker")


def test_missing_mvn_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = shutil.which("java")
    assert java is not None
    (bin_dir / "java").symlink_to(java)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("MYNAPOINT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(devbroker.KafkaError, match="`mvn` not found on PATH"):
        devbroker.fetch_jars()
    assert not devbroker.libs_dir().exists()


def test_concurrent_fetches_share_one_complete_download(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYNAPOINT_CACHE", str(tmp_path / "cache"))
    results: list[Path] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            results.append(devbroker.fetch_jars())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    assert results == [devbroker.libs_dir()] * 2
    assert devbroker.jars_present()
    home = devbroker.libs_dir().parent
    assert sorted(p.name for p in home.iterdir()) == ["fetch.lock", "libs", "pom.xml"]
    assert devbroker.fetch_jars() == devbroker.libs_dir()  # cached: no mvn run


def test_cli_status_and_stop_when_nothing_runs(capsys: pytest.CaptureFixture[str]) -> None:
    port = devbroker.free_port()
    assert devbroker.main(argparse.Namespace(action="status", port=port)) == 1
    assert "not running" in capsys.readouterr().out
    assert devbroker.main(argparse.Namespace(action="stop", port=port)) == 0


def test_the_session_broker_belongs_to_one_test_process(kafka_broker: devbroker.Broker,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` runs two pytest-xdist processes, each with a session broker of its own
    (DECISIONS 136): its data directory is named by the process and the port, so two
    processes handed the same free port would still not share or delete each other's."""
    port = int(kafka_broker.bootstrap.rsplit(":", 1)[1])
    here = os.environ.get("PYTEST_XDIST_WORKER", "main")
    assert kafka_broker.data_dir.name == f"test-{here}-{port}"
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    first = session_broker_dir(port)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert session_broker_dir(port) != first
