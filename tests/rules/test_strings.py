"""The one RFC 3339 formatter and parser of ``engine.rules.strings``.

Before issue 9 the stream's outcome column (``rfc3339_utc``) and ``publish`` wrote a
whole second as ``...:00.000000Z`` while ``format_utc`` (single outcome messages,
re-routed records) wrote ``...:00Z``: the same instant in two spellings. The grant
schema says fractional seconds appear only when not zero; these tests hold every path
to that form against an independent reference built on ``datetime``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.rules.strings import (
    END_US,
    MIN_US,
    format_utc,
    parse_timestamps,
    parse_utc,
    prefix_codes,
    rfc3339_array,
    rfc3339_utc,
)
from engine.tools.publish import _rfc3339_strings

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "grant.schema.json").read_text())
OCCURRED_AT = re.compile(SCHEMA["properties"]["occurred_at"]["pattern"])
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
instants = st.one_of(
    st.integers(MIN_US, END_US - 1),
    st.integers(MIN_US // 1_000_000, END_US // 1_000_000 - 1).map(lambda s: s * 1_000_000),
)


def reference(us: int) -> str:
    """What the grant schema describes, written with the standard library."""
    dt = EPOCH + timedelta(microseconds=us)
    text = f"{dt.year:04d}-{dt:%m-%dT%H:%M:%S}"
    return (f"{text}.{dt.microsecond:06d}Z" if dt.microsecond else text + "Z")


@settings(deadline=None)
@given(st.lists(instants, max_size=20))
def test_column_and_scalar_write_the_schema_form(values: list[int]) -> None:
    column = rfc3339_utc(np.array(values, dtype=np.int64))
    assert column == [reference(v) for v in values]
    assert [format_utc(v) for v in values] == column
    assert all(OCCURRED_AT.fullmatch(t) for t in column)


@settings(deadline=None)
@given(instants)
def test_parse_inverts_format(us: int) -> None:
    text = format_utc(us)
    assert parse_utc(text) == us
    parsed, ok = parse_timestamps(pa.array([text]))
    assert ok.tolist() == [True] and int(parsed[0]) == us


def test_whole_seconds_have_no_fraction_in_any_path() -> None:
    # the old disagreement: 2020-09-01T00:00:00+09:00 written two ways
    us = 1_598_886_000_000_000
    want = "2020-08-31T15:00:00Z"
    assert rfc3339_utc(np.array([us])) == [want]
    assert format_utc(us) == want
    aware = pa.chunked_array([pa.array([us, None], type=pa.timestamp("us", tz="Asia/Tokyo"))])
    assert _rfc3339_strings(aware).to_pylist() == [want, None]
    naive = pa.chunked_array([pa.array([us // 1000], type=pa.timestamp("ms"))])
    assert _rfc3339_strings(naive).to_pylist() == [want[:-1]]


def test_aware_datetimes_and_far_instants() -> None:
    aware = datetime(2020, 9, 15, 12, 34, 56, 250000, tzinfo=timezone(timedelta(hours=9)))
    assert format_utc(aware) == "2020-09-15T03:34:56.250000Z"
    with pytest.raises(ValueError, match="naive"):
        format_utc(datetime(2020, 9, 15))
    # beyond four-digit years (only unchecked input such as a foreign Parquet column)
    far = rfc3339_array(np.array([300_000_000_000_000_000, 5])).to_pylist()
    assert far == ["11476-08-15T05:20:00Z", "1970-01-01T00:00:00.000005Z"]


@pytest.mark.parametrize("text", ["2020-09-15T03:34:56+00:00", "2020-02-30T00:00:00Z",
                                  "2020-09-15 03:34:56Z", "2020-09-15T24:00:00Z",
                                  "2020-09-15T03:34:56.1234567Z"])
def test_parse_utc_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        parse_utc(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="ab/é", max_size=6), max_size=30))
def test_prefix_codes_against_a_dict(texts: list[str]) -> None:
    """Codes in order of first appearance, as a dict of the text before the first "/"
    would give them, and each code's first row."""
    seen: dict[str, int] = {}
    want = [seen.setdefault(t.split("/")[0], len(seen)) for t in texts]
    codes, firsts = prefix_codes(pa.array(texts, pa.string()), "/")
    assert codes.tolist() == want
    assert [texts[f].split("/")[0] for f in firsts.tolist()] == list(seen)
