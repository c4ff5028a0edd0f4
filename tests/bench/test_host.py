"""bench.host: the machine facts every benchmark section names."""

from __future__ import annotations

from bench.host import (
    cpu_model,
    cpu_probe_ms,
    fresh_memory_cost,
    meminfo_kb,
    process_cpu_seconds,
    run_probe,
)

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu hypervisor

processor\t: 1
model name\t: another one
"""


def test_the_cpu_model_is_the_first_processors() -> None:
    assert cpu_model(CPUINFO) == "Intel(R) Xeon(R) Processor"
    assert cpu_model("processor\t: 0\n") == "?"


def test_meminfo_is_read_in_kb_by_name() -> None:
    kb = meminfo_kb()
    assert kb["MemTotal"] >= kb["MemFree"] > 0


def test_the_cpu_probe_times_its_loop_in_a_process_of_its_own() -> None:
    small, large = cpu_probe_ms(20_000), cpu_probe_ms(2_000_000)
    assert small is not None and large is not None
    # a hundred times the loop: never as quick, whatever the machine's load
    assert 0 < small < large


def test_the_fresh_memory_probe_gives_a_cost_per_page() -> None:
    cost = fresh_memory_cost(8)
    assert cost is not None and cost > 0


def test_a_probe_that_fails_or_prints_no_number_gives_none() -> None:
    assert run_probe("raise SystemExit(3)") is None
    assert run_probe("print('fast')") is None


def test_a_processs_cpu_is_read_from_proc_and_zero_once_it_is_gone() -> None:
    import os
    import subprocess
    import sys

    busy = subprocess.Popen([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"])
    busy.wait()
    assert process_cpu_seconds(os.getpid()) > 0
    assert process_cpu_seconds(busy.pid) == 0.0  # reaped: no /proc entry
