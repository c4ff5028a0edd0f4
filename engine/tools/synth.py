"""Building blocks of the synthetic campaign data: operator traits, the operators'
timestamp renderings, id renderings, JST wall-clock helpers.

Shared by the bulk generator (:mod:`engine.tools.generate`) and its hand-written edge
scenarios (:mod:`engine.tools.scenarios`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from importlib import resources
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.rules.model import JST_OFFSET_US, KIND_NAMES, US_PER_DAY, US_PER_SECOND, Campaign
from engine.rules.strings import check_digit, datetime_heads, strings_from_matrix

S = US_PER_SECOND
MINUTE = 60 * S
HOUR = 3600 * S
DAY = US_PER_DAY

CAMPAIGN = Campaign()

CHARGE, PURCHASE, REFUND = 0, 1, 2

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

STORES = ("セブン-イレブン 新宿三丁目店", "ファミリーマート 梅田店", "ローソン 札幌駅前店",
           "イオン 幕張新都心", "ユニクロ 銀座店", "ビックカメラ 有楽町", "Amazon.co.jp",
           "JR東日本 券売機", "マツモトキヨシ 渋谷", "スターバックス 京都三条")

# Relative application intensity by JST hour; spending follows the same daily rhythm.
HOUR_WEIGHTS = np.array([2, 1, .6, .4, .3, .4, 1, 2.5, 4, 5, 6, 7,
                          9, 7, 6, 6, 7, 8, 9, 9, 8, 6, 4, 3], dtype=np.float64)

B36 = np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
B62 = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                     dtype=np.uint8)

TXN_FIELDS = ("txn_id", "operator_id", "mykey_id", "kind", "amount", "occurred_at",
              "original_txn_id", "received_at")
ENR_FIELDS = ("mykey_id", "operator_id", "applied_at", "earn_on", "received_at")


# --------------------------------------------------------------------------- helpers

def individual_number(rng: np.random.Generator, valid: bool) -> str:
    first = "".join(str(d) for d in rng.integers(0, 10, 11))
    c = check_digit(first)
    if not valid:
        c = (c + int(rng.integers(1, 10))) % 10
    return first + str(c)


def jst_us(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    """Instant (µs since epoch) of a JST wall-clock time."""
    return int(datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp() * S) - JST_OFFSET_US


def day_of(d: date) -> int:
    return (d - date(1970, 1, 1)).days


def day_start(day: Any) -> Any:
    """First instant of a JST day number (scalar or array)."""
    return day * DAY - JST_OFFSET_US


def format_ts(us: int, style: int) -> str:
    """One timestamp as the operators render it (see ``ST_*``): :func:`rfc3339` of one."""
    text = rfc3339(np.array([us], dtype=np.int64), np.array([style]))[0].as_py()
    assert text is not None, "ST_NULL renders no text"
    return text  # type: ignore[no-any-return]


def _pair_table(alphabet: np.ndarray) -> np.ndarray:
    """Two-character renderings of 0..base²-1 as little-endian uint16 (first character
    in the low byte, so a ``<u2`` matrix viewed as bytes reads left to right)."""
    base = len(alphabet)
    hi, lo = np.divmod(np.arange(base * base), base)
    return (alphabet[hi].astype("<u2") | (alphabet[lo].astype("<u2") << 8)).astype("<u2")


_PAIRS = {36: _pair_table(B36), 62: _pair_table(B62)}


def radix_strings(values: np.ndarray, width: int, alphabet: np.ndarray,
                   prefix: bytes = b"", valid: np.ndarray | None = None) -> pa.Array:
    """Fixed-width base-``len(alphabet)`` renderings of non-negative integers; rows
    where ``valid`` is false become nulls and cost nothing.

    Two digits per division and uint16 stores: 64-bit division has no SIMD, so halving
    the divisions is what makes ten million ids cheap.
    """
    if valid is not None and not valid.all():
        dense = radix_strings(values[valid], width, alphabet, prefix)
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
    return strings_from_matrix(mat)


_SUFFIXES = pa.array(["+09:00", "Z", "", "", None] + [f".{i:03d}Z" for i in range(1000)])
def rfc3339(us: np.ndarray, style: np.ndarray) -> pa.Array:
    """Vectorised :func:`format_ts`; ``ST_NULL`` rows become nulls.

    The engine's own heads (``engine.rules.strings.datetime_heads``) plus each
    operator's habit as a suffix.
    """
    n = len(us)
    style = np.asarray(style, dtype=np.int64)
    if n == 0:
        return pa.array([], type=pa.string())
    is_null = style == ST_NULL
    local = us + np.where((style == ST_JST) | (style == ST_NO_OFFSET), JST_OFFSET_US, 0)
    live = local[~is_null]
    mat, frac = datetime_heads(np.where(is_null, live[0] if len(live) else 0, local))
    head = strings_from_matrix(mat)
    suffix = np.where(style == ST_Z_MS, 5 + frac // 1000, style)
    return pc.binary_join_element_wise(head, _SUFFIXES.take(pa.array(suffix)), "")



# ---------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Op:
    id: str
    kinds: tuple[int, ...]
    opens: int                 # JST day number
    last: int | None           # JST day number, inclusive
    weight: float
    style: int
    sends_earn_on: bool
    batches: bool
    charge_share: float


def load_operators() -> tuple[Op, ...]:
    text = (resources.files("engine.config") / "defaults" / "operators.toml").read_text("utf-8")
    ops = []
    for o in tomllib.loads(text)["operators"]:
        kinds = tuple(KIND_NAMES.index(k) for k in o["earns_on"])
        last = o.get("last_day")
        ops.append(Op(
            id=o["id"], kinds=kinds, opens=day_of(o["selection_opens"]),
            last=day_of(last) if last is not None else None,
            weight=_POPULARITY.get(o["id"], 3.0), style=_STYLE.get(o["id"], ST_JST),
            sends_earn_on=len(kinds) == 2 or o["id"] in _SENDS_EARN_ON,
            batches=o["id"] in _BATCH_UPLOAD, charge_share=_CHARGE_SHARE.get(o["id"], 0.5)))
    return tuple(ops)


# ------------------------------------------------------------------------------ arrays
