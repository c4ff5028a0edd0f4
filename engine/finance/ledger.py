"""The ledger: one DuckDB file holding every outcome of a settlement, append-only.

Tables (documented for analysts in docs/FINANCE.md):

- ``grants``: the columns of :data:`~engine.io.outputs_schema.GRANT_SCHEMA`, one row
  per ``grant_id``;
- ``rejections``: the columns of :data:`~engine.io.outputs_schema.REJECTION_SCHEMA`,
  one row per ``source``;
- ``grant_months``: per (operator, JST spending month) the counts and sums the
  monthly statements need, and ``grant_people``: the distinct people with a
  non-zero grant per (operator, spending month). Both are derived from the grants
  and kept up to date by :func:`append` in the transaction that adds the grants,
  so they cannot disagree with the rows and replay rebuilds them identically;
  statements then read a few hundred rows instead of every grant;
- ``kafka_offsets``: for the Kafka sink, the next offset to read per output
  partition, committed in the same transaction as the rows read before it;
- ``ledger_meta``: format name and version, so that a stray DuckDB file is refused.

Rows are only ever inserted. An outcome whose key is already present is skipped
when identical (a redelivered copy) and reported, never written, when its
content differs (a conflict). Uniqueness is enforced by this module's anti-joins
rather than by a PRIMARY KEY index: the index would cost more than the whole
load on 10^7 rows, and this module is the only writer (DuckDB locks the file
for one writing process).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from engine.io.outputs_schema import GRANT_SCHEMA, REJECTION_SCHEMA
from engine.rules.model import JST_OFFSET_US

LEDGER_FORMAT = "mynapoint-ledger"
LEDGER_VERSION = "2"
# version 1 had no grant_months/grant_people; opened for writing, it is upgraded in place
UPGRADABLE_VERSION = "1"
MAX_EXAMPLES = 5

# kind -> (table, identity column, Arrow schema)
KINDS: dict[str, tuple[str, str, pa.Schema]] = {
    "grant": ("grants", "grant_id", GRANT_SCHEMA),
    "rejection": ("rejections", "source", REJECTION_SCHEMA),
}


class LedgerError(RuntimeError):
    """The ledger file is unusable. ``str()`` names the file and the problem."""


def _sql_type(t: pa.DataType) -> str:
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_timestamp(t) and t.tz is not None:
        return "TIMESTAMPTZ"
    raise TypeError(f"no ledger column type for {t}")


def _create_table(name: str, schema: pa.Schema) -> str:
    cols = ", ".join(f"{f.name} {_sql_type(f.type)}{'' if f.nullable else ' NOT NULL'}"
                     for f in schema)
    return f"CREATE TABLE {name} ({cols})"


MONTH_COUNTERS = ("grants", "points_granted", "clawbacks", "points_clawed_back",
                  "zero_point_grants", "net_amount", "people")
_DERIVED_DDL = [
    "CREATE TABLE grant_months (operator_id VARCHAR NOT NULL, spending_month DATE NOT NULL, "
    + ", ".join(f"{c} BIGINT NOT NULL" for c in MONTH_COUNTERS) + ")",
    "CREATE TABLE grant_people (operator_id VARCHAR NOT NULL, spending_month DATE NOT NULL, "
    "mykey_id VARCHAR NOT NULL)",
]
_DDL = [
    "CREATE TABLE ledger_meta (key VARCHAR NOT NULL, value VARCHAR NOT NULL)",
    _create_table("grants", GRANT_SCHEMA),
    _create_table("rejections", REJECTION_SCHEMA),
    *_DERIVED_DDL,
    "CREATE TABLE kafka_offsets (topic VARCHAR NOT NULL, partition INTEGER NOT NULL, "
    "next_offset BIGINT NOT NULL, PRIMARY KEY (topic, partition))",
]
TABLE_COLUMNS: dict[str, list[str]] = {
    "grants": GRANT_SCHEMA.names,
    "rejections": REJECTION_SCHEMA.names,
    "grant_months": ["operator_id", "spending_month", *MONTH_COUNTERS],
    "grant_people": ["operator_id", "spending_month", "mykey_id"],
}


def jst_month_index(column: str) -> str:
    """SQL: the JST calendar month of a TIMESTAMPTZ column as ``year * 12 + month - 1``
    (integers group several times faster than dates or text; convert with
    :func:`month_start` after grouping)."""
    local = f"make_timestamp(epoch_us({column}) + {JST_OFFSET_US})"
    return f"(year({local}) * 12 + month({local}) - 1)"


def month_start(index: str) -> str:
    """SQL: the first day (DATE) of a month index of :func:`jst_month_index`."""
    return f"make_date(({index}) // 12, ({index}) % 12 + 1, 1)"


@dataclass
class AppendResult:
    """What one append did: rows added, identical copies skipped, conflicts refused."""

    added: dict[str, int] = field(default_factory=lambda: {"grant": 0, "rejection": 0})
    copies: int = 0
    conflicts: int = 0
    examples: list[str] = field(default_factory=list)

    def merge(self, other: AppendResult) -> None:
        for k, n in other.added.items():
            self.added[k] += n
        self.copies += other.copies
        self.conflicts += other.conflicts
        self.examples.extend(other.examples[:MAX_EXAMPLES - len(self.examples)])


def connect(path: str | Path, *, write: bool = False) -> Any:
    """Open a ledger. ``write=True`` creates it when the file does not exist;
    otherwise the file must exist and be a ledger. Raises :class:`LedgerError`."""
    import duckdb

    p = Path(path)
    if not p.exists() and not write:
        raise LedgerError(f"{p}: no such ledger file")
    if p.exists() and not p.is_file():
        raise LedgerError(f"{p}: not a file")
    fresh = not p.exists() or p.stat().st_size == 0
    try:
        con = duckdb.connect(str(p), read_only=not write)
    except duckdb.Error as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "lock" in first.lower():
            raise LedgerError(f"{p}: in use by another process (a running `ledger load "
                              "--from-kafka --follow`? stop it first)") from None
        raise LedgerError(f"{p}: not a ledger (DuckDB cannot open it: {first})") from None
    try:
        # no progress bar: it would be drawn into the command's output
        con.execute("SET enable_progress_bar = false")
        if fresh:
            initialize(con)
        elif write:
            _upgrade(con)
        _check(con, p)
    except BaseException:
        con.close()
        raise
    return con


def initialize(con: Any, database: str = "") -> None:
    """Create the ledger's tables in an empty database (``database``: an attached one)."""
    prefix = f"{database}." if database else ""
    with transaction(con):
        for stmt in _DDL:
            con.execute(stmt.replace("CREATE TABLE ", f"CREATE TABLE {prefix}", 1))
        con.executemany(f"INSERT INTO {prefix}ledger_meta VALUES (?, ?)",
                        [["format", LEDGER_FORMAT], ["version", LEDGER_VERSION]])


def _upgrade(con: Any) -> None:
    """Bring a version 1 ledger to this version: add the derived tables, computed
    from the grants already in it (the same code that maintains them on append)."""
    import duckdb

    try:
        version = con.execute("SELECT value FROM ledger_meta WHERE key = 'version'").fetchone()
    except duckdb.Error:
        return  # not a ledger: _check names the problem
    if version is None or version[0] != UPGRADABLE_VERSION:
        return
    with transaction(con):
        for stmt in _DERIVED_DDL:
            con.execute(stmt)
        accumulate(con, "grants")
        con.execute("UPDATE ledger_meta SET value = ? WHERE key = 'version'", [LEDGER_VERSION])


def _check(con: Any, p: Path) -> None:
    import duckdb

    try:
        meta = dict(con.execute("SELECT key, value FROM ledger_meta").fetchall())
    except duckdb.Error:
        raise LedgerError(f"{p}: not a ledger (a DuckDB file without the ledger_meta "
                          "table)") from None
    if meta.get("format") != LEDGER_FORMAT:
        raise LedgerError(f"{p}: not a ledger (ledger_meta format is "
                          f"{meta.get('format')!r}, not {LEDGER_FORMAT!r})")
    if meta.get("version") == UPGRADABLE_VERSION:
        raise LedgerError(f"{p}: ledger version {UPGRADABLE_VERSION} predates the statement "
                          "tables; upgrade it in place by loading into it once, e.g. "
                          f"`mynapoint ledger load --ledger {p} --from OUT_DIR` (outputs "
                          "already in it change nothing)")
    if meta.get("version") != LEDGER_VERSION:
        raise LedgerError(f"{p}: ledger version {meta.get('version')!r} is not supported "
                          f"(this engine reads version {LEDGER_VERSION})")
    for table, want in TABLE_COLUMNS.items():
        cols = [r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
            "ORDER BY ordinal_position", [table]).fetchall()]
        if cols != want:
            raise LedgerError(f"{p}: not a ledger (table {table} has columns {cols})")


@contextmanager
def transaction(con: Any) -> Iterator[None]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def append(con: Any, kind: str, stage: str) -> AppendResult:
    """Insert the outcomes of relation ``stage`` (a view or registered Arrow table
    with exactly the ledger columns, in the order to keep) into the ledger, inside
    the caller's transaction. The first copy of a key wins; identical later copies
    are skipped; differing ones are conflicts, counted and never written."""
    table, key, schema = KINDS[kind]
    cols = schema.names
    col_list = ", ".join(cols)
    res = AppendResult()
    differs = " OR ".join(f"a.{c} IS DISTINCT FROM b.{c}" for c in cols)
    n, distinct = con.execute(f"SELECT count(*), count(DISTINCT {key}) FROM {stage}").fetchone()
    source = stage
    if n != distinct:
        # Repeats inside the input: keep the first of each key, judge the others against it.
        con.execute(f"CREATE OR REPLACE TEMP TABLE _numbered AS "
                    f"SELECT *, row_number() OVER () AS _ord FROM {stage}")
        con.execute(f"CREATE OR REPLACE TEMP TABLE _first AS SELECT * FROM _numbered "
                    f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY _ord) = 1")
        res.merge(_judge(con, kind, "_numbered", "_first", key, differs, same_input=True))
        con.execute(f"CREATE OR REPLACE TEMP VIEW _dedup AS "
                    f"SELECT {col_list} FROM _first ORDER BY _ord")
        source = "_dedup"
    before = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    new = f"SELECT {col_list} FROM {source} s"
    if before:
        res.merge(_judge(con, kind, source, table, key, differs, same_input=False))
        new += f" WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.{key} = s.{key})"
    con.execute(f"CREATE OR REPLACE TEMP VIEW _fresh AS {new}")
    if kind == "grant":
        accumulate(con, "_fresh")  # before the insert: afterwards _fresh is empty
    con.execute(f"INSERT INTO {table} SELECT * FROM _fresh")
    res.added[kind] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] - before
    for tmp in ("_numbered", "_first"):
        con.execute(f"DROP TABLE IF EXISTS {tmp}")
    for view in ("_fresh", "_dedup"):
        con.execute(f"DROP VIEW IF EXISTS {view}")
    return res


def accumulate(con: Any, new: str) -> None:
    """Add the grants of relation ``new`` (none of them in the ledger yet) to
    ``grant_months`` and ``grant_people``, inside the caller's transaction."""
    month = jst_month_index("occurred_at")
    # no anti-join with an empty table (here and in append): it still hashes every new
    # row, about a fifth of the CPU of a first load of 10^7 grants
    known = ("" if not con.execute("SELECT EXISTS (SELECT 1 FROM grant_people)").fetchone()[0]
             else f"""WHERE NOT EXISTS (SELECT 1 FROM grant_people p
                          WHERE p.operator_id = n.operator_id AND p.mykey_id = n.mykey_id
                            AND p.spending_month = {month_start("n.m")})""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _new_people AS
        SELECT n.operator_id, {month_start("n.m")} AS spending_month, n.mykey_id
        FROM (SELECT DISTINCT operator_id, {month} AS m, mykey_id FROM {new}
              WHERE points <> 0) n {known}""")
    con.execute("INSERT INTO grant_people SELECT * FROM _new_people")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _new_months AS
        WITH g AS (
            SELECT operator_id, {month_start(month)} AS spending_month,
                   count(*) FILTER (WHERE points > 0) AS grants,
                   coalesce(sum(points) FILTER (WHERE points > 0), 0) AS points_granted,
                   count(*) FILTER (WHERE points < 0) AS clawbacks,
                   coalesce(-sum(points) FILTER (WHERE points < 0), 0) AS points_clawed_back,
                   count(*) FILTER (WHERE points = 0) AS zero_point_grants,
                   sum(CASE WHEN kind = 'refund' THEN -amount ELSE amount END) AS net_amount
            FROM {new} GROUP BY ALL),
        p AS (SELECT operator_id, spending_month, count(*) AS people FROM _new_people
              GROUP BY ALL)
        SELECT operator_id, spending_month,
               {", ".join(f"CAST(coalesce({c}, 0) AS BIGINT) AS {c}" for c in MONTH_COUNTERS)}
        FROM g LEFT JOIN p USING (operator_id, spending_month)""")
    same = ("grant_months.operator_id = d.operator_id "
            "AND grant_months.spending_month = d.spending_month")
    con.execute("UPDATE grant_months SET "
                + ", ".join(f"{c} = grant_months.{c} + d.{c}" for c in MONTH_COUNTERS)
                + f" FROM _new_months d WHERE {same}")
    con.execute("INSERT INTO grant_months SELECT * FROM _new_months d WHERE NOT EXISTS "
                f"(SELECT 1 FROM grant_months WHERE {same})")
    con.execute("DROP TABLE _new_people")
    con.execute("DROP TABLE _new_months")


def _judge(con: Any, kind: str, new: str, kept: str, key: str, differs: str,
           same_input: bool) -> AppendResult:
    """Copies of keys in ``new`` that are already in ``kept``: identical or conflicting."""
    res = AppendResult()
    extra = "AND a._ord <> b._ord" if same_input else ""
    copies, conflicts = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {differs}) FROM {new} a "
        f"JOIN {kept} b ON a.{key} = b.{key} {extra}").fetchone()
    res.copies, res.conflicts = copies - conflicts, conflicts
    if conflicts:
        schema = KINDS[kind][2]
        diff_cols = ", ".join(
            f"CASE WHEN a.{c} IS DISTINCT FROM b.{c} THEN '{c}' END" for c in schema.names)
        where = "the same input" if same_input else "the ledger"
        for ident, fields in con.execute(
                f"SELECT a.{key}, list_filter([{diff_cols}], x -> x IS NOT NULL) FROM {new} a "
                f"JOIN {kept} b ON a.{key} = b.{key} {extra} WHERE {differs} "
                f"ORDER BY a.{key} LIMIT {MAX_EXAMPLES}").fetchall():
            res.examples.append(f"conflict: {kind} {key}={ident!r} differs from the copy in "
                                f"{where} in {', '.join(fields)}; not written")
    return res


def parquet_outputs(out_dir: str | Path) -> dict[str, Path]:
    """The ``grants.parquet`` and ``rejections.parquet`` of a ``settle`` (or
    ``collect``) output directory, checked against the output schemas; raises
    :class:`InputError` for a missing or wrongly shaped file."""
    import pyarrow.parquet as pq

    d = Path(out_dir)
    files = {}
    for kind, (table, _key, schema) in KINDS.items():
        f = d / f"{table}.parquet"
        if not f.is_file():
            raise InputError(f"{f}: no such file (give the output directory of "
                             "mynapoint settle or collect)")
        try:
            got = pq.read_schema(f)
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{f}: cannot read as Parquet ({str(e).splitlines()[0]})") \
                from None
        for want in schema:
            if want.name not in got.names:
                raise InputError(f"{f}: missing column {want.name} (not a {table} file "
                                 "of mynapoint settle)")
            if not got.field(want.name).type.equals(want.type):
                raise InputError(f"{f}: column {want.name} has type "
                                 f"{got.field(want.name).type}, expected {want.type}")
        files[kind] = f
    return files


def load_parquet(con: Any, files: dict[str, Path]) -> AppendResult:
    """Append the files of :func:`parquet_outputs` in one transaction."""
    res = AppendResult()
    with transaction(con):
        for kind, f in files.items():
            cols = ", ".join(KINDS[kind][2].names)
            path = str(f).replace("'", "''")
            con.execute(f"CREATE OR REPLACE TEMP VIEW _stage AS "
                        f"SELECT {cols} FROM read_parquet('{path}')")
            res.merge(append(con, kind, "_stage"))
            con.execute("DROP VIEW _stage")
    return res


class InputError(ValueError):
    """An input file is unusable. ``str()`` names the file, line or column, and problem."""


def read_table(con: Any, kind: str) -> pa.Table:
    """A ledger table as Arrow with exactly the output schema, ordered by its key."""
    table, key, schema = KINDS[kind]
    t = con.execute(f"SELECT * FROM {table} ORDER BY {key}").to_arrow_table()
    return pa.Table.from_arrays([t[c].cast(f.type) for c, f in zip(schema.names, schema,
                                                                     strict=True)],
                                schema=schema)
