"""The bulk person codec against msgspec, the stored format's own reader and writer:
the same fields out of any value of the common shape, the same bytes back, and any
other value (or a broken one) handed to msgspec's path instead of misread."""

from __future__ import annotations

import itertools

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.streams.entries import ENTRY
from engine.streams.person_codec import (
    decode_people,
    encode_people,
    find_marks,
    gather,
    name_table,
    named_rows,
    patch_rows,
)
from engine.streams.state import Parked, PersonState, encode

OPS = ["paypay", "rakuten-card", "x" * 40]  # the last one needs str8
NAMES = name_table(OPS)
NO_MARKS = (np.zeros(0, np.uint64), np.zeros(0, np.int64))

ints = st.integers(-(2**63), 2**63 - 1)
small = st.sampled_from([0, 1, -1, 31, 127, 128, -32, -33, -128, -129, 255, 256, 65535, 65536,
                         -32768, -32769, 2**31, -(2**31) - 1, 2**32, 2**63 - 1, -(2**63)])
people = st.builds(
    PersonState,
    enr_op=st.one_of(st.none(), st.sampled_from(OPS)),
    enr_kind=st.one_of(small, st.integers(-1, 3)),
    enr_day=st.one_of(small, st.integers(0, 30_000)),
    c=st.one_of(small, ints),
    r=st.one_of(small, ints),
    entries=st.integers(0, 3_000).map(lambda n: bytes(range(256)) * (n * ENTRY.itemsize // 256)
                                      + bytes(n * ENTRY.itemsize % 256)),
    marks=st.dictionaries(st.one_of(st.sampled_from([0, 127, 2**63, 2**64 - 1]),
                                    st.integers(0, 2**64 - 1)),
                          st.one_of(small, ints), max_size=20))


def _bulk(values: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offs = np.zeros(len(values) + 1, np.int64)
    offs[1:] = np.cumsum([len(v) for v in values])
    return np.frombuffer(b"".join(values), np.uint8), offs


def _roundtrip(values: list[bytes]) -> tuple[bytes, np.ndarray]:
    """Decode in bulk, then encode the decoded columns again."""
    buf, offs = _bulk(values)
    p = decode_people(buf, offs, NAMES)
    assert p.ok.all()
    n = len(values)
    z = np.zeros(n, np.int64)
    return encode_people(p.op, p.kind, p.day, p.c, p.r, buf, p.entries, NAMES,
                         (p.mkeys, p.mvals, p.mstart, p.mcount), (*NO_MARKS, z, z))


@settings(max_examples=300, deadline=None)
@given(st.lists(people, min_size=1, max_size=8))
def test_values_of_the_common_shape_decode_to_their_fields_and_encode_to_the_same_bytes(
        sts: list[PersonState]) -> None:
    values = [encode(s) for s in sts]
    buf, offs = _bulk(values)
    p = decode_people(buf, offs, NAMES)
    assert p.ok.all()
    for i, s in enumerate(sts):
        enrolled = s.enr_op is not None
        assert p.op[i] == (OPS.index(s.enr_op) if s.enr_op is not None else -1)
        assert (p.kind[i], p.day[i]) == ((s.enr_kind, s.enr_day) if enrolled else (-1, 0))
        assert (p.c[i], p.r[i]) == (s.c, s.r)
        start, length = p.entries[i]
        assert buf[start:start + length].tobytes() == s.entries
        m = slice(p.mstart[i], p.mstart[i] + p.mcount[i])
        assert list(zip(p.mkeys[m].tolist(), p.mvals[m].tolist(), strict=True)) == \
            list(s.marks.items())
    # a person not enrolled comes back with the defaults the writer uses (-1 / 0)
    expected = [encode(s) if s.enr_op is not None
                else encode(PersonState(c=s.c, r=s.r, entries=s.entries, marks=s.marks))
                for s in sts]
    data, out = _roundtrip(values)
    assert [data[a:b] for a, b in itertools.pairwise(out.tolist())] == expected


def test_no_value_is_a_new_person_and_marks_added_follow_the_stored_ones() -> None:
    stored = PersonState(enr_op="paypay", enr_kind=1, enr_day=18_500, c=10, r=0,
                         marks={5: 7, 2**63 + 1: 9})
    buf, offs = _bulk([b"", encode(stored)])
    p = decode_people(buf, offs, NAMES)
    assert p.ok.tolist() == [True, True] and p.mcount.tolist() == [0, 2]
    assert (p.op[0], p.kind[0], p.c[0], p.entries[0, 1]) == (-1, -1, 0, 0)
    # person 0 gains one mark, person 1 one more after its two (an update in place too)
    p.mvals[p.mstart[1]] = 8
    added = (np.array([3, 6], np.uint64), np.array([1, 2], np.int64),
             np.array([0, 1], np.int64), np.array([1, 1], np.int64))
    data, out = encode_people(p.op, p.kind, p.day, p.c, p.r, buf, p.entries, NAMES,
                              (p.mkeys, p.mvals, p.mstart, p.mcount), added)
    assert data[out[0]:out[1]] == encode(PersonState(marks={3: 1}))
    assert data[out[1]:out[2]] == encode(PersonState(
        enr_op="paypay", enr_kind=1, enr_day=18_500, c=10, marks={5: 8, 2**63 + 1: 9, 6: 2}))


def test_values_of_another_shape_are_left_to_msgspec() -> None:
    """Records waiting, the older formats, an operator the table lacks: flagged, and
    the rows around them still decode."""
    parked = Parked(1, 0, "paypay", "t1", None, 100, 5, 3, 6, "paypay.transactions/0/1")
    others = [PersonState(parked=[parked]),
              PersonState(txns={"paypay/t1": msgspec.Raw(b"\x90")}),
              PersonState(named_marks={"t/0": 1}),
              PersonState(wide=b"w" * 42),
              PersonState(enr_op="gone-operator", enr_kind=0),
              PersonState(marks={-5: 1})]
    values = [encode(PersonState(c=1))]
    for o in others:
        values += [encode(o), encode(PersonState(c=2, marks={9: 9}))]
    p = decode_people(*_bulk(values), NAMES)
    assert p.ok.tolist() == [True] + [False, True] * len(others)
    assert p.c[2::2].tolist() == [2] * len(others) and p.mcount[2::2].tolist() == [1] * 6
    assert p.mcount[1::2].tolist() == [0] * len(others)


@settings(max_examples=300, deadline=None)
@given(people, st.data())
def test_broken_values_are_flagged_never_misread(s: PersonState, data: st.DataObject) -> None:
    """A value cut short, or with a byte changed: flagged, or (a change that still
    parses) read as msgspec reads it."""
    value = bytearray(encode(s))
    if data.draw(st.booleans()):
        value = value[:data.draw(st.integers(1, len(value) - 1))]
    else:
        value[data.draw(st.integers(0, len(value) - 1))] = data.draw(st.integers(0, 255))
    p = decode_people(*_bulk([bytes(value), encode(PersonState(c=3))]), NAMES)
    assert p.ok[1] and p.c[1] == 3  # the next value is not disturbed
    if p.ok[0]:
        again = msgspec.msgpack.decode(bytes(value), type=PersonState)
        m = slice(p.mstart[0], p.mstart[0] + p.mcount[0])
        assert (p.c[0], p.r[0]) == (again.c, again.r)
        assert dict(zip(p.mkeys[m].tolist(), p.mvals[m].tolist(), strict=True)) == again.marks


@settings(deadline=None)  # the first example may compile the function
@given(st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=6), max_size=6),
       st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2**64 - 1)), max_size=20))
def test_find_marks_agrees_with_a_dict(marks: list[list[int]],
                                      queries: list[tuple[int, int]]) -> None:
    marks = [list(dict.fromkeys(m)) for m in marks] + [[]] * 6
    keys = np.array([k for m in marks for k in m], np.uint64)
    count = np.array([len(m) for m in marks], np.int64)
    start = np.cumsum(count) - count
    person = np.array([q[0] for q in queries], np.int64)
    key = np.array([q[1] for q in queries], np.uint64)
    got = find_marks(keys, start, count, person, key).tolist()
    assert got == [start[p] + marks[p].index(k) if k in marks[p] else -1 for p, k in queries]


def test_gather_concatenates_the_spans_in_order() -> None:
    buf = np.frombuffer(b"abcdefghij", np.uint8)
    spans = np.array([[7, 3], [0, 0], [1, 2], [0, 1]], np.int64)
    assert gather(buf, spans).tobytes() == b"hijbca"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=12), max_size=8), st.data())
def test_named_rows_are_the_rows_whose_key_is_asked_for(
        histories: list[list[int]], data: st.DataObject) -> None:
    """Each person's packed rows, with gaps between the people's values; asked for
    some keys of theirs and some of no one's (and 0, no key): the rows found are, in
    order, those a scan with a dict finds."""
    pieces, spans, at = [], [], 0
    for keys in histories:
        rows = np.zeros(len(keys), ENTRY)
        rows["key"] = keys
        rows["amount"] = np.arange(len(keys))
        pieces += [b"gap", rows.tobytes()]
        spans.append((at + 3, rows.nbytes))
        at += 3 + rows.nbytes
    buf = np.frombuffer(b"".join(pieces), np.uint8)
    every = [k for keys in histories for k in keys]
    asked = data.draw(st.lists(st.one_of(st.sampled_from(every), st.integers(1, 2**64 - 1))
                               if every else st.integers(1, 2**64 - 1), max_size=10))
    uniq = np.array([k for k in dict.fromkeys(asked) if k != 0], np.uint64)
    code = {int(k): c for c, k in enumerate(uniq.tolist())}
    pos, got, owner = named_rows(buf, np.array(spans, np.int64).reshape(-1, 2), uniq)
    expect = [(s0 + ENTRY.itemsize * j, code[k], i)
              for i, ((s0, _), keys) in enumerate(zip(spans, histories, strict=True))
              for j, k in enumerate(keys) if k in code]
    assert list(zip(pos.tolist(), got.tolist(), owner.tolist(), strict=True)) == expect


def test_patch_rows_writes_status_and_refunded_sum_only() -> None:
    rows = np.zeros(3, ENTRY)
    rows["key"], rows["amount"], rows["refunded"], rows["status"] = [7, 8, 9], 500, 10, 0
    buf = np.frombuffer(b"xy" + rows.tobytes(), np.uint8).copy()
    patch_rows(buf, np.array([2 + 2 * ENTRY.itemsize], np.int64), np.array([2], np.int8),
               np.array([499], np.int64))
    got = np.frombuffer(buf[2:].tobytes(), ENTRY)
    assert got[:2].tobytes() == rows[:2].tobytes() and buf[:2].tobytes() == b"xy"
    assert (got[2]["key"], got[2]["amount"], got[2]["refunded"], got[2]["status"]) == \
        (9, 500, 499, 2)


@settings(max_examples=100, deadline=None)
@given(st.lists(people, min_size=1, max_size=6), st.data())
def test_new_entries_follow_the_stored_ones_in_the_same_bytes(
        sts: list[PersonState], data: st.DataObject) -> None:
    """Each person's entries given as stored rows plus new rows from a second buffer:
    the value msgspec writes for all of them in one."""
    values = [encode(s) for s in sts]
    buf, offs = _bulk(values)
    p = decode_people(buf, offs, NAMES)
    added = [data.draw(st.binary(max_size=3)) * ENTRY.itemsize for _ in sts]
    nbuf = np.frombuffer(b"".join(added), np.uint8)
    sizes = np.array([len(a) for a in added], np.int64)
    z = np.zeros(len(sts), np.int64)
    got, out = encode_people(p.op, p.kind, p.day, p.c, p.r, buf, p.entries, NAMES,
                             (p.mkeys, p.mvals, p.mstart, p.mcount), (*NO_MARKS, z, z),
                             (nbuf, np.stack((np.cumsum(sizes) - sizes, sizes), axis=1)))
    for i, s in enumerate(sts):
        whole = (s if s.enr_op is not None
                 else PersonState(c=s.c, r=s.r, entries=s.entries, marks=s.marks))
        assert got[out[i]:out[i + 1]] == encode(msgspec.structs.replace(
            whole, entries=s.entries + added[i]))
