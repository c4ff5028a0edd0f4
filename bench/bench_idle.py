"""What an idle worker costs: CPU of a worker that has its partitions and no input,
and of the broker answering its fetches, with the idle fetch wait (DECISIONS 134)
and, as the baseline in the same run, with the live wait kept while idle
(`--idle-fetch-wait-ms 20`, the worker before it). Each variant runs ``--rounds``
times, alternating, every time on fresh topics.

    .venv/bin/python bench/bench_idle.py [--seconds 30] [--rounds 2]

Writes the "## An idle worker" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import local_broker  # noqa: E402
from bench.bench_settle import machine, write_section  # noqa: E402
from bench.host import process_cpu_seconds as cpu_seconds  # noqa: E402
from engine.devtools import broker as devbroker  # noqa: E402
from engine.devtools.worker_process import WorkerProcess  # noqa: E402
from engine.streams.worker import IDLE_FETCH_WAIT_MS, LIVE_FETCH_WAIT_MS  # noqa: E402

WORK = ROOT / "bench" / "_work" / "idle"
PARTITIONS = 8
SETTLE_SECONDS = 5.0  # after assignment: restore, first looks, the switch to idle


def measure(bootstrap: str, broker_pid: int, wait_ms: int, name: str,
            seconds: float) -> tuple[float, float]:
    """Cores used by an idle worker and by the broker over ``seconds``."""
    log = WORK / f"{name}.log"
    w = WorkerProcess(bootstrap, name, PARTITIONS, state_dir=WORK / "state", log_path=log,
                      extra=["--idle-fetch-wait-ms", str(wait_ms)])
    w.start(wait=240)
    try:
        w.wait_for("assigned partitions", 120)
        time.sleep(SETTLE_SECONDS)
        assert w.proc is not None
        pid = w.proc.pid
        t0, w0, b0 = time.monotonic(), cpu_seconds(pid), cpu_seconds(broker_pid)
        time.sleep(seconds)
        t1, w1, b1 = time.monotonic(), cpu_seconds(pid), cpu_seconds(broker_pid)
    finally:
        w.stop()
    return (w1 - w0) / (t1 - t0), (b1 - b0) / (t1 - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    broker = local_broker.start(WORK / "kafka", wait=120)
    variants = {IDLE_FETCH_WAIT_MS: "idle wait (default)",
                LIVE_FETCH_WAIT_MS: "baseline: live wait kept"}
    runs: dict[int, list[tuple[float, float]]] = {ms: [] for ms in variants}
    try:
        for r in range(args.rounds):
            for ms in variants:
                got = measure(broker.bootstrap, broker.pid, ms, f"idle{r}w{ms}",
                              args.seconds)
                runs[ms].append(got)
                print(f"round {r + 1}, {ms} ms: worker {got[0]:.3f}, broker {got[1]:.3f} "
                      f"cores", flush=True)
    finally:
        broker.stop()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    for ms, label in variants.items():
        wk = [x[0] for x in runs[ms]]
        bk = [x[1] for x in runs[ms]]
        rows.append(f"| {label} | {ms} ms | {statistics.median(wk):.3f} "
                    f"({', '.join(f'{x:.3f}' for x in wk)}) | {statistics.median(bk):.3f} "
                    f"({', '.join(f'{x:.3f}' for x in bk)}) |")
    idle_w = statistics.median(x[0] for x in runs[IDLE_FETCH_WAIT_MS])
    idle_b = statistics.median(x[1] for x in runs[IDLE_FETCH_WAIT_MS])
    live_w = statistics.median(x[0] for x in runs[LIVE_FETCH_WAIT_MS])
    live_b = statistics.median(x[1] for x in runs[LIVE_FETCH_WAIT_MS])
    text = f"""## An idle worker

Run of {when}: `bench/bench_idle.py --seconds {args.seconds:g} --rounds {args.rounds}`.
Machine: {machine()}; Kafka {devbroker.KAFKA_VERSION} single local broker.

One worker process (`mynapoint worker --partitions {PARTITIONS}`: 26 input topics,
so {26 * PARTITIONS} topic-partitions in every fetch) with all its partitions and nothing
to read, from {SETTLE_SECONDS:g} s after its assignment, for {args.seconds:g} s; cores
are CPU seconds per second of `/proc/<pid>/stat` (user + system). The variants
alternate, each on fresh topics; median (each run).

| worker | fetch wait when idle | worker cores | broker cores |
|---|---:|---:|---:|
{chr(10).join(rows)}

- The idle wait saves {live_w - idle_w:.3f} of a core in the worker and {live_b - idle_b:.3f} in the
  broker ({live_w + live_b:.3f} → {idle_w + idle_b:.3f}).
- The first record after an idle spell is not held by the long wait: the broker
  answers a waiting fetch on the first byte (`tests/streams/test_worker_fetch_wait.py`
  on the real broker: a record appended right after a 2 s fetch went out is fetched
  within a second).
"""
    write_section(text, "## An idle worker")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
