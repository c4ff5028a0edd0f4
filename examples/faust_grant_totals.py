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
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import faust

from engine.kafka.client_config import load_client_config


class Grant(faust.Record, serializer="json"):
    """The fields of a grant this app uses (others are ignored)."""

    grant_id: str
    operator_id: str
    points: int


def credentials(path: str | None) -> faust.SASLCredentials | None:
    """Faust's credentials from a Kafka client properties file (None: plaintext)."""
    kw = load_client_config(path) if path else {}
    if "sasl_mechanism" not in kw:
        return None
    return faust.SASLCredentials(username=kw["sasl_plain_username"],
                                 password=kw["sasl_plain_password"],
                                 mechanism=kw["sasl_mechanism"],
                                 ssl_context=kw.get("ssl_context"))


def make_app() -> faust.App:
    env = os.environ
    name = env.get("GRANT_TOTALS_APP", "grant-totals")
    partitions = int(env.get("GRANT_TOTALS_PARTITIONS", "8"))
    app = faust.App(
        name,
        broker=f"kafka://{env.get('GRANT_TOTALS_BROKER', '127.0.0.1:9092')}",
        broker_credentials=credentials(env.get("GRANT_TOTALS_CLIENT_CONFIG")),
        store="memory://",  # the table is rebuilt from its changelog topic at start
        topic_partitions=partitions,
        broker_session_timeout=10,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
    )
    listed = env.get("GRANT_TOTALS_TOPICS")
    grants = (app.topic(*listed.split(","), key_type=bytes, value_type=Grant) if listed
              else app.topic(pattern=re.compile(r"^mynapoint\.[a-z0-9][a-z0-9_-]*\.grants$"),
                             key_type=bytes, value_type=Grant))
    # internal, and declared at start below: Faust creates only the topics of its agents
    # and tables by itself, and the broker does not create topics on use
    by_operator = app.topic(f"{name}-by-operator", key_type=str, value_type=Grant,
                            partitions=partitions, internal=True)
    totals_topic = app.topic(f"{name}-totals", key_type=str, value_type=int,
                             value_serializer="json", partitions=partitions, internal=True)
    totals = app.Table("points-by-operator", default=int, partitions=partitions)

    @app.task
    async def start() -> None:
        # `-l warn` leaves the root logger at DEBUG (see DEPENDENCY_NOTES.md)
        logging.getLogger().setLevel(logging.WARNING)
        await by_operator.maybe_declare()
        await totals_topic.maybe_declare()

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


app = make_app()

if __name__ == "__main__":
    app.main()
