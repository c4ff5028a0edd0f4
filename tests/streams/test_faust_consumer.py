"""The Faust runtime's consumer facade without a broker: what the worker is given,
in which order, after pauses, seeks, commits and rebalances."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import OffsetAndMetadata
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.streams.faust_runtime import FaustConsumer

TP = TopicPartition("m.paypay.transactions", 0)


@dataclass
class Msg:
    offset: int
    generation_id: int = 1
    topic: str = TP.topic
    partition: int = TP.partition
    timestamp: float = 1_600_000_000.123
    timestamp_type: int = 0
    key: bytes = b"k"
    value: bytes = b"v"
    serialized_key_size: int = 1
    serialized_value_size: int = 1
    headers: tuple[Any, ...] = ()


@dataclass
class Event:
    message: Msg


def subscription(*tps: TopicPartition) -> SubscriptionState:
    """aiokafka's subscription state with ``tps`` assigned, as a rebalance leaves it."""
    async def make() -> SubscriptionState:
        state = SubscriptionState()
        state.subscribe({tp.topic for tp in tps})
        state.assign_from_subscribed(set(tps))
        return state
    return asyncio.run(make())


def rebalance(state: SubscriptionState, *tps: TopicPartition) -> None:
    """A rebalance that leaves ``tps`` assigned (aiokafka makes its futures on a loop)."""
    async def assign() -> None:
        state.begin_reassignment()
        state.assign_from_subscribed(set(tps))
    asyncio.run(assign())


@dataclass
class Thread:
    """Faust's consumer thread, which is also (``_ensure_consumer``) its aiokafka
    consumer here."""

    committed: list[Any] = field(default_factory=list)
    _subscription: SubscriptionState = field(default_factory=lambda: subscription(TP))

    def _ensure_consumer(self) -> Any:
        return self

    async def commit(self, offsets: Any) -> None:
        self.committed.append(offsets)

    async def call_thread(self, fn: Any, *args: Any) -> Any:
        return await fn(*args)


@dataclass
class Consumer:
    _thread: Thread = field(default_factory=Thread)

    def highwater(self, tp: Any) -> int:
        return 0


@dataclass
class App:
    consumer: Consumer = field(default_factory=Consumer)
    consumer_generation_id: int = 1


def facade() -> tuple[FaustConsumer, App]:
    app = App()
    return FaustConsumer(app, probe=None, admin=None, group="g"), app  # type: ignore[arg-type]


def offsets(got: dict[TopicPartition, list[Any]]) -> list[int]:
    return [m.offset for m in got.get(TP, [])]


def test_records_are_given_in_order_and_once() -> None:
    fc, _ = facade()
    fc.put(Event(Msg(o)) for o in range(6))
    fc.put(Event(Msg(o)) for o in (3, 4, 6))  # copies of held records, then a new one
    got = asyncio.run(fc.getmany(max_records=4))
    assert offsets(got) == [0, 1, 2, 3]
    assert got[TP][0].timestamp == 1_600_000_000_123  # milliseconds, as aiokafka's
    fc.put([Event(Msg(2))])  # already given
    assert offsets(asyncio.run(fc.getmany())) == [4, 5, 6]


def test_pause_holds_and_seek_gives_again_what_was_not_committed() -> None:
    fc, app = facade()
    fc.put(Event(Msg(o)) for o in range(5))
    assert offsets(asyncio.run(fc.getmany())) == [0, 1, 2, 3, 4]
    asyncio.run(fc.commit({TP: OffsetAndMetadata(2, "")}))
    assert app.consumer._thread.committed  # through Faust's consumer thread
    fc.seek(TP, 2)  # handed back: fetched again from there, in order
    fc.pause(TP)
    fc.put(Event(Msg(o)) for o in (5, 6))
    assert fc.deliverable() == 0 and asyncio.run(fc.getmany()) == {}
    assert asyncio.run(fc.position(TP)) == 2
    fc.resume(TP)
    assert offsets(asyncio.run(fc.getmany())) == [2, 3, 4, 5, 6]


def test_events_fetched_before_a_rebalance_are_dropped() -> None:
    fc, app = facade()
    fc.put(Event(Msg(o)) for o in range(3))
    fc.forget({TP})  # revoked; Faust reads it again from the commit
    app.consumer_generation_id = 2
    fc.put(Event(Msg(o, generation_id=1)) for o in range(3, 6))  # gathered before
    fc.put(Event(Msg(o, generation_id=2)) for o in range(0, 4))
    assert offsets(asyncio.run(fc.getmany())) == [0, 1, 2, 3]


def test_events_gathered_before_a_revocation_are_dropped_until_the_new_assignment() -> None:
    """The revocation does not change the generation (the new assignment does), and
    aiokafka still reports the old assignment until then: events the agent gathered
    before the revocation and hands over after it must not be queued, or the records
    Faust reads again from the commit would be dropped as copies of them (a gap: the
    records between the commit and the first gathered one were never decided)."""
    fc, app = facade()
    fc.put(Event(Msg(o)) for o in range(3))
    assert offsets(asyncio.run(fc.getmany())) == [0, 1, 2]  # the batch in flight...
    fc.forget({TP})  # ...revoked before it committed: its owner reads it from offset 0
    fc.put(Event(Msg(o)) for o in range(5, 8))  # gathered before, handed over now
    app.consumer_generation_id = 2  # assigned again; Faust seeks to the commit
    fc.put(Event(Msg(o, generation_id=2)) for o in range(0, 9))
    assert offsets(asyncio.run(fc.getmany())) == list(range(9))


def test_the_assignment_is_aiokafkas_and_follows_each_rebalance() -> None:
    """Read from aiokafka's subscription state in Faust's consumer thread; the set
    made of one assignment serves until the next rebalance makes a new one."""
    fc, app = facade()
    state = app.consumer._thread._subscription
    first = fc.assignment()
    assert first == {TP} and fc.assignment() is first
    other = TopicPartition(TP.topic, 1)
    rebalance(state, TP, other)
    assert fc.assignment() == {TP, other}
    fc.put(Event(Msg(o, partition=1)) for o in range(2))
    assert [m.offset for m in asyncio.run(fc.getmany())[other]] == [0, 1]
    rebalance(state, other)
    assert fc.assignment() == {other}
    fc.put(Event(Msg(o)) for o in range(2))  # no longer this member's: not queued
    assert fc.deliverable() == 0


def test_no_assignment_before_faust_has_a_consumer() -> None:
    fc, app = facade()

    def not_started() -> Any:
        raise RuntimeError("Consumer thread not yet started")

    app.consumer._thread._ensure_consumer = not_started  # type: ignore[method-assign]
    assert fc.assignment() == frozenset()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.booleans()), min_size=1, max_size=12))
def test_any_fetch_and_rewind_sequence_decides_every_offset_in_order(
        steps: list[tuple[int, bool]]) -> None:
    """Whatever the batch sizes, and whether each batch is rewound (a broker error:
    seek back to its first offset) or committed, the committed sequence of offsets is
    0, 1, 2, ... without a gap or a repeat."""
    fc, _ = facade()
    fc.put(Event(Msg(o)) for o in range(40))
    decided: list[int] = []
    for size, rewind in steps:
        batch = offsets(asyncio.run(fc.getmany(max_records=size)))
        if not batch:
            break
        if rewind:
            fc.seek(TP, batch[0])
            continue
        decided.extend(batch)
        asyncio.run(fc.commit({TP: OffsetAndMetadata(batch[-1] + 1, "")}))
    assert decided == list(range(len(decided)))
