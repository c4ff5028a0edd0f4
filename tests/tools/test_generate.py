"""The synthetic campaign generator: determinism, sizes, formats, realism."""

from __future__ import annotations

import argparse
import hashlib
import re
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.rules.model import (
    ENGINE_LIMIT_REASONS,
    ENROLLMENT_REASONS,
    SOURCE_REASONS,
    TRANSACTION_REASONS,
    Campaign,
    jst_day,
)
from engine.rules.strings import check_digit, is_individual_number
from engine.tools import generate as G
from engine.tools import synth as Y

CAMPAIGN = Campaign()
OPERATORS = {o.id: o for o in Y.load_operators()}
HOUR_US = 3600 * 10**6

MYKEY = re.compile(r"[0-9A-Za-z]{8}")
TXN_ID = re.compile(r"[0-9A-Za-z._:-]{1,64}")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
TXN_KEYS = {"txn_id", "operator_id", "mykey_id", "kind", "amount", "occurred_at",
            "original_txn_id", "received_at"}
ENR_KEYS = {"mykey_id", "operator_id", "applied_at", "earn_on", "received_at"}


def us(ts: str) -> int:
    return int(datetime.fromisoformat(ts).timestamp()) * 10**6 + (
        int(ts[20:23]) * 1000 if ts[19] == "." else 0)


def read_jsonl(path: Path) -> tuple[list[object], list[bytes]]:
    """Parsed lines, and the lines that are not JSON at all."""
    good, bad = [], []
    for line in path.read_bytes().splitlines():
        try:
            good.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            bad.append(line)
    return good, bad


def write_all(tmp: Path, enr: pa.Table, txn: pa.Table) -> tuple[Path, Path]:
    e, t = tmp / "enrollments.jsonl", tmp / "transactions.jsonl"
    G.write_jsonl(enr, e)
    G.write_jsonl(txn, t)
    return e, t


@pytest.fixture(scope="module")
def realistic() -> tuple[pa.Table, pa.Table]:
    return G.generate_tables(200, 2000, seed=2020)


@pytest.fixture(scope="module")
def clean() -> tuple[pa.Table, pa.Table]:
    return G.generate_tables(3000, 30_000, seed=11, clean=True)


@pytest.fixture(scope="module")
def clean_files(clean: tuple[pa.Table, pa.Table], tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[list[dict], list[dict]]:
    tmp = tmp_path_factory.mktemp("clean")
    e, t = write_all(tmp, *clean)
    enr, bad_e = read_jsonl(e)
    txn, bad_t = read_jsonl(t)
    assert not bad_e and not bad_t
    return enr, txn  # type: ignore[return-value]


# ----------------------------------------------------------------------- basics

def test_individual_number_check_digit() -> None:
    assert check_digit("12345678901") == 8
    assert is_individual_number("123456789018")
    assert not is_individual_number("123456789019")
    assert not is_individual_number("12345678901")     # 11 digits
    assert not is_individual_number("１２３４５６７８９０１８")   # not ASCII
    rng = np.random.default_rng(5)
    for _ in range(200):
        assert is_individual_number(Y.individual_number(rng, valid=True))
        assert not is_individual_number(Y.individual_number(rng, valid=False))


def test_vectorised_timestamps_match_scalar_formatting() -> None:
    rng = np.random.default_rng(3)
    t = rng.integers(Y.jst_us(2020, 6, 1), Y.jst_us(2021, 12, 31), 5000)
    t = t // 1000 * 1000
    style = rng.integers(0, 5, len(t))
    got = Y.rfc3339(t, style).to_pylist()
    want = [None if s == Y.ST_NULL else Y.format_ts(int(x), int(s)) for x, s in zip(t, style,
                                                                                strict=True)]
    assert got == want
    assert Y.format_ts(Y.jst_us(2021, 2, 10, 8, 30), Y.ST_Z) == "2021-02-09T23:30:00Z"
    assert Y.format_ts(Y.jst_us(2021, 2, 10, 8, 30), Y.ST_JST) == "2021-02-10T08:30:00+09:00"


def test_radix_strings_match_scalar_ids() -> None:
    g = G._Generator(10, 10, seed=1, clean=False)
    g.people()
    seq = np.arange(50, dtype=np.int64)
    ids = Y.radix_strings(G._mix64(seq, g.salt), 13, Y.B36, b"tx-").to_pylist()
    assert ids == [g.txn_id(i) for i in range(50)]
    assert len(set(ids)) == 50
    keys = Y.radix_strings(g.key_codes, 8, Y.B62).to_pylist()
    assert keys == [g.mykey(i) for i in range(10)]


# ----------------------------------------------------------------- determinism

@pytest.mark.parametrize("clean_mode", [False, True])
def test_same_seed_same_tables(clean_mode: bool) -> None:
    a = G.generate_tables(150, 1500, seed=42, clean=clean_mode)
    b = G.generate_tables(150, 1500, seed=42, clean=clean_mode)
    c = G.generate_tables(150, 1500, seed=43, clean=clean_mode)
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    assert not a[1].equals(c[1])


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("clean_mode", [False, True])
def test_cli_files_are_byte_identical(tmp_path: Path, fmt: str, clean_mode: bool,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for run in ("a", "b"):
        args = argparse.Namespace(users=120, transactions=1200, out=str(tmp_path / run),
                                  seed=9, format=fmt, clean=clean_mode)
        assert G.main(args) == 0
        outputs.append([(tmp_path / run / f"{n}.{fmt}").read_bytes()
                        for n in ("enrollments", "transactions")])
    assert outputs[0] == outputs[1]
    printed = capsys.readouterr().out
    assert "transactions" in printed and "enrollments" in printed


# Digests of the JSON Lines files, computed from the generator as it was before its
# hand-written scenarios moved to engine/tools/scenarios.py (issue 9): moving code
# must not change a byte of what a seed generates. numpy picks its floating-point
# kernels by CPU, and the generator's weights and amounts are floats: the clean run's
# transactions come out differently on the AMD EPYC machines (no AVX-512; the same
# with numpy's AVX2 kernels disabled) than on the Intel Xeon ones they were pinned
# on, so each file has one digest per kind of machine seen. A changed generator
# matches none of them.
PINNED_JSONL_SHA256 = {
    (False, "enrollments"): {"c8b34740cbed618ac2ffd5c16e92fe7d2899a62e441c4deeef2fdfce82f0ce3d"},
    (False, "transactions"): {"dd59dec8ca7e39f5d1459f83de04ac8ac791ae7c2d516974909571c31dc30b40"},
    (True, "enrollments"): {"f292f2ee3881243fdee2e29b1d9daf9b557abef033fc64830ad29056bc9d15b6"},
    (True, "transactions"): {
        "3fe018d283252a009903eee3e04fc7fd0a79d9e970e924cb097ac140d91e9118",  # Intel Xeon
        "5531c9a1c5531907700494215a526a339ea54490dc7d07e9858dd1f048feac77",  # AMD EPYC
    },
}


@pytest.mark.parametrize("clean_mode", [False, True])
def test_same_seed_same_bytes_as_before_the_scenario_move(tmp_path: Path,
                                                          clean_mode: bool) -> None:
    enr, txn = G.generate_tables(300, 3000, seed=2021, clean=clean_mode)
    for name, table in (("enrollments", enr), ("transactions", txn)):
        path = tmp_path / f"{name}.jsonl"
        G.write_jsonl(table, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest in PINNED_JSONL_SHA256[clean_mode, name], (name, digest)


# ----------------------------------------------------------------------- sizes

@pytest.mark.parametrize(("users", "transactions"),
                         [(0, 0), (1, 0), (1, 7), (5, 3), (39, 399), (200, 2000), (700, 9000)])
@pytest.mark.parametrize("clean_mode", [False, True])
def test_sizes(users: int, transactions: int, clean_mode: bool) -> None:
    enr, txn = G.generate_tables(users, transactions, seed=1, clean=clean_mode)
    assert txn.num_rows == transactions
    if clean_mode:
        assert enr.num_rows == users
        assert enr.column("mykey_id").unique().to_pylist() == enr.column("mykey_id").to_pylist()
    else:
        assert 0.9 * users <= enr.num_rows <= 1.25 * users + 40


def test_parquet_holds_the_typed_rows(tmp_path: Path, realistic: tuple[pa.Table, pa.Table]
                                      ) -> None:
    enr, txn = realistic
    for name, table in (("e", enr), ("t", txn)):
        n = G.write_parquet(table, tmp_path / f"{name}.parquet")
        back = pq.read_table(tmp_path / f"{name}.parquet")
        assert n == back.num_rows == table.num_rows - table.column("_raw").drop_null().length()
        assert "_raw" not in back.column_names and "note" in back.column_names
    assert pq.read_schema(tmp_path / "t.parquet").field("amount").type == pa.int64()


def test_users_required_for_transactions() -> None:
    with pytest.raises(ValueError):
        G.generate_tables(0, 10)


# ----------------------------------------------------------------- clean mode

def test_clean_formats(clean_files: tuple[list[dict], list[dict]]) -> None:
    enr, txn = clean_files
    offsets: Counter[str] = Counter()
    for e in enr:
        assert set(e) <= ENR_KEYS and {"mykey_id", "operator_id", "applied_at"} <= set(e)
        assert MYKEY.fullmatch(e["mykey_id"])
        assert e["operator_id"] in OPERATORS
        assert RFC3339.fullmatch(e["applied_at"]) and RFC3339.fullmatch(e["received_at"])
        op = OPERATORS[e["operator_id"]]
        if len(op.kinds) == 2:
            assert e["earn_on"] in ("charge", "purchase")
        elif "earn_on" in e:
            assert e["earn_on"] == Y.KIND_NAMES[op.kinds[0]]
    for t in txn:
        assert set(t) <= TXN_KEYS and TXN_KEYS - {"original_txn_id"} <= set(t)
        assert TXN_ID.fullmatch(t["txn_id"])
        assert MYKEY.fullmatch(t["mykey_id"])
        assert t["operator_id"] in OPERATORS
        assert t["kind"] in ("charge", "purchase", "refund")
        assert type(t["amount"]) is int and 1 <= t["amount"] <= CAMPAIGN.max_amount
        for f in ("occurred_at", "received_at"):
            assert RFC3339.fullmatch(t[f])
            offsets[t[f][19:][-6:] if t[f].endswith("+09:00") else "Z"] += 1
        assert ("original_txn_id" in t) == (t["kind"] == "refund")
        if t["kind"] == "refund":
            assert TXN_ID.fullmatch(t["original_txn_id"])
    assert offsets["Z"] > 0.2 * sum(offsets.values())
    assert offsets["+09:00"] > 0.2 * sum(offsets.values())


def test_clean_parquet_schema(tmp_path: Path, clean: tuple[pa.Table, pa.Table]) -> None:
    enr, txn = clean
    G.write_parquet(txn, tmp_path / "t.parquet")
    G.write_parquet(enr, tmp_path / "e.parquet")
    ts = pa.timestamp("us", tz="UTC")
    st = pq.read_schema(tmp_path / "t.parquet")
    assert st.names == list(Y.TXN_FIELDS)
    assert st.field("occurred_at").type == ts and st.field("received_at").type == ts
    assert st.field("amount").type == pa.int64()
    se = pq.read_schema(tmp_path / "e.parquet")
    assert se.names == list(Y.ENR_FIELDS)
    assert se.field("applied_at").type == ts
    back = pq.read_table(tmp_path / "t.parquet")
    assert back.equals(txn)


def test_clean_is_all_eligible(clean_files: tuple[list[dict], list[dict]]) -> None:
    enr, txn = clean_files
    people = {}
    for e in enr:
        op = OPERATORS[e["operator_id"]]
        kind = e.get("earn_on") or Y.KIND_NAMES[op.kinds[0]]
        applied = us(e["applied_at"])
        assert e["mykey_id"] not in people
        assert applied < CAMPAIGN.enroll_end and jst_day(applied) >= op.opens
        people[e["mykey_id"]] = (e["operator_id"], kind, jst_day(applied))
    originals: dict[tuple[str, str], dict] = {}
    spent: Counter[str] = Counter()
    refunded: Counter[str] = Counter()
    for t in txn:
        op_id, kind, day = people[t["mykey_id"]]
        assert t["operator_id"] == op_id
        assert us(t["received_at"]) < CAMPAIGN.accept_end
        assert us(t["received_at"]) >= us(t["occurred_at"])
        if t["kind"] == "refund":
            o = originals[(t["mykey_id"], t["original_txn_id"])]   # arrived earlier
            refunded[t["original_txn_id"]] += t["amount"]
            assert refunded[t["original_txn_id"]] <= o["amount"]
            spent[t["mykey_id"]] -= t["amount"]
            continue
        occurred = us(t["occurred_at"])
        assert t["kind"] == kind
        assert CAMPAIGN.window_start <= occurred < CAMPAIGN.window_end
        last = OPERATORS[op_id].last
        assert last is None or jst_day(occurred) <= last
        assert jst_day(occurred) >= day
        assert (t["mykey_id"], t["txn_id"]) not in originals
        originals[(t["mykey_id"], t["txn_id"])] = t
        spent[t["mykey_id"]] += t["amount"]
    refunds = sum(1 for t in txn if t["kind"] == "refund")
    assert 0.01 * len(txn) <= refunds <= 0.05 * len(txn)
    capped = sum(1 for v in spent.values() if v * CAMPAIGN.rate_percent // 100
                 >= CAMPAIGN.cap_points)
    assert 0.005 * len(people) <= capped <= 0.08 * len(people)


# ------------------------------------------------------------- realistic mode

@pytest.fixture(scope="module")
def realistic_files(realistic: tuple[pa.Table, pa.Table],
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_all(tmp_path_factory.mktemp("real"), *realistic)


def test_jsonl_lines_parse_except_deliberate_ones(realistic: tuple[pa.Table, pa.Table],
                                                  realistic_files: tuple[Path, Path]) -> None:
    for table, path in zip(realistic, realistic_files, strict=True):
        raw = {r.encode() for r in table.column("_raw").drop_null().to_pylist()}
        good, bad = read_jsonl(path)
        assert len(good) + len(bad) == table.num_rows
        assert bad and set(bad) <= raw            # invalid JSON only where meant
        non_objects = [o for o in good if not isinstance(o, dict)]
        assert non_objects and len(non_objects) + len(bad) <= len(raw)


def test_refund_originals_mostly_exist(realistic_files: tuple[Path, Path]) -> None:
    txn = [t for t in read_jsonl(realistic_files[1])[0] if isinstance(t, dict)]
    spends = {(t.get("mykey_id"), t.get("operator_id"), t.get("txn_id")) for t in txn
              if t.get("kind") in ("charge", "purchase")}
    refunds = [t for t in txn if t.get("kind") == "refund" and t.get("original_txn_id")]
    found = sum((t["mykey_id"], t["operator_id"], t["original_txn_id"]) in spends
                for t in refunds)
    assert refunds and 0.85 * len(refunds) <= found < len(refunds)


def test_file_order_and_stream_friendliness(realistic_files: tuple[Path, Path]) -> None:
    txn = [t for t in read_jsonl(realistic_files[1])[0]
           if isinstance(t, dict) and isinstance(t.get("received_at"), str)
           and RFC3339.fullmatch(t["received_at"])]
    last: dict[str, int] = {}
    high = 0
    for t in txn:
        r = us(t["received_at"])
        assert r >= last.get(t["mykey_id"], r)       # a person's records in received order
        last[t["mykey_id"]] = r
        assert r > high - 90 * 10**6                  # only a little jitter overall
        high = max(high, r)
    # refunds that overtake their original do so by at most 12 hours
    received = {(t["mykey_id"], t["operator_id"], t["txn_id"]): us(t["received_at"])
                for t in txn if t.get("kind") in ("charge", "purchase")}
    early = 0
    for t in txn:
        if t.get("kind") == "refund" and t.get("original_txn_id"):
            o = received.get((t["mykey_id"], t["operator_id"], t["original_txn_id"]))
            if o is not None and o > us(t["received_at"]):
                early += 1
                assert o - us(t["received_at"]) <= 12 * HOUR_US
    assert early > 0


def test_realistic_mix(realistic_files: tuple[Path, Path]) -> None:
    enr = [e for e in read_jsonl(realistic_files[0])[0] if isinstance(e, dict)]
    txn = [t for t in read_jsonl(realistic_files[1])[0] if isinstance(t, dict)]
    times = [t["occurred_at"] for t in txn if isinstance(t.get("occurred_at"), str)]
    assert any(s.endswith("Z") for s in times) and any(s.endswith("+09:00") for s in times)
    assert any(isinstance(t.get("received_at"), str) and RFC3339.fullmatch(t["received_at"])
               and us(t["received_at"]) >= CAMPAIGN.accept_end for t in txn)
    assert any(is_individual_number(v) for t in txn + enr for v in t.values()
               if isinstance(v, str))
    assert any(t.get("operator_id") in Y.UNKNOWN_OPERATORS for t in txn)
    amounts = [t.get("amount") for t in txn]
    assert 0 in amounts and any(isinstance(a, int) and a < 0 for a in amounts)
    assert any(isinstance(a, float) for a in amounts)
    assert any(isinstance(a, int) and a > CAMPAIGN.max_amount for a in amounts)
    spend = sorted(a for t in txn if t.get("kind") in ("charge", "purchase")
                   and isinstance(a := t.get("amount"), int) and not isinstance(a, bool))
    assert 800 <= spend[len(spend) // 2] <= 5000       # a few thousand yen at a time
    assert any(us(e["applied_at"]) >= CAMPAIGN.enroll_end for e in enr
               if isinstance(e.get("applied_at"), str) and RFC3339.fullmatch(e["applied_at"]))


def test_rejectable_share_stays_small() -> None:
    """At scale (no fixed scenarios dominating) only a few percent are odd."""
    _, txn = G.generate_tables(5000, 50_000, seed=3)
    n = txn.num_rows
    kinds = Counter(txn.column("kind").to_pylist())
    assert kinds["refund"] < 0.04 * n
    ops = txn.column("operator_id").to_pylist()
    assert sum(o in Y.UNKNOWN_OPERATORS for o in ops) < 0.005 * n
    assert txn.column("_raw").drop_null().length() < 0.003 * n
    late = sum(1 for r in txn.column("received_at").to_pylist()
               if r and RFC3339.fullmatch(r) and us(r) >= CAMPAIGN.accept_end)
    assert 0 < late < 0.01 * n


def test_scenarios_cover_every_reason_code(realistic_files: tuple[Path, Path]) -> None:
    """Every reason code has a hand-written case, and each case is in the files as
    written (the settlement tests check the engine agrees with ``expect``)."""
    recs = G.scenario_records(200, 2000, seed=2020)
    expected = {r.expect.split(" ")[0] for r in recs}
    for reason in (*ENROLLMENT_REASONS, *TRANSACTION_REASONS):
        # tested in tests/rules/test_limits.py and test_operator_mismatch.py
        if reason not in (*ENGINE_LIMIT_REASONS, *SOURCE_REASONS):
            assert reason.name in expected, reason.name
    lines = {k: set(p.read_bytes().splitlines())
             for k, p in zip(("enr", "txn"), realistic_files, strict=True)}
    for r in recs:
        body = r.fields.get("_raw")
        line = body.encode() if body is not None else orjson.dumps(
            {k: v for k, v in r.fields.items() if v is not None})
        assert line in lines[r.kind], (r.who, r.expect)
    assert G.scenario_records(30, 2000) == []
