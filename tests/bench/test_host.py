"""bench.host: the machine facts every benchmark section names."""

from __future__ import annotations

from bench.host import cpu_model, meminfo_kb

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
