"""Property tests: small adversarial campaigns, engine against the reference model, and
invariants that follow from the rules page (points sum to the capped total, order
independence across people and of a person's plain accepted records, the cap, one
outcome per record).

A failing example prints a reproduction blob (``@reproduce_failure``)."""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.rules.model import Campaign, Kind, Operator, Registry, Rounding
from engine.rules.settlement import decide_offline, settle_records
from engine.rules.validate import shape_objects, validate_enrollments, validate_transactions
from tests import reference_model

T = TypeVar("T")

US = 1_000_000
H = 3600 * US
D = 24 * H
WS = Campaign().window_start            # 2020-09-01T00:00:00+09:00
DAY0 = (WS + 9 * H) // D                # JST day number of 2020-09-01
PII = "123456789018"                    # valid check digit
NOT_PII = "123456789012"                # 12 digits, wrong check digit

# instants around every edge: window start/end, JST midnight, enroll_end, accept_end
APPLIED = [WS - D, WS - 1, WS, WS, WS + 1, WS + 10 * H, WS + 10 * H, WS + D - 1, WS + D,
           WS + D + 1, WS + 2 * D]
INSIDE = [WS, WS + 1, WS + 10 * H, WS + D - 1, WS + D, WS + D + 1, WS + D + 15 * H,
          WS + 2 * D - 1]
OUTSIDE = [WS - D, WS - 1, WS + 2 * D, WS + 2 * D + 1, WS + 4 * D]
RECEIVED = [WS + D, WS + 3 * D - 1, WS + 3 * D, WS + 3 * D + 1]
TIMES = sorted({*APPLIED, *INSIDE, *OUTSIDE, *RECEIVED})
OFFSETS = ["Z", "+00:00", "+09:00", "-05:00", "+05:45", "-00:00"]

# operator pool; the registry of an example is "opb" plus a subset of the others
OPERATORS = {
    "opb": Operator("opb", "Both", (Kind.CHARGE, Kind.PURCHASE), DAY0),
    "opc": Operator("opc", "Charge", (Kind.CHARGE,), DAY0),
    "opp": Operator("opp", "Purchase", (Kind.PURCHASE,), DAY0 - 1, last_day=DAY0),
}
OP_IDS = [*OPERATORS, "zzz"]              # "zzz" is never registered
PEOPLE = ["PERSON01", "PERSON02", "Person01", "PERSON04", "00000005", "zzzzzzz6"]
TXN_IDS = ["t1", "t2", "t3", "t4", "t5", "t6", "t7", "t8", "r1"]
REFUND_IDS = ["r1", "r2", "r3", "r4", "r5", "r6", "r7", "t1"]


def fmt(us: int, offset: str, naive: bool = False) -> str:
    """RFC 3339 text of an instant in the given offset notation."""
    if offset in ("Z", "+00:00", "-00:00"):
        minutes = 0
    else:
        sign = 1 if offset[0] == "+" else -1
        minutes = sign * (int(offset[1:3]) * 60 + int(offset[4:6]))
    local = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us, minutes=minutes)
    s = local.strftime("%Y-%m-%dT%H:%M:%S")
    if local.microsecond:
        s += f".{local.microsecond:06d}"
    return s if naive else s + offset


def weighted(draw: st.DrawFn, choices: list[tuple[int, T]]) -> T:
    """One of the values, with integer weights (shrinks towards the first choice)."""
    r = draw(st.integers(0, sum(w for w, _ in choices) - 1))
    for w, v in choices:
        if r < w:
            return v
        r -= w
    raise AssertionError


def timestamp(draw: st.DrawFn, pool: list[int]) -> str:
    return fmt(draw(st.sampled_from(pool)), draw(st.sampled_from(OFFSETS)))


def amount(draw: st.DrawFn, max_amount: int, usual: int = 30) -> object:
    if draw(st.integers(0, 9)) < 8:
        return draw(st.integers(1, usual))
    return draw(st.sampled_from([0, -5, max_amount, max_amount + 1, 1.5, 2.0, "10", True,
                                 None]))


def mutate(draw: st.DrawFn, rec: dict) -> object:
    """Now and then damage a record: PII, a dropped or mistyped field, a naive time..."""
    what = weighted(draw, [(40, "none"), (1, "pii_extra"), (1, "pii_nested"),
                           (1, "pii_known"), (1, "not_pii"), (1, "drop"), (1, "mistype"),
                           (1, "naive"), (1, "non_object"), (1, "extra"), (1, "pii_key")])
    rec = dict(rec)
    if what == "pii_extra":
        rec["memo"] = PII
    elif what == "pii_nested":
        rec["meta"] = {"lines": [{"x": 1}, [PII]]}
    elif what == "pii_known":
        rec[draw(st.sampled_from(sorted(rec)))] = PII
    elif what == "not_pii":
        rec["memo"] = NOT_PII
    elif what == "drop":
        del rec[draw(st.sampled_from(sorted(rec)))]
    elif what == "mistype":
        rec[draw(st.sampled_from(sorted(rec)))] = draw(st.sampled_from([5, None, True, [], ""]))
    elif what == "naive":
        key = draw(st.sampled_from([k for k in rec if k.endswith("_at")]))
        rec[key] = fmt(draw(st.sampled_from(TIMES)), "Z", naive=True)
    elif what == "non_object":
        return draw(st.sampled_from(["x", 5, None, [rec], [PII], PII, 1.5]))
    elif what == "pii_key":
        rec[PII] = "a field named like an Individual Number"
    elif what == "extra":
        rec["channel"] = draw(st.sampled_from(["web", 7, {"k": "v"}, NOT_PII]))
    return rec


@dataclass
class Scenario:
    campaign: Campaign
    registry: Registry
    enrollments: dict[str, list[object]]      # bucket (person) -> that person's records
    transactions: dict[str, list[object]]
    enroll_order: list[str]                   # merge order of the buckets
    txn_order: list[str]


def merge(buckets: dict[str, list[object]], order: list[str]) -> tuple[list, list]:
    """Interleave per-bucket lists (each keeps its order); returns records and labels."""
    pos: dict[str, int] = defaultdict(int)
    records, labels = [], []
    for b in order:
        records.append(buckets[b][pos[b]])
        labels.append((b, pos[b]))
        pos[b] += 1
    return records, labels


def interleavings(buckets: dict[str, list[object]]) -> st.SearchStrategy[list[str]]:
    return st.permutations([b for b, recs in buckets.items() for _ in recs])


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    campaign = Campaign(
        id="prop", window_start=WS, window_end=WS + 2 * D,
        enroll_end=draw(st.sampled_from([WS + D, WS + 2 * D])), accept_end=WS + 3 * D,
        rate_percent=draw(st.sampled_from([1, 25, 33, 50, 100])),
        cap_points=draw(st.sampled_from([0, 1, 3, 7, 10, 20, 50, 1000])),
        rounding=draw(st.sampled_from(list(Rounding))),
        max_amount=draw(st.sampled_from([30, 50, 10_000])),
        person_limit=draw(st.sampled_from([2, 4, 5_000])),
    )
    others = weighted(draw, [(4, ["opc", "opp"]), (1, ["opc"]), (1, ["opp"]), (1, [])])
    ops = draw(st.permutations(["opb", *others]))
    registry = Registry(tuple(OPERATORS[o] for o in ops))

    people = draw(st.lists(st.sampled_from(PEOPLE), min_size=2, max_size=6, unique=True))
    enrollments: dict[str, list[object]] = {}
    transactions: dict[str, list[object]] = {}
    for p in people:
        home = draw(st.sampled_from(ops))
        home_kind = draw(st.sampled_from(["charge", "purchase"])) if home == "opb" else (
            "charge" if home == "opc" else "purchase")

        def op_of_record(home: str = home) -> object:
            return weighted(draw, [(6, home), (1, draw(st.sampled_from(OP_IDS)))])

        es: list[object] = []
        for i in range(weighted(draw, [(6, 1), (1, 0), (2, 2)])):
            good = i == 0 and draw(st.integers(0, 3)) > 0        # mostly a valid first one
            e: dict = {"mykey_id": p, "operator_id": home if good else op_of_record(),
                       "applied_at": timestamp(draw, [WS, WS + 10 * H] if good else APPLIED)}
            earn_on = weighted(draw, [(4, home_kind if home == "opb" else "-"), (2, "-"),
                                      (1, "charge"), (1, "purchase"), (1, None),
                                      (1, "refund")])
            if good:
                earn_on = home_kind if home == "opb" else draw(st.sampled_from(["-", home_kind]))
            if earn_on != "-":
                e["earn_on"] = earn_on
            if draw(st.booleans()):
                e["received_at"] = timestamp(draw, RECEIVED)
            es.append(mutate(draw, e))
        enrollments[p] = es

        ts: list[object] = []
        fresh = iter(TXN_IDS)
        fresh_refund = iter(REFUND_IDS)
        for _ in range(draw(st.integers(0, 8))):
            action = weighted(draw, [(5, "new"), (3, "refund"), (2, "copy"), (1, "burst")])
            earlier = [t for t in ts if isinstance(t, dict)]
            if action == "copy" and earlier:
                t = copy.deepcopy(draw(st.sampled_from(earlier)))
                variant = draw(st.sampled_from(["exact", "received", "offset", "amount",
                                                "kind"]))
                if variant == "received":
                    t["received_at"] = timestamp(draw, RECEIVED)
                elif variant == "offset" and isinstance(t.get("occurred_at"), str):
                    us = reference_model.parse_instant(t["occurred_at"])
                    if us is not None:
                        t["occurred_at"] = fmt(us, draw(st.sampled_from(OFFSETS)))
                elif variant == "amount":
                    t["amount"] = amount(draw, campaign.max_amount)
                elif variant == "kind":
                    t["kind"] = draw(st.sampled_from(["charge", "purchase"]))
                ts.append(t)
                continue
            if action in ("refund", "burst"):
                t = {"txn_id": weighted(draw, [(3, next(fresh_refund, "r1")),
                                               (1, draw(st.sampled_from(REFUND_IDS)))]),
                     "kind": "refund",
                     "original_txn_id": weighted(draw, [(4, draw(st.sampled_from(TXN_IDS[:3]))),
                                                        (1, draw(st.sampled_from(TXN_IDS)))])}
            else:
                kind = weighted(draw, [(4, home_kind), (1, draw(st.sampled_from(
                    ["charge", "purchase"])))])
                txn_id = weighted(draw, [(3, next(fresh, "t1")),
                                         (1, draw(st.sampled_from(TXN_IDS)))])
                t = {"txn_id": txn_id, "kind": kind}
            t.update({"operator_id": op_of_record(), "mykey_id": p,
                      "amount": amount(draw, campaign.max_amount,
                                       30 if action == "new" else 15),
                      "occurred_at": timestamp(draw, weighted(draw, [
                          (5, INSIDE), (1, OUTSIDE)]))})
            if draw(st.integers(0, 4)) == 0:
                t["received_at"] = timestamp(draw, RECEIVED)
            ts.append(mutate(draw, t))
            if action == "burst":                   # more refunds of the same original
                for _ in range(draw(st.integers(1, 3))):
                    ts.append(dict(t, txn_id=next(fresh_refund, "r1"),
                                   amount=draw(st.integers(1, 10))))
        transactions[p] = ts

    # records of nobody in particular; at least one each, so that neither input is
    # empty (empty inputs are example tests in test_reasons)
    enrollments["-"] = draw(st.lists(st.sampled_from(["x", 5, None, [PII], {}]), min_size=1,
                                     max_size=2))
    transactions["-"] = draw(st.lists(st.sampled_from(["x", 5, None, [PII], {"memo": PII},
                                                       {}]), min_size=1, max_size=2))
    return Scenario(campaign, registry, enrollments, transactions,
                    draw(interleavings(enrollments)), draw(interleavings(transactions)))


def fields(o: object) -> tuple:
    return (o.reason, o.points, o.cumulative_points, o.capped)  # type: ignore[attr-defined]


def run(s: Scenario, enroll_order: list[str] | None = None,
        txn_order: list[str] | None = None) -> tuple[list, list, list, list]:
    es, elabels = merge(s.enrollments, enroll_order or s.enroll_order)
    ts, tlabels = merge(s.transactions, txn_order or s.txn_order)
    out = settle_records(es, ts, s.campaign, s.registry)
    return es, ts, out, elabels + tlabels


SETTINGS = settings(max_examples=250, deadline=None, print_blob=True, derandomize=False,
                    report_multiple_bugs=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ------------------------------------------------------------------ (a) engine == reference


@SETTINGS
@given(scenarios())
def test_engine_agrees_with_reference(s: Scenario) -> None:
    es, ts, out, _ = run(s)
    ref = reference_model.settle_records(es, ts, s.campaign, s.registry)
    assert len(out) == len(ref)
    for o, r in zip(out, ref, strict=True):
        assert (o.record_type, o.index) == (r.record_type, r.index)
        assert fields(o) == fields(r), (o, r, (es if o.record_type == "enrollment"
                                               else ts)[o.index])
    assert [o.seq for o in out] == [r.seq for r in ref]


# ------------------------------------------------------------------ (b), (d), (e)


def total_of(accepted: list[dict], c: Campaign) -> int:
    """The person's total straight from the Points section."""
    if c.rounding == Rounding.CUMULATIVE_FLOOR:
        net = sum(-t["amount"] if t["kind"] == "refund" else t["amount"] for t in accepted)
        return min(c.cap_points, net * c.rate_percent // 100)
    r = sum((-1 if t["kind"] == "refund" else 1) * (t["amount"] * c.rate_percent // 100)
            for t in accepted)
    return min(c.cap_points, r)


@SETTINGS
@given(scenarios())
def test_points_sum_to_the_capped_total_and_stay_in_bounds(s: Scenario) -> None:
    es, ts, out, _ = run(s)
    c = s.campaign
    # (e) one outcome per record, in input order; seq is a permutation
    assert [(o.record_type, o.index) for o in out] == (
        [("enrollment", i) for i in range(len(es))] + [("transaction", i) for i in range(len(ts))])
    assert sorted(o.seq for o in out) == list(range(len(out)))
    # enrollments are all decided before the first transaction
    assert all(o.seq < len(es) for o in out if o.record_type == "enrollment")

    by_person: dict[str, list] = defaultdict(list)
    for o in out:
        if o.reason is not None or o.record_type == "enrollment":
            assert (o.points, o.cumulative_points, o.capped) == (0, 0, False)
            continue
        t = ts[o.index]
        assert isinstance(t, dict)
        by_person[t["mykey_id"]].append((o, t))
    for person_outcomes in by_person.values():
        person_outcomes.sort(key=lambda ot: ot[0].seq)
        running = 0
        for o, _t in person_outcomes:
            # (d) never above the cap, never negative, capped iff at the cap
            assert 0 <= o.cumulative_points <= c.cap_points
            assert o.capped == (o.cumulative_points == c.cap_points)
            running += o.points
            assert o.cumulative_points == running
        # (b) the grants sum to the total computed from the accepted records alone
        assert running == total_of([t for _o, t in person_outcomes], c)


# ------------------------------------------------------------------ (c) order independence


@SETTINGS
@given(scenarios(), st.data())
def test_interleaving_of_people_does_not_matter(s: Scenario, data: st.DataObject) -> None:
    _, _, out1, labels1 = run(s)
    eorder = data.draw(interleavings(s.enrollments))
    torder = data.draw(interleavings(s.transactions))
    _, _, out2, labels2 = run(s, eorder, torder)
    first = {lab: fields(o) for lab, o in zip(labels1, out1, strict=True)}
    second = {lab: fields(o) for lab, o in zip(labels2, out2, strict=True)}
    assert first == second


@SETTINGS
@given(scenarios(), st.randoms(use_true_random=False))
def test_order_of_plain_accepted_records_does_not_matter(s: Scenario, rnd: object) -> None:
    es, ts, out, _ = run(s)
    tout = [o for o in out if o.record_type == "transaction"]

    def key(t: object, field: str = "txn_id") -> tuple | None:
        if isinstance(t, dict):
            return tuple(repr(t.get(k)) for k in ("mykey_id", "operator_id", field))
        return None

    keys = [key(t) for t in ts]
    referenced = {key(t, "original_txn_id") for t in ts}
    movable: dict[str, list[int]] = defaultdict(list)       # person -> positions
    for i, (t, o) in enumerate(zip(ts, tout, strict=True)):
        if (o.reason is None and isinstance(t, dict) and t["kind"] != "refund"
                and keys.count(keys[i]) == 1 and keys[i] not in referenced):
            movable[t["mykey_id"]].append(i)
    permuted = list(ts)
    source = list(range(len(ts)))                             # position -> original position
    for positions in movable.values():
        shuffled = list(positions)
        rnd.shuffle(shuffled)                                 # type: ignore[attr-defined]
        for dst, src in zip(positions, shuffled, strict=True):
            permuted[dst] = ts[src]
            source[dst] = src
    out2 = [o for o in settle_records(es, permuted, s.campaign, s.registry)
            if o.record_type == "transaction"]

    def totals(records: list, outcomes: list) -> dict:
        acc: dict[str, int] = defaultdict(int)
        for t, o in zip(records, outcomes, strict=True):
            if o.reason is None:
                acc[t["mykey_id"]] += o.points
        return dict(acc)

    assert totals(ts, tout) == totals(permuted, out2)
    # every record keeps its decision
    assert [o.reason for o in out2] == [tout[source[i]].reason for i in range(len(ts))]


# ------------------------------------------------------------------ shares of people


@SETTINGS
@given(scenarios(), st.integers(2, 4))
def test_people_decided_in_shares_give_the_single_calls_decisions(s: Scenario,
                                                                   shares: int) -> None:
    # offline settle decides its transactions on threads, a share of the people each
    # (DECISIONS 110): every decision and the order of all of them must be the same
    es, _ = merge(s.enrollments, s.enroll_order)
    ts, _ = merge(s.transactions, s.txn_order)
    enr = validate_enrollments(shape_objects(es, "enrollment"), s.campaign, s.registry)
    txn = validate_transactions(shape_objects(ts, "transaction"), s.campaign, s.registry)
    one = decide_offline(enr, txn, s.campaign, shares=1)
    many = decide_offline(enr, txn, s.campaign, shares=shares)
    for name in ("enr_reason", "txn_reason", "txn_points", "txn_cum", "enr_seq", "txn_seq",
                 "txn_trigger"):
        assert np.array_equal(getattr(one, name), getattr(many, name)), name
