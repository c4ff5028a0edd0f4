"""Kafka client properties files: what becomes aiokafka arguments, and what is refused
(naming the key, never quoting a value)."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from engine.kafka.client_config import (
    ENV,
    ClientConfigError,
    load_client_config,
    parse_client_config,
    use_client_config,
)

JAAS = ('sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required '
        'username="settle" password="p a\\\\\\"ss";\n')  # file: p a\\\"ss


def test_none_is_plaintext(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert load_client_config(None) == {}
    assert parse_client_config("# only a comment\n") == {"security_protocol": "PLAINTEXT"}


def test_scram_from_jaas_with_continuation_lines() -> None:
    text = ("security.protocol = SASL_PLAINTEXT\nsasl.mechanism: SCRAM-SHA-512\n"
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule \\\n"
            '    required username="settle" \\\n    password="s3cret";\n')
    assert parse_client_config(text) == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "settle", "sasl_plain_password": "s3cret"}


def test_librdkafka_spelling_and_ssl(tmp_path: Path) -> None:
    kw = parse_client_config("security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n"
                             "sasl.username=u\nsasl.password=p\n"
                             "ssl.endpoint.identification.algorithm=\n")
    assert kw["sasl_plain_username"] == "u" and kw["sasl_plain_password"] == "p"
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    assert kw["ssl_context"].check_hostname is False


@pytest.mark.parametrize(("text", "named"), [
    ("security.protocol=SASL_PLAINTXT\n", "security.protocol"),
    ("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=GSSAPI\n" + JAAS, "sasl.mechanism"),
    ("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n", "user name and password"),
    ("sasl.password=topsecret\n", "sasl.* keys need"),
    ("ssl.ca.location=/x.pem\n", "ssl.* keys need"),
    ("security.protocol=SSL\nssl.truststore.location=/t.jks\n", "ssl.truststore.type"),
    ("security.protocol=SSL\nssl.ca.location=/does/not/exist.pem\n", "ssl files"),
    ("securty.protocol=SSL\n", "'securty.protocol'"),
])
def test_refused_with_the_key_named_and_no_value_quoted(text: str, named: str) -> None:
    with pytest.raises(ClientConfigError) as e:
        parse_client_config(text, "client.properties")
    assert named in str(e.value)
    assert "client.properties" in str(e.value)
    assert "topsecret" not in str(e.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match="cannot read client config"):
        load_client_config(tmp_path / "missing.properties")
    f = tmp_path / "c.properties"
    f.write_text("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n" + JAAS)
    assert load_client_config(f)["sasl_plain_password"] == 'p a"ss'


def test_none_means_the_environment_default(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.properties"
    f.write_text("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n"
                 "sasl.username=u\nsasl.password=p\n")
    monkeypatch.setenv(ENV, str(f))
    assert load_client_config(None)["sasl_plain_username"] == "u"
    monkeypatch.delenv(ENV)
    use_client_config(f)  # what --client-config does
    assert os.environ[ENV] == str(f.resolve())
    with pytest.raises(ClientConfigError, match="missing"):
        use_client_config(tmp_path / "missing")
