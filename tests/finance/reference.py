"""A plain-Python reading of FINANCE_RULES.md (version 1), row by row, for the
property tests: deliberately simple, sharing nothing with engine/finance."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from typing import Any

JST = timezone(timedelta(hours=9))


def payout_month(occurred_at: datetime, lag: int) -> str:
    local = occurred_at.astimezone(JST)
    months = local.year * 12 + (local.month - 1) + lag
    return f"{months // 12:04d}-{months % 12 + 1:02d}"


def statements(grants: list[dict[str, Any]], lags: dict[str, int]) -> list[tuple[Any, ...]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for g in grants:
        groups[(g["operator_id"], payout_month(g["occurred_at"], lags[g["operator_id"]]))].append(g)
    rows = []
    for (op, month), gs in sorted(groups.items()):
        pos = [g for g in gs if g["points"] > 0]
        neg = [g for g in gs if g["points"] < 0]
        if not pos and not neg:
            continue
        granted = sum(g["points"] for g in pos)
        clawed = -sum(g["points"] for g in neg)
        people = len({g["mykey_id"] for g in pos + neg})
        amount = sum(-g["amount"] if g["kind"] == "refund" else g["amount"] for g in gs)
        rows.append((op, month, len(pos), granted, len(neg), clawed, granted - clawed, people,
                     amount))
    return rows


def settlement(grants: list[dict[str, Any]], operators: list[str],
               advances: list[tuple[str, str, int]]) -> list[tuple[str, int, int, int]]:
    out = []
    for op in sorted(operators):
        owed = sum(g["points"] for g in grants if g["operator_id"] == op)
        paid = sum(p for o, _m, p in advances if o == op)
        out.append((op, owed, paid, owed - paid))
    return out


def _sort_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    category, op, key, txn, _a, _b, line = row
    return (category, txn, op, key, -1 if line is None else line)


def reconcile(grants: list[dict[str, Any]], operator: str,
              claim: list[tuple[str, str, str, int]]) -> tuple[list[tuple[Any, ...]], int]:
    """``claim``: (operator_id, txn_id, mykey_id, points) in file order, line 2 first."""
    ledger = {(g["mykey_id"], g["txn_id"]): g["points"] for g in grants
              if g["operator_id"] == operator and g["points"] != 0}
    out: list[tuple[Any, ...]] = []
    seen: set[tuple[str, str]] = set()
    matched = 0
    for line, (op, txn, key, points) in enumerate(claim, start=2):
        if op != operator:
            out.append(("wrong_operator", op, key, txn, None, points, line))
        elif (key, txn) in seen:
            out.append(("duplicate_in_claim", op, key, txn, ledger.get((key, txn)), points,
                        line))
        else:
            seen.add((key, txn))
            if (key, txn) not in ledger:
                out.append(("not_in_ledger", op, key, txn, None, points, line))
            elif ledger[(key, txn)] != points:
                out.append(("points_differ", op, key, txn, ledger[(key, txn)], points, line))
            else:
                matched += 1
    for (key, txn), points in ledger.items():
        if (key, txn) not in seen:
            out.append(("missing_from_claim", operator, key, txn, points, None, None))
    return sorted(out, key=_sort_key), matched


def diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    left = {(g["operator_id"], g["mykey_id"], g["txn_id"]): g["points"] for g in a
            if g["points"] != 0}
    right = {(g["operator_id"], g["mykey_id"], g["txn_id"]): g["points"] for g in b
             if g["points"] != 0}
    out = []
    for k in set(left) | set(right):
        op, key, txn = k
        if k not in right:
            out.append(("missing_from_claim", op, key, txn, left[k], None))
        elif k not in left:
            out.append(("not_in_ledger", op, key, txn, None, right[k]))
        elif left[k] != right[k]:
            out.append(("points_differ", op, key, txn, left[k], right[k]))
    return sorted(out, key=lambda r: (r[0], r[3], r[1], r[2]))


def spending_month_start(occurred_at: datetime) -> date:
    local = occurred_at.astimezone(JST)
    return date(local.year, local.month, 1)


def grant_months(grants: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The ledger's ``grant_months``: per (operator, JST spending month) grants,
    points_granted, clawbacks, points_clawed_back, zero_point_grants, net_amount, people."""
    groups: dict[tuple[str, date], list[dict[str, Any]]] = defaultdict(list)
    for g in grants:
        groups[(g["operator_id"], spending_month_start(g["occurred_at"]))].append(g)
    rows = []
    for (op, month), gs in sorted(groups.items()):
        pos = [g["points"] for g in gs if g["points"] > 0]
        neg = [g["points"] for g in gs if g["points"] < 0]
        rows.append((op, month, len(pos), sum(pos), len(neg), -sum(neg),
                     sum(1 for g in gs if g["points"] == 0),
                     sum(-g["amount"] if g["kind"] == "refund" else g["amount"] for g in gs),
                     len({g["mykey_id"] for g in gs if g["points"] != 0})))
    return rows


def grant_people(grants: list[dict[str, Any]]) -> list[tuple[str, date, str]]:
    """The ledger's ``grant_people``: who had a non-zero grant, per operator and month."""
    return sorted({(g["operator_id"], spending_month_start(g["occurred_at"]), g["mykey_id"])
                   for g in grants if g["points"] != 0})
