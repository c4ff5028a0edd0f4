"""State restore benchmark: a worker takes over a partition whose changelog holds
N people (default 1,000,000) and restores it from scratch (no local checkpoint),
then again from its local checkpoint (tail only). Measured inside a real worker
process on a local broker, so heartbeats, rebalances and evictions are real.

    .venv/bin/python bench/bench_restore.py [--people 1000000] [--transactions 10]

Writes the "## State restore" section of bench/RESULTS.md. The baseline, measured
in the same run, is a bare aiokafka consumer reading the same changelog partition
without doing anything with it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import local_broker  # noqa: E402
from bench.bench_settle import machine, write_section  # noqa: E402
from bench.host import fresh_memory_cost  # noqa: E402
from engine.devtools.worker_process import WorkerProcess  # noqa: E402
from engine.kafka.client_config import default_client  # noqa: E402
from engine.kafka.produce import Outgoing, send_batched  # noqa: E402
from engine.kafka.topics import Topics, ensure_topics  # noqa: E402
from engine.streams.entries import ENTRY  # noqa: E402
from engine.streams.recovery import changelog_chunks  # noqa: E402
from engine.streams.state import (  # noqa: E402
    META_KEY,
    PersonState,
    ShardMeta,
    encode,
    source_key,
)
from engine.tools.synth import B62, radix_strings  # noqa: E402

WORK = ROOT / "bench" / "_work" / "restore"


def person_keys(people: int) -> list[str]:
    """Distinct ``mykey_id``s as the generator makes them (8 base-62 characters of a
    random code), in no order: people reach the changelog in the order they are
    touched (keys in sorted order, as this bench had them before 2026-12-06, made a
    restore's RocksDB writes far cheaper than real ones: bench/RESULTS.md)."""
    rng = np.random.default_rng(2020)
    codes = np.unique(rng.integers(0, 62**8, people + people // 100 + 10, dtype=np.int64))
    return radix_strings(rng.permutation(codes)[:people], 8, B62).to_pylist()  # type: ignore[no-any-return]


def person(i: int, key: str, transactions: int) -> tuple[bytes, bytes]:
    """An enrolled person of the shipped campaign with ``transactions`` purchases."""
    entries = np.zeros(transactions, ENTRY)
    entries["key"] = (i << 16) + np.arange(transactions) + 1  # any distinct non-zero keys
    entries["fp"] = (i * 7 + np.arange(transactions)) & 0xFFFFFFFF
    entries["amount"] = 4_000
    entries["kind"] = entries["status"] = 1
    st = PersonState(enr_op="paypay", enr_kind=1, enr_day=18_506 + i % 30, c=12_000, r=3_000,
                     marks={source_key("mynapoint.paypay.enrollments/0"): i << 16,
                            source_key("mynapoint.paypay.transactions/0"):
                            (i << 16) + transactions},
                     entries=entries.tobytes())
    return key.encode(), encode(st)


async def fill(bootstrap: str, topics: Topics, people: int, transactions: int) -> int:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(), acks=1, linger_ms=20,
                         max_batch_size=1 << 20)
    await p.start()
    try:
        nbytes = 0

        def messages() -> Iterator[Outgoing]:
            nonlocal nbytes
            for i, key in enumerate(person_keys(people)):
                k, v = person(i, key, transactions)
                nbytes += len(v)
                yield Outgoing(0, k, v)
            yield Outgoing(0, META_KEY.encode(), encode(ShardMeta(stream_time=0)))

        sent = await send_batched(p, topics.changelog, messages())
        await asyncio.gather(*(s.future for s in sent))
        return nbytes
    finally:
        await p.stop()


async def bare_read(bootstrap: str, topics: Topics) -> tuple[int, float]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                         max_partition_fetch_bytes=16 << 20)
    await c.start()
    try:
        tp = TopicPartition(topics.changelog, 0)
        c.assign([tp])
        end = (await c.end_offsets([tp]))[tp]
        c.seek(tp, 0)
        t0 = time.perf_counter()
        n = 0
        while n < end:
            got = await c.getmany(tp, timeout_ms=1000, max_records=50_000)
            n += len(got.get(tp, []))
        return n, time.perf_counter() - t0
    finally:
        await c.stop()


async def own_read(bootstrap: str, topics: Topics) -> tuple[int, float]:
    """The read a take-over makes (engine.streams.recovery's chunks of columns, as the
    restore takes them), nothing applied."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client())
    await c.start()
    try:
        tp = TopicPartition(topics.changelog, 0)
        end = (await c.end_offsets([tp]))[tp]
        t0 = time.perf_counter()
        n = 0
        async for parts, _ in changelog_chunks(c, topics, 0, 0, end - 1):
            n += sum(len(part.offsets) for part in parts)
        return n, time.perf_counter() - t0
    finally:
        await c.stop()


def cleaned(data: Path, topic: str, timeout: float = 90.0) -> float | None:
    """Wait for the broker's log cleaner to have compacted partition 0 of ``topic``
    (its closed segments: the fill's); return the seconds waited, None when it has no
    closed segment (nothing to clean). The cleaner starts on its own within 15 s of the
    fill (``log.cleaner.backoff.ms``) and, cleaning a few hundred MB, takes the broker a
    core and the disk for a second or two: a take-over measured meanwhile shares the
    machine with it (the first take-over of the run of 2026-12-07 08:52 did)."""
    if len(list((data / f"{topic}-0").glob("*.log"))) < 2:
        return None
    checkpoint = data / "cleaner-offset-checkpoint"
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if checkpoint.exists() and any(
                line.split()[:2] == [topic, "0"] for line in checkpoint.read_text().splitlines()):
            return time.perf_counter() - t0
        time.sleep(0.1)
    raise TimeoutError(f"the log cleaner did not compact {topic}/0 in {timeout:.0f} s")


def take_over(bootstrap: str, prefix: str, name: str) -> tuple[float, int, str]:
    log = WORK / f"{name}.log"
    log.unlink(missing_ok=True)
    w = WorkerProcess(bootstrap, prefix, 1, state_dir=WORK / "state", log_path=log)
    w.start(wait=120)
    try:
        w.wait_for("assigned partitions [0]", 600)
        text = log.read_text()
    finally:
        w.stop()
    m = re.search(r"partition 0 restored: (\d+) changelog records read", text)
    done = re.search(r"partition 0 taken over in ([0-9.]+) s", text)
    assert m and done, text
    assignments = text.count("assigned partitions")
    evicted = "Heartbeat failed" in text or "rebalance" in text.lower()
    return float(done[1]), int(m[1]), f"{assignments} assignment(s), evicted: {evicted}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--people", type=int, default=1_000_000)
    # the shipped campaign's mean per person with state (bench/RESULTS.md, "State per
    # person"): 10.0
    ap.add_argument("--transactions", type=int, default=10,
                    help="purchases per person (their rows are most of a person's state)")
    ap.add_argument("--takeovers", type=int, default=3,
                    help="take-overs from scratch (the median is the figure)")
    args = ap.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    broker = local_broker.start(WORK / "kafka", wait=120)
    try:
        prefix = "bench"
        topics = Topics(prefix)
        asyncio.run(ensure_topics(broker.bootstrap, topics, 1))
        t0 = time.perf_counter()
        nbytes = asyncio.run(fill(broker.bootstrap, topics, args.people, args.transactions))
        fill_s = time.perf_counter() - t0
        waited = cleaned(broker.data_dir / "data", topics.changelog)
        read_n, read_s = asyncio.run(bare_read(broker.bootstrap, topics))
        own_n, own_s = asyncio.run(own_read(broker.bootstrap, topics))
        fulls: list[tuple[float, int, str]] = []
        fresh: list[float | None] = []
        for i in range(args.takeovers):
            shutil.rmtree(WORK / "state", ignore_errors=True)
            fresh.append(fresh_memory_cost())
            fulls.append(take_over(broker.bootstrap, prefix, f"full{i}"))
        tail_s, tail_n, tail_note = take_over(broker.bootstrap, prefix, "tail")
    finally:
        broker.stop()
    full_s, full_n, full_note = sorted(fulls)[len(fulls) // 2]
    each = ", ".join(f"{f[0]:.2f}" + (f" ({m:.1f})" if m is not None else "")
                     for f, m in zip(fulls, fresh, strict=True))
    own_label = ("the take-over's own read of it (engine.kafka.fetch, records taken out, "
                 "none applied)")
    per = nbytes / args.people
    clean_note = ("; nothing for the broker's log cleaner to compact" if waited is None else
                  f"; measured once the broker's log cleaner had compacted it, {waited:.1f} s "
                  "after the fill")
    proj = full_s / args.people * 25_000_000
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rate = f"{read_n / read_s:,.0f}", f"{full_n / full_s:,.0f}", f"{own_n / own_s:,.0f}"
    text = f"""## State restore

Run of {when}: `bench/bench_restore.py --people {args.people} --transactions {args.transactions} \
--takeovers {args.takeovers}`.
Machine: {machine()}; Kafka 3.9.1 single local broker.

A changelog partition holding {args.people:,} people (enrolled, {args.transactions} purchases
each; the shipped campaign's mean is 10; {per:.0f} bytes of state each, keyed by distinct
random 8-character `mykey_id`s in no order, as people reach it in the order they are
touched; filled in {fill_s:.1f} s{clean_note}) is taken over by a real worker process (`mynapoint
worker`, restore in a background task, heartbeats running).

| measurement | records | seconds | records/s |
|---|---:|---:|---:|
| baseline: bare aiokafka read of the partition | {read_n:,} | {read_s:.2f} | {rate[0]} |
| {own_label} | {own_n:,} | {own_s:.2f} | {rate[2]} |
| take-over from scratch (no local checkpoint), median of {len(fulls)} | {full_n:,} | \
{full_s:.2f} | {rate[1]} |
| take-over again, from the local checkpoint (tail only) | {tail_n:,} | {tail_s:.2f} | — |

- From scratch: {each} s (in brackets: µs per 4 KB page for a new process to touch
  fresh memory right before the take-over, `bench.host.fresh_memory_cost`; several where
  the host has taken freed memory back, which the take-over's arena then pays at first
  touch, under 1 where it has not); the median's {full_note}; from the checkpoint: {tail_note}.
- Projection for the real program's 25 M people: {proj:,.0f} s of restore for a worker
  that takes all of them over from scratch at this rate; spread over 8 partitions and
  workers ~{proj / 8:,.0f} s each, in parallel. A restart on the same machine reads its
  local checkpoint file into memory and only the changelog's tail.
- Target of the speed issue (1 M people ≤ 5 s): {'met' if full_s <= 5 else 'missed'}.
"""
    write_section(text, "## State restore")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
