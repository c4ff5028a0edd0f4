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

import itertools
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """AclCommand ``--add`` argument groups for a deployment's topics.

    - engine: reads and creates every input, writes and creates every output, does
      anything on its own internal topics (``<prefix>.<group>.`` — the trailing dot
      keeps a group named like another's prefix out), reads its consumer group; it
      cannot write an input;
    - finance: reads every output, writes nothing;
    - each operator: writes (and describes) its own two inputs, reads (and describes)
      its own two outputs and uses consumer groups under ``<prefix>.<operator>.``;
      no CREATE, nothing on another operator's topics, the unattributed input or the
      engine's internal topics;
    - admin is a super user (server.properties), needs no ACL; it alone writes the
      unattributed input.
    Literal ACLs except the engine's internal prefix and the operators' groups.
    """
    unattributed = Topics(topics.prefix, topics.group)
    plan = [
        [*_user(ENGINE), "--topic", f"{topics.prefix}.{topics.group_id}.",
         "--resource-pattern-type", "prefixed", *_ops("All")],
        [*_user(ENGINE), "--group", topics.group_id, *_ops("Read")],
        *_service_acls(unattributed),
    ]
    return plan + operator_acls(topics, operator_ids)


def _user(p: str) -> list[str]:
    return ["--allow-principal", f"User:{p}"]


def _on(names: Iterable[str]) -> list[str]:
    return [a for n in names for a in ("--topic", n)]


def _ops(*names: str) -> list[str]:
    return [a for n in names for a in ("--operation", n)]


def _service_acls(topics: Topics) -> list[list[str]]:
    """The engine's and finance's access to the topics of ``topics.operators`` (and
    of the unattributed input)."""
    return [
        [*_user(ENGINE), *_on(topics.inputs), *_ops("Read", "Describe", "Create")],
        [*_user(ENGINE), *_on(topics.outputs), *_ops("Write", "Describe", "Create")],
        [*_user(FINANCE), *_on(topics.outputs), *_ops("Read", "Describe")],
    ]


def operator_acls(topics: Topics, operator_ids: Sequence[str]) -> list[list[str]]:
    """Each operator's own access, and the services' to its topics (see
    :func:`acl_plan`): what ``kafka add-operator`` adds."""
    if not operator_ids:
        return []
    theirs = topics.with_operators(operator_ids)
    plan = [g for g in _service_acls(theirs)]
    for o in operator_ids:
        plan += [
            [*_user(o), *_on(topics.inputs_of(o)), *_ops("Write", "Describe")],
            [*_user(o), *_on(topics.outputs_of(o)), *_ops("Read", "Describe")],
            [*_user(o), "--group", f"{topics.prefix}.{o}.", "--resource-pattern-type",
             "prefixed", *_ops("Read", "Describe")],
        ]
    return plan


# Kafka's protocol codes (org.apache.kafka.common.acl / resource)
_RESOURCE = {"--topic": 2, "--group": 3}
_PATTERN = {"literal": 3, "prefixed": 4}
_OPERATION = {"All": 2, "Read": 3, "Write": 4, "Create": 5, "Delete": 6, "Alter": 7,
              "Describe": 8}
_ALLOW = 3


def acl_bindings(plan: list[list[str]]) -> list[tuple[int, str, int, str, str, int, int]]:
    """The ACL bindings an AclCommand ``--add`` argument group grants: every principal
    every operation on every resource (CreateAcls v1 tuples).

    >>> acl_bindings([["--allow-principal", "User:a", "--topic", "t", "--operation", "Read"]])
    [(2, 't', 3, 'User:a', '*', 3, 3)]
    """
    out = []
    for group in plan:
        users, resources, operations, pattern = [], [], [], "literal"
        for flag, value in itertools.pairwise(group):
            if flag == "--allow-principal":
                users.append(value)
            elif flag in _RESOURCE:
                resources.append((_RESOURCE[flag], value))
            elif flag == "--operation":
                operations.append(_OPERATION[value])
            elif flag == "--resource-pattern-type":
                pattern = value
        out += [(kind, name, _PATTERN[pattern], user, "*", op, _ALLOW)
                for user in users for kind, name in resources for op in operations]
    return out


async def create_acls(bootstrap: str, client: dict[str, object],
                      plan: list[list[str]]) -> None:
    """Create ``plan``'s ACLs in one CreateAcls request, as the principal of
    ``client`` (admin); raises :class:`SecurityError` naming the first refusal."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.protocol.admin import CreateAclsRequest

    bindings = acl_bindings(plan)

    class _Many(CreateAclsRequest):  # aiokafka's request carries one binding
        def __init__(self) -> None:
            pass

        def build(self, request_struct_class: Any) -> Any:
            if request_struct_class.API_VERSION < 1:
                raise SecurityError("the broker does not take prefixed ACLs (CreateAcls v1)")
            return request_struct_class(bindings)

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)  # type: ignore[arg-type]
    await admin.start()
    try:
        response = await admin._send_request(_Many())
        for (code, message), binding in zip(response.creation_responses, bindings,
                                            strict=True):
            if code:
                raise SecurityError(f"{binding[3]} on {binding[1]}: error {code} "
                                    f"{message or ''}")
        if bindings:
            await _until_enforced(admin, bindings[-1])
    finally:
        await admin.close()


async def _until_enforced(admin: Any, binding: tuple[int, str, int, str, str, int, int],
                          timeout: float = 15.0) -> None:
    """Wait until every broker's authorizer has the request's ACLs (they reach the
    brokers through the metadata log, a moment after CreateAcls returns): the
    caller's next request must already be judged by them."""
    import asyncio
    import time

    from aiokafka.protocol.admin import DescribeAclsRequest

    deadline = time.monotonic() + timeout
    for node in [b.nodeId for b in admin._client.cluster.brokers()]:
        while True:
            got = await admin._send_request(DescribeAclsRequest(*binding), node)
            if any(r[-1] for r in got.resources):
                break
            if time.monotonic() > deadline:
                raise SecurityError(f"ACLs not in force on broker {node} after {timeout:g} s")
            await asyncio.sleep(0.05)
