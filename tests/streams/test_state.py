"""The shard store without Kafka: what is applied survives a cache drop and a
reopen, and the cache stays bounded."""

from __future__ import annotations

from pathlib import Path

from engine.rules.model import NO_TIME
from engine.streams.state import META_KEY, PersonState, ShardStore, TxnEntry, encode


def test_applied_state_survives_cache_drops_and_reopen(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "p0", NO_TIME, cache_limit=2)
    for i in range(5):
        st = store.get(f"person{i:02d}")
        st.c = 100 * i
        st.txns["paypay/t1"] = TxnEntry(1, 100 * i, 0, None, 1)
        store.apply({f"person{i:02d}": encode(st)}, changelog_offset=i)
        assert len(store.cache) <= 3  # bounded: dropped once over the limit
    assert store.get("person03").c == 300
    assert store.get("person04").txns["paypay/t1"].amount == 400
    store.meta.stream_time = 42
    store.apply({}, changelog_offset=9)
    store.close()
    again = ShardStore(tmp_path / "p0", NO_TIME)
    assert again.meta.changelog_offset == 9 and again.meta.stream_time == 42
    assert again.get("person02").c == 200
    assert again.get("nobody00") == PersonState()
    again.close()


def test_restore_applies_only_newer_changelog_records(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "p1", NO_TIME)
    a, b = PersonState(c=1), PersonState(c=2)
    store.restore([(b"personAA", encode(a), 0), (b"personAA", encode(b), 1),
                   (META_KEY.encode(), encode(store.meta.__class__(stream_time=7)), 2)])
    assert store.get("personAA").c == 2 and store.meta.stream_time == 7
    store.restore([(b"personAA", encode(a), 1)])  # already applied: ignored
    assert store.get("personAA").c == 2
    store.close()
