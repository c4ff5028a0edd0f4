"""Finance ledger benchmark, against DuckDB alone, measured in the same run:

- load: ``mynapoint ledger load --from OUT`` of the settle outputs of N
  transactions into a fresh ledger vs. DuckDB alone ingesting the same Parquet
  files (``CREATE TABLE ... AS SELECT * FROM read_parquet(...)``, fresh file);
- statements over that ledger (``mynapoint ledger statements``);
- reconcile of a claim of ``--claim-rows`` rows (``mynapoint ledger reconcile``).

Every command runs in its own process under ``/usr/bin/time -v`` (wall time,
interpreter start and imports included, and CPU time: user + system, all threads);
medians of ``--repeat`` runs. The 1-minute load average is sampled around every run
and reported: on a shared machine wall times are only comparable within a run.

    .venv/bin/python bench/bench_ledger.py [--n 10000000] [--claim-rows 1000000] [--repeat 3]

Writes the "## Finance ledger" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_settle import WORK, machine, write_section  # noqa: E402

LOADS: list[float] = []  # 1-minute load averages seen before and after each run


def timed(cmd: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of a command run under /usr/bin/time -v."""
    LOADS.append(os.getloadavg()[0])
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    LOADS.append(os.getloadavg()[0])
    if p.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")

    def seconds(kind: str) -> float:
        m = re.search(rf"{kind} time \(seconds\): ([0-9.]+)", p.stderr)
        assert m is not None, p.stderr
        return float(m[1])

    cpu = sum(seconds(k) for k in ("User", "System"))
    return wall, cpu, p.stdout

DUCKDB_ALONE = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
for name in ("grants", "rejections"):
    src = f"{sys.argv[2]}/{name}.parquet"
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{src}')")
con.close()
"""

# A claim from the ledger: the non-zero grants of the operator whose count is nearest to
# the size asked for, with every 1000th row's points changed, every 1000th row repeated,
# every 500th row left out, and rows of unknown transactions to reach the size.
MAKE_CLAIM = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
con.execute("SET enable_progress_bar = false")
n = int(sys.argv[3])
op = con.execute(f"SELECT operator_id FROM grants WHERE points <> 0 GROUP BY 1 "
                 f"ORDER BY abs(count(*) - {n}), 1 LIMIT 1").fetchone()[0]
con.execute(f'''
CREATE TEMP TABLE claim AS
WITH g AS (SELECT operator_id, txn_id, mykey_id, points, row_number() OVER () AS i
           FROM grants WHERE operator_id = '{op}' AND points <> 0 LIMIT {n})
SELECT operator_id, txn_id, mykey_id,
       CASE WHEN i % 1000 = 7 THEN points + 1 ELSE points END AS points FROM g
WHERE i % 500 <> 3
UNION ALL SELECT operator_id, txn_id, mykey_id, points FROM g WHERE i % 1000 = 1''')
short = max(n - con.execute("SELECT count(*) FROM claim").fetchone()[0], 0)
con.execute(f'''COPY (SELECT * FROM claim UNION ALL
                SELECT '{op}', 'bench-' || x, 'AB12cd34', 100 FROM range({short}) t(x))
                TO '{sys.argv[2]}' (HEADER)''')
print(op)
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--claim-rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    py = sys.executable
    data = WORK / f"settle-{a.n}"
    out = data / "out"
    if not (out / "grants.parquet").exists():
        print(f"generating and settling {a.n:,} clean transactions ...", flush=True)
        subprocess.run([py, "-m", "engine.cli", "generate", "--users", str(max(a.n // 10, 100)),
                        "--transactions", str(a.n), "--clean", "--format", "parquet",
                        "--out", str(data)], check=True, cwd=ROOT)
        subprocess.run([py, "-m", "engine.cli", "settle", "--enrollments",
                        str(data / "enrollments.parquet"), "--transactions",
                        str(data / "transactions.parquet"), "--out", str(out), "--quiet"],
                       check=True, cwd=ROOT)
    work = WORK / "ledger"
    work.mkdir(parents=True, exist_ok=True)
    led, alone = work / "ledger.duckdb", work / "alone.duckdb"

    def fresh(*paths: Path) -> None:
        for p in paths:
            for f in (p, Path(f"{p}.wal")):
                f.unlink(missing_ok=True)

    ledger_cmd = [py, "-m", "engine.cli", "ledger"]
    load = [*ledger_cmd, "load", "--ledger", str(led), "--from", str(out)]
    base = [py, "-c", DUCKDB_ALONE, str(alone), str(out)]
    fresh(led, alone)
    timed(base)  # warm the page cache
    loads = []
    for i in range(a.repeat):
        fresh(led, alone)
        bw, bc, _ = timed(base)
        lw, lc, _ = timed(load)
        loads.append((bw, bc, lw, lc))
        print(f"load run {i + 1}: DuckDB alone {bw:.2f} s ({bc:.1f} CPU s) | ledger load "
              f"{lw:.2f} s ({lc:.1f} CPU s)", flush=True)
    import duckdb
    with duckdb.connect(str(led), read_only=True) as con:
        row = con.execute(
            "SELECT (SELECT count(*) FROM grants), (SELECT count(*) FROM rejections), "
            "(SELECT count(*) FROM grants WHERE points <> 0)").fetchone()
    assert row is not None
    grants, rejections, nonzero = row
    statements = [*ledger_cmd, "statements", "--ledger", str(led), "--out", str(work / "st")]
    timed(statements)
    st_runs = [timed(statements) for _ in range(a.repeat)]
    print("statements:", ", ".join(f"{w:.2f} s" for w, _, _ in st_runs), flush=True)
    claim = work / "claim.csv"
    op = subprocess.run([py, "-c", MAKE_CLAIM, str(led), str(claim), str(a.claim_rows)],
                        check=True, capture_output=True, text=True).stdout.split()[-1]
    claim_rows = sum(1 for _ in claim.open("rb")) - 1
    reconcile = [*ledger_cmd, "reconcile", "--ledger", str(led), "--operator", op,
                 "--claim", str(claim), "--out", str(work / "rc")]
    # the claim has differences by construction: exit 1
    rc_runs = [timed(reconcile, ok=(1,)) for _ in range(a.repeat)]
    print("reconcile:", ", ".join(f"{w:.2f} s" for w, _, _ in rc_runs), flush=True)
    summary = rc_runs[-1][2].splitlines()

    bw, bc, lw, lc = (statistics.median(r[i] for r in loads) for i in range(4))
    sw = statistics.median(w for w, _, _ in st_runs)
    sc = statistics.median(c for _, c, _ in st_runs)
    rw = statistics.median(w for w, _, _ in rc_runs)
    rcpu = statistics.median(c for _, c, _ in rc_runs)

    def runs(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    load_runs = runs([r[2] for r in loads])
    base_runs = runs([r[0] for r in loads])
    st_text = runs([w for w, _, _ in st_runs])
    rc_text = runs([r[0] for r in rc_runs])
    rc_label = f"`mynapoint ledger reconcile`, {claim_rows:,}-row claim of `{op}`"
    verdict = [
        f"- load ≤ 2× DuckDB alone: {'met' if lw <= 2 * bw else 'missed'} ({lw / bw:.2f}× "
        f"wall; {lc / bc:.2f}× CPU)",
        f"- statements ≤ 2 s: {'met' if sw <= 2 else 'missed'} ({sw:.2f} s)",
        f"- reconcile of a {claim_rows:,}-row claim ≤ 5 s: {'met' if rw <= 5 else 'missed'} "
        f"({rw:.2f} s)",
    ]
    text = f"""## Finance ledger

Measured {time.strftime('%Y-%m-%d')} on {machine()}.

Command: `.venv/bin/python bench/bench_ledger.py --n {a.n} --claim-rows {a.claim_rows}
--repeat {a.repeat}` (the settle outputs of {a.n:,} clean generated transactions:
{grants:,} grants, {nonzero:,} of them non-zero, and {rejections:,} rejections; every
command in its own process, interpreter start and imports included, medians of
{a.repeat} runs after a warm-up). 1-minute load average during the runs:
{min(LOADS):.1f}–{max(LOADS):.1f} (median {statistics.median(LOADS):.1f}) on {os.cpu_count()} cores.

| | wall (median) | CPU s (median) | wall of each run |
|---|---|---|---|
| baseline: DuckDB alone, `CREATE TABLE AS` from both files | {bw:.2f} s | {bc:.1f} | {base_runs} |
| `mynapoint ledger load --from` (fresh ledger) | {lw:.2f} s | {lc:.1f} | {load_runs} |
| `mynapoint ledger statements` | {sw:.2f} s | {sc:.1f} | {st_text} |
| {rc_label} | {rw:.2f} s | {rcpu:.1f} | {rc_text} |

Reconcile summary: {'; '.join(summary)}.

Targets:
{chr(10).join(verdict)}
"""
    print(text)
    if not a.no_write:
        write_section(text, "## Finance ledger")
    return 0


if __name__ == "__main__":
    sys.exit(main())
