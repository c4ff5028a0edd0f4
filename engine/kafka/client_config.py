"""Kafka client properties files (the ``--command-config`` / ``client.properties`` of
Kafka's own tools) turned into aiokafka keyword arguments.

Supported keys::

    security.protocol   PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl.mechanism      PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl.jaas.config    ...LoginModule required username="u" password="p";
    sasl.username, sasl.password          (librdkafka spelling, instead of JAAS)
    ssl.ca.location                       CA bundle (PEM), librdkafka spelling
    ssl.truststore.location, ssl.truststore.type=PEM      the same, Java spelling
    ssl.certificate.location, ssl.key.location            client certificate (PEM)
    ssl.endpoint.identification.algorithm ""  turns host name checking off
    client.id, request.timeout.ms          ignored (the engine sets its own)

Any other key is an error naming the key, so a typo never silently connects without
security. Error messages never quote a value (passwords live in this file).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import javaproperties

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_IGNORED = {"client.id", "request.timeout.ms"}
_KNOWN = {"security.protocol", "sasl.mechanism", "sasl.jaas.config", "sasl.username",
          "sasl.password", "ssl.ca.location", "ssl.truststore.location",
          "ssl.truststore.type", "ssl.certificate.location", "ssl.key.location",
          "ssl.endpoint.identification.algorithm"} | _IGNORED
_JAAS_OPTION = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')


class ClientConfigError(ValueError):
    """The file cannot be used; ``str()`` names the file and the key."""


def parse_client_config(text: str, name: str = "client config") -> dict[str, Any]:
    """aiokafka keyword arguments from the text of a properties file.

    >>> kw = parse_client_config('security.protocol=SASL_PLAINTEXT\\n'
    ...     'sasl.mechanism=SCRAM-SHA-512\\n'
    ...     'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule '
    ...     'required \\\\\\n   username="settle" password="s3cret";\\n')
    >>> sorted(kw.items())  # doctest: +NORMALIZE_WHITESPACE
    [('sasl_mechanism', 'SCRAM-SHA-512'), ('sasl_plain_password', 's3cret'),
     ('sasl_plain_username', 'settle'), ('security_protocol', 'SASL_PLAINTEXT')]
    """
    props = javaproperties.loads(text)
    unknown = sorted(set(props) - _KNOWN)
    if unknown:
        raise ClientConfigError(f"{name}: unsupported key {unknown[0]!r} "
                                f"(supported: {', '.join(sorted(_KNOWN))})")
    kw: dict[str, Any] = {}
    protocol = props.get("security.protocol", "PLAINTEXT").strip().upper()
    if protocol not in PROTOCOLS:
        raise ClientConfigError(f"{name}: security.protocol must be one of "
                                f"{', '.join(PROTOCOLS)}")
    kw["security_protocol"] = protocol
    if protocol.startswith("SASL_"):
        mechanism = props.get("sasl.mechanism", "PLAIN").strip().upper()
        if mechanism not in MECHANISMS:
            raise ClientConfigError(f"{name}: sasl.mechanism must be one of "
                                    f"{', '.join(MECHANISMS)}")
        user, password = props.get("sasl.username"), props.get("sasl.password")
        if "sasl.jaas.config" in props:
            # JAAS quotes its values and escapes quotes inside them with a backslash
            options = {k: re.sub(r"\\(.)", r"\1", v)
                       for k, v in _JAAS_OPTION.findall(props["sasl.jaas.config"])}
            user, password = options.get("username"), options.get("password")
        if not user or password is None:
            raise ClientConfigError(f"{name}: {protocol} needs a user name and password "
                                    "(sasl.jaas.config with username=\"…\" password=\"…\", "
                                    "or sasl.username and sasl.password)")
        kw.update(sasl_mechanism=mechanism, sasl_plain_username=user,
                  sasl_plain_password=password)
    elif any(k.startswith("sasl.") for k in props):
        raise ClientConfigError(f"{name}: sasl.* keys need security.protocol "
                                "SASL_PLAINTEXT or SASL_SSL")
    if protocol.endswith("SSL"):
        kw["ssl_context"] = _ssl_context(props, name)
    elif any(k.startswith("ssl.") for k in props):
        raise ClientConfigError(f"{name}: ssl.* keys need security.protocol SSL or SASL_SSL")
    return kw


def _ssl_context(props: dict[str, str], name: str) -> Any:
    from aiokafka.helpers import create_ssl_context

    if props.get("ssl.truststore.location") and \
            props.get("ssl.truststore.type", "JKS").upper() != "PEM":
        raise ClientConfigError(f"{name}: ssl.truststore.type must be PEM (JKS and PKCS12 "
                                "stores cannot be read; convert with keytool/openssl)")
    cafile = props.get("ssl.ca.location") or props.get("ssl.truststore.location")
    try:
        ctx = create_ssl_context(cafile=cafile or None,
                                 certfile=props.get("ssl.certificate.location") or None,
                                 keyfile=props.get("ssl.key.location") or None)
    except (OSError, ValueError) as e:
        raise ClientConfigError(f"{name}: ssl files cannot be used "
                                f"({type(e).__name__}: {getattr(e, 'strerror', None) or e})"
                                ) from None
    if props.get("ssl.endpoint.identification.algorithm", "https") == "":
        ctx.check_hostname = False
    return ctx


ENV = "MYNAPOINT_CLIENT_CONFIG"


def load_client_config(path: str | Path | None) -> dict[str, Any]:
    """:func:`parse_client_config` of a file; ``None`` means the file named by
    ``$MYNAPOINT_CLIENT_CONFIG``, or ``{}`` (plaintext) when that is unset too.

    Every command that talks to Kafka takes ``--client-config F``; the CLI puts it
    into that variable (:func:`use_client_config`) so that the command's clients, and
    any process it starts, authenticate alike.
    """
    if path is None:
        path = os.environ.get(ENV) or None
    if path is None:
        return {}
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise ClientConfigError(f"cannot read client config {p}: {reason}") from None
    return parse_client_config(text, str(p))


def default_client() -> dict[str, Any]:
    """The aiokafka keyword arguments of this process (see :func:`load_client_config`)."""
    return load_client_config(None)


def use_client_config(path: str | Path | None) -> None:
    """Check ``path`` (a :class:`ClientConfigError` if unusable) and make it this
    process's default; ``None`` keeps the inherited default."""
    if path is not None:
        load_client_config(path)
        os.environ[ENV] = str(Path(path).resolve())


def faust_credentials(kw: dict[str, Any]) -> Any:
    """Faust's ``broker_credentials`` for aiokafka keyword arguments from
    :func:`load_client_config` (None: plaintext), so that a Faust app authenticates
    with the same properties file as every other client."""
    import faust

    if "sasl_mechanism" in kw:
        return faust.SASLCredentials(username=kw["sasl_plain_username"],
                                     password=kw["sasl_plain_password"],
                                     mechanism=kw["sasl_mechanism"],
                                     ssl_context=kw.get("ssl_context"))
    if "ssl_context" in kw:
        return faust.SSLCredentials(kw["ssl_context"])
    return None
