"""The streaming decider, fed the same records in batches of any size, decides every
record exactly as offline settle does (no broker: the state round-trips through the
shard store between batches, as it does between polls and restarts)."""

from __future__ import annotations

import itertools
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.io.readers import split_lines
from engine.kafka.topics import FORMAT_HEADER, FORMAT_JSONL
from engine.rules.model import NO_TIME
from engine.streams.decode import decode_messages
from engine.streams.logic import PartitionLogic
from engine.streams.state import ShardStore
from engine.tools.generate import generate_tables, write_jsonl
from engine.tools.settle import settle_files

Msg = namedtuple("Msg", "topic partition offset timestamp key value headers")


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("shard")
    enr, txn = generate_tables(120, 1500, seed=13)
    write_jsonl(enr, d / "e.jsonl")
    write_jsonl(txn, d / "t.jsonl")
    off = settle_files(d / "e.jsonl", d / "t.jsonl", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY)
    e_lines, e_no = split_lines((d / "e.jsonl").read_bytes())
    t_lines, t_no = split_lines((d / "t.jsonl").read_bytes())
    return off, (e_lines, e_no.tolist()), (t_lines, t_no.tolist())


def _messages(lines: list[bytes], numbers: list[int], topic: str,
              cuts: list[int]) -> tuple[list[list[Msg]], dict[str, str]]:
    """One JSON Lines chunk per poll, cut at ``cuts``; and source -> file line.

    (Chunks, not one-record messages: a chunk's records keep their own received_at,
    as file records do, so lateness is judged alike.)"""
    polls: list[list[Msg]] = []
    where: dict[str, str] = {}
    bounds = [0, *sorted(set(cuts)), len(lines)]
    for a, b in itertools.pairwise(bounds):
        if a >= b:
            continue
        offset = len(polls)
        polls.append([Msg(topic, 0, offset, None, None, b"\n".join(lines[a:b]),
                          [(FORMAT_HEADER, FORMAT_JSONL)])])
        for i in range(b - a):
            where[f"{topic}/0/{offset}#{i}"] = f"{topic}.jsonl:{numbers[a + i]}"
    return polls, where


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, 1500), max_size=25))
def test_any_batching_decides_like_offline(campaign, cuts: list[int]) -> None:  # type: ignore[no-untyped-def]
    off, (e_lines, e_no), (t_lines, t_no) = campaign
    e_polls, e_where = _messages(e_lines, e_no, "e", [])
    t_polls, t_where = _messages(t_lines, t_no, "t", cuts)
    where = {**e_where, **t_where}
    store_dir = Path(tempfile.mkdtemp())
    grants, rejections = {}, {}

    def logic_on_disk() -> PartitionLogic:
        return PartitionLogic(DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1, 0,
                              ShardStore(store_dir / "p0", NO_TIME))

    def collect(res) -> None:  # type: ignore[no-untyped-def]
        for _, g in res.grants:
            grants[g["grant_id"]] = (g["points"], g["cumulative_points"], where[g["source"]])
        for _, r in res.rejections:
            rejections[where[r["source"]]] = r["reason"]

    logic = logic_on_disk()
    polls = [("enrollment", p) for p in e_polls] + [("transaction", p) for p in t_polls]
    for n, (rtype, poll) in enumerate(polls):
        batch = decode_messages(poll, rtype, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 20)
        collect(logic.decide(batch if rtype == "enrollment" else None,
                             batch if rtype == "transaction" else None))
        logic.commit(n)
        if n % 3 == 1:  # a restart between polls: state only from the store
            logic.store.close()
            logic = logic_on_disk()
            logic.restore([])
    # offline: refunds still waiting at the end of input are rejected; the stream
    # keeps them waiting (no stream time passes their deadline here) ...
    off_g = {g["grant_id"]: (g["points"], g["cumulative_points"], g["source"])
             for g in off.grants.to_pylist()}
    off_r = {r["source"]: r["reason"] for r in off.rejections.to_pylist()}
    assert grants == off_g
    waiting = {s: r for s, r in off_r.items() if s not in rejections}
    assert set(waiting.values()) <= {"ORIGINAL_NOT_FOUND"}
    assert {s: r for s, r in off_r.items() if s in rejections} == rejections
    # ... until the end of input (the final phase): then every record is decided
    # exactly as offline
    final = logic.final()
    assert len(final.rejections) == len(waiting) and not final.grants
    collect(final)
    logic.store.close()
    assert grants == off_g
    assert rejections == off_r
