"""Record, date and message builders shared by the tests.

Records are the decoded JSON objects of the rules page (``dict``); every builder
takes the field values a test cares about and fills the rest with values that pass
every check, so that a test states only what it is about.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from itertools import count
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka.topics import Topics
from engine.rules.model import Campaign
from engine.streams.state import ChangelogRecord
from engine.tools.generate import generate_tables, write_jsonl, write_parquet
from engine.tools.settle import SettleResult, settle_files

A, B = "AAAA0001", "BBBB0002"                  # two valid mykey_ids
JAN_APPLY = "2020-09-01T10:00:00+09:00"        # an enrollment before any spending
SPENT_AT = "2020-10-01T12:00:00+09:00"         # inside the window, after JAN_APPLY

_txn_ids: Iterator[int] = count()


def day(iso_date: str) -> int:
    """Day number (JST calendar) of an ISO date such as ``"2020-09-01"``."""
    return (date.fromisoformat(iso_date) - date(1970, 1, 1)).days


# Field values are typed ``object``: tests also build the malformed records (a number
# for an id, None for a time) that the checks must reject.
def enr(mykey: object = A, op: object = "paypay", applied: object = JAN_APPLY,
        **extra: object) -> dict[str, Any]:
    """An enrollment; ``extra`` adds or replaces fields (``earn_on=...``, ``received_at=...``)."""
    return {"mykey_id": mykey, "operator_id": op, "applied_at": applied, **extra}


def txn(kind: object = "purchase", amount: object = 1000, *, mykey: object = A,
        op: object = "paypay", at: object = SPENT_AT, txn_id: str | None = None,
        **extra: object) -> dict[str, Any]:
    """A transaction with a fresh ``txn_id`` unless one is given; ``extra`` adds or
    replaces fields."""
    return {"txn_id": f"t{next(_txn_ids)}" if txn_id is None else txn_id, "operator_id": op,
            "mykey_id": mykey, "kind": kind, "amount": amount, "occurred_at": at, **extra}


def refund(original: dict[str, Any], amount: object, **kw: Any) -> dict[str, Any]:
    """A refund of ``original`` (same person and operator unless ``kw`` says otherwise)."""
    kw.setdefault("mykey", original["mykey_id"])
    kw.setdefault("op", original["operator_id"])
    return txn("refund", amount, original_txn_id=original["txn_id"], **kw)


def txn_topic(t: Topics, op: str = "paypay") -> str:
    """An operator's transactions input (the tests' records claim paypay)."""
    return t.input_of(op, "transaction")


def enr_topic(t: Topics, op: str = "paypay") -> str:
    return t.input_of(op, "enrollment")


def grant_topic(t: Topics, op: str = "paypay") -> str:
    return t.outcome_topic("grant", op)


def rejection_topic(t: Topics, op: str = "paypay") -> str:
    return t.outcome_topic("rejection", op)


def arrow_ipc(table: pa.Table) -> bytes:
    """``table`` as one Arrow IPC stream: the value of an arrow-ipc batch message."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def write_lines(path: Path, lines: list[bytes]) -> Path:
    """A JSON Lines file of ``lines``."""
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# ------------------------------------------------------------ generate -> settle

def write_campaign(directory: Path, users: int, transactions: int, seed: int, *,
                   clean: bool = False, formats: tuple[str, ...] = ("jsonl",)) -> Path:
    """A generated campaign as ``enrollments.<ext>`` and ``transactions.<ext>`` in
    ``directory`` for each of ``formats`` ("jsonl", "parquet"); returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    enr, txn = generate_tables(users, transactions, seed=seed, clean=clean)
    writers = {"jsonl": write_jsonl, "parquet": write_parquet}
    for ext in formats:
        writers[ext](enr, directory / f"enrollments.{ext}")
        writers[ext](txn, directory / f"transactions.{ext}")
    return directory


@dataclass
class Scenario:
    """A generated campaign (JSON Lines files) and its offline settlement, the
    reference every other path is compared with."""

    enrollments: Path
    transactions: Path
    offline: SettleResult

    @property
    def expected_outcomes(self) -> int:
        return self.offline.grants.num_rows + self.offline.rejections.num_rows


def make_scenario(directory: Path, users: int, transactions: int, seed: int,
                  campaign: Campaign = DEFAULT_CAMPAIGN, *, clean: bool = False,
                  ext: str = "jsonl") -> Scenario:
    """Generate, write (as ``ext``) and settle offline: the one "generate -> settle"
    path of the tests and the benchmarks."""
    write_campaign(directory, users, transactions, seed, clean=clean, formats=(ext,))
    e, t = directory / f"enrollments.{ext}", directory / f"transactions.{ext}"
    return Scenario(e, t, settle_files(e, t, campaign, DEFAULT_REGISTRY))


def calling_threads(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    """Wrap ``module.name`` for the test: the returned list gets the ident of the thread
    of each call, in order (where a driver runs its phases)."""
    idents: list[int] = []
    real = getattr(module, name)

    def call(*a: Any, **k: Any) -> Any:
        idents.append(threading.get_ident())
        return real(*a, **k)

    monkeypatch.setattr(module, name, call)
    return idents


def compacted(records: list[ChangelogRecord]) -> list[ChangelogRecord]:
    """What Kafka's compaction leaves of a changelog: the newest record of each key,
    in offset order."""
    newest = {r[0]: r for r in records}
    return sorted(newest.values(), key=lambda r: r[2])
