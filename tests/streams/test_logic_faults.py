"""A partition's decisions do not depend on what failed between its polls: a poll
redelivered after its state was written, a batch that failed and is decided again
from the checkpoint (``discard``), a second poll decided before the first one's
checkpoint, state flushed to its checkpoint file or not. The reference is the same polls
without the failures; the records wait for enrollments and originals, arrive
re-routed with their first source, in chunks, with and without ``received_at``, so
the redelivery marks, the waits and the stored people's values all take part."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka.topics import FORMAT_HEADER, FORMAT_JSONL, SOURCE_HEADER, Topics, partition_for
from engine.rules.model import NO_TIME
from engine.streams.codec_out import format_utc
from engine.streams.decode import InBatch, concat_batches, decode_messages
from engine.streams.logic import PartitionLogic
from engine.streams.shard import ShardResult
from engine.streams.state import ShardStore
from tests import builders
from tests.streams.feed import T0, H, Msg

# three people of partition 0 of 2: partition 1 is where re-routed records come from
PEOPLE = [k for k in (f"Flt{i:05d}" for i in range(200))
          if partition_for(k.encode(), 2) == 0][:3]

_record = st.tuples(
    st.sampled_from(["purchase", "charge", "refund"]),
    st.integers(0, 2),                                # person
    st.integers(1, 9000),                             # amount
    st.sampled_from(["one", "chunk", "rerouted"]),    # how it arrives
    st.booleans(),                                    # received_at in the record
    st.sampled_from([10, 60_000, H, 30 * H]),         # time since the previous record
    st.integers(0, 30))                               # a refund's original
_faults = st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans())


def _messages(records: list[tuple[Any, ...]], enrolled: list[int | None]
              ) -> list[tuple[str, Msg, bool]]:
    """(record type, message, from the re-routing topic) in arrival order; person i's
    enrollment arrives before record ``enrolled[i]`` (None: never)."""
    out: list[tuple[str, Msg, bool]] = []
    offsets = {"enrollments": 0, "transactions": 0, "rerouted": 0}
    t = T0
    for i, (kind, person, amount, how, received, step, orig) in enumerate(records):
        for p, at in enumerate(enrolled):
            if at == i:
                out.append(("enrollment", Msg("enrollments", 0, offsets["enrollments"], t,
                                              PEOPLE[p].encode(),
                                              orjson.dumps(builders.enr(PEOPLE[p])), None),
                            False))
                offsets["enrollments"] += 1
        t += step
        txn = builders.txn(kind, amount, mykey=PEOPLE[person], txn_id=f"t{i}",
                           at=format_utc((T0 + i * 1000) * 1000))
        if kind == "refund":
            txn.update(txn_id=f"r{i}", original_txn_id=f"t{orig}", amount=amount // 3 + 1)
        if received or how == "one":
            txn["received_at"] = format_utc(t * 1000)
        key = PEOPLE[person].encode()
        if how == "rerouted":  # first read at partition 1, where it did not belong
            source = f"transactions/1/{i}".encode()
            out.append(("transaction", Msg("rerouted", 0, offsets["rerouted"], t, key,
                                           orjson.dumps(txn), [(SOURCE_HEADER, source)]),
                        True))
            offsets["rerouted"] += 1
            continue
        headers = [(FORMAT_HEADER, FORMAT_JSONL)] if how == "chunk" else None
        out.append(("transaction", Msg("transactions", 0, offsets["transactions"], t, key,
                                       orjson.dumps(txn), headers), False))
        offsets["transactions"] += 1
    return out


def _decide(logic: PartitionLogic, poll: list[tuple[str, Msg, bool]]) -> ShardResult:
    """One poll as the worker decodes it: public messages, then re-routed ones."""
    batches: dict[str, InBatch | None] = {}
    for typ in ("enrollment", "transaction"):
        parts = [decode_messages([m for t, m, r in poll if t == typ and r == rerouted], typ,
                                 DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20,
                                 internal=rerouted, source_operator=Topics.operator_of)
                 for rerouted in (False, True)
                 if any(t == typ and r == rerouted for t, _, r in poll)]
        batches[typ] = concat_batches(parts)
    return logic.decide(batches["enrollment"], batches["transaction"])


def _outcomes(res: ShardResult) -> list[tuple[str, tuple[Any, ...]]]:
    return ([(g["source"], ("granted", g["points"], g["cumulative_points"]))
             for _, g in res.grants]
            + [(r["source"], (r["reason"],)) for _, r in res.rejections])


def _run(polls: list[list[tuple[str, Msg, bool]]],
         faults: list[tuple[bool, bool, bool, bool]] | None) -> dict[str, tuple[Any, ...]]:
    """Every distinct outcome of the polls (and the end of input); a record decided
    twice must be decided alike."""
    seen: dict[str, tuple[Any, ...]] = {}

    def keep(res: ShardResult) -> None:
        for source, outcome in _outcomes(res):
            assert seen.setdefault(source, outcome) == outcome, (source, seen[source], outcome)

    with tempfile.TemporaryDirectory() as d:
        store = ShardStore(Path(d) / "p0", NO_TIME)
        logic = PartitionLogic(DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 2, 0, store)
        previous: list[tuple[str, Msg, bool]] = []
        k = 0
        while k < len(polls):
            redeliver, fail, more, flush = faults[k % len(faults)] if faults else (False,) * 4
            poll = polls[k]
            k += 1
            if redeliver:  # a crash after the last checkpoint's state: read again
                poll = previous + poll
            res = _decide(logic, poll)
            if fail:  # the batch failed before its outcomes were out: decided again
                logic.discard()
                res = _decide(logic, poll)
            keep(res)
            if more and k < len(polls):  # the next poll decided before this checkpoint
                keep(_decide(logic, polls[k]))
                poll = poll + polls[k]
                k += 1
            logic.commit(k)
            if flush:
                store.flush()
            previous = poll
        keep(logic.final())
        store.close()
    return seen


@settings(max_examples=60, deadline=None)
@given(records=st.lists(_record, min_size=1, max_size=30),
       enrolled=st.lists(st.one_of(st.none(), st.integers(0, 30)), min_size=3, max_size=3),
       sizes=st.lists(st.integers(1, 6), min_size=1, max_size=12),
       faults=st.lists(_faults, min_size=1, max_size=8))
def test_failures_between_polls_change_no_decision(records: list[tuple[Any, ...]],
                                                   enrolled: list[int | None],
                                                   sizes: list[int],
                                                   faults: list[tuple[bool, bool, bool, bool]]
                                                   ) -> None:
    msgs = _messages(records, enrolled)
    polls: list[list[tuple[str, Msg, bool]]] = []
    at = 0
    while at < len(msgs):
        n = sizes[len(polls) % len(sizes)]
        polls.append(msgs[at:at + n])
        at += n
    clean = _run(polls, None)
    assert _run(polls, faults) == clean
    assert len(clean) == len(records)  # one outcome each (accepted enrollments: none)
