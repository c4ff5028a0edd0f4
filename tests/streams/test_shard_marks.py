"""Redelivery marks (engine.streams.shard ``select``): a record at or below its
person's mark for the source it was first read at is skipped as already applied,
judged per batch column-wise with the answer one record at a time would give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka.topics import SOURCE_HEADER
from engine.streams.decode import SUB_BITS, concat_batches, decode_messages
from engine.streams.shard import not_applied
from engine.streams.state import decode_person, source_key
from tests import builders
from tests.streams.feed import T0, Feed, Msg, reasons


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 12)), max_size=40),
       st.lists(st.integers(-1, 8), min_size=4, max_size=4))
def test_not_applied_is_a_record_at_a_time(records: list[tuple[int, int]],
                                           marks: list[int]) -> None:
    """Against the rule itself: in order, a record is kept when above its group's
    mark, which it then raises (arrivals need not increase)."""
    expected, model = [], dict(enumerate(marks))
    for g, at in records:
        expected.append(at > model[g])
        if expected[-1]:
            model[g] = at
    mark = np.asarray(marks, np.int64)
    keep = not_applied(np.asarray([g for g, _ in records], np.int64).reshape(-1),
                       np.asarray([a for _, a in records], np.int64).reshape(-1), mark)
    assert keep.tolist() == expected and mark.tolist() == [model[g] for g in range(4)]


def _msg(topic: str, offset: int, person: str, txn_id: str,
         origin: str | None = None) -> Msg:
    rec = builders.txn("purchase", mykey=person, at="2020-09-13T12:00:00Z", txn_id=txn_id,
                       amount=1000)
    headers = [(SOURCE_HEADER, origin.encode())] if origin else None
    return Msg(topic, 0, offset, T0 + offset, person.encode(), orjson.dumps(rec), headers)


def test_a_redelivered_poll_decides_only_what_is_new(tmp_path: Path) -> None:
    """A crash after the state was written redelivers a poll: its records are already
    in their people's state and get no second outcome; the new records after them do.
    Marks are per person and per source: another person's, and a re-routed record's
    own source (another partition's offsets), do not hide a record."""
    f = Feed(tmp_path)
    people = ["Mark0001", "Mark0002"]
    f.poll("enrollment", [{"rec": builders.enr(p), "ts": T0} for p in people])
    first = [_msg("transaction", k, people[k % 2], f"a{k}") for k in range(6)]
    b = decode_messages(first, "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20)
    assert len(reasons(f.logic.decide(None, b))) == 6
    f.logic.commit(1)
    again = [*first[3:], *(_msg("transaction", k, people[k % 2], f"a{k}") for k in (6, 7))]
    b = decode_messages(again, "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20)
    # re-routed here from partition 5 of the same topic, at offsets below this one's
    rerouted = [_msg("reroute", k, people[0], f"r{k}", origin=f"transaction/5/{k}")
                for k in (1, 2)]
    r = decode_messages(rerouted, "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20,
                        internal=True)
    res = f.logic.decide(None, concat_batches([b, r]))
    assert set(reasons(res)) == {"a6", "a7", "r1", "r2"}
    f.logic.commit(2)
    st = decode_person(f.stored(people[0]))
    assert st.marks == {source_key("enrollment/0"): 0,  # Feed's first message
                        source_key("transaction/0"): 6 << SUB_BITS,
                        source_key("transaction/5"): 2 << SUB_BITS}
    f.store.close()
