"""``mynapoint settle``: offline settlement of enrollment and transaction files."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from engine.config import load_or_report
from engine.io.outputs import grants_table, rejections_table, write_atomically
from engine.io.readers import InputError, read_records
from engine.rules.model import OPERATOR_ID, Campaign, Registry
from engine.rules.settlement import decide_offline
from engine.rules.strings import kafka_partitions
from engine.rules.validate import (
    Validated,
    concat_validated,
    validate_enrollments,
    validate_transactions,
)
from engine.tools.summary import render, summarize_arrays

PROGRESS_MIN_BYTES = 20_000_000  # below this a run is over before a bar is worth drawing


@dataclass(frozen=True)
class Slice:
    """Partition ``index`` of ``count``: the people whose ``mykey_id`` Kafka's default
    partitioner (murmur2) puts on that partition of ``count``, as on the input topics;
    records without a valid ``mykey_id`` belong to partition 0 (docs/DECISIONS.md).
    Every record belongs to exactly one slice and a person's records to the same one,
    so the slices' outputs together are the whole run's."""

    count: int = 1
    index: int = 0

    def select(self, v: Validated, src: pa.Array) -> tuple[Validated, pa.Array]:
        if self.count == 1:
            return v, src
        parts = kafka_partitions(v.mykey_id, self.count)
        # no valid mykey_id (absent, malformed, redacted): rejected without state,
        # so any one slice may decide it; partition 0 always exists
        parts[parts < 0] = 0
        idx = np.flatnonzero(parts == self.index)
        return v.take(idx), src.take(pa.array(idx, type=pa.int64()))


WHOLE = Slice()


@dataclass
class SettleResult:
    grants: pa.Table
    rejections: pa.Table
    summary: dict[str, Any]


# One input file, with the operator its records came from (None: not named, and then
# OPERATOR_MISMATCH is not checked). On the command line: ``PATH`` or ``OPERATOR=PATH``.
Input = tuple[str | None, Path]
_TAGGED = re.compile(rf"({OPERATOR_ID.pattern})=(.+)", re.DOTALL)


def parse_input(text: str, registry: Registry) -> Input:
    """``OPERATOR=PATH`` or ``PATH`` (write ``./a=b.jsonl`` for a file whose name has
    that form); raises InputError for an operator the registry does not know.

    >>> from engine.config import DEFAULT_REGISTRY as reg
    >>> parse_input("paypay=in/tx.jsonl", reg), parse_input("tx.jsonl", reg)
    (('paypay', PosixPath('in/tx.jsonl')), (None, PosixPath('tx.jsonl')))
    """
    m = _TAGGED.fullmatch(text)
    if m is None:
        return None, Path(text)
    if registry.code(m.group(1)) < 0:
        raise InputError(f"{m.group(1)!r} (before '=' in {text[:80]!r}) is not a registered "
                         "operator")
    return m.group(1), Path(m.group(2))


def settle_files(enrollments: str | Path | list[Input], transactions: str | Path | list[Input],
                 campaign: Campaign, registry: Registry,
                 progress: bool = False, part: Slice = WHOLE) -> SettleResult:
    """Read, validate, decide and tabulate (the whole input, or the slice ``part``);
    raises InputError for unusable files. Each input is one file, or several files
    each with the operator it came from; several files are read in the order given."""
    def inputs(x: str | Path | list[Input]) -> list[Input]:
        return x if isinstance(x, list) else [(None, Path(x))]

    enr_in, txn_in = inputs(enrollments), inputs(transactions)
    bar: Any = None
    size = sum(p.stat().st_size for _, p in (*enr_in, *txn_in) if p.exists())
    if progress and size >= PROGRESS_MIN_BYTES:
        from rich.progress import Progress
        bar = Progress(transient=True)
        bar.start()
    try:
        def tick(task: Any) -> Any:
            return (lambda k: bar.advance(task, k)) if bar else None

        t_enr = bar.add_task("reading enrollments", total=None) if bar else None
        enr, enr_src = _read_all(enr_in, "enrollment", campaign, registry, tick(t_enr))
        t_txn = bar.add_task("reading transactions", total=None) if bar else None
        txn, txn_src = _read_all(txn_in, "transaction", campaign, registry, tick(t_txn))
        t_dec = bar.add_task("deciding", total=None) if bar else None
        result = settle_validated(enr, enr_src, txn, txn_src, campaign, registry, part)
        if bar:
            bar.update(t_dec, completed=1, total=1)
    finally:
        if bar:
            bar.stop()
    return result


def _read_all(inputs: list[Input], record_type: str, campaign: Campaign, registry: Registry,
              progress: Any) -> tuple[Validated, pa.Array]:
    validate = validate_enrollments if record_type == "enrollment" else validate_transactions
    parts: list[Validated] = []
    sources: list[pa.Array] = []
    for operator, path in inputs:
        shaped, src = read_records(path, record_type, progress)
        if operator is not None:
            shaped.source_operator = pa.repeat(pa.scalar(operator, pa.string()), shaped.n)
        parts.append(validate(shaped, campaign, registry))
        sources.append(src.cast(pa.string()))
    return concat_validated(parts, record_type), pa.concat_arrays(sources)


def settle_archive(archive: str | Path, campaign: Campaign, registry: Registry,
                   part: Slice = WHOLE) -> SettleResult:
    """Settle a redacted archive (engine.archive): the records the stream read, with
    the stream's sources; raises ArchiveError for an archive that fails its audit."""
    from engine.archive.replay import read_archive
    from engine.archive.store import Archive

    a = Archive.open_verified(archive)
    enr, enr_src = read_archive(a, "enrollment", campaign, registry)
    txn, txn_src = read_archive(a, "transaction", campaign, registry)
    return settle_validated(enr, enr_src, txn, txn_src, campaign, registry, part)


def settle_validated(enr: Validated, enr_src: pa.Array, txn: Validated, txn_src: pa.Array,
                     campaign: Campaign, registry: Registry, part: Slice = WHOLE
                     ) -> SettleResult:
    """Decide validated records offline (the whole input, or the slice ``part`` of it)
    and tabulate the outcomes."""
    enr, enr_src = part.select(enr, enr_src)
    txn, txn_src = part.select(txn, txn_src)
    d = decide_offline(enr, txn, campaign)
    grants = grants_table(txn, d.txn_reason, d.txn_points, d.txn_cum, d.txn_seq, txn_src,
                          campaign.id, campaign.cap_points)
    rej_e = rejections_table(enr, d.enr_reason, d.enr_seq, enr_src)
    rej_t = rejections_table(txn, d.txn_reason, d.txn_seq, txn_src)
    rejections = _merge_by_seq(rej_e, d.enr_seq[d.enr_reason > 0],
                               rej_t, d.txn_seq[d.txn_reason > 0])
    assert d.txn_person is not None
    summary = summarize_arrays([o.id for o in registry.operators], txn.op, d.txn_person,
                               txn.kind, txn.amount, d.txn_points, d.txn_reason, d.enr_reason,
                               d.n_people, campaign.cap_points, campaign.id)
    if part != WHOLE:
        summary["partition"] = {"index": part.index, "count": part.count}
    return SettleResult(grants, rejections, summary)


def _merge_by_seq(a: pa.Table, seq_a: Any, b: pa.Table, seq_b: Any) -> pa.Table:
    t = pa.concat_tables([a, b])
    order = np.argsort(np.concatenate([np.sort(seq_a), np.sort(seq_b)]), kind="stable")
    return t.take(pa.array(order))


def main(args: argparse.Namespace) -> int:
    config = load_or_report("settle", args.campaign, args.operators)
    if config is None:
        return 2
    campaign, registry = config
    from engine.archive.store import ArchiveError

    count, index = getattr(args, "partitions", None), getattr(args, "partition", None)
    if index is not None and count is None:
        print("mynapoint settle: --partition needs --partitions", file=sys.stderr)
        return 2
    count = 1 if count is None else count
    index = 0 if index is None else index
    if count < 1 or not 0 <= index < count:
        print(f"mynapoint settle: --partitions must be at least 1 and --partition between 0 "
              f"and {max(count, 1) - 1}, got --partitions {count} --partition {index}",
              file=sys.stderr)
        return 2
    part = Slice(count, index)
    files = (args.enrollments, args.transactions)
    if (any(files) if args.archive else not all(files)):
        print("mynapoint settle: give --enrollments and --transactions, or --archive",
              file=sys.stderr)
        return 2
    try:
        if args.archive:
            result = settle_archive(args.archive, campaign, registry, part)
        else:
            result = settle_files([parse_input(x, registry) for x in args.enrollments],
                                  [parse_input(x, registry) for x in args.transactions],
                                  campaign, registry,
                                  progress=not args.quiet and sys.stderr.isatty(), part=part)
    except (InputError, ArchiveError) as e:
        print(f"mynapoint settle: input error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        write_atomically(out, {
            "grants.parquet": result.grants,
            "rejections.parquet": result.rejections,
            "summary.json": orjson.dumps(result.summary, option=orjson.OPT_INDENT_2) + b"\n",
        })
    except OSError as e:
        print(f"mynapoint settle: cannot write to {out}: {e.strerror}", file=sys.stderr)
        return 2
    if not args.quiet:
        from rich.console import Console
        Console().print(render(result.summary))
        print(f"wrote {out / 'grants.parquet'}, {out / 'rejections.parquet'}, "
              f"{out / 'summary.json'}")
    return 0
