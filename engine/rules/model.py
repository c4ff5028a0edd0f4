"""Plain data the rules work on: campaign terms, the operator registry, outcomes.

Everything here is immutable and free of I/O; loading these from TOML is
``engine.config``'s job. Instants are integer microseconds since the Unix epoch
(UTC), calendar days are integer day numbers of the JST calendar
(``(us + 9 h) // 1 day``), money is integer yen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np

US_PER_SECOND = 1_000_000
US_PER_DAY = 86_400 * US_PER_SECOND
JST_OFFSET_US = 9 * 3600 * US_PER_SECOND
NO_TIME = -(2**63)  # "no received_at"; sorts before every real instant


_Instants = TypeVar("_Instants", int, "np.ndarray")


def jst_day(us: _Instants) -> _Instants:
    """JST calendar day number of an instant, or of each in an integer array: the one
    JST-day formula.

    >>> from datetime import date
    >>> # 2020-08-31T15:00:00Z is already 2020-09-01 in Japan
    >>> jst_day(1598886000 * US_PER_SECOND) == (date(2020, 9, 1) - date(1970, 1, 1)).days
    True
    """
    return (us + JST_OFFSET_US) // US_PER_DAY


def epoch_us(dt: datetime) -> int:
    """Microseconds since the epoch of an aware datetime, exactly (no float).

    >>> from datetime import timedelta, timezone
    >>> jst = timezone(timedelta(hours=9))
    >>> epoch_us(datetime(2020, 9, 1, tzinfo=jst)) == Campaign().window_start
    True
    """
    if dt.tzinfo is None:
        raise ValueError("a naive datetime has no defined instant")
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_SECOND + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Kind(IntEnum):
    CHARGE = 0
    PURCHASE = 1
    REFUND = 2


KIND_NAMES = ("charge", "purchase", "refund")
OPERATOR_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # an operator id (SETTLEMENT_RULES.md)
NO_KIND = -1


class Reason(IntEnum):
    """Rejection reasons. 0 means "no rejection"; the numbering is internal only,
    outputs always carry the name."""

    OK = 0
    PERSONAL_NUMBER_FORBIDDEN = 1
    MALFORMED = 2
    INVALID_AMOUNT = 3
    UNKNOWN_OPERATOR = 4
    DUPLICATE = 5
    CONFLICTING_DUPLICATE = 6
    ALREADY_ENROLLED = 7
    ENROLLMENT_CLOSED = 8
    SELECTION_NOT_OPEN = 9
    INVALID_EARN_ON = 10
    LATE = 11
    OUTSIDE_WINDOW = 12
    NOT_ENROLLED = 13
    WRONG_OPERATOR = 14
    KIND_NOT_ELIGIBLE = 15
    BEFORE_APPLICATION = 16
    ORIGINAL_NOT_FOUND = 17
    ORIGINAL_NOT_ELIGIBLE = 18
    REFUND_EXCEEDS_ORIGINAL = 19
    PERSON_LIMIT = 20
    # appended, not inserted: the codes are stored in state (order of checks is below)
    OPERATOR_MISMATCH = 21


# Output names by reason code: the one table, derived from the enum.
REASON_NAMES: tuple[str, ...] = tuple(r.name for r in Reason)

ENROLLMENT_REASONS = (
    Reason.PERSONAL_NUMBER_FORBIDDEN, Reason.MALFORMED, Reason.OPERATOR_MISMATCH,
    Reason.UNKNOWN_OPERATOR, Reason.DUPLICATE, Reason.ALREADY_ENROLLED, Reason.ENROLLMENT_CLOSED,
    Reason.SELECTION_NOT_OPEN, Reason.INVALID_EARN_ON,
)
TRANSACTION_REASONS = (
    Reason.PERSONAL_NUMBER_FORBIDDEN, Reason.MALFORMED, Reason.INVALID_AMOUNT,
    Reason.OPERATOR_MISMATCH, Reason.UNKNOWN_OPERATOR, Reason.DUPLICATE,
    Reason.CONFLICTING_DUPLICATE, Reason.PERSON_LIMIT, Reason.LATE,
    Reason.OUTSIDE_WINDOW, Reason.NOT_ENROLLED, Reason.WRONG_OPERATOR,
    Reason.KIND_NOT_ELIGIBLE, Reason.BEFORE_APPLICATION, Reason.ORIGINAL_NOT_FOUND,
    Reason.ORIGINAL_NOT_ELIGIBLE, Reason.REFUND_EXCEEDS_ORIGINAL,
)

# Reasons that protect the engine rather than apply a campaign rule: no realistic
# campaign data produces them, so they are tested on purpose-built inputs.
ENGINE_LIMIT_REASONS = (Reason.PERSON_LIMIT,)
# Reasons about where a record came from, not what it holds: input that names no
# source operator (a plain file, generated data) never produces them.
SOURCE_REASONS = (Reason.OPERATOR_MISMATCH,)


class Rounding(IntEnum):
    CUMULATIVE_FLOOR = 0
    PER_TRANSACTION_FLOOR = 1


ROUNDING_NAMES = {"cumulative_floor": Rounding.CUMULATIVE_FLOOR,
                  "per_transaction_floor": Rounding.PER_TRANSACTION_FLOOR}


# FINANCE_RULES.md: payout month = spending month + this many months
PAYOUT_MONTHS = {"same_month": 0, "next_month": 1, "month_after_next": 2}


# the largest max_amount: the streaming state stores amounts in 32 bits (DECISIONS 102)
MAX_AMOUNT_LIMIT = 2**32 - 1


@dataclass(frozen=True)
class Campaign:
    id: str = "mynapoint-2020"
    window_start: int = 1598886000 * US_PER_SECOND  # 2020-09-01T00:00:00+09:00
    window_end: int = 1633014000 * US_PER_SECOND    # 2021-10-01T00:00:00+09:00
    enroll_end: int = 1633014000 * US_PER_SECOND    # 2021-10-01T00:00:00+09:00
    accept_end: int = 1635692400 * US_PER_SECOND    # 2021-11-01T00:00:00+09:00
    rate_percent: int = 25
    cap_points: int = 5000
    rounding: Rounding = Rounding.CUMULATIVE_FLOOR
    max_amount: int = 10_000_000
    park_timeout: int = 24 * 3600 * US_PER_SECOND
    # FINANCE_RULES.md: what the budget was sized for; None when a campaign sets none
    budget_people: int | None = 40_000_000
    budget_points: int | None = 200_000_000_000
    # Distinct transactions kept per person (engine limit, not a campaign term): a
    # person's state must fit one changelog message. See docs/DECISIONS.md.
    person_limit: int = 3_000

    def __post_init__(self) -> None:
        if not 1 <= self.max_amount <= MAX_AMOUNT_LIMIT:
            raise ValueError(f"max_amount must be in 1..{MAX_AMOUNT_LIMIT}")


@dataclass(frozen=True)
class Operator:
    id: str
    name: str
    earns_on: tuple[Kind, ...]
    selection_opens: int          # JST day number
    last_day: int | None = None   # JST day number, inclusive
    payout: str = "same_month"    # FINANCE_RULES.md: a key of PAYOUT_MONTHS


@dataclass(frozen=True)
class Registry:
    operators: tuple[Operator, ...]
    index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.index.update({op.id: i for i, op in enumerate(self.operators)})

    def code(self, operator_id: str) -> int:
        """Dense operator code, -1 when unknown."""
        return self.index.get(operator_id, -1)
