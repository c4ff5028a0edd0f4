"""Topic names, partitioning and creation.

Input and output topics share one partition count so that partition ``p`` of
``enrollments`` and of ``transactions`` hold the same people (co-partitioned:
both are keyed by ``mykey_id`` with Kafka's default murmur2 partitioner), which
lets one worker own a person's whole state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError
from aiokafka.partitioner import murmur2

from engine.kafka.client_config import default_client
from engine.rules.model import OPERATOR_ID

FORMAT_HEADER = "mynapoint-format"
# Set by the engine on records it re-routes to their person's partition, on its own
# internal re-routing topics only; ignored on the public input topics, where anybody
# could forge it.
SOURCE_HEADER = "mynapoint-source"
# Set by ``publish --archive`` on every message it replays from the redacted archive:
# the message's original position and the verdicts the archive flagged (JSON, see
# engine.streams.decode.replay_header). Believed only by a worker started with
# ``--replay`` (docs/DECISIONS.md): on topics operators write, anybody could forge it.
REPLAY_HEADER = "mynapoint-replay"
# On every changelog record: the offset of the fence record its writer wrote when it
# took the partition (see engine.streams.recovery).
FENCE_HEADER = "mynapoint-fence"
CHANGELOG_MAX_BYTES = 8 << 20  # a person's state at its limit fits (docs/DECISIONS.md)
FORMAT_JSONL = b"jsonl"
FORMAT_ARROW = b"arrow-ipc"
MAX_RECORDS_PER_MESSAGE = 65_535  # the record index shares an int64 with the offset
MAX_RECORD_BYTES = 1 << 20  # a record larger than this is MALFORMED (worker and archive)
# How long the broker keeps raw input (docs/PRIVACY.md): a deployment setting, ISO 8601.
INPUT_RETENTION_ENV = "MYNAPOINT_INPUT_RETENTION"
DEFAULT_INPUT_RETENTION = "P7D"


def input_retention_ms() -> int:
    """The input topics' retention in ms, from ``$MYNAPOINT_INPUT_RETENTION`` (P7D)."""
    import os

    from engine.config import parse_duration

    text = os.environ.get(INPUT_RETENTION_ENV) or DEFAULT_INPUT_RETENTION
    try:
        ms = parse_duration(text) // 1000
    except ValueError:
        ms = 0
    if ms <= 0:
        raise ValueError(f"{INPUT_RETENTION_ENV} must be a positive ISO 8601 duration like "
                         f"P7D, got {text[:40]!r}")
    return ms


_INPUT_KINDS = ("enrollments", "transactions")


@dataclass(frozen=True)
class Topics:
    prefix: str = "mynapoint"
    group: str = ""  # consumer group of the workers; "" means "<prefix>-engine"

    @property
    def group_id(self) -> str:
        return self.group or f"{self.prefix}-engine"

    @property
    def enrollments(self) -> str:
        return f"{self.prefix}.enrollments"

    @property
    def transactions(self) -> str:
        return f"{self.prefix}.transactions"

    @property
    def grants(self) -> str:
        return f"{self.prefix}.grants"

    @property
    def rejections(self) -> str:
        return f"{self.prefix}.rejections"

    @property
    def outcomes(self) -> dict[str, str]:
        """Every output topic a reader of outcomes consumes, with the kind it holds
        (``"grant"`` or ``"rejection"``): readers (collect, the ledger sink) take the
        names from here only."""
        return {self.grants: "grant", self.rejections: "rejection"}

    @property
    def changelog(self) -> str:
        return f"{self.prefix}.{self.group_id}.state-changelog"

    @property
    def reroute_enrollments(self) -> str:
        return f"{self.prefix}.{self.group_id}.reroute-enrollments"

    @property
    def reroute_transactions(self) -> str:
        return f"{self.prefix}.{self.group_id}.reroute-transactions"

    @property
    def inputs(self) -> tuple[str, str]:
        return (self.enrollments, self.transactions)

    @property
    def outputs(self) -> tuple[str, str]:
        return (self.grants, self.rejections)

    @property
    def consumed(self) -> tuple[str, str, str, str]:
        """Every topic a worker reads: the public inputs and its own re-routing
        topics, co-partitioned, so that one worker owns partition p of all four."""
        return (self.enrollments, self.transactions, self.reroute_enrollments,
                self.reroute_transactions)

    def record_type(self, topic: str) -> str:
        return "enrollment" if topic in (self.enrollments, self.reroute_enrollments) \
            else "transaction"

    def is_internal(self, topic: str) -> bool:
        return topic in (self.reroute_enrollments, self.reroute_transactions)

    def operator_of(self, topic: str) -> str | None:
        """The operator whose input a per-operator topic
        ``<prefix>.<operator_id>.enrollments|transactions`` is; None for any other
        topic (the shared inputs, outputs, the engine's own).

        >>> t = Topics("mynapoint")
        >>> [t.operator_of(x) for x in ("mynapoint.paypay.transactions", "mynapoint.transactions",
        ...                             "mynapoint.mynapoint-engine.reroute-transactions")]
        ['paypay', None, None]
        >>> Topics("acme.mynapoint").operator_of("acme.mynapoint.paypay.enrollments")
        'paypay'
        """
        if not topic.startswith(self.prefix + "."):
            return None
        operator, _, kind = topic[len(self.prefix) + 1:].partition(".")
        if kind not in _INPUT_KINDS or not OPERATOR_ID.fullmatch(operator):
            return None
        return operator


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a key (Java-compatible).

    >>> partition_for(b"AB12cd34", 8) == partition_for(b"AB12cd34", 8)
    True
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class TopicMismatch(RuntimeError):
    pass


def replication_for(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``brokers``.

    Three copies at most; from three on, two must acknowledge (``acks=all``), so
    that one broker can die without refusing writes or losing an acknowledged
    record. With two brokers a second acknowledgement would let either death stop
    every write. The local cluster (``engine.devtools.broker``) is configured alike.

    >>> [replication_for(n) for n in (1, 2, 3, 5)]
    [(1, 1), (2, 1), (3, 2), (3, 2)]
    """
    replicas = max(1, min(3, brokers))
    return replicas, 2 if replicas >= 3 else 1


async def replication_settings(admin: AIOKafkaAdminClient) -> tuple[int, dict[str, str]]:
    """Replication factor and topic configs for new engine topics on this cluster
    (counting the brokers that are up now)."""
    brokers = len((await admin.describe_cluster())["brokers"])
    replicas, min_isr = replication_for(brokers)
    return replicas, ({"min.insync.replicas": str(min_isr)} if replicas > 1 else {})


def partition_counts(meta: list[dict[str, Any]]) -> dict[str, int]:
    """Partition count of each topic that an admin ``describe_topics`` answer shows as
    existing (no error, at least one partition); the one reading of that answer.

    >>> partition_counts([{"topic": "a", "partitions": [{}, {}]}, {"topic": "b",
    ...     "error_code": 3, "partitions": []}, {"topic": "c", "partitions": []}])
    {'a': 2}
    """
    return {m["topic"]: len(m["partitions"]) for m in meta
            if m.get("error_code", 0) == 0 and m["partitions"]}


async def topic_partitions(bootstrap: str, names: list[str], **client: Any) -> dict[str, int]:
    """Partition count of each existing topic among ``names``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client or default_client()))
    try:
        await admin.start()
        return partition_counts(await admin.describe_topics(names))
    finally:
        await admin.close()


async def ensure_topics(bootstrap: str, topics: Topics, partitions: int,
                        changelog: bool = True, settle_seconds: float = 15.0,
                        input_configs: dict[str, str] | None = None) -> int:
    """Create missing topics; return the partition count in use.

    Existing topics decide the count; if inputs and outputs disagree the worker
    cannot keep a person on one partition, so that is an error, not a warning.
    Right after creation a broker may describe a topic with no partitions or no
    leader yet, so this waits until every partition has a leader.
    ``changelog=False`` (publishers) touches the input topics only: a publisher
    (an operator) may neither see the outputs nor the engine's own topics (ACLs).
    Raw input (the input and re-routing topics) is kept for
    :func:`input_retention_ms`, plus ``input_configs`` (tests: segment sizes).
    """
    import asyncio
    import time

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    await admin.start()
    try:
        wanted = list(topics.inputs)
        if changelog:
            wanted += [*topics.outputs, topics.changelog, topics.reroute_enrollments,
                       topics.reroute_transactions]
        meta = await admin.describe_topics(wanted)
        denied = [m["topic"] for m in meta
                  if m.get("error_code", 0) == TopicAuthorizationFailedError.errno]
        if denied:
            # a topic this principal may not see is not a missing one: say so now
            # instead of failing to create it and waiting for a leader
            raise TopicAuthorizationFailedError(f"not authorized for {', '.join(denied)}")
        existing = partition_counts(meta)
        if topics.transactions in existing:
            partitions = existing[topics.transactions]
        elif topics.enrollments in existing:
            partitions = existing[topics.enrollments]
        # Raw input may hold what must not be kept (an Individual Number sent by
        # mistake): bounded retention; the redacted archive is what replays read
        # (docs/PRIVACY.md). Outcomes hold no raw input and are kept.
        raw = {"retention.ms": str(input_retention_ms()), **(input_configs or {})}
        raw_topics = (*topics.inputs, topics.reroute_enrollments, topics.reroute_transactions)
        configs = {t: raw for t in raw_topics}
        configs[topics.changelog] = {"cleanup.policy": "compact",
                                     "max.message.bytes": str(CHANGELOG_MAX_BYTES)}
        replicas, durability = await replication_settings(admin)
        new = [NewTopic(t, partitions, replicas,
                        topic_configs={**durability, **configs.get(t, {"retention.ms": "-1"})})
               for t in wanted if t not in existing]
        if new:
            # another worker may win the race; the count check below still applies
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        deadline = time.monotonic() + settle_seconds
        while True:
            meta = await admin.describe_topics(wanted)
            counts = {m["topic"]: len(m["partitions"]) for m in meta}
            leaderless = [m["topic"] for m in meta
                          if any(p.get("leader", -1) < 0 for p in m["partitions"])]
            bad = {t: c for t, c in counts.items() if c != partitions}
            if not bad and not leaderless:
                return partitions
            if time.monotonic() > deadline:
                if bad:
                    raise TopicMismatch(
                        f"topics must all have {partitions} partitions, found {bad}")
                raise TopicMismatch(f"topics without a partition leader: {leaderless}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()
