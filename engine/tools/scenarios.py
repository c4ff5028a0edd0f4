"""Hand-written stories around the rules' edges, mixed into default-mode generated data.

Each record names the outcome the rules page prescribes (``Rec.expect``); scenario
people are the last users of a run, scenario txn_ids start with "edge:" so they can
never collide with generated ones. The bulk generator (:mod:`engine.tools.generate`)
asks :func:`stories` for the records and :func:`scenario_transactions` for how many
transaction rows to leave them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from engine.rules.model import KIND_NAMES, jst_day
from engine.tools.synth import (
    CAMPAIGN,
    DAY,
    HOUR,
    MINUTE,
    ST_JST,
    ST_NO_OFFSET,
    ST_Z,
    STORES,
    UNKNOWN_OPERATORS,
    Op,
    S,
    day_start,
    format_ts,
    individual_number,
    jst_us,
    load_operators,
)

SCENARIO_PEOPLE = ("dateline", "window_start", "not_open", "ended", "window_end",
                    "closed", "closed_edge", "closed_late", "earn_missing", "earn_wrong",
                    "earn_switch", "dup", "dup_other", "cap", "refunds", "never",
                    "prewindow", "pnf", "malformed")


@dataclass
class Rec:
    kind: str            # "enr" | "txn"
    who: str
    fields: dict[str, Any]
    received: int
    expect: str


def scenario_transactions() -> int:
    """How many transaction rows the scenarios take (the same for every seed)."""
    return sum(r.kind == "txn" for r in stories(0, load_operators(), None))


def stories(seed: int, ops: tuple[Op, ...], mykey: Callable[[int], str] | None) -> list[Rec]:
    """All scenario records; ``mykey(i)`` is the mykey_id of scenario person ``i`` (an
    index into :data:`SCENARIO_PEOPLE`). With ``mykey`` None only their number matters
    (mykey_ids and the random Individual Numbers are placeholders)."""
    # a stream of its own, so that scenario_records() reproduces the generated values
    rng = np.random.default_rng([seed, 0x65646765])
    by_kinds = {k: [o for o in ops if o.kinds == k] for k in ((0,), (1,), (0, 1))}
    P, P2 = by_kinds[(1,)][0], by_kinds[(1,)][1]
    C = by_kinds[(0,)][0]
    BOTH = by_kinds[(0, 1)][0]
    LATE_OPEN = max(ops, key=lambda o: o.opens)
    ENDED = next((o for o in ops if o.last is not None), None)
    names = {w: i for i, w in enumerate(SCENARIO_PEOPLE)}
    out: list[Rec] = []
    seq = iter(range(1, 10**6))

    def key(who: str) -> str:
        return "AAAAAAAA" if mykey is None else mykey(names[who])

    def enr(who: str, op: str, applied: int, expect: str, *, earn: str | None = None,
            recv: int | None = None, style: int = ST_JST, **extra: Any) -> None:
        received = applied + 7 * S if recv is None else recv
        f: dict[str, Any] = {"mykey_id": key(who), "operator_id": op,
                             "applied_at": format_ts(applied, style), "earn_on": earn,
                             "received_at": format_ts(received, style)}
        f.update(extra)
        out.append(Rec("enr", who, f, received, expect))

    def txn(who: str, op: str, kind: str | None, amount: Any, occurred: int, expect: str, *,
            recv: int | None = None, tid: str | None = None, orig: str | None = None,
            style: int = ST_JST, **extra: Any) -> str:
        tid = f"edge:{next(seq):05d}" if tid is None else tid
        received = occurred + 95 * S if recv is None else recv
        f: dict[str, Any] = {"txn_id": tid, "operator_id": op, "mykey_id": key(who),
                             "kind": kind, "amount": amount,
                             "occurred_at": format_ts(occurred, style),
                             "original_txn_id": orig, "received_at": format_ts(received, style)}
        f.update(extra)
        out.append(Rec("txn", who, f, received, expect))
        return tid

    ws, we, ee, ae = (CAMPAIGN.window_start, CAMPAIGN.window_end, CAMPAIGN.enroll_end,
                      CAMPAIGN.accept_end)
    pk = KIND_NAMES[P.kinds[0]]

    # The UTC/JST date line: 23:30Z is already the next day in Japan.
    w = "dateline"
    app = jst_us(2021, 2, 10, 10)
    enr(w, P.id, app, "OK")
    t2 = txn(w, P.id, pk, 800, app - 10 * HOUR - 30 * MINUTE, "BEFORE_APPLICATION", style=ST_Z)
    txn(w, P.id, pk, 500, jst_us(2021, 2, 9, 23, 59, 59), "BEFORE_APPLICATION")
    txn(w, P.id, pk, 700, jst_us(2021, 2, 10), "OK")
    txn(w, P.id, pk, 1200, app - 90 * MINUTE, "OK (2021-02-09T23:30Z = application day)",
        style=ST_Z)
    txn(w, P.id, "refund", 800, jst_us(2021, 2, 12, 9), "ORIGINAL_NOT_ELIGIBLE", orig=t2)

    # window start, to the second; selection opening on the same JST day seen from UTC
    w = "window_start"
    op = LATE_OPEN if LATE_OPEN.opens <= int(jst_day(ws)) else P
    ek = KIND_NAMES[op.kinds[-1]]
    enr(w, op.id, max(ws, int(day_start(op.opens))), "OK", earn=ek if len(op.kinds) == 2
        else None, style=ST_Z)
    txn(w, op.id, ek, 3000, ws, "OK (window start is inclusive)", style=ST_Z)
    txn(w, op.id, ek, 2000, ws - S, "OUTSIDE_WINDOW", style=ST_Z)

    # applied the evening before the operator opened for selection, then again
    w = "not_open"
    op = LATE_OPEN
    ek = KIND_NAMES[op.kinds[-1]]
    earn = ek if len(op.kinds) == 2 else None
    enr(w, op.id, int(day_start(op.opens)) - S, "SELECTION_NOT_OPEN", earn=earn)
    enr(w, op.id, int(day_start(op.opens)) + 9 * HOUR, "OK", earn=earn)
    txn(w, op.id, ek, 4200, int(day_start(op.opens)) + 30 * DAY + 13 * HOUR, "OK")

    # an operator that left the programme early
    w = "ended"
    if ENDED is not None and ENDED.last is not None:
        ek = KIND_NAMES[ENDED.kinds[0]]
        end = int(day_start(ENDED.last + 1))
        enr(w, ENDED.id, max(jst_us(2020, 10, 5, 12), int(day_start(ENDED.opens))), "OK",
            earn=ek if len(ENDED.kinds) == 2 else None)
        t1 = txn(w, ENDED.id, ek, 2500, end - S, "OK (last second of last_day)", style=ST_Z)
        txn(w, ENDED.id, ek, 2500, end, "OUTSIDE_WINDOW (after last_day)", style=ST_Z)
        t3 = txn(w, ENDED.id, ek, 1800, end + 8 * HOUR, "OUTSIDE_WINDOW (after last_day)")
        txn(w, ENDED.id, "refund", 1800, end + 2 * DAY, "ORIGINAL_NOT_ELIGIBLE", orig=t3)
        txn(w, ENDED.id, "refund", 500, end + 3 * DAY, "OK (refunds have no window)", orig=t1)

    # window end and the acceptance deadline, to the second
    w = "window_end"
    ck = KIND_NAMES[C.kinds[0]]
    enr(w, C.id, jst_us(2021, 9, 1, 20), "OK")
    t1 = txn(w, C.id, ck, 3000, we - S, "OK (last second of the window)", recv=we + MINUTE,
             style=ST_Z)
    txn(w, C.id, ck, 2000, we, "OUTSIDE_WINDOW (window end is exclusive)", style=ST_Z)
    txn(w, C.id, ck, 1000, jst_us(2021, 9, 29, 18), "OK (received 1 s before accept_end)",
        recv=ae - S, style=ST_Z)
    txn(w, C.id, ck, 1000, jst_us(2021, 9, 29, 19), "LATE (received exactly at accept_end)",
        recv=ae)
    txn(w, C.id, ck, 5000, jst_us(2021, 9, 28, 12), "LATE", recv=ae + 2 * DAY + 9 * HOUR)
    txn(w, C.id, "refund", 1000, jst_us(2021, 10, 10, 10), "OK (clawback after the campaign)",
        orig=t1)

    # application deadline
    enr("closed", P2.id, ee, "ENROLLMENT_CLOSED")
    enr("closed_edge", P2.id, ee - S, "OK (last second)", style=ST_Z)
    txn("closed_edge", P2.id, KIND_NAMES[P2.kinds[0]], 990, jst_us(2021, 9, 30, 21),
        "OK (application day, before the application time)")
    enr("closed_late", P2.id, jst_us(2021, 10, 15, 12), "ENROLLMENT_CLOSED")
    txn("closed_late", P2.id, KIND_NAMES[P2.kinds[0]], 1500, jst_us(2021, 10, 16, 12),
        "OUTSIDE_WINDOW")

    # earn_on
    bk = BOTH.id
    enr("earn_missing", bk, jst_us(2020, 12, 1, 11), "INVALID_EARN_ON (operator earns on both)")
    txn("earn_missing", bk, "charge", 3000, jst_us(2020, 12, 5, 11), "NOT_ENROLLED")
    other = KIND_NAMES[1 - P.kinds[0]]
    enr("earn_wrong", P.id, jst_us(2020, 12, 2, 11), "INVALID_EARN_ON", earn=other)
    enr("earn_wrong", P.id, jst_us(2020, 12, 2, 11), "OK (corrected)", earn=pk,
        recv=jst_us(2020, 12, 2, 11, 20))
    txn("earn_wrong", P.id, pk, 2300, jst_us(2020, 12, 6, 18), "OK")
    enr("earn_switch", bk, jst_us(2020, 9, 10, 19), "OK", earn="purchase")
    enr("earn_switch", bk, jst_us(2020, 11, 1, 19), "ALREADY_ENROLLED (other earning kind)",
        earn="charge")
    tc = txn("earn_switch", bk, "charge", 5000, jst_us(2020, 11, 3, 12), "KIND_NOT_ELIGIBLE")
    txn("earn_switch", bk, "purchase", 4000, jst_us(2020, 11, 3, 13), "OK")
    txn("earn_switch", bk, "refund", 5000, jst_us(2020, 11, 4, 12), "ORIGINAL_NOT_ELIGIBLE",
        orig=tc)

    # duplicates: enrollments and transactions; the key is per person
    w = "dup"
    app = jst_us(2020, 11, 3, 9)
    enr(w, C.id, app, "OK")
    enr(w, C.id, app, "DUPLICATE (earn_on given = the only kind)", earn=ck,
        recv=app + DAY)
    enr(w, C.id, app, "DUPLICATE (re-sent)", recv=app + 2 * DAY)
    enr(w, P.id, jst_us(2021, 1, 10, 9), "ALREADY_ENROLLED (other operator)")
    occ = jst_us(2020, 11, 20, 12)
    t1 = txn(w, C.id, ck, 5000, occ, "OK")
    txn(w, C.id, ck, 5000, occ, "DUPLICATE (retry)", tid=t1, recv=occ + 95 * S + 3 * MINUTE)
    txn(w, C.id, ck, 5500, occ, "CONFLICTING_DUPLICATE", tid=t1, recv=occ + DAY)
    txn(w, P.id, pk, 3000, jst_us(2021, 1, 11, 9), "WRONG_OPERATOR")
    r1 = txn(w, C.id, "refund", 2000, occ + 3 * DAY, "OK (partial refund)", orig=t1)
    txn(w, C.id, "refund", 2000, occ + 3 * DAY, "DUPLICATE (refund retry)", tid=r1, orig=t1,
        recv=occ + 3 * DAY + 95 * S + 10 * MINUTE)
    enr("dup_other", C.id, jst_us(2020, 11, 4, 9), "OK")
    txn("dup_other", C.id, ck, 3000, jst_us(2020, 11, 21, 12),
        "OK (same txn_id as another person: not a duplicate)", tid=t1)

    # amounts and the cap
    w = "cap"
    p2k = KIND_NAMES[P2.kinds[0]]
    enr(w, P2.id, jst_us(2020, 12, 1, 10), "OK")
    top = txn(w, P2.id, p2k, CAMPAIGN.max_amount, jst_us(2020, 12, 2, 10),
              "OK (max_amount; reaches the cap)")
    txn(w, P2.id, p2k, CAMPAIGN.max_amount + 1, jst_us(2020, 12, 2, 11), "INVALID_AMOUNT")
    txn(w, P2.id, p2k, 0, jst_us(2020, 12, 2, 12), "INVALID_AMOUNT")
    txn(w, P2.id, p2k, -1500, jst_us(2020, 12, 2, 13), "INVALID_AMOUNT")
    txn(w, P2.id, p2k, 1.5, jst_us(2020, 12, 2, 14), "INVALID_AMOUNT (JSON only)")
    txn(w, P2.id, p2k, "1500", jst_us(2020, 12, 2, 15), "MALFORMED (JSON only)")
    txn(w, P2.id, p2k, True, jst_us(2020, 12, 2, 16), "MALFORMED (JSON only)")
    txn(w, P2.id, p2k, 3000, jst_us(2020, 12, 3, 10), "OK (0 points, capped)")
    txn(w, P2.id, "refund", CAMPAIGN.max_amount // 2, jst_us(2020, 12, 10, 10),
        "OK (still capped: 0 points)", orig=top)

    # refunds
    w = "refunds"
    enr(w, P.id, jst_us(2021, 3, 1, 8), "OK")
    t1 = txn(w, P.id, pk, 8000, jst_us(2021, 3, 5, 12), "OK", recv=jst_us(2021, 3, 5, 12, 8))
    r1 = txn(w, P.id, "refund", 5000, jst_us(2021, 3, 7, 12), "OK", orig=t1)
    txn(w, P.id, "refund", 4000, jst_us(2021, 3, 8, 12), "REFUND_EXCEEDS_ORIGINAL", orig=t1)
    txn(w, P.id, "refund", 3000, jst_us(2021, 3, 9, 12), "OK (refunds now equal the original)",
        orig=t1)
    t2 = txn(w, P.id, pk, 1000, jst_us(2021, 3, 10, 12), "OK")
    txn(w, P.id, "refund", 1500, jst_us(2021, 3, 11, 12), "REFUND_EXCEEDS_ORIGINAL", orig=t2)
    txn(w, P.id, "refund", 500, jst_us(2021, 3, 12, 12), "ORIGINAL_NOT_FOUND (never sent)",
        orig="edge:missing-00001")
    txn(w, P.id, "refund", 500, jst_us(2021, 3, 12, 13), "MALFORMED (no original_txn_id)")
    txn(w, P.id, "refund", 100, jst_us(2021, 3, 12, 14),
        "ORIGINAL_NOT_FOUND (the original is a refund)", orig=r1)
    t3 = txn(w, P.id, pk, 2500, jst_us(2021, 3, 20, 11), "OK (received after its refund)",
             recv=jst_us(2021, 3, 20, 15))
    txn(w, P.id, "refund", 2500, jst_us(2021, 3, 20, 11, 30),
        "OK (arrives 1 h 50 min before its original, waits for it)",
        recv=jst_us(2021, 3, 20, 13, 10), orig=t3)
    tb = txn(w, P.id, "payment", 2000, jst_us(2021, 3, 21, 11), "MALFORMED (kind)")
    txn(w, P.id, "refund", 2000, jst_us(2021, 3, 22, 11),
        "ORIGINAL_NOT_FOUND (original was MALFORMED)", orig=tb)

    # never enrolled; a service outside the programme
    w = "never"
    enr(w, UNKNOWN_OPERATORS[1], jst_us(2021, 5, 1, 10), "UNKNOWN_OPERATOR")
    t1 = txn(w, P.id, pk, 2000, jst_us(2021, 5, 5, 12), "NOT_ENROLLED")
    txn(w, P.id, "refund", 2000, jst_us(2021, 5, 6, 12), "ORIGINAL_NOT_ELIGIBLE", orig=t1)
    txn(w, UNKNOWN_OPERATORS[0], "purchase", 1000, jst_us(2021, 5, 7, 12), "UNKNOWN_OPERATOR")

    # applied in July 2020, spent before points started
    w = "prewindow"
    enr(w, P.id, jst_us(2020, 7, 15, 20), "OK")
    t1 = txn(w, P.id, pk, 3300, jst_us(2020, 8, 20, 12), "OUTSIDE_WINDOW")
    txn(w, P.id, "refund", 3300, jst_us(2020, 9, 3, 12), "ORIGINAL_NOT_ELIGIBLE", orig=t1)
    txn(w, P.id, pk, 2800, jst_us(2020, 9, 2, 12), "OK")

    # Individual Numbers: anywhere, known field or extra, but only with a valid check digit
    w = "pnf"
    app = jst_us(2020, 10, 1, 12)
    good = individual_number(rng, valid=True)
    enr(w, C.id, app, "PERSONAL_NUMBER_FORBIDDEN (in mykey_id)", recv=app + 2 * S,
        mykey_id=good)
    enr(w, C.id, app, "PERSONAL_NUMBER_FORBIDDEN (in an extra field)", recv=app + 4 * S,
        note=individual_number(rng, valid=True))
    enr(w, C.id, app, "OK")
    occ = jst_us(2020, 10, 3, 12)
    txn(w, C.id, ck, 1000, occ, "PERSONAL_NUMBER_FORBIDDEN (note)",
        note=individual_number(rng, valid=True))
    txn(w, C.id, ck, 1000, occ + HOUR, "PERSONAL_NUMBER_FORBIDDEN (txn_id)",
        tid=individual_number(rng, valid=True))
    txn(w, C.id, "refund", 1000, occ + 2 * HOUR, "PERSONAL_NUMBER_FORBIDDEN (original_txn_id)",
        orig=individual_number(rng, valid=True))
    txn(w, C.id, ck, 1000, occ + 3 * HOUR, "OK (12 digits, wrong check digit)",
        note=individual_number(rng, valid=False))
    txn(w, C.id, ck, 1000, occ + 4 * HOUR, "OK (extra field)", note=STORES[0])
    txn(w, C.id, ck, 1000, occ + 5 * HOUR, "OK (txn_id of 64 characters)",
        tid="edge:" + "x" * 59)

    # malformed records of every shape
    w = "malformed"
    app = jst_us(2020, 11, 11, 10)
    enr(w, P2.id, app, "OK")
    mk = key(w)
    for f, why in (({"mykey_id": mk[:4] + "-" + mk[5:]}, "bad character in mykey_id"),
                   ({"mykey_id": mk + "Z"}, "9-character mykey_id"),
                   ({"applied_at": format_ts(app, ST_NO_OFFSET)}, "timestamp without offset"),
                   ({"earn_on": "both"}, "earn_on value"),
                   ({"applied_at": None}, "missing applied_at")):
        enr(w, P2.id, app, f"MALFORMED ({why})", **f)
    out.extend([
        Rec("enr", w, {"_raw": '["' + mk + '", "' + P2.id + '"]'}, app + 9 * S,
            "MALFORMED (not an object)"),
        Rec("enr", w, {"_raw": '{"mykey_id": "' + mk + '", "operator_id": "' + P2.id
                       + '", "applied_at": "2020-11-11T10:00:00+09:0'}, app + 10 * S,
            "MALFORMED (invalid JSON)"),
        Rec("enr", w, {"_raw": orjson.dumps({"mykey_id": mk, "operator_id": 7,
                                             "applied_at": format_ts(app, ST_JST)}).decode()},
            app + 11 * S, "MALFORMED (operator_id is a number)"),
    ])
    occ = jst_us(2020, 11, 20, 10)
    txn(w, P2.id, "purchase", 1200, occ, "MALFORMED (txn_id of 65 characters)",
        tid="edge:" + "y" * 60)
    txn(w, P2.id, "purchase", 1200, occ + MINUTE, "MALFORMED (txn_id with '/')",
        tid="edge/00001")
    txn(w, P2.id, "purchase", 1200, occ + 2 * MINUTE, "MALFORMED (empty txn_id)", tid="")
    txn(w, P2.id, "purchase", 1200, occ + 3 * MINUTE, "MALFORMED (mykey_id)",
        mykey_id=mk.lower()[:7])
    txn(w, P2.id, "purchase", 1200, occ + 4 * MINUTE, "MALFORMED (timestamp without offset)",
        style=ST_NO_OFFSET, received_at=format_ts(occ + 5 * MINUTE, ST_JST))
    txn(w, P2.id, "purchase", 1200, occ + 5 * MINUTE, "MALFORMED (date only)",
        occurred_at="2020-11-20")
    txn(w, P2.id, "purchase", 1200, occ + 6 * MINUTE, "MALFORMED (missing occurred_at)",
        occurred_at=None)
    txn(w, P2.id, None, 1200, occ + 7 * MINUTE, "MALFORMED (missing kind)")
    txn(w, P2.id, "purchase", None, occ + 8 * MINUTE, "MALFORMED (missing amount)")
    txn(w, P2.id, "purchase", 1300, occ + 9 * MINUTE, "OK (unknown extra field)",
        note="レシート番号 0042")
    t0 = occ + 10 * MINUTE
    good_rec = {"txn_id": "edge:raw-ok", "operator_id": P2.id, "mykey_id": mk,
                "kind": "purchase", "amount": 1400, "occurred_at": format_ts(t0, ST_JST),
                "received_at": format_ts(t0 + MINUTE, ST_JST)}
    raw = [
        ("[1, 2, 3]", "MALFORMED (not an object)"),
        ('"purchase"', "MALFORMED (not an object)"),
        ("null", "MALFORMED (not an object)"),
        ('{"txn_id": "edge:trunc", "operator_id": "' + P2.id + '", "amount": 12',
         "MALFORMED (invalid JSON)"),
        ("{'txn_id': 'edge:py', 'amount': 100}", "MALFORMED (invalid JSON)"),
        (orjson.dumps({**good_rec, "txn_id": "edge:raw-null", "amount": None}).decode(),
         "MALFORMED (amount null)"),
        (orjson.dumps({**good_rec, "txn_id": "edge:raw-num-ts", "occurred_at": t0 // S}
                      ).decode(), "MALFORMED (occurred_at is a number)"),
        (orjson.dumps({**good_rec, "meta": {"pos": "A-17", "items": [1, 2]}, "tax": 0.1}
                      ).decode(), "OK (nested extra fields are ignored)"),
    ]
    for i, (line, why) in enumerate(raw):
        out.append(Rec("txn", w, {"_raw": line}, t0 + (2 + i) * MINUTE, why))

    # raw renderings for the amounts that typed columns cannot hold
    for r in out:
        if r.kind == "txn" and "_raw" not in r.fields and (
                isinstance(r.fields["amount"], bool | float | str)):
            body = {k: v for k, v in r.fields.items() if v is not None}
            r.fields = {"_raw": orjson.dumps(body).decode()}
    return out

