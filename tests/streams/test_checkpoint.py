"""Fault injection at the named points of a batch's checkpoint (engine.streams.checkpoint).
The order itself (outcomes → state → commit → local) is proven against the broker in
tests/streams/test_faults.py, which SIGKILLs the worker at each of these points."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaConnectionError

from engine.streams.checkpoint import STAGES, Faults


def test_an_injected_broker_fault_fires_once_at_its_exact_stage_and_batch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYNAPOINT_FAIL_AT", "state:3")
    faults = Faults()
    for batch in range(6):
        for stage in STAGES:
            if (stage, batch) == ("state", 3):
                with pytest.raises(KafkaConnectionError, match="after state of batch 3"):
                    faults.point(stage, batch)
            else:
                faults.point(stage, batch)
    faults.point("state", 3)  # the retried batch goes through: a fault, not a loop


def test_no_fault_is_injected_without_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MYNAPOINT_CRASH_AT", "MYNAPOINT_STALL_AT", "MYNAPOINT_FAIL_AT"):
        monkeypatch.delenv(name, raising=False)
    faults = Faults()
    for stage in STAGES:
        faults.point(stage, 0)
    assert faults.injected == set()
