"""What the benchmark scripts say of the machine they ran on, read from /proc."""

from __future__ import annotations

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
