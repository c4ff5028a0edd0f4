"""Building the kernel's typed arguments: one marshaller for both drivers.

Offline ``settle`` fills :class:`~engine.rules.kernel.Records` straight from a
:class:`~engine.rules.validate.Validated` batch; the streaming shard puts the
records that waited in an earlier batch first, then slices of its batches, with
:func:`fill_records`. Both get their people, registry, terms and outputs here.
"""

from __future__ import annotations

import numpy as np

from engine.rules.kernel import REASONS, Decided, Entries, People, Records, Terms
from engine.rules.model import NO_TIME, Campaign
from engine.rules.validate import Validated


def new_people(n: int) -> People:
    n = max(n, 1)
    return People(np.full(n, -1, np.int32), np.full(n, -1, np.int8), np.zeros(n, np.int32),
                  np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64))


def new_records(n: int) -> Records:
    return Records(
        typ=np.zeros(n, np.int8), reason=np.zeros(n, np.int8),
        person=np.full(n, -1, np.int32), op=np.full(n, -1, np.int32),
        kind=np.zeros(n, np.int8), amount=np.zeros(n, np.int64), at=np.zeros(n, np.int64),
        day=np.zeros(n, np.int32), txn=np.full(n, -1, np.int64),
        orig=np.full(n, -1, np.int64), fp=np.zeros(n, np.uint32),
        received=np.full(n, NO_TIME, np.int64),
        deadline=np.zeros(n, np.int64), too_late=np.zeros(n, np.bool_),
        outside=np.zeros(n, np.bool_), bad_earn_on=np.zeros(n, np.bool_),
        preparked=np.zeros(n, np.int8), lane=np.zeros(n, np.int32))


def fill_records(recs: Records, at: slice, typ: int, v: Validated, idx: np.ndarray,
                 person: np.ndarray) -> None:
    """Copy the validated rows ``idx`` of ``v`` into the slice ``at`` of ``recs``
    (txn codes are the caller's: they depend on its code space)."""
    recs.typ[at] = typ
    recs.person[at] = person
    for name in ("reason", "op", "kind", "amount", "at", "day", "received", "too_late",
                 "outside", "bad_earn_on"):
        getattr(recs, name)[at] = getattr(v, name)[idx]


def records_of(v: Validated, typ: int, person: np.ndarray, txn: np.ndarray,
               orig: np.ndarray, fp: np.ndarray) -> Records:
    """A whole validated input as kernel records, its arrays used as they are (no
    copies of a 10^7-row input). Offline nothing waits past the end of the input,
    so the kernel reads neither received times nor deadlines (``terms_of``): both
    are given the validated received times rather than two new 10^7-row arrays."""
    n = v.n
    return Records(
        typ=np.full(n, typ, np.int8), reason=v.reason, person=np.asarray(person, np.int32),
        op=v.op, kind=v.kind, amount=v.amount, at=v.at, day=v.day, txn=txn, orig=orig, fp=fp,
        received=v.received, deadline=v.received,
        too_late=v.too_late, outside=v.outside, bad_earn_on=v.bad_earn_on,
        preparked=np.zeros(n, np.int8), lane=np.zeros(n, np.int32))


def new_entries(capacity: int) -> Entries:
    c = capacity
    # codes and record positions are int32, as in the kernel's own lists
    return Entries(np.zeros(c, np.int32), np.zeros(c, np.int32), np.zeros(c, np.int32),
                   np.zeros(c, np.int8), np.zeros(c, np.int64), np.zeros(c, np.uint32),
                   np.zeros(c, np.int8), np.zeros(c, np.int64), np.full(c, -1, np.int32))


def new_decided(n: int) -> Decided:
    return Decided(np.zeros(n, np.int8), np.zeros(n, np.int64), np.zeros(n, np.int64),
                   np.zeros(n, np.int64), np.zeros(n, np.int64))


def terms_of(campaign: Campaign, streaming: bool) -> Terms:
    """Streaming parks records for a later enrollment and never ends; offline has
    all enrollments before the first transaction and decides every wait at the end."""
    return Terms(campaign.rate_percent, campaign.cap_points, int(campaign.rounding),
                 streaming, not streaming, campaign.person_limit, REASONS)
