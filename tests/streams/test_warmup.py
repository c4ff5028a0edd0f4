"""The worker's warm-up: made-up records decided on a throwaway partition before the
consumer joins its group (engine.streams.warmup), and never a reason to stop."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka.topics import Topics
from engine.streams import warmup


def test_the_made_up_records_reach_grants_and_a_wait(caplog: pytest.LogCaptureFixture) -> None:
    """The grants path (JSON and record batches) only runs where something is granted,
    and the wait path where somebody is not enrolled: the made-up records take both."""
    caplog.set_level(logging.DEBUG, logger="mynapoint.worker")
    warmup.warm_up(DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, Topics("warm"), 8)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("compiled code warmed up in") for m in messages), messages
    decided = [m for m in messages if m.startswith("warm-up outcomes")]
    # the purchase and the refund of the enrolled person are granted; those of people
    # not enrolled wait (decided only by final())
    assert decided == ["warm-up outcomes: 2 grants, 0 rejections"]


def test_a_failed_warm_up_is_logged_not_raised(caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object, **__: object) -> None:
        raise ValueError("no such thing")

    monkeypatch.setattr(warmup, "decode_messages", broken)
    warmup.warm_up(DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, Topics("warm"), 8)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "warming up failed (ValueError: no such thing): the first batch compiles instead"]


def test_the_take_over_code_is_compiled_too() -> None:
    """The state table's and the restore's compiled functions (a take-over's code,
    which a decide alone does not run) are compiled, or loaded from numba's cache, by
    the warm-up: checked in a fresh interpreter, where nothing else called them."""
    code = """
import sys
from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka import fetch
from engine.kafka.topics import Topics
from engine.streams import value_table, warmup
names = ["_put", "_get", "_gather", "_gather_rows", "_evacuate", "_drain", "_prefixed"]
funcs = {n: getattr(value_table, n) for n in names} | {"_keyed": fetch._keyed}
before = sorted(n for n, f in funcs.items() if f.signatures)
warmup.warm_up(DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, Topics("warm"), 8)
print(before, sorted(n for n, f in funcs.items() if not f.signatures))
"""
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    assert got.stdout.split("\n")[-2] == "[] []", got.stdout + got.stderr
