"""Offline settlement of whole inputs: validation, then one kernel pass.

:func:`decide_offline` is what ``mynapoint settle`` runs; :func:`settle_records`
is the same on decoded JSON values, convenient for tests and doctests::

    >>> from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
    >>> enr = [{"mykey_id": "AB12cd34", "operator_id": "paypay",
    ...         "applied_at": "2020-09-01T10:00:00+09:00"}]
    >>> txn = [{"txn_id": "t1", "operator_id": "paypay", "mykey_id": "AB12cd34",
    ...         "kind": "purchase", "amount": 30000, "occurred_at": "2020-09-02T12:00:00+09:00"},
    ...        {"txn_id": "t2", "operator_id": "paypay", "mykey_id": "AB12cd34",
    ...         "kind": "refund", "amount": 12000, "original_txn_id": "t1",
    ...         "occurred_at": "2020-09-03T12:00:00+09:00"}]
    >>> [(o.reason, o.points, o.cumulative_points)
    ...  for o in settle_records(enr, txn, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY)]
    [(None, 0, 0), (None, 5000, 5000), (None, -500, 4500)]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from engine.rules import kernel
from engine.rules.marshal import new_decided, new_entries, new_people, records_of, terms_of
from engine.rules.model import NO_TIME, Campaign, Reason, Registry
from engine.rules.txn_keys import entry_keys, fingerprints, person_codes, spread_codes
from engine.rules.validate import (
    Validated,
    shape_objects,
    validate_enrollments,
    validate_transactions,
)


@dataclass
class Decisions:
    """Per-record results, each array in its input's record order."""

    enr_reason: np.ndarray   # int8, 0 = accepted
    txn_reason: np.ndarray   # int8, 0 = accepted
    txn_points: np.ndarray   # int64
    txn_cum: np.ndarray      # int64
    enr_seq: np.ndarray      # int64, decision order across both inputs
    txn_seq: np.ndarray
    txn_person: np.ndarray | None = None  # dense person codes (offline only)
    n_people: int = 0
    # the transaction during whose arrival each one was decided (kernel.Decided.trigger)
    txn_trigger: np.ndarray | None = None


def txn_codes(txn: Validated, keys: np.ndarray, parts: int
              ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """The kernel's codes of each transaction's key and of its original's (-1: none),
    their bound, and each one's fingerprint: codes (on ``parts`` threads) of ``keys``
    (:func:`both_keys`), the keys and fingerprints the streaming state stores, so both
    drivers decide the same (DECISIONS 101-102)."""
    n = txn.n
    codes, bound = spread_codes(keys, parts)
    return codes[:n], codes[n:], bound, fingerprints(txn.at, keys[n:])


def both_keys(txn: Validated, pool: Executor) -> np.ndarray:
    """:mod:`engine.rules.txn_keys`' hashes of ``operator_id/txn_id`` of the
    transactions, then of their originals, in one array (no copy joins them); the
    originals' half on ``pool``, queued behind whatever it runs already."""
    keys = np.empty(2 * txn.n, np.uint64)
    origs = pool.submit(entry_keys, txn.operator_id, txn.original_txn_id, keys[txn.n:])
    entry_keys(txn.operator_id, txn.txn_id, keys[:txn.n])
    origs.result()
    return keys


# Threads the transactions are decided on, one share of the people each (DECISIONS 110);
# below SHARED_FROM transactions one call is as quick
SHARES = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count() or 1, 4))  # (the cores this process may use)
SHARED_FROM = 1 << 16


def decide_offline(enr: Validated, txn: Validated, campaign: Campaign,
                   shares: int | None = None) -> Decisions:
    """All enrollments first (they are all known), then transactions in order;
    whatever still waits at the end is decided without what it waited for.

    Kernel calls share the people's arrays: enrollments, then transactions
    (equivalent to one call over both, without concatenating 10^7-row inputs), the
    transactions in ``shares`` calls on as many threads, each for its share of the
    people (default: :data:`SHARES` from :data:`SHARED_FROM` transactions on).
    """
    if shares is None:
        shares = SHARES if txn.n >= SHARED_FROM else 1
    ne = enr.n
    # The hashes release the GIL (numba nogil): the people's codes and the originals'
    # keys on a second thread, the transactions' own keys on this one, about even; the
    # codes of the keys then take both cores
    with ThreadPoolExecutor(max_workers=1) as pool:
        coded = pool.submit(person_codes, enr.mykey_id, txn.mykey_id)
        keys = both_keys(txn, pool)
        (pe, pt), n_people = coded.result()
    tt, to, n_codes, fp = txn_codes(txn, keys, shares)
    del keys  # 160 MB per 10^7 transactions the kernel does not need
    people = new_people(n_people)
    none = np.full(ne, -1, np.int32)
    enr_out = _run(people, enr, kernel.ENROLLMENT, pe, none, none, np.zeros(ne, np.uint32),
                   1, campaign)
    txn_out = _run(people, txn, kernel.TRANSACTION, pt, tt, to, fp, max(n_codes, 1),
                   campaign, shares)
    return Decisions(enr_out.reason, txn_out.reason, txn_out.points, txn_out.cum,
                     enr_out.seq, txn_out.seq + ne, pt, max(n_people, 1), txn_out.trigger)


def _run(people: kernel.People, v: Validated, typ: int, person: np.ndarray,
         txn: np.ndarray, orig: np.ndarray, fp: np.ndarray, n_codes: int,
         campaign: Campaign, shares: int = 1) -> kernel.Decided:
    out = new_decided(v.n)
    recs = records_of(v, typ, person, txn, orig, fp)
    terms = terms_of(campaign, streaming=False)
    # a registry entry per transaction at most: the share's own transactions
    room = (np.zeros(shares, np.int64) if typ != kernel.TRANSACTION else
            np.array([v.n]) if shares == 1 else np.bincount(person % shares, minlength=shares))
    per_record = None if shares == 1 else (np.full(v.n, -1, np.int32),
                                           np.full(v.n, -1, np.int32))

    def call(share: int) -> int:
        # the calls write disjoint rows of the people's arrays, ``out`` and ``per_record``
        _, decided = kernel.decide(people, recs, new_entries(int(room[share])), 0, n_codes,
                                   terms._replace(shares=shares, share=share),
                                   np.full(1, NO_TIME, np.int64), np.zeros(1, np.bool_), out,
                                   per_record)
        return int(decided)

    if shares == 1:
        call(0)
        return out
    with ThreadPoolExecutor(max_workers=shares) as pool:
        counts = np.array(list(pool.map(call, range(shares))), np.int64)
    return out._replace(seq=kernel.merge_shares(out.seq, out.trigger, person, shares, counts))


@dataclass(frozen=True)
class Outcome:
    record_type: str
    index: int
    reason: str | None
    detail: str | None
    points: int
    cumulative_points: int
    capped: bool
    seq: int


def reason_detail(v: Validated, reason: np.ndarray) -> list[str | None]:
    """Human-readable detail for each record: the stateless check's own text, or
    a fixed sentence per stateful reason naming the field it concerns."""
    out: list[str | None] = []
    for i in range(v.n):
        r = int(reason[i])
        if r == 0:
            out.append(None)
        elif v.detail[i] is not None:
            out.append(v.detail[i])
        else:
            out.append(STATEFUL_DETAIL[Reason(r)])
    return out


STATEFUL_DETAIL: dict[Reason, str] = {
    Reason.DUPLICATE: "(operator_id, txn_id) already seen for this mykey_id with equal fields; "
                      "the first one stands",
    Reason.CONFLICTING_DUPLICATE: "(operator_id, txn_id) already seen for this mykey_id with "
                                  "different fields; the first one stands",
    Reason.ALREADY_ENROLLED: "mykey_id already enrolled with another operator or earning kind; "
                             "the choice cannot be changed",
    Reason.ENROLLMENT_CLOSED: "applied_at is at or after the campaign's enroll_end",
    Reason.SELECTION_NOT_OPEN: "JST date of applied_at is before the operator's selection_opens",
    Reason.INVALID_EARN_ON: "earn_on is not one of the operator's earns_on, or is missing while "
                            "the operator earns on both",
    Reason.LATE: "received_at is at or after the campaign's accept_end",
    Reason.OUTSIDE_WINDOW: "occurred_at is outside the campaign window or after the "
                           "operator's last_day (JST)",
    Reason.NOT_ENROLLED: "mykey_id has no accepted enrollment",
    Reason.WRONG_OPERATOR: "mykey_id is enrolled with another operator (operator_id)",
    Reason.KIND_NOT_ELIGIBLE: "kind is not the person's earning kind",
    Reason.BEFORE_APPLICATION: "JST date of occurred_at is before the JST date of applied_at",
    Reason.ORIGINAL_NOT_FOUND: "no charge or purchase with this original_txn_id for this "
                               "mykey_id and operator_id",
    Reason.ORIGINAL_NOT_ELIGIBLE: "the original transaction (original_txn_id) was rejected",
    Reason.REFUND_EXCEEDS_ORIGINAL: "amount plus earlier refunds exceeds the original's amount",
    Reason.PERSON_LIMIT: "mykey_id already has the engine's limit of distinct transactions "
                         "(campaign person_limit); no more are kept for this person",
}


def settle_records(enrollments: Sequence[object], transactions: Sequence[object],
                   campaign: Campaign, registry: Registry,
                   enrollment_sources: Sequence[str | None] | None = None,
                   transaction_sources: Sequence[str | None] | None = None) -> list[Outcome]:
    """Settle decoded JSON values; enrollment outcomes first, then transactions.
    ``*_sources``: the operator each record came from (None: not known), one per
    record, for the OPERATOR_MISMATCH check."""
    es = shape_objects(enrollments, "enrollment")
    ts = shape_objects(transactions, "transaction")
    for shaped, src in ((es, enrollment_sources), (ts, transaction_sources)):
        if src is not None:
            shaped.source_operator = pa.array(list(src), type=pa.string())
    enr = validate_enrollments(es, campaign, registry)
    txn = validate_transactions(ts, campaign, registry)
    d = decide_offline(enr, txn, campaign)
    out: list[Outcome] = []
    for i, det in enumerate(reason_detail(enr, d.enr_reason)):
        r = int(d.enr_reason[i])
        out.append(Outcome("enrollment", i, Reason(r).name if r else None, det, 0, 0, False,
                           int(d.enr_seq[i])))
    for i, det in enumerate(reason_detail(txn, d.txn_reason)):
        r = int(d.txn_reason[i])
        cum = int(d.txn_cum[i]) if r == 0 else 0
        out.append(Outcome("transaction", i, Reason(r).name if r else None, det,
                           int(d.txn_points[i]) if r == 0 else 0, cum,
                           r == 0 and cum == campaign.cap_points, int(d.txn_seq[i])))
    return out
