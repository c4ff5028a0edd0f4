"""The JSON form of output records on the grants and rejections topics.

One JSON object per message, exactly the fields of ``schemas/grant.schema.json``
and ``schemas/rejection.schema.json``. The worker builds whole batches of rows
with ``occurred_at`` already formatted (``engine.rules.strings.rfc3339_utc``,
column-wise) and encodes them with orjson; :func:`grant_to_json` /
:func:`rejection_to_json` encode single rows; ``collect`` decodes with
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

from typing import Annotated, Any

import msgspec
import orjson

from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA
from engine.rules.strings import format_utc, is_utc_form, parse_utc

GRANT_FIELDS: tuple[str, ...] = tuple(GRANT_SCHEMA.names)
REJECTION_FIELDS: tuple[str, ...] = tuple(REJECTION_SCHEMA.names)

_Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# numpy scalars arrive when a worker builds rows from arrays
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class OutputDecodeError(ValueError):
    """An output message is not a well-formed grant or rejection."""


def grant_to_json(row: dict[str, Any]) -> bytes:
    """One grant row (``occurred_at`` as int µs, or an aware datetime) to its message value."""
    out = {f: row[f] for f in GRANT_FIELDS}
    out["occurred_at"] = format_utc(row["occurred_at"])
    return orjson.dumps(out, option=_DUMPS_OPTIONS)


def rejection_to_json(row: dict[str, Any]) -> bytes:
    """One rejection row to its message value."""
    return orjson.dumps({f: row[f] for f in REJECTION_FIELDS}, option=_DUMPS_OPTIONS)


class GrantMsg(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A decoded grant message; ``occurred_at`` still the RFC 3339 text."""

    grant_id: str
    campaign: str
    mykey_id: str
    operator_id: str
    txn_id: str
    kind: str
    amount: _Int64
    points: _Int64
    cumulative_points: _Int64
    capped: bool
    occurred_at: str
    source: str


class RejectionMsg(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A decoded rejection message."""

    record_type: str
    reason: str
    detail: str
    txn_id: str | None
    operator_id: str | None
    mykey_id: str | None
    source: str


if (GrantMsg.__struct_fields__, RejectionMsg.__struct_fields__) != (GRANT_FIELDS,
                                                                     REJECTION_FIELDS):
    raise ImportError("codec_out's message structs disagree with engine.io.outputs_schema")

# msgspec checks presence, exact types (a bool is no int) and unknown fields in C,
# which keeps collect at the consumer's speed.
_GRANT_DECODER = msgspec.json.Decoder(GrantMsg)
_REJECTION_DECODER = msgspec.json.Decoder(RejectionMsg)


def decode_grant(data: bytes) -> GrantMsg:
    """Strict decoding of a grant message; :class:`OutputDecodeError` if it is not one.
    ``occurred_at`` is checked for the ``...Z`` form here, for the calendar by
    :func:`parse_utc`."""
    try:
        msg = _GRANT_DECODER.decode(data)
    except msgspec.DecodeError as e:
        raise OutputDecodeError(f"grant: {e}") from None
    if not is_utc_form(msg.occurred_at):
        raise OutputDecodeError(f"grant: occurred_at is not RFC 3339 UTC ending in Z: "
                                f"{msg.occurred_at!r}")
    return msg


def decode_rejection(data: bytes) -> RejectionMsg:
    """Strict decoding of a rejection message; :class:`OutputDecodeError` if it is not one."""
    try:
        return _REJECTION_DECODER.decode(data)
    except msgspec.DecodeError as e:
        raise OutputDecodeError(f"rejection: {e}") from None


def grant_from_json(data: bytes) -> dict[str, Any]:
    """A grant message value to a row (``occurred_at`` as int µs); strict about
    fields and types, raising :class:`OutputDecodeError`."""
    row = msgspec.structs.asdict(decode_grant(data))
    try:
        row["occurred_at"] = parse_utc(row["occurred_at"])
    except ValueError as e:
        raise OutputDecodeError(f"grant: occurred_at: {e}") from None
    return row


def rejection_from_json(data: bytes) -> dict[str, Any]:
    """A rejection message value to a row; strict, raising :class:`OutputDecodeError`."""
    return msgspec.structs.asdict(decode_rejection(data))
