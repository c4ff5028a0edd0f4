"""How offline settlement lays its hashing and coding out over threads (DECISIONS 135)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.rules import settlement
from engine.rules.txn_keys import entry_keys
from engine.rules.validate import shape_table, validate_enrollments, validate_transactions
from engine.tools.generate import generate_tables, parquet_view
from tests.builders import calling_threads


def _validated(users: int, transactions: int) -> tuple[Any, Any]:
    enr, txn = generate_tables(users, transactions, seed=7)
    return (validate_enrollments(shape_table(parquet_view(enr), "enrollment"),
                                 DEFAULT_CAMPAIGN, DEFAULT_REGISTRY),
            validate_transactions(shape_table(parquet_view(txn), "transaction"),
                                  DEFAULT_CAMPAIGN, DEFAULT_REGISTRY))


def test_both_keys_are_the_entry_keys_of_transactions_then_originals() -> None:
    _, txn = _validated(50, 500)
    with ThreadPoolExecutor(max_workers=1) as pool:
        keys = settlement.both_keys(txn, pool)
    assert np.array_equal(keys[:txn.n], entry_keys(txn.operator_id, txn.txn_id))
    assert np.array_equal(keys[txn.n:], entry_keys(txn.operator_id, txn.original_txn_id))


def test_the_two_halves_are_hashed_on_two_threads_beside_the_peoples_codes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    enr, txn = _validated(50, 500)
    keys = calling_threads(monkeypatch, settlement, "entry_keys")
    people = calling_threads(monkeypatch, settlement, "person_codes")
    settlement.decide_offline(enr, txn, DEFAULT_CAMPAIGN)
    assert len(set(keys)) == 2
    assert threading.get_ident() in keys
    assert set(people) <= set(keys) - {threading.get_ident()}
