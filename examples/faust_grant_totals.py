"""A user's own Faust app reading the engine's outputs: points granted per operator.

The engine publishes one JSON grant per accepted transaction on the grants topic of the
operator whose input the transaction arrived on (``mynapoint.<operator>.grants``),
keyed by ``mykey_id`` (schemas/grant.schema.json). This app keeps a running total of
``points`` per ``operator_id`` in a Faust ``Table`` — the outputs are keyed by person,
so the stream is re-keyed by operator first (through ``<app>-by-operator``) — and
publishes every new total on ``<app>-totals`` (key = operator, value = total), where a
dashboard or another agent can read it. A grant's ``points`` can be negative (a
refund claws points back), so the totals equal the finance ledger's per-operator
sums of granted points. Redelivered outcomes are identical copies with the same
``grant_id``; a production app that must not count them twice keeps the ids it has
seen (e.g. in a second table) — this example, like Faust's default at-least-once
processing, does not.

Run it as a plain Faust worker; its settings come from the environment, so Faust's
own command line stays untouched::

    GRANT_TOTALS_BROKER=127.0.0.1:9092 \\
    GRANT_TOTALS_TOPICS=mynapoint.paypay.grants,mynapoint.aupay.grants \\
    GRANT_TOTALS_APP=grant-totals \\
    GRANT_TOTALS_CLIENT_CONFIG=.kafka/.../credentials/admin.properties \\
        python examples/faust_grant_totals.py worker -l warn --without-web

``GRANT_TOTALS_TOPICS`` is a comma-separated list of grants topics; without it the app
subscribes to every operator's, ``mynapoint.<operator>.grants`` (a pattern: an operator
added later is picked up at the next rebalance). ``GRANT_TOTALS_CLIENT_CONFIG`` is a
Kafka client properties file, the same one the engine's own commands take with
``--client-config``; on a secured broker the
principal needs READ on the grants topics and on the group ``<app>``, and
READ/WRITE/CREATE/DESCRIBE on topics prefixed ``<app>-`` (its repartition, table
changelog and totals topics). Tested in tests/examples/test_faust_grant_totals.py.

The app creates its own topics before its worker starts and waits until every
partition has a leader: a topic Faust creates while starting can be missing from its
consumer's first metadata, and its partitions are then left out of the group's
assignment until the next metadata refresh (five minutes by default) — the totals
stop, silently (docs/RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from typing import Any, cast

import faust
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.types import ModelArg

from engine.kafka.client_config import faust_credentials, load_client_config
from engine.kafka.topics import (
    create_and_await_leaders,
    partition_counts,
    replication_settings,
)

TABLE = "points-by-operator"


def own_topics(name: str) -> tuple[str, str]:
    """The app's repartition and totals topics (``make_app`` and ``declare_topics``)."""
    return f"{name}-by-operator", f"{name}-totals"


class Grant(faust.Record, serializer="json"):
    """The fields of a grant this app uses (others are ignored)."""

    grant_id: str
    operator_id: str
    points: int


def make_app() -> faust.App:
    env = os.environ
    name = env.get("GRANT_TOTALS_APP", "grant-totals")
    partitions = int(env.get("GRANT_TOTALS_PARTITIONS", "8"))
    app = faust.App(
        name,
        broker=f"kafka://{_bootstrap()}",
        broker_credentials=faust_credentials(_client()),
        store="memory://",  # the table is rebuilt from its changelog topic at start
        topic_partitions=partitions,
        broker_session_timeout=10,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        # its consumer subscribes to it at start, racing the topic's creation like the
        # app's own topics (declare_topics), and the app elects no leader
        topic_disable_leader=True,
    )
    listed = env.get("GRANT_TOTALS_TOPICS")
    grants = (app.topic(*listed.split(","), key_type=bytes, value_type=Grant) if listed
              else app.topic(pattern=re.compile(r"^mynapoint\.[a-z0-9][a-z0-9_-]*\.grants$"),
                             key_type=bytes, value_type=Grant))
    # internal: the broker does not create topics on use (declare_topics creates them)
    by_operator_name, totals_name = own_topics(name)
    by_operator = app.topic(by_operator_name, key_type=str, value_type=Grant,
                            partitions=partitions, internal=True)
    # Faust takes int values (its serializer registry decodes them); its ModelArg hint
    # names only models, bytes and str
    totals_topic = app.topic(totals_name, key_type=str, value_type=cast(ModelArg, int),
                             value_serializer="json", partitions=partitions, internal=True)
    totals = app.Table(TABLE, default=int, partitions=partitions)

    @app.task
    async def start() -> None:
        # `-l warn` leaves the root logger at DEBUG (see DEPENDENCY_NOTES.md)
        logging.getLogger().setLevel(logging.WARNING)

    # Re-keyed by operator through a topic of the app's own (Faust's group_by derives
    # its repartition topic's name from the source, which is several topics here);
    # agents named under the app, so one ACL prefix covers everything it creates.
    @app.agent(grants, name=f"{name}-by-operator-send")
    async def rekey(stream: Any) -> None:
        async for grant in stream:
            await by_operator.send(key=grant.operator_id, value=grant)

    @app.agent(by_operator, name=f"{name}-add-up")
    async def add_up(stream: Any) -> None:
        async for grant in stream:
            totals[grant.operator_id] += grant.points
            await totals_topic.send(key=grant.operator_id, value=totals[grant.operator_id])

    return app


def _bootstrap() -> str:
    return os.environ.get("GRANT_TOTALS_BROKER", "127.0.0.1:9092")


def _client() -> dict[str, Any]:
    return load_client_config(os.environ.get("GRANT_TOTALS_CLIENT_CONFIG"))


async def declare_topics(app: faust.App, settle_seconds: float = 30.0) -> None:
    """Create the app's topics that are missing — the repartition and totals topics and
    the table's changelog (compacted, as Faust would make it) — and wait until each
    partition has a leader, so that the worker's first assignment holds them all."""
    name, partitions = app.conf.id, app.conf.topic_partitions
    configs: dict[str, dict[str, str]] = {t: {} for t in own_topics(name)}
    configs[app.tables[TABLE].changelog_topic.get_topic_name()] = {"cleanup.policy": "compact"}
    admin = AIOKafkaAdminClient(bootstrap_servers=_bootstrap(), **_client())
    await admin.start()
    try:
        replicas, durability = await replication_settings(admin)
        existing = partition_counts(await admin.describe_topics(list(configs)))
        new = [NewTopic(t, partitions, replicas, topic_configs={**durability, **c})
               for t, c in configs.items() if t not in existing]
        await create_and_await_leaders(admin, new, list(configs), partitions, settle_seconds)
    finally:
        await admin.close()


app = make_app()

if __name__ == "__main__":
    asyncio.run(declare_topics(app))
    app.main()
