"""``mynapoint settle`` gives memory back as it frees it (DECISIONS 109): the peak of a
10 M-transaction run depends on it staying under 3 GB."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Row-group-sized columns made and dropped on a second thread, as settle's readers do:
# the resident size held, then what is still resident once they are freed (MB).
PROBE = """
import sys, threading, time
import numpy as np, pyarrow as pa
if sys.argv[1] == "release":
    from engine.tools.settle import release_memory_eagerly
    release_memory_eagerly()
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
base, held = rss(), []
def work():
    big = np.ones(64 << 20, np.uint8); del big  # a large block freed first
    cols = [np.ones(8 << 20, np.uint8) for _ in range(40)]
    strs = [pa.array(np.arange(1 << 20)).cast(pa.string()) for _ in range(10)]
    held.append(rss() - base)
    del cols, strs
t = threading.Thread(target=work); t.start(); t.join()
# Arrow's jemalloc pool gives pages back after about a second, on its next allocation
time.sleep(1.2); pa.array(np.arange(10)).cast(pa.string())
print(held[0], rss() - base)
"""


def _held_and_kept(mode: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def test_memory_freed_by_a_reader_thread_goes_back_to_the_system() -> None:
    held, kept = _held_and_kept("release")
    assert held > 300 and kept < 0.1 * held, (held, kept)
