"""Individual Numbers out of an input message, keeping everything a replay needs.

A message is archived with its position, timestamp, key, headers and value, each
Individual Number replaced by ``[REDACTED]``. What the stream decided from the
number itself cannot be decided again once it is gone, so the stream's verdict is
kept beside the redacted record (a *flag*): every record rejected
``PERSONAL_NUMBER_FORBIDDEN``, and every undecodable record whose raw bytes had to
be redacted. A replay takes the flagged records' verdict from the flag and decides
everything else from the redacted content, which equals the original in every
value the rules read.

Where the rules define an Individual Number (a string of exactly 12 ASCII digits
with a valid check digit) the content is walked as a structure: JSON values and
keys at any depth, Arrow string values (nested in lists and structs too) and
column names. Bytes that are not a JSON value or an Arrow stream, keys and header
values are opaque: there every run of exactly 12 digits with a valid check digit
is redacted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from engine.io.readers import BadRecord, load_record, split_lines
from engine.kafka.topics import (
    FORMAT_ARROW,
    FORMAT_HEADER,
    FORMAT_JSONL,
    MAX_RECORD_BYTES,
    MAX_RECORDS_PER_MESSAGE,
)
from engine.rules.model import Reason
from engine.rules.strings import individual_number_mask, is_individual_number
from engine.rules.validate import pii_in_arrow
from engine.streams.decode import WHOLE_MESSAGE as MESSAGE  # a whole message's flag index

REDACTED = "[REDACTED]"
_REDACTED_B = REDACTED.encode()
_RUN = re.compile(rb"(?<![0-9])[0-9]{12}(?![0-9])")
_QUOTED = re.compile(rb'"([0-9]{12})"')


def _is_number_bytes(b: bytes) -> bool:
    return is_individual_number(b.decode("ascii"))


def redact_opaque(data: bytes) -> bytes:
    """Every run of exactly 12 digits that is an Individual Number, redacted.

    >>> redact_opaque(b"x123456789018y 123456789012 1234567890180")
    b'x[REDACTED]y 123456789012 1234567890180'
    """
    return _RUN.sub(lambda m: _REDACTED_B if _is_number_bytes(m.group(0)) else m.group(0),
                    data)


def _redact_quoted(data: bytes) -> bytes:
    """JSON strings that are exactly a number, redacted in place (what the decoded
    value hides, such as the first of two equal keys)."""
    return _QUOTED.sub(lambda m: b'"' + _REDACTED_B + b'"' if _is_number_bytes(m.group(1))
                       else m.group(0), data)


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        k += 1
        out = f"{name}#{k}"
    taken.add(out)
    return out


def redact_json(value: Any) -> tuple[Any, bool]:
    """A decoded JSON value with every Individual Number string (keys too) redacted.

    >>> redact_json({"a": ["123456789018", {"123456789018": 1}], "b": 123456789018})
    ({'a': ['[REDACTED]', {'[REDACTED]': 1}], 'b': 123456789018}, True)
    """
    if isinstance(value, str):
        return (REDACTED, True) if is_individual_number(value) else (value, False)
    if isinstance(value, list):
        items = [redact_json(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        changed = False
        taken = set(value)
        for k, v in value.items():
            nv, c = redact_json(v)
            if is_individual_number(k):
                taken.discard(k)
                k = _unique(REDACTED, taken)
                c = True
            out[k] = nv
            changed |= c
        return out, changed
    return value, False


def _redact_array(arr: pa.Array) -> tuple[pa.Array, bool]:
    """The array with every Individual Number it holds as a value or a nested field
    name redacted, the type kept; what this walk does not reach is found by
    :func:`redact_table`'s check after it."""
    t = arr.type
    if pa.types.is_dictionary(t):
        dec = arr.cast(t.value_type)
        new, changed = _redact_array(dec)
        return (new, True) if changed else (arr, False)
    text = (pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_string_view(t))
    raw = pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
    if text or raw:
        plain = pa.string() if text else pa.binary()
        s = arr if t == plain else arr.cast(plain)
        mask = individual_number_mask(s)
        if not mask.any():
            return arr, False
        out = pc.if_else(pa.array(mask), pa.scalar(REDACTED if text else _REDACTED_B, plain),
                         s)
        return out.cast(t), True
    if pa.types.is_struct(t):
        kids = [_redact_array(arr.field(k)) for k in range(t.num_fields)]
        taken = {t.field(k).name for k in range(t.num_fields)}
        fields = []
        renamed = False
        for k in range(t.num_fields):
            f = t.field(k)
            if is_individual_number(f.name):
                taken.discard(f.name)
                f = f.with_name(_unique(REDACTED, taken))
                renamed = True
            fields.append(f.with_type(kids[k][0].type))
        if not renamed and not any(c for _, c in kids):
            return arr, False
        return pa.StructArray.from_arrays([k for k, _ in kids], fields=fields,
                                          mask=arr.is_null()), True
    if pa.types.is_map(t):
        keys, ck = _redact_array(arr.keys)
        items, ci = _redact_array(arr.items)
        if not (ck or ci):
            return arr, False
        return pa.MapArray.from_arrays(arr.offsets, keys, items, mask=arr.is_null()), True
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        values, changed = _redact_array(arr.values)
        if not changed:
            return arr, False
        cls = pa.LargeListArray if pa.types.is_large_list(t) else pa.ListArray
        return cls.from_arrays(arr.offsets, values, mask=arr.is_null()), True
    if pa.types.is_fixed_size_list(t):
        values, changed = _redact_array(arr.values)
        if not changed:
            return arr, False
        return pa.FixedSizeListArray.from_arrays(values, t.list_size,
                                                 mask=arr.is_null()), True
    return arr, False


def redact_table(table: pa.Table) -> tuple[pa.Table, bool, bool]:
    """Values, column names and schema metadata of an Arrow table, redacted;
    (table, changed, blanked). A column that still holds a number after the walk
    (a type it does not rebuild: unions, run-end encodings, extension types, a
    fixed-size binary) is replaced by a null column: ``blanked``, then every
    record's verdict must come from a flag (the stream's own)."""
    changed = blanked = False
    cols: list[pa.Array] = []
    names: list[str] = []
    taken = set(table.column_names)
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        new, c = _redact_array(col)
        if pii_in_arrow(new)[0].any():
            new, c, blanked = pa.nulls(len(new)), True, True
        if is_individual_number(name):
            taken.discard(name)
            name = _unique(REDACTED, taken)
            c = True
        cols.append(new)
        names.append(name)
        changed |= c
    meta = table.schema.metadata
    if meta:
        clean = {k: redact_opaque(v) for k, v in meta.items()}
        changed |= clean != meta
        meta = {redact_opaque(k): v for k, v in clean.items()}
    return pa.Table.from_arrays(cols, names=names, metadata=meta), changed, blanked


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


@dataclass
class Redacted:
    """One message as archived: redacted bytes and the indexes of records whose raw
    content was opaque and changed (their verdict must come from a flag)."""

    key: bytes | None
    headers: list[tuple[str, bytes]]
    value: bytes | None
    changed: bool
    opaque_changed: list[int] = field(default_factory=list)


def _redact_record(raw: bytes) -> tuple[bytes, bool, bool]:
    """(bytes, changed, opaque) of one JSON record: structural where it decodes."""
    obj = load_record(raw, MAX_RECORD_BYTES)
    if isinstance(obj, BadRecord):
        out = redact_opaque(raw)
        return out, out != raw, True
    clean, changed = redact_json(obj)
    out = orjson.dumps(clean) if changed else raw
    final = _redact_quoted(out)
    return final, changed or final != raw, False


def format_of(headers: list[tuple[str, bytes]]) -> bytes | None:
    for k, v in headers:
        if k == FORMAT_HEADER:
            return v
    return None


def redact_message(key: bytes | None, headers: list[tuple[str, bytes]],
                   value: bytes | None) -> Redacted:
    """Redact one input message; the record layout (what ``#i`` points at) is kept."""
    new_key = redact_opaque(key) if key is not None else None
    new_headers = [(REDACTED if is_individual_number(k) else k, redact_opaque(v))
                   for k, v in headers]
    changed = new_key != key or new_headers != headers
    fmt = format_of(headers)
    if value is None or value == b"":
        return Redacted(new_key, new_headers, value, changed)
    opaque: list[int] = []
    new_value = value
    if fmt is None:
        new_value, c, op = _redact_record(value)
        if c and op:
            opaque.append(MESSAGE)
    elif fmt == FORMAT_JSONL and len(split_lines(value)[0]) <= MAX_RECORDS_PER_MESSAGE:
        lines, _ = split_lines(value)
        out: list[bytes] = []
        for i, line in enumerate(lines):
            nl, c, op = _redact_record(line)
            if c and op:
                opaque.append(i)
            out.append(nl)
        new_value = b"".join(line + b"\n" for line in out) if out != lines else value
    elif fmt == FORMAT_ARROW:
        try:
            table = pa.ipc.open_stream(value).read_all()
        except (pa.ArrowException, OSError, ValueError):
            table = None
        if table is not None and table.num_rows <= MAX_RECORDS_PER_MESSAGE:
            clean, c, blanked = redact_table(table)
            new_value = _ipc(clean) if c else value
            if blanked:
                opaque.extend(range(table.num_rows))
        else:
            new_value = redact_opaque(value)
            if new_value != value:
                opaque.append(MESSAGE)
    else:
        new_value = redact_opaque(value)
        if new_value != value:
            opaque.append(MESSAGE)
    return Redacted(new_key, new_headers, new_value, changed or new_value != value, opaque)


def flags_for(redacted: Redacted, reasons: dict[int, tuple[int, str]]) -> list[
        tuple[int, str, str]]:
    """The flags of one message: ``(index, reason name, detail)`` for every record
    the stream rejected ``PERSONAL_NUMBER_FORBIDDEN`` and every opaque record whose
    bytes changed. ``reasons`` maps record index to the stream's stateless verdict."""
    out = []
    for i, (reason, detail) in sorted(reasons.items()):
        if reason == Reason.PERSONAL_NUMBER_FORBIDDEN or i in redacted.opaque_changed:
            out.append((i, Reason(reason).name, detail))
    return out


def index_of(source: str) -> tuple[int, int]:
    """(offset, record index or MESSAGE) of ``topic/partition/offset[#i]``.

    >>> index_of("m.transactions/3/17#2"), index_of("m.enrollments/0/5")
    ((17, 2), (5, -1))
    """
    pos = source.rpartition("/")[2]
    offset, _, i = pos.partition("#")
    return int(offset), int(i) if i else MESSAGE
