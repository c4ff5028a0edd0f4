"""Seeded, realistic synthetic campaign data: enrollments and transactions.

``mynapoint generate`` writes ``enrollments.<ext>`` and ``transactions.<ext>``. The library
API is :func:`generate_tables` plus :func:`write_jsonl` / :func:`write_parquet`.

Default mode models the real programme: people apply in waves from July 2020, mostly
before they spend, at realistically popular operators; spending is log-normal yen
amounts, a share of people reach the cap; operators upload in batches, retry, correct
amounts, send refunds (some before the original), send late files, and occasionally
send broken or forbidden data. Rejectable records stay at a few percent, and a fixed
set of hand-written *scenarios* (boundary instants, the UTC/JST date line, every
reason code of SETTLEMENT_RULES.md) is mixed in whenever there are at least
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
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.rules.model import JST_OFFSET_US, US_PER_DAY, US_PER_SECOND, Campaign

# is_individual_number is re-exported for the generator's own tests
from engine.rules.strings import check_digit, is_individual_number  # noqa: F401

S = US_PER_SECOND
MINUTE = 60 * S
HOUR = 3600 * S
DAY = US_PER_DAY
NO_TIME = -(2**63)

CAMPAIGN = Campaign()
SCENARIO_MIN_USERS = 40
SCENARIO_MIN_TRANSACTIONS = 400

CHARGE, PURCHASE, REFUND = 0, 1, 2
KIND_NAMES = ("charge", "purchase", "refund")

# Timestamp renderings. Each operator's system has its habit; the engine must treat
# all of them alike.
ST_JST, ST_Z, ST_Z_MS, ST_NO_OFFSET, ST_NULL = 0, 1, 2, 3, 4

# Generator-side operator traits keyed by id; the registry itself comes from the shipped
# operators.toml so that ids, kinds and dates cannot drift from it.
_POPULARITY = {"paypay": 30.0, "dbarai": 9.0, "aupay": 9.0, "rakuten-edy": 5.0,
               "suica": 9.0, "waon": 8.0, "nanaco": 6.0, "rakuten-card": 12.0,
               "smbc-card": 7.0, "kyash": 1.5, "yucho-pay": 1.5}
_STYLE = {"paypay": ST_Z, "aupay": ST_Z, "rakuten-card": ST_Z, "kyash": ST_Z_MS}
_SENDS_EARN_ON = {"suica", "smbc-card", "nanaco"}
_BATCH_UPLOAD = {"rakuten-card", "smbc-card", "nanaco"}   # card issuers: 10-minute batches
_CHARGE_SHARE = {"waon": 0.7, "kyash": 0.4}               # for operators earning on both
UNKNOWN_OPERATORS = ("merpay", "line-pay", "famipay", "origami-pay")

_STORES = ("セブン-イレブン 新宿三丁目店", "ファミリーマート 梅田店", "ローソン 札幌駅前店",
           "イオン 幕張新都心", "ユニクロ 銀座店", "ビックカメラ 有楽町", "Amazon.co.jp",
           "JR東日本 券売機", "マツモトキヨシ 渋谷", "スターバックス 京都三条")

# Relative application intensity by JST hour; spending follows the same daily rhythm.
_HOUR_WEIGHTS = np.array([2, 1, .6, .4, .3, .4, 1, 2.5, 4, 5, 6, 7,
                          9, 7, 6, 6, 7, 8, 9, 9, 8, 6, 4, 3], dtype=np.float64)

_B36 = np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
_B62 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                     dtype=np.uint8)
_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)

TXN_FIELDS = ("txn_id", "operator_id", "mykey_id", "kind", "amount", "occurred_at",
              "original_txn_id", "received_at")
ENR_FIELDS = ("mykey_id", "operator_id", "applied_at", "earn_on", "received_at")


# --------------------------------------------------------------------------- helpers

def _individual_number(rng: np.random.Generator, valid: bool) -> str:
    first = "".join(str(d) for d in rng.integers(0, 10, 11))
    c = check_digit(first)
    if not valid:
        c = (c + int(rng.integers(1, 10))) % 10
    return first + str(c)


def jst_us(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    """Instant (µs since epoch) of a JST wall-clock time."""
    return int(datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp() * S) - JST_OFFSET_US


def _day_of(d: date) -> int:
    return (d - date(1970, 1, 1)).days


def _day_start(day: Any) -> Any:
    """First instant of a JST day number (scalar or array)."""
    return day * DAY - JST_OFFSET_US


def _jst_day(us: Any) -> Any:
    return (us + JST_OFFSET_US) // DAY


def format_ts(us: int, style: int) -> str:
    """One timestamp as the operators render it (see ``ST_*``)."""
    local = us + (JST_OFFSET_US if style in (ST_JST, ST_NO_OFFSET) else 0)
    dt = datetime(1970, 1, 1) + timedelta(microseconds=local)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if style == ST_JST:
        return base + "+09:00"
    if style == ST_Z:
        return base + "Z"
    if style == ST_Z_MS:
        return f"{base}.{dt.microsecond // 1000:03d}Z"
    return base


def _strings_from_matrix(mat: np.ndarray) -> pa.Array:
    """A StringArray straight from a byte matrix (row i = string i), zero-copy.

    Python string objects are never created, which is what keeps ten million ids and
    timestamps within a second or two.
    """
    n, w = mat.shape
    offsets = np.arange(0, (n + 1) * w, w, dtype=np.int64)
    data = pa.py_buffer(np.ascontiguousarray(mat).reshape(-1))
    if offsets[-1] < 2**31:
        off32 = pa.py_buffer(offsets.astype(np.int32))
        return pa.Array.from_buffers(pa.string(), n, [None, off32, data])
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), data])


def _pair_table(alphabet: np.ndarray) -> np.ndarray:
    """Two-character renderings of 0..base²-1 as little-endian uint16 (first character
    in the low byte, so a ``<u2`` matrix viewed as bytes reads left to right)."""
    base = len(alphabet)
    hi, lo = np.divmod(np.arange(base * base), base)
    return (alphabet[hi].astype("<u2") | (alphabet[lo].astype("<u2") << 8)).astype("<u2")


_PAIRS = {36: _pair_table(_B36), 62: _pair_table(_B62)}


def _radix_strings(values: np.ndarray, width: int, alphabet: np.ndarray,
                   prefix: bytes = b"", valid: np.ndarray | None = None) -> pa.Array:
    """Fixed-width base-``len(alphabet)`` renderings of non-negative integers; rows
    where ``valid`` is false become nulls and cost nothing.

    Two digits per division and uint16 stores: 64-bit division has no SIMD, so halving
    the divisions is what makes ten million ids cheap.
    """
    if valid is not None and not valid.all():
        dense = _radix_strings(values[valid], width, alphabet, prefix)
        data = dense.buffers()[2]
        lengths = np.where(valid, len(prefix) + width, 0)
        offsets = np.zeros(len(values) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
        return pa.Array.from_buffers(pa.string(), len(values),
                                     [bitmap, pa.py_buffer(offsets), data],
                                     null_count=int(len(values) - valid.sum()))
    n, p = len(values), len(prefix)
    total = p + width
    assert total % 2 == 0, "prefix + width must be even"
    base = len(alphabet)
    pairs = _PAIRS[base]
    words = np.empty((total // 2, n), dtype="<u2")   # one contiguous row per column
    v = values.astype(np.uint64, copy=True)
    b2 = np.uint64(base * base)
    for k in range(total // 2 - 1, (p + 1) // 2 - 1, -1):
        v, r = np.divmod(v, b2)
        words[k] = pairs[r.astype(np.intp)]
    mat = np.ascontiguousarray(words.T).view(np.uint8)
    if p:
        mat[:, :p] = np.frombuffer(prefix, dtype=np.uint8)
    if p % 2:   # one digit shares a word with the prefix
        mat[:, p] = alphabet[(v % np.uint64(base)).astype(np.intp)]
    return _strings_from_matrix(mat)


_SUFFIXES = pa.array(["+09:00", "Z", "", "", None] + [f".{i:03d}Z" for i in range(1000)])
_TOD_TABLE: np.ndarray | None = None


def _tod_table() -> np.ndarray:
    """"HH:MM:SS" for every second of a day, as an (86400, 8) byte table."""
    global _TOD_TABLE
    if _TOD_TABLE is None:
        sec = np.arange(86400)
        t = np.empty((86400, 8), dtype=np.uint8)
        for col, v in ((0, sec // 3600), (3, sec // 60 % 60), (6, sec % 60)):
            t[:, col] = _DIGITS[v // 10]
            t[:, col + 1] = _DIGITS[v % 10]
        t[:, 2] = t[:, 5] = ord(":")
        _TOD_TABLE = t
    return _TOD_TABLE


def rfc3339(us: np.ndarray, style: np.ndarray) -> pa.Array:
    """Vectorised :func:`format_ts`; ``ST_NULL`` rows become nulls.

    Timestamps are assembled from a per-day and a per-second byte table (a campaign
    spans a few hundred days) plus a suffix: table lookups instead of digit arithmetic.
    """
    n = len(us)
    style = np.asarray(style, dtype=np.int64)
    if n == 0:
        return pa.array([], type=pa.string())
    is_null = style == ST_NULL
    local = us + np.where((style == ST_JST) | (style == ST_NO_OFFSET), JST_OFFSET_US, 0)
    days = local // DAY
    sod = local - days * DAY
    live = days[~is_null]
    d0 = int(live.min()) if len(live) else 0
    d1 = int(live.max()) if len(live) else 0
    days = np.where(is_null, d0, days) - d0
    dates = np.datetime_as_string(np.arange(d0, d1 + 1).astype("datetime64[D]"), unit="D")
    day_table = np.empty((d1 - d0 + 1, 11), dtype=np.uint8)
    day_table[:, :10] = np.char.encode(dates, "ascii").view(np.uint8).reshape(-1, 10)
    day_table[:, 10] = ord("T")
    mat = np.empty((n, 19), dtype=np.uint8)
    mat[:, :11] = day_table[days]
    mat[:, 11:] = _tod_table()[np.where(is_null, 0, sod // S)]
    head = _strings_from_matrix(mat)
    suffix = np.where(style == ST_Z_MS, 5 + sod // 1000 % 1000, style)
    return pc.binary_join_element_wise(head, _SUFFIXES.take(pa.array(suffix)), "")


def _mix64(x: np.ndarray, salt: int) -> np.ndarray:
    """A bijection on uint64 (xor-shift-multiply), so distinct sequence numbers give
    distinct, random-looking ids without any uniqueness check."""
    with np.errstate(over="ignore"):
        v = x.astype(np.uint64) ^ np.uint64(salt & 0xFFFFFFFFFFFFFFFF)
        v ^= v >> np.uint64(31)
        v *= np.uint64(0x7FB5D329728EA185)
        v ^= v >> np.uint64(27)
        v *= np.uint64(0x81DADEF4BC2DD44D)
        v ^= v >> np.uint64(33)
    return v


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


# ---------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class _Op:
    id: str
    kinds: tuple[int, ...]
    opens: int                 # JST day number
    last: int | None           # JST day number, inclusive
    weight: float
    style: int
    sends_earn_on: bool
    batches: bool
    charge_share: float


def _load_operators() -> tuple[_Op, ...]:
    text = (resources.files("engine.config") / "defaults" / "operators.toml").read_text("utf-8")
    ops = []
    for o in tomllib.loads(text)["operators"]:
        kinds = tuple(KIND_NAMES.index(k) for k in o["earns_on"])
        last = o.get("last_day")
        ops.append(_Op(
            id=o["id"], kinds=kinds, opens=_day_of(o["selection_opens"]),
            last=_day_of(last) if last is not None else None,
            weight=_POPULARITY.get(o["id"], 3.0), style=_STYLE.get(o["id"], ST_JST),
            sends_earn_on=len(kinds) == 2 or o["id"] in _SENDS_EARN_ON,
            batches=o["id"] in _BATCH_UPLOAD, charge_share=_CHARGE_SHARE.get(o["id"], 0.5)))
    return tuple(ops)


# ------------------------------------------------------------------------------ arrays

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
        self.ops = _load_operators()
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
        self.notes: list[str] = list(_STORES)
        self.scenarios = (not clean and users >= SCENARIO_MIN_USERS
                          and transactions >= SCENARIO_MIN_TRANSACTIONS)
        self.ws_day = int(_jst_day(CAMPAIGN.window_start))
        self.we_day = int(_jst_day(CAMPAIGN.window_end))

    # ------------------------------------------------------------------ small samplers
    def _tod(self, n: int) -> np.ndarray:
        """Time of day (µs after JST midnight) with a daily rhythm."""
        cdf = np.cumsum(_HOUR_WEIGHTS) / _HOUR_WEIGHTS.sum()
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
        d0, d1 = _day_of(date(2020, 7, 1)), _day_of(date(2021, 9, 30))
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
        applied = _day_start(day) + self._tod(U)
        status = np.zeros(U, dtype=np.int64)
        if not self.clean and U >= 50:
            u = rng.random(U)
            status[u < 0.006] = NEVER
            closed = (u >= 0.006) & (u < 0.008)
            status[closed] = CLOSED
            applied[closed] = (CAMPAIGN.enroll_end
                               + rng.integers(0, 20 * 86400, int(closed.sum())) * S)
        self.n_scenario_people = len(_SCENARIO_PEOPLE) if self.scenarios else 0
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
            late_open = ok & (self.op_opens[op] > _day_of(date(2020, 7, 1))) & (
                rng.random(n) < 0.05) & (recv != NO_TIME)
            idx = np.flatnonzero(late_open)
            too_soon = (_day_start(self.op_opens[op[idx]] - rng.integers(1, 20, len(idx)))
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
            rec["note"] = _individual_number(rng, valid=True)
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
            out.append(chr(_B62[r]))
        return "".join(reversed(out))

    # ---------------------------------------------------------------- transactions
    def transactions(self) -> tuple[_Txns, list[dict[str, Any]]]:
        rng, M = self.rng, self.M
        scen_txns = len(_scenario_transactions_preview()) if self.scenarios else 0
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
        start = np.where(ok_enrolled, np.maximum(self.ws_day, _jst_day(self.applied)),
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
        occurred = _day_start(day) + self._tod(B)
        # Spending on the application day before the application itself is fine, but
        # keep it within 16 h of it: a streaming engine waits 24 h of stream time for
        # the enrollment and must reach the same decision as the offline one.
        lo = np.where(ok_enrolled, self.applied - 16 * HOUR, np.iinfo(np.int64).min)[person]
        end_us = _day_start(end[person]) - S
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
        lo = _day_start(self.op_last[t.op[past]] + 1)
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
        t.note[store] = rng.integers(0, len(_STORES), int(store.sum()))
        order_no = np.flatnonzero(u > 1 - 0.0005)
        for i in order_no:
            t.note[i] = len(self.notes)
            self.notes.append(_individual_number(rng, valid=False))
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
            rec["note"] = _individual_number(rng, valid=True)
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
            out.append(chr(_B36[r]))
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
        ids = _radix_strings(_mix64(t.seq, self.salt), 13, _B36, b"tx-")
        has_orig = t.orig >= 0
        origs = _radix_strings(_mix64(t.orig, self.salt), 13, _B36, b"tx-", valid=has_orig)
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
            self._keys = _radix_strings(self.key_codes, 8, _B62)
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


# ----------------------------------------------------------------------- scenarios
#
# Hand-written stories around the rules' edges. Each record names the outcome the rules
# page prescribes (``expect``); scenario people are the last users, scenario txn_ids
# start with "edge:" so they can never collide with generated ones.

_SCENARIO_PEOPLE = ("dateline", "window_start", "not_open", "ended", "window_end",
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


def _scenario_transactions_preview() -> list[Rec]:
    return [r for r in _scenarios(None) if r.kind == "txn"]


def _scenarios(g: _Generator | None) -> list[Rec]:
    """All scenario records. With ``g`` None only their number matters (mykey_ids and the
    random Individual Numbers are placeholders)."""
    # a stream of its own, so that scenario_records() reproduces the generated values
    rng = np.random.default_rng([0 if g is None else g.seed, 0x65646765])
    ops = g.ops if g is not None else _load_operators()
    by_kinds = {k: [o for o in ops if o.kinds == k] for k in ((0,), (1,), (0, 1))}
    P, P2 = by_kinds[(1,)][0], by_kinds[(1,)][1]
    C = by_kinds[(0,)][0]
    BOTH = by_kinds[(0, 1)][0]
    LATE_OPEN = max(ops, key=lambda o: o.opens)
    ENDED = next((o for o in ops if o.last is not None), None)
    names = {w: i for i, w in enumerate(_SCENARIO_PEOPLE)}
    out: list[Rec] = []
    seq = iter(range(1, 10**6))

    def key(who: str) -> str:
        if g is None:
            return "AAAAAAAA"
        return g.mykey(g.U - len(_SCENARIO_PEOPLE) + names[who])

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
    op = LATE_OPEN if LATE_OPEN.opens <= int(_jst_day(ws)) else P
    ek = KIND_NAMES[op.kinds[-1]]
    enr(w, op.id, max(ws, int(_day_start(op.opens))), "OK", earn=ek if len(op.kinds) == 2
        else None, style=ST_Z)
    txn(w, op.id, ek, 3000, ws, "OK (window start is inclusive)", style=ST_Z)
    txn(w, op.id, ek, 2000, ws - S, "OUTSIDE_WINDOW", style=ST_Z)

    # applied the evening before the operator opened for selection, then again
    w = "not_open"
    op = LATE_OPEN
    ek = KIND_NAMES[op.kinds[-1]]
    earn = ek if len(op.kinds) == 2 else None
    enr(w, op.id, int(_day_start(op.opens)) - S, "SELECTION_NOT_OPEN", earn=earn)
    enr(w, op.id, int(_day_start(op.opens)) + 9 * HOUR, "OK", earn=earn)
    txn(w, op.id, ek, 4200, int(_day_start(op.opens)) + 30 * DAY + 13 * HOUR, "OK")

    # an operator that left the programme early
    w = "ended"
    if ENDED is not None and ENDED.last is not None:
        ek = KIND_NAMES[ENDED.kinds[0]]
        end = int(_day_start(ENDED.last + 1))
        enr(w, ENDED.id, max(jst_us(2020, 10, 5, 12), int(_day_start(ENDED.opens))), "OK",
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
    good = _individual_number(rng, valid=True)
    enr(w, C.id, app, "PERSONAL_NUMBER_FORBIDDEN (in mykey_id)", recv=app + 2 * S,
        mykey_id=good)
    enr(w, C.id, app, "PERSONAL_NUMBER_FORBIDDEN (in an extra field)", recv=app + 4 * S,
        note=_individual_number(rng, valid=True))
    enr(w, C.id, app, "OK")
    occ = jst_us(2020, 10, 3, 12)
    txn(w, C.id, ck, 1000, occ, "PERSONAL_NUMBER_FORBIDDEN (note)",
        note=_individual_number(rng, valid=True))
    txn(w, C.id, ck, 1000, occ + HOUR, "PERSONAL_NUMBER_FORBIDDEN (txn_id)",
        tid=_individual_number(rng, valid=True))
    txn(w, C.id, "refund", 1000, occ + 2 * HOUR, "PERSONAL_NUMBER_FORBIDDEN (original_txn_id)",
        orig=_individual_number(rng, valid=True))
    txn(w, C.id, ck, 1000, occ + 3 * HOUR, "OK (12 digits, wrong check digit)",
        note=_individual_number(rng, valid=False))
    txn(w, C.id, ck, 1000, occ + 4 * HOUR, "OK (extra field)", note=_STORES[0])
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


def scenario_records(users: int, transactions: int, seed: int = 2020) -> list[Rec]:
    """The scenario records mixed into a default-mode run, with the outcome each one
    should get (``Rec.expect``); empty when the run is too small for them."""
    g = _Generator(users, transactions, seed, clean=False)
    if not g.scenarios:
        return []
    g.people()
    return _scenarios(g)


# ------------------------------------------------------------------------ public API

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
        base_person = g.U - len(_SCENARIO_PEOPLE)
        names = {w: i for i, w in enumerate(_SCENARIO_PEOPLE)}
        for r in _scenarios(g):
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
                        value_set=pa.array([o.id for o in _load_operators()]))
    styles = np.array([o.style for o in _load_operators()] + [ST_JST])
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
