"""Offline settle benchmark: end-to-end ``mynapoint settle`` on N clean Parquet
transactions vs. a pyarrow-only baseline (read the same file, sum amounts per
mykey_id), measured in the same run, each in its own process under
``/usr/bin/time -v`` (wall time and peak RSS).

    .venv/bin/python bench/bench_settle.py [--n 10000000] [--repeat 3]

Writes the "## Offline settle" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import results_md  # noqa: E402

WORK = ROOT / "bench" / "_work"
RESULTS = ROOT / "bench" / "RESULTS.md"

BASELINE = """
import sys, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1], columns=["mykey_id", "amount"])
r = t.group_by("mykey_id").aggregate([("amount", "sum")])
print(r.num_rows)
"""


PIECE = 10_000_000  # rows the generator holds in memory at once


def generate_in_pieces(n: int, data: Path) -> None:
    """``mynapoint generate --clean`` beyond memory: pieces of 10 M transactions (and
    1 M people each, seeds 2020, 2021, ...) appended to one Parquet file per record
    type, a row group of 2^20 rows at a time, so row groups can be streamed back."""
    import pyarrow.parquet as pq

    from engine.tools.generate import generate_tables, parquet_view

    data.mkdir(parents=True, exist_ok=True)
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        for i, start in enumerate(range(0, n, PIECE)):
            m = min(PIECE, n - start)
            enr, txn = generate_tables(max(m // 10, 100), m, seed=2020 + i, clean=True)
            for name, t in (("enrollments", enr), ("transactions", txn)):
                t = parquet_view(t)
                if name not in writers:
                    writers[name] = pq.ParquetWriter(str(data / f"{name}.parquet.part"),
                                                     t.schema, compression="snappy")
                writers[name].write_table(t, row_group_size=1 << 20)
            print(f"  {start + m:,} transactions", flush=True)
    finally:
        for w in writers.values():
            w.close()
    for name in writers:
        (data / f"{name}.parquet.part").rename(data / f"{name}.parquet")


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of a command run under /usr/bin/time -v."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)[1])
    return wall, rss_kb / 2**20


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0) / 2**20
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Linux "
            f"{platform.release()}, Python {platform.python_version()}")


def write_section(text: str, head: str = "## Offline settle") -> None:
    """Replace (or append) the section of bench/RESULTS.md headed ``head``, in place."""
    results_md.write_section(text, head, RESULTS)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    py = sys.executable
    data = WORK / f"settle-{a.n}"
    txn = data / "transactions.parquet"
    if not txn.exists():
        print(f"generating {a.n:,} clean transactions ...", flush=True)
        if a.n <= PIECE:
            subprocess.run([py, "-m", "engine.cli", "generate", "--users",
                            str(max(a.n // 10, 100)), "--transactions", str(a.n), "--clean",
                            "--format", "parquet", "--out", str(data)], check=True, cwd=ROOT)
        else:
            generate_in_pieces(a.n, data)
    settle = [py, "-m", "engine.cli", "settle", "--enrollments",
              str(data / "enrollments.parquet"), "--transactions", str(txn),
              "--out", str(data / "out"), "--quiet"]
    base = [py, "-c", BASELINE, str(txn)]
    timed(settle)  # warm the page cache and numba's on-disk cache
    rows = []
    for i in range(a.repeat):
        bw, br = timed(base)
        sw, sr = timed(settle)
        rows.append((bw, br, sw, sr))
        print(f"run {i + 1}: baseline {bw:.2f} s {br:.2f} GiB | settle {sw:.2f} s {sr:.2f} GiB",
              flush=True)
    bw = statistics.median(r[0] for r in rows)
    sw = statistics.median(r[2] for r in rows)
    br = max(r[1] for r in rows)
    sr = max(r[3] for r in rows)
    ratio = sw / bw
    verdict = [
        f"- wall ≤ 10 s: {'met' if sw <= 10 else f'missed by {sw - 10:.1f} s'} ({sw:.1f} s)",
        f"- ≤ 3× baseline: {'met' if ratio <= 3 else f'missed ({ratio:.1f}×)'}",
        f"- peak memory ≤ 3 GB: {'met' if sr * 1.0737 <= 3 else 'missed'} "
        f"({sr * 1.0737:.2f} GB)",
    ]
    text = f"""## Offline settle

Measured {time.strftime('%Y-%m-%d')} on {machine()}.

Command: `.venv/bin/python bench/bench_settle.py --n {a.n} --repeat {a.repeat}`
(generates {a.n:,} clean transactions and {max(a.n // 10, 100):,} enrollments as
Parquet, then times each command in its own process under `/usr/bin/time -v`,
after one warm-up run; medians of {a.repeat} runs, peak RSS is the maximum).

| | wall (median) | peak RSS |
|---|---|---|
| baseline: pyarrow read + `group_by(mykey_id).sum(amount)` | {bw:.2f} s | {br:.2f} GiB |
| `mynapoint settle` (read, decide, write all outputs) | {sw:.2f} s | {sr:.2f} GiB |
| ratio | {ratio:.1f}× | |

Runs: {'; '.join(f'{r[0]:.2f}/{r[2]:.2f} s' for r in rows)} (baseline/settle).

Targets (N = 10 million):
{chr(10).join(verdict)}
"""
    print(text)
    if not a.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
