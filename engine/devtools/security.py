"""The local broker's security: SCRAM principals, their client properties files, ACLs.

Principals: ``admin`` (super user, also the broker's own inter-broker identity),
``engine``, ``finance`` and one per operator of the registry, named by its id.
Passwords come from :mod:`secrets` and are written only to files of mode 0600:
``<data dir>/credentials/<principal>.properties`` (standard Kafka client properties,
read by the Java tools' ``--command-config``, by kcat-style clients after renaming
and by every ``--client-config`` of ours) and the broker's own ``server.properties``
(the inter-broker JAAS line). They are never put on a command line: the Java tools
get theirs through an argument file (``java @file``) or ``--command-config``.

ACLs (``StandardAuthorizer``, deny by default) are a function of the topic names
(:class:`engine.kafka.topics.Topics`), see :func:`acl_plan`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.kafka.topics import Topics

MECHANISM = "SCRAM-SHA-512"
ADMIN, ENGINE, FINANCE = "admin", "engine", "finance"
SERVICE_PRINCIPALS = (ADMIN, ENGINE, FINANCE)
# The controller listener is PLAINTEXT on loopback: broker→controller requests arrive
# as ANONYMOUS and need CLUSTER_ACTION (DEPENDENCY_NOTES.md). Safe only because no
# client listener is PLAINTEXT.
SUPER_USERS = f"User:{ADMIN};User:ANONYMOUS"
CREDENTIALS_DIR = "credentials"
_LOGIN = "org.apache.kafka.common.security.scram.ScramLoginModule"


class SecurityError(ValueError):
    """A principal or credentials file cannot be used."""


def principals(operator_ids: Iterable[str]) -> tuple[str, ...]:
    """Every principal of a deployment; an operator id must not shadow a service."""
    ops = tuple(operator_ids)
    clash = sorted(set(ops) & {*SERVICE_PRINCIPALS, "ANONYMOUS"})
    if clash:
        raise SecurityError(f"operator id {clash[0]!r} is reserved for a service principal")
    return (*SERVICE_PRINCIPALS, *ops)


def new_password() -> str:
    # URL-safe alphabet: no comma, quote or backslash, which StorageTool's
    # --add-scram and JAAS would have to escape.
    return secrets.token_urlsafe(32)


def jaas(user: str, password: str) -> str:
    return f'{_LOGIN} required username="{user}" password="{password}";'


def client_properties(user: str, password: str, protocol: str = "SASL_PLAINTEXT",
                      ca_file: Path | None = None) -> str:
    lines = [f"security.protocol={protocol}", f"sasl.mechanism={MECHANISM}",
             f"sasl.jaas.config={jaas(user, password)}"]
    if ca_file is not None:
        lines += ["ssl.truststore.type=PEM", f"ssl.truststore.location={ca_file}"]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (no window where others may read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def credentials_dir(data_dir: Path) -> Path:
    return data_dir / CREDENTIALS_DIR


def credentials_file(data_dir: Path, principal: str) -> Path:
    return credentials_dir(data_dir) / f"{principal}.properties"


@dataclass(frozen=True)
class Credentials:
    """The passwords of one deployment (kept in memory only while formatting)."""

    passwords: dict[str, str]

    @classmethod
    def generate(cls, names: Sequence[str]) -> Credentials:
        return cls({n: new_password() for n in names})

    def write(self, data_dir: Path, protocol: str = "SASL_PLAINTEXT",
              ca_file: Path | None = None) -> None:
        for user, password in self.passwords.items():
            write_private(credentials_file(data_dir, user),
                          client_properties(user, password, protocol, ca_file))

    def scram_args(self) -> list[str]:
        """StorageTool ``format`` arguments adding every user (for an argument file)."""
        out: list[str] = []
        for user, password in self.passwords.items():
            out += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
        return out


def read_password(data_dir: Path, principal: str) -> str:
    from engine.kafka.client_config import ClientConfigError, load_client_config

    path = credentials_file(data_dir, principal)
    if not path.is_file():
        raise SecurityError(f"no credentials for principal {principal!r} in "
                            f"{credentials_dir(data_dir)}")
    try:
        return str(load_client_config(path)["sasl_plain_password"])
    except (ClientConfigError, KeyError):
        raise SecurityError(f"{path} is not a SASL client properties file") from None


def acl_plan(topics: Topics, operator_ids: Sequence[str]) -> list[list[str]]:
    """AclCommand ``--add`` argument groups (one JVM each) for a deployment's topics.

    - engine: reads and creates the inputs, writes and creates the outputs, does
      anything on its own internal topics (``<prefix>.<group>.`` — the trailing dot
      keeps a group named like another's prefix out), reads its consumer group;
    - finance: reads the outputs, writes nothing;
    - operators: write (and describe) the inputs only; no CREATE, so they cannot make
      topics, and nothing on outputs or internal topics;
    - admin is a super user (server.properties), needs no ACL.
    Literal ACLs except the engine's internal prefix.
    """
    def user(p: str) -> list[str]:
        return ["--allow-principal", f"User:{p}"]

    def on(names: Iterable[str]) -> list[str]:
        return [a for n in names for a in ("--topic", n)]

    def ops(*names: str) -> list[str]:
        return [a for n in names for a in ("--operation", n)]

    plan = [
        [*user(ENGINE), *on(topics.inputs), *ops("Read", "Describe", "Create")],
        [*user(ENGINE), *on(topics.outputs), *ops("Write", "Describe", "Create")],
        [*user(ENGINE), "--topic", f"{topics.prefix}.{topics.group_id}.",
         "--resource-pattern-type", "prefixed", *ops("All")],
        [*user(ENGINE), "--group", topics.group_id, *ops("Read")],
        [*user(FINANCE), *on(topics.outputs), *ops("Read", "Describe")],
    ]
    return plan + operator_acls(topics, operator_ids)


def operator_acls(topics: Topics, operator_ids: Sequence[str]) -> list[list[str]]:
    """Operators write (and describe) the inputs, nothing else (see :func:`acl_plan`)."""
    if not operator_ids:
        return []
    return [[*(a for o in operator_ids for a in ("--allow-principal", f"User:{o}")),
             *(a for t in topics.inputs for a in ("--topic", t)),
             "--operation", "Write", "--operation", "Describe"]]
