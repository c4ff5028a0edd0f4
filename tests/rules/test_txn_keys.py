"""Transaction keys (engine.rules.txn_keys) against small reference models."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.rules.txn_keys import dense_codes, entry_keys, key_hashes, person_codes, spread_codes

ids = st.text(min_size=1, max_size=12)
# the first call of a numba function compiles it (or loads it from disk): no deadline
COMPILES = settings(deadline=None)


def test_entry_keys_are_a_stable_format() -> None:
    """The key is a fixed function of ``operator_id/txn_id``: the streaming state
    stores it, so a change would make every stored transaction unknown (no DUPLICATE
    after an upgrade). The value is the hash as first shipped (DECISIONS 101)."""
    assert entry_keys(["paypay"], ["t1"]).tolist() == [12905691945227530690]
    assert key_hashes(["paypay/t1"]).tolist() == [12905691945227530690]
    assert entry_keys(["paypay", None], [None, "t1"]).tolist() == [0, 0]


@COMPILES
@given(st.lists(st.tuples(st.one_of(st.none(), ids), st.one_of(st.none(), ids)),
                max_size=30))
def test_an_entry_key_is_the_hash_of_the_joined_string(pairs: list[tuple[str | None,
                                                                          str | None]]) -> None:
    ops = [o for o, _ in pairs]
    tids = [t for _, t in pairs]
    joined = [f"{o}/{t}" if o is not None and t is not None else None for o, t in pairs]
    expect = key_hashes(joined)
    assert entry_keys(ops, tids).tolist() == expect.tolist()
    # Arrow columns, sliced and chunked, as the drivers pass them
    arr_o = pa.array(["pad", *ops], pa.string()).slice(1)
    arr_t = pa.chunked_array([pa.array(tids, pa.string())], pa.string())
    assert entry_keys(arr_o, arr_t).tolist() == expect.tolist()
    assert all((h == 0) == (j is None) for h, j in zip(expect.tolist(), joined, strict=True))


@COMPILES
@given(st.lists(st.text(max_size=6), min_size=2, max_size=200, unique=True))
def test_distinct_keys_hash_apart(keys: list[str]) -> None:
    assert len(set(key_hashes(keys).tolist())) == len(keys)


@COMPILES
@given(st.lists(st.integers(0, 12), max_size=300))
def test_dense_codes_number_keys_by_first_appearance(values: list[int]) -> None:
    """Reference model: a dict numbering each non-zero value when first met."""
    h = np.asarray(values, np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # spread
    model: dict[int, int] = {}
    expect = [-1 if x == 0 else model.setdefault(x, len(model)) for x in h.tolist()]
    codes, uniq = dense_codes(h)
    assert codes.tolist() == expect
    assert uniq.tolist() == list(model)


def test_dense_codes_grow_past_their_first_table() -> None:
    """More distinct keys than the first table holds (2^15 at half load), keys that are
    not hashes (consecutive integers, as packed ids are), each seen twice."""
    keys = np.arange(1, 100_001, dtype=np.uint64)
    codes, uniq = dense_codes(np.concatenate((keys, keys[::-1])))
    assert codes[:100_000].tolist() == list(range(100_000))
    assert codes[100_000:].tolist() == list(range(99_999, -1, -1))
    assert uniq.tolist() == keys.tolist()


@COMPILES
@given(st.lists(st.integers(0, 40), max_size=300), st.integers(1, 4))
def test_spread_codes_name_each_key_by_one_code(values: list[int], parts: int) -> None:
    """Offline codes made on threads (DECISIONS 110): a code per distinct non-zero
    key, -1 for 0, all below the bound; reference model: the keys themselves."""
    h = np.asarray(values, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    codes, bound = spread_codes(h, parts)
    key_of: dict[int, int] = {}
    for x, c in zip(h.tolist(), codes.tolist(), strict=True):
        assert (c == -1) == (x == 0)
        if x:
            assert 0 <= c < bound
            assert key_of.setdefault(c, x) == x  # one key per code
    assert len(key_of) == len(set(h.tolist()) - {0})  # one code per key


def test_spread_codes_grow_a_part_past_its_first_table() -> None:
    # keys that all fall in one part: its table is sized for a quarter of them
    keys = np.arange(4, 400_004, 4, dtype=np.uint64)
    codes, bound = spread_codes(np.concatenate((keys, keys)), 4)
    assert codes[:100_000].tolist() == codes[100_000:].tolist()
    assert len(set(codes.tolist())) == 100_000 and codes.max() < bound


@COMPILES
@given(st.lists(st.lists(st.one_of(st.none(), st.sampled_from(
    ["AB12cd34", "zz99ZZ00", "00000001", "short", "nine_char", ""])), max_size=20),
    max_size=3))
def test_people_are_coded_by_the_same_table(arrays: list[list[str | None]]) -> None:
    """person_codes packs a ``mykey_id`` (exactly 8 bytes) into its
    own key for :func:`dense_codes`; reference model: first appearance across the arrays,
    anything else -1."""

    model: dict[str, int] = {}
    expect = [[-1 if v is None or len(v.encode()) != 8 else model.setdefault(v, len(model))
               for v in a] for a in arrays]
    codes, n = person_codes(*(pa.array(a, pa.string()) for a in arrays))
    assert [c.tolist() for c in codes] == expect and n == len(model)
