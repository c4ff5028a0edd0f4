"""The compose broker's configuration, run for real: deploy/kafka/server.properties with
the generated secrets (python -m engine.devtools.deployment), formatted with its
scram.args as deploy/kafka/start.sh does, on the Kafka jars of the local broker. Only
what Docker would provide is replaced: loopback ports instead of the container's, the
host name ``localhost`` (in the certificate) instead of ``kafka``, and the secrets'
paths on this machine instead of their mount points."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from engine.devtools import broker as devbroker
from engine.devtools import deployment, security
from engine.kafka.client_config import parse_client_config
from tests.test_deploy import ROOT, service

pytestmark = pytest.mark.kafka  # Java and the Kafka jars, like the local broker


@pytest.fixture(scope="module")
def compose_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("compose-kafka")
    secrets = tmp / "secrets"
    deployment.write_secrets(secrets, ["paypay"])
    internal, external, controller = (devbroker.free_port() for _ in range(3))
    props = (ROOT / "deploy/kafka/server.properties").read_text()
    for old, new in (("INTERNAL://:9092", f"INTERNAL://127.0.0.1:{internal}"),
                     ("EXTERNAL://:9094", f"EXTERNAL://127.0.0.1:{external}"),
                     ("INTERNAL://kafka:9092", f"INTERNAL://localhost:{internal}"),
                     ("EXTERNAL://127.0.0.1:9094", f"EXTERNAL://127.0.0.1:{external}"),
                     ("127.0.0.1:9093", f"127.0.0.1:{controller}"),
                     ("/tmp/kraft-combined-logs", str(tmp / "data")),
                     (str(deployment.MOUNT), str(secrets))):
        assert old in props, old
        props = props.replace(old, new)
    config = tmp / "server.properties"
    security.write_private(config, props + (secrets / "broker.properties").read_text())
    java = devbroker._require("java", "Java 17 runs the broker")
    libs = devbroker.fetch_jars()
    log4j = tmp / "log4j.properties"
    log4j.write_text(devbroker._log4j_properties(tmp))
    cluster = service("kafka")["environment"]["CLUSTER_ID"]
    args = tmp / "format.args"
    security.write_private(args, "\n".join(["format", "-t", cluster, "-c", str(config)])
                           + "\n" + (secrets / "scram.args").read_text())
    base = [java, f"-Dlog4j.configuration=file:{log4j}", "-cp", f"{libs}{os.sep}*"]
    subprocess.run([*base, "kafka.tools.StorageTool", f"@{args}"], check=True,
                   capture_output=True)
    proc = subprocess.Popen([*base, "-Xmx512m", "kafka.Kafka", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert devbroker.is_ready(f"127.0.0.1:{external}", 120.0, True), "broker not ready"
        yield {"secrets": secrets, "internal": f"localhost:{internal}",
               "external": f"127.0.0.1:{external}"}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(secrets: Path, principal: str) -> dict[str, Any]:
    text = (secrets / "credentials" / f"{principal}.properties").read_text()
    return parse_client_config(text.replace(str(deployment.MOUNT), str(secrets)))


async def _topics(bootstrap: str, kw: dict[str, Any]) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **kw)
    await asyncio.wait_for(admin.start(), 30)
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


def test_services_and_operators_connect_over_tls(compose_broker: dict[str, Any]) -> None:
    s = compose_broker["secrets"]
    # the engine on the compose network, an operator from the host
    assert isinstance(asyncio.run(_topics(compose_broker["internal"], client(s, "engine"))),
                      list)
    assert isinstance(asyncio.run(_topics(compose_broker["external"], client(s, "paypay"))),
                      list)


def test_a_client_without_the_ca_or_the_password_is_refused(
        compose_broker: dict[str, Any]) -> None:
    s = compose_broker["secrets"]
    # the system's trusted CAs, not the deployment's
    no_ca = {**client(s, "engine"), "ssl_context": ssl.create_default_context()}
    wrong = {**client(s, "engine"), "sasl_plain_password": "not-the-password"}
    for kw in (no_ca, wrong, {}):
        with pytest.raises((KafkaError, TimeoutError)):
            asyncio.run(_topics(compose_broker["external"], kw))
