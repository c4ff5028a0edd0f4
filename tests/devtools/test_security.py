"""The secured local broker: SCRAM authentication and ACLs, against the real broker."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from engine.devtools import broker as devbroker
from engine.devtools import security
from engine.kafka.client_config import load_client_config, parse_client_config
from engine.kafka.topics import Topics, ensure_topics
from tests.kafka_fixtures import produce_one

OPERATOR, OTHER = "paypay", "aupay"


@pytest.fixture(scope="module")
def secured_topics(kafka_broker: devbroker.Broker) -> Topics:
    """A deployment of its own prefix: topics created by admin, ACLs as `kafka start`
    creates them for the default prefix."""
    topics = Topics(prefix="secured", operators=(OPERATOR, OTHER))
    asyncio.run(ensure_topics(kafka_broker.bootstrap, topics, 2))
    devbroker.add_acls(kafka_broker.bootstrap, kafka_broker.data_dir,
                       security.acl_plan(topics, [OPERATOR, OTHER]))
    return topics


async def _read(bootstrap: str, topic: str, client: dict[str, Any]) -> int:
    # subscribed (not assigned): a refused metadata lookup then raises at start
    # (no DESCRIBE) or at the fetch (no READ) instead of being retried
    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
                         auto_offset_reset="earliest", request_timeout_ms=10_000, **client)
    try:  # stopped after a refused start too (see kafka_fixtures.produce_one)
        await asyncio.wait_for(c.start(), 30)
        got = await asyncio.wait_for(c.getmany(timeout_ms=3000), 30)
        return sum(len(v) for v in got.values())
    finally:
        await c.stop()


async def _ends(bootstrap: str, topic: str, partitions: int = 2) -> int:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **load_client_config(None))
    await c.start()
    try:
        ends = await c.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(ends.values())
    finally:
        await c.stop()


def test_credentials_are_private_scram_properties(kafka_broker: devbroker.Broker) -> None:
    creds = security.credentials_dir(kafka_broker.data_dir)
    names = {p.stem for p in creds.glob("*.properties")}
    assert {"admin", "engine", "finance", OPERATOR, "aupay"} <= names
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    passwords = set()
    for f in creds.glob("*.properties"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        kw = parse_client_config(f.read_text())
        assert kw["security_protocol"] == "SASL_PLAINTEXT"
        assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
        assert kw["sasl_plain_username"] == f.stem
        assert len(kw["sasl_plain_password"]) >= 40
        passwords.add(kw["sasl_plain_password"])
    assert len(passwords) == len(names)
    # never on a command line, never in the broker's logs
    cmdline = Path(f"/proc/{kafka_broker.pid}/cmdline").read_bytes().decode()
    logs = "".join(p.read_text(errors="replace")
                   for p in (kafka_broker.data_dir / "logs").glob("*.log"))
    assert not [pw for pw in passwords if pw in cmdline or pw in logs]
    assert stat.S_IMODE((kafka_broker.data_dir / "server.properties").stat().st_mode) == 0o600
    assert not (kafka_broker.data_dir / "format.args").exists()


def test_operator_writes_its_inputs_and_nothing_else(kafka_broker: devbroker.Broker,
                                                     secured_topics: Topics) -> None:
    b, t = kafka_broker.bootstrap, secured_topics
    op = kafka_broker.client(OPERATOR)
    for topic in t.inputs_of(OPERATOR):
        before = asyncio.run(_ends(b, topic))
        asyncio.run(produce_one(b, topic, op))
        assert asyncio.run(_ends(b, topic)) == before + 1
    # another operator's inputs, the unattributed input, every output (its own too:
    # no operator can forge a grant) and the engine's topics
    for topic in (*t.inputs_of(OTHER), t.input_of(None, "transaction"), *t.outputs,
                  t.changelog, t.reroute_transactions):
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(produce_one(b, topic, op))
    # reading: its own outputs only, never another's outcomes or anybody's inputs
    for topic in t.outputs_of(OPERATOR):
        assert asyncio.run(_read(b, topic, op)) >= 0
    for topic in (*t.outputs_of(OTHER), *t.inputs, t.changelog):
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(_read(b, topic, op))

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=b, **op)
        await admin.start()
        try:
            resp = await admin.create_topics([NewTopic("secured.op-made", 1, 1)])
            codes = [e[1] for e in resp.topic_errors]
            if any(codes):
                raise KafkaError(f"refused: {codes}")
        finally:
            await admin.close()

    with pytest.raises(KafkaError):
        asyncio.run(create())


def test_operator_reads_its_outcomes_in_its_own_groups(kafka_broker: devbroker.Broker,
                                                       secured_topics: Topics) -> None:
    b, t = kafka_broker.bootstrap, secured_topics
    grants = t.outcome_topic("grant", OPERATOR)
    asyncio.run(produce_one(b, grants, kafka_broker.client(security.ENGINE)))

    async def read_in_group(group: str) -> int:
        c = AIOKafkaConsumer(grants, bootstrap_servers=b, group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             request_timeout_ms=10_000, **kafka_broker.client(OPERATOR))
        try:  # stopped after a refused start too (see kafka_fixtures.produce_one)
            await asyncio.wait_for(c.start(), 30)
            got = await asyncio.wait_for(c.getmany(timeout_ms=5000), 30)
            return sum(len(v) for v in got.values())
        finally:
            await c.stop()

    assert asyncio.run(read_in_group(f"secured.{OPERATOR}.statements")) >= 1
    with pytest.raises(KafkaError):  # GroupAuthorizationFailed: another's group prefix
        asyncio.run(read_in_group(f"secured.{OTHER}.statements"))


def test_finance_reads_outputs_writes_nothing(kafka_broker: devbroker.Broker,
                                              secured_topics: Topics) -> None:
    b, t = kafka_broker.bootstrap, secured_topics
    for topic in t.outputs:
        asyncio.run(produce_one(b, topic, kafka_broker.client(security.ENGINE)))
    fin = kafka_broker.client(security.FINANCE)
    for topic in t.outputs:
        assert asyncio.run(_read(b, topic, fin)) >= 1
    for topic in (*t.outputs, *t.inputs, t.changelog):
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(produce_one(b, topic, fin))


def test_engine_cannot_publish_inputs(kafka_broker: devbroker.Broker,
                                      secured_topics: Topics) -> None:
    b, t = kafka_broker.bootstrap, secured_topics
    eng = kafka_broker.client(security.ENGINE)
    for topic in t.inputs:
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(produce_one(b, topic, eng))
    asyncio.run(produce_one(b, t.changelog, eng))  # its own internal topic


def test_wrong_password_and_plaintext_are_refused(kafka_broker: devbroker.Broker,
                                                  secured_topics: Topics) -> None:
    b, t = kafka_broker.bootstrap, secured_topics
    mine = t.input_of(OPERATOR, "transaction")
    before = asyncio.run(_ends(b, mine))
    wrong = {**kafka_broker.client(OPERATOR), "sasl_plain_password": "not-the-password"}
    unknown = {**kafka_broker.client(OPERATOR), "sasl_plain_username": "nobody"}
    for client in (wrong, unknown, {}):
        with pytest.raises((KafkaConnectionError, KafkaError, TimeoutError)):
            asyncio.run(produce_one(b, mine, client))
    assert asyncio.run(_ends(b, mine)) == before


def test_credentials_path_names_the_file_never_the_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import gc

    monkeypatch.chdir(tmp_path)
    root = devbroker.default_data_dir(19092)
    security.Credentials.generate(["admin", OPERATOR]).write(root)
    from engine.cli import main

    # what earlier tests left to the collector reports itself when collected (asyncio
    # logs an unclosed client to stderr): collected here, not inside the CLI's output
    gc.collect()
    capsys.readouterr()

    session_config = os.environ.get("MYNAPOINT_CLIENT_CONFIG")
    assert main(["kafka", "credentials", OPERATOR, "--port", "19092"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(security.credentials_file(root, OPERATOR))
    assert "password" not in out
    assert main(["kafka", "credentials", "nobody", "--port", "19092"]) == 2
    err = capsys.readouterr().err
    assert "nobody" in err and "admin" in err and len(err.splitlines()) == 1
    # printing a path must not switch the session's default client
    assert os.environ.get("MYNAPOINT_CLIENT_CONFIG") == session_config


def test_add_operator_without_restart(kafka_broker: devbroker.Broker,
                                      secured_topics: Topics) -> None:
    b, t = kafka_broker.bootstrap, secured_topics
    path = devbroker.add_operator(b, kafka_broker.data_dir, "newpay", t)
    assert path == kafka_broker.credentials("newpay")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(kafka_broker.data_dir.glob("add-*.properties"))  # no password left
    new = kafka_broker.client("newpay")
    # its four topics exist, with the deployment's partition count
    for topic in t.operator_topics("newpay"):
        assert asyncio.run(_ends(b, topic)) >= 0
    enrollments = t.input_of("newpay", "enrollment")
    before = asyncio.run(_ends(b, enrollments))
    asyncio.run(produce_one(b, enrollments, new))
    assert asyncio.run(_ends(b, enrollments)) == before + 1
    # the engine reads it and writes its outputs, which it alone reads besides finance
    assert asyncio.run(_read(b, enrollments, kafka_broker.client(security.ENGINE))) >= 1
    grants = t.outcome_topic("grant", "newpay")
    asyncio.run(produce_one(b, grants, kafka_broker.client(security.ENGINE)))
    assert asyncio.run(_read(b, grants, new)) >= 1
    for topic in (grants, *t.inputs_of(OPERATOR)):
        with pytest.raises(TopicAuthorizationFailedError):
            asyncio.run(produce_one(b, topic, new))
    with pytest.raises(devbroker.KafkaError, match="already has credentials"):
        devbroker.add_operator(b, kafka_broker.data_dir, "newpay", t)
    with pytest.raises(devbroker.KafkaError, match="reserved"):
        devbroker.add_operator(b, kafka_broker.data_dir, "engine", t)


def test_a_failing_tool_never_shows_a_password(tmp_path: Path) -> None:
    """A Kafka tool that rejects its input may echo it (ConfigCommand does): the
    error raised to the user masks every password."""
    echo = tmp_path / "Echo.java"
    echo.write_text('public class Echo { public static void main(String[] a) {'
                    ' System.err.println("Invalid property password=" + a[0]);'
                    ' System.exit(1); } }')
    java = devbroker._require("java", "needed")
    secret = security.new_password()
    with pytest.raises(devbroker.KafkaError) as info:
        devbroker._java_tool(java, devbroker.fetch_jars(), tmp_path / "log4j.properties",
                         str(echo), secret, hide=(secret,))
    assert secret not in str(info.value)
    assert "password=******" in str(info.value)


def _cli(*args: str, env_config: str | None = None) -> Any:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MYNAPOINT_CLIENT_CONFIG"}
    if env_config:
        env["MYNAPOINT_CLIENT_CONFIG"] = env_config
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True,
                          text=True, timeout=180, env=env)


def test_commands_authenticate_with_client_config(kafka_broker: devbroker.Broker,
                                                  secured_topics: Topics,
                                                  tmp_path: Path) -> None:
    """publish as an operator, collect as finance, each with --client-config; the
    engine's file cannot publish, no file at all cannot connect."""
    b, t = kafka_broker.bootstrap, secured_topics
    enr = tmp_path / "e.jsonl"
    enr.write_text('{"mykey_id": "AB12cd34", "operator_id": "paypay", '
                   '"received_at": "2020-09-01T00:00:00+09:00"}\n')
    base = ["publish", "--enrollments", str(enr), "--broker", b, "--topic-prefix", t.prefix,
            "--partitions", "2", "--quiet"]
    mine = t.input_of(OPERATOR, "enrollment")
    before = asyncio.run(_ends(b, mine))
    ok = _cli(*base, "--client-config", str(kafka_broker.credentials(OPERATOR)))
    assert ok.returncode == 0, ok.stderr
    assert asyncio.run(_ends(b, mine)) == before + 1
    refused = _cli(*base, "--client-config", str(kafka_broker.credentials(security.ENGINE)))
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and "Authorization" in refused.stderr
    anonymous = _cli(*base)
    assert anonymous.returncode == 2 and "Traceback" not in anonymous.stderr
    assert asyncio.run(_ends(b, mine)) == before + 1
    for f in kafka_broker.credentials(security.ENGINE).parent.glob("*.properties"):
        password = load_client_config(f)["sasl_plain_password"]
        assert password not in refused.stderr + ok.stdout + ok.stderr + anonymous.stderr

    collected = _cli("collect", "--out", str(tmp_path / "out"), "--broker", b,
                     "--topic-prefix", t.prefix,
                     env_config=str(kafka_broker.credentials(security.FINANCE)))
    assert collected.returncode == 0, collected.stderr
    assert (tmp_path / "out" / "grants.parquet").is_file()
    bad = _cli("collect", "--out", str(tmp_path / "o2"), "--client-config",
               str(tmp_path / "missing.properties"))
    assert bad.returncode == 2 and "missing.properties" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_worker_refused_by_acls_says_so_in_one_line(kafka_broker: devbroker.Broker,
                                                    secured_topics: Topics,
                                                    tmp_path: Path, runtime: str) -> None:
    r = _cli("worker", "--broker", kafka_broker.bootstrap, "--topic-prefix",
             secured_topics.prefix, "--partitions", "2", "--state-dir", str(tmp_path),
             "--client-config", str(kafka_broker.credentials(OPERATOR)), "--runtime", runtime)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Authorization" in r.stderr and "Traceback" not in r.stderr


def test_worker_with_a_wrong_password_says_so_in_one_line(kafka_broker: devbroker.Broker,
                                                          secured_topics: Topics,
                                                          tmp_path: Path, runtime: str) -> None:
    wrong = tmp_path / "wrong.properties"
    security.write_private(wrong, security.client_properties(security.ENGINE, "not-it"))
    r = _cli("worker", "--broker", kafka_broker.bootstrap, "--topic-prefix",
             secured_topics.prefix, "--partitions", "2", "--state-dir", str(tmp_path / "s"),
             "--client-config", str(wrong), "--runtime", runtime)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "KafkaConnectionError" in r.stderr and "Traceback" not in r.stderr
    assert "not-it" not in r.stderr + r.stdout


def test_refusals_seen_by_our_clients_are_counted(kafka_broker: devbroker.Broker,
                                                  secured_topics: Topics) -> None:
    """A refused authentication (aiokafka only logs it) and an ACL denial, as the
    worker counts them (engine.metrics), also while aiokafka's output is silenced."""
    from prometheus_client import CollectorRegistry

    from engine.metrics import EngineMetrics
    from engine.ops import logs

    m = EngineMetrics(CollectorRegistry())
    theirs = secured_topics.outcome_topic("grant", OTHER)  # another operator's outcomes
    handler = m.count_client_errors()
    try:
        wrong = {**kafka_broker.client(security.ENGINE), "sasl_plain_password": "wrong"}
        with logs.quiet("aiokafka"), pytest.raises((KafkaConnectionError, KafkaError)):
            asyncio.run(produce_one(kafka_broker.bootstrap, theirs, wrong))
        with pytest.raises(TopicAuthorizationFailedError) as denied:
            asyncio.run(_read(kafka_broker.bootstrap, theirs, kafka_broker.client(OPERATOR)))
        m.kafka_error(denied.value)
        m.kafka_error(KafkaConnectionError("not a refusal"))
    finally:
        logging.getLogger("aiokafka").removeHandler(handler)
    value = m.registry.get_sample_value
    assert (value("mynapoint_kafka_authentication_failures_total") or 0) >= 1
    assert value("mynapoint_kafka_authorization_denials_total", {"resource": "topic"}) == 1
    assert value("mynapoint_kafka_authorization_denials_total", {"resource": "group"}) == 0


def test_acls_can_be_added_from_inside_an_event_loop(kafka_broker: devbroker.Broker) -> None:
    """`mynapoint demo` starts the broker (and creates its ACLs) from a coroutine; the
    ACLs are in force when the call returns."""
    b, topic = kafka_broker.bootstrap, "secured.loop-made"

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=b, **kafka_broker.client())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()

    asyncio.run(create())
    op = kafka_broker.client(OPERATOR)
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(produce_one(b, topic, op))

    async def from_a_coroutine() -> None:
        devbroker.add_acls(b, kafka_broker.data_dir, [[
            "--allow-principal", f"User:{OPERATOR}", "--topic", topic,
            "--operation", "Write", "--operation", "Describe"]])

    asyncio.run(from_a_coroutine())
    asyncio.run(produce_one(b, topic, op))
    assert asyncio.run(_ends(b, topic, 1)) == 1
