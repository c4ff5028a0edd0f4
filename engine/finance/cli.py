"""``mynapoint ledger ...``: the finance commands.

Exit codes: 0 done; 1 reconcile/diff found differences, or load refused conflicting
copies; 2 bad input (file, line and problem in a one-line message; nothing
written); 3 statements do not tie out to the ledger (an engine bug).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.finance.ledger import InputError, LedgerError


def _fail(command: str, message: str) -> int:
    print(f"mynapoint ledger {command}: {message}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    from engine.config import ConfigError

    handler = {"load": _load, "statements": _statements, "settlement": _settlement,
               "reconcile": _reconcile, "diff": _diff, "report": _report}[args.ledger_command]
    try:
        return handler(args)
    except (LedgerError, InputError) as e:
        return _fail(args.ledger_command, str(e))
    except ConfigError as e:
        return _fail(args.ledger_command, f"configuration error: {e}")
    except OSError as e:
        return _fail(args.ledger_command,
                     f"{e.filename or ''}: {e.strerror or e}".removeprefix(": "))


def _print_appended(res: Any) -> None:
    for line in res.examples:
        print(f"mynapoint ledger load: {line}", file=sys.stderr)
    print(f"added {res.added['grant']:,} grants and {res.added['rejection']:,} rejections; "
          f"{res.copies:,} identical copies skipped; {res.conflicts:,} conflicting copies "
          "refused")


def _load(args: argparse.Namespace) -> int:
    from engine.finance import ledger

    if args.from_kafka:
        from engine.finance.sink import run_sink

        return run_sink(args)
    if not args.source:
        return _fail("load", "give --from OUT_DIR or --from-kafka")
    files = ledger.parquet_outputs(args.source)
    con = ledger.connect(args.ledger, write=True)
    try:
        res = ledger.load_parquet(con, files)
    finally:
        con.close()
    _print_appended(res)
    return 1 if res.conflicts else 0


def _statements(args: argparse.Namespace) -> int:
    import orjson

    from engine.config import load_operators
    from engine.finance import ledger
    from engine.finance.files import write_tables
    from engine.finance.statements import statements

    registry = load_operators(args.operators)
    con = ledger.connect(args.ledger)
    try:
        st = statements(con, registry, args.operators or "the shipped operators.toml")
    finally:
        con.close()
    control = st.control.to_pylist()[0]
    paths = write_tables(args.out, {"statements": st.table, "statements_control": st.control},
                         {"statements_control.json":
                          orjson.dumps(control, option=orjson.OPT_INDENT_2) + b"\n"})
    print(f"wrote {paths[0]} ({control['rows']:,} rows; net_points {control['net_points']:,}, "
          f"ledger points {control['ledger_points']:,}: "
          f"{'ties out' if control['ties_out'] else 'DOES NOT TIE OUT'})")
    return 0 if control["ties_out"] else 3


def _settlement(args: argparse.Namespace) -> int:
    from engine.config import load_operators
    from engine.finance import ledger
    from engine.finance.files import MONTH, read_csv_input, write_tables
    from engine.finance.statements import ADVANCE_COLUMNS, settlement

    registry = load_operators(args.operators)
    advances = read_csv_input(args.advances, ADVANCE_COLUMNS, integers=("paid_points",),
                              patterns={"payout_month": MONTH})
    con = ledger.connect(args.ledger)
    try:
        t = settlement(con, registry, args.operators or "the shipped operators.toml",
                       advances, args.advances)
    finally:
        con.close()
    paths = write_tables(args.out, {"settlement": t})
    balance = sum(t["balance"].to_pylist())
    print(f"wrote {paths[0]} ({t.num_rows} operators; total balance {balance:,} points)")
    return 0


def _print_summary(matched: int, summary: Any, other: str) -> None:
    print(f"matched: {matched:,}")
    for r in summary.to_pylist():
        print(f"{r['category']}: {r['rows']:,} rows, ledger {r['ledger_points']:,} points, "
              f"{other} {r[other + '_points']:,} points")


def _reconcile(args: argparse.Namespace) -> int:
    from engine.finance import ledger
    from engine.finance.files import read_csv_input, write_tables
    from engine.finance.reconcile import CLAIM_COLUMNS, reconcile

    claim = read_csv_input(args.claim, CLAIM_COLUMNS, integers=("points",))
    con = ledger.connect(args.ledger)
    try:
        if not con.execute("SELECT EXISTS (SELECT 1 FROM grants WHERE operator_id = ?)",
                           [args.operator]).fetchone()[0]:
            print(f"mynapoint ledger reconcile: note: the ledger has no grant of operator "
                  f"{args.operator!r}", file=sys.stderr)
        res = reconcile(con, args.operator, claim)
    finally:
        con.close()
    write_tables(args.out, {"differences": res.differences})
    _print_summary(res.matched, res.summary, "claimed")
    return 1 if res.differences.num_rows else 0


def _diff(args: argparse.Namespace) -> int:
    from engine.finance import ledger
    from engine.finance.files import write_tables
    from engine.finance.reconcile import diff_files

    ledger.connect(args.against).close()  # refuses a file that is not a ledger
    if Path(args.against).resolve() == Path(args.ledger).resolve():
        return _fail("diff", "--against names the same file as --ledger")
    con = ledger.connect(args.ledger)
    try:
        d = diff_files(con, args.against)
    finally:
        con.close()
    write_tables(args.out, {"differences": d.result.differences, "people": d.people,
                            "operators": d.operators})
    _print_summary(d.result.matched, d.result.summary, "against")
    return 1 if d.result.differences.num_rows else 0


def _report(args: argparse.Namespace) -> int:
    from engine.config import load_campaign, load_operators
    from engine.finance import ledger
    from engine.finance.report import build_report
    from engine.io.outputs import write_atomically

    registry = load_operators(args.operators)
    campaign = load_campaign(args.campaign)
    con = ledger.connect(args.ledger)
    try:
        html = build_report(con, registry, campaign,
                            args.operators or "the shipped operators.toml")
    finally:
        con.close()
    write_atomically(Path(args.out), {"report.html": html.encode("utf-8")})
    print(f"wrote {Path(args.out) / 'report.html'}")
    return 0
