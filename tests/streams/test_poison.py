"""Poison messages mixed into a normal stream: each gets exactly one clear
outcome, everything else is still decided exactly as offline, the worker
never stops."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaProducer

from engine.kafka.client_config import default_client
from engine.kafka.topics import FORMAT_ARROW, FORMAT_HEADER, FORMAT_JSONL, partition_for
from engine.tools.collect import collect
from engine.tools.compare import Comparison, compare
from tests.builders import enr_topic, txn_topic
from tests.poison_records import (
    ENROLLMENT,
    GRANT,
    PERSON,
    Poison,
    arrow_poison,
    base,
    enrollment_poison,
    expected_count,
    invalid_utf8_table,
    ipc,
    json_poison,
)
from tests.streams.harness import (
    LAST_STATS,
    PARTITIONS,
    Scenario,
    fault_report,
    make_scenario,
    publish,
    topics_for,
    worker,
)

pytestmark = pytest.mark.kafka

# PERSON (tests/poison_records.py) is enrolled below; not in the generated campaign
TS = 1_593_561_600_000  # 2020-07-01T00:00:00Z: before the stream, so it moves no clock


def _other_partition(key: bytes) -> int:
    return (partition_for(key, PARTITIONS) + 1) % PARTITIONS


def _charge(txn_id: str, amount: int) -> dict[str, object]:
    return {"txn_id": txn_id, "operator_id": "paypay", "mykey_id": PERSON, "kind": "purchase",
            "amount": amount, "occurred_at": "2020-09-13T12:00:00Z"}


async def _inject(bootstrap: str, prefix: str) -> dict[str, tuple[int, str]]:
    """Produce one message of every poison kind; return {name: (partition, topic)}."""
    t = topics_for(prefix)
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(), max_request_size=10 << 20)
    await p.start()
    right = partition_for(PERSON.encode(), PARTITIONS)
    wrong = _other_partition(PERSON.encode())
    sent: dict[str, tuple[str, int, int]] = {}

    async def send(name: str, topic: str, value: bytes | None, key: bytes | None,
                   partition: int, headers: list[tuple[str, bytes]] | None = None) -> None:
        md = await p.send_and_wait(topic, value, key=key, partition=partition,
                                   timestamp_ms=TS, headers=headers)
        sent[name] = (topic, md.partition, md.offset)

    await send("enrollment", enr_topic(t), orjson.dumps(
        {"mykey_id": PERSON, "operator_id": "paypay", "applied_at": "2020-09-01T09:00:00+09:00"}),
        PERSON.encode(), right)
    await asyncio.sleep(0.5)  # applications precede spending
    await send("wrong_key", txn_topic(t), orjson.dumps(_charge("p-wrong-key", 1000)),
               b"SomeoneE", wrong)
    await send("no_key", txn_topic(t), orjson.dumps(_charge("p-no-key", 2000)), None, wrong)
    await send("invalid_utf8", txn_topic(t), b'{"txn_id": "\xff\xfe"}', b"x", 0)
    await send("invalid_json", txn_topic(t), b'{"txn_id": ', b"x", 0)
    await send("too_large", txn_topic(t),
               orjson.dumps({**_charge("p-big", 1), "note": "x" * (1 << 21)}), PERSON.encode(),
               right)
    await send("empty", txn_topic(t), None, b"x", 0)
    await send("bad_arrow", txn_topic(t), b"not arrow at all", b"x", 1,
               [(FORMAT_HEADER, FORMAT_ARROW)])
    await send("unknown_format", txn_topic(t), b"{}", b"x", 1, [(FORMAT_HEADER, b"csv")])
    # a JSON Lines chunk mixing a good line with a broken one, sent to the wrong partition
    chunk = orjson.dumps(_charge("p-chunk-ok", 400)) + b"\n{broken\n"
    await send("chunk", txn_topic(t), chunk, None, wrong, [(FORMAT_HEADER, FORMAT_JSONL)])
    # an Arrow IPC batch with a PII number in an extra column
    table = pa.table({**{k: [v] for k, v in _charge("p-arrow-pii", 100).items()},
                      "note": ["123456789018"]})
    await send("arrow_pii", txn_topic(t), ipc(table), PERSON.encode(), right,
               [(FORMAT_HEADER, FORMAT_ARROW)])
    await p.stop()
    return {k: v for k, v in sent.items()}  # type: ignore[misc]


def test_poison_records_mixed_into_a_normal_stream(kafka_broker, topic_prefix, tmp_path: Path,
                                                   tmp_path_factory, runtime: str) -> None:
    sc = make_scenario(tmp_path_factory.mktemp("poison-campaign"), 200, 2000, seed=11)
    # 2 re-routed grants, 6 unreadable messages, 2 chunk records, 1 Arrow row
    # (the enrollment has no output)
    sent, grants, rejections = _run_with(kafka_broker.bootstrap, topic_prefix(), tmp_path, sc,
                                         _inject, lambda sent: 11, runtime)

    def src(name: str, i: int | None = None) -> str:
        topic, part, off = sent[name]
        return f"{topic}/{part}/{off}" + (f"#{i}" if i is not None else "")

    rej = {r["source"]: r for r in rejections.to_pylist()}
    grt = {g["source"]: g for g in grants.to_pylist()}
    for name, i in (("wrong_key", None), ("no_key", None), ("chunk", 0)):
        s = src(name, i)
        assert s in grt, (name, rej.get(s), LAST_STATS,
                          (tmp_path / "w.log").read_text(errors="replace")[-3000:])
    # misrouted and keyless records are re-routed to their person and decided there
    assert grt[src("wrong_key")]["points"] == 250
    assert grt[src("no_key")]["points"] == 500
    assert grt[src("no_key")]["cumulative_points"] == 750
    assert grt[src("chunk", 0)]["points"] == 100
    for name, detail in [("invalid_utf8", "not valid UTF-8"), ("invalid_json", "not valid JSON"),
                         ("too_large", "size limit"), ("empty", "empty message"),
                         ("bad_arrow", "not a valid Arrow IPC stream"),
                         ("unknown_format", "unknown mynapoint-format")]:
        r = rej[src(name)]
        assert (r["reason"], r["record_type"]) == ("MALFORMED", "transaction"), name
        assert detail in r["detail"], (name, r["detail"])
    assert rej[src("chunk", 1)]["reason"] == "MALFORMED"
    pii = rej[src("arrow_pii", 0)]
    assert pii["reason"] == "PERSONAL_NUMBER_FORBIDDEN"
    assert pii["mykey_id"] is None and pii["txn_id"] is None
    assert "123456789018" not in str(rejections.to_pylist()) + str(grants.to_pylist())
    # and the normal stream around them is exactly the offline result
    _assert_the_rest_is_offline(sc, tmp_path, grants, rejections,
                                {f"{topic}/{part}/{off}" for topic, part, off in sent.values()})

async def _inject_catalogue(bootstrap: str, prefix: str
                            ) -> dict[str, list[tuple[Poison, str]]]:
    """Every poison of tests/poison_records.py in every message format; returns, per
    format, each entry with the source its (first) outcome carries."""
    # on the unattributed inputs: the catalogue's reasons are those of input that names
    # no source operator (on an operator's topic, a record claiming no or another
    # operator is OPERATOR_MISMATCH first: tests/streams/test_operator_topics.py)
    t = topics_for(prefix)
    txns, enrs = t.input_of(None, "transaction"), t.input_of(None, "enrollment")
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client(), max_request_size=10 << 20)
    await p.start()
    right = partition_for(PERSON.encode(), PARTITIONS)
    key = PERSON.encode()

    async def send(value: bytes, fmt: bytes | None, topic: str | None = None) -> str:
        md = await p.send_and_wait(topic or txns, value, key=key, partition=right,
                                   timestamp_ms=TS,
                                   headers=[(FORMAT_HEADER, fmt)] if fmt else None)
        return f"{topic or txns}/{md.partition}/{md.offset}"

    await send(orjson.dumps(ENROLLMENT), None, enrs)
    await asyncio.sleep(0.5)  # applications precede spending
    sent: dict[str, list[tuple[Poison, str]]] = {"one": [], "chunk": [], "arrow": []}
    for c in json_poison("one"):
        if c.stream:
            sent["one"].append((c, await send(c.text, None)))
    chunk = [c for c in json_poison("chunk") if c.stream]
    at = await send(b"\n".join(c.text for c in chunk), FORMAT_JSONL)
    sent["chunk"] = [(c, f"{at}#{i}") for i, c in enumerate(chunk)]
    tables = [c for c in json_poison("jarrow") + arrow_poison("arrow")
              if c.stream and c.table is not None]
    for c in tables:
        assert c.table is not None
        sent["arrow"].append((c, await send(ipc(c.table), FORMAT_ARROW) + "#0"))
    # on the wrong partition: a record that passes its checks is re-routed (written
    # out again with its timestamps, which must all be writable), one that fails them
    # is decided where it is
    wrong = _other_partition(key)
    sent["misrouted"] = []
    for c in json_poison("wrong"):
        if c.name.startswith("year-") or c.name in ("fraction-12", "lower-case"):
            md = await p.send_and_wait(txns, c.text, key=b"SomeoneE", partition=wrong,
                                       timestamp_ms=TS)
            sent["misrouted"].append((c, f"{txns}/{md.partition}/{md.offset}"))
    sent["unreadable"] = [
        (Poison("bad-utf8", "", b"", "MALFORMED", "not a valid Arrow IPC"),
         await send(ipc(invalid_utf8_table("u")), FORMAT_ARROW)),
        (Poison("compressed", "", b"", "MALFORMED", "Arrow IPC body compression"),
         await send(ipc(pa.Table.from_pylist([base("zstd-1")]), "zstd"), FORMAT_ARROW))]
    # enrollments: each person on their own partition where the key says so
    for fmt in ("enr-one", "enr-chunk", "enr-arrow"):
        catalogue = enrollment_poison(fmt[4:8])
        texts = [c for c in catalogue if c.text]
        if fmt == "enr-one":
            sent[fmt] = []
            for c in texts:
                m = re.search(rb'"mykey_id":"([0-9A-Za-z]{8})"', c.text)
                md = await p.send_and_wait(enrs, c.text,
                                           key=m.group(1) if m else b"x", timestamp_ms=TS)
                sent[fmt].append((c, f"{enrs}/{md.partition}/{md.offset}"))
        elif fmt == "enr-chunk":
            at = await send(b"\n".join(c.text for c in texts), FORMAT_JSONL, enrs)
            sent[fmt] = [(c, f"{at}#{i}") for i, c in enumerate(texts)]
        else:
            sent[fmt] = [(c, await send(ipc(c.table), FORMAT_ARROW, enrs) + "#0")
                         for c in catalogue if c.table is not None]
    await p.stop()
    return sent


def test_every_poison_kind_in_every_message_format(kafka_broker, topic_prefix, tmp_path: Path,
                                                   tmp_path_factory) -> None:
    sc = make_scenario(tmp_path_factory.mktemp("poison-catalogue"), 150, 1500, seed=12)
    sent, grants, rejections = _run_with(
        kafka_broker.bootstrap, topic_prefix(), tmp_path, sc, _inject_catalogue,
        lambda sent: sum(expected_count(c) for fmt, entries in sent.items() for c, _ in entries
                         if not (fmt.startswith("enr") and c.reason == GRANT)))
    rej = {r["source"]: r for r in rejections.to_pylist()}
    grt = {g["source"]: g for g in grants.to_pylist()}
    assert len(rej) == rejections.num_rows and len(grt) == grants.num_rows  # one each
    assert "123456789018" not in str(rejections.to_pylist()) + str(grants.to_pylist())
    formats_seen: dict[str, int] = {}
    for fmt, entries in sent.items():
        for c, src in entries:
            rows = [f"{src.rsplit('#', 1)[0]}#{i}" for i in range(c.table.num_rows)] \
                if fmt == "arrow" and c.table is not None else [src]
            for s in rows:
                if fmt.startswith("enr") and c.reason == GRANT:  # accepted: no outcome
                    assert s not in rej and s not in grt, (fmt, c.name)
                    continue
                assert (s in rej) != (s in grt), (fmt, c.name, s)  # exactly one outcome
                if c.reason == GRANT:
                    assert grt[s]["points"] == 25, (fmt, c.name)
                else:
                    r = rej[s]
                    assert r["reason"] == c.reason, (fmt, c.name, r)
                    assert c.detail in r["detail"] and len(r["detail"]) <= 200, (fmt, c.name)
            formats_seen[fmt] = formats_seen.get(fmt, 0) + 1
    assert formats_seen["one"] == formats_seen["chunk"] > 40 and formats_seen["arrow"] > 70
    assert formats_seen["enr-one"] == formats_seen["enr-chunk"] > 10
    assert formats_seen["misrouted"] == 8
    assert formats_seen["enr-arrow"] > 4
    # the normal stream around them is exactly the offline result
    cmp = _assert_the_rest_is_offline(sc, tmp_path, grants, rejections,
                                      {src.split("#")[0] for entries in sent.values()
                                       for _, src in entries})
    poison = sum(formats_seen.values())
    fault_report("poison_every_kind", sc, cmp, poison_records=poison,
                 poison_outcomes=grants.num_rows + rejections.num_rows - sc.expected_outcomes,
                 message_formats=3)


def _run_with(bootstrap: str, prefix: str, tmp_path: Path, sc: Scenario,
              inject: Callable[[str, str], Coroutine[Any, Any, Any]], extra: Callable[[Any], int],
              runtime: str = "aiokafka") -> tuple[Any, pa.Table, pa.Table]:
    """A worker settles the scenario, published as one-record messages, with
    ``inject``'s poison sent in the middle; returns what ``inject`` returned and the
    collected outcomes (the scenario's plus ``extra(sent)``)."""
    w = worker(bootstrap, prefix, tmp_path, runtime=runtime).start()
    t = threading.Thread(target=publish, args=(bootstrap, prefix, sc, tmp_path / "m.parquet",
                                               1, 2000.0))
    try:
        t.start()
        time.sleep(0.5)
        sent = asyncio.run(inject(bootstrap, prefix))
        t.join()
        stats: dict[str, object] = {}
        # collect returns as soon as the count is in: the idle timeout bounds only a
        # run that lacks outcomes, and must not cut off a slow tail of re-routed ones
        grants, rejections = asyncio.run(collect(
            bootstrap, topics_for(prefix), expect=sc.expected_outcomes + extra(sent),
            idle_timeout=60.0, stats=stats))
        assert not stats.get("conflicts"), stats  # a copy is the same decision
        LAST_STATS.clear()
        LAST_STATS.update(stats)
        assert w.alive, "a poison message stopped the worker"
    finally:
        w.stop()
        t.join()
    log = (tmp_path / "w.log").read_text(errors="replace")
    assert "Traceback" not in log and "123456789018" not in log, log[-2000:]
    return sent, grants, rejections


def _assert_the_rest_is_offline(sc: Scenario, tmp_path: Path, grants: pa.Table,
                                rejections: pa.Table, poison_messages: set[str]) -> Comparison:
    """The outcomes of every message but the poison ones are the offline result."""
    def normal(t: pa.Table) -> pa.Table:
        return t.filter(pa.array([s.split("#")[0] not in poison_messages
                                  for s in t["source"].to_pylist()]))

    normal_g, normal_r = normal(grants), normal(rejections)
    assert normal_g.num_rows + normal_r.num_rows == sc.expected_outcomes
    m = pq.read_table(tmp_path / "m.parquet")
    mapping = dict(zip(m["kafka_source"].to_pylist(), m["input_source"].to_pylist(),
                       strict=True))
    c = compare(sc.offline.grants, sc.offline.rejections, normal_g, normal_r, mapping)
    assert c.equal, str(c)
    return c
