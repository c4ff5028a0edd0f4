"""A deliberately simple reference implementation of SETTLEMENT_RULES.md (offline).

It is written independently of ``engine.rules`` and favours clarity over speed:
plain dicts and lists, ``datetime`` for timestamps, one record at a time, every
check spelled out in the order of the rules page. Tests compare the engine's
``settle_records`` against :func:`settle_records` here.

Only the plain data classes of ``engine.rules.model`` (Campaign, Registry,
Operator, Kind, Rounding) are used, as *inputs*; none of the engine's logic is.

Offline semantics (same as the engine):

* all enrollments are decided first, in list order, then the transactions in list
  order;
* a refund waits while no record of the same person has used the key
  ``(operator_id, original_txn_id)`` yet. It is decided right after the first
  record with that key arrives (after that record's own decision, if it gets one
  at once; several waiting refunds in their arrival order): if that record is a
  charge/purchase it is the original; if it is a refund, no original can ever
  pass check 5 any more, so the waiting refund is ``ORIGINAL_NOT_FOUND`` at that
  point, exactly as if it had arrived after it. At the end of the input the
  refunds still waiting are decided without it (``ORIGINAL_NOT_FOUND``), in
  arrival order.

Choices where the rules page is silent (the engine is meant to make the same ones):

* Individual Number check: every string anywhere in the record object is
  checked: field values, values nested in lists and objects at any depth, and
  also object keys (a field *named* like a number would otherwise be stored
  with its name). A record that is not a JSON object has no fields, so it is
  ``MALFORMED`` whatever it contains (check 1 is about fields); whoever stores
  rejected input verbatim (dead letters) must therefore still redact it.
* ``null`` for an optional field (``earn_on``, ``received_at``, and
  ``original_txn_id`` on a charge/purchase) is the same as the field missing; a
  ``null`` required field is ``MALFORMED``.
* ``original_txn_id`` on a charge/purchase is optional; when given it must be a
  well-formed transaction id and takes part in the duplicate comparison.
* ``amount``: ``bool`` is not a number (``MALFORMED``), any ``float`` (also
  ``1.0``) is "a number but not an integer" (``INVALID_AMOUNT``).
* Timestamps: RFC 3339 ``date-time`` exactly (``T`` separator, seconds
  required, ``Z``/``z`` or ``±HH:MM`` offset); fractions beyond microseconds are
  truncated.
* Enrollment DUPLICATE vs ALREADY_ENROLLED compares ``(operator_id, effective
  kind)``; effective kind = ``earn_on`` if given, else the operator's only kind;
  with a two-kind operator and no ``earn_on`` there is no kind and the new record
  is never "equal" (``ALREADY_ENROLLED``).
* A transaction registers its ``(person, operator_id, txn_id)`` key on arrival
  once it passed checks 1–4 (a waiting refund counts as seen). A refund whose
  original key was first used by a refund gets ``ORIGINAL_NOT_FOUND`` at once.
* The engine keeps at most ``campaign.person_limit`` distinct transaction keys per
  person: a record that would add one more (it passed check 5) is
  ``PERSON_LIMIT`` (docs/DECISIONS.md).
* ``per_transaction_floor`` floors ``amount × rate / 100`` for each record.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from engine.rules.model import Campaign, Kind, Registry, Rounding

# ---------------------------------------------------------------- outcome


@dataclass(frozen=True)
class RefOutcome:
    record_type: str         # "enrollment" | "transaction"
    index: int               # position in its input list
    reason: str | None       # None = accepted
    detail: str | None
    points: int
    cumulative_points: int
    capped: bool
    seq: int                 # global decision order


# ---------------------------------------------------------------- privacy

_TWELVE_DIGITS = re.compile(r"[0-9]{12}")


def is_individual_number(s: str) -> bool:
    """12 ASCII digits whose last digit is the check digit of the first 11.

    >>> is_individual_number("123456789018")
    True
    >>> is_individual_number("123456789019")
    False
    >>> is_individual_number("１２３４５６７８９０１８")   # full-width digits are not ASCII
    False
    """
    if not _TWELVE_DIGITS.fullmatch(s):
        return False
    first_eleven = s[:11]
    total = 0
    for n in range(1, 12):                    # n-th digit counted from the right
        p = int(first_eleven[11 - n])
        q = n + 1 if n <= 6 else n - 5
        total += p * q
    r = total % 11
    check = 0 if r <= 1 else 11 - r
    return int(s[11]) == check


def contains_individual_number(value: object) -> bool:
    """Any string, at any depth of lists and objects, object keys included."""
    if isinstance(value, str):
        return is_individual_number(value)
    if isinstance(value, dict):
        return any(is_individual_number(k) or contains_individual_number(v)
                   for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(contains_individual_number(v) for v in value)
    return False


# ---------------------------------------------------------------- formats

_MYKEY = re.compile(r"[0-9A-Za-z]{8}")
_TXN_ID = re.compile(r"[0-9A-Za-z._:-]{1,64}")
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_instant(value: object) -> int | None:
    """RFC 3339 timestamp with offset -> microseconds since the epoch, else None.

    >>> parse_instant("2020-08-31T15:00:00Z") == parse_instant("2020-09-01T00:00:00+09:00")
    True
    >>> parse_instant("0000-03-01T00:00:00Z") - parse_instant("0000-02-28T00:00:00Z")
    172800000000
    >>> [parse_instant(s) for s in ("2020-09-01T00:00:00", "2020-09-01 00:00:00Z")]
    [None, None]
    """
    if not isinstance(value, str):
        return None
    m = _RFC3339.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second, frac, z, sign, oh, om = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    if z is not None:
        offset = timedelta(0)
    else:
        if int(oh) > 23 or int(om) > 59:
            return None
        offset = timedelta(hours=int(oh), minutes=int(om))
        if sign == "-":
            offset = -offset
    # RFC 3339 allows year 0000, which datetime cannot hold: the Gregorian calendar
    # repeats every 400 years (146097 days), so compute year 0 as year 400 and shift
    cycles = 1 if int(year) == 0 else 0
    try:
        local = datetime(int(year) + 400 * cycles, int(month), int(day), int(hour),
                         int(minute), int(second), micro)
    except ValueError:       # month 13, Feb 30, hour 24, second 60 ...
        return None
    utc = local - offset      # naive UTC wall time
    us = (utc.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
    return us - cycles * 146097 * 86_400 * 1_000_000


def jst_date(us: int) -> int:
    """JST calendar day number (days since 1970-01-01 in Japan)."""
    return (us + 9 * 3600 * 1_000_000) // (86_400 * 1_000_000)


def _optional(rec: dict, key: str) -> object:
    """Value of an optional field; a missing field and ``null`` are both None."""
    return rec.get(key)


KIND_BY_NAME = {"charge": Kind.CHARGE, "purchase": Kind.PURCHASE, "refund": Kind.REFUND}


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- enrollments


def _parse_enrollment(rec: object) -> dict:
    """Checks 1 and 2; returns the parsed enrollment or raises Rejected."""
    if not isinstance(rec, dict):                 # no fields at all: check 1 cannot fail
        raise Rejected("MALFORMED", "record is not a JSON object")
    if contains_individual_number(rec):
        raise Rejected("PERSONAL_NUMBER_FORBIDDEN", "a field holds an Individual Number")
    mykey = rec.get("mykey_id")
    if not isinstance(mykey, str) or not _MYKEY.fullmatch(mykey):
        raise Rejected("MALFORMED", "mykey_id missing or not 8 characters [0-9A-Za-z]")
    op = rec.get("operator_id")
    if not isinstance(op, str):
        raise Rejected("MALFORMED", "operator_id missing or not a string")
    applied = parse_instant(rec.get("applied_at"))
    if applied is None:
        raise Rejected("MALFORMED", "applied_at missing or not an RFC 3339 timestamp")
    earn_on = _optional(rec, "earn_on")
    if earn_on is not None and earn_on not in ("charge", "purchase"):
        raise Rejected("MALFORMED", "earn_on is not 'charge' or 'purchase'")
    received = _optional(rec, "received_at")
    if received is not None and parse_instant(received) is None:
        raise Rejected("MALFORMED", "received_at is not an RFC 3339 timestamp")
    return {"mykey_id": mykey, "operator_id": op, "applied_at": applied,
            "earn_on": None if earn_on is None else KIND_BY_NAME[earn_on]}


def _check_source(claimed: str, source: str | None) -> None:
    """Check 3 of enrollments, 4 of transactions, first half (rules v2)."""
    if source is not None and claimed != source:
        raise Rejected("OPERATOR_MISMATCH", f"operator_id is not {source!r}")


def _decide_enrollment(rec: object, campaign: Campaign, operators: dict,
                       enrolled: dict, source: str | None = None) -> None:
    """Raises Rejected, or records the accepted enrollment in ``enrolled``."""
    e = _parse_enrollment(rec)
    _check_source(e["operator_id"], source)
    op = operators.get(e["operator_id"])
    if op is None:
        raise Rejected("UNKNOWN_OPERATOR", f"operator_id {e['operator_id']!r} is not known")
    if e["earn_on"] is not None:
        kind = e["earn_on"]
    elif len(op.earns_on) == 1:
        kind = op.earns_on[0]
    else:
        kind = None                           # cannot equal any accepted enrollment
    previous = enrolled.get(e["mykey_id"])
    if previous is not None:
        if previous["operator_id"] == e["operator_id"] and previous["kind"] == kind:
            raise Rejected("DUPLICATE", "mykey_id already enrolled with this operator_id")
        raise Rejected("ALREADY_ENROLLED", "mykey_id already enrolled differently")
    if e["applied_at"] >= campaign.enroll_end:
        raise Rejected("ENROLLMENT_CLOSED", "applied_at is at or after enroll_end")
    if jst_date(e["applied_at"]) < op.selection_opens:
        raise Rejected("SELECTION_NOT_OPEN", "applied_at is before the operator's selection_opens")
    if kind is None:
        raise Rejected("INVALID_EARN_ON", "earn_on missing for an operator earning on both kinds")
    if kind not in op.earns_on:
        raise Rejected("INVALID_EARN_ON", "earn_on is not one of the operator's earns_on")
    enrolled[e["mykey_id"]] = {"operator_id": e["operator_id"], "kind": kind,
                               "applied_day": jst_date(e["applied_at"])}


# ---------------------------------------------------------------- transactions


def _parse_transaction(rec: object, campaign: Campaign) -> dict:
    """Checks 1, 2 and 3; returns the parsed transaction or raises Rejected."""
    if not isinstance(rec, dict):                 # no fields at all: check 1 cannot fail
        raise Rejected("MALFORMED", "record is not a JSON object")
    if contains_individual_number(rec):
        raise Rejected("PERSONAL_NUMBER_FORBIDDEN", "a field holds an Individual Number")
    txn_id = rec.get("txn_id")
    if not isinstance(txn_id, str) or not _TXN_ID.fullmatch(txn_id):
        raise Rejected("MALFORMED", "txn_id missing or not 1-64 characters [0-9A-Za-z._:-]")
    op = rec.get("operator_id")
    if not isinstance(op, str):
        raise Rejected("MALFORMED", "operator_id missing or not a string")
    mykey = rec.get("mykey_id")
    if not isinstance(mykey, str) or not _MYKEY.fullmatch(mykey):
        raise Rejected("MALFORMED", "mykey_id missing or not 8 characters [0-9A-Za-z]")
    kind = rec.get("kind")
    if kind not in ("charge", "purchase", "refund"):
        raise Rejected("MALFORMED", "kind is not 'charge', 'purchase' or 'refund'")
    amount = rec.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise Rejected("MALFORMED", "amount missing or not a number")
    occurred = parse_instant(rec.get("occurred_at"))
    if occurred is None:
        raise Rejected("MALFORMED", "occurred_at missing or not an RFC 3339 timestamp")
    original = _optional(rec, "original_txn_id")
    if kind == "refund" and original is None:
        raise Rejected("MALFORMED", "original_txn_id is required for a refund")
    if original is not None and (not isinstance(original, str)
                                 or not _TXN_ID.fullmatch(original)):
        raise Rejected("MALFORMED", "original_txn_id is not a transaction id")
    received_raw = _optional(rec, "received_at")
    received = None
    if received_raw is not None:
        received = parse_instant(received_raw)
        if received is None:
            raise Rejected("MALFORMED", "received_at is not an RFC 3339 timestamp")
    # check 3
    if isinstance(amount, float) or not 1 <= amount <= campaign.max_amount:
        raise Rejected("INVALID_AMOUNT", f"amount is not an integer in 1..{campaign.max_amount}")
    return {"txn_id": txn_id, "operator_id": op, "mykey_id": mykey,
            "kind": KIND_BY_NAME[kind], "amount": amount, "occurred_at": occurred,
            "original_txn_id": original, "received_at": received}


def _comparable(t: dict) -> tuple:
    """Every known field except received_at (timestamps as instants)."""
    return (t["txn_id"], t["operator_id"], t["mykey_id"], t["kind"], t["amount"],
            t["occurred_at"], t["original_txn_id"])


def _points_of(amount: int, campaign: Campaign) -> int:
    return amount * campaign.rate_percent // 100


class _Person:
    """Everything the rules remember about one person's transactions."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], dict] = {}   # (operator_id, txn_id) -> first record
        self.accepted: list[dict] = []                # accepted transactions, in order

    def total(self, campaign: Campaign) -> int:
        """The person's total, recomputed from scratch from the accepted records."""
        if campaign.rounding == Rounding.CUMULATIVE_FLOOR:
            c = 0
            for t in self.accepted:
                c += -t["amount"] if t["kind"] == Kind.REFUND else t["amount"]
            raw = c * campaign.rate_percent // 100
        else:
            raw = 0
            for t in self.accepted:
                p = _points_of(t["amount"], campaign)
                raw += -p if t["kind"] == Kind.REFUND else p
        return min(campaign.cap_points, raw)


def settle_records(enrollments: Sequence[object], transactions: Sequence[object],
                   campaign: Campaign, registry: Registry,
                   enrollment_sources: Sequence[str | None] | None = None,
                   transaction_sources: Sequence[str | None] | None = None
                   ) -> list[RefOutcome]:
    """``*_sources``: the operator each record came from, None where not known."""
    enr_src = list(enrollment_sources or [None] * len(enrollments))
    txn_src = list(transaction_sources or [None] * len(transactions))
    operators = {op.id: op for op in registry.operators}
    enrolled: dict[str, dict] = {}            # mykey_id -> accepted enrollment
    people: dict[str, _Person] = {}
    decided: dict[tuple[str, int], RefOutcome] = {}
    seq = 0

    def emit(record_type: str, index: int, reason: str | None, detail: str | None,
             points: int = 0, cumulative: int = 0, capped: bool = False) -> None:
        nonlocal seq
        assert (record_type, index) not in decided
        decided[(record_type, index)] = RefOutcome(record_type, index, reason, detail,
                                                   points, cumulative, capped, seq)
        seq += 1

    # ---- enrollments first, in list order
    for i, rec in enumerate(enrollments):
        try:
            _decide_enrollment(rec, campaign, operators, enrolled, enr_src[i])
        except Rejected as r:
            emit("enrollment", i, r.reason, r.detail)
        else:
            emit("enrollment", i, None, None)

    # ---- transactions
    waiting: list[tuple[int, dict]] = []      # refunds waiting for their original, arrival order

    def accept(index: int, t: dict, person: _Person) -> None:
        before = person.total(campaign)
        person.accepted.append(t)
        after = person.total(campaign)
        emit("transaction", index, None, None, after - before, after,
             after == campaign.cap_points)

    def decide_charge(index: int, t: dict, person: _Person) -> None:
        """Checks 6-11 of a charge or purchase (1-5 have passed)."""
        op = operators[t["operator_id"]]
        e = enrolled.get(t["mykey_id"])
        outside = (t["occurred_at"] < campaign.window_start
                   or t["occurred_at"] >= campaign.window_end
                   or (op.last_day is not None and jst_date(t["occurred_at"]) > op.last_day))
        if t["received_at"] is not None and t["received_at"] >= campaign.accept_end:
            reason = "LATE"
        elif outside:
            reason = "OUTSIDE_WINDOW"
        elif e is None:
            reason = "NOT_ENROLLED"
        elif e["operator_id"] != t["operator_id"]:
            reason = "WRONG_OPERATOR"
        elif e["kind"] != t["kind"]:
            reason = "KIND_NOT_ELIGIBLE"
        elif jst_date(t["occurred_at"]) < e["applied_day"]:
            reason = "BEFORE_APPLICATION"
        else:
            reason = None
        t["outcome"] = reason                 # what a refund of it will look at
        if reason is None:
            accept(index, t, person)
        else:
            emit("transaction", index, reason, reason.lower().replace("_", " "))

    def decide_refund(index: int, t: dict, person: _Person) -> None:
        """Checks 7-9 of a refund whose original key has been seen (or never will be)."""
        original = person.seen.get((t["operator_id"], t["original_txn_id"]))
        if original is None or original["kind"] == Kind.REFUND:
            emit("transaction", index, "ORIGINAL_NOT_FOUND", "original_txn_id not found")
            return
        if original["outcome"] is not None:
            emit("transaction", index, "ORIGINAL_NOT_ELIGIBLE", "original_txn_id was rejected")
            return
        already = sum(r["amount"] for r in person.accepted
                      if r["kind"] == Kind.REFUND
                      and r["operator_id"] == t["operator_id"]
                      and r["original_txn_id"] == original["txn_id"])
        if t["amount"] + already > original["amount"]:
            emit("transaction", index, "REFUND_EXCEEDS_ORIGINAL",
                 "amount exceeds what is left of the original")
            return
        accept(index, t, person)

    for i, rec in enumerate(transactions):
        try:
            t = _parse_transaction(rec, campaign)                  # checks 1-3
            _check_source(t["operator_id"], txn_src[i])            # check 4
            if t["operator_id"] not in operators:                 # check 4
                raise Rejected("UNKNOWN_OPERATOR",
                               f"operator_id {t['operator_id']!r} is not known")
        except Rejected as r:
            emit("transaction", i, r.reason, r.detail)
            continue
        person = people.setdefault(t["mykey_id"], _Person())
        key = (t["operator_id"], t["txn_id"])
        first = person.seen.get(key)
        if first is not None:                                     # check 5
            if _comparable(first) == _comparable(t):
                emit("transaction", i, "DUPLICATE", "txn_id already seen")
            else:
                emit("transaction", i, "CONFLICTING_DUPLICATE",
                     "txn_id already seen with different fields")
            continue
        if len(person.seen) >= campaign.person_limit:  # engine limit, after check 5
            emit("transaction", i, "PERSON_LIMIT", "person holds the limit of transactions")
            continue
        person.seen[key] = t                  # the first record with this key stands

        if t["kind"] == Kind.REFUND:
            if t["received_at"] is not None and t["received_at"] >= campaign.accept_end:
                emit("transaction", i, "LATE", "received_at is at or after accept_end")
            elif (t["operator_id"], t["original_txn_id"]) in person.seen:
                decide_refund(i, t, person)
            else:
                waiting.append((i, t))
        else:
            decide_charge(i, t, person)

        # refunds waiting for this key are decided right after it, in arrival order
        still = []
        for j, w in waiting:
            if (w["mykey_id"], w["operator_id"], w["original_txn_id"]) == (
                    t["mykey_id"], t["operator_id"], t["txn_id"]):
                decide_refund(j, w, people[w["mykey_id"]])
            else:
                still.append((j, w))
        waiting = still

    for j, w in waiting:                   # end of input: decided without the original
        decide_refund(j, w, people[w["mykey_id"]])

    out = [decided[("enrollment", i)] for i in range(len(enrollments))]
    out += [decided[("transaction", i)] for i in range(len(transactions))]
    return out
