"""``mynapoint admin locate``: every place that holds a person's data, and no other."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson
import pytest

from engine.archive.archiver import archive_rows
from engine.archive.replay import Msg
from engine.archive.store import Archive, Entry
from engine.cli import main as cli
from engine.rules.model import NO_TIME
from engine.streams.state import FENCE_KEY, Fence, PersonState, ShardStore, encode
from tests.builders import txn

WHO = "AB12cd34"
OTHER = "ZZ99yy88"


def _txn(who: str, i: int) -> bytes:
    return orjson.dumps(txn(amount=100, txn_id=f"T{i}", mykey=who,
                            at="2020-09-02T12:00:00+09:00"))


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    # state: the person in one partition's checkpoint, someone else in another
    for p, who in ((0, WHO), (1, OTHER)):
        st = ShardStore(tmp_path / "state" / "g" / "slot-0" / f"p{p}", NO_TIME)
        st.apply({who: encode(PersonState(enr_op="paypay", c=3000))}, 5)
        st.close()
    # archive: two files, only the second mentions the person
    a = Archive(tmp_path / "archive")
    for first, who in ((0, OTHER), (1, WHO)):
        msgs = [Msg("m.transactions", 0, first, 1599000000000, who.encode(), _txn(who, first),
                    [])]
        a.write_file(archive_rows(msgs, "transaction"),
                     Entry("m.transactions", "transaction", 0, first, first + 1, 1,
                           first=first, last=first))
    # ledger: a table with mykey_id, one without
    con = duckdb.connect(str(tmp_path / "ledger.duckdb"))
    con.execute("CREATE TABLE grants (grant_id VARCHAR, mykey_id VARCHAR, points BIGINT)")
    con.execute("INSERT INTO grants VALUES ('g1', ?, 5), ('g2', ?, 7), ('g3', ?, 1)",
                [WHO, WHO, OTHER])
    con.execute("CREATE TABLE operators (operator_id VARCHAR)")
    con.execute("INSERT INTO operators VALUES ('paypay')")
    con.close()
    return {"state": tmp_path / "state", "archive": tmp_path / "archive",
            "ledger": tmp_path / "ledger.duckdb"}


def _locate(places: dict[str, Path], who: str) -> list[str]:
    return ["admin", "locate", "--mykey-id", who, "--state-dir", str(places["state"]),
            "--archive", str(places["archive"]), "--ledger", str(places["ledger"])]


def test_locate_reports_state_archive_and_ledger_rows(places, capsys) -> None:
    assert cli(_locate(places, WHO)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"3 places hold data about {WHO}"
    state, archive, ledger = out[:3]
    assert state.startswith("state\t") and state.split("\t")[1].endswith("p0")
    assert "enrolled with paypay" in state and "3000 yen" in state
    assert archive.startswith("archive\t") and "00000000000000000001" in archive
    assert "1 messages of m.transactions/0 (offsets 1)" in archive
    assert ledger == f"ledger\t{places['ledger']}:main.grants\t2 rows"


def test_a_person_held_nowhere_gets_an_empty_report(places, capsys) -> None:
    assert cli(_locate(places, "Nobody00")) == 0
    assert capsys.readouterr().out.strip() == "0 places hold data about Nobody00"


def test_an_id_owed_a_rewrite_is_a_place_too(places, capsys) -> None:
    """A restore that ignored a zombie's record of the person keeps the person's id in
    the checkpoint's list of keys to write again (DECISIONS 140): that checkpoint is
    a place of its own, though it holds no state of the person."""
    store = ShardStore(places["state"] / "g" / "slot-0" / "p1", NO_TIME)
    fence = encode(Fence())
    assert store.restore([(FENCE_KEY, fence, 6, None),
                          (WHO.encode(), encode(PersonState(c=1)), 7, 0)]) == 1
    store.close()
    assert cli(_locate(places, WHO)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"4 places hold data about {WHO}"
    owed = [line for line in out if "owed a rewrite" in line]
    assert len(owed) == 1 and owed[0].split("\t")[1].endswith("p1")


@pytest.mark.parametrize("who", ["short", "123456789018"])
def test_bad_ids_exit_2_without_echoing_a_number(places, capsys, who: str) -> None:
    assert cli(_locate(places, who)) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "123456789018" not in err


def test_a_checkpoint_of_the_rocksdb_format_is_named_though_not_read(places, capsys) -> None:
    """A RocksDB checkpoint an earlier version left (DECISIONS 144) stays until its
    partition is taken over here again: it is a place that may hold the person."""
    old = places["state"] / "g" / "slot-1" / "p3"
    old.mkdir(parents=True)
    (old / "CURRENT").write_text("MANIFEST-000001\n")
    assert cli(_locate(places, "Nobody00")) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "1 places hold data about Nobody00"
    assert out[0].startswith("state\t") and out[0].split("\t")[1].endswith("slot-1/p3")
    assert "earlier version (RocksDB)" in out[0]
