"""Grants' output messages, written column-wise.

The worker writes one JSON message per grant, most of its outcomes. A dict per
grant and ``orjson.dumps`` of it cost about 2.5 µs, and even a byte template per
grant filled in Python about 1 µs; here one compiled pass writes a whole batch's
grants from the columns' Arrow buffers. Every field of a grant but two is known to
need no JSON escaping: ids validated against the schemas' patterns (``mykey_id``
``[0-9A-Za-z]{8}``, ``operator_id`` ``[a-z0-9][a-z0-9_-]*``, a granted ``txn_id``
``[0-9A-Za-z._:-]+``), integers, a kind name and an RFC 3339 instant; the campaign
id (configuration) is escaped once by orjson, and the source (an archive's replay
carries its original one) by :func:`_put_escaped`, as orjson escapes. The bytes are
exactly ``orjson.dumps`` of the grant's dict in schema order
(``tests/streams/test_grant_json.py`` checks that on arbitrary values).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import orjson
import pyarrow as pa

from engine.rules.model import KIND_NAMES
from engine.rules.strings import buffers, put_bytes

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_SHORT = np.zeros(256, dtype=np.uint8)  # the control characters JSON names by a letter
for _c, _e in zip(b"\b\t\n\f\r", b"btnfr", strict=True):
    _SHORT[_c] = _e


def _pieces(parts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings as one buffer and offsets (numba takes arrays, not lists of bytes)."""
    off = np.zeros(len(parts) + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(p) for p in parts])
    return np.frombuffer(b"".join(parts) or b"\0", dtype=np.uint8).copy(), off


@numba.njit(cache=True, nogil=True)
def _put_int(buf, at, v):  # type: ignore[no-untyped-def]
    if v < 0:
        buf[at] = 45  # '-'
        at += 1
        v = -v
    n = 1
    t = v
    while t >= 10:
        t //= 10
        n += 1
    for k in range(n - 1, -1, -1):
        buf[at + k] = 48 + v % 10
        v //= 10
    return at + n


@numba.njit(cache=True, nogil=True)
def _put_escaped(buf, at, data, a, b, short, hexd):  # type: ignore[no-untyped-def]
    """A string's UTF-8 bytes as the inside of a JSON string, escaped as orjson does:
    the quote and backslash, and control characters (named, else ``\\u00XX``)."""
    for k in range(a, b):
        c = data[k]
        if c == 34 or c == 92:
            buf[at] = 92
            buf[at + 1] = c
            at += 2
        elif c < 32:
            buf[at] = 92
            if short[c] != 0:
                buf[at + 1] = short[c]
                at += 2
            else:
                buf[at + 1] = 117  # 'u00'
                buf[at + 2] = 48
                buf[at + 3] = 48
                buf[at + 4] = hexd[c >> 4]
                buf[at + 5] = hexd[c & 15]
                at += 6
        else:
            buf[at] = c
            at += 1
    return at


@numba.njit(cache=True, nogil=True)
def _encode(lit, lo, ko, kd, oo, od, to, td, ao, ad, so, sd,  # type: ignore[no-untyped-def]
            kinds, amounts, points, cum, cap, short, hexd):
    n = len(kinds)
    fixed = lo[-1]
    bound = 0
    for i in range(n):
        bound += (fixed + 2 * (ko[i + 1] - ko[i] + oo[i + 1] - oo[i] + to[i + 1] - to[i])
                  + ao[i + 1] - ao[i] + 6 * (so[i + 1] - so[i]) + 3 * 20)
    buf = np.empty(bound, np.uint8)
    offsets = np.empty(n + 1, np.int64)
    at = 0
    for i in range(n):
        offsets[i] = at
        at = put_bytes(buf, at, lit, lo[0], lo[1])   # {"grant_id":"<campaign>/
        at = put_bytes(buf, at, od, oo[i], oo[i + 1])
        at = put_bytes(buf, at, lit, lo[1], lo[2])   # /
        at = put_bytes(buf, at, kd, ko[i], ko[i + 1])
        at = put_bytes(buf, at, lit, lo[1], lo[2])   # /
        at = put_bytes(buf, at, td, to[i], to[i + 1])
        at = put_bytes(buf, at, lit, lo[2], lo[3])   # ","campaign":...,"mykey_id":"
        at = put_bytes(buf, at, kd, ko[i], ko[i + 1])
        at = put_bytes(buf, at, lit, lo[3], lo[4])   # ","operator_id":"
        at = put_bytes(buf, at, od, oo[i], oo[i + 1])
        at = put_bytes(buf, at, lit, lo[4], lo[5])   # ","txn_id":"
        at = put_bytes(buf, at, td, to[i], to[i + 1])
        at = put_bytes(buf, at, lit, lo[5], lo[6])   # ","kind":"
        k = 15 + kinds[i]                       # the kind names follow the literals
        at = put_bytes(buf, at, lit, lo[k], lo[k + 1])
        at = put_bytes(buf, at, lit, lo[6], lo[7])   # ","amount":
        at = _put_int(buf, at, amounts[i])
        at = put_bytes(buf, at, lit, lo[7], lo[8])   # ,"points":
        at = _put_int(buf, at, points[i])
        at = put_bytes(buf, at, lit, lo[8], lo[9])   # ,"cumulative_points":
        at = _put_int(buf, at, cum[i])
        at = put_bytes(buf, at, lit, lo[9], lo[10])  # ,"capped":
        if cum[i] == cap:
            at = put_bytes(buf, at, lit, lo[13], lo[14])
        else:
            at = put_bytes(buf, at, lit, lo[14], lo[15])
        at = put_bytes(buf, at, lit, lo[10], lo[11])  # ,"occurred_at":"
        at = put_bytes(buf, at, ad, ao[i], ao[i + 1])
        at = put_bytes(buf, at, lit, lo[11], lo[12])  # ","source":"
        at = _put_escaped(buf, at, sd, so[i], so[i + 1], short, hexd)
        at = put_bytes(buf, at, lit, lo[12], lo[13])  # "}
    offsets[n] = at
    return buf, offsets


class GrantJson:
    def __init__(self, campaign_id: str, cap: int) -> None:
        camp = orjson.dumps(campaign_id)
        # the grant id opens with the campaign's escaped text (without its closing quote)
        self._lit, self._off = _pieces([
            b'{"grant_id":' + camp[:-1] + b"/", b"/",
            b'","campaign":' + camp + b',"mykey_id":"', b'","operator_id":"', b'","txn_id":"',
            b'","kind":"', b'","amount":', b',"points":', b',"cumulative_points":',
            b',"capped":', b',"occurred_at":"', b'","source":"', b'"}', b"true", b"false",
            *(k.encode() for k in KIND_NAMES)])
        self._cap = cap

    def encode(self, keys: pa.Array, operators: pa.Array, txn_ids: pa.Array,
               kinds: np.ndarray, amounts: np.ndarray, points: np.ndarray,
               cumulative: np.ndarray, occurred: pa.Array, sources: pa.Array) -> pa.Array:
        """One message per grant (a binary array), from parallel columns: Arrow strings
        for the ids, the RFC 3339 instant and the source, integers for the rest."""
        cols = [buffers(a)[:2] for a in (keys, operators, txn_ids, occurred, sources)]
        (ko, kd), (oo, od), (to, td), (ao, ad), (so, sd) = cols
        data, offsets = _encode(
            self._lit, self._off, ko, kd, oo, od, to, td, ao, ad, so, sd,
            np.asarray(kinds, np.int64), np.asarray(amounts, np.int64),
            np.asarray(points, np.int64), np.asarray(cumulative, np.int64), self._cap,
            _SHORT, _HEX)
        n = len(offsets) - 1
        return pa.Array.from_buffers(pa.large_binary(), n, [
            None, pa.py_buffer(offsets), pa.py_buffer(data[:offsets[n]])])


@functools.lru_cache(maxsize=16)
def grant_json(campaign_id: str, cap: int) -> GrantJson:
    """The encoder of a campaign's grants, one per campaign: the partitions' deciders
    share it, so a poll's grants of every partition are written in one call
    (engine.streams.shard.encode_grants)."""
    return GrantJson(campaign_id, cap)
