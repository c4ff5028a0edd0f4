"""What the benchmark scripts say of the machine they ran on: read from /proc, and
measured by small probes in processes of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cpuinfo() -> str:
    return Path("/proc/cpuinfo").read_text()


def cpu_model(info: str | None = None) -> str:
    """The first CPU's model name (``info``: /proc/cpuinfo's text, read when omitted)."""
    for line in (cpuinfo() if info is None else info).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def meminfo_kb() -> dict[str, int]:
    """/proc/meminfo's lines, kB by name."""
    kb = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        kb[name] = int(rest.split()[0])
    return kb


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (0 once it is gone)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def run_probe(code: str, *args: object) -> float | None:
    """The number a probe prints, run in a new process (None if it fails)."""
    try:
        out = subprocess.run([sys.executable, "-c", code, *map(str, args)],
                             capture_output=True, text=True, timeout=120, check=True)
        return round(float(out.stdout.strip()), 2)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


# A touch of fresh memory from a new process, µs per 4 KB page. On a VM whose host
# takes freed guest memory back within seconds (virtio balloon's free page reporting),
# a first touch costs tens of µs a page instead of under one, and everything that grows
# during a run (the worker, the broker's page cache) pays it (bench/RESULTS.md,
# Streaming, Notes of 2026-12-05, fourth session).
FRESH_MEMORY_MB = 64
_FRESH_MEMORY_PROBE = """
import sys, time
import numpy as np
n = int(sys.argv[1]) << 20
t = time.perf_counter()
np.ones(n, np.uint8)
print((time.perf_counter() - t) / (n / 4096) * 1e6)
"""


def fresh_memory_cost(mb: int = FRESH_MEMORY_MB) -> float | None:
    """µs per 4 KB page for a new process to touch ``mb`` MB of fresh memory."""
    return run_probe(_FRESH_MEMORY_PROBE, mb)


# How much of a core the machine gives one thread now: a fixed pure-Python loop (the
# interpreter is what the worker mostly runs), ms, the median of three passes. The same
# code drained at rates a third or more apart on one machine within hours, and a state
# bench took 7.2 s and then 12.9 s (bench/RESULTS.md, Notes, tenth session): a run's
# figures are read against the probe taken with them.
CPU_PROBE_LOOPS = 2_000_000
_CPU_PROBE = """
import statistics, sys, time
n = int(sys.argv[1])
def once():
    t = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i & 255
    return time.perf_counter() - t
print(statistics.median(once() for _ in range(3)) * 1e3)
"""


def cpu_probe_ms(loops: int = CPU_PROBE_LOOPS) -> float | None:
    """ms one pass of a fixed Python loop of ``loops`` steps takes a new process now
    (median of three passes)."""
    return run_probe(_CPU_PROBE, loops)
