"""Compile a batch's code before a worker joins its consumer group.

numba compiles a function at its first call and caches it beside the source
(``cache=True``). On a fresh install that first call is the first batch: on the 2-core
AMD EPYC machine of 2026-12-04 it compiled for 35-55 s with the event loop blocked, so
the worker missed its heartbeats (6 s session), was put out of its group and decided
nothing meanwhile (DECISIONS 124). Deciding a few made-up records on a throwaway
partition, with the grants and state encoded as a batch encodes them, compiles the
same code before any heartbeat is due; with the cache warm it takes a fraction of a
second.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from engine.kafka.produce import BATCH_BYTES
from engine.kafka.record_batch import record_batches
from engine.kafka.topics import FORMAT_HEADER, FORMAT_JSONL, Topics
from engine.rules.model import KIND_NAMES, NO_TIME, US_PER_DAY, US_PER_SECOND, Campaign, Registry
from engine.rules.strings import format_utc, kafka_partitions, prefix_codes
from engine.streams.decode import InBatch, Msg, decode_messages
from engine.streams.logic import PartitionLogic
from engine.streams.shard import SMALL_ROWS, encode_grants
from engine.streams.state import ChangelogColumns, ShardStore, checkpointed

log = logging.getLogger("mynapoint.worker")

def _records(campaign: Campaign, registry: Registry
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """An enrollment, a purchase or charge of each kind its operator pays for, a refund,
    and purchases by people not enrolled (they wait), enough for a decide call to take
    its many-records path (shard.SMALL_ROWS)."""
    op = registry.operators[0]
    day = campaign.window_start + US_PER_DAY
    enrollments = [{"mykey_id": "Warm0001", "operator_id": op.id,
                    "applied_at": format_utc(campaign.window_start)}]
    transactions = [{"txn_id": f"warm-{i}", "operator_id": op.id, "mykey_id": person,
                     "kind": kind, "amount": 1000,
                     "occurred_at": format_utc(day + i * US_PER_SECOND),
                     "received_at": format_utc(day + i * US_PER_SECOND)}
                    for i, (person, kind) in enumerate(
                        [("Warm0001", KIND_NAMES[k]) for k in op.earns_on]
                        + [(f"Wait{n:04d}", "purchase") for n in range(SMALL_ROWS)])]
    transactions.append({**transactions[0], "txn_id": "warm-refund", "kind": "refund",
                         "amount": 100, "original_txn_id": transactions[0]["txn_id"]})
    return enrollments, transactions


def warm_up(campaign: Campaign, registry: Registry, topics: Topics, partitions: int) -> None:
    """Decide made-up records on a throwaway partition (nothing is sent or kept). A
    failure is logged, never raised: the first batch would then compile, as before."""
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="mynapoint-warm-up-") as d:
            store = ShardStore(Path(d) / "p0", NO_TIME)
            try:
                # one partition: every made-up person is decided here, none re-routed
                _decide(PartitionLogic(campaign, registry, 1, 0, store),
                        campaign, registry, topics, partitions)
            finally:
                store.close()
    except Exception as e:  # a warm-up must never stop a worker
        log.warning("warming up failed (%s: %s): the first batch compiles instead",
                    type(e).__name__, e)
        return
    log.info("compiled code warmed up in %.1f s", time.perf_counter() - t0)


def _decide(logic: PartitionLogic, campaign: Campaign, registry: Registry, topics: Topics,
            partitions: int) -> None:
    enrollments, transactions = _records(campaign, registry)
    op = registry.operators[0].id
    batches: dict[str, InBatch] = {}
    for rtype, recs in (("enrollment", enrollments), ("transaction", transactions)):
        value = b"\n".join(orjson.dumps(r) for r in recs)
        msg = Msg(topics.input_of(op, rtype), 0, 0, None, None, value,
                   [(FORMAT_HEADER, FORMAT_JSONL)])
        batches[rtype] = decode_messages([msg], rtype, campaign, registry, 1 << 20)
    logic.decide(batches["enrollment"], None)
    res = logic.decide(None, batches["transaction"])
    log.debug("warm-up outcomes: %d grants, %d rejections", len(res.grant_messages),
              len(res.rejections))
    encode_grants([res.grant_messages])
    g = res.grant_messages
    if len(g):
        kafka_partitions(g.keys, partitions)
        prefix_codes(g.sources, "/")
        record_batches(g.keys, g.values, np.arange(len(g)), BATCH_BYTES)
    snap = logic.snapshot()
    record_batches(pa.array(list(snap), pa.large_string()),
                   pa.array(list(snap.values()), pa.large_binary()), None, BATCH_BYTES)
    logic.commit(0)
    logic.final()
    _take_over(logic.store, snap)


def _take_over(store: ShardStore, snap: dict[str, bytes | None]) -> None:
    """A take-over's code: the snapshot restored as changelog columns (most of the
    state: the checkpoint rewritten whole), the checkpoint read back, the waits'
    index, and the state table's index grown and arena evacuated."""
    first = store.meta.changelog_offset + 1
    store.restore_columns(ChangelogColumns.of(
        [(k.encode(), v, first + i, None) for i, (k, v) in enumerate(snap.items())]))
    store.rebuild_parked_index(0)
    store.flush()
    store.file.drain()
    table = checkpointed(store.path)
    table.reserve(1 << 10, 1)  # a larger index, the old one drained into it
    table.compact()
