"""Several partitions decided in one call (DECISIONS 130) decide every record, and
stage every state change, exactly as each partition decided alone (no broker)."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict, namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.io.readers import split_lines
from engine.kafka.topics import FORMAT_HEADER, FORMAT_JSONL, UNATTRIBUTED, Topics
from engine.rules.model import NO_TIME
from engine.rules.strings import kafka_partitions
from engine.streams.decode import InBatch, decode_messages
from engine.streams.logic import PartitionLogic, decide_together
from engine.streams.shard import ShardResult
from engine.streams.state import ShardStore
from tests.streams.feed import T0, H, txn

Msg = namedtuple("Msg", "topic partition offset timestamp key value headers")
PARTS = 4
TOPICS = Topics("mynapoint")
OPERATORS = [o.id for o in DEFAULT_REGISTRY.operators]


# a record: its JSON line as generated (malformed ones too) and, where the line is
# JSON, what routes it: its mykey_id and operator_id
Line = tuple[bytes, Any, Any]


@pytest.fixture(scope="module")
def records(settled_campaign) -> dict[str, list[Line]]:  # type: ignore[no-untyped-def]
    sc = settled_campaign(150, 1800, 29)
    out: dict[str, list[Line]] = {}
    for rtype, path in (("enrollment", sc.enrollments), ("transaction", sc.transactions)):
        out[rtype] = []
        for line in split_lines(path.read_bytes())[0]:
            try:
                r = orjson.loads(line)
            except orjson.JSONDecodeError:
                r = None
            r = r if isinstance(r, dict) else {}
            out[rtype].append((line, r.get("mykey_id"), r.get("operator_id")))
    return out


def _home(recs: list[Line]) -> list[int]:
    """Each record's partition by its mykey_id (0 for a record without a usable one)."""
    keys = pa.array([k if isinstance(k, str) else None for _, k, _ in recs], pa.string())
    return np.maximum(kafka_partitions(keys, PARTS), 0).tolist()  # type: ignore[no-any-return]


class Inputs:
    """Each partition's messages in JSON Lines chunks, one per operator's topic (so
    their stream times are lanes of their own) and poll, offsets per topic-partition."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = defaultdict(int)

    def batch(self, rtype: str, part: int, recs: list[Line]) -> InBatch | None:
        if not recs:
            return None
        by_topic: dict[str, list[bytes]] = defaultdict(list)
        for line, _, op in recs:
            topic = TOPICS.input_of(op if op in OPERATORS else UNATTRIBUTED, rtype)
            by_topic[topic].append(line)
        msgs = []
        for topic, lines in sorted(by_topic.items()):
            msgs.append(Msg(topic, part, self.offsets[(topic, part)], None, None,
                            b"\n".join(lines), [(FORMAT_HEADER, FORMAT_JSONL)]))
            self.offsets[(topic, part)] += 1
        return decode_messages(msgs, rtype, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 22,
                               source_operator=Topics.operator_of)


def _logics(tmp: Path) -> list[PartitionLogic]:
    return [PartitionLogic(DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, PARTS, p,
                           ShardStore(tmp / f"p{p}", NO_TIME)) for p in range(PARTS)]


def _view(res: ShardResult) -> dict[str, Any]:
    return {"grants": res.grants, "rejections": res.rejections, "reroute": res.reroute,
            "outcomes": {k: v.tolist() for k, v in res.outcomes.items() if len(v)},
            "points": res.points, "clawed_back": res.clawed_back, "parked": res.parked}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), polls=st.integers(3, 30),
       misrouted=st.sampled_from([0, 5, 40]))
def test_partitions_decided_together_decide_as_each_alone(
        records: dict[str, list[Line]], tmp_path_factory: pytest.TempPathFactory,
        seed: int, polls: int, misrouted: int) -> None:
    rng = random.Random(seed)
    # each partition's records of each type, a few sent to the wrong partition
    # (re-routed by the call), cut into the same number of polls at random places
    feed: dict[tuple[str, int], list[list[Line]]] = {}
    for rtype, recs in records.items():
        mine: dict[int, list[Line]] = defaultdict(list)
        for r, home in zip(recs, _home(recs), strict=True):
            wrong = misrouted and rng.randrange(misrouted) == 0
            mine[(home + 1) % PARTS if wrong else home].append(r)
        for p in range(PARTS):
            rs = mine[p]
            cuts = sorted(rng.randrange(len(rs) + 1) for _ in range(polls - 1))
            feed[(rtype, p)] = [rs[a:b] for a, b in itertools.pairwise([0, *cuts, len(rs)])]
    caught_choices = [frozenset(), frozenset({""}), frozenset(OPERATORS[:3]),
                      frozenset([*OPERATORS, ""])]
    alone = _logics(tmp_path_factory.mktemp("alone"))
    together = _logics(tmp_path_factory.mktemp("together"))
    a_in, t_in = Inputs(), Inputs()
    decided = 0
    for n in range(polls):
        work = []
        for p in range(PARTS):
            e, t = feed[("enrollment", p)][n], feed[("transaction", p)][n]
            if not e and not t:
                continue
            caught = rng.choice(caught_choices)
            res = alone[p].decide(a_in.batch("enrollment", p, e),
                                  a_in.batch("transaction", p, t), caught)
            work.append((p, res, t_in.batch("enrollment", p, e),
                         t_in.batch("transaction", p, t), caught))
        got = decide_together([(together[p], e, t, c) for p, _, e, t, c in work])
        for (p, want, *_), res in zip(work, got, strict=True):
            assert _view(res) == _view(want), f"poll {n}, partition {p}"
            assert together[p].snapshot() == alone[p].snapshot(), f"poll {n}, partition {p}"
            decided += sum(len(v) for v in res.outcomes.values())
            alone[p].commit(n)
            together[p].commit(n)
    for p in range(PARTS):  # and what is still waiting is decided alike at the end
        assert _view(together[p].final()) == _view(alone[p].final())
        alone[p].store.close()
        together[p].store.close()
    assert decided > 1000  # the comparison saw the data, not empty polls


def _one_record(part: int, offset: int, item: dict[str, Any], topic: str) -> InBatch:
    msg = Msg(topic, part, offset, item["ts"], item["rec"]["mykey_id"].encode(),
              orjson.dumps(item["rec"]), None)
    return decode_messages([msg], "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20,
                           source_operator=Topics.operator_of)


def _person_of(part: int, skip: int = 0) -> str:
    """A mykey_id whose partition is ``part`` (the ``skip``-th such)."""
    found = (key for key in (f"Part{i:04d}" for i in itertools.count())
             if kafka_partitions(pa.array([key]), PARTS)[0] == part)
    return next(itertools.islice(found, skip, None))


def test_a_partition_caught_up_follows_its_own_stream_time_not_anothers(
        tmp_path: Path) -> None:
    """A caught-up input's waits end by its partition's stream time (the largest of
    that partition's lanes): another partition's later time, in the same call, ends
    none of them; its own does."""
    a, a2, b = _person_of(0), _person_of(0, 1), _person_of(1)
    paypay = TOPICS.input_of("paypay", "transaction")
    other = TOPICS.input_of(UNATTRIBUTED, "transaction")
    logics = _logics(tmp_path)
    # partition 0: a record that waits for an enrollment (24 h), on paypay's input
    first = decide_together([
        (logics[0], None, _one_record(0, 0, txn("waits", T0, person=a), paypay), frozenset()),
        (logics[1], None, _one_record(1, 0, txn("b0", T0, person=b), other), frozenset())])
    assert first[0].parked == 1
    # paypay's input is caught up; partition 0's largest time is T0 + 2 h, while
    # partition 1's jumps to T0 + 30 h in the same call: the wait goes on
    res = decide_together([
        (logics[0], None, _one_record(0, 0, txn("a1", T0 + 2 * H, person=a2), other),
         frozenset({"paypay"})),
        (logics[1], None, _one_record(1, 1, txn("b1", T0 + 30 * H, person=b), other),
         frozenset({""}))])
    assert not any(r["txn_id"] == "waits" for _, r in res[0].rejections)
    assert a in logics[0].store.parked
    # partition 0's own time passing the deadline ends it
    res = decide_together([
        (logics[0], None, _one_record(0, 1, txn("a2", T0 + 30 * H, person=a2), other),
         frozenset({"paypay"}))])
    assert {r["txn_id"]: r["reason"] for _, r in res[0].rejections}["waits"] == "NOT_ENROLLED"
    for lg in logics:
        lg.store.close()
