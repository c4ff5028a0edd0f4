"""The defaults the README and docs state, pinned to the code they describe: changing
either side without the other fails here, so a stated number cannot drift from the
running one."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import build_parser
from engine.config import DEFAULT_CAMPAIGN
from engine.kafka.topics import CHANGELOG_MAX_BYTES, Topics
from engine.streams import state, worker
from engine.tools import publish, settle

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20

# (what the code has, what the docs say it is, the document, the words that say so)
CASES = [
    (state.FLUSH_SECONDS, 5.0, "docs/ARCHITECTURE.md", "every 5 s or 32 MiB"),
    (state.FLUSH_BYTES, 32 * MIB, "docs/RELIABILITY.md", "every 5 s or 32 MiB"),
    (settle.SLICE_ROWS, 10_000_000, "README.md", "(default 10,000,000;"),
    (DEFAULT_CAMPAIGN.person_limit, 3_000, "README.md", "At most 3,000 distinct transactions"),
    (Topics("p").group_id, "p-engine", "README.md", "consumer group `<prefix>-engine`"),
    (CHANGELOG_MAX_BYTES, 8 * MIB, "docs/RELIABILITY.md", "allows 8 MiB"),
    (publish.SEND_TIMEOUT_MS, 300_000, "docs/RELIABILITY.md", "waits up to 300 s"),
    (build_parser().parse_args(["worker"]).quiet_seconds, 30.0, "docs/RELIABILITY.md",
     "`--quiet-seconds` (30 s"),
    # the worker's own default, for a worker built without the command line (a test,
    # an embedding runtime); the CLI repeats the number so as not to import the worker
    (worker.QUIET_SECONDS, 30.0, "docs/RELIABILITY.md", "`--quiet-seconds` (30 s"),
    (build_parser().parse_args(["worker"]).commit_interval, 0.1, "README.md",
     "at most every 0.1 s (`--commit-interval`"),
    (worker.COMMIT_INTERVAL_SECONDS, 0.1, "README.md", "at most every 0.1 s (`--commit-interval`"),
    (build_parser().parse_args(["worker"]).idle_fetch_wait_ms, 500, "README.md",
     "(`--idle-fetch-wait-ms`, default 500, 20–2000)"),
    ((worker.LIVE_FETCH_WAIT_MS, worker.IDLE_FETCH_WAIT_MS, worker.MAX_IDLE_FETCH_WAIT_MS),
     (20, 500, 2_000), "README.md", "(`--idle-fetch-wait-ms`, default 500, 20–2000)"),
    (worker.IDLE_AFTER_SECONDS, 1.0, "README.md", "once no record came for a second"),
]


@pytest.mark.parametrize(("value", "stated", "doc", "words"), CASES,
                         ids=[c[3] for c in CASES])
def test_a_stated_default_is_the_one_in_the_code(value: object, stated: object, doc: str,
                                                 words: str) -> None:
    assert value == stated
    text = " ".join((ROOT / doc).read_text(encoding="utf-8").split())
    assert words in text, f"{doc} no longer says {words!r}"


def test_the_suite_runs_in_the_processes_the_readme_states() -> None:
    """`make test`'s TEST_WORKERS default (DECISIONS 136) is the README's."""
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    line = next(x for x in make.splitlines() if x.startswith("TEST_WORKERS ?="))
    assert line.split("?=")[1].strip() == "2"
    assert "$(BIN)/pytest -n $(TEST_WORKERS)" in make
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "tests run by two processes (`TEST_WORKERS=2`" in readme
