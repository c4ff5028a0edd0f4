"""What ``publish --archive`` sends and what a ``--replay`` worker believes of it
(no broker needed; tests/archive/test_archive_broker.py runs it on the broker)."""

from __future__ import annotations

from dataclasses import replace

import orjson

from engine.archive.archiver import archive_rows
from engine.archive.replay import Msg, replay_messages
from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.kafka.topics import MAX_RECORD_BYTES, REPLAY_HEADER
from engine.rules.model import Reason
from engine.streams.decode import decode_messages, replay_header
from tests.archive.test_redact import NUMBER, Decided, _decided, _messages, _original, _txn


def _moved(msgs: list[Msg]) -> list[Msg]:
    """The messages as a fresh topic holds them: another name, other offsets."""
    return [replace(m, topic="fresh.transactions", offset=500 + i) for i, m in enumerate(msgs)]


def _decide(msgs: list[Msg], replay: bool) -> list[Decided]:
    return _decided(decode_messages(msgs, "transaction", DEFAULT_CAMPAIGN, DEFAULT_REGISTRY,
                                    MAX_RECORD_BYTES, replay=replay))


def test_a_replay_worker_decides_the_replayed_archive_as_the_stream_did() -> None:
    msgs = _messages()
    sent = _moved(replay_messages(archive_rows(msgs, "transaction")))
    original = _original(msgs)
    assert _decide(sent, replay=True) == original
    pnf = [d for d in original if d[1] == Reason.PERSONAL_NUMBER_FORBIDDEN]
    assert len(pnf) >= 5  # the flags carried those verdicts: the numbers are gone
    # a worker not started with --replay believes nothing of the header
    plain = _decide(sent, replay=False)
    assert {d[0].split("/")[0] for d in plain} == {"fresh.transactions"}
    assert sum(d[1] == Reason.PERSONAL_NUMBER_FORBIDDEN for d in plain) < len(pnf)


def test_a_replay_header_the_sender_set_is_replaced_not_believed() -> None:
    forged = replay_header("x.transactions/0/0", [(-1, "PERSONAL_NUMBER_FORBIDDEN", "forged")])
    msg = Msg("p.transactions", 2, 7, 1_599_015_600_000, b"AB12cd00",
              orjson.dumps(_txn(0)), [(REPLAY_HEADER, forged), ("trace", b"t")])
    sent = replay_messages(archive_rows([msg], "transaction"))[0]
    headers = [(k, v) for k, v in sent.headers if k == REPLAY_HEADER]
    assert headers == [(REPLAY_HEADER, replay_header("p.transactions/2/7", []))]
    assert ("trace", b"t") in sent.headers
    (decided,) = _decide(_moved([sent]), replay=True)
    assert decided[0] == "p.transactions/2/7" and decided[1] == 0  # granted, as in the stream
    # the forged header, on a message nobody replayed, is ignored without --replay
    (plain,) = _decide([msg], replay=False)
    assert plain[0] == "p.transactions/2/7" and plain[1] == 0


def test_an_unreadable_replay_header_leaves_the_message_where_it_is() -> None:
    for bad in (b"not json", b'{"source": 5, "flags": []}',
                b'{"source": "a/0/1", "flags": [[0, "NO_SUCH_REASON", "d"]]}'):
        msg = Msg("fresh.transactions", 0, 3, 1_599_015_600_000, b"AB12cd00",
                  orjson.dumps(_txn(0, note=NUMBER)), [(REPLAY_HEADER, bad)])
        (d,) = _decide([msg], replay=True)
        assert d[0] == "fresh.transactions/0/3"
        assert d[1] == Reason.PERSONAL_NUMBER_FORBIDDEN  # decided from its content
