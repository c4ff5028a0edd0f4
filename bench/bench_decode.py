"""Validation-path benchmark: offline read + validate of N JSON Lines transactions, and
the Kafka decoder on one-record messages, JSON Lines chunks and Arrow IPC messages
(1,000 records each), for this tree and, with ``--base REV``, for the ``engine/`` of
another git revision in a separate process — to show what a change to the decoding
and validation path costs on well-formed input.

    .venv/bin/python bench/bench_decode.py [--n 300000] [--base main]

CPU seconds (``time.process_time``, best of 5): the machine is shared, and CPU time
is steadier than wall time under other people's load. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import namedtuple
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "_work" / "decode"
MESSAGES = 50_000


def measure(n: int) -> dict[str, float]:
    import pyarrow as pa

    from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
    from engine.io.readers import read_records
    from engine.rules.validate import validate_transactions
    from engine.streams.decode import decode_messages
    from engine.tools.generate import generate_tables, write_jsonl

    WORK.mkdir(parents=True, exist_ok=True)
    _, txn = generate_tables(max(n // 15, 1), n, seed=3)
    path = WORK / f"transactions-{n}.jsonl"
    if not path.exists():
        write_jsonl(txn, path)
    msg = namedtuple("msg", "topic partition offset timestamp key value headers")
    lines = path.read_bytes().split(b"\n")[:MESSAGES]
    one = [msg("t", 0, i, 1_600_000_000_000, None, x, None) for i, x in enumerate(lines)]
    chunks = [msg("t", 0, i, None, None, b"\n".join(lines[j:j + 1000]),
                  [("mynapoint-format", b"jsonl")])
              for i, j in enumerate(range(0, len(lines), 1000))]

    def ipc(t: pa.Table) -> bytes:
        buf = io.BytesIO()
        with pa.ipc.new_stream(buf, t.schema) as w:
            w.write_table(t)
        return buf.getvalue()

    table = txn.slice(0, MESSAGES)
    arrows = [msg("t", 0, i, None, None, ipc(table.slice(j, 1000)),
                  [("mynapoint-format", b"arrow-ipc")])
              for i, j in enumerate(range(0, MESSAGES, 1000))]

    def best(f: object) -> float:
        f()  # type: ignore[operator]  # warm-up (numba compilation, caches)
        times = []
        for _ in range(5):
            t0 = time.process_time()
            f()  # type: ignore[operator]
            times.append(time.process_time() - t0)
        return min(times)

    def decode(msgs: Sequence[object]) -> object:
        return decode_messages(msgs, "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20)

    return {
        f"offline read + validate, {n:,} JSON Lines transactions": best(
            lambda: validate_transactions(read_records(path, "transaction")[0],
                                          DEFAULT_CAMPAIGN, DEFAULT_REGISTRY)),
        f"decode {MESSAGES:,} one-record messages": best(lambda: decode(one)),
        f"decode {MESSAGES:,} records in JSON Lines chunks": best(lambda: decode(chunks)),
        f"decode {MESSAGES:,} records in Arrow IPC messages": best(lambda: decode(arrows)),
    }


def run_in(tree: Path, n: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--n", str(n), "--measure"],
                         env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree,
                         capture_output=True, text=True, check=True).stdout
    return {k: float(v) for k, v in (line.rsplit("\t", 1) for line in out.splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300_000)
    ap.add_argument("--base", help="git revision whose engine/ to measure as well")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        for k, v in measure(args.n).items():
            print(f"{k}\t{v}")
        return
    ours = run_in(ROOT, args.n)
    base: dict[str, float] = {}
    if args.base:
        with tempfile.TemporaryDirectory() as d:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.base, "engine"],
                                     capture_output=True, check=True).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(d, filter="data")
            base = run_in(Path(d), args.n)
    head = "| measurement | CPU s |" + (f" CPU s at `{args.base}` |" if base else "")
    print(head)
    print("|---|---:|" + ("---:|" if base else ""))
    for k, v in ours.items():
        print(f"| {k} | {v:.3f} |" + (f" {base[k]:.3f} |" if base else ""))


if __name__ == "__main__":
    main()
