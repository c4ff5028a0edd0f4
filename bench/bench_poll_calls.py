"""A live poll's decide phase without a broker: one call for all partitions
(DECISIONS 130) against one call per partition, on the same polls.

Eight partitions' settlement logic (each its own store, as in a worker) first take
the shipped campaign's enrollments and the first half of its transactions in large
batches (the people's histories), then the rest in polls of ``--records`` records
spread over the partitions by their people, as one-record messages, the way a live
poll brings them. Each poll is decided twice, on two copies of the same state: once
partition by partition, once in one call; the copies are compared, outcome for
outcome, so the timing is of equal work.

    .venv/bin/python bench/bench_poll_calls.py [--records 190 3300] [--polls 200]

Prints a table (not written to bench/RESULTS.md, whose Notes quote it).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict, namedtuple
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_settle import machine  # noqa: E402
from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY  # noqa: E402
from engine.io.readers import split_lines  # noqa: E402
from engine.kafka.topics import FORMAT_HEADER, FORMAT_JSONL, UNATTRIBUTED, Topics  # noqa: E402
from engine.rules.model import NO_TIME  # noqa: E402
from engine.rules.strings import kafka_partitions  # noqa: E402
from engine.streams.decode import InBatch, decode_messages  # noqa: E402
from engine.streams.logic import PartitionLogic, decide_together  # noqa: E402
from engine.streams.state import ShardStore  # noqa: E402
from engine.streams.worker import tune_gc  # noqa: E402
from engine.tools.generate import generate_tables, write_jsonl  # noqa: E402

Msg = namedtuple("Msg", "topic partition offset timestamp key value headers")
PARTS = 8
TOPICS = Topics("mynapoint")


def _by_partition(lines: list[bytes], table: pa.Table) -> list[list[bytes]]:
    parts = kafka_partitions(table.column("mykey_id").combine_chunks(), PARTS)
    out: list[list[bytes]] = [[] for _ in range(PARTS)]
    for line, p in zip(lines, np.maximum(parts, 0).tolist(), strict=True):
        out[p].append(line)
    return out


class Copy:
    """One copy of the eight partitions' state and their inputs' offsets."""

    def __init__(self, work: Path, name: str) -> None:
        self.logics = [PartitionLogic(DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, PARTS, p,
                                      ShardStore(work / name / f"p{p}", NO_TIME))
                       for p in range(PARTS)]
        self.offsets: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.polls = 0

    def batch(self, rtype: str, p: int, lines: list[bytes], one_per_message: bool
              ) -> InBatch | None:
        if not lines:
            return None
        topic = TOPICS.input_of(UNATTRIBUTED, rtype)
        chunks = [[line] for line in lines] if one_per_message else [lines]
        msgs = []
        for chunk in chunks:
            msgs.append(Msg(topic, p, self.offsets[(topic, p)], None, None, b"\n".join(chunk),
                            [(FORMAT_HEADER, FORMAT_JSONL)]))
            self.offsets[(topic, p)] += 1
        return decode_messages(msgs, rtype, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, 1 << 26,
                               source_operator=Topics.operator_of)

    def poll(self, rtype: str, lines: list[list[bytes]], together: bool,
             one_per_message: bool = True) -> tuple[float, list[int]]:
        """Decide one poll; returns the decide calls' seconds and each partition's
        outcome count."""
        work = [(p, self.batch(rtype, p, ls, one_per_message)) for p, ls in enumerate(lines)
                if ls]
        e_or_t = [(None, b) if rtype == "transaction" else (b, None) for _, b in work]
        t = time.perf_counter()
        if together:
            results = decide_together([(self.logics[p], e, tr, frozenset())
                                       for (p, _), (e, tr) in zip(work, e_or_t, strict=True)])
        else:
            results = [self.logics[p].decide(e, tr)
                       for (p, _), (e, tr) in zip(work, e_or_t, strict=True)]
        spent = time.perf_counter() - t
        for p, _ in work:
            self.logics[p].commit(self.polls)
        self.polls += 1
        return spent, [sum(len(v) for v in r.outcomes.values()) for r in results]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--transactions", type=int, default=600_000)
    ap.add_argument("--records", type=int, nargs="+", default=[190, 3300],
                    help="records a poll (the live latency load's polls: about 190 at a "
                         "tenth of the one-record rate, 3,300 at half)")
    ap.add_argument("--polls", type=int, default=150)
    a = ap.parse_args()
    tune_gc()
    work = Path(tempfile.mkdtemp(prefix="poll-calls-"))
    try:
        enr, txn = generate_tables(a.users, a.transactions, seed=2020, clean=True)
        write_jsonl(enr, work / "e.jsonl")
        write_jsonl(txn, work / "t.jsonl")
        e_parts = _by_partition(split_lines((work / "e.jsonl").read_bytes())[0], enr)
        t_lines = split_lines((work / "t.jsonl").read_bytes())[0]
        t_part = np.maximum(kafka_partitions(txn.column("mykey_id").combine_chunks(), PARTS),
                            0)
        apart, together = Copy(work, "apart"), Copy(work, "together")
        half = len(t_lines) // 2
        history = _by_partition(t_lines[:half], txn.slice(0, half))
        for c in (apart, together):  # the histories, in large batches
            c.poll("enrollment", e_parts, True, one_per_message=False)
            c.poll("transaction", history, True, one_per_message=False)
        rows = []
        at = half
        for size in a.records:
            spent: dict[bool, list[float]] = {False: [], True: []}
            for n in range(a.polls):
                if at + size > len(t_lines):
                    break
                lines: list[list[bytes]] = [[] for _ in range(PARTS)]
                for i in range(at, at + size):
                    lines[int(t_part[i])].append(t_lines[i])
                at += size
                # alternate which copy goes first: neither gets the warmer caches
                order = (False, True) if n % 2 else (True, False)
                counts = {}
                for tog in order:
                    s, counts[tog] = (together if tog else apart).poll("transaction", lines,
                                                                       tog)
                    spent[tog].append(s)
                if counts[True] != counts[False]:
                    raise SystemExit(f"poll {n}: outcomes differ {counts}")
            a_ms, t_ms = (1e3 * statistics.median(spent[k]) for k in (False, True))
            rows.append(f"| {size:,} | {len(spent[True])} | {a_ms:.2f} | {t_ms:.2f} | "
                        f"{a_ms - t_ms:.2f} |")
        print(f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
              f"`.venv/bin/python bench/bench_poll_calls.py --users {a.users} "
              f"--transactions {a.transactions} --records {' '.join(map(str, a.records))} "
              f"--polls {a.polls}`. Machine: {machine()}.\n")
        print("| records a poll (8 partitions) | polls | one call per partition (ms, "
              "median) | one call (ms, median) | saved (ms) |")
        print("|---:|---:|---:|---:|---:|")
        print("\n".join(rows))
        for c in (apart, together):
            for lg in c.logics:
                lg.store.close()
    finally:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
