"""The canonical Faust agent: the baseline of the streaming benchmark.

One event at a time, as the Faust documentation writes agents: a ``faust.Record``
per transaction, a ``Table`` keyed by ``mykey_id`` holding the person's cumulative
amount (RocksDB store through rocksdict), and one JSON outcome per event sent to
an output topic. The input is keyed by ``mykey_id`` with Kafka's default
partitioner, so no ``group_by`` (repartition) is needed.

Run as a Faust worker; everything it needs comes from the environment so that
Faust's own command line stays untouched::

    FAUST_BENCH_BROKER=127.0.0.1:9092 FAUST_BENCH_INPUT=x.transactions \\
    FAUST_BENCH_OUTPUT=x.faust-outcomes FAUST_BENCH_APP=bench-faust-1 \\
    FAUST_BENCH_DATADIR=bench/_work/faust \\
        .venv/bin/python bench/faust_baseline.py worker -l warn --without-web

``bench/bench_stream.py`` starts it like that, pre-fills the input topic and
measures events/s from the first to the last outcome on the output topic.
``FAUST_BENCH_STORE`` overrides the store (default ``rocksdb://``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import faust

from engine.kafka.client_config import default_client, faust_credentials

PARTITIONS = 8


class Transaction(faust.Record, serializer="json"):
    """The transaction fields, as a one-record message carries them."""

    txn_id: str
    operator_id: str
    mykey_id: str
    kind: str
    amount: int
    occurred_at: str
    original_txn_id: str | None = None
    received_at: str | None = None


def make_app() -> faust.App:
    env = os.environ
    app = faust.App(
        env.get("FAUST_BENCH_APP", "bench-faust"),
        broker=f"kafka://{env.get('FAUST_BENCH_BROKER', '127.0.0.1:9092')}",
        # $MYNAPOINT_CLIENT_CONFIG, as every engine client (the local broker is secured)
        broker_credentials=faust_credentials(default_client()),
        store=env.get("FAUST_BENCH_STORE", "rocksdb://"),
        datadir=env.get("FAUST_BENCH_DATADIR", "bench/_work/faust"),
        topic_partitions=PARTITIONS,
        broker_session_timeout=10,
        web_enabled=False,  # not enough on its own (see DEPENDENCY_NOTES): also --without-web
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(env.get("FAUST_BENCH_INPUT", "bench.transactions"),
                       key_type=str, value_type=Transaction, partitions=PARTITIONS)
    outcomes = app.topic(env.get("FAUST_BENCH_OUTPUT", "bench.faust-outcomes"),
                         key_type=str, value_serializer="json", partitions=PARTITIONS)
    cumulative = app.Table("cumulative-amount", default=int, partitions=PARTITIONS)

    @app.task
    async def quiet_logging() -> None:
        # `-l warn` sets the handlers' level but leaves the root logger at DEBUG, so
        # every aiokafka/mode debug record is still built (11-13 % of CPU): set it here,
        # after Faust configured logging.
        logging.getLogger().setLevel(logging.WARNING)
        print(f"faust-baseline: root logger at "
              f"{logging.getLevelName(logging.getLogger().level)}, store "
              f"{app.conf.store}", file=sys.stderr, flush=True)

    @app.agent(source)
    async def settle(stream: Any) -> None:
        async for txn in stream:
            total = cumulative[txn.mykey_id] + txn.amount
            cumulative[txn.mykey_id] = total
            await outcomes.send(key=txn.mykey_id, value={
                "txn_id": txn.txn_id, "operator_id": txn.operator_id,
                "mykey_id": txn.mykey_id, "amount": txn.amount,
                "cumulative_amount": total})

    return app


if __name__ == "__main__":
    make_app().main()
