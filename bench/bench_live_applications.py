"""Live latency with applications arriving all the time (DECISIONS 126).

    .venv/bin/python bench/bench_live_applications.py --rate 15000 --applications 1500
    .venv/bin/python bench/bench_live_applications.py --operators paypay,waon,aupay

The latency run of ``bench_stream.py`` (one worker, one-record transactions at
``--rate`` of enrolled people, latency = outcome read back - handed to the producer)
with new people applying meanwhile: one-record enrollments at ``--applications`` per
second, spread round-robin over ``--operators``' enrollments topics (the default, no
operator, is the unattributed input the transactions use), sent from the start of
the load until its last outcome is read. The stream bench sends transactions only;
this load found the worker starving its transactions while applications kept
arriving (DECISIONS 126).

Prints one JSON line (rates, p50/p90/p99/max, transactions matched of those sent) and
appends it to bench/_work/live-applications/results.jsonl; run it from the checkout
whose engine you want measured (the worker is ``python -m engine.cli`` there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench.bench_stream as bs
from bench import local_broker
from engine.kafka.client_config import default_client
from engine.kafka.topics import INPUT_RETENTION_ENV, Topics, partition_for
from engine.rules.strings import format_utc

WORK = bs.ROOT / "bench" / "_work" / "live-applications"


async def applications(bootstrap: str, topics: Topics, rate: float, operators: list[str],
                       stop: asyncio.Event) -> int:
    """New people's enrollments at ``rate`` until ``stop``; how many were sent."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(), linger_ms=0)
    await p.start()
    targets = [(topics.input_of(op or None, "enrollment"), op or "paypay") for op in operators]
    sent, k, tick = 0, 0, 0.005
    t0 = time.monotonic()
    try:
        while not stop.is_set():
            while sent < rate * (time.monotonic() - t0):
                key = f"Ap{sent:06d}".encode()
                topic, op = targets[sent % len(targets)]
                rec = {"mykey_id": key.decode(), "operator_id": op,
                       "applied_at": "2020-09-01T10:00:00+09:00",
                       "received_at": format_utc(int(time.time() * 1e6))}
                await p.send(topic, orjson.dumps(rec), key=key,
                             partition=partition_for(key, bs.PARTITIONS))
                sent += 1
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * tick - time.monotonic()))
    finally:
        await p.stop()
    return sent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=15_000, help="transactions per second")
    ap.add_argument("--applications", type=float, default=1_500, help="enrollments per second")
    ap.add_argument("--operators", default="",
                    help="comma-separated operators whose enrollments topics the "
                         "applications go to (default: the unattributed input)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    bs.WORK = WORK
    WORK.mkdir(parents=True, exist_ok=True)
    campaign = WORK / "campaign-live.toml"
    campaign.write_text(bs.LIVE_CAMPAIGN_TOML)
    n = int(args.rate * (args.seconds + args.warmup) * 1.1)
    ds = bs.make_dataset("live", 20_000, n, 13, settle=False)
    broker = local_broker.start(WORK / "kafka")
    os.environ.setdefault(INPUT_RETENTION_ENV, "P36500D")  # as bench_stream.py
    sent_applications = [0]
    load = bs.latency_load

    async def with_applications(bootstrap: str, topics: Topics, rows: list[dict[str, Any]],
                                rate: float, seconds: float, warmup: float) -> dict[str, Any]:
        stop = asyncio.Event()
        task = asyncio.create_task(applications(bootstrap, topics, args.applications,
                                                args.operators.split(","), stop))
        try:
            return await load(bootstrap, topics, rows, rate, seconds, warmup)
        finally:
            stop.set()
            sent_applications[0] = await task

    bs.latency_load = with_applications
    try:
        res = bs.latency_run(broker.bootstrap, ds, args.rate, args.seconds, args.warmup,
                             campaign)
    finally:
        broker.stop()
    out = {"label": args.label, "engine": bs.engine_version(), "rate": args.rate,
           "applications_per_s": args.applications, "operators": args.operators,
           "applications_sent": sent_applications[0],
           **{k: res.get(k) for k in ("achieved_rate", "sent", "matched", "p50", "p90",
                                      "p99", "max")}}
    print(json.dumps(out))
    with open(WORK / "results.jsonl", "a") as f:
        f.write(json.dumps(out) + "\n")
    return 0 if res.get("matched") == res.get("sent") else 1


if __name__ == "__main__":
    sys.exit(main())
