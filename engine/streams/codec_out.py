"""The JSON form of output records on the grants and rejections topics.

One JSON object per message, exactly the fields of ``schemas/grant.schema.json``
and ``schemas/rejection.schema.json``. The worker encodes with
:func:`grant_to_json` / :func:`rejection_to_json`; ``collect`` decodes with
:func:`grant_from_json` / :func:`rejection_from_json`, which are strict so that a
malformed outcome is noticed (counted) rather than half-read.

In rows, ``occurred_at`` is an integer of microseconds since the epoch (UTC),
the engine's clock; on the wire it is RFC 3339 in UTC with ``Z``.

>>> row = {"grant_id": "c/op/AB12cd34/t1", "campaign": "c", "mykey_id": "AB12cd34",
...        "operator_id": "op", "txn_id": "t1", "kind": "charge", "amount": 1000,
...        "points": 250, "cumulative_points": 250, "capped": False,
...        "occurred_at": 1_600_000_000_250_000, "source": "x.transactions/0/5#1"}
>>> data = grant_to_json(row)
>>> b'"occurred_at":"2020-09-13T12:26:40.250000Z"' in data
True
>>> grant_from_json(data) == row
True
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

import orjson

from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA

GRANT_FIELDS: tuple[str, ...] = tuple(GRANT_SCHEMA.names)
REJECTION_FIELDS: tuple[str, ...] = tuple(REJECTION_SCHEMA.names)

_US_PER_DAY = 86_400_000_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UTC = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?Z")
# numpy scalars arrive when a worker builds rows from arrays
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

_GRANT_STR = ("grant_id", "campaign", "mykey_id", "operator_id", "txn_id", "kind", "source")
_GRANT_INT = ("amount", "points", "cumulative_points")
_REJ_STR = ("record_type", "reason", "detail", "source")
_REJ_NULLABLE = ("txn_id", "operator_id", "mykey_id")


class OutputDecodeError(ValueError):
    """An output message is not a well-formed grant or rejection."""


def format_utc(us: int | datetime) -> str:
    """Microseconds since the epoch as RFC 3339 UTC; the fraction only when not zero.

    >>> format_utc(0), format_utc(-1)
    ('1970-01-01T00:00:00Z', '1969-12-31T23:59:59.999999Z')
    """
    if isinstance(us, datetime):
        if us.tzinfo is None:
            raise ValueError("occurred_at: a naive datetime has no defined instant")
        delta = us - datetime(1970, 1, 1, tzinfo=UTC)
        us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    days, rest = divmod(int(us), _US_PER_DAY)
    d = date.fromordinal(_EPOCH_ORDINAL + days)
    secs, frac = divmod(rest, 1_000_000)
    h, rem = divmod(secs, 3600)
    m, s = divmod(rem, 60)
    text = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{h:02d}:{m:02d}:{s:02d}"
    return f"{text}.{frac:06d}Z" if frac else text + "Z"


def parse_utc(text: str) -> int:
    """The inverse of :func:`format_utc`; only the UTC ``Z`` form the engine writes.

    >>> parse_utc("2020-09-13T12:26:40.25Z") == 1_600_000_000_250_000
    True
    """
    m = _UTC.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 UTC timestamp ending in Z: {text!r}")
    y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
    if h > 23 or mi > 59 or s > 59:
        raise ValueError(f"time of day out of range: {text!r}")
    days = date(y, mo, d).toordinal() - _EPOCH_ORDINAL
    frac = int((m.group(7) or "0").ljust(6, "0"))
    return days * _US_PER_DAY + ((h * 60 + mi) * 60 + s) * 1_000_000 + frac


def grant_to_json(row: dict[str, Any]) -> bytes:
    """One grant row (``occurred_at`` as int µs, or an aware datetime) to its message value."""
    out = {f: row[f] for f in GRANT_FIELDS}
    out["occurred_at"] = format_utc(row["occurred_at"])
    return orjson.dumps(out, option=_DUMPS_OPTIONS)


def rejection_to_json(row: dict[str, Any]) -> bytes:
    """One rejection row to its message value."""
    return orjson.dumps({f: row[f] for f in REJECTION_FIELDS}, option=_DUMPS_OPTIONS)


def _object(data: bytes, fields: tuple[str, ...], what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise OutputDecodeError(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise OutputDecodeError(f"{what} is not a JSON object")
    if obj.keys() != set(fields):
        missing = sorted(set(fields) - obj.keys())
        extra = sorted(obj.keys() - set(fields))
        raise OutputDecodeError(f"{what} fields differ from the schema "
                                f"(missing {missing}, unexpected {extra})")
    return obj


def _is_int(v: Any) -> bool:
    return type(v) is int and _INT64_MIN <= v <= _INT64_MAX


def grant_from_json(data: bytes) -> dict[str, Any]:
    """A grant message value to a row (``occurred_at`` as int µs); strict about
    fields and types, raising :class:`OutputDecodeError`."""
    obj = _object(data, GRANT_FIELDS, "grant")
    for f in _GRANT_STR:
        if type(obj[f]) is not str:
            raise OutputDecodeError(f"grant: {f} is not a string")
    for f in _GRANT_INT:
        if not _is_int(obj[f]):
            raise OutputDecodeError(f"grant: {f} is not a 64-bit integer")
    if type(obj["capped"]) is not bool:
        raise OutputDecodeError("grant: capped is not a boolean")
    at = obj["occurred_at"]
    if type(at) is not str:
        raise OutputDecodeError("grant: occurred_at is not a string")
    try:
        obj["occurred_at"] = parse_utc(at)
    except ValueError as e:
        raise OutputDecodeError(f"grant: occurred_at: {e}") from None
    return {f: obj[f] for f in GRANT_FIELDS}


def rejection_from_json(data: bytes) -> dict[str, Any]:
    """A rejection message value to a row; strict, raising :class:`OutputDecodeError`."""
    obj = _object(data, REJECTION_FIELDS, "rejection")
    for f in _REJ_STR:
        if type(obj[f]) is not str:
            raise OutputDecodeError(f"rejection: {f} is not a string")
    for f in _REJ_NULLABLE:
        if obj[f] is not None and type(obj[f]) is not str:
            raise OutputDecodeError(f"rejection: {f} is neither a string nor null")
    return {f: obj[f] for f in REJECTION_FIELDS}
