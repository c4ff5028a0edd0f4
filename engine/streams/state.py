"""Per-partition state of the streaming engine: people, and where we are.

Each input partition ``p`` (of enrollments and transactions alike) owns a
:class:`ShardStore`: every person in memory, checkpointed to a file on local disk
(engine.streams.state_file) and mirrored to partition ``p`` of a compacted changelog
topic so that any worker can rebuild it. Values are msgpack (msgspec) blobs of
:class:`PersonState`; one meta key holds the shard's stream time and the changelog
offset the local copy has; the ``__wait__/`` keys index the people with waiting records.

Why per-person high-water marks (``marks``): outputs are produced, then state,
then input offsets are committed. A crash after some people's state was written
but before the commit redelivers records whose effect is already in those
people's state; their outcomes were already produced (they precede state), so a
record at or below its person's mark for the topic-partition it came from is
skipped. Marks are kept per source topic-partition because offsets of different
topics (every operator's inputs, the re-routing topics) are not comparable.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import shutil
import time
from collections.abc import Iterator, KeysView, Mapping
from pathlib import Path
from typing import NamedTuple

import msgspec
import numpy as np

from engine.kafka.fetch import keyed_rows
from engine.rules.txn_keys import entry_keys, key_hashes
from engine.streams.entries import ENTRY, WIDE_ENTRY, narrow
from engine.streams.state_file import FILE_NAME, SegmentFile
from engine.streams.state_file import read as read_file
from engine.streams.value_table import ValueTable, columns_of, cut, starts

META_KEY = "__meta__"
FENCE_KEY = b"__fence__"
# The keys of which a restore ignored a fenced-off writer's record and that this owner
# has not written again yet (ShardStore.fenced_off, "owed"): local only, never in the
# changelog. Kept in the restore's own write, because the position that write takes
# is past those records: a take-over after a kill or a cancelled take-over would
# not read them again (DECISIONS 140).
FENCED_OFF_KEY = b"__fenced_off__"
decode_fenced_off = msgspec.msgpack.Decoder(list[str]).decode
# "__wait__/<mykey_id>" -> [the earliest received_at of the person's waiting records,
# how many wait] (msgpack; the deadline adds the campaign's park timeout; a bare int,
# the format before the count, counts as one record); deleted (a tombstone in the
# changelog) when nothing waits any more.
# An index beside the people, so that a take-over finds the waits by reading this
# key range instead of decoding every person (docs/DECISIONS.md).
WAIT_PREFIX = "__wait__/"
_WAIT_B = WAIT_PREFIX.encode()
# the value for a person whose waiting records all lack received_at: they have no
# deadline (DECISIONS 118), and stream time (at most year 9999) never gets here
NO_DEADLINE = 1 << 62

# The local checkpoint is written when this much applied state is pending, or this
# long after the previous write (DECISIONS 106): a person touched by several batches
# in between is written once, and a kill costs a restore of at most about this much
# changelog.
FLUSH_BYTES = 32 << 20
FLUSH_SECONDS = 5.0


class WaitIndex(Mapping[str, int]):
    """The people with waiting records -> the deadline of their earliest wait, and
    (:meth:`set`, :attr:`records`) how many records wait.

    A dict, in the order the people were parked (the order a decide involves them
    in), with a heap of (deadline, order, person) beside it, so that finding the
    people whose waits end costs their number, not a scan of everyone waiting (a
    partition may hold many: an operator's enrollments held up parks its customers'
    transactions). A heap entry whose person was since released or given another
    deadline is dropped when it comes up.
    """

    def __init__(self) -> None:
        self._due: dict[str, tuple[int, int]] = {}  # person -> (deadline, order)
        self._heap: list[tuple[int, int, str]] = []
        self._order = itertools.count()
        # person -> how many of their records wait, and the sum: the gauge counts
        # records (one person may have many waiting), the mapping people
        self._counts: dict[str, int] = {}
        self.records = 0

    def __len__(self) -> int:
        return len(self._due)

    def __getitem__(self, key: str) -> int:
        return self._due[key][0]

    # the dict's own, faster than Mapping's (a decide asks for every person it touched)
    def __contains__(self, key: object) -> bool:
        return key in self._due

    def __iter__(self) -> Iterator[str]:
        return iter(self._due)

    def keys(self) -> KeysView[str]:
        return self._due.keys()

    def get(self, key: str, default: int | None = None) -> int | None:  # type: ignore[override]
        got = self._due.get(key)
        return default if got is None else got[0]

    def __setitem__(self, key: str, deadline: int) -> None:
        old = self._due.get(key)
        if old is not None and old[0] == deadline:
            return
        entry = (deadline, old[1] if old is not None else next(self._order))
        self._due[key] = entry
        heapq.heappush(self._heap, (*entry, key))
        if len(self._heap) > 2 * len(self._due) + 1024:  # stale entries: rebuild
            self._heap = [(d, o, k) for k, (d, o) in self._due.items()]
            heapq.heapify(self._heap)

    def set(self, key: str, deadline: int, records: int) -> None:
        """``key`` waits with ``records`` records, the earliest ending at ``deadline``."""
        self[key] = deadline
        self.records += records - self._counts.get(key, 0)
        self._counts[key] = records

    def count(self, key: str) -> int:
        return self._counts.get(key, 0)

    def __delitem__(self, key: str) -> None:
        del self._due[key]
        self.records -= self._counts.pop(key, 0)

    def pop(self, key: str, default: int | None = None) -> int | None:
        got = self._due.pop(key, None)
        self.records -= self._counts.pop(key, 0)
        return default if got is None else got[0]

    def clear(self) -> None:
        self._due.clear()
        self._heap.clear()
        self._counts.clear()
        self.records = 0

    def due_before(self, t: int) -> list[str]:
        """The people whose deadline is before ``t``, in the order they were parked
        (they stay in the index: a decide releases them or parks them again)."""
        heap, due, found = self._heap, self._due, {}
        while heap and heap[0][0] < t:
            entry = heapq.heappop(heap)
            # a person parked again with an earlier deadline has two equal entries
            if due.get(entry[2]) == entry[:2]:
                found[entry[2]] = entry
        for entry in found.values():
            heapq.heappush(heap, entry)
        return [k for _, _, k in sorted(found.values(), key=lambda e: e[1])]


# gc=False: tracked by the cycle collector, these objects made every full collection
# walk about a million of them when a partition kept its people as objects (a third of
# the state step's time in bench_state_size then); the few read as objects now
# (engine.streams.person_codec) need no tracking either. None of these structs can be
# part of a reference cycle: they hold only strings, numbers and containers of further
# such structs.
class TxnEntry(msgspec.Struct, array_like=True, gc=False):
    """A first-seen (operator_id, txn_id) of one person, in the format before
    DECISIONS 101 (:func:`upgrade` reads it)."""

    kind: int
    amount: int
    at: int
    orig: str | None
    status: int          # kernel.PENDING / ACCEPTED / REJECTED
    refunded: int = 0


class Parked(msgspec.Struct, array_like=True, gc=False):
    """A record waiting for an enrollment or an original; enough to decide it later."""

    arrival: int
    kind: int
    operator_id: str
    txn_id: str
    orig: str | None
    amount: int
    at: int
    day: int
    received: int
    source: str


class PersonState(msgspec.Struct, array_like=True, gc=False):
    enr_op: str | None = None
    enr_kind: int = -1
    enr_day: int = 0
    c: int = 0
    r: int = 0
    # the format before DECISIONS 101: first-seen transactions by
    # "operator_id/txn_id", each a TxnEntry's msgpack; read (and moved to
    # ``entries``), never written
    txns: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)
    parked: list[Parked] = msgspec.field(default_factory=list)
    # the format before DECISIONS 103: ``marks`` by source name; read (and moved to
    # ``marks``), never written
    named_marks: dict[str, int] = msgspec.field(default_factory=dict)
    # the format of DECISIONS 101: rows of engine.streams.entries.WIDE_ENTRY; read
    # (and moved to ``entries``), never written
    wide: bytes = b""
    # first-seen transactions, packed rows of engine.streams.entries.ENTRY in the
    # order they were first seen
    entries: bytes = b""
    # records applied, as the highest arrival per source "topic/partition" (the topic
    # a record was first published to, also for a re-routed one), by its
    # :func:`source_key`: a source partition is read, and re-routed, in its own order,
    # so a record at or below its mark is a redelivery (bounded by the number of input
    # topic-partitions)
    marks: dict[int, int] = msgspec.field(default_factory=dict)

    @property
    def n_entries(self) -> int:
        return len(self.entries) // ENTRY.itemsize


class ShardMeta(msgspec.Struct):
    stream_time: int  # the largest of ``lanes`` (what dashboards show per partition)
    changelog_offset: int = -1
    # offset of the newest fence record applied (engine.streams.recovery)
    fence: int = -1
    # consumed topic -> [next offset decided, crc of the last message decided there]:
    # how a take-over tells that an input topic was recreated under the state
    inputs: dict[str, list[int]] = msgspec.field(default_factory=dict)
    # stream time per input the partition's records arrive on: the operator whose
    # topic it is ("" for the unattributed input); a wait ends by its own input's
    lanes: dict[str, int] = msgspec.field(default_factory=dict)


class Fence(msgspec.Struct):
    """A changelog record written by a worker that takes a partition, or by
    ``mynapoint admin rebuild-state`` (``reset``: all state before it is void)."""

    reset: bool = False


_enc = msgspec.msgpack.Encoder()
_dec_person = msgspec.msgpack.Decoder(PersonState)
_dec_entry = msgspec.msgpack.Decoder(TxnEntry)
_dec_meta = msgspec.msgpack.Decoder(ShardMeta)
_dec_fence = msgspec.msgpack.Decoder(Fence)
_dec_wait = msgspec.msgpack.Decoder(int | tuple[int, int])


def encode_wait(first: int, records: int) -> bytes:
    """A ``__wait__/`` value: the earliest received_at of a person's waiting records
    (NO_DEADLINE when none has one) and how many wait."""
    return _enc.encode((first, records))


def decode_wait(raw: bytes) -> tuple[int, int]:
    got = _dec_wait.decode(raw)
    return (got, 1) if isinstance(got, int) else got


# the encoder's own method, not a wrapper: it is called once per person per batch
encode = _enc.encode


def decode_person(b: bytes) -> PersonState:
    """A stored person; one written in an older format comes with its entries
    packed as :data:`~engine.streams.entries.ENTRY` rows (:func:`upgrade`)."""
    st = _dec_person.decode(b)
    if st.txns or st.wide:
        upgrade(st)
    if st.named_marks:
        for name, at in st.named_marks.items():
            k = source_key(name)
            st.marks[k] = max(st.marks.get(k, -1), at)
        st.named_marks = {}
    return st


@functools.lru_cache(maxsize=1 << 14)
def source_key(name: str) -> int:
    """The key of a source ``topic/partition`` in :attr:`PersonState.marks`: its 64-bit
    hash (engine.rules.txn_keys), 18 bytes of msgpack with its mark instead of the
    name's 30 or more (DECISIONS 103). Part of the stored format."""
    return int(key_hashes([name])[0])


def upgrade(st: PersonState) -> None:
    """Move entries of the older formats to packed rows, in the order they were
    first seen: a value holds entries of one format only (each version upgrades
    what it reads before writing), so the order is the older formats' first —
    ``wide`` (DECISIONS 101) and ``txns`` (``operator_id/txn_id`` → TxnEntry
    msgpack, whose dict keeps insertion order)."""
    keys = list(st.txns)
    olds = [_dec_entry.decode(raw) for raw in st.txns.values()]
    rows = np.zeros(len(keys), WIDE_ENTRY)
    ops = [k.partition("/")[0] for k in keys]
    rows["key"] = entry_keys(ops, [k.partition("/")[2] for k in keys])
    rows["orig"] = entry_keys(ops, [e.orig for e in olds])
    for name in ("at", "amount", "refunded", "kind", "status"):
        rows[name] = [getattr(e, name) for e in olds]
    st.entries = (narrow(np.frombuffer(st.wide, WIDE_ENTRY)) + narrow(rows)
                  + st.entries)
    st.txns = {}
    st.wide = b""


def decode_meta(b: bytes) -> ShardMeta:
    return _dec_meta.decode(b)


def is_person_key(k: bytes) -> bool:
    """A key of the store that holds a :class:`PersonState` (not meta, fence or index)."""
    return k != META_KEY.encode() and k != FENCE_KEY and not k.startswith(_WAIT_B)


# what a batch stages: key -> value, None deleting the key
Staged = dict[str, bytes | None]

# A changelog record as a restore reads it: (key, value — None for a tombstone —,
# offset, the fence tag of its writer — None: untagged). A plain tuple, not a
# NamedTuple: a restore makes one per record, and a NamedTuple's constructor costs
# about 1 µs more each (a million-person partition: a second).
ChangelogRecord = tuple[bytes, bytes | None, int, int | None]
# a record's fence tag where it has none: never older than a fence
UNTAGGED = int(np.iinfo(np.int64).max)


class ChangelogColumns(NamedTuple):
    """Changelog records as a restore applies them: record ``i``'s key is
    ``buf[key_at[i]:key_at[i] + key_len[i]]``, its value likewise (length -1: a
    tombstone); offsets (increasing) and fence tags (:data:`UNTAGGED` where none) as
    int64. A fetch's own buffer and columns (engine.kafka.fetch): a restore makes no
    object per record."""

    buf: np.ndarray
    key_at: np.ndarray
    key_len: np.ndarray
    value_at: np.ndarray
    value_len: np.ndarray
    offsets: np.ndarray
    tags: np.ndarray

    @classmethod
    def of(cls, records: list[ChangelogRecord]) -> ChangelogColumns:
        buf, kat, klen, vat, vlen = columns_of([r[0] for r in records], [r[1] for r in records])
        return cls(buf, kat, klen, vat, vlen, np.array([r[2] for r in records], np.int64),
                   np.array([UNTAGGED if r[3] is None else r[3] for r in records], np.int64))

    def bytes_per_record(self) -> int:
        """The mean bytes of a record's key and value."""
        return (int(self.key_len.sum()) + int(np.maximum(self.value_len, 0).sum())
                ) // max(len(self.offsets), 1)

    def key(self, i: int) -> bytes:
        at = int(self.key_at[i])
        return self.buf[at:at + int(self.key_len[i])].tobytes()

    def value(self, i: int) -> bytes | None:
        at, n = int(self.value_at[i]), int(self.value_len[i])
        return None if n < 0 else self.buf[at:at + n].tobytes()

    def rows_keyed(self, key: bytes) -> np.ndarray:
        return keyed_rows(self.buf, self.key_at, self.key_len, key)

    def records(self) -> list[ChangelogRecord]:
        return [(self.key(i), self.value(i), int(self.offsets[i]),
                 None if self.tags[i] == UNTAGGED else int(self.tags[i]))
                for i in range(len(self.offsets))]


class ShardStore:
    """One partition's state, in memory, with a checkpoint file on local disk.

    A decided batch's values wait in ``pending`` until :meth:`apply` takes them,
    once the changelog has them; they reach the checkpoint file
    (engine.streams.state_file) in :meth:`flush`. Reads (:meth:`values`) look in
    what is pending, then in what was applied: every person of the partition is in
    memory (DECISIONS 144), so a decide never waits on the disk. Applied values lie in
    a table of byte arenas keyed by the key's bytes, as the changelog and the file
    have them (engine.streams.value_table, DECISIONS 145): a restore, a load and a
    decide's read make no Python object per person.
    """

    def __init__(self, path: Path, no_time: int, flush_bytes: int = FLUSH_BYTES,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        self.path = path
        self.no_time = no_time
        self.flush_bytes = flush_bytes
        self.flush_seconds = flush_seconds
        _drop_rocksdb_files(path)
        path.mkdir(parents=True, exist_ok=True)
        self.file = SegmentFile(path)
        # every applied value (the checkpoint's, then what apply and restore took)
        self.data: ValueTable = self.file.load()
        raw = self.data.get(_META_B)
        self.meta = decode_meta(raw) if raw is not None else ShardMeta(stream_time=no_time)
        # the meta as applied: what a failed batch's discard goes back to
        self._applied_meta = raw
        # values decided but not applied yet (a batch before its checkpoint): what the
        # next decide reads first
        self.pending: Staged = {}
        # people with waiting records -> earliest deadline, so expiry needs no scan
        self.parked = WaitIndex()
        # applied (in the changelog) but not yet in the checkpoint file: key -> value,
        # None deleting it (DECISIONS 106)
        self.unflushed: dict[bytes, bytes | None] = {}
        self._unflushed_bytes = 0
        self._dirty = False
        # the next flush writes the whole state (a restore took most of it at once)
        self._whole = False
        self._flushed_at = time.monotonic()
        # keys of which a restore read a fenced-off writer's record: their state is
        # written again (engine.streams.recovery.write_again), kept under FENCED_OFF_KEY
        owed = self.data.pop(FENCED_OFF_KEY, None)
        self.fenced_off: set[str] = set(decode_fenced_off(owed)) if owed is not None else set()

    def get(self, key: str) -> PersonState:
        """A person's state as decided so far (a new one if none is stored)."""
        raw = self.values([key])[0]
        return decode_person(raw) if raw is not None else PersonState()

    def value(self, key: str) -> bytes | None:
        """The stored value of ``key`` as applied, whether the file has it yet or not."""
        return self.data.get(key.encode())

    def values(self, keys: list[str]) -> list[bytes | None]:
        """The people's values as decided so far: pending, else applied (None: none)."""
        return [v or None for v in cut(*self.packed(keys))]

    def packed(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`values` laid end to end in one writable buffer, with ``len(keys) + 1``
        offsets (an empty span: no value): no object per person. A person's value is
        never empty nor deleted, so a pending None or an absent key reads the layer
        below."""
        table = self.data
        rows = table.get_rows(list(map(str.encode, keys)))
        if not self.pending:
            return table.gather(rows)
        got = list(map(self.pending.get, keys))
        mine = np.fromiter(map(bool, got), np.bool_, len(got))
        if not mine.any():
            return table.gather(rows)
        vals = list(itertools.compress(got, mine))
        lens = np.fromiter(map(len, vals), np.int64, len(vals))  # type: ignore[arg-type]
        at, size = np.zeros(len(keys), np.int64), np.zeros(len(keys), np.int64)
        at[mine], size[mine] = starts(lens), lens
        return table.gather(np.where(mine, -1, rows),
                            np.frombuffer(b"".join(vals), np.uint8), at, size)  # type: ignore[arg-type]

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every applied key and value (people, their wait index entries, the meta)."""
        return iter(self.data.items())

    def _take(self, writes: dict[bytes, bytes | None]) -> None:
        """Applied values (None: deleted) into memory and, at the next flush, the file."""
        self.data.update(writes)
        self._note(writes)

    def _note(self, writes: dict[bytes, bytes | None]) -> None:
        """``writes``, now in memory, for the next flush (unless it writes the whole
        state)."""
        self._dirty = True
        if self._whole:
            return
        self.unflushed.update(writes)
        self._unflushed_bytes += (sum(map(len, writes))  # no Python frame per value
                                  + sum(map(len, filter(None, writes.values()))))

    def apply(self, blobs: Staged, changelog_offset: int) -> None:
        """Take blobs already acknowledged by the changelog as the state; they reach
        the file in :meth:`flush`, once enough of them are pending (DECISIONS 106)."""
        self._take({k.encode(): v for k, v in blobs.items()})
        # ``blobs`` is what the batches since the last apply staged (often ``pending``
        # itself: a new dict, not a clear)
        self.pending = {}
        self.meta.changelog_offset = max(self.meta.changelog_offset, changelog_offset)
        self._applied_meta = encode(self.meta)
        if (self._unflushed_bytes >= self.flush_bytes
                or time.monotonic() - self._flushed_at >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        """Write what was applied since the last flush to the file, with the meta as
        applied and the keys owed a rewrite: one segment, so a kill leaves the
        checkpoint before or after it, whole. Writes the whole state instead once the
        file holds more superseded writes than state, or after a large restore."""
        self._flushed_at = time.monotonic()
        if not self._dirty:
            return
        meta = self._applied_meta if self._applied_meta is not None else encode(self.meta)
        self.data[_META_B] = meta
        owed = _enc.encode(sorted(self.fenced_off)) if self.fenced_off else None
        if self._whole or self.file.due(self.data):
            self.file.rewrite(self.data.snapshot(),
                              {FENCED_OFF_KEY: owed} if owed is not None else {})
        else:
            self.unflushed[_META_B] = meta
            self.unflushed[FENCED_OFF_KEY] = owed
            self.file.append(self.unflushed)
        self.unflushed = {}
        self._unflushed_bytes = 0
        self._dirty = self._whole = False

    def discard_unapplied(self, timeout: int) -> None:
        """Forget in-memory changes :meth:`apply` has not taken: a batch that failed
        half-way is decided again from the state as applied."""
        self.pending.clear()
        raw = self._applied_meta
        self.meta = decode_meta(raw) if raw is not None else ShardMeta(stream_time=self.no_time)
        self.rebuild_parked_index(timeout)

    def restore(self, records: list[ChangelogRecord]) -> int:
        """:meth:`restore_columns` of records as tuples (key, value, offset, tag)."""
        return self.restore_columns(ChangelogColumns.of(records)) if records else 0

    def restore_columns(self, cols: ChangelogColumns) -> int:
        """Apply changelog records newer than the local copy; return how many were
        ignored as a fenced-off writer's. Written to the file at the next flush (the
        take-over's end, ``Worker._restore``).

        A record whose tag is older than the newest fence read so far was written
        by a worker that had already lost the partition (a zombie): its state is
        stale and must not overwrite the new owner's. So is a record whose tag is older
        than a record read before it: a writer writes its fence before any record, so
        the newer tag names a newer fence, one that compaction may have removed since
        (the changelog keeps only the newest fence; DECISIONS 148). Fences are taken one
        by one; the records between them as runs (:meth:`_restore_run`), with no Python
        per person.
        """
        n = len(cols.offsets)
        start = int(np.searchsorted(cols.offsets, self.meta.changelog_offset, side="right"))
        if start >= n:
            return 0
        fences = cols.rows_keyed(FENCE_KEY)
        metas = cols.rows_keyed(_META_B)
        if not self._whole and n - start + len(self.unflushed) > len(self.data) // 2:
            # most of the state is new: the file takes it whole at the next flush, not
            # as a second copy in appended writes, and nothing needs to remember what
            # changed
            self._whole = True
            self.unflushed = {}
            self._unflushed_bytes = 0
        ignored = 0
        pos = start
        for f in [*fences[fences >= start].tolist(), n]:
            if f > pos:
                ignored += self._restore_run(cols, pos, f, metas)
            if f == n:
                break
            pos = f + 1
            self.meta.changelog_offset = self.meta.fence = int(cols.offsets[f])
            v = cols.value(f)
            if v is not None and _dec_fence.decode(v).reset:
                self._wipe()  # nothing before a reset survives
        self.meta.changelog_offset = int(cols.offsets[-1])
        self._applied_meta = encode(self.meta)
        self._dirty = True
        return ignored

    def _restore_run(self, cols: ChangelogColumns, first: int, stop: int,
                     metas: np.ndarray) -> int:
        """Records ``first`` to ``stop`` of ``cols``, none of them a fence; returns how
        many were a fenced-off writer's. Each record's writer is judged against the
        newest fence known when it is read: the fence read last, or the tag of a newer
        writer's record before it. People are put as one run; the meta records are
        taken one by one, in order."""
        rows = np.arange(first, stop)
        tags = cols.tags[first:stop]
        newest = np.maximum(np.maximum.accumulate(np.where(tags == UNTAGGED, -1, tags)),
                            self.meta.fence)
        stale = tags < np.concatenate(([self.meta.fence], newest[:-1]))
        self.meta.fence = int(newest[-1])
        if stale.any():
            self.fenced_off.update(cols.key(i).decode() for i in rows[stale].tolist())
            rows = rows[~stale]
        # a meta record's tombstone is put like a person's; the others update the meta
        meta = np.isin(rows, metas) & (cols.value_len[rows] >= 0)
        for i in rows[meta].tolist():
            v = cols.value(i)
            assert v is not None  # tombstones are not in ``meta``
            m = decode_meta(v)
            self.meta.stream_time = max(self.meta.stream_time, m.stream_time)
            for lane, t in m.lanes.items():
                self.meta.lanes[lane] = max(self.meta.lanes.get(lane, t), t)
            self.meta.inputs = m.inputs
        self._put_rows(cols, rows[~meta])
        return int(stale.sum())

    def _put_rows(self, cols: ChangelogColumns, rows: np.ndarray) -> None:
        """Records ``rows`` of ``cols`` into memory and (unless the next flush writes
        the whole state) the next flush's writes."""
        self.data.put(cols.buf, cols.key_at[rows], cols.key_len[rows], cols.value_at[rows],
                      cols.value_len[rows])
        self._note({} if self._whole else {cols.key(i): cols.value(i) for i in rows.tolist()})

    def written_again(self, keys: set[str]) -> None:
        """``keys`` of :attr:`fenced_off` are written again under this owner's fence:
        no longer owed (a kill before the next flush notes it costs writing them once
        more)."""
        if keys & self.fenced_off:
            self.fenced_off -= keys
            self._dirty = True

    def _wipe(self, keep_position: bool = True) -> None:
        """Empty the store; ``keep_position`` keeps the changelog offset and fence
        (a reset fence read on restore), else it is new (a foreign local copy)."""
        keep = ShardMeta(stream_time=self.no_time)
        if keep_position:
            keep.changelog_offset, keep.fence = self.meta.changelog_offset, self.meta.fence
        self.file.remove()
        self.data = ValueTable()
        self.meta = keep
        self._applied_meta = encode(keep)
        self.fenced_off.clear()  # void with all else (a reset) or another history's
        self.pending.clear()
        self.parked.clear()
        self.unflushed = {}
        self._unflushed_bytes = 0
        self._dirty = True

    def reset(self) -> None:
        """Forget everything, position included: the local copy is not this
        changelog's (it is ahead of it)."""
        self._wipe(keep_position=False)

    def rebuild_parked_index(self, timeout: int) -> None:
        """The people with waiting records, from the ``__wait__/`` keys."""
        self.parked.clear()
        skip = len(_WAIT_B)
        for key, raw in self.data.prefixed(_WAIT_B):
            first, n = decode_wait(raw)
            self.parked.set(key[skip:].decode(), first + timeout, n)

    def close(self) -> None:
        """Flush and wait for the file: a clean stop leaves the whole state as applied
        in it."""
        self.flush()
        self.file.close()

    @staticmethod
    def destroy(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)


_META_B = META_KEY.encode()


def of_rocksdb(path: Path) -> bool:
    """A store directory of the RocksDB format before DECISIONS 144: a checkpoint this
    version does not read."""
    return (path / "CURRENT").exists() and not (path / FILE_NAME).exists()


def _drop_rocksdb_files(path: Path) -> None:
    """Removed (it may hold people's data); the take-over restores the partition from
    the changelog."""
    if of_rocksdb(path):
        shutil.rmtree(path)


def checkpointed(path: Path) -> ValueTable:
    """What the checkpoint file of the store at ``path`` holds, read without taking
    it (a running worker's store is not disturbed)."""
    return read_file(path / FILE_NAME)[0]
