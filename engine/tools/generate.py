"""Seeded, realistic synthetic campaign data: enrollments and transactions.

``mynapoint generate`` writes ``enrollments.<ext>`` and ``transactions.<ext>``. The library
API is :func:`generate_tables` plus :func:`write_jsonl` / :func:`write_parquet`.

Default mode models the real programme: people apply in waves from July 2020, mostly
before they spend, at realistically popular operators; spending is log-normal yen
amounts, a share of people reach the cap; operators upload in batches, retry, correct
amounts, send refunds (some before the original), send late files, and occasionally
send broken or forbidden data. Rejectable records stay at a few percent, and a fixed
set of hand-written *scenarios* (:mod:`engine.tools.scenarios`: boundary instants, the
UTC/JST date line, every reason code of SETTLEMENT_RULES.md) is mixed in whenever there are at least
``SCENARIO_MIN_USERS`` users and ``SCENARIO_MIN_TRANSACTIONS`` transactions.

Clean mode (``clean=True``) is for benchmarks: every record well-formed, every
person enrolled, only eligible spending plus refunds of earlier originals.

Table layout. Columns are the record fields in record order. Clean tables type the
timestamps as ``timestamp[us, tz=UTC]`` (the JSON Lines writer renders them with the
operator's usual offset). Default-mode tables keep timestamps as the RFC 3339 strings
the operator sent (some deliberately without offset), add the extra field ``note``, and
a ``_raw`` column: where it is set the record cannot be expressed in typed columns (not
an object, invalid JSON, a string or float amount...), the other columns are null,
:func:`write_jsonl` writes ``_raw`` verbatim and :func:`write_parquet` leaves the row
out. Row order is file order: by ``received_at`` with a little jitter, each person's
records in their received order. Everything derives from ``seed``: the same arguments
give byte-identical files.

"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.rules.model import KIND_NAMES, NO_TIME, jst_day
from engine.rules.txn_keys import xor_shift_multiply
from engine.tools.scenarios import SCENARIO_PEOPLE, Rec, scenario_transactions, stories
from engine.tools.synth import (
    B36,
    B62,
    CAMPAIGN,
    CHARGE,
    DAY,
    HOUR,
    HOUR_WEIGHTS,
    MINUTE,
    PURCHASE,
    REFUND,
    ST_JST,
    ST_NO_OFFSET,
    ST_NULL,
    ST_Z_MS,
    STORES,
    UNKNOWN_OPERATORS,
    S,
    day_of,
    day_start,
    format_ts,
    individual_number,
    jst_us,
    load_operators,
    radix_strings,
    rfc3339,
)

SCENARIO_MIN_USERS = 40
SCENARIO_MIN_TRANSACTIONS = 400


def _mix64(x: np.ndarray, salt: int) -> np.ndarray:
    """A bijection on uint64 (xor-shift-multiply), so distinct sequence numbers give
    distinct, random-looking ids without any uniqueness check."""
    return xor_shift_multiply(x.astype(np.uint64) ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF),
                              (31, 27, 33), (0x7FB5D329728EA185, 0x81DADEF4BC2DD44D))


def _unique_codes(rng: np.random.Generator, n: int, space: int) -> np.ndarray:
    out = rng.integers(0, space, size=n, dtype=np.int64)
    while True:
        _, first = np.unique(out, return_index=True)
        if len(first) == n:
            return out
        again = np.ones(n, dtype=np.bool_)
        again[first] = False
        out[again] = rng.integers(0, space, size=int(again.sum()), dtype=np.int64)


def merge_order(bulk_keys: np.ndarray, special_keys: np.ndarray) -> np.ndarray:
    """Row order for ``bulk`` rows (already sorted by ``bulk_keys``) followed by
    ``special`` rows: a linear merge, specials after bulk rows with an equal key."""
    sp = np.argsort(special_keys, kind="stable")
    pos = np.searchsorted(bulk_keys, special_keys[sp], side="right")
    return np.insert(np.arange(len(bulk_keys), dtype=np.int64), pos, len(bulk_keys) + sp)




@dataclass
class _Txns:
    """Transactions as parallel arrays; strings are rendered only at the end."""

    person: np.ndarray     # int64
    op: np.ndarray         # int64 code: registry index, then UNKNOWN_OPERATORS
    kind: np.ndarray       # int64
    amount: np.ndarray     # int64
    occurred: np.ndarray   # int64 µs
    received: np.ndarray   # int64 µs
    seq: np.ndarray        # int64, rendered to txn_id
    orig: np.ndarray       # int64 seq of the refunded txn, -1 none
    note: np.ndarray       # int64 index into the note list, -1 none

    def take(self, idx: np.ndarray) -> _Txns:
        return _Txns(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: list[_Txns]) -> _Txns:
        return _Txns(*(np.concatenate([getattr(p, f) for p in parts])
                       for f in _Txns.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.person)


@dataclass
class _Enrs:
    person: np.ndarray
    op: np.ndarray
    earn: np.ndarray       # -1: no earn_on field
    applied: np.ndarray
    received: np.ndarray   # NO_TIME: no received_at field

    def take(self, idx: np.ndarray) -> _Enrs:
        return _Enrs(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: list[_Enrs]) -> _Enrs:
        return _Enrs(*(np.concatenate([getattr(p, f) for p in parts])
                       for f in _Enrs.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.person)


# people status
OK, NEVER, CLOSED, UNFIXED, SCENARIO = 0, 1, 2, 3, 4

Step = Callable[[str], None]


class _Generator:
    def __init__(self, users: int, transactions: int, seed: int, clean: bool,
                 step: Step | None = None) -> None:
        if users < 0 or transactions < 0:
            raise ValueError("users and transactions must not be negative")
        if transactions and not users:
            raise ValueError("transactions need at least one user")
        self.U, self.M, self.seed, self.clean = users, transactions, seed, clean
        self.rng = np.random.default_rng([seed, 0x6D796E61])
        self.step = step or (lambda _name: None)
        self.ops = load_operators()
        self.n_ops = len(self.ops)
        self.op_names = [o.id for o in self.ops] + list(UNKNOWN_OPERATORS)
        # per operator code (registry, then unknown operators); "no last day" is day 10**6
        nu = len(UNKNOWN_OPERATORS)
        self.op_style = np.array([o.style for o in self.ops] + [ST_JST] * nu)
        self.op_first_kind = np.array([o.kinds[0] for o in self.ops] + [PURCHASE] * nu)
        self.op_both = np.array([len(o.kinds) == 2 for o in self.ops] + [False] * nu)
        self.op_batches = np.array([o.batches for o in self.ops] + [False] * nu)
        self.op_last = np.array([10**6 if o.last is None else o.last for o in self.ops]
                                + [10**6] * nu)
        self.op_opens = np.array([o.opens for o in self.ops] + [0] * nu)
        self.salt = int(self.rng.integers(0, 2**63))
        self.notes: list[str] = list(STORES)
        self.scenarios = (not clean and users >= SCENARIO_MIN_USERS
                          and transactions >= SCENARIO_MIN_TRANSACTIONS)
        self.ws_day = int(jst_day(CAMPAIGN.window_start))
        self.we_day = int(jst_day(CAMPAIGN.window_end))

    # ------------------------------------------------------------------ small samplers
    def _tod(self, n: int) -> np.ndarray:
        """Time of day (µs after JST midnight) with a daily rhythm."""
        cdf = np.cumsum(HOUR_WEIGHTS) / HOUR_WEIGHTS.sum()
        hour = np.minimum(np.searchsorted(cdf, self.rng.random(n), side="right"), 23)
        return hour.astype(np.int64) * HOUR + self.rng.integers(0, 3600, n) * S

    def _upload_delay(self, occurred: np.ndarray, op: np.ndarray) -> np.ndarray:
        """Operators upload seconds to minutes after the fact, card issuers in batches."""
        n = len(occurred)
        quick = np.clip(self.rng.lognormal(np.log(20), 1.2, n), 1, 1800).astype(np.int64) * S
        batch_at = (occurred // (10 * MINUTE) + 1) * (10 * MINUTE) - occurred
        batched = batch_at + self.rng.integers(5, 120, n) * S
        return np.where(self.op_batches[op], batched, quick)

    def _apply_days(self, n: int) -> np.ndarray:
        """Application days: launch rush in July 2020, a second wave when points start
        (September 2020), a steady trickle, and a last-minute rush in September 2021."""
        d0, d1 = day_of(date(2020, 7, 1)), day_of(date(2021, 9, 30))
        d = np.arange(d1 - d0 + 1, dtype=np.float64)
        sept = self.ws_day - d0
        w = (1.0 + 6 * np.exp(-d / 25) + 3 * np.exp(-np.abs(d - sept) / 10)
             + 2.5 * np.exp(-(d[-1] - d) / 20))
        return d0 + self.rng.choice(len(d), size=n, p=w / w.sum())

    def _other_kind_for(self, op: np.ndarray) -> np.ndarray:
        """An earning kind of ``op`` (random one for operators earning on both)."""
        k = self.op_first_kind[op]
        flip = self.op_both[op] & (self.rng.random(len(op)) < 0.5)
        return np.where(flip, 1 - k, k)

    # ---------------------------------------------------------------------- people
    def people(self) -> None:
        U, rng = self.U, self.rng
        self.key_codes = _unique_codes(rng, U, 62**8)
        w = np.array([o.weight for o in self.ops])
        op = rng.choice(self.n_ops, size=U, p=w / w.sum()).astype(np.int64)
        share = np.array([o.charge_share for o in self.ops])[op]
        earn = np.where(self.op_both[op], np.where(rng.random(U) < share, CHARGE, PURCHASE),
                        self.op_first_kind[op])
        sends = np.array([o.sends_earn_on for o in self.ops])[op]
        day = self._apply_days(U)
        opens = self.op_opens[op]
        early = day < opens
        day[early] = opens[early] + rng.integers(0, 45, int(early.sum()))
        # nobody sensible applies to an operator in its final month
        limit = self.op_last[op] - 30
        over = day > limit
        day[over] = rng.integers(opens[over], np.maximum(limit[over], opens[over] + 1))
        applied = day_start(day) + self._tod(U)
        status = np.zeros(U, dtype=np.int64)
        if not self.clean and U >= 50:
            u = rng.random(U)
            status[u < 0.006] = NEVER
            closed = (u >= 0.006) & (u < 0.008)
            status[closed] = CLOSED
            applied[closed] = (CAMPAIGN.enroll_end
                               + rng.integers(0, 20 * 86400, int(closed.sum())) * S)
        self.n_scenario_people = len(SCENARIO_PEOPLE) if self.scenarios else 0
        status[U - self.n_scenario_people:] = SCENARIO
        self.op, self.earn, self.sends, self.applied, self.status = op, earn, sends, applied, status
        self.enr_recv = applied + rng.integers(2, 1200, U) * S
        # people who spend past the cap; in clean (benchmark) data only a few percent
        self.big = rng.random(U) < (0.03 if self.clean else 0.35)
        # File order is received_at plus a per-person lag of up to 90 s (operators'
        # gateways differ), which interleaves people a little but can never reorder one
        # person's records.
        self.jitter = rng.integers(0, 90, U) * S

    def enrollments(self) -> tuple[_Enrs, list[dict[str, Any]]]:
        rng = self.rng
        main = np.flatnonzero((self.status == OK) | (self.status == CLOSED))
        n = len(main)
        op = self.op[main].copy()
        earn = np.where(self.sends[main], self.earn[main], -1)
        applied = self.applied[main]
        recv = self.enr_recv[main].copy()
        parts = []
        specials: list[dict[str, Any]] = []
        if not self.clean and n:
            u = rng.random(n)
            ok = self.status[main] == OK
            both = self.op_both[op]
            # operators re-send an application they already sent
            dup = ok & (u < 0.010)
            # people trying to switch service; the choice cannot be changed
            sw = ok & (u >= 0.010) & (u < 0.014)
            # both-kind operator forgot earn_on / single-kind operator sent the wrong one
            miss = ok & both & (u >= 0.014) & (u < 0.019)
            wrong = ok & ~both & (u >= 0.019) & (u < 0.0205)
            # application to a service outside the programme (the person's whole activity)
            unk = ok & (u >= 0.0205) & (u < 0.021)
            fixed_later = rng.random(n) < 0.7
            bad_earn = miss | wrong
            earn[miss] = -1
            earn[wrong] = 1 - self.op_first_kind[op[wrong]]
            unfixed = bad_earn & ~fixed_later
            self.status[main[unfixed]] = UNFIXED
            pu = main[unk]
            self.op[pu] = self.n_ops + rng.integers(0, len(UNKNOWN_OPERATORS), len(pu))
            self.status[pu] = UNFIXED
            op[unk] = self.op[pu]
            # received_at is optional; some operators leave it out. Only for early
            # applicants, whose spending cannot precede the application in stream time.
            omit = ok & (u >= 0.021) & (applied < CAMPAIGN.window_start - DAY) & (
                rng.random(n) < 0.05)
            recv[omit] = NO_TIME

            idx = np.flatnonzero(dup)
            parts.append(_Enrs(main[idx], op[idx], earn[idx], applied[idx],
                               recv[idx] + rng.integers(300, 3 * 86400, len(idx)) * S))
            idx = np.flatnonzero(sw)
            new_op = (op[idx] + 1 + rng.integers(0, self.n_ops - 1, len(idx))) % self.n_ops
            new_applied = np.minimum(applied[idx] + rng.integers(1, 60, len(idx)) * DAY,
                                     CAMPAIGN.enroll_end - HOUR)
            new_applied = np.maximum(new_applied, applied[idx] + MINUTE)
            new_earn = np.where(np.array([o.sends_earn_on for o in self.ops])[new_op],
                                self._other_kind_for(new_op), -1)
            parts.append(_Enrs(main[idx], new_op, new_earn, new_applied,
                               new_applied + rng.integers(2, 1200, len(idx)) * S))
            idx = np.flatnonzero(bad_earn & fixed_later)
            fixed_earn = np.where(self.sends[main[idx]], self.earn[main[idx]], -1)
            parts.append(_Enrs(main[idx], op[idx], fixed_earn, applied[idx],
                               recv[idx] + rng.integers(300, 7200, len(idx)) * S))
            # tried before the operator opened for selection, succeeded later
            late_open = ok & (self.op_opens[op] > day_of(date(2020, 7, 1))) & (
                rng.random(n) < 0.05) & (recv != NO_TIME)
            idx = np.flatnonzero(late_open)
            too_soon = (day_start(self.op_opens[op[idx]] - rng.integers(1, 20, len(idx)))
                        + self._tod(len(idx)))
            too_soon = np.minimum(too_soon, applied[idx] - HOUR)
            parts.append(_Enrs(main[idx], op[idx], earn[idx], too_soon,
                               too_soon + rng.integers(2, 1200, len(idx)) * S))
            # broken first attempts, fixed a few minutes later
            cand = np.flatnonzero(ok & ~bad_earn & ~unk & (recv != NO_TIME))
            k = min(len(cand), int(0.003 * n))
            for i in rng.choice(cand, size=k, replace=False) if k else []:
                specials.append(self._broken_enrollment(
                    int(main[i]), int(op[i]), int(earn[i]), int(applied[i]),
                    int(recv[i]) - int(rng.integers(10, 1200)) * S))
        base = _Enrs(main, op, earn, applied, recv)
        return _Enrs.concat([base, *parts]), specials

    def _broken_enrollment(self, person: int, op: int, earn: int, applied: int,
                           recv: int) -> dict[str, Any]:
        rng = self.rng
        style = int(self.op_style[op])
        rec: dict[str, Any] = {
            "mykey_id": self.mykey(person), "operator_id": self.op_names[op],
            "applied_at": format_ts(applied, style),
            "earn_on": KIND_NAMES[earn] if earn >= 0 else None,
            "received_at": format_ts(recv, style)}
        what = int(rng.integers(0, 8))
        if what == 0:
            rec["note"] = individual_number(rng, valid=True)
        elif what == 1:
            rec["mykey_id"] = rec["mykey_id"][:7].lower()
        elif what == 2:
            rec["applied_at"] = format_ts(applied, ST_NO_OFFSET)
        elif what == 3:
            rec["earn_on"] = "Charge" if earn != PURCHASE else "both"
        elif what == 4:
            rec["operator_id"] = None
        elif what == 5:
            rec["mykey_id"] = rec["mykey_id"][:4] + "-" + rec["mykey_id"][4:7]
        elif what == 6:
            rec = {"_raw": orjson.dumps({k: v for k, v in rec.items() if v is not None}
                                        ).decode()[:-12]}
        else:
            rec = {"_raw": orjson.dumps([rec["mykey_id"], rec["operator_id"]]).decode()}
        rec["_person"], rec["_recv"] = person, recv
        return rec

    def mykey(self, person: int) -> str:
        v, out = int(self.key_codes[person]), []
        for _ in range(8):
            v, r = divmod(v, 62)
            out.append(chr(B62[r]))
        return "".join(reversed(out))

    # ---------------------------------------------------------------- transactions
    def transactions(self) -> tuple[_Txns, list[dict[str, Any]]]:
        rng, M = self.rng, self.M
        scen_txns = scenario_transactions() if self.scenarios else 0
        if self.clean:
            n_ref = M // 50
            n_retry = n_conf = n_var = 0
        else:
            n_ref = int(0.025 * M)
            n_retry, n_conf, n_var = int(0.004 * M), int(0.0005 * M), int(0.0015 * M)
        B = M - n_ref - n_retry - n_conf - n_var - scen_txns
        base = self._base(B)
        self.step("anomalies")
        late = np.zeros(B, dtype=np.bool_)
        if self.clean:
            self._finish_times(base)
        else:
            late = self._anomalies(base)
        self.step("refunds")
        usable = ~late & (base.op < self.n_ops) & (base.amount >= 1) & (
            base.amount <= CAMPAIGN.max_amount)
        refunds = self._refunds(base, usable, n_ref)
        parts = [base, refunds]
        if n_retry:
            src = rng.integers(0, B + n_ref, n_retry)
            both = _Txns.concat([base, refunds])
            r = both.take(src)
            r.received = r.received + rng.integers(30, 4 * 3600, n_retry) * S
            parts.append(r)
        cand = np.flatnonzero(usable)
        if n_conf and len(cand):
            c = base.take(rng.choice(cand, size=n_conf))
            delta = rng.integers(1, 500, n_conf) * np.where(rng.random(n_conf) < 0.5, -1, 1)
            c.amount = np.where(c.amount + delta >= 1, c.amount + delta, c.amount - delta)
            c.received = c.received + rng.integers(3600, 2 * 86400, n_conf) * S
            parts.append(c)
        specials: list[dict[str, Any]] = []
        if n_var:
            pool = _Txns.concat(parts[:2])
            for i in rng.integers(0, len(pool), n_var):
                specials.append(self._broken_transaction(pool, int(i)))
        return _Txns.concat(parts), specials

    def _base(self, B: int) -> _Txns:
        rng = self.rng
        ok_enrolled = (self.status == OK) | (self.status == UNFIXED)
        start = np.where(ok_enrolled, np.maximum(self.ws_day, jst_day(self.applied)),
                         self.ws_day)
        end = np.minimum(self.we_day, self.op_last[self.op] + 1)
        avail = np.clip(end - start, 0, None)
        w = rng.lognormal(0.0, 0.8, self.U) * avail.astype(np.float64) ** 0.8
        # heavy spenders also pay more often, which leaves others a few thousand yen a time
        w *= np.where(self.big, 2.0 if self.clean else 4.0, 1.0)
        w[(self.status == CLOSED) | (self.status == SCENARIO)] = 0.0
        if B > 0 and w.sum() <= 0:
            raise ValueError("no user can spend: increase --users")
        counts = rng.multinomial(B, w / w.sum()) if B > 0 else np.zeros(self.U, np.int64)
        person = np.repeat(np.arange(self.U, dtype=np.int64), counts)
        self.counts = counts
        self.first_row = np.cumsum(counts) - counts
        day = start[person] + (rng.random(B) * avail[person]).astype(np.int64)
        occurred = day_start(day) + self._tod(B)
        # Spending on the application day before the application itself is fine, but
        # keep it within 16 h of it: a streaming engine waits 24 h of stream time for
        # the enrollment and must reach the same decision as the offline one.
        lo = np.where(ok_enrolled, self.applied - 16 * HOUR, np.iinfo(np.int64).min)[person]
        end_us = day_start(end[person]) - S
        soon = occurred < lo
        occurred[soon] = np.minimum(lo[soon] + rng.integers(0, 16 * 3600, int(soon.sum())) * S,
                                    end_us[soon])
        op = self.op[person]
        kind = self.earn[person].copy()
        # log-normal yen amounts; people who do not reach the cap get a spending budget
        a = rng.lognormal(np.log(2500), 0.9, B)
        total = np.bincount(person, weights=a, minlength=self.U)
        budget = rng.uniform(500 if self.clean else 2000, 19_500, self.U)
        factor = np.minimum(1.0, budget / np.maximum(total, 1.0))
        a = np.where(self.big[person], a, a * factor[person])
        charge = kind == CHARGE
        unit = np.where(a >= 2000, 1000, 100)
        round_charge = charge & (rng.random(B) < 0.75)   # top-ups are round sums
        amt = np.where(round_charge, np.maximum(np.floor(a / unit) * unit, 100), np.floor(a))
        large = ~charge & (rng.random(B) < (0.001 if self.clean else 0.002))
        amt[large] *= rng.lognormal(np.log(20), 0.8, int(large.sum()))
        amount = np.clip(amt, 1, CAMPAIGN.max_amount).astype(np.int64)
        return _Txns(person, op, kind, amount, occurred, np.zeros(B, np.int64),
                     np.arange(B, dtype=np.int64), np.full(B, -1, np.int64),
                     np.full(B, -1, np.int64))

    def _finish_times(self, t: _Txns) -> None:
        ms = self.op_style[t.op] == ST_Z_MS
        t.occurred[ms] += self.rng.integers(0, 1000, int(ms.sum())) * 1000
        t.received = t.occurred + self._upload_delay(t.occurred, t.op)

    def _anomalies(self, t: _Txns) -> np.ndarray:
        """Rejectable-but-realistic behaviour, applied in place; returns the LATE mask."""
        rng, B = self.rng, len(t)
        p = t.person
        applied = self.applied[p]
        # early applicants trying the service before points start
        early = (applied < CAMPAIGN.window_start) & (rng.random(B) < 0.015)
        span = CAMPAIGN.window_start - applied[early]
        t.occurred[early] = applied[early] + (rng.random(int(early.sum())) * span).astype(np.int64)
        # ~10 % of people spend in the hours before they apply (BEFORE_APPLICATION when
        # that is the previous JST day)
        pre = ((self.status == OK) | (self.status == UNFIXED)) & (rng.random(self.U) < 0.10)
        rows = [self.first_row[pre & (self.counts >= 1)]]
        second = pre & (self.counts >= 2) & (rng.random(self.U) < 0.5)
        rows.append(self.first_row[second] + 1)
        r = np.concatenate(rows)
        t.occurred[r] = self.applied[t.person[r]] - rng.integers(60, 16 * 3600, len(r)) * S
        # after the campaign, and after an operator's own last day
        ended = self.op_last[t.op] < 10**6
        after = ~ended & (rng.random(B) < 0.002)
        t.occurred[after] = CAMPAIGN.window_end + rng.integers(0, 25 * 86400, int(after.sum())) * S
        past = ended & (rng.random(B) < 0.08)
        lo = day_start(self.op_last[t.op[past]] + 1)
        t.occurred[past] = lo + (rng.random(int(past.sum())) * (CAMPAIGN.window_end - lo)
                                 ).astype(np.int64)
        # multi-service users: another operator reports with their MyKey ID
        other = (t.op < self.n_ops) & (rng.random(B) < 0.004)
        new_op = (t.op[other] + 1 + rng.integers(0, self.n_ops - 1, int(other.sum()))) % self.n_ops
        t.op[other] = new_op
        t.kind[other] = self._other_kind_for(new_op)
        # the non-chosen kind (operators earning on both report both)
        flip = rng.random(B) < np.where(self.op_both[t.op], 0.03, 0.002)
        t.kind[flip] = 1 - t.kind[flip]
        unknown = rng.random(B) < 0.001
        t.op[unknown] = self.n_ops + rng.integers(0, len(UNKNOWN_OPERATORS), int(unknown.sum()))
        bad = np.flatnonzero(rng.random(B) < 0.0003)
        choice = rng.integers(0, 3, len(bad))
        t.amount[bad] = np.select(
            [choice == 0, choice == 1],
            [0, -t.amount[bad]],
            CAMPAIGN.max_amount + rng.integers(1, 1_000_000, len(bad)))
        self._finish_times(t)
        # a final batch uploaded after the acceptance deadline
        late = (t.occurred >= jst_us(2021, 8, 15)) & (rng.random(B) < 0.003)
        t.received[late] = CAMPAIGN.accept_end + rng.integers(0, 10 * 86400, int(late.sum())) * S
        # memo fields: store names, and 12-digit order numbers that are *not* valid
        # Individual Numbers (a detector must check the check digit)
        u = rng.random(B)
        store = u < 0.02
        t.note[store] = rng.integers(0, len(STORES), int(store.sum()))
        order_no = np.flatnonzero(u > 1 - 0.0005)
        for i in order_no:
            t.note[i] = len(self.notes)
            self.notes.append(individual_number(rng, valid=False))
        return late

    def _refunds(self, base: _Txns, usable: np.ndarray, n_ref: int) -> _Txns:
        rng = self.rng
        cand = np.flatnonzero(usable)
        k = min(n_ref, len(cand))
        o = np.sort(rng.choice(cand, size=k, replace=False)) if k else np.zeros(0, np.int64)
        if k < n_ref:   # too few originals: the rest refund something that never existed
            o = np.concatenate([o, rng.integers(0, max(len(base), 1), n_ref - k)])
        r = base.take(o)
        original_amount = r.amount.copy()
        r.kind[:] = REFUND
        r.orig = base.seq[o]
        r.note[:] = -1
        r.seq = len(base) + np.arange(n_ref, dtype=np.int64)
        delay = np.clip(rng.lognormal(np.log(2 * 86400), 1.0, n_ref), 3600, 60 * 86400)
        delay = np.minimum(delay.astype(np.int64) * S,
                           CAMPAIGN.accept_end - 2 * DAY - r.occurred)
        r.occurred = r.occurred + np.maximum(delay, HOUR)
        partial = (rng.random(n_ref) >= 0.4) & (r.amount >= 2)
        r.amount = np.where(partial, rng.integers(1, np.maximum(r.amount, 2)), r.amount)
        r.received = r.occurred + self._upload_delay(r.occurred, r.op)
        if self.clean:
            return r
        u = rng.random(n_ref)
        u[k:] = 0.13   # the filler refunds are "never existed" ones
        exceed = u < 0.02
        r.amount[exceed] = original_amount[exceed] + rng.integers(
            1, np.maximum(original_amount[exceed] // 2, 1) + 1)
        # refunds that overtake their original (the original's batch was slow); never by
        # more than 12 h so that 24 h of parking in the stream finds the original
        early = np.flatnonzero((u >= 0.02) & (u < 0.12))
        oe = o[early]
        base.received[oe] = base.occurred[oe] + rng.integers(190 * 60, 10 * 3600, len(oe)) * S
        r.received[early] = base.received[oe] - rng.integers(5, 3 * 3600, len(oe)) * S
        r.occurred[early] = r.received[early] - rng.integers(1, 300, len(oe)) * S
        missing = (u >= 0.12) & (u < 0.14)
        r.orig[missing] = len(base) + n_ref + 1000 + np.arange(int(missing.sum()))
        return r

    def _broken_transaction(self, pool: _Txns, i: int) -> dict[str, Any]:
        """A broken copy of a good record, sent a little before the good one."""
        rng = self.rng
        op = int(pool.op[i])
        style = int(self.op_style[op])
        rec: dict[str, Any] = {
            "txn_id": self.txn_id(int(pool.seq[i])), "operator_id": self.op_names[op],
            "mykey_id": self.mykey(int(pool.person[i])), "kind": KIND_NAMES[pool.kind[i]],
            "amount": int(pool.amount[i]), "occurred_at": format_ts(int(pool.occurred[i]), style),
            "original_txn_id": self.txn_id(int(pool.orig[i])) if pool.orig[i] >= 0 else None,
            "received_at": None}
        recv = int(pool.received[i]) - int(rng.integers(10, 1200)) * S
        rec["received_at"] = format_ts(recv, style)
        what = int(rng.integers(0, 12))
        if what == 0:
            rec["note"] = individual_number(rng, valid=True)
        elif what == 1:
            rec["kind"] = ["payment", "Purchase", "", "chargeback"][int(rng.integers(0, 4))]
        elif what == 2:
            rec["occurred_at"] = format_ts(int(pool.occurred[i]), ST_NO_OFFSET)
        elif what == 3:
            rec["mykey_id"] = rec["mykey_id"][:7].lower()
        elif what == 4:
            rec["txn_id"] = rec["txn_id"].replace("-", "#")
        elif what == 5:
            rec[["mykey_id", "occurred_at", "kind", "amount"][int(rng.integers(0, 4))]] = None
        elif what == 6:
            rec["kind"], rec["original_txn_id"] = "refund", None
        elif what in (7, 8, 9):
            body = {k: v for k, v in rec.items() if v is not None}
            if what == 7:
                body["amount"] = str(body.get("amount", 1000))
            elif what == 8:   # not an integer: INVALID_AMOUNT, not MALFORMED
                body["amount"] = body.get("amount", 1000) + 0.5
            else:
                body["amount"] = True
            rec = {"_raw": orjson.dumps(body).decode()}
        elif what == 10:
            rec = {"_raw": orjson.dumps({k: v for k, v in rec.items() if v is not None}
                                        ).decode()[:-9]}
        else:
            rec = {"_raw": ["[]", "null", '"purchase"', "42"][int(rng.integers(0, 4))]}
        rec["_person"], rec["_recv"] = int(pool.person[i]), recv
        return rec

    def txn_id(self, seq: int) -> str:
        v = int(_mix64(np.array([seq]), self.salt)[0])
        out = []
        for _ in range(13):
            v, r = divmod(v, 36)
            out.append(chr(B36[r]))
        return "tx-" + "".join(reversed(out))

    # ------------------------------------------------------------------- tables
    def txn_table(self, t: _Txns, specials: list[dict[str, Any]]) -> pa.Table:
        self.step("ordering transactions")
        key = t.received + self.jitter[t.person]
        order = np.argsort(key)
        t = t.take(order)
        key = key[order]
        n = len(t)
        keys = self.key_array()
        ids = radix_strings(_mix64(t.seq, self.salt), 13, B36, b"tx-")
        has_orig = t.orig >= 0
        origs = radix_strings(_mix64(t.orig, self.salt), 13, B36, b"tx-", valid=has_orig)
        cols: dict[str, pa.Array] = {
            "txn_id": ids,
            "operator_id": pa.array(self.op_names).take(pa.array(t.op)),
            "mykey_id": keys.take(pa.array(t.person)),
            "kind": pa.array(KIND_NAMES).take(pa.array(t.kind)),
            "amount": pa.array(t.amount, type=pa.int64()),
            "occurred_at": self._times(t.occurred, t.op),
            "original_txn_id": origs,
            "received_at": self._times(t.received, t.op),
        }
        if not self.clean:
            has_note = t.note >= 0
            cols["note"] = pa.array(self.notes).take(
                pa.array(np.where(has_note, t.note, 0), mask=~has_note))
            cols["_raw"] = pa.nulls(n, pa.string())
        return self._with_specials(pa.table(cols), key, specials)

    def _with_specials(self, table: pa.Table, key: np.ndarray,
                       specials: list[dict[str, Any]]) -> pa.Table:
        if not specials:
            return table
        sp_key = np.array([s["_recv"] + self.jitter[s["_person"]] for s in specials],
                          dtype=np.int64)
        both = pa.concat_tables([table, _specials_table(specials, table.schema)])
        return both.take(pa.array(merge_order(key, sp_key)))

    def enr_table(self, e: _Enrs, specials: list[dict[str, Any]]) -> pa.Table:
        key = np.where(e.received != NO_TIME, e.received, e.applied) + self.jitter[e.person]
        order = np.argsort(key)
        e = e.take(order)
        key = key[order]
        n = len(e)
        has_earn = e.earn >= 0
        has_recv = e.received != NO_TIME
        cols: dict[str, pa.Array] = {
            "mykey_id": self.key_array().take(pa.array(e.person)),
            "operator_id": pa.array(self.op_names).take(pa.array(e.op)),
            "applied_at": self._times(e.applied, e.op),
            "earn_on": pa.array(KIND_NAMES).take(pa.array(np.where(has_earn, e.earn, 0),
                                                          mask=~has_earn)),
            "received_at": self._times(e.received, e.op, valid=has_recv),
        }
        if not self.clean:
            cols["note"] = pa.nulls(n, pa.string())
            cols["_raw"] = pa.nulls(n, pa.string())
        return self._with_specials(pa.table(cols), key, specials)

    def key_array(self) -> pa.Array:
        if not hasattr(self, "_keys"):
            self._keys = radix_strings(self.key_codes, 8, B62)
        return self._keys

    def _times(self, us: np.ndarray, op: np.ndarray, valid: np.ndarray | None = None
               ) -> pa.Array:
        if self.clean:
            return pa.array(us, type=pa.timestamp("us", tz="UTC"),
                            mask=None if valid is None else ~valid)
        style = self.op_style[op]
        if valid is not None:
            style = np.where(valid, style, ST_NULL)
        return rfc3339(np.where(style == ST_NULL, 0, us), style)


def _specials_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.table(cols, schema=schema)



# ------------------------------------------------------------------------ public API

def scenario_records(users: int, transactions: int, seed: int = 2020) -> list[Rec]:
    """The scenario records mixed into a default-mode run, with the outcome each one
    should get (``Rec.expect``); empty when the run is too small for them."""
    g = _Generator(users, transactions, seed, clean=False)
    if not g.scenarios:
        return []
    g.people()
    base_person = g.U - len(SCENARIO_PEOPLE)
    return stories(seed, g.ops, lambda i: g.mykey(base_person + i))


def _generate(users: int, transactions: int, seed: int, clean: bool,
              step: Step | None = None) -> tuple[pa.Table, pa.Table]:
    g = _Generator(users, transactions, seed, clean, step)
    g.step("people")
    g.people()
    g.step("enrollments")
    enr, enr_specials = g.enrollments()
    g.step("transactions")
    txn, txn_specials = g.transactions()
    if g.scenarios:
        base_person = g.U - len(SCENARIO_PEOPLE)
        names = {w: i for i, w in enumerate(SCENARIO_PEOPLE)}
        for r in stories(g.seed, g.ops, lambda i: g.mykey(base_person + i)):
            row = {**r.fields, "_person": base_person + names[r.who], "_recv": r.received}
            (enr_specials if r.kind == "enr" else txn_specials).append(row)
    g.step("enrollment table")
    enr_table = g.enr_table(enr, enr_specials)
    g.step("transaction table")
    txn_table = g.txn_table(txn, txn_specials)
    assert txn_table.num_rows == transactions, (txn_table.num_rows, transactions)
    return enr_table, txn_table


def generate_tables(users: int, transactions: int, seed: int = 2020,
                    clean: bool = False) -> tuple[pa.Table, pa.Table]:
    """Generate ``(enrollments, transactions)`` in file order.

    ``transactions`` rows exactly (counting JSON-only ``_raw`` rows); about one
    enrollment per user (never-enrolled people have none, re-sent and corrected
    applications add some).
    """
    return _generate(users, transactions, seed, clean)


_GENERATE_STEPS = 8


def _style_per_row(table: pa.Table) -> np.ndarray:
    codes = pc.index_in(table.column("operator_id"),
                        value_set=pa.array([o.id for o in load_operators()]))
    styles = np.array([o.style for o in load_operators()] + [ST_JST])
    idx = codes.fill_null(len(styles) - 1).to_numpy()
    return styles[idx]


def write_jsonl(table: pa.Table, path: str | Path,
                advance: Callable[[int], None] | None = None, chunk: int = 100_000) -> int:
    """Write one record per line; ``_raw`` rows verbatim, null fields left out.

    Typed (clean) timestamp columns are rendered with the operator's usual offset.
    Returns the number of lines.
    """
    names = [c for c in table.column_names if c != "_raw"]
    has_raw = "_raw" in table.column_names
    ts_cols = {c for c in names if pa.types.is_timestamp(table.schema.field(c).type)}
    styles = _style_per_row(table) if ts_cols else None
    dumps = orjson.dumps
    with open(path, "wb") as f:
        for start in range(0, table.num_rows, chunk):
            part = table.slice(start, chunk)
            n = part.num_rows
            cols = []
            for c in names:
                col = part.column(c).combine_chunks()
                if c in ts_cols:
                    assert styles is not None
                    us = col.cast(pa.int64()).fill_null(0).to_numpy()
                    st = np.where(col.is_valid().to_numpy(zero_copy_only=False),
                                  styles[start:start + n], ST_NULL)
                    col = rfc3339(us, st)
                cols.append(col.to_pylist())
            raw = part.column("_raw").to_pylist() if has_raw else [None] * n
            lines = []
            for r, values in zip(raw, zip(*cols, strict=True), strict=True):
                if r is not None:
                    lines.append(r.encode())
                else:
                    lines.append(dumps({k: v for k, v in zip(names, values, strict=True)
                                        if v is not None}))
            if lines:
                f.write(b"\n".join(lines))
                f.write(b"\n")
            if advance:
                advance(n)
    return table.num_rows


def parquet_view(table: pa.Table) -> pa.Table:
    """The rows and columns a Parquet file can hold: ``_raw`` rows and column dropped."""
    if "_raw" not in table.column_names:
        return table
    return table.filter(pc.is_null(table.column("_raw"))).drop_columns(["_raw"])


def write_parquet(table: pa.Table, path: str | Path,
                  advance: Callable[[int], None] | None = None,
                  row_group_size: int = 1 << 20) -> int:
    """Write the Parquet view of ``table``; returns the number of rows written."""
    t = parquet_view(table)
    with pq.ParquetWriter(str(path), t.schema, compression="snappy") as w:
        if t.num_rows == 0:
            w.write_table(t)
        for start in range(0, t.num_rows, row_group_size):
            part = t.slice(start, row_group_size)
            w.write_table(part, row_group_size=row_group_size)
            if advance:
                advance(part.num_rows)
    return t.num_rows


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    out = Path(args.out)
    fmt = args.format
    ext = "jsonl" if fmt == "jsonl" else "parquet"
    if args.users < 0 or args.transactions < 0:
        print("mynapoint generate: --users and --transactions must not be negative",
              file=sys.stderr)
        return 2
    if args.transactions and not args.users:
        print("mynapoint generate: transactions need at least one user (--users)",
              file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    big = args.users + args.transactions >= 200_000
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description:<28}"), BarColumn(),
                  TextColumn("{task.completed:>12,}/{task.total:,}"), TimeElapsedColumn(),
                  console=console, disable=not big, transient=False) as progress:
        gen = progress.add_task("generating", total=_GENERATE_STEPS)

        def step(name: str) -> None:
            progress.update(gen, advance=1, description=f"generating: {name}")

        try:
            enrollments, transactions = _generate(args.users, args.transactions, args.seed,
                                                  args.clean, step)
        except ValueError as e:
            print(f"mynapoint generate: {e}", file=sys.stderr)
            return 2
        progress.update(gen, completed=_GENERATE_STEPS, description="generated")
        t_gen = time.perf_counter() - t0
        written = {}
        writer = write_jsonl if fmt == "jsonl" else write_parquet
        for name, table in (("enrollments", enrollments), ("transactions", transactions)):
            path = out / f"{name}.{ext}"
            task = progress.add_task(f"writing {path.name}", total=table.num_rows)

            def advance(k: int, t: Any = task) -> None:
                progress.advance(t, k)

            written[name] = (writer(table, path, advance), table.num_rows, path)
    total = time.perf_counter() - t0
    for name, (n, generated, path) in written.items():
        # Parquet cannot hold the JSON-only records (invalid JSON, wrong JSON types)
        left_out = f"  ({generated - n:,} JSON-only records left out)" if generated > n else ""
        print(f"{name:<13} {n:>12,}  {path}{left_out}")
    mode = "clean" if args.clean else "realistic"
    print(f"seed {args.seed}, {mode}, generated in {t_gen:.1f} s, total {total:.1f} s")
    return 0

