"""The stateful decision kernel: checks 4–11 of the rules page and the points.

One compiled pass over a batch of records in arrival order, with every piece
of per-person state in flat arrays: enrollment, the cumulative amount ``c``
and the per-transaction floor sum ``r``, a registry of first-seen transaction
keys (for duplicates and refunds), and the records that wait. Offline
``settle`` calls it once for a whole file; the streaming worker calls it per
partition batch with the state it loaded for the people in the batch. Only
integer arithmetic touches money.

Waiting records are kept on two kinds of singly linked lists (per person for
"no enrollment yet", per original key for "original not seen yet") and, in
streaming, on a min-heap by deadline so expiry costs O(log n) per record.
"""

from __future__ import annotations

from collections import namedtuple
from typing import NamedTuple

import numba
import numpy as np

from engine.rules.model import NO_TIME, Reason

# record types
ENROLLMENT = 0
TRANSACTION = 1
# registry entry status
PENDING, ACCEPTED, REJECTED = 0, 1, 2
# out_reason sentinel for a record still waiting when the batch ends
PARKED = -1
NO_TIME_K = NO_TIME  # a plain global for numba

KIND_REFUND = 2
INDEX_LIMIT = 2**31  # the scratch lists of a call are int32

# The reason codes the kernel decides, as a runtime value built from the enum: numba
# would freeze module constants into its on-disk cache, which does not notice a change
# of engine.rules.model.
Reasons = namedtuple("Reasons", [r.name for r in Reason])  # type: ignore[misc]
REASONS = Reasons(*(int(r) for r in Reason))


class People(NamedTuple):
    """Per person (in/out): enrollment, ``c``, ``r`` and the registry size ``n``."""

    op: np.ndarray      # int32, operator code or -1 while not enrolled
    kind: np.ndarray    # int8, earning kind
    day: np.ndarray     # int32, JST day of application
    c: np.ndarray       # int64, accepted amount
    r: np.ndarray       # int64, per-transaction floor sum
    n: np.ndarray       # int64, registry entries (bounded by person_limit)


class Records(NamedTuple):
    """Per record, in arrival order. The three flags are the stateless time checks
    validation computed: for a transaction LATE / OUTSIDE_WINDOW, for an enrollment
    ENROLLMENT_CLOSED / SELECTION_NOT_OPEN / INVALID_EARN_ON."""

    typ: np.ndarray        # int8, ENROLLMENT or TRANSACTION
    reason: np.ndarray     # int8, stateless rejection (0 = passed checks 1-4)
    person: np.ndarray     # int32, row in People
    op: np.ndarray         # int32
    kind: np.ndarray       # int8
    amount: np.ndarray     # int64
    at: np.ndarray         # int64, occurred_at / applied_at (µs)
    day: np.ndarray        # int32, its JST day
    txn: np.ndarray        # txn_id code (-1 none): int32 offline, int64 streaming
    orig: np.ndarray       # original_txn_id code (-1 none), as txn
    fp: np.ndarray         # uint32, txn_keys.fingerprints of occurred_at and original
    received: np.ndarray   # int64, received_at (µs) or NO_TIME
    deadline: np.ndarray   # int64, end of its wait (streaming)
    too_late: np.ndarray   # bool: LATE / ENROLLMENT_CLOSED
    outside: np.ndarray    # bool: OUTSIDE_WINDOW / SELECTION_NOT_OPEN
    bad_earn_on: np.ndarray  # bool: INVALID_EARN_ON
    preparked: np.ndarray  # int8, 1 = waited in an earlier batch
    lane: np.ndarray       # int32, the input it arrived on: its stream time's index


class Entries(NamedTuple):
    """Registry of first-seen (person, operator, txn_id) keys (in/out); capacity
    at least the entries already there plus the batch's records."""

    person: np.ndarray    # int32
    op: np.ndarray        # int32
    txn: np.ndarray       # int32, txn_id code
    kind: np.ndarray      # int8
    amount: np.ndarray    # int64
    fp: np.ndarray        # uint32, Records.fp: with kind and amount, what a duplicate repeats
    status: np.ndarray    # int8, PENDING / ACCEPTED / REJECTED
    refunded: np.ndarray  # int64
    rec: np.ndarray       # int32, the batch record that created or waits as it (-1)


class Terms(NamedTuple):
    """The campaign's terms and the mode of the call."""

    rate: int
    cap: int
    rounding: int
    park_for_enrollment: bool
    final: bool
    person_limit: int
    reasons: tuple  # type: ignore[type-arg]  # REASONS
    # The call decides only the people with ``person % shares == share``: offline, one
    # call per thread over the same records (people decide apart, DECISIONS 110)
    shares: int = 1
    share: int = 0
    # Streaming calls may decide several partitions at once (DECISIONS 130): the
    # lanes (``stream_times``) are then one run of this many per partition, and a
    # partition's stream time is the largest of its own run. 0: one partition.
    lanes_per_part: int = 0


class Decided(NamedTuple):
    """Per record (out): 0 accepted, a reason code, or PARKED; points; cumulative
    points; 0-based decision order within the call (-1 while parked); and the arrival
    that decided it: the index of the record during whose arrival it was decided
    (``n``: stream time passing after the last one), or ``n + j`` for record ``j``
    decided at the end of the input (-1 while parked). Offline, where nothing expires,
    a person's records are decided only during arrivals of that person's records, so
    calls over disjoint sets of people merge into one call's order by (trigger in the
    whole input, seq): what lets offline settle decide slices of people apart
    (docs/DECISIONS.md)."""

    reason: np.ndarray
    points: np.ndarray
    cum: np.ndarray
    seq: np.ndarray
    trigger: np.ndarray


@numba.njit(cache=True, nogil=True)
def person_total(c: int, r: int, rate: int, cap: int, rounding: int) -> int:
    """The person's points total from the accepted amounts (rules page, Points).

    >>> person_total(20_003, 0, 25, 5000, 0), person_total(9, 6, 25, 5000, 1)
    (5000, 6)
    """
    t = (c * rate) // 100 if rounding == 0 else r
    return t if t < cap else cap


@numba.njit(cache=True, nogil=True)
def _find(head, e_next, e_person, e_op, txn, person, op):  # type: ignore[no-untyped-def]
    if txn < 0:
        return -1
    e = head[txn]
    while e >= 0:
        if e_person[e] == person and e_op[e] == op:
            return e
        e = e_next[e]
    return -1


@numba.njit(cache=True, nogil=True)
def _heap_push(hk, hv, size, key, val):  # type: ignore[no-untyped-def]
    i = size[0]
    size[0] += 1
    hk[i] = key
    hv[i] = val
    while i > 0:
        p = (i - 1) // 2
        if hk[p] < hk[i] or (hk[p] == hk[i] and hv[p] < hv[i]):
            break
        hk[p], hk[i] = hk[i], hk[p]
        hv[p], hv[i] = hv[i], hv[p]
        i = p


@numba.njit(cache=True, nogil=True)
def _lane_push(hk, hv, hsize, cap, ln, key, val):  # type: ignore[no-untyped-def]
    _heap_push(hk[ln * cap:(ln + 1) * cap], hv[ln * cap:(ln + 1) * cap], hsize[ln:ln + 1],
               key, val)


@numba.njit(cache=True, nogil=True)
def _expire_at(hk, hv, hsize, cap, ln, deadline, j, final):  # type: ignore[no-untyped-def]
    """Put waiting record ``j`` on its lane's expiry heap. Not when deciding the end of
    the input (``final``: nothing expires) nor when the record has no deadline: without
    ``received_at`` there is no instant for stream time to pass (DECISIONS 118), so it
    waits for what it needs or for the end of the input, as offline."""
    if not final and deadline != NO_TIME_K:
        _lane_push(hk, hv, hsize, cap, ln, deadline, j)


@numba.njit(cache=True, nogil=True)
def _heap_pop(hk, hv, size):  # type: ignore[no-untyped-def]
    v = hv[0]
    size[0] -= 1
    n = size[0]
    hk[0] = hk[n]
    hv[0] = hv[n]
    i = 0
    while True:
        lc, rc, m = 2 * i + 1, 2 * i + 2, i
        if lc < n and (hk[lc] < hk[m] or (hk[lc] == hk[m] and hv[lc] < hv[m])):
            m = lc
        if rc < n and (hk[rc] < hk[m] or (hk[rc] == hk[m] and hv[rc] < hv[m])):
            m = rc
        if m == i:
            break
        hk[m], hk[i] = hk[i], hk[m]
        hv[m], hv[i] = hv[i], hv[m]
        i = m
    return v


@numba.njit(cache=True, nogil=True)
def _append(head, tail, nxt, key, j):  # type: ignore[no-untyped-def]
    """Append record ``j`` to the waiting list ``key`` (FIFO)."""
    if tail[key] >= 0:
        nxt[tail[key]] = j
    else:
        head[key] = j
    tail[key] = j


@numba.njit(cache=True, nogil=True)
def _release_key(t, p, o, k_head, k_tail, nxt, out_reason, person, op, work, w,
                 nwork):  # type: ignore[no-untyped-def]
    """Move the records waiting on key ``t`` of person ``p`` and operator ``o`` to
    the work list right after the current position ``w``, in arrival order."""
    r = k_head[t]
    prev = -1
    k = 0
    while r >= 0:
        rn = nxt[r]
        if out_reason[r] == PARKED and person[r] == p and op[r] == o:
            if prev >= 0:
                nxt[prev] = rn
            else:
                k_head[t] = rn
            if k_tail[t] == r:
                k_tail[t] = prev
            nxt[r] = -1
            for q in range(nwork - 1, w + k - 1, -1):
                work[q + 1] = work[q]
            work[w + k] = r
            nwork += 1
            k += 1
        else:
            prev = r
        r = rn
    return nwork


@numba.njit(cache=True, nogil=True)
def decide(people, recs, reg, n_entries, n_codes, terms, stream_times, follows, out,  # type: ignore[no-untyped-def]
           per_record=None):
    """Decide a batch (:class:`Records`) against ``people`` and the registry ``reg``
    holding ``n_entries``; ``n_codes`` bounds the txn_id codes. Fills ``out``
    (:class:`Decided`); returns ``(n_entries, n_decided)``.

    ``stream_times`` (in/out, int64): the stream time of each input a record may
    arrive on (``recs.lane``): a waiting record's wait ends when the stream time of
    its own input passes its deadline (rules, "Order and waiting"), so one
    operator's input running ahead does not end another's waits. ``follows`` (bool per
    lane): the input has nothing unread; after the batch, its waits end by the
    partition's stream time (the largest of its partition's lanes, all of them unless
    ``terms.lanes_per_part``), as nothing of its own can end them now.

    ``per_record``: the scratch lists indexed by record, ``(rec_entry, nxt)``, int32,
    -1 filled; calls deciding shares of the same records (:class:`Terms`) share them,
    as each touches only its own records' rows. Omitted, the call makes its own.
    """
    p_op, p_kind, p_day, p_c, p_r, p_n = people
    (typ, reason, person, op, kind, amount, _at, day, txn, orig, fp, ts, deadline,
     too_late, outside, bad_earn_on, preparked, lane) = recs
    e_person, e_op, e_txn, e_kind, e_amount, e_fp, e_status, e_refunded, e_rec = reg
    (rate, cap, rounding, park_for_enrollment, final, person_limit, rc, shares, share,
     lanes_per_part) = terms
    out_reason, out_points, out_cum, out_seq, out_trigger = out
    n = len(typ)
    cap_e = len(e_person)
    # the lists below hold record and entry positions as int32: half the scratch of
    # int64 (10 M records: 0.3 GB less at the peak of offline settle, DECISIONS 109)
    if max(n, cap_e, n_codes) >= INDEX_LIMIT:
        raise ValueError("a kernel call holds fewer than 2**31 records, entries and codes")
    if shares > 1 and not final:
        # another share's records would move the stream time this share's waits end by
        raise ValueError("people are decided in shares only at the end of the input")
    head = np.full(n_codes, -1, dtype=np.int32)
    e_next = np.full(cap_e, -1, dtype=np.int32)
    for e in range(n_entries):
        t = e_txn[e]
        e_next[e] = head[t]
        head[t] = e
    if per_record is None:
        rec_entry = np.full(n, -1, dtype=np.int32)
        nxt = np.full(n, -1, dtype=np.int32)
    else:
        rec_entry, nxt = per_record
    for e in range(n_entries):
        if e_rec[e] >= 0:
            rec_entry[e_rec[e]] = e
    # waiting lists: by original key (txn code) and by person; FIFO via head/tail/next
    k_head = np.full(n_codes, -1, dtype=np.int32)
    k_tail = np.full(n_codes, -1, dtype=np.int32)
    np_ = len(p_op)
    w_head = np.full(np_, -1, dtype=np.int32)
    w_tail = np.full(np_, -1, dtype=np.int32)
    # one min-heap of deadlines per input (lane), lane l at [l * hcap, (l + 1) * hcap)
    n_lanes = len(stream_times)
    group = lanes_per_part if lanes_per_part > 0 else n_lanes
    if n_lanes % group:
        raise ValueError("the lanes are whole runs of lanes_per_part")
    hcap = 1 if final else max(n, 1)
    # not zeroed: a heap reads no slot at or past its size. Zeroing lanes x records
    # slots (a few MB a live poll) made the worker's largest share of page faults
    hk = np.empty(n_lanes * hcap, dtype=np.int64)
    hv = np.empty(n_lanes * hcap, dtype=np.int64)
    hsize = np.zeros(n_lanes, dtype=np.int64)
    seq = 0
    for i in range(n):
        if shares > 1 and person[i] % shares != share:
            continue  # another call's to write
        out_reason[i] = PARKED
        out_points[i] = 0
        out_cum[i] = 0
        out_seq[i] = -1
        out_trigger[i] = -1

    # A small explicit work list replaces recursion: decisions that release
    # other records append them right after themselves.
    work = np.zeros(n, dtype=np.int32)

    for i in range(n + 1):
        # ---- expiry: stream time passes a waiting record's deadline (streaming only)
        # a record the campaign refuses as received too late (too_late: LATE) does not
        # set the clock: one far-future timestamp must not expire every wait
        lo, hi = 0, 0  # the lanes whose waits to check
        if (i < n and not final and typ[i] == TRANSACTION and ts[i] > stream_times[lane[i]]
                and not too_late[i]):
            stream_times[lane[i]] = ts[i]
            lo, hi = lane[i], lane[i] + 1
        # also after the last record: a waiting record whose deadline stream time
        # has already passed must not sit until some later record arrives
        if i == n:
            lo, hi = 0, n_lanes
        for ln in range(lo, hi):
            if final:
                break
            hkl = hk[ln * hcap:(ln + 1) * hcap]
            hvl = hv[ln * hcap:(ln + 1) * hcap]
            hsl = hsize[ln:ln + 1]
            clock = stream_times[ln]
            if i == n and follows[ln]:
                # its partition's stream time: the largest of the partition's lanes
                g0 = ln - ln % group
                part = NO_TIME_K
                for g in range(g0, g0 + group):
                    part = max(part, stream_times[g])
                if part > clock:
                    clock = part  # only for waits: its own later records keep their clock
            while hsl[0] > 0 and hkl[0] < clock:
                j = _heap_pop(hkl, hvl, hsl)
                if out_reason[j] != PARKED:
                    continue
                if kind[j] == KIND_REFUND:
                    eo = _find(head, e_next, e_person, e_op, orig[j], person[j], op[j])
                    if eo >= 0 and e_status[eo] == PENDING and e_kind[eo] != KIND_REFUND:
                        continue  # waits with its original, which still waits
                    out_reason[j] = rc.ORIGINAL_NOT_FOUND
                    out_seq[j] = seq
                    out_trigger[j] = i
                    seq += 1
                    e_status[rec_entry[j]] = REJECTED
                else:
                    out_reason[j] = rc.NOT_ENROLLED
                    out_seq[j] = seq
                    out_trigger[j] = i
                    seq += 1
                    e_status[rec_entry[j]] = REJECTED
                    # its waiting refunds now see a rejected original
                    r = k_head[txn[j]]
                    while r >= 0:
                        if (out_reason[r] == PARKED and person[r] == person[j]
                                and op[r] == op[j]):
                            out_reason[r] = rc.ORIGINAL_NOT_ELIGIBLE
                            out_seq[r] = seq
                            out_trigger[r] = i
                            seq += 1
                            e_status[rec_entry[r]] = REJECTED
                        r = nxt[r]
        if i == n:
            break
        if shares > 1 and person[i] % shares != share:
            continue

        # ---- one arriving record, then whatever it releases, in order
        nwork = 1
        work[0] = i
        w = 0
        while w < nwork:
            j = work[w]
            w += 1
            p = person[j]
            if typ[j] == ENROLLMENT:
                if reason[j] != 0:
                    out_reason[j] = reason[j]
                elif p_op[p] >= 0:
                    same = p_op[p] == op[j] and kind[j] >= 0 and p_kind[p] == kind[j]
                    out_reason[j] = rc.DUPLICATE if same else rc.ALREADY_ENROLLED
                elif too_late[j]:
                    out_reason[j] = rc.ENROLLMENT_CLOSED
                elif outside[j]:
                    out_reason[j] = rc.SELECTION_NOT_OPEN
                elif bad_earn_on[j]:
                    out_reason[j] = rc.INVALID_EARN_ON
                else:
                    out_reason[j] = 0
                    p_op[p] = op[j]
                    p_kind[p] = kind[j]
                    p_day[p] = day[j]
                    # records waiting for this enrollment go next, in arrival order
                    r = w_head[p]
                    w_head[p] = -1
                    w_tail[p] = -1
                    k = 0
                    while r >= 0:
                        rn = nxt[r]
                        nxt[r] = -1
                        if out_reason[r] == PARKED:
                            # insert right after j, keeping arrival order
                            for q in range(nwork - 1, w + k - 1, -1):
                                work[q + 1] = work[q]
                            work[w + k] = r
                            nwork += 1
                            k += 1
                        r = rn
                out_seq[j] = seq
                out_trigger[j] = i
                seq += 1
                continue

            # ---- transactions
            if reason[j] != 0:
                out_reason[j] = reason[j]
                out_seq[j] = seq
                out_trigger[j] = i
                seq += 1
                continue
            if preparked[j] == 1:
                # waited in an earlier batch: back on its list, no checks repeated
                preparked[j] = 0
                if kind[j] == KIND_REFUND:
                    _append(k_head, k_tail, nxt, orig[j], j)
                else:
                    _append(w_head, w_tail, nxt, p, j)
                _expire_at(hk, hv, hsize, hcap, lane[j], deadline[j], j, final)
                continue
            if rec_entry[j] < 0:
                # check 5: first seen (person, operator, txn_id) stands
                e = _find(head, e_next, e_person, e_op, txn[j], p, op[j])
                if e >= 0:
                    # occurred_at and original_txn_id compared by fingerprint: a
                    # collision can only name the rejection DUPLICATE (DECISIONS 102)
                    same = (e_kind[e] == kind[j] and e_amount[e] == amount[j]
                            and e_fp[e] == fp[j])
                    out_reason[j] = rc.DUPLICATE if same else rc.CONFLICTING_DUPLICATE
                    out_seq[j] = seq
                    out_trigger[j] = i
                    seq += 1
                    continue
                if p_n[p] >= person_limit:
                    # a person's state must stay bounded (changelog message size)
                    out_reason[j] = rc.PERSON_LIMIT
                    out_seq[j] = seq
                    out_trigger[j] = i
                    seq += 1
                    continue
                p_n[p] += 1
                e = n_entries
                n_entries += 1
                e_person[e] = p
                e_op[e] = op[j]
                e_txn[e] = txn[j]
                e_kind[e] = kind[j]
                e_amount[e] = amount[j]
                e_fp[e] = fp[j]
                e_status[e] = PENDING
                e_refunded[e] = 0
                e_rec[e] = j
                e_next[e] = head[txn[j]]
                head[txn[j]] = e
                rec_entry[j] = e
                if kind[j] == KIND_REFUND:
                    # refunds waiting for this key can never get a charge or purchase
                    # now: decide them right after this arrival (ORIGINAL_NOT_FOUND)
                    nwork = _release_key(txn[j], p, op[j], k_head, k_tail, nxt, out_reason,
                                         person, op, work, w, nwork)
            e = rec_entry[j]
            if too_late[j]:
                out_reason[j] = rc.LATE
            elif kind[j] != KIND_REFUND:
                if outside[j]:
                    out_reason[j] = rc.OUTSIDE_WINDOW
                elif p_op[p] < 0:
                    if park_for_enrollment and not (ts[j] != NO_TIME_K
                                                    and deadline[j] < stream_times[lane[j]]):
                        _append(w_head, w_tail, nxt, p, j)
                        _expire_at(hk, hv, hsize, hcap, lane[j], deadline[j], j, final)
                        continue
                    out_reason[j] = rc.NOT_ENROLLED
                elif p_op[p] != op[j]:
                    out_reason[j] = rc.WRONG_OPERATOR
                elif p_kind[p] != kind[j]:
                    out_reason[j] = rc.KIND_NOT_ELIGIBLE
                elif day[j] < p_day[p]:
                    out_reason[j] = rc.BEFORE_APPLICATION
                else:
                    before = person_total(p_c[p], p_r[p], rate, cap, rounding)
                    p_c[p] += amount[j]
                    p_r[p] += (amount[j] * rate) // 100
                    after = person_total(p_c[p], p_r[p], rate, cap, rounding)
                    out_reason[j] = 0
                    out_points[j] = after - before
                    out_cum[j] = after
            else:
                eo = _find(head, e_next, e_person, e_op, orig[j], p, op[j])
                overdue = (not final and ts[j] != NO_TIME_K
                           and deadline[j] < stream_times[lane[j]])
                if eo < 0 and overdue:
                    # its wait would already be over: decided at once (rules, Order)
                    out_reason[j] = rc.ORIGINAL_NOT_FOUND
                elif eo < 0 or (e_kind[eo] != KIND_REFUND and e_status[eo] == PENDING):
                    # wait for the original (or with it, even when overdue: the
                    # original's own decision releases it)
                    _append(k_head, k_tail, nxt, orig[j], j)
                    _expire_at(hk, hv, hsize, hcap, lane[j], deadline[j], j, final)
                    continue
                elif e_kind[eo] == KIND_REFUND:
                    out_reason[j] = rc.ORIGINAL_NOT_FOUND
                elif e_status[eo] == REJECTED:
                    out_reason[j] = rc.ORIGINAL_NOT_ELIGIBLE
                elif amount[j] + e_refunded[eo] > e_amount[eo]:
                    out_reason[j] = rc.REFUND_EXCEEDS_ORIGINAL
                else:
                    e_refunded[eo] += amount[j]
                    before = person_total(p_c[p], p_r[p], rate, cap, rounding)
                    p_c[p] -= amount[j]
                    p_r[p] -= (amount[j] * rate) // 100
                    after = person_total(p_c[p], p_r[p], rate, cap, rounding)
                    out_reason[j] = 0
                    out_points[j] = after - before
                    out_cum[j] = after
            e_status[e] = ACCEPTED if out_reason[j] == 0 else REJECTED
            out_seq[j] = seq
            out_trigger[j] = i
            seq += 1
            # refunds waiting on this key are decided right after it
            nwork = _release_key(txn[j], p, op[j], k_head, k_tail, nxt, out_reason, person, op,
                                 work, w, nwork)

    if final:
        # end of input: whatever still waits is decided without what it waited for
        for j in range(n):
            if out_reason[j] != PARKED or (shares > 1 and person[j] % shares != share):
                continue
            out_reason[j] = rc.ORIGINAL_NOT_FOUND if kind[j] == KIND_REFUND else rc.NOT_ENROLLED
            out_seq[j] = seq
            out_trigger[j] = n + j
            seq += 1
            if rec_entry[j] >= 0:
                e_status[rec_entry[j]] = REJECTED
    return n_entries, seq


@numba.njit(cache=True, nogil=True)
def merge_shares(seq, trigger, person, shares, counts):  # type: ignore[no-untyped-def]
    """The decision order of one call over all the records, from calls that each
    decided one share of the people (:class:`Terms`) with their own ``seq`` from 0
    and ``counts[s]`` decisions: a share's decisions are in order of the arrival that
    decided them, and an arrival decides only its own person's records (nothing
    expires at the end of the input), so merging the shares by ``trigger`` is the
    single call's order, record for record (DECISIONS 110)."""
    n = len(seq)
    start = np.zeros(shares + 1, dtype=np.int64)
    for s in range(shares):
        start[s + 1] = start[s] + counts[s]
    by_seq = np.empty(n, dtype=np.int32)
    for j in range(n):
        by_seq[start[person[j] % shares] + seq[j]] = j
    at = start[:shares].copy()
    out = np.empty(n, dtype=np.int64)
    for k in range(n):
        best = -1
        first = np.int64(0)
        for s in range(shares):
            if at[s] < start[s + 1]:
                t = trigger[by_seq[at[s]]]
                if best < 0 or t < first:
                    best, first = s, t
        j = by_seq[at[best]]
        at[best] += 1
        out[j] = k
    return out
