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
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import results_md  # noqa: E402
from bench.host import cpu_model, cpu_probe_ms, meminfo_kb  # noqa: E402

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


def timed(cmd: list[str], fresh: Path | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of a command run under /usr/bin/time -v; ``fresh``
    (a directory the command writes) is removed first, untimed: settle replacing the
    previous run's 1.3 GB of outputs paid their deletion, 0.85 s on this machine's
    ext4 mounted with ``discard``, which is the file system's work, not settlement's."""
    if fresh is not None:
        shutil.rmtree(fresh, ignore_errors=True)
    # nor does a run pay for the writeback of the one before (a 100 M run writes 13 GB
    # of grants and more of spill; runs back to back differed by a fifth without this)
    os.sync()
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    assert m is not None, p.stderr
    rss_kb = int(m[1])
    return wall, rss_kb / 2**20


def machine() -> str:
    """The machine line of a section, with the CPU probe taken as it is written (after
    the runs): the same code ran a third or more apart on this machine within hours."""
    cpu = cpu_model()
    mem = meminfo_kb().get("MemTotal", 0) / 2**20
    probe = cpu_probe_ms()
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Linux "
            f"{platform.release()}, Python {platform.python_version()}"
            + (f"; CPU probe after the runs {probe:.0f} ms a pass of bench.host's fixed "
               f"Python loop" if probe is not None else ""))


def write_section(text: str, head: str = "## Offline settle") -> None:
    """Replace (or append) the section of bench/RESULTS.md headed ``head``, in place."""
    results_md.write_section(text, head, RESULTS)


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slice-rows", type=int, default=None,
                    help="also time settle --slice-rows N (slices spilled to disk)")
    ap.add_argument("--base-seconds", type=float, default=None,
                    help="the 10 M run's settle time, for the 100 M target (≤ 12× it)")
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
    out = data / "out"
    settle = [py, "-m", "engine.cli", "settle", "--enrollments",
              str(data / "enrollments.parquet"), "--transactions", str(txn),
              "--out", str(out), "--quiet"]
    variants = {"default": settle}
    if a.slice_rows:
        variants[f"--slice-rows {a.slice_rows:,}"] = [*settle, "--slice-rows", str(a.slice_rows)]
    base = [py, "-c", BASELINE, str(txn)]
    if a.repeat > 1:
        timed(settle, out)  # warm the page cache and numba's on-disk cache
    rows: list[dict[str, tuple[float, float]]] = []
    loads = [load()]
    for i in range(a.repeat):
        row = {"baseline": timed(base)}
        for name, cmd in variants.items():
            row[name] = timed(cmd, out)
        rows.append(row)
        loads.append(load())
        print(f"run {i + 1}: " + " | ".join(f"{k} {w:.2f} s {r:.2f} GiB"
                                             for k, (w, r) in row.items()), flush=True)
    med = {k: statistics.median(r[k][0] for r in rows) for k in rows[0]}
    peak = {k: max(r[k][1] for r in rows) for k in rows[0]}
    bw = med["baseline"]
    label = {k: f"`mynapoint settle` {k}" for k in variants}
    label["baseline"] = "baseline: pyarrow read + `group_by(mykey_id).sum(amount)`"
    table = "\n".join(
        f"| {label[k]} | {med[k]:.2f} s | {med[k] / bw:.1f}× "
        f"| {peak[k]:.2f} GiB ({peak[k] * 1.0737:.2f} GB) |" for k in med)
    options = "".join(f" --{name} {value}" for name, value in (
        ("slice-rows", a.slice_rows), ("base-seconds", a.base_seconds)) if value)
    warm = ", after one warm-up run" if a.repeat > 1 else ""
    ten = a.n == 10_000_000
    verdict = []
    for k in variants:
        sw, sr = med[k], peak[k] * 1.0737
        if ten:
            verdict.append(f"- {k}: wall ≤ 10 s {'met' if sw <= 10 else 'missed'} ({sw:.1f} s); "
                           f"≤ 3× baseline {'met' if sw / bw <= 3 else 'missed'} "
                           f"({sw / bw:.1f}×); peak ≤ 3 GB {'met' if sr <= 3 else 'missed'} "
                           f"({sr:.2f} GB)")
        else:
            ratio = f"{sw / a.base_seconds:.1f}× the 10 M run ({a.base_seconds:.1f} s)" \
                if a.base_seconds else "no 10 M time given"
            verdict.append(f"- {k}: peak ≤ 6 GB {'met' if sr <= 6 else 'missed'} ({sr:.2f} GB); "
                           f"time {ratio}")
    head = "## Offline settle" if ten else f"## Offline settle, {a.n // 1_000_000} M transactions"
    text = f"""{head}

Measured {time.strftime('%Y-%m-%d %H:%M')} UTC on {machine()}, engine commit
{subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                cwd=ROOT).stdout.strip()}. Load average (1/5/15 min) before and after each
run: {"; ".join(loads)} (2 cores shared with other work: the load is part of the result).

Command: `.venv/bin/python bench/bench_settle.py --n {a.n} --repeat {a.repeat}{options}`
({a.n:,} clean transactions, {max(a.n // 10, 100):,} people, Parquet in row groups of
2^20 rows; each command in its own process under `/usr/bin/time -v`{warm}, settle
writing into a directory emptied before it, earlier runs' writes flushed to disk
(untimed);
medians of {a.repeat} run(s), peak RSS is the maximum).

| | wall (median) | × baseline | peak RSS |
|---|---|---|---|
{table}

Runs: {"; ".join(", ".join(f"{k} {w:.2f} s" for k, (w, _) in r.items()) for r in rows)}.

Targets:
{chr(10).join(verdict)}
"""
    print(text)
    if not a.no_write:
        write_section(text, head)
    return 0


if __name__ == "__main__":
    sys.exit(main())
