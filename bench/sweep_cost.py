"""The columnar state's changelog (DECISIONS 138), costed before it is built.

A model, not a measurement of the engine: a partition holds ``--people`` people of
``--bytes`` bytes of state each. Every commit writes one changelog record holding the
people it touched, whole, and the next slice of all people in key order (the sweep),
of ``max(c * touch bytes, --min-slice)`` bytes. A generation is one pass of the sweep;
a restore from scratch reads from the first record of the newest complete generation
to the end. For each touch rate and pace it prints the changelog bytes written per
touched byte, and what a restore would read (bytes as a multiple of the state, and
records), median and largest over every commit after the first complete generation.

    .venv/bin/python bench/sweep_cost.py [--people 1000000] [--bytes 281]

Cited by DECISIONS 141; it starts no broker and writes no file.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Cost:
    write_factor: float     # changelog bytes written per byte of touched state
    read_median: float      # restore bytes / state bytes
    read_max: float
    records_median: int     # changelog records a restore reads
    records_max: int


def cost(people: int, size: int, touched: int, pace: float, min_slice: int,
         commits: int) -> Cost:
    """The sweep of DECISIONS 138 for ``commits`` commits of ``touched`` people each."""
    touch = touched * size
    per_slice = max(1, int(max(pace * touch, min_slice)) // size)
    record = touch + per_slice * size
    # the sweep passes everyone in ceil(people / per_slice) commits: generation g is
    # commits g * length to (g + 1) * length - 1, complete after the last of them
    length = -(-people // per_slice)
    at = np.arange(commits)
    complete = (at + 1) // length - 1  # the newest complete generation after commit ``at``
    ok = complete >= 0
    if not ok.any():
        raise ValueError(f"no generation completes in {commits} commits")
    start = complete[ok] * length  # its first commit
    records = at[ok] - start + 1
    read = records * record / (people * size)
    return Cost(record / touch, float(np.median(read)), float(read.max()),
                int(np.median(records)), int(records.max()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=1_000_000)
    ap.add_argument("--bytes", type=int, default=281, help="state per person (RESULTS)")
    ap.add_argument("--commits", type=int, default=40_000)
    a = ap.parse_args()
    print("| people touched a commit | sweep pace c | smallest slice | bytes written per "
          "touched byte | restore reads (× the state) | records a restore reads |")
    print("|---:|---:|---:|---:|---:|---:|")
    for touched in (1, 10, 100, 1_250):
        for pace in (1.0, 2.0):
            for min_slice in (64 << 10, 256 << 10):
                c = cost(a.people, a.bytes, touched, pace, min_slice, a.commits)
                print(f"| {touched:,} | {pace:g} | {min_slice >> 10} KiB | "
                      f"{c.write_factor:,.1f} | {c.read_median:.2f}-{c.read_max:.2f} | "
                      f"{c.records_median:,}-{c.records_max:,} |")


if __name__ == "__main__":
    main()
