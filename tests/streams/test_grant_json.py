"""engine.streams.grant_json writes exactly what orjson writes for the grant's dict."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.rules.model import KIND_NAMES
from engine.streams.grant_json import GrantJson

# the patterns a grant's ids were validated against (schemas/)
_KEYS = st.from_regex(r"\A[0-9A-Za-z]{8}\Z")
_OPS = st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,31}\Z")
_TXNS = st.from_regex(r"\A[0-9A-Za-z._:-]{1,64}\Z")
_INTS = st.integers(-(2**62), 2**62)


@st.composite
def _grant(draw: st.DrawFn) -> tuple:  # type: ignore[type-arg]
    return (draw(_KEYS), draw(_OPS), draw(_TXNS), draw(st.sampled_from([0, 1, 2])),
            draw(_INTS), draw(_INTS), draw(st.sampled_from([0, 4999, 5000, 12])),
            draw(st.sampled_from(["2020-10-01T12:00:00Z", "2021-01-31T23:59:59.000001Z"])),
            draw(st.text()))  # a replay's source may hold anything


@settings(deadline=None)  # the first example compiles the writer
@given(campaign=st.text(min_size=1), grants=st.lists(_grant(), max_size=5))
def test_bytes_equal_orjson_of_the_dict(campaign: str, grants: list[tuple]) -> None:  # type: ignore[type-arg]
    cap = 5000
    enc = GrantJson(campaign, cap)
    cols = [list(c) for c in zip(*grants, strict=True)] if grants else [[] for _ in range(9)]
    strings = (0, 1, 2, 7, 8)
    got = enc.encode(*(pa.array(c, pa.string()) if i in strings else np.array(c, np.int64)
                       for i, c in enumerate(cols))).to_pylist()
    want = [orjson.dumps({
        "grant_id": f"{campaign}/{op}/{key}/{tid}", "campaign": campaign, "mykey_id": key,
        "operator_id": op, "txn_id": tid, "kind": KIND_NAMES[kind], "amount": amount,
        "points": pts, "cumulative_points": cum, "capped": cum == cap, "occurred_at": at,
        "source": src}) for key, op, tid, kind, amount, pts, cum, at, src in grants]
    assert got == want


@settings(deadline=None)
@given(batches=st.lists(st.lists(_grant(), max_size=4), max_size=4))
def test_batches_encoded_together_equal_each_encoded_alone(
        batches: list[list[tuple]]) -> None:  # type: ignore[type-arg]
    """The checkpoint writes the grants of every partition of a poll in one call
    (shard.encode_grants); each partition's messages are what its own call writes."""
    from engine.rules.strings import parse_utc
    from engine.streams.grant_json import grant_json
    from engine.streams.shard import GrantFields, GrantMessages, encode_grants

    def messages(grants: list[tuple]) -> GrantMessages:  # type: ignore[type-arg]
        cols = [list(c) for c in zip(*grants, strict=True)] if grants else [[]] * 9
        s = [pa.array(c, pa.large_string()) for c in cols[:3]]
        kind, amount, points, cum = [np.array(c, np.int64) for c in cols[3:7]]
        at = np.array([parse_utc(x) for x in cols[7]], np.int64)
        return GrantMessages(s[0], pa.array(cols[8], pa.large_string()),
                             grant_json("c", 5000),
                             GrantFields(s[1], s[2], kind, amount, points, cum, at))

    together = [messages(g) for g in batches]
    encode_grants(together)
    alone = [messages(g) for g in batches]
    assert [g.values.to_pylist() for g in together] == [g.values.to_pylist() for g in alone]
    assert [len(g.values) for g in together] == [len(g) for g in batches]
