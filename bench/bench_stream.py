"""End-to-end streaming benchmark: broker, workers, publisher and Faust baseline on
this machine, in one run.

    .venv/bin/python bench/bench_stream.py            # full run (~6-8 minutes)
    .venv/bin/python bench/bench_stream.py --quick    # smoke run (< 2 minutes)

What it measures (see the ``## Streaming`` section of bench/RESULTS.md):

a. batched: a clean campaign as Parquet, published in ``arrow-ipc`` messages of
   ``--batch`` records *before* any worker starts; then one (and, separately, two)
   ``mynapoint worker`` processes drain it. Time = worker ready (its first
   "assigned partitions" log line) to the last outcome (the largest timestamp of
   the last message of every output partition, once the output topics hold as many
   messages as offline ``settle`` has grants + rejections).
b. the same with one record per message (``batch=1``).
c. latency: one worker; transactions sent as one-record messages at half of (b)'s
   rate with Kafka timestamps (= received_at) of *now*, under a campaign.toml whose
   accept_end lies far in the future; latency = time the outcome reached a consumer
   of the output topics - time the input was handed to the producer, matched by
   the outcome's ``source`` (topic/partition/offset from the producer's metadata).
d. the canonical Faust agent (bench/faust_baseline.py): one event at a time,
   faust.Record + Table (RocksDB), one JSON outcome per event; events/s from the
   first to the last outcome.
e. py-spy profiles of a worker (``py-spy record -p``, attached once it is ready):
   the first 30 s of draining (a), the whole of (b), and 10 s of the live load of
   (c); in separate runs, so that the sampler does not disturb the measured numbers.
   Lower-rate latency runs (0.1x, 0.25x) show where the tail comes from.

Before each measurement the script waits (up to 2 min) until other processes leave
the CPUs alone, records the CPU they used meanwhile, and measures once more when
they took more than 0.3 cores (while the run is younger than 7.5 minutes). After each
one it deletes every topic, so that the next runs on a broker holding its own topics
only, not a page cache the runs before it filled (BROKER_PROPERTIES).

Everything lives in bench/_work/stream/ (git-ignored): the broker's data dir (removed
at the end unless --keep), datasets, worker logs, profiles and results.json; the
broker is started on a free port and stopped at the end. A full run rewrites the
``## Streaming`` section of bench/RESULTS.md, keeping a hand-written
``### Notes (not generated)`` subsection; ``--quick`` works in bench/_work/stream-quick
and leaves RESULTS.md alone (unless ``--md``). ``--render-only`` rewrites the section
from the last results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from bench import local_broker  # noqa: E402
from bench.host import (  # noqa: E402
    cpu_model,
    cpu_probe_ms,
    cpuinfo,
    fresh_memory_cost,
    meminfo_kb,
    process_cpu_seconds,
)
from bench.results_md import RESULTS_MD, write_section  # noqa: E402
from bench.stream_report import median_drain, render, render_runtimes  # noqa: E402
from engine.config import load_campaign, load_operators  # noqa: E402
from engine.devtools import broker as devbroker  # noqa: E402
from engine.devtools.worker_process import WorkerProcess, terminate  # noqa: E402
from engine.kafka.client_config import default_client  # noqa: E402
from engine.kafka.produce import BatchSender, Outgoing  # noqa: E402
from engine.kafka.topics import (  # noqa: E402
    INPUT_RETENTION_ENV,
    Topics,
    delete_topics,
    end_offsets,
    partition_for,
)
from engine.rules.strings import format_utc, rfc3339_utc  # noqa: E402
from engine.tools.publish import publish_files  # noqa: E402
from tests.builders import make_scenario, write_campaign  # noqa: E402

PARTITIONS = 8
WORK = ROOT / "bench" / "_work" / "stream"
PY_SPY = Path(sys.executable).with_name("py-spy")
STALL_SECONDS = 60.0     # no new outcome for this long while expecting more: a hang
PROFILE_RATE = 100       # py-spy samples per second
WORKER_ARGS: list[str] = []  # --worker-args: appended to every engine worker's options
RETRY_FOREIGN_CORES = 0.3     # measure again when other processes used more meanwhile
RETRY_BUDGET_SECONDS = 450.0  # ... unless the run is already this old

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "batched_users": 200_000, "batched_txns": 2_000_000, "batch": 5_000,
        "single_users": 20_000, "single_txns": 300_000,
        "latency_users": 20_000, "latency_seconds": 20.0, "latency_warmup": 3.0,
        "latency_sweep": [0.1, 0.25], "latency_sweep_seconds": 10.0,
        "faust_events": 60_000, "drains": 3,
        "profile_batched_seconds": 30.0, "profile_live_seconds": 10.0,
    },
    "quick": {
        "batched_users": 10_000, "batched_txns": 100_000, "batch": 5_000,
        "single_users": 2_000, "single_txns": 20_000,
        "latency_users": 2_000, "latency_seconds": 5.0, "latency_warmup": 1.0,
        "latency_sweep": [0.25], "latency_sweep_seconds": 2.0,
        "faust_events": 3_000,
        "profile_batched_seconds": 0.0, "profile_live_seconds": 3.0,
    },
}

# --runtimes: the two worker runtimes and the canonical Faust agent side by side
RUNTIME_SIZES: dict[str, dict[str, Any]] = {
    "full": {"batched_users": 20_000, "batched_txns": 200_000, "batch": 5_000,
             "single_users": 5_000, "single_txns": 50_000, "faust_events": 20_000,
             "latency_users": 2_000, "latency_seconds": 20.0, "latency_warmup": 5.0,
             # enough live rows for 25 s at half the aiokafka runtime's rate
             "latency_txns": 400_000},
    "quick": {"batched_users": 2_000, "batched_txns": 20_000, "batch": 5_000,
              "single_users": 500, "single_txns": 5_000, "faust_events": 2_000,
              "latency_users": 500, "latency_seconds": 5.0, "latency_warmup": 1.0},
}

# Same terms as the shipped campaign, but records received now are not LATE.
LIVE_CAMPAIGN_TOML = """\
# bench/bench_stream.py latency run: the shipped campaign with accept_end far in the
# future, so that records stamped with the current time are accepted.
id = "mynapoint-2020"
window_start = 2020-09-01T00:00:00+09:00
window_end = 2021-10-01T00:00:00+09:00
enroll_end = 2021-10-01T00:00:00+09:00
accept_end = 2099-01-01T00:00:00+09:00
rate_percent = 25
cap_points = 5000
rounding = "cumulative_floor"
max_amount = 10000000
park_timeout = "PT24H"
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _system_busy() -> float:
    """CPU seconds all processes of the machine have used (all cores)."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) for x in f]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuAccount:
    """CPU used during a measurement by this benchmark (itself, its reaped children
    and the broker) and by everything else on the machine ("foreign")."""

    broker_pid = 0

    def __init__(self, live_pids: tuple[int, ...] = ()) -> None:
        """``live_pids``: our children that are still running when :meth:`result` is
        called (a child counts in ``os.times()`` only once it has been reaped)."""
        self.pids = live_pids
        self.t0 = time.monotonic()
        self.sys0 = _system_busy()
        self.own0 = self._own()
        self.pid0 = {p: process_cpu_seconds(p) for p in self.pids}

    def _own(self) -> float:
        t = os.times()
        return (t.user + t.system + t.children_user + t.children_system
                + process_cpu_seconds(self.broker_pid)
                + sum(process_cpu_seconds(p) for p in self.pids))

    def result(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        total = _system_busy() - self.sys0
        own = self._own() - self.own0
        cores = os.cpu_count() or 1
        out = {"wall": wall, "busy_cores": total / wall if wall else 0.0,
               "own_cores": own / wall if wall else 0.0,
               "foreign_cores": max(total - own, 0.0) / wall if wall else 0.0,
               "cores": cores}
        if self.pids and wall:
            out["live_children_cores"] = sum(process_cpu_seconds(p) - self.pid0[p]
                                             for p in self.pids) / wall
        return out


def wait_for_quiet(limit: float, max_foreign: float = 0.15) -> dict[str, float]:
    """Wait (up to ``limit`` s) until other processes use < ``max_foreign`` cores."""
    t0 = time.monotonic()
    while True:
        a = CpuAccount()
        time.sleep(3.0)
        r = a.result()
        if r["foreign_cores"] < max_foreign or time.monotonic() - t0 >= limit:
            r["waited"] = time.monotonic() - t0
            return r
        log(f"machine busy: other processes use {r['foreign_cores']:.2f} of "
            f"{r['cores']} cores; waiting for a quiet moment "
            f"({time.monotonic() - t0:.0f}/{limit:.0f} s)")


# ------------------------------------------------------------------------ datasets

@dataclass
class Dataset:
    name: str
    enrollments: Path
    transactions: Path
    n_enrollments: int
    n_transactions: int
    expected: int           # grants + rejections of offline settle


def make_dataset(name: str, users: int, txns: int, seed: int, settle: bool = True,
                 campaign_file: Path | None = None) -> Dataset:
    """A clean campaign as Parquet, through the tests' generate -> settle path."""
    d = WORK / "data" / name
    t0 = time.perf_counter()
    expected = -1
    if settle:
        sc = make_scenario(d, users, txns, seed, load_campaign(campaign_file), clean=True,
                           ext="parquet")
        expected = sc.expected_outcomes
    else:
        write_campaign(d, users, txns, seed, clean=True, formats=("parquet",))
    e, t = d / "enrollments.parquet", d / "transactions.parquet"
    n_e, n_t = pq.read_metadata(e).num_rows, pq.read_metadata(t).num_rows
    log(f"dataset {name}: {n_e:,} enrollments, {n_t:,} transactions, "
        f"{expected:,} offline outcomes ({time.perf_counter() - t0:.1f} s)")
    return Dataset(name, e, t, n_e, n_t, expected)


# ------------------------------------------------------------------------ Kafka helpers

def output_tps(topics: Topics) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t in topics.outcomes for p in range(PARTITIONS)]


def run_topics(prefix: str) -> Topics:
    """A measurement's topics: per operator of the shipped registry, as in production
    (publish routes each record to its operator's inputs)."""
    return Topics(prefix, operators=tuple(o.id for o in load_operators().operators))


async def _edge_timestamps(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int],
                           last: bool) -> list[int]:
    """Timestamps (ms) of the first or last message of every non-empty partition."""
    want = {tp: (end - 1 if last else 0) for tp, end in ends.items() if end > 0}
    if not want:
        return []
    consumer.assign(list(want))
    for tp, off in want.items():
        consumer.seek(tp, off)
    got: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + 30
    while len(got) < len(want) and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500)
        for tp, msgs in batch.items():
            for m in msgs:
                if m.offset == want[tp]:
                    got[tp] = m.timestamp
    return list(got.values())


async def wait_outcomes(bootstrap: str, tps: list[TopicPartition], expected: int,
                        alive: Any, stall: float = STALL_SECONDS,
                        max_seconds: float = 0.0) -> dict[str, Any]:
    """Poll the output end offsets until they add up to ``expected`` messages.

    The workers' producers are idempotent but not transactional, so the end offset
    sum is the message count. Returns detection time, first/last outcome time.
    ``max_seconds`` > 0 stops watching early (``partial``), for profiles."""
    t_start = time.monotonic()
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(), enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    try:
        last_n, last_change = -1, time.monotonic()
        out: dict[str, Any] = {"ok": False}
        series: list[tuple[float, int]] = []   # (time.time(), outcomes so far), ~1/s
        while True:
            ends = await c.end_offsets(tps)
            n = sum(ends.values())
            now = time.monotonic()
            if not series or time.time() - series[-1][0] >= 1.0:
                series.append((time.time(), n))
            if n != last_n:
                last_n, last_change = n, now
            if n >= expected:
                out.update(ok=True, t_detect=time.time())
                break
            if now - last_change > stall:
                out.update(error=f"stalled: {n:,} of {expected:,} outcomes, none new for "
                                 f"{stall:.0f} s")
                break
            if not alive():
                out.update(error=f"a worker exited: {n:,} of {expected:,} outcomes")
                break
            if max_seconds and now - t_start >= max_seconds:
                out.update(partial=True, t_detect=time.time())
                break
            await asyncio.sleep(0.05)
        out["count"] = n
        series.append((time.time(), n))
        out["series"] = series
        await asyncio.sleep(1.0)  # anything beyond `expected` would be a duplicate
        ends = await c.end_offsets(tps)
        out["count_after_1s"] = sum(ends.values())
        lasts = await _edge_timestamps(c, ends, last=True)
        firsts = await _edge_timestamps(c, ends, last=False)
        out["t_last"] = max(lasts) / 1000 if lasts else None
        out["t_first"] = min(firsts) / 1000 if firsts else None
        return out
    finally:
        await c.stop()


async def wait_committed(bootstrap: str, group: str, ends: dict[TopicPartition, int],
                         timeout: float = 120.0) -> float:
    """Wait until ``group`` has committed the given end offsets; returns seconds waited."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
    await admin.start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            got = await admin.list_consumer_group_offsets(group)
            if all(got.get(tp) is not None and got[tp].offset >= end
                   for tp, end in ends.items() if end > 0):
                return time.monotonic() - t0
            await asyncio.sleep(0.2)
        raise TimeoutError(f"group {group} did not reach the end of its input in {timeout} s")
    finally:
        await admin.close()


# ------------------------------------------------------------------------ workers

_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_times(path: Path, text: str) -> list[float]:
    """Wall-clock times of the worker log lines containing ``text``."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = _LOG_TIME.match(line)
        if m and text in line:
            out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def scrape_metrics(port: int) -> dict[str, float]:
    """Samples of the worker's polls, their time by phase (a ``name{phase="…"}`` key
    each), and its own append-to-outcome histogram (the record's Kafka timestamp to the
    batch's checkpoint, a ``name{le="…"}`` key per bucket) to compare with the
    consumer-side latency."""
    from prometheus_client.parser import text_string_to_metric_families

    keep = ("mynapoint_batch_records_count", "mynapoint_batch_records_sum",
            "mynapoint_batch_seconds_sum", "mynapoint_outcome_latency_seconds_count")
    bucket = "mynapoint_outcome_latency_seconds_bucket"
    phase = "mynapoint_batch_phase_seconds_sum"
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name in keep:
                out[s.name] = float(s.value)
            elif s.name == bucket:
                out[f'{bucket}{{le="{s.labels["le"]}"}}'] = float(s.value)
            elif s.name == phase:
                out[f'{phase}{{phase="{s.labels["phase"]}"}}'] = float(s.value)
    return out


class BenchWorker:
    """A ``WorkerProcess`` with its metrics port, and optionally ``py-spy`` attached."""

    def __init__(self, bootstrap: str, prefix: str, name: str, campaign: Path | None,
                 runtime: str = "aiokafka") -> None:
        self.metrics_port = devbroker.free_port()
        # a finite input's last waits end 2 s after it (the shipped 30 s is for a
        # live stream's leader changes, DECISIONS 112): the throughput is the input's
        extra = ["--metrics-port", str(self.metrics_port), "--runtime", runtime,
                 "--quiet-seconds", "2"]
        if campaign is not None:
            extra += ["--campaign", str(campaign)]
        extra += WORKER_ARGS
        self.log_path = WORK / "logs" / f"{prefix}-{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.wp = WorkerProcess(bootstrap, prefix, PARTITIONS, state_dir=WORK / "state",
                                log_path=self.log_path, extra=extra)
        self.spy: subprocess.Popen[bytes] | None = None
        self.spy_started = 0.0
        self.spy_seconds = 0.0

    def start(self) -> BenchWorker:
        self.wp.start(wait=0)
        return self

    def attach_profiler(self, out: Path) -> None:
        """``py-spy record`` attached to the running worker, until :meth:`stop_profiler`."""
        assert self.wp.proc is not None
        out.parent.mkdir(parents=True, exist_ok=True)
        self.spy = subprocess.Popen(
            [str(PY_SPY), "record", "--nonblocking", "-r", str(PROFILE_RATE), "-f", "raw",
             "-o", str(out), "-p", str(self.wp.proc.pid)],
            stdout=open(out.with_suffix(".log"), "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            stdin=subprocess.DEVNULL)
        self.spy_started = time.monotonic()

    def stop_profiler(self) -> None:
        if self.spy is None:
            return
        self.spy_seconds = time.monotonic() - self.spy_started
        self.spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            self.spy.wait(60)
        except subprocess.TimeoutExpired:
            self.spy.kill()
            self.spy.wait()
        self.spy = None

    def stop(self) -> int | None:
        self.stop_profiler()
        return self.wp.stop()

    def problems(self) -> list[str]:
        text = self.log_path.read_text(errors="replace")
        lines = text.splitlines()
        bad = [ln for ln in lines if re.search(r"Traceback|ERROR|Error:|WARNING|skipped", ln)]
        return bad[:10]


def _rate_between(series: list[tuple[float, int]], total: int, lo: float,
                  hi: float) -> float | None:
    """Outcomes/s between the samples where the count first reached lo and hi x total
    (sampled about once a second, so this is approximate)."""
    a = next((x for x in series if x[1] >= lo * total), None)
    b = next((x for x in series if x[1] >= hi * total), None)
    if a is None or b is None or b[0] <= a[0]:
        return None
    return (b[1] - a[1]) / (b[0] - a[0])


def engine_run(bootstrap: str, label: str, ds: Dataset, batch: int, workers: int,
               campaign: Path | None = None, profile: Path | None = None,
               max_seconds: float = 0.0, runtime: str = "aiokafka") -> dict[str, Any]:
    prefix = f"{label}-{int(time.time() * 1000) % 10**9}"
    topics = run_topics(prefix)
    pub = asyncio.run(publish_files(bootstrap, topics, ds.enrollments, ds.transactions,
                                    batch=batch, partitions=PARTITIONS))
    n_rec = ds.n_enrollments + ds.n_transactions
    log(f"{label}: published {n_rec:,} records in "
        f"{pub['enrollment_messages'] + pub['transaction_messages']:,} messages in "
        f"{pub['seconds']:.1f} s ({n_rec / pub['seconds']:,.0f} records/s)")
    ws = [BenchWorker(bootstrap, prefix, f"w{i}", campaign, runtime) for i in range(workers)]
    res: dict[str, Any] = {
        "label": label, "prefix": prefix, "batch": batch, "workers": workers,
        "runtime": runtime,
        "enrollments": ds.n_enrollments, "transactions": ds.n_transactions,
        "expected_outcomes": ds.expected, "published_seconds": pub["seconds"],
        "messages": pub["enrollment_messages"] + pub["transaction_messages"],
        "profiled": profile is not None,
    }
    t_launch = time.time()
    cpu = CpuAccount()
    try:
        for w in ws:
            w.start()
        for w in ws:
            w.wp.wait_for("assigned partitions", 120)
        if profile is not None:
            ws[0].attach_profiler(profile)
        got = asyncio.run(wait_outcomes(bootstrap, output_tps(topics), ds.expected,
                                        lambda: all(w.wp.alive for w in ws),
                                        max_seconds=max_seconds))
        ws[0].stop_profiler()
        res["profile_seconds"] = ws[0].spy_seconds
        res.update(got)
        res["metrics"] = [scrape_metrics(w.metrics_port) for w in ws]
        res["worker_peak_rss_mib"] = [peak_rss_mib(w.wp.proc.pid if w.wp.proc else 0)
                                      for w in ws]
        cl = [TopicPartition(topics.changelog, p) for p in range(PARTITIONS)]
        res["changelog_messages"] = sum(asyncio.run(end_offsets(bootstrap, cl)).values())
    finally:
        codes = [w.stop() for w in ws]
    res["exit_codes"] = codes
    res["cpu"] = cpu.result()
    res["log_problems"] = [p for w in ws for p in w.problems()]
    assigned = [t for w in ws for t in log_times(w.log_path, "assigned partitions")]
    if not assigned:
        res.setdefault("error", "no worker logged 'assigned partitions'")
        return res
    t_ready = min(assigned)
    res["startup_seconds"] = t_ready - t_launch
    # assignments after the last outcome are the stop's rebalance, not the run's
    t_end = res.get("t_last") or res.get("t_detect") or float("inf")
    during = [t for t in assigned if t <= t_end]
    res["assignments"] = len(during)
    res["settled_after_seconds"] = max(during) - t_ready
    if res.get("partial"):
        # a profile run cut short: the rate of the outcomes so far
        secs = res["t_detect"] - t_ready
        res["seconds"] = secs
        res["txn_per_s"] = res["count"] / secs
        log(f"{label}: stopped after {secs:.1f} s with {res['count']:,} of "
            f"{ds.expected:,} outcomes = {res['txn_per_s']:,.0f} outcomes/s")
    elif res.get("ok") and res.get("t_last"):
        secs = res["t_last"] - t_ready
        res["seconds"] = secs
        res["txn_per_s"] = ds.n_transactions / secs
        res["records_per_s"] = n_rec / secs
        res["first_outcome_after"] = (res["t_first"] - t_ready) if res.get("t_first") else None
        res["rate_10_90"] = _rate_between(res.get("series") or [], ds.expected, 0.1, 0.9)
        log(f"{label}: {ds.n_transactions:,} transactions in {secs:.2f} s = "
            f"{res['txn_per_s']:,.0f} transactions/s ({res['records_per_s']:,.0f} records/s)"
            f"; outcomes {res['count']:,}/{ds.expected:,}"
            f" (1 s later {res['count_after_1s']:,})")
    else:
        log(f"{label}: FAILED: {res.get('error')}")
    if res["log_problems"]:
        log(f"{label}: worker log lines worth a look: {res['log_problems'][:3]}")
    return res


# ------------------------------------------------------------------------ latency

def live_rows(path: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` transactions as JSON-ready dicts, instants as RFC 3339 text
    (formatted a column at a time: one call per value took minutes for a run's rows)."""
    t = pq.read_table(path).slice(0, n)
    for i, field in enumerate(t.schema):
        if pa.types.is_timestamp(field.type):
            col = t.column(i).cast(pa.timestamp("us", "UTC")).cast(pa.int64())
            us = col.fill_null(0).to_numpy()
            text = pa.array(rfc3339_utc(us), pa.string())
            t = t.set_column(i, field.name, pc.if_else(col.is_valid(), text, None))
    return t.to_pylist()  # type: ignore[no-any-return]


def _read_outcomes(bootstrap: str, tps: list[TopicPartition], ready: Any, total: Any,
                   out_path: str) -> None:
    """The latency load's outcome reader, in a process of its own: in the sender's
    process its reading queued behind the sending (one event loop for both), which
    added hundreds of ms to the measured tail that the outcomes' own timestamps did
    not show ("Notes" in bench/RESULTS.md). ``total`` is -1 until the sender knows how
    many it sent. Writes (source, reason, receipt time, outcome timestamp ms) rows as
    JSON, with its CPU (cores) while the load was sent."""
    async def run() -> list[tuple[bytes, float, int]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                                    enable_auto_commit=False,
                                    auto_offset_reset="earliest", fetch_max_wait_ms=100)
        await consumer.start()
        got: list[tuple[bytes, float, int]] = []
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            await consumer.getmany(timeout_ms=100)  # fetching: the load may begin
            ready.set()
            t0, c0 = time.monotonic(), os.times()
            idle_since = None
            while True:
                batch = await consumer.getmany(timeout_ms=50, max_records=10_000)
                now = time.time()
                n = 0
                for msgs in batch.values():
                    for m in msgs:
                        got.append((m.value, now, m.timestamp))
                        n += 1
                if total.value >= 0:
                    if not cores:  # the sending has just ended
                        c1 = os.times()
                        cores.append((c1.user + c1.system - c0.user - c0.system)
                                     / (time.monotonic() - t0))
                    if len(got) >= total.value:
                        return got
                    if n:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = time.monotonic()
                    elif time.monotonic() - idle_since > 20:
                        return got
        finally:
            await consumer.stop()

    cores: list[float] = []  # the reader's CPU while the load was sent
    got = asyncio.run(run())
    rows = []
    for v, now, ts in got:
        d = orjson.loads(v)
        rows.append((d.get("source", ""), d.get("reason", "granted"), now, ts))
    Path(out_path).write_bytes(orjson.dumps({"rows": rows, "cores": cores[:1] or [0.0]}))


async def latency_load(bootstrap: str, topics: Topics, rows: list[dict[str, Any]],
                       rate: float, seconds: float, warmup: float) -> dict[str, Any]:
    """Send ``rows`` at ``rate`` for ``warmup + seconds``; latencies of the records
    sent during the warm-up are reported apart (``all_*``)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(), acks="all",
                                enable_idempotence=True, linger_ms=0,
                                max_batch_size=1 << 20)
    await producer.start()
    ctx = multiprocessing.get_context("spawn")
    ready, total = ctx.Event(), ctx.Value("q", -1)
    got_path = WORK / f"outcomes-{topics.prefix}.json"
    reader = ctx.Process(target=_read_outcomes, args=(bootstrap, output_tps(topics), ready,
                                                       total, str(got_path)))
    reader.start()

    # Everything of a message but its receipt time is made before the clock starts:
    # key, partition (murmur2) and the JSON without ``received_at``. The generator
    # shares the 2 cores with the broker and the worker, and making these per message
    # in the loop cost it more CPU than the worker got (DECISIONS 108).
    prepared = []
    for row in rows:
        key = row["mykey_id"].encode()
        body = orjson.dumps({k: v for k, v in row.items() if k != "received_at"})
        prepared.append((partition_for(key, PARTITIONS), key, body[:-1]))
    no_headers: list[tuple[str, bytes]] = []
    while not ready.wait(0):  # not blocking the producer's loop
        if not reader.is_alive():
            raise RuntimeError("the outcome reader exited before the load")
        await asyncio.sleep(0.05)
    tick = 0.005
    cpu0 = os.times()
    t0 = time.monotonic()
    i = 0
    k = 0
    # the bench's Topics name no operator: publish and this sender use the unattributed
    # input, one topic per record type as before per-operator topics (same work)
    topic = topics.input_of(None, "transaction")
    sender = BatchSender(producer, topic)   # tags: when each message was handed over
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= warmup + seconds or i >= len(rows):
            break
        due = min(int(rate * elapsed) - i, len(rows) - i)
        if due > 0:
            now = time.time()
            ts_ms = int(now * 1000)
            tail = b',"received_at":"' + format_utc(ts_ms * 1000).encode() + b'"}'
            for part, key, head in prepared[i:i + due]:
                if not sender.try_append(part, key, head + tail, ts_ms, no_headers, now):
                    await sender.add(Outgoing(part, key, head + tail, ts_ms), tag=now)
            await sender.send_open()   # at once: latency, not throughput, is measured
            i += due
        k += 1
        await asyncio.sleep(max(0.0, t0 + k * tick - time.monotonic()))
    send_seconds = time.monotonic() - t0
    cpu1 = os.times()
    # this process's CPU while it sent (and read outcomes): what the measurement itself
    # takes of the 2 cores it shares with the broker and the worker
    generator_cores = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / send_seconds
    total.value = i
    send_time: dict[str, float] = {}
    for d in await sender.flush():
        base = d.future.result().offset
        for j, handed in enumerate(d.tags):
            send_time[f"{topic}/{d.partition}/{base + j}"] = handed
    await producer.stop()
    await asyncio.to_thread(reader.join)
    got = orjson.loads(got_path.read_bytes())
    got_path.unlink()
    received = got["rows"]
    lat: list[float] = []
    stamped: list[float] = []
    sent_at: list[float] = []
    unmatched = 0
    reasons: Counter[str] = Counter()
    for source, reason, now, ts in received:
        t = send_time.get(source)
        if t is None:
            unmatched += 1
            continue
        lat.append(now - t)
        stamped.append(ts / 1000 - t)
        sent_at.append(t)
        reasons[reason] += 1
    a = np.asarray(lat) * 1000
    out: dict[str, Any] = {
        "sent": i, "send_seconds": send_seconds, "achieved_rate": i / send_seconds,
        "generator_cores": generator_cores + got["cores"][0],
        "reader_cores": got["cores"][0],
        "outcomes": len(received), "matched": len(lat), "unmatched": unmatched,
        "outcome_kinds": dict(reasons),
    }
    if len(a):
        sa = np.asarray(sent_at)
        np.savez(WORK / f"latency-{topics.prefix}.npz", sent_at=sa, latency_ms=a)
        t_load = min(send_time.values())
        measured = a[sa - t_load >= warmup]
        out["measured"] = len(measured)
        if len(measured):
            out.update({f"p{q}": float(np.percentile(measured, q)) for q in (50, 90, 99, 99.9)})
            out["max"] = float(measured.max())
            out["mean"] = float(measured.mean())
            # the same records up to their outcome's stamp: the worker's part of the
            # latency, without the ack and this (CPU-sharing) consumer's reading
            st = (np.asarray(stamped) * 1000)[sa - t_load >= warmup]
            out.update({f"stamped_p{q}": float(np.percentile(st, q)) for q in (50, 99)})
        out.update({f"all_p{q}": float(np.percentile(a, q)) for q in (50, 99)})
        out["all_max"] = float(a.max())
        # worst latency per second of the run, to show where the tail comes from
        sec = ((sa - t_load) // 1).astype(np.int64)
        worst = np.zeros(int(sec.max()) + 1)
        np.maximum.at(worst, sec, a)
        out["worst_per_second_ms"] = [round(float(x)) for x in worst]
    return out


def latency_run(bootstrap: str, ds: Dataset, rate: float, seconds: float, warmup: float,
                campaign: Path, profile: Path | None = None,
                runtime: str = "aiokafka") -> dict[str, Any]:
    prefix = f"latency-{int(time.time() * 1000) % 10**9}"
    topics = Topics(prefix)
    pub = asyncio.run(publish_files(bootstrap, topics, ds.enrollments, None, batch=5000,
                                    partitions=PARTITIONS))
    rows = live_rows(ds.transactions, int(rate * (seconds + warmup) * 1.05) + 100)
    w = BenchWorker(bootstrap, prefix, "w0", campaign, runtime)
    res: dict[str, Any] = {"label": "latency", "prefix": prefix, "target_rate": rate,
                           "runtime": runtime,
                           "seconds": seconds, "warmup": warmup,
                           "enrollments": pub["enrollments"]}
    try:
        w.start()
        w.wp.wait_for("assigned partitions", 120)
        enr_ends = asyncio.run(end_offsets(bootstrap, [TopicPartition(t, p)
                                                       for t in topics.enrollment_inputs
                                                       for p in range(PARTITIONS)]))
        res["enrollments_read_seconds"] = asyncio.run(
            wait_committed(bootstrap, topics.group_id, enr_ends))
        log(f"latency: worker read {pub['enrollments']:,} enrollments; sending "
            f"{rate:,.0f} transactions/s for {warmup:.0f} + {seconds:.0f} s")
        if profile is not None:
            w.attach_profiler(profile)
        before = scrape_metrics(w.metrics_port)
        cpu = CpuAccount((w.wp.proc.pid,) if w.wp.proc else ())
        res.update(asyncio.run(latency_load(bootstrap, topics, rows, rate, seconds, warmup)))
        w.stop_profiler()
        res["cpu"] = cpu.result()
        after = scrape_metrics(w.metrics_port)
        # only the polls of the load, not those that read the enrollments before it
        res["metrics"] = [{k: v - before.get(k, 0.0) for k, v in after.items()}]
        if profile is not None and profile.exists():
            res["profile"] = summarize_profile(profile, w.spy_seconds)
            res["profile_file"] = str(profile.relative_to(ROOT))
    finally:
        res["exit_codes"] = [w.stop()]
    res["log_problems"] = w.problems()
    if res.get("measured"):
        log(f"latency: sent {res['sent']:,} at {res['achieved_rate']:,.0f}/s, "
            f"{res['matched']:,} outcomes matched ({res['unmatched']} unmatched): "
            f"p50 {res['p50']:.1f} ms, p99 {res['p99']:.1f} ms, max {res['max']:.1f} ms; "
            f"to the outcome's stamp p50 {res['stamped_p50']:.1f} ms, "
            f"p99 {res['stamped_p99']:.1f} ms")
    return res


# ------------------------------------------------------------------------ Faust

def faust_run(bootstrap: str, ds: Dataset, n: int) -> dict[str, Any]:
    name = f"faust-{int(time.time() * 1000) % 10**9}"
    d = WORK / "faust" / name
    d.mkdir(parents=True, exist_ok=True)
    src = d / "transactions.parquet"
    pq.write_table(pq.read_table(ds.transactions).slice(0, n), src)
    topics = Topics(name)
    pub = asyncio.run(publish_files(bootstrap, topics, None, src, batch=1,
                                    partitions=PARTITIONS))
    out_topic = f"{name}.faust-outcomes"
    source = topics.input_of(None, "transaction")  # no operators: all in one topic

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **default_client())
        await admin.start()
        try:
            await admin.create_topics([NewTopic(out_topic, PARTITIONS, 1)])
        finally:
            await admin.close()
        await asyncio.sleep(1.0)

    asyncio.run(create())
    env = {**os.environ, "FAUST_BENCH_BROKER": bootstrap,
           "FAUST_BENCH_INPUT": source, "FAUST_BENCH_OUTPUT": out_topic,
           "FAUST_BENCH_APP": name, "FAUST_BENCH_DATADIR": str(d / "data")}
    cmd = [sys.executable, str(ROOT / "bench" / "faust_baseline.py"), "worker", "-l", "warn",
           "--without-web"]
    log_path = d / "faust.log"
    log(f"faust: {pub['transactions']:,} one-record messages in {source}; "
        f"starting the agent")
    res: dict[str, Any] = {"label": "faust", "events": n, "command": " ".join(
        ["FAUST_BENCH_...=...", ".venv/bin/python", "bench/faust_baseline.py", *cmd[2:]])}
    t_launch = time.time()
    cpu = CpuAccount()
    with open(log_path, "wb") as lf:
        proc = subprocess.Popen(cmd, env=env, stdout=lf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
    try:
        got = asyncio.run(wait_outcomes(
            bootstrap, [TopicPartition(out_topic, p) for p in range(PARTITIONS)], n,
            lambda: proc.poll() is None, stall=120.0))
        res.update(got)
    finally:
        if proc.poll() is None:
            terminate(proc)
    res["cpu"] = cpu.result()
    text = log_path.read_text(errors="replace")
    res["root_logger_line"] = next((ln.strip() for ln in text.splitlines()
                                    if "faust-baseline: root logger" in ln), None)
    if res.get("ok") and res.get("t_first") and res.get("t_last"):
        span = res["t_last"] - res["t_first"]
        res["span_seconds"] = span
        res["events_per_s"] = (n - 1) / span
        res["startup_seconds"] = res["t_first"] - t_launch
        log(f"faust: {n:,} events, first to last outcome {span:.1f} s = "
            f"{res['events_per_s']:,.0f} events/s (start-up {res['startup_seconds']:.1f} s)")
    else:
        log(f"faust: FAILED: {res.get('error')}; see {log_path}")
    return res


# ------------------------------------------------------------------------ profiles

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _frame_name(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    return f"{m.group('func')} ({m.group('file')})"


def summarize_profile(path: Path, seconds: float, top: int = 15) -> dict[str, Any]:
    """Self and inclusive sample counts per function from py-spy's raw output."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    area: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += c
        self_c[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
        area[_area(frames)] += c
    pct = (lambda c: 100.0 * c / total) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "busy_fraction": total / (PROFILE_RATE * seconds) if seconds else None,
        "self": [(f, c, pct(c)) for f, c in self_c.most_common(top)],
        "inclusive": [(f, c, pct(c)) for f, c in incl.most_common(top + 10)],
        "areas": [(a, c, pct(c)) for a, c in area.most_common()],
    }


# Where a sample's time goes, by the innermost frame of ours or of a library that
# the stack passes through (first match from the leaf up).
_AREAS = [
    ("decode: JSON/Arrow -> records (engine.streams.decode, rules.validate)",
     ("streams/decode.py", "rules/validate.py", "io/readers.py", "rules/strings.py")),
    ("decide: state lookups + kernel (engine.streams.shard, rules.kernel)",
     ("streams/shard.py", "rules/kernel.py")),
    ("state: encode/store blobs (engine.streams.state, its checkpoint file)",
     ("streams/state.py", "streams/state_file.py")),
    ("produce: aiokafka producer (batch building, sending)", ("aiokafka/producer",)),
    ("consume: aiokafka consumer (fetch, record parsing)",
     ("aiokafka/consumer", "aiokafka/record")),
    ("aiokafka client/connection", ("aiokafka/",)),
    ("metrics (prometheus_client, engine.metrics)", ("prometheus_client", "metrics/")),
    # the Faust runtime's own layers (its aiokafka consumer is counted above)
    ("Faust: stream, agent, take_events (faust.streams, .agents, .channels)",
     ("faust/streams.py", "faust/agents/", "faust/channels.py", "faust/events.py")),
    ("Faust: consumer thread, conductor, fetcher (faust.transport)", ("faust/transport/",)),
    ("Faust: other (app, sensors, mode services and thread hand-over)", ("faust/", "mode/")),
    ("Faust facade (engine.streams.faust_runtime: event -> record, queue)",
     ("streams/faust_runtime.py",)),
    ("worker loop (engine.streams.worker: outcome JSON, batching)", ("streams/worker.py",)),
    ("asyncio event loop", ("asyncio/",)),
]


def _area(frames: list[str]) -> str:
    for f in reversed(frames):
        for name, needles in _AREAS:
            if any(n in f for n in needles):
                return name
    return "other"


def profile_run(bootstrap: str, label: str, ds: Dataset, batch: int,
                max_seconds: float = 0.0, runtime: str = "aiokafka") -> dict[str, Any]:
    path = WORK / "profiles" / f"{label}.txt"
    res = engine_run(bootstrap, label, ds, batch, 1, profile=path, max_seconds=max_seconds,
                     runtime=runtime)
    if path.exists():
        res["profile"] = summarize_profile(path, res.get("profile_seconds") or 0.0)
        res["profile_file"] = str(path.relative_to(ROOT))
    else:
        res["profile_error"] = f"py-spy wrote no {path}"
    return res


# ------------------------------------------------------------------------ report

def machine() -> dict[str, Any]:
    info = cpuinfo()
    mem_kb = meminfo_kb().get("MemTotal", 0)
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
        java = java.splitlines()[0] if java else "?"
    except OSError:
        java = "?"
    return {
        "nproc": os.cpu_count(), "cpu": cpu_model(info), "ram_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(), "kernel": platform.release(),
        "hypervisor": "KVM" if "hypervisor" in info else "none",
        "kafka": f"Apache Kafka {devbroker.KAFKA_VERSION}, local single-node KRaft "
                 f"(engine.devtools.broker, JVM {' '.join(devbroker.JVM_OPTS)})",
        "java": java,
    }


# Between measurements every topic is deleted and the broker removes the files a second
# later, so that each measurement runs on a broker holding its own topics only. Kept,
# a full run's topics filled this machine's page cache, and once free memory fell
# under about 5 GB the VM's reclaim took a core in system time: batched drains of the
# same code went 174,000-204,000 tx/s until then and 44,000 after, and with the
# topics deleted 156,000-185,000 throughout (RESULTS.md, Streaming, Notes, seventh
# session).
BROKER_PROPERTIES = {"file.delete.delay.ms": "1000"}
CLEAR_WAIT_SECONDS = 3.0


def memory_now() -> dict[str, float]:
    """Free memory and page cache, GB."""
    kb = meminfo_kb()
    return {"free_gb": round(kb["MemFree"] / 2**20, 1),
            "cached_gb": round(kb["Cached"] / 2**20, 1)}


def clear_broker(bootstrap: str) -> None:
    """Delete every topic of the runs so far (BROKER_PROPERTIES)."""
    asyncio.run(delete_topics(bootstrap, prefix=""))
    time.sleep(CLEAR_WAIT_SECONDS)


def engine_version() -> str:
    """``git describe``-like commit of the engine code the workers import."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    head = git("log", "-1", "--format=%h %cd", "--date=format:%Y-%m-%d %H:%M")
    dirty = git("status", "--porcelain", "--", "engine")
    return (head or "unknown commit") + (" + uncommitted changes in engine/" if dirty else "")


# ------------------------------------------------------------------------ main

def main() -> int:
    global WORK
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--no-faust", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-md", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument("--md", action="store_true",
                    help="with --quick: write bench/RESULTS.md anyway (normally only a full "
                         "run does)")
    ap.add_argument("--keep", action="store_true", help="keep the broker's data afterwards")
    ap.add_argument("--tls", action="store_true",
                    help="the broker's listener on SASL_SSL instead of SASL_PLAINTEXT")
    ap.add_argument("--wait-quiet", type=float, default=None, metavar="S",
                    help="first wait up to S seconds until other processes leave the CPUs "
                         "alone (default: 900, 0 with --quick)")
    ap.add_argument("--runtimes", action="store_true",
                    help="only compare the runtimes: batched and one-record input, one "
                         "worker under each runtime (aiokafka, faust), and the canonical "
                         "Faust agent, in one run (the '## Runtimes' section)")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the RESULTS.md section from the last results.json")
    ap.add_argument("--latency-users", type=int, default=None, metavar="N",
                    help="people in the live load's dataset (default: the sizes'; its "
                         "transactions stay the same number, so fewer per person)")
    ap.add_argument("--worker-args", default="", metavar="ARGS",
                    help="more options for every engine worker the run starts, e.g. "
                         "'--commit-interval 0' (an A/B of a worker option in one run)")
    ap.add_argument("--latency-rate", type=float, default=None, metavar="R",
                    help="only the latency runs, at R transactions/s (and the sweep's "
                         "fractions of 2 R), after a one-record warm-up; no drains")
    args = ap.parse_args()
    WORKER_ARGS[:] = shlex.split(args.worker_args)
    if args.render_only:
        results: dict[str, Any] = json.loads((WORK / "results.json").read_text())
        section = render(results)
        print(section)
        if not args.no_md:
            write_section(section, "## Streaming")
        return 0
    mode = "quick" if args.quick else "full"
    if args.quick:
        # a smoke run must not replace the numbers and profiles of a real one
        WORK = WORK.with_name("stream-quick")
        if not args.md:
            args.no_md = True
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 900.0
    sz = dict(RUNTIME_SIZES[mode] if args.runtimes else SIZES[mode])
    if args.latency_users:
        sz["latency_txns"] = sz.get("latency_txns", 2 * sz["single_txns"])
        sz["latency_users"] = args.latency_users
    if args.runtimes:
        WORK = WORK.with_name(WORK.name + "-runtimes")
    os.chdir(ROOT)
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    campaign = WORK / "campaign-live.toml"
    campaign.write_text(LIVE_CAMPAIGN_TOML)
    if not args.no_profile and not PY_SPY.exists():
        log(f"no {PY_SPY}: `.venv/bin/pip install py-spy` for the profiles; skipping them")
        args.no_profile = True
    t_start = time.monotonic()
    results = {"mode": mode, "sizes": sz, "machine": machine(), "profile_rate": PROFILE_RATE,
               "date": time.strftime("%Y-%m-%d %H:%M %Z"), "runs": {}}
    runs = results["runs"]
    results["engine"] = {"start": engine_version()}
    batched = make_dataset("batched", sz["batched_users"], sz["batched_txns"], 11)
    single = make_dataset("single", sz["single_users"], sz["single_txns"], 12)
    live = make_dataset("live", sz["latency_users"],
                        sz.get("latency_txns", 2 * sz["single_txns"]), 13, settle=False)
    # every client of the run, in process or in a worker process, over TLS with --tls
    broker = local_broker.start(WORK / "kafka", tls=args.tls,
                                extra_properties=BROKER_PROPERTIES)
    # The datasets are the 2020 campaign, stamped with business time; with the shipped
    # input retention (P7D) the broker's retention check (30 s after its start, then
    # every 5 min) deleted whatever a worker had not read yet, and the consumer skipped
    # to the new log start: the "one worker stalls" of earlier runs (DECISIONS 95).
    os.environ.setdefault(INPUT_RETENTION_ENV, "P36500D")
    results["security"] = "SASL_SSL" if args.tls else "SASL_PLAINTEXT"
    CpuAccount.broker_pid = broker.pid
    log(f"broker {broker.bootstrap} up in {broker.startup_seconds or 0:.1f} s")
    if args.wait_quiet:
        results["quiet"] = wait_for_quiet(args.wait_quiet)
        log(f"other processes use {results['quiet']['foreign_cores']:.2f} cores; starting")

    def quiet() -> None:
        if args.wait_quiet:
            wait_for_quiet(min(args.wait_quiet, 120.0))

    def attempt(fn: Any) -> dict[str, Any]:
        quiet()
        memory = memory_now()
        probe = cpu_probe_ms()
        res: dict[str, Any] = fn()
        res["memory_before"] = memory
        res["cpu_probe_ms"] = probe
        # after the run, so that the probe's pages are not lent to the run itself, and
        # before the clear frees the run's page cache for it to reuse
        res["fresh_memory_us"] = fresh_memory_cost()
        clear_broker(broker.bootstrap)
        return res

    def measure(key: str, fn: Any) -> None:
        """Run a measurement; once more if other processes took a lot of CPU meanwhile
        (and there is time left), keeping the less disturbed attempt."""
        res = attempt(fn)
        foreign = (res.get("cpu") or {}).get("foreign_cores", 0.0)
        if (foreign > RETRY_FOREIGN_CORES and args.wait_quiet
                and time.monotonic() - t_start < RETRY_BUDGET_SECONDS):
            log(f"{key}: other processes used {foreign:.2f} cores meanwhile; measuring again")
            again = attempt(fn)
            if (again.get("cpu") or {}).get("foreign_cores", 9.0) < foreign:
                res, again = again, res
            res["other_attempt"] = {k: again.get(k) for k in (
                "txn_per_s", "events_per_s", "p50", "p99", "cpu", "error")}
        runs[key] = res

    def measure_drains(key: str, fn: Any) -> None:
        """One worker's drain, measured ``drains`` times; the median one is kept (all
        rates in its ``drains``)."""
        got = []
        for _ in range(sz.get("drains", 1)):
            measure(key, fn)
            got.append(runs[key])
        runs[key] = median_drain(got)

    if args.runtimes:
        return _runtimes(args, results, measure, broker, batched, single, sz, live, campaign)
    try:
        # Discarded: the first run after a code change compiles numba's cache, and the
        # broker's JVM starts cold (docs: bench/RESULTS.md, what the warm-up showed).
        runs["warmup_batched"] = engine_run(broker.bootstrap, "warmup-batched", batched,
                                            sz["batch"], 1)
        runs["warmup_single"] = engine_run(broker.bootstrap, "warmup-single", single, 1, 1)
        clear_broker(broker.bootstrap)
        if args.latency_rate:
            latency_runs(args.latency_rate, measure, broker, live, sz, campaign)
            if not args.no_profile:
                quiet()
                runs["profile_live"] = live_profile(broker.bootstrap, live, args.latency_rate,
                                                    sz, campaign)
            (WORK / "results-latency.json").write_text(json.dumps(results, indent=2,
                                                                  default=str))
            return 0
        measure_drains("batched_1w", lambda: engine_run(broker.bootstrap, "batched-1w",
                                                        batched, sz["batch"], 1))
        measure("batched_2w", lambda: engine_run(broker.bootstrap, "batched-2w", batched,
                                                 sz["batch"], 2))
        measure_drains("single_1w", lambda: engine_run(broker.bootstrap, "single-1w", single,
                                                       1, 1))
        measure("single_2w", lambda: engine_run(broker.bootstrap, "single-2w", single, 1, 2))
        rate = 0.5 * (runs["single_1w"].get("txn_per_s") or 2_000)
        latency_runs(rate, measure, broker, live, sz, campaign)
        if not args.no_faust:
            measure("faust", lambda: faust_run(broker.bootstrap, single, sz["faust_events"]))
        if not args.no_profile:
            quiet()
            runs["profile_batched"] = profile_run(broker.bootstrap, "profile-batched", batched,
                                                  sz["batch"], sz["profile_batched_seconds"])
            clear_broker(broker.bootstrap)
            quiet()
            runs["profile_single"] = profile_run(broker.bootstrap, "profile-single", single, 1)
            clear_broker(broker.bootstrap)
            quiet()
            runs["profile_live"] = live_profile(broker.bootstrap, live, rate, sz, campaign)
    finally:
        broker.stop()
        if not args.keep:
            shutil.rmtree(WORK / "kafka", ignore_errors=True)
    results["total_seconds"] = time.monotonic() - t_start
    _save(args, results, render, "## Streaming")
    log(f"total {results['total_seconds']:.0f} s")
    failed = [k for k, v in runs.items() if isinstance(v, dict) and v.get("error")]
    return 1 if failed else 0


def live_profile(bootstrap: str, live: Dataset, rate: float, sz: dict[str, Any],
                 campaign: Path) -> dict[str, Any]:
    """The live load at ``rate`` with py-spy attached to the worker (a run of its own,
    so that the sampler does not disturb the latency figures)."""
    return latency_run(bootstrap, live, rate, sz["profile_live_seconds"], 0.0, campaign,
                       profile=WORK / "profiles" / "profile-live.txt")


def latency_runs(rate: float, measure: Any, broker: Any, live: Dataset,
                 sz: dict[str, Any], campaign: Path) -> None:
    """The live load at ``rate`` (half the one-record drain's in a full run, or
    --latency-rate's), then at the sweep's fractions of twice it."""
    measure("latency", lambda: latency_run(broker.bootstrap, live, rate,
                                           sz["latency_seconds"], sz["latency_warmup"],
                                           campaign))
    for frac in sz["latency_sweep"]:
        measure(f"latency_{frac}", lambda f=frac: latency_run(
            broker.bootstrap, live, f * 2 * rate, sz["latency_sweep_seconds"],
            sz["latency_warmup"], campaign))


def _save(args: argparse.Namespace, results: dict[str, Any], renderer: Any, head: str) -> None:
    """results.json, the rendered section printed and (unless --no-md) in RESULTS.md."""
    results["engine"]["end"] = engine_version()
    (WORK / "results.json").write_text(json.dumps(results, indent=2, default=str))
    section = renderer(results)
    print()
    print(section)
    if not args.no_md:
        write_section(section, head)
        log(f"wrote the {head[3:]} section of {RESULTS_MD.relative_to(ROOT)}")


def _runtimes(args: argparse.Namespace, results: dict[str, Any], measure: Any, broker: Any,
              batched: Dataset, single: Dataset, sz: dict[str, Any], live: Dataset,
              campaign: Path) -> int:
    """``--runtimes``: both runtimes on the same inputs, each one's p99 at half of its
    own one-record rate, then the canonical agent, then (separate runs, so that the
    sampler does not disturb the figures) a py-spy profile of each runtime draining the
    one-record input."""
    runs = results["runs"]
    results["loadavg_start"] = os.getloadavg()
    try:
        for runtime in ("aiokafka", "faust"):
            measure(f"batched_{runtime}", lambda r=runtime: engine_run(
                broker.bootstrap, f"batched-{r}", batched, sz["batch"], 1, runtime=r))
            measure(f"single_{runtime}", lambda r=runtime: engine_run(
                broker.bootstrap, f"single-{r}", single, 1, 1, runtime=r))
            half = 0.5 * (runs[f"single_{runtime}"].get("txn_per_s") or 1_000)
            measure(f"latency_{runtime}", lambda r=runtime, h=half: latency_run(
                broker.bootstrap, live, h, sz["latency_seconds"], sz["latency_warmup"],
                campaign, runtime=r))
        measure("faust", lambda: faust_run(broker.bootstrap, single, sz["faust_events"]))
        if not args.no_profile:
            for runtime in ("aiokafka", "faust"):
                measure(f"profile_single_{runtime}", lambda r=runtime: profile_run(
                    broker.bootstrap, f"profile-single-{r}", single, 1, runtime=r))
        results["loadavg_end"] = os.getloadavg()
    finally:
        broker.stop()
        shutil.rmtree(WORK / "kafka", ignore_errors=True)
    _save(args, results, render_runtimes, "## Runtimes")
    return 1 if any(isinstance(v, dict) and v.get("error") for v in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
