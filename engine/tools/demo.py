"""``make demo``: the main job end to end on this machine.

Generates a campaign, settles it offline, starts Kafka (unless running) and a
worker, publishes the campaign, waits until every record has its outcome,
prints the summary, checks it equals offline settle record for record, and
stops what it started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from engine.io.outputs import write_atomically
    from engine.tools.compare import compare
    from engine.tools.generate import generate_tables, write_jsonl
    from engine.tools.settle import settle_files
    from engine.tools.summary import render, summarize

    con = Console()
    data, out = Path("data"), Path("out")
    enr_path, txn_path = data / "enrollments.jsonl", data / "transactions.jsonl"
    con.rule("1. generate")
    t = time.perf_counter()
    enr, txn = generate_tables(args.users, args.transactions, seed=2020)
    data.mkdir(parents=True, exist_ok=True)
    write_jsonl(enr, enr_path)
    write_jsonl(txn, txn_path)
    con.print(f"{enr.num_rows:,} enrollments, {txn.num_rows:,} transactions in {data}/ "
              f"({time.perf_counter() - t:.1f} s)")
    con.rule("2. offline settle")
    t = time.perf_counter()
    off = settle_files(enr_path, txn_path, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY)
    write_atomically(out / "offline", {
        "grants.parquet": off.grants, "rejections.parquet": off.rejections,
        "summary.json": orjson.dumps(off.summary, option=orjson.OPT_INDENT_2)})
    con.print(f"settled in {time.perf_counter() - t:.1f} s -> {out}/offline/")
    if args.offline:
        con.print(render(off.summary))
        return 0
    return asyncio.run(_stream(args, con, enr_path, txn_path, out, off, compare, summarize,
                               render, write_atomically))


async def _stream(args, con, enr_path, txn_path, out, off, compare, summarize, render,  # type: ignore[no-untyped-def]
                  write_atomically) -> int:
    from engine.devtools import broker as devbroker
    from engine.devtools.worker_process import WorkerProcess
    from engine.kafka.client_config import use_client_config
    from engine.kafka.topics import INPUT_RETENTION_ENV, Topics
    from engine.tools.collect import collect
    from engine.tools.publish import publish_files

    # The demo replays 2020 records, stamped with their business time, into fresh
    # topics: Kafka counts retention from that stamp, so these topics keep them.
    os.environ.setdefault(INPUT_RETENTION_ENV, "P36500D")
    con.rule("3. Kafka and a worker")
    was_running = devbroker.status(args.port) is not None
    broker = devbroker.start(args.port)
    # The demo drives every role itself (publisher, worker, collector) on a prefix of
    # its own, so it authenticates as admin; a deployment gives each role its own
    # principal (`mynapoint kafka credentials engine|finance|<operator>`).
    use_client_config(broker.credentials())
    prefix = f"demo{int(time.time())}"
    # every operator's own topics, as the worker creates them from the registry
    topics = Topics(prefix, f"{prefix}-engine",
                    tuple(o.id for o in DEFAULT_REGISTRY.operators))
    log_dir = Path(".kafka")
    log_dir.mkdir(exist_ok=True)
    # the input is a finite file: its last waits end 5 s after it (not the shipped
    # 30 s a live stream keeps for a leader change, DECISIONS 112)
    worker = WorkerProcess(broker.bootstrap, prefix, 8, log_path=log_dir / f"{prefix}-worker.log",
                           extra=["--quiet-seconds", "5"])
    rc = 1
    try:
        t0 = time.perf_counter()
        worker.start()
        con.print(f"broker {broker.bootstrap}{' (already running)' if was_running else ''}, "
                  f"worker pid {worker.proc.pid if worker.proc else '?'}, topics {prefix}.*")
        con.rule("4. publish")
        manifest = out / "stream" / "manifest.parquet"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        counts = await publish_files(broker.bootstrap, topics, enr_path, txn_path, batch=1000,
                                     partitions=8, progress=True, manifest=manifest)
        con.print(f"published {counts['enrollments']:,} enrollments in "
                  f"{counts['enrollment_messages']:,} messages and {counts['transactions']:,} "
                  f"transactions in {counts['transaction_messages']:,} messages "
                  f"({counts['seconds']:.1f} s)")
        con.rule("5. collect outcomes")
        # accepted enrollments have no output record: expect what offline produced
        expect = off.grants.num_rows + off.rejections.num_rows
        grants, rejections = await collect(broker.bootstrap, topics, expect=expect,
                                           idle_timeout=60.0)
        elapsed = time.perf_counter() - t0
        summary = summarize(grants, rejections, off.summary["records_in"],
                            DEFAULT_CAMPAIGN.cap_points, DEFAULT_CAMPAIGN.id)
        write_atomically(out / "stream", {
            "grants.parquet": grants, "rejections.parquet": rejections,
            "summary.json": orjson.dumps(summary, option=orjson.OPT_INDENT_2)})
        con.print(render(summary))
        n_in = sum(off.summary["records_in"].values())
        con.print(f"{n_in:,} records settled through Kafka in {elapsed:.1f} s "
                  f"(worker start-up included)")
        con.rule("6. stream vs offline")
        m = pq.read_table(manifest)
        mapping = dict(zip(m["kafka_source"].to_pylist(), m["input_source"].to_pylist(),
                           strict=True))
        cmp = compare(off.grants, off.rejections, grants, rejections, mapping)
        con.print(str(cmp))
        rc = 0 if cmp.equal and summary["points_granted"] == off.summary["points_granted"] \
            else 1
        con.print("[bold green]stream == offline[/]" if rc == 0 else "[bold red]MISMATCH[/]")
    finally:
        worker.stop()
        if not was_running:
            broker.stop()
    return rc
