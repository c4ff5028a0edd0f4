"""The settlement summary: what finance reconciles first.

Computed from the output tables alone, so the same function summarises an
offline ``settle`` run and a ``collect`` of the streaming outputs, and the two
can be compared key by key.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.rules.kernel import KIND_REFUND
from engine.rules.model import REASON_NAMES


def summarize(grants: pa.Table, rejections: pa.Table, records_in: dict[str, int] | None,
              cap_points: int, campaign: str) -> dict[str, Any]:
    """Summary of outcome tables. ``records_in=None`` when the input counts are not
    known (``collect`` sees outputs only): accepted enrollments leave no output, so
    they and ``people_enrolled`` are then ``None`` rather than guessed."""
    by_reason: dict[str, dict[str, int]] = {"enrollment": {}, "transaction": {}}
    if rejections.num_rows:
        counts = rejections.group_by(["record_type", "reason"]).aggregate([("reason", "count")])
        for rt, rs, c in zip(counts["record_type"].to_pylist(), counts["reason"].to_pylist(),
                             counts["reason_count"].to_pylist(), strict=True):
            by_reason[rt][rs] = c
    for d in by_reason.values():
        for k in sorted(d):
            d[k] = d.pop(k)
    rejected = {rt: sum(d.values()) for rt, d in by_reason.items()}
    points = pc.sum(grants["points"]).as_py() or 0 if grants.num_rows else 0
    per_person = grants.group_by("mykey_id").aggregate([("points", "sum")])
    totals = per_person["points_sum"]
    per_operator: dict[str, dict[str, int]] = {}
    if grants.num_rows:
        signed = pc.if_else(pc.equal(grants["kind"], "refund"),
                            pc.negate(grants["amount"]), grants["amount"])
        g = grants.append_column("signed_amount", signed)
        agg = g.group_by("operator_id").aggregate(
            [("points", "sum"), ("signed_amount", "sum"), ("points", "count"),
             ("mykey_id", "count_distinct")])
        for row in sorted(agg.to_pylist(), key=lambda r: r["operator_id"]):
            per_operator[row["operator_id"]] = {
                "grants": row["points_count"], "net_amount": row["signed_amount_sum"],
                "points": row["points_sum"], "people": row["mykey_id_count_distinct"]}
    enrolled = (records_in.get("enrollments", 0) - rejected["enrollment"]
                if records_in is not None else None)
    return {
        "campaign": campaign,
        "records_in": records_in,
        "accepted": {"enrollments": enrolled,
                     # every accepted transaction has exactly one grant
                     "transactions": grants.num_rows},
        "rejected": rejected,
        "rejected_by_reason": by_reason,
        "points_granted": int(points),
        "points_clawed_back": int(-(pc.sum(pc.min_element_wise(grants["points"], 0)).as_py()
                                    or 0)) if grants.num_rows else 0,
        "people_enrolled": enrolled,
        "people_with_points": int(pc.sum(pc.greater(totals, 0)).as_py() or 0),
        "people_at_cap": int(pc.sum(pc.equal(totals, cap_points)).as_py() or 0),
        "per_operator": per_operator,
    }


@numba.njit(cache=True, nogil=True)
def _tally(reason, op, person, kind, amount, points, n_reasons, n_ops, n_people,
           cap_points):  # type: ignore[no-untyped-def]
    """Every figure of the summary in one pass over the transactions' decisions (a
    pass per figure took ~0.9 s of a 10 M settle)."""
    by_reason = np.zeros(n_reasons, np.int64)
    grants = np.zeros(n_ops, np.int64)
    net = np.zeros(n_ops, np.int64)
    pts = np.zeros(n_ops, np.int64)
    people = np.zeros(n_ops, np.int64)
    total = np.zeros(n_people, np.int64)
    seen = np.full(n_people, -1, np.int64)
    granted, clawed_back = 0, 0
    for i in range(len(reason)):
        by_reason[reason[i]] += 1
        if reason[i] != 0:
            continue
        o, p, x = op[i], person[i], points[i]
        grants[o] += 1
        net[o] += -amount[i] if kind[i] == KIND_REFUND else amount[i]
        pts[o] += x
        granted += x
        clawed_back += -x if x < 0 else 0
        total[p] += x
        if seen[p] != o:
            if seen[p] < 0:
                people[o] += 1
            seen[p] = o
    with_points, at_cap = 0, 0
    for p in range(n_people):
        with_points += total[p] > 0
        # a person with no grant has total 0, which is the cap only of a 0-point campaign
        at_cap += seen[p] >= 0 and total[p] == cap_points
    return by_reason, grants, net, pts, people, granted, clawed_back, with_points, at_cap


def summarize_arrays(op_ids: list[str], txn_op: np.ndarray, txn_person: np.ndarray,
                     txn_kind: np.ndarray, txn_amount: np.ndarray, txn_points: np.ndarray,
                     txn_reason: np.ndarray, enr_reason: np.ndarray, n_people: int,
                     cap_points: int, campaign: str) -> dict[str, Any]:
    """:func:`summarize` from the decision arrays of offline settle, without
    grouping millions of strings. Must give exactly the same dict (tested)."""
    names = REASON_NAMES
    (txn_counts, grants, net, opts, people, granted, clawed_back, with_points,
     at_cap) = _tally(txn_reason, txn_op, txn_person, txn_kind, txn_amount, txn_points,
                      len(names), len(op_ids), max(n_people, 1), cap_points)
    by_reason: dict[str, dict[str, int]] = {}
    for rt, counts in (("enrollment", np.bincount(enr_reason.astype(np.int64),
                                                  minlength=len(names))),
                       ("transaction", txn_counts)):
        by_reason[rt] = {names[k]: int(counts[k]) for k in sorted(
            range(1, len(names)), key=lambda k: names[k]) if counts[k]}
    rejected = {rt: sum(d.values()) for rt, d in by_reason.items()}
    per_operator = {op_ids[o]: {"grants": int(grants[o]), "net_amount": int(net[o]),
                                "points": int(opts[o]), "people": int(people[o])}
                    for o in sorted(range(len(op_ids)), key=lambda o: op_ids[o]) if grants[o]}
    n_enr, n_txn = len(enr_reason), len(txn_reason)
    enrolled = n_enr - rejected["enrollment"]
    return {
        "campaign": campaign,
        "records_in": {"enrollments": n_enr, "transactions": n_txn},
        "accepted": {"enrollments": enrolled, "transactions": n_txn - rejected["transaction"]},
        "rejected": rejected,
        "rejected_by_reason": by_reason,
        "points_granted": int(granted),
        "points_clawed_back": int(clawed_back),
        "people_enrolled": enrolled,
        "people_with_points": int(with_points),
        "people_at_cap": int(at_cap),
        "per_operator": per_operator,
    }


def merge_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of runs over disjoint sets of people (slices of one input): every
    figure is a count or a sum over records or people, so the parts add up. Keys in
    the order :func:`summarize_arrays` writes them.

    >>> a = {"campaign": "c", "n": 1, "by": {"x": 1}, "none": None}
    >>> merge_summaries([a, {"campaign": "c", "n": 2, "by": {"y": 3}, "none": None}])
    {'campaign': 'c', 'n': 3, 'by': {'x': 1, 'y': 3}, 'none': None}
    """
    def add(vals: list[Any]) -> Any:
        first = vals[0]
        if isinstance(first, dict):
            keys = sorted({k for v in vals for k in v}) if not all(
                list(v) == list(first) for v in vals) else list(first)
            return {k: add([v[k] for v in vals if k in v]) for k in keys}
        if isinstance(first, int) and not isinstance(first, bool):
            return sum(vals)
        return first
    return add(parts)  # type: ignore[no-any-return]


def render(summary: dict[str, Any]) -> Any:
    """A rich renderable of the summary, for the terminal."""
    from rich.console import Group
    from rich.table import Table

    head = Table(title=f"Settlement summary — {summary['campaign']}", show_header=False)
    head.add_column("what")
    head.add_column("value", justify="right")
    ri, acc, rej = summary["records_in"] or {}, summary["accepted"], summary["rejected"]

    def num(v: int | None) -> str:
        return "?" if v is None else f"{v:,}"

    head.add_row("enrollments in / accepted / rejected",
                 f"{num(ri.get('enrollments'))} / {num(acc['enrollments'])} / "
                 f"{rej['enrollment']:,}")
    head.add_row("transactions in / accepted / rejected",
                 f"{num(ri.get('transactions'))} / {acc['transactions']:,} / "
                 f"{rej['transaction']:,}")
    head.add_row("points granted (net)", f"{summary['points_granted']:,}")
    head.add_row("points clawed back by refunds", f"{summary['points_clawed_back']:,}")
    head.add_row("people with points / at the cap",
                 f"{summary['people_with_points']:,} / {summary['people_at_cap']:,}")
    reasons = Table(title="Rejections by reason")
    reasons.add_column("record")
    reasons.add_column("reason")
    reasons.add_column("count", justify="right")
    for rt, d in summary["rejected_by_reason"].items():
        for r, c in d.items():
            reasons.add_row(rt, r, f"{c:,}")
    ops = Table(title="Per operator")
    for col in ("operator", "grants", "people", "net amount ¥", "points"):
        ops.add_column(col, justify="left" if col == "operator" else "right")
    for op, d in summary["per_operator"].items():
        ops.add_row(op, f"{d['grants']:,}", f"{d['people']:,}", f"{d['net_amount']:,}",
                    f"{d['points']:,}")
    return Group(head, reasons, ops)
