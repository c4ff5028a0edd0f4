"""Topic names, partitioning and creation.

Input and output topics share one partition count so that partition ``p`` of
``enrollments`` and of ``transactions`` hold the same people (co-partitioned:
both are keyed by ``mykey_id`` with Kafka's default murmur2 partitioner), which
lets one worker own a person's whole state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, TopicAuthorizationFailedError
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
_OUTPUT_KINDS = {"grants": "grant", "rejections": "rejection"}
# The input of records no registry operator sent: ``publish`` (as admin) routes there
# what has no known ``operator_id`` (unknown, missing, not JSON), so such records get
# the reason offline ``settle`` gives them (UNKNOWN_OPERATOR, MALFORMED) and no
# operator's topic receives another's garbage. An operator id cannot start with "_",
# so no operator can be named like it; only admin may write it (ACLs).
UNATTRIBUTED = "_unattributed"


@dataclass(frozen=True)
class Topics:
    """The engine's topic names (docs/ARCHITECTURE.md, "Topics").

    Every operator of the registry has its own inputs and outputs,
    ``<prefix>.<operator>.enrollments|transactions|grants|rejections``; records of no
    known operator have the :data:`UNATTRIBUTED` four. All are co-partitioned (one
    partition count, keyed by ``mykey_id``), so partition ``p`` of every topic holds
    the same people and one worker owns a person's whole state across operators.

    >>> t = Topics("m", operators=("paypay", "waon"))
    >>> t.inputs_of("waon")
    ('m.waon.enrollments', 'm.waon.transactions')
    >>> t.enrollment_inputs
    ('m.paypay.enrollments', 'm.waon.enrollments', 'm._unattributed.enrollments')
    >>> t.outcome_topic("rejection", None)
    'm._unattributed.rejections'
    """

    prefix: str = "mynapoint"
    group: str = ""  # consumer group of the workers; "" means "<prefix>-engine"
    operators: tuple[str, ...] = ()

    @property
    def group_id(self) -> str:
        return self.group or f"{self.prefix}-engine"

    def with_operators(self, operators: Iterable[str]) -> Topics:
        return replace(self, operators=tuple(operators))

    @property
    def _sources(self) -> tuple[str, ...]:
        return (*self.operators, UNATTRIBUTED)

    def inputs_of(self, operator: str) -> tuple[str, str]:
        """The enrollments and transactions topics ``operator`` (alone) writes."""
        return (f"{self.prefix}.{operator}.enrollments",
                f"{self.prefix}.{operator}.transactions")

    def outputs_of(self, operator: str) -> tuple[str, str]:
        """The grants and rejections topics ``operator`` (alone) reads: the outcomes
        of the records that arrived on its inputs."""
        return (f"{self.prefix}.{operator}.grants", f"{self.prefix}.{operator}.rejections")

    def operator_topics(self, operator: str) -> tuple[str, ...]:
        return (*self.inputs_of(operator), *self.outputs_of(operator))

    def input_of(self, operator: str | None, record_type: str) -> str:
        enr, txn = self.inputs_of(operator or UNATTRIBUTED)
        return enr if record_type == "enrollment" else txn

    def outcome_topic(self, kind: str, operator: str | None) -> str:
        """Where the outcome (``"grant"``/``"rejection"``) of a record that arrived
        from ``operator`` (None: from the unattributed input) goes."""
        grants, rejections = self.outputs_of(operator or UNATTRIBUTED)
        return grants if kind == "grant" else rejections

    @property
    def enrollment_inputs(self) -> tuple[str, ...]:
        return tuple(self.inputs_of(o)[0] for o in self._sources)

    @property
    def transaction_inputs(self) -> tuple[str, ...]:
        return tuple(self.inputs_of(o)[1] for o in self._sources)

    @property
    def inputs(self) -> tuple[str, ...]:
        return (*self.enrollment_inputs, *self.transaction_inputs)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(t for o in self._sources for t in self.outputs_of(o))

    @property
    def outcomes(self) -> dict[str, str]:
        """Every output topic a reader of outcomes consumes, with the kind it holds
        (``"grant"`` or ``"rejection"``): readers (collect, the ledger sink) take the
        names from here only."""
        return {t: _OUTPUT_KINDS[t.rpartition(".")[2]] for t in self.outputs}

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
    def consumed(self) -> tuple[str, ...]:
        """Every topic a worker reads: the public inputs and its own re-routing
        topics, co-partitioned, so that one worker owns partition p of all of them."""
        return (*self.inputs, self.reroute_enrollments, self.reroute_transactions)

    def record_type(self, topic: str) -> str:
        return "enrollment" if topic == self.reroute_enrollments \
            or topic.endswith(".enrollments") else "transaction"

    def is_internal(self, topic: str) -> bool:
        return topic in (self.reroute_enrollments, self.reroute_transactions)

    @staticmethod
    def operator_of(topic: str) -> str | None:
        """The operator whose input a per-operator topic
        ``<prefix>.<operator_id>.enrollments|transactions`` is; None for any other
        topic (the unattributed input, outputs, the engine's own). Under any prefix:
        a replayed or re-routed record's trusted source names the topic it was first
        published to, which for a replay is under the archived run's prefix.

        >>> t = Topics("mynapoint")
        >>> [t.operator_of(x) for x in ("mynapoint.paypay.transactions",
        ...     "mynapoint._unattributed.transactions", "mynapoint.paypay.grants",
        ...     "mynapoint.mynapoint-engine.reroute-transactions", "paypay.transactions")]
        ['paypay', None, None, None, None]
        >>> t.operator_of("acme.mynapoint.paypay.enrollments")
        'paypay'
        """
        head, _, kind = topic.rpartition(".")
        prefix, _, operator = head.rpartition(".")
        if kind not in _INPUT_KINDS or not prefix or not OPERATOR_ID.fullmatch(operator):
            return None
        return operator

    def operators_in(self, names: Iterable[str]) -> tuple[str, ...]:
        """The operators that have topics among ``names`` (a broker's topic list), in
        name order: how readers without a registry (collect, the ledger sink, the
        archiver) find every operator they may read.

        >>> Topics("m").operators_in(["m.b.grants", "m.a.transactions", "m.x.y", "n.c.grants",
        ...                           "m._unattributed.grants"])
        ('a', 'b')
        """
        found = set()
        for name in names:
            if not name.startswith(self.prefix + "."):
                continue
            operator, _, kind = name[len(self.prefix) + 1:].partition(".")
            if (kind in _INPUT_KINDS or kind in _OUTPUT_KINDS) \
                    and OPERATOR_ID.fullmatch(operator):
                found.add(operator)
        return tuple(sorted(found))


T = TypeVar("T")
ADMIN_RETRY_SECONDS = 10.0


async def retrying(attempt: Callable[[], Awaitable[T]], within: float = ADMIN_RETRY_SECONDS,
                   first_pause: float = 0.1,
                   also: Callable[[KafkaError], bool] = lambda e: True) -> T:
    """``attempt()``, tried again while it fails with an error Kafka calls retriable
    (and ``also`` accepts), for up to ``within`` seconds (pauses doubling to 1 s);
    then its last error. Any other error is raised at once."""
    deadline = time.monotonic() + within
    pause = first_pause
    while True:
        try:
            return await attempt()
        except KafkaError as e:
            if not (e.retriable and also(e)) or time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(2 * pause, 1.0)


async def _ask_admin(bootstrap: str, client: dict[str, Any],
                     ask: Callable[[AIOKafkaAdminClient], Awaitable[T]]) -> T:
    """``ask`` a fresh admin client, with a new client per try while the cluster was
    reached but a request failed retriably.

    Why: with one broker of a cluster dead, a fresh client's metadata still lists it
    for a while, and a request sent to it fails with ``NodeNotReadyError`` although
    the others would answer (seen in ``collect`` after the cluster test killed a
    broker). A bootstrap that nobody answers is not retried: the commands report an
    unreachable broker at once.
    """
    reached = False

    async def attempt() -> T:
        nonlocal reached
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client or default_client()))
        try:
            await admin.start()
            reached = True
            return await ask(admin)
        finally:
            await admin.close()
    return await retrying(attempt, also=lambda e: reached)


async def discover(bootstrap: str, topics: Topics, **client: Any) -> Topics:
    """``topics`` with the operators whose topics exist on the broker (and that this
    principal may see: the broker lists only authorized topics); ``topics`` itself
    when it already names its operators (a command given the registry)."""
    if topics.operators:
        return topics

    async def ask(admin: AIOKafkaAdminClient) -> Topics:
        return topics.with_operators(topics.operators_in(await admin.list_topics()))
    return await _ask_admin(bootstrap, client, ask)


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
    async def ask(admin: AIOKafkaAdminClient) -> dict[str, int]:
        return partition_counts(await admin.describe_topics(names))
    return await _ask_admin(bootstrap, client, ask)


async def delete_topics(bootstrap: str, names: Iterable[str] = (), prefix: str | None = None,
                        **client: Any) -> list[str]:
    """Delete ``names`` and every topic whose name starts with ``prefix`` (for tools,
    tests and the bench); the broker's own topics (``__``) never. Returns the names
    asked for, sorted. The broker removes their files ``file.delete.delay.ms`` later."""
    async def ask(admin: AIOKafkaAdminClient) -> list[str]:
        doomed = set(names)
        if prefix is not None:
            doomed.update(t for t in await admin.list_topics() if t.startswith(prefix))
        doomed = {t for t in doomed if not t.startswith("__")}
        if doomed:
            await admin.delete_topics(sorted(doomed))
        return sorted(doomed)
    return await _ask_admin(bootstrap, client, ask)


async def end_offsets(bootstrap: str, tps: Iterable[TopicPartition], **client: Any
                      ) -> dict[TopicPartition, int]:
    """The offset after the last record of each of ``tps`` (a look of its own, for
    tools and tests; a runtime asks its own consumer)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **(client or default_client()))
    await c.start()
    try:
        return dict(await c.end_offsets(list(tps)))
    finally:
        await c.stop()


async def create_and_await_leaders(admin: AIOKafkaAdminClient, new: list[NewTopic],
                                   names: list[str], partitions: int,
                                   settle_seconds: float) -> None:
    """Create ``new`` (one that exists by now is fine) and wait until each of ``names``
    has ``partitions`` partitions, every one with a leader.

    Right after creation a broker may describe a topic with no partitions or no leader
    yet; a consumer that subscribes then is assigned none of its partitions until its
    next metadata refresh, and a producer's first sends are refused.
    """
    if new:
        # another process may win the race; the count check below still applies
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(new)
    deadline = time.monotonic() + settle_seconds
    while True:
        meta = await admin.describe_topics(names)
        counts = {m["topic"]: len(m["partitions"]) for m in meta}
        leaderless = [m["topic"] for m in meta
                      if any(p.get("leader", -1) < 0 for p in m["partitions"])]
        bad = {t: c for t, c in counts.items() if c != partitions}
        if not bad and not leaderless:
            return
        if time.monotonic() > deadline:
            if bad:
                raise TopicMismatch(f"topics must all have {partitions} partitions, found {bad}")
            raise TopicMismatch(f"topics without a partition leader: {leaderless}")
        await asyncio.sleep(0.2)


async def ensure_topics(bootstrap: str, topics: Topics, partitions: int,
                        changelog: bool = True, settle_seconds: float = 15.0,
                        input_configs: dict[str, str] | None = None,
                        only: Sequence[str] | None = None,
                        client: dict[str, Any] | None = None) -> int:
    """Create missing topics; return the partition count in use.

    Existing topics decide the count; if inputs and outputs disagree the worker
    cannot keep a person on one partition, so that is an error, not a warning.
    Right after creation a broker may describe a topic with no partitions or no
    leader yet, so this waits until every partition has a leader.
    ``changelog=False`` (publishers) touches the input topics only: a publisher
    (an operator) may neither see the outputs nor the engine's own topics (ACLs);
    ``only``: just these input topics (an operator's own two).
    Raw input (the input and re-routing topics) is kept for
    :func:`input_retention_ms`, plus ``input_configs`` (tests: segment sizes).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client or default_client()))
    await admin.start()
    try:
        wanted = list(only if only is not None else topics.inputs)
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
        for name in wanted:  # the first existing topic decides the count
            if name in existing:
                partitions = existing[name]
                break
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
        await create_and_await_leaders(admin, new, wanted, partitions, settle_seconds)
        return partitions
    finally:
        await admin.close()
