"""`kafka start --tls`: SASL_SSL with a CA made by scripts/make-certs.sh."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from engine.devtools import broker as devbroker
from engine.devtools import security
from engine.kafka.client_config import load_client_config
from tests.kafka_fixtures import produce_one

pytestmark = pytest.mark.kafka  # a broker of its own (Java)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devbroker.Broker]:
    data = tmp_path_factory.mktemp("tls") / "broker"
    broker = devbroker.start(port=devbroker.free_port(), data_dir=data, wait=120.0, tls=True)
    try:
        yield broker
    finally:
        devbroker.stop(port=broker.port, data_dir=data)
        shutil.rmtree(data, ignore_errors=True)


async def _create(bootstrap: str, client: dict[str, Any], topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)
    await asyncio.wait_for(admin.start(), 40)
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


def test_client_with_the_ca_connects_one_without_is_refused(tls_broker: devbroker.Broker) -> None:
    assert tls_broker.tls and devbroker.is_ready(tls_broker.bootstrap, 5.0, tls=True)
    path = tls_broker.credentials(security.ADMIN)
    text = path.read_text()
    assert "security.protocol=SASL_SSL" in text and "ssl.truststore.type=PEM" in text
    ca = tls_broker.data_dir / devbroker.TLS_DIR / devbroker.TLS_CA
    keystore = tls_broker.data_dir / devbroker.TLS_DIR / devbroker.TLS_KEYSTORE
    assert f"ssl.truststore.location={ca}" in text
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert keystore.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8

    with_ca = load_client_config(path)
    asyncio.run(_create(tls_broker.bootstrap, with_ca, "tls-check"))
    asyncio.run(produce_one(tls_broker.bootstrap, "tls-check", with_ca))

    # the same credentials, trusting only the system's CAs: the handshake fails
    without_ca = {**with_ca, "ssl_context": ssl.create_default_context()}
    with pytest.raises((KafkaConnectionError, KafkaError, ssl.SSLError, TimeoutError)):
        asyncio.run(produce_one(tls_broker.bootstrap, "tls-check", without_ca))
    # and no TLS at all: refused
    plain = {k: v for k, v in with_ca.items() if k != "ssl_context"}
    plain["security_protocol"] = "SASL_PLAINTEXT"
    with pytest.raises((KafkaConnectionError, KafkaError, TimeoutError)):
        asyncio.run(produce_one(tls_broker.bootstrap, "tls-check", plain))


def test_make_certs_names_extra_hosts(tmp_path: Path) -> None:
    import subprocess

    out = subprocess.run(["bash", str(devbroker.MAKE_CERTS), str(tmp_path / "c"), "kafka"],
                         capture_output=True, text=True, check=True)
    assert "DNS:kafka" in out.stdout
    text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in",
                           str(tmp_path / "c" / "broker-cert.pem")],
                          capture_output=True, text=True, check=True).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text and "DNS:kafka" in text
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "c" / "ca.pem"),
                             str(tmp_path / "c" / "broker-cert.pem")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


def test_a_worker_settles_over_tls_as_the_engine(tls_broker: devbroker.Broker,
                                                 settled_campaign: Any, tmp_path: Path,
                                                 runtime: str) -> None:
    """The worker, under each runtime, as the ``engine`` principal over SASL_SSL with
    the deployment's ACLs in force: its outcomes equal offline ``settle``'s."""
    from engine.kafka.client_config import ENV
    from engine.kafka.topics import ensure_topics
    from tests.kafka_fixtures import client_config_of, new_prefix
    from tests.streams.harness import PARTITIONS, collect_and_compare, publish, topics_for, worker

    sc = settled_campaign(60, 500, 5)
    b, prefix = tls_broker.bootstrap, new_prefix()
    topics = topics_for(prefix)
    with client_config_of(tls_broker.credentials(security.ADMIN)):  # the test's own clients
        asyncio.run(ensure_topics(b, topics, PARTITIONS))
        devbroker.add_acls(b, tls_broker.data_dir, security.acl_plan(topics, topics.operators))
        w = worker(b, prefix, tmp_path, env={ENV: str(tls_broker.credentials(security.ENGINE))},
                   runtime=runtime).start()
        try:
            publish(b, prefix, sc, tmp_path / "m.parquet", 100)
            cmp, grants, _ = collect_and_compare(b, prefix, sc, tmp_path / "m.parquet")
        finally:
            w.stop()
    assert cmp.equal, str(cmp)
    assert grants.num_rows == sc.offline.grants.num_rows > 0
