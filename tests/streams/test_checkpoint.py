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


def test_a_plus_point_fires_at_the_first_batch_from_there_that_produced_outcomes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYNAPOINT_FAIL_AT", "outputs:3+")
    faults = Faults()
    for batch in range(3):  # before the 3rd: outcomes or not, no fault
        faults.point("outputs", batch, produced=True)
    for batch in (3, 4):  # no outcomes: not yet
        faults.point("outputs", batch, produced=False)
        faults.point("state", batch, produced=True)  # another stage
    with pytest.raises(KafkaConnectionError, match="after outputs of batch 5"):
        faults.point("outputs", 5, produced=True)
    faults.point("outputs", 6, produced=True)  # once
