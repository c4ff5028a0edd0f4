"""``mynapoint settle``: offline settlement of enrollment and transaction files."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, partial
from itertools import chain
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import orjson
import pyarrow as pa

from engine.config import load_or_report
from engine.io.outputs import (
    GRANT_CORE,
    ROW_GROUP,
    TableWriter,
    Writes,
    atomic_dir,
    decision_order,
    grant_core,
    grants_from_core,
    grants_table,
    rejections_table,
    write_atomically,
)
from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA
from engine.io.readers import InputError, Sources, count_rows, record_pieces
from engine.rules.model import OPERATOR_ID, Campaign, Registry
from engine.rules.settlement import decide_offline
from engine.rules.strings import kafka_partitions, one_array
from engine.rules.validate import (
    Validated,
    concat_validated,
    validate_enrollments,
    validate_transactions,
)
from engine.tools.slices import SortedRun, Spill, merge_runs
from engine.tools.summary import merge_summaries, render, summarize_arrays

# the sources of a batch: strings (an archive's), or file positions (input files)
Source: TypeAlias = "pa.Array | Sources"

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

    def select(self, v: Validated, src: Source) -> tuple[Validated, Source]:
        if self.count == 1:
            return v, src
        parts = kafka_partitions(v.mykey_id, self.count)
        # no valid mykey_id (absent, malformed, redacted): rejected without state,
        # so any one slice may decide it; partition 0 always exists
        parts[parts < 0] = 0
        idx = np.flatnonzero(parts == self.index)
        return v.take(idx), (src.select(idx) if isinstance(src, Sources)
                             else src.take(pa.array(idx, type=pa.int64())))


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


# Transactions decided in memory at once; a larger input is decided in slices of people
# spilled to disk (engine.tools.slices). Decided whole, 10 M transactions peak at about
# 2.7 GiB (DECISIONS 109: under 3 GB, the offline target), and spilling costs about a
# third of the time (bench/RESULTS.md).
SLICE_ROWS = 10_000_000

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def release_memory_eagerly() -> None:
    """Let freed memory go back to the system soon after it is freed, for a run that
    allocates and drops large arrays one after another (DECISIONS 109, 111). glibc
    raises its mmap threshold to the size of each large block freed, after which the
    8 MB columns of each row group come from heaps that do not shrink, and Arrow's
    default pool (mimalloc) keeps what it freed: at 10 M transactions the two held
    ~0.9 GB more than the live arrays. A fixed threshold returns numpy's blocks at
    once; Arrow's jemalloc pool reuses what it freed for about a second before giving
    it back, which spares a third of the page faults of returning it at once (the
    system pool) at the same peak."""
    import contextlib
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    # not glibc (no mallopt): its allocator keeps its own defaults
    with contextlib.suppress(OSError, AttributeError):
        if name and "libc" in name:
            ctypes.CDLL(name).mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)


def _inputs(x: str | Path | list[Input]) -> list[Input]:
    return x if isinstance(x, list) else [(None, Path(x))]


class _Bar:
    """The progress bar of a run, or nothing (quiet, not a terminal, a small input)."""

    def __init__(self, on: bool, paths: list[Path]) -> None:
        self.bar: Any = None
        if on and sum(p.stat().st_size for p in paths if p.exists()) >= PROGRESS_MIN_BYTES:
            from rich.progress import Progress
            self.bar = Progress(transient=True)
            self.bar.start()

    def task(self, text: str) -> Any:
        if not self.bar:
            return None
        t = self.bar.add_task(text, total=None)
        return lambda k: self.bar.advance(t, k)

    def stop(self) -> None:
        if self.bar:
            self.bar.stop()


def settle_files(enrollments: str | Path | list[Input], transactions: str | Path | list[Input],
                 campaign: Campaign, registry: Registry,
                 progress: bool = False, part: Slice = WHOLE) -> SettleResult:
    """Read, validate, decide and tabulate (the whole input, or the slice ``part``);
    raises InputError for unusable files. Each input is one file, or several files
    each with the operator it came from; several files are read in the order given."""
    enr_in, txn_in = _inputs(enrollments), _inputs(transactions)
    bar = _Bar(progress, [p for _, p in (*enr_in, *txn_in)])
    try:
        s = _settle_in_memory(enr_in, txn_in, campaign, registry, bar, part)
    finally:
        bar.stop()
    return s.result()


def _settle_in_memory(enr_in: list[Input], txn_in: list[Input], campaign: Campaign,
                      registry: Registry, bar: _Bar, part: Slice) -> Settled:
    enr, enr_src = _read_all(enr_in, "enrollment", campaign, registry, bar.task(
        "reading enrollments"))
    txn, txn_src = _read_all(txn_in, "transaction", campaign, registry, bar.task(
        "reading transactions"))
    enr, enr_src = part.select(enr, enr_src)
    txn, txn_src = part.select(txn, txn_src)
    return Settled(enr, enr_src, txn, txn_src, campaign, registry, part)


def _validated_pieces(inputs: list[Input], record_type: str, campaign: Campaign,
                      registry: Registry, progress: Any) -> Iterator[tuple[Validated, Sources]]:
    """The records of the inputs, in order, validated a piece (row group) at a time;
    the next piece is read and checked on a second thread meanwhile (Parquet
    decoding, Arrow compute and the numba checks release the GIL)."""
    validate = validate_enrollments if record_type == "enrollment" else validate_transactions

    def job(operator: str | None, piece: Any) -> tuple[Validated, Sources]:
        shaped, src = piece()
        if operator is not None:
            shaped.source_operator = pa.repeat(pa.scalar(operator, pa.string()), shaped.n)
        return validate(shaped, campaign, registry), src

    with ThreadPoolExecutor(max_workers=2) as pool:
        ahead: deque[Future[tuple[Validated, Sources]]] = deque()
        for operator, path in inputs:
            for piece in record_pieces(path, record_type, progress):
                ahead.append(pool.submit(job, operator, piece))
                if len(ahead) > 1:
                    yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


def _read_all(inputs: list[Input], record_type: str, campaign: Campaign, registry: Registry,
              progress: Any) -> tuple[Validated, Sources]:
    parts: list[Validated] = []
    sources: list[Sources] = []
    for v, src in _validated_pieces(inputs, record_type, campaign, registry, progress):
        parts.append(v)
        sources.append(src)
    return concat_validated(parts, record_type, consume=True), Sources.concat(sources)


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


def settle_validated(enr: Validated, enr_src: Source, txn: Validated, txn_src: Source,
                     campaign: Campaign, registry: Registry, part: Slice = WHOLE
                     ) -> SettleResult:
    """Decide validated records offline (the whole input, or the slice ``part`` of it)
    and tabulate the outcomes."""
    enr, enr_src = part.select(enr, enr_src)
    txn, txn_src = part.select(txn, txn_src)
    return Settled(enr, enr_src, txn, txn_src, campaign, registry, part).result()


class Settled:
    """Validated records decided in memory (the whole input, or some of its people),
    and the output rows they make, in decision order and a row group at a time."""

    def __init__(self, enr: Validated, enr_src: Source, txn: Validated, txn_src: Source,
                 campaign: Campaign, registry: Registry, part: Slice = WHOLE) -> None:
        self.enr, self.enr_src, self.txn, self.txn_src = enr, enr_src, txn, txn_src
        self.campaign, self.part = campaign, part
        self.registry = registry
        d = self.d = decide_offline(enr, txn, campaign)
        self.grant_rows = decision_order(d.txn_reason == 0, d.txn_seq)
        # every enrollment is decided before the first transaction
        self.enr_rejected = decision_order(d.enr_reason > 0, d.enr_seq)
        self.txn_rejected = decision_order(d.txn_reason > 0, d.txn_seq)

    @cached_property
    def summary(self) -> dict[str, Any]:
        d, txn = self.d, self.txn
        assert d.txn_person is not None
        summary = summarize_arrays(
            [o.id for o in self.registry.operators], txn.op, d.txn_person, txn.kind,
            txn.amount, d.txn_points, d.txn_reason, d.enr_reason, d.n_people,
            self.campaign.cap_points, self.campaign.id)
        if self.part != WHOLE:
            summary["partition"] = {"index": self.part.index, "count": self.part.count}
        return summary

    def grants(self, rows: slice = slice(None)) -> pa.Table:
        idx = self.grant_rows[rows]
        return grants_table(self.txn, idx, self.d.txn_points, self.d.txn_cum, self.txn_src,
                            self.campaign.id, self.campaign.cap_points)

    def rejections(self) -> Iterator[tuple[str, np.ndarray, pa.Table]]:
        """(record type, positions, table) pieces of the rejections, in order."""
        for v, reason, src, idx in (
                (self.enr, self.d.enr_reason, self.enr_src, self.enr_rejected),
                (self.txn, self.d.txn_reason, self.txn_src, self.txn_rejected)):
            for a in range(0, len(idx), ROW_GROUP):
                rows = idx[a:a + ROW_GROUP]
                yield v.record_type, rows, rejections_table(v, reason, rows, src)

    def grant_pieces(self) -> Iterator[tuple[np.ndarray, pa.Table]]:
        for a in range(0, len(self.grant_rows), ROW_GROUP):
            yield self.grant_rows[a:a + ROW_GROUP], self.grants(slice(a, a + ROW_GROUP))

    def result(self) -> SettleResult:
        return SettleResult(self.grants(), pa.concat_tables(
            [t for _, _, t in self.rejections()], promote_options="none")
            if len(self.enr_rejected) + len(self.txn_rejected)
            else REJECTION_SCHEMA.empty_table(), self.summary)

    def grant_core_pieces(self) -> Iterator[tuple[np.ndarray, pa.Table]]:
        """The grants as :func:`grant_core` rows with their sources as numbers
        (``source_file`` into the sources' names, ``source_position``), a row group
        at a time: what the slices of a large input spill and merge."""
        src = self.txn_src
        assert isinstance(src, Sources)
        for a in range(0, len(self.grant_rows), ROW_GROUP):
            rows = self.grant_rows[a:a + ROW_GROUP]
            t = grant_core(self.txn, rows, self.d.txn_points, self.d.txn_cum)
            yield rows, t.append_column("source_file", pa.array(src.file[rows])).append_column(
                "source_position", pa.array(src.position[rows]))

    def write(self, grants: TableWriter, rejections: TableWriter) -> None:
        """Write the outputs; each row group is written on a second thread while the
        next one is built. The summary is tallied on a third thread meanwhile: only
        the summary file, written last, needs it, and the first row group's build would
        otherwise have the machine to itself."""
        with ThreadPoolExecutor(max_workers=1) as side, Writes() as w:
            tally = side.submit(lambda: self.summary)
            for sink, table in chain(((grants, t) for _, t in self.grant_pieces()),
                                     ((rejections, t) for _, _, t in self.rejections())):
                w.put(partial(sink.write, table))
            tally.result()


def settle_to(out: Path, enrollments: list[Input], transactions: list[Input],
              campaign: Campaign, registry: Registry, progress: bool = False,
              part: Slice = WHOLE, slice_rows: int = SLICE_ROWS) -> dict[str, Any]:
    """``mynapoint settle``: settle files into ``out`` (grants, rejections, summary)
    and return the summary. Inputs with more than ``slice_rows`` transactions (in
    ``part``, estimated) are decided in slices of people spilled to disk, with the
    same outputs. Raises InputError for unusable files, before anything is written
    when the input is decided in memory."""
    rows = sum(count_rows(p) for _, p in transactions) // part.count
    n_slices = max(1, -(-rows // max(slice_rows, 1)))
    bar = _Bar(progress, [p for _, p in (*enrollments, *transactions)])
    try:
        if n_slices == 1:
            s = _settle_in_memory(enrollments, transactions, campaign, registry, bar, part)
            with atomic_dir(out) as tmp:
                gw = TableWriter(tmp / "grants.parquet", GRANT_SCHEMA)
                rw = TableWriter(tmp / "rejections.parquet", REJECTION_SCHEMA)
                s.write(gw, rw)
                gw.close()
                rw.close()
                _write_summary(tmp, s.summary)
            return s.summary
        with atomic_dir(out) as tmp:
            summary = _settle_sliced(tmp, enrollments, transactions, campaign, registry, bar,
                                     part, n_slices)
            _write_summary(tmp, summary)
        return summary
    finally:
        bar.stop()


def _write_summary(d: Path, summary: dict[str, Any]) -> None:
    (d / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")


def _settle_sliced(tmp: Path, enr_in: list[Input], txn_in: list[Input], campaign: Campaign,
                   registry: Registry, bar: _Bar, part: Slice, n: int) -> dict[str, Any]:
    """Spill the validated records of ``part`` into ``n`` slices of people, decide each
    slice in memory into sorted runs, merge the runs into the outputs."""
    spill_dir = tmp / "spill"
    spill_dir.mkdir()
    spill = Spill(spill_dir, n)
    totals = {}
    try:
        for record_type, inputs in (("enrollment", enr_in), ("transaction", txn_in)):
            first = 0
            for v, src in _validated_pieces(inputs, record_type, campaign, registry,
                                            bar.task(f"reading {record_type}s")):
                # one hash for both splits: h % (count * n) is h % count's refinement
                p = kafka_partitions(v.mykey_id, part.count * n)
                p[p < 0] = 0
                index = np.arange(first, first + v.n, dtype=np.int64)
                first += v.n
                spill.add(np.where(p % part.count == part.index, p // part.count, -1),
                          v, src, index)
            totals[record_type] = first
    finally:
        spill.close()
    n_enr, n_txn = totals["enrollment"], totals["transaction"]
    runs_g: list[Path] = []
    runs_r: list[Path] = []
    summaries = []
    tick = bar.task("deciding slices")
    # a slice's runs are written on a second thread while the next slice is read and
    # decided (one thread, so each run's pieces and its close keep their order)
    with Writes() as w:
        for k in range(n):
            enr, enr_src, enr_index = spill.read("enrollment", k)
            txn, txn_src, txn_index = spill.read("transaction", k)
            s = Settled(enr, enr_src, txn, txn_src, campaign, registry)
            summaries.append(s.summary)
            # the whole run's order: enrollments by their arrival, then each transaction
            # by the arrival that decided it (n_txn + j: decided at the end of the input)
            trig = s.d.txn_trigger
            assert trig is not None
            final = trig >= txn.n
            t_key = (n_enr + txn_index[np.where(final, trig - txn.n, trig)]
                     + np.where(final, n_txn, 0))
            g = SortedRun(spill_dir / f"grants-{k}.arrows", SPILLED_GRANT)
            for rows, t in s.grant_core_pieces():
                w.put(partial(g.write, t, t_key[rows]))
            w.put(g.close)
            r = SortedRun(spill_dir / f"rejections-{k}.arrows", REJECTION_SCHEMA)
            for record_type, rows, t in s.rejections():
                w.put(partial(r.write, t,
                              enr_index[rows] if record_type == "enrollment" else t_key[rows]))
            w.put(r.close)
            runs_g.append(g.path)
            runs_r.append(r.path)
            del s, enr, txn
            for name in ("enrollment", "transaction"):
                spill.path(name, k).unlink(missing_ok=True)
            if tick:
                tick(1)
    names = tuple(spill.names)

    def grants(t: pa.Table) -> pa.Table:
        src = Sources(names, _numbers(t, "source_file"), _numbers(t, "source_position"))
        return grants_from_core(t, src.take(np.arange(t.num_rows)), campaign.id,
                                campaign.cap_points)

    for name, schema, runs, finish in (
            ("grants", GRANT_SCHEMA, runs_g, grants),
            ("rejections", REJECTION_SCHEMA, runs_r, None)):
        sink = TableWriter(tmp / f"{name}.parquet", schema)
        merge_runs(runs, sink, finish)
        sink.close()
    shutil.rmtree(spill_dir, ignore_errors=True)
    summary = merge_summaries(summaries)
    if part != WHOLE:
        summary["partition"] = {"index": part.index, "count": part.count}
    return summary


def _numbers(t: pa.Table, name: str) -> np.ndarray:
    return np.asarray(one_array(t.column(name)).to_numpy())


# A slice's grants as spilled: the grant_core columns and each one's source as numbers
SPILLED_GRANT = GRANT_CORE.append(pa.field("source_file", pa.int32())).append(
    pa.field("source_position", pa.int64()))


def main(args: argparse.Namespace) -> int:
    config = load_or_report("settle", args.campaign, args.operators)
    if config is None:
        return 2
    release_memory_eagerly()
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
    out = Path(args.out)
    try:
        if args.archive:
            result = settle_archive(args.archive, campaign, registry, part)
            summary = result.summary
            write_atomically(out, {
                "grants.parquet": result.grants,
                "rejections.parquet": result.rejections,
                "summary.json": orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n",
            })
        else:
            summary = settle_to(out, [parse_input(x, registry) for x in args.enrollments],
                                [parse_input(x, registry) for x in args.transactions],
                                campaign, registry,
                                progress=not args.quiet and sys.stderr.isatty(), part=part,
                                slice_rows=getattr(args, "slice_rows", None) or SLICE_ROWS)
    except (InputError, ArchiveError) as e:
        print(f"mynapoint settle: input error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"mynapoint settle: cannot write to {out}: {e.strerror}", file=sys.stderr)
        return 2
    if not args.quiet:
        from rich.console import Console
        Console().print(render(summary))
        print(f"wrote {out / 'grants.parquet'}, {out / 'rejections.parquet'}, "
              f"{out / 'summary.json'}")
    return 0
