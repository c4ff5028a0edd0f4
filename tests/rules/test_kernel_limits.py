"""The kernel's bound on one call: its scratch lists hold positions as int32."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import DEFAULT_CAMPAIGN
from engine.rules import kernel
from engine.rules.marshal import new_decided, new_entries, new_people, new_records, terms_of
from engine.rules.model import NO_TIME


def _call(n_codes: int) -> None:
    kernel.decide(new_people(1), new_records(1), new_entries(1), 0, n_codes,
                  terms_of(DEFAULT_CAMPAIGN, streaming=False), np.full(1, NO_TIME, np.int64),
                  np.zeros(1, np.bool_), new_decided(1))


def test_a_call_beyond_int32_positions_is_refused_before_it_allocates() -> None:
    _call(1)  # the same call within the bound runs
    with pytest.raises(ValueError, match="2\\*\\*31"):
        _call(kernel.INDEX_LIMIT)
