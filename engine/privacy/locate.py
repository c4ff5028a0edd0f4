"""``mynapoint admin locate --mykey-id ID``: where the engine holds data about a person.

The first step of honouring a deletion request (docs/PRIVACY.md). It reads, never
writes: the workers' local state checkpoints (files read, never opened for writing,
so running workers are not disturbed), the archive's files, and every table of a
DuckDB ledger that has a ``mykey_id`` column. With ``--broker`` it also reads the
engine's Kafka topics: the state changelog, the outcome topics and the raw input
still within retention (all keyed by ``mykey_id``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.kafka.client_config import default_client
from engine.rules.strings import is_individual_number


@dataclass
class Place:
    kind: str       # state | archive | ledger | kafka
    where: str      # a path, a table, a topic
    what: str       # what is held there, counted


def _valid_id(text: str) -> bool:
    return len(text) == 8 and text.isascii() and text.isalnum()


def in_state(state_dir: Path, mykey_id: str) -> list[Place]:
    """Every local state checkpoint (``<state-dir>/<group>/slot-N/pP``) holding the person."""
    from engine.streams.state import (
        FENCED_OFF_KEY,
        checkpointed,
        decode_fenced_off,
        decode_person,
        of_rocksdb,
    )
    from engine.streams.state_file import FILE_NAME

    out: list[Place] = []
    if not state_dir.exists():
        return out
    for cur in sorted(state_dir.rglob("CURRENT")):
        if of_rocksdb(cur.parent):
            # removed when its partition is next taken over here; not read, so it may
            # hold the person
            out.append(Place("state", str(cur.parent),
                             "a checkpoint of an earlier version (RocksDB), not read: "
                             "it may hold the person"))
    for f in sorted(state_dir.rglob(FILE_NAME)):
        where = f.parent
        try:
            # read, never opened for writing: a running worker's file is not disturbed
            # (an append under way is a torn last segment, left out)
            held = checkpointed(where)
        except OSError as e:
            out.append(Place("state", str(where), f"not readable ({type(e).__name__})"))
            continue
        raw, owed = held.get(mykey_id.encode()), held.get(FENCED_OFF_KEY)
        if owed is not None and mykey_id in decode_fenced_off(owed):
            # the id alone, in the list of keys to write again after a zombie's
            # records (DECISIONS 140)
            out.append(Place("state", str(where), "its id, among the keys owed a rewrite"))
        if raw is None:
            continue
        st = decode_person(raw)
        enrolled = f"enrolled with {st.enr_op}" if st.enr_op else "not enrolled"
        out.append(Place("state", str(where),
                         f"{enrolled}; {st.n_entries} transactions, {len(st.parked)} waiting, "
                         f"spending {st.c} yen"))
    return out


def in_archive(archive_dir: Path, mykey_id: str) -> list[Place]:
    """Archive files with messages that mention the person (key or content)."""
    from engine.archive.store import Archive

    needle = mykey_id.encode()
    a = Archive.open(archive_dir)
    out: list[Place] = []
    for e in a.files():
        t = a.read(e)
        offsets = [o for o, k, v in zip(t.column("offset").to_pylist(), t.column("key").to_pylist(),
                                        t.column("value").to_pylist(), strict=True)
                   if (k is not None and needle in k) or (v is not None and needle in v)]
        if offsets:
            shown = ", ".join(str(o) for o in offsets[:10]) + (" ..." if len(offsets) > 10 else "")
            out.append(Place("archive", str(archive_dir / str(e.file)),
                             f"{len(offsets)} messages of {e.topic}/{e.partition} "
                             f"(offsets {shown})"))
    return out


def in_ledger(ledger: Path, mykey_id: str) -> list[Place]:
    """Rows of every table of a DuckDB file that has a ``mykey_id`` column."""
    import duckdb

    out: list[Place] = []
    con = duckdb.connect(str(ledger), read_only=True)
    try:
        tables = con.execute(
            "SELECT table_schema, table_name FROM information_schema.columns "
            "WHERE column_name = 'mykey_id' ORDER BY 1, 2").fetchall()
        for schema, table in tables:
            name = f'"{schema}"."{table}"'
            row = con.execute(f"SELECT count(*) FROM {name} WHERE mykey_id = ?",
                              [mykey_id]).fetchone()
            n = int(row[0]) if row else 0
            if n:
                out.append(Place("ledger", f"{ledger}:{schema}.{table}", f"{n} rows"))
    finally:
        con.close()
    return out


async def in_kafka(bootstrap: str, prefix: str, group: str, mykey_id: str) -> list[Place]:
    """Records keyed by the person on the engine's topics (changelog: the latest
    value counts; a tombstone means nothing is held). Every record the logs hold is
    read, those of aborted transactions too (read_uncommitted): they are data kept,
    whether a consumer would be handed them or not."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from engine.kafka.fetch import PartitionReader
    from engine.kafka.topics import Topics, discover

    t = await discover(bootstrap, Topics(prefix, group))
    key = mykey_id.encode()
    out: list[Place] = []
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                         **default_client())
    await c.start()
    try:
        await c._client.force_metadata_update()
        every = {topic: [TopicPartition(topic, p)
                         for p in sorted(c.partitions_for_topic(topic) or ())]
                 for topic in (t.changelog, *t.outputs, *t.inputs)}
        # the engine's own reader over the consumer's connections: keys compared in the
        # fetched bytes, no record object per record of a whole topic
        reader = PartitionReader(c._client, committed=False)
        for topic, tps in every.items():
            if not tps:
                continue
            starts = await c.beginning_offsets(tps)
            ends = await c.end_offsets(tps)
            hits = 0
            latest: bytes | None = None
            for tp in tps:
                if ends[tp] <= starts[tp]:
                    continue
                async with contextlib.aclosing(
                        reader.read(tp, starts[tp], ends[tp] - 1)) as answers:
                    async for cols, _ in answers:
                        for col in cols:
                            rows = col.rows_keyed(key)
                            hits += len(rows)
                            if len(rows):
                                latest = col.value(int(rows[-1]))
            if topic == t.changelog:
                if latest is not None:
                    out.append(Place("kafka", topic, "the person's state (latest record)"))
            elif hits:
                out.append(Place("kafka", topic, f"{hits} records keyed by the person"))
    finally:
        await c.stop()
    return out


def locate(mykey_id: str, state_dir: Path | None, archive: Path | None, ledger: Path | None,
           kafka: tuple[str, str, str] | None = None) -> list[Place]:
    places: list[Place] = []
    if state_dir is not None:
        places += in_state(state_dir, mykey_id)
    if archive is not None:
        places += in_archive(archive, mykey_id)
    if ledger is not None:
        places += in_ledger(ledger, mykey_id)
    if kafka is not None:
        places += asyncio.run(in_kafka(*kafka, mykey_id))
    return places


def main(args: argparse.Namespace) -> int:
    who = args.mykey_id or ""
    if is_individual_number(who):
        # never echo it; the engine does not look people up by Individual Number
        print("mynapoint admin locate: that is an Individual Number; give the person's "
              "MyKey ID", file=sys.stderr)
        return 2
    if not _valid_id(who):
        print("mynapoint admin locate: --mykey-id must be exactly 8 characters [0-9A-Za-z]",
              file=sys.stderr)
        return 2
    for flag, path in (("--archive", args.archive), ("--ledger", args.ledger)):
        if path is not None and not Path(path).exists():
            print(f"mynapoint admin locate: {flag} {path}: no such file or directory",
                  file=sys.stderr)
            return 2
    from engine.archive.store import ArchiveError

    kafka: Any = None
    if args.with_kafka:
        kafka = (args.broker, args.topic_prefix, args.group or "")
    try:
        places = locate(who, Path(args.state_dir) if args.state_dir else None,
                        Path(args.archive) if args.archive else None,
                        Path(args.ledger) if args.ledger else None, kafka)
    except ArchiveError as e:
        print(f"mynapoint admin locate: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a foreign DuckDB file, an unreachable broker: one line
        print(f"mynapoint admin locate: cannot read ({type(e).__name__}: "
              f"{str(e).splitlines()[0][:200] if str(e) else ''})", file=sys.stderr)
        return 2
    for p in places:
        print(f"{p.kind}\t{p.where}\t{p.what}")
    print(f"{len(places)} places hold data about {who}")
    return 0
