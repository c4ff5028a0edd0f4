"""Deciding one partition's batch against its stored state.

This is the streaming twin of :func:`engine.rules.settlement.decide_offline`:
the same kernel, fed with the people's state loaded from the shard store and
the records that were waiting, in the order the rules page prescribes
(waiting records by arrival, then enrollments, then transactions).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numba
import numpy as np
import orjson
import pyarrow as pa

from engine.kafka.topics import Topics
from engine.rules import kernel
from engine.rules.marshal import (
    fill_records,
    new_decided,
    new_entries,
    new_people,
    new_records,
    terms_of,
)
from engine.rules.model import KIND_NAMES, NO_TIME, REASON_NAMES, Campaign, Reason, Registry
from engine.rules.settlement import STATEFUL_DETAIL
from engine.rules.strings import format_utc, kafka_partitions, rfc3339_array
from engine.rules.txn_keys import dense_codes, entry_keys, fingerprints, person_codes
from engine.streams.decode import InBatch, concat_batches, parse_source
from engine.streams.entries import ENTRY
from engine.streams.grant_json import GrantJson, grant_json
from engine.streams.person_codec import (
    decode_people,
    encode_people,
    find_marks,
    gather,
    name_table,
    named_rows,
    patch_rows,
)
from engine.streams.state import (
    META_KEY,
    NO_DEADLINE,
    WAIT_PREFIX,
    Parked,
    PersonState,
    ShardStore,
    decode_person,
    encode,
    encode_wait,
    source_key,
)
from engine.streams.value_table import cut

# Up to this many records of a batch, their people are looked up one record at a time
# rather than coded first (``_Call._people``): below it the coding's fixed cost is the
# larger one (a live poll gives each partition a few dozen records).
SMALL_ROWS = 64


@numba.njit(cache=True, nogil=True)
def not_applied(group: np.ndarray, at: np.ndarray, mark: np.ndarray) -> np.ndarray:
    """Which records, in order, are above their group's mark (``mark``, in/out: each
    group's mark, raised by every record kept), as one record at a time would tell."""
    keep = np.zeros(len(group), np.bool_)
    for i in range(len(group)):
        g = group[i]
        if at[i] > mark[g]:
            keep[i] = True
            mark[g] = at[i]
    return keep


@dataclass(frozen=True, slots=True)
class Reroute:
    """A record read on the wrong partition, to be sent to its person's partition on
    the engine's internal re-routing topic."""

    record_type: str          # "enrollment" | "transaction"
    partition: int            # its person's partition
    record: dict[str, Any]    # the record as JSON, as validated (no extra fields)
    source: str               # where it was first read: topic/partition/offset[#i]
    received: int             # received_at (µs) or NO_TIME


class OutcomeMessage(NamedTuple):
    """An outcome as a message: its key, and the outcome as JSON (decoded)."""

    key: bytes | None         # mykey_id (None: a record without a valid one)
    value: dict[str, Any]


class GrantFields(NamedTuple):
    """What a grant's JSON holds besides its key and source, one entry per grant."""

    operator_id: pa.Array     # Arrow strings
    txn_id: pa.Array
    kind: np.ndarray
    amount: np.ndarray
    points: np.ndarray
    cumulative: np.ndarray
    occurred_at: np.ndarray   # µs


@dataclass(slots=True)
class GrantMessages:
    """A batch's grants as their output messages, columns in decision order: the key
    (``mykey_id``), the JSON (``values``, see engine.streams.grant_json) and the
    source, which names the input topic whose operator's outputs the grant goes to.
    The JSON is written when first asked for, or for several batches at once
    (:func:`encode_grants`): the encoder's cost is mostly per call."""

    keys: pa.Array
    sources: pa.Array
    encoder: GrantJson | None = None  # None: no grants
    fields: GrantFields | None = None
    encoded: pa.Array | None = None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def values(self) -> pa.Array:
        if self.encoded is None:
            encode_grants([self])
        assert self.encoded is not None
        return self.encoded


def encode_grants(gs: list[GrantMessages]) -> None:
    """Write the JSON of the grants of ``gs`` not written yet, in one encoder call per
    encoder, each batch's messages a slice of the result."""
    by_encoder: dict[GrantJson, list[GrantMessages]] = {}
    for g in gs:
        if g.encoded is None:
            if g.encoder is None or g.fields is None or not len(g):
                g.encoded = pa.array([], pa.large_binary())
            else:
                by_encoder.setdefault(g.encoder, []).append(g)
    for encoder, group in by_encoder.items():
        f = GrantFields(*(pa.concat_arrays(cols) if isinstance(cols[0], pa.Array)
                          else np.concatenate(cols)
                          for cols in zip(*(g.fields for g in group), strict=True)))
        values = encoder.encode(
            pa.concat_arrays([g.keys for g in group]), f.operator_id, f.txn_id, f.kind,
            f.amount, f.points, f.cumulative, rfc3339_array(f.occurred_at),
            pa.concat_arrays([g.sources for g in group]))
        start = 0
        for g in group:
            g.encoded = values.slice(start, len(g))
            start += len(g)


def _no_grants() -> GrantMessages:
    return GrantMessages(pa.array([], pa.large_string()), pa.array([], pa.large_string()))


@dataclass
class ShardResult:
    grant_messages: GrantMessages = field(default_factory=_no_grants)
    rejections: list[OutcomeMessage] = field(default_factory=list)
    reroute: list[Reroute] = field(default_factory=list)
    # reason codes of the records decided, by record type (0: accepted)
    outcomes: dict[str, np.ndarray] = field(default_factory=dict)
    points: int = 0
    clawed_back: int = 0
    parked: int = 0  # records waiting in the partition after the call

    @property
    def grants(self) -> list[OutcomeMessage]:
        """The grants as (key, JSON object), decoded from their messages."""
        g = self.grant_messages
        return [OutcomeMessage(k.encode(), orjson.loads(v))
                for k, v in zip(g.keys.to_pylist(), g.values.to_pylist(), strict=True)]


def reroute_record(b: InBatch, i: int, key: str) -> dict[str, Any]:
    """Record ``i`` of ``b`` as JSON for its person's partition: the validated fields
    only (extras and the message's format are not carried)."""
    v = b.v
    rec: dict[str, Any] = {"mykey_id": key, "operator_id": v.operator_id[i].as_py()}
    if v.received[i] != NO_TIME:
        rec["received_at"] = format_utc(int(v.received[i]))
    if v.record_type == "transaction":
        rec.update(txn_id=v.txn_id[i].as_py(), kind=KIND_NAMES[int(v.kind[i])],
                   amount=int(v.amount[i]), occurred_at=format_utc(int(v.at[i])))
        o = v.original_txn_id[i].as_py()
        if o is not None:
            rec["original_txn_id"] = o
    else:
        rec["applied_at"] = format_utc(int(v.at[i]))
        if v.earn_given[i]:
            rec["earn_on"] = KIND_NAMES[int(v.kind[i])]
    return rec


class Part(NamedTuple):
    """One partition's share of a decide call: its store, its number, its batches
    (already validated) and the operators whose input it has caught up on (see
    :meth:`ShardDecider.decide`)."""

    store: ShardStore
    partition: int
    enrollments: InBatch | None
    transactions: InBatch | None
    caught_up: frozenset[str] = frozenset()


class ShardDecider:
    def __init__(self, campaign: Campaign, registry: Registry, partitions: int) -> None:
        self.campaign = campaign
        self.registry = registry
        self.partitions = partitions
        self.op_ids = [o.id for o in registry.operators]
        self.n_lanes = len(self.op_ids) + 1  # per partition: each operator's, the rest's
        self.terms = terms_of(campaign, streaming=True)._replace(lanes_per_part=self.n_lanes)
        self.grant_json = grant_json(campaign.id, campaign.cap_points)
        self.names = name_table(self.op_ids)  # person_codec's operator codes: registry order
        self._lanes: dict[str, int] = {}  # source topic -> lane

    def _lane_of(self, operator: str | None) -> int:
        """The stream-time lane of an operator's input (registry order); the last one
        for the unattributed input ("" or None) and an operator the registry lacks."""
        code = self.registry.code(operator) if operator else -1
        return code if code >= 0 else len(self.op_ids)

    def lane(self, source: str) -> int:
        """The lane of a record first read at ``source`` (``topic/partition/...``)."""
        topic = source.partition("/")[0]
        lane = self._lanes.get(topic)
        if lane is None:
            lane = self._lanes[topic] = self._lane_of(Topics.operator_of(topic))
        return lane

    def stream_times(self, store: ShardStore, clock: int | None) -> np.ndarray:
        lanes = np.full(self.n_lanes, NO_TIME, np.int64)
        for name, t in store.meta.lanes.items():
            if not name or self.registry.code(name) >= 0:  # an operator since removed: none
                lanes[self._lane_of(name)] = t
        if clock is not None:
            np.maximum(lanes, clock, out=lanes)
        return lanes

    def decide(self, store: ShardStore, partition: int, enr: InBatch | None,
               txn: InBatch | None, clock: int | None = None,
               final: bool = False, caught_up: frozenset[str] = frozenset()) -> ShardResult:
        """Decide the batch's records of ``partition`` against ``store``; stage the
        state changes in the result. ``clock`` moves stream time without input
        (expiry); ``final`` decides every waiting record (end of input);
        ``caught_up``: the operators ("" for the unattributed input) whose
        transactions input has nothing unread — their waits follow the partition's
        stream time after this batch (kernel.decide)."""
        return self.decide_parts([Part(store, partition, enr, txn, caught_up)], clock,
                                 final)[0]

    def decide_parts(self, parts: list[Part], clock: int | None = None,
                     final: bool = False) -> list[ShardResult]:
        """Several partitions' batches in one call, each partition's result as if
        decided alone (DECISIONS 130): people belong to one partition each, and each
        partition's stream times are a run of lanes of their own. A call's fixed cost
        (a few dozen numpy and Arrow calls per step) is then paid once per poll, not
        once per partition."""
        call = _Call(self, parts)
        call.select()
        lanes = np.concatenate([self.stream_times(pt.store, clock) for pt in parts])
        call.involve_waiting(lanes, final)
        call.load()
        call.marshal()
        follows = np.zeros(len(lanes), np.bool_)
        for k, pt in enumerate(parts):
            follows[[k * self.n_lanes + self._lane_of(name) for name in pt.caught_up]] = True
        call.run_kernel(self.terms._replace(final=True) if final else self.terms, lanes,
                        follows)
        call.outcomes()
        call.new_state()
        return call.results


class _Call:
    """One :meth:`ShardDecider.decide_parts` call, step by step: which records and
    people, the people's stored state (read in bulk, :mod:`engine.streams.person_codec`),
    the kernel's arrays, the kernel, the outcomes, the people's new state. Its
    partitions are indexed 0.. in the order given (``k``)."""

    def __init__(self, d: ShardDecider, parts: list[Part]) -> None:
        self.d = d
        self.parts = parts
        self.stores = [pt.store for pt in parts]
        self.results = [ShardResult() for _ in parts]
        self.people: dict[str, int] = {}
        self.plist: list[str] = []
        self.pk: list[int] = []  # each person's partition (k)
        # per batch: (batch, record type, its rows that passed the checks, which of
        # them are this call's to decide, their person index, each row's partition k)
        self.mine: list[tuple[InBatch, int, np.ndarray, np.ndarray, np.ndarray,
                              np.ndarray]] = []
        # (batch, record type, rows decided here, their person index or -1, each
        # row's partition k)
        self.keep: list[tuple[InBatch, int, np.ndarray, list[int], np.ndarray]] = []
        # id columns per kernel record, gathered from the batches' Arrow columns once
        # asked for (:meth:`column`)
        self._columns: dict[str, pa.Array] = {}
        self.pre: list[tuple[int, Parked]] = []
        self.spans: list[tuple[InBatch, int, np.ndarray]] = []
        # people whose value is not of the common shape (records waiting, an older
        # format): msgspec's objects, by person index
        self.objs: dict[int, PersonState] = {}

    def person(self, key: str, k: int) -> int:
        i = self.people.get(key)
        if i is None:
            i = len(self.plist)
            self.people[key] = i
            self.plist.append(key)
            self.pk.append(k)
        return i

    def _batches(self, typ: int) -> tuple[InBatch, np.ndarray] | None:
        """The partitions' batches of one record type as one, with each row's
        partition k: each partition's rows stay in their order."""
        got = [(k, b) for k, pt in enumerate(self.parts)
               for b in (pt.enrollments if typ == kernel.ENROLLMENT else pt.transactions,)
               if b is not None and b.v.n]
        if not got:
            return None
        whole = concat_batches([b for _, b in got])
        assert whole is not None
        read = np.repeat(np.asarray([k for k, _ in got], np.int64), [b.v.n for _, b in got])
        return whole, read

    # ------------------------------------------------------------------ steps
    def select(self) -> None:
        """Which records are their partition's (the rest re-routed), and the people
        they involve: Python per person, not per record."""
        own = np.asarray([pt.partition for pt in self.parts], np.int64)
        for typ in (kernel.ENROLLMENT, kernel.TRANSACTION):
            got = self._batches(typ)
            if got is None:
                continue
            b, read = got
            v = b.v
            valid = np.asarray(v.mykey_id.is_valid().to_numpy(zero_copy_only=False), np.bool_)
            checked = (v.reason == 0) & valid  # the rest failed a check: decided as they are
            parts = kafka_partitions(v.mykey_id, self.d.partitions)
            here = parts == own[read]
            for i in np.flatnonzero(checked & ~here).tolist():
                self.results[int(read[i])].reroute.append(Reroute(
                    v.record_type, int(parts[i]), reroute_record(b, i, v.mykey_id[i].as_py()),
                    b.source[i], int(v.received[i])))
            mine = np.flatnonzero(checked & here)
            self.mine.append((b, typ, checked, mine, self._people(b, mine, read[mine]), read))

    def _people(self, b: InBatch, rows: np.ndarray, ks: np.ndarray) -> np.ndarray:
        """The person index of each of ``rows`` (of partitions ``ks``), numbered in
        order of first appearance: up to SMALL_ROWS looked up record by record, more
        coded first (their mykey_id is valid: 8 bytes, a dense code each, in order of
        first appearance) and looked up once per person."""
        person = self.person
        if len(rows) <= SMALL_ROWS:  # a few records: one lookup each costs less than coding
            keys = b.v.mykey_id.take(pa.array(rows)).to_pylist()
            return np.asarray([person(key, k) for key, k in zip(keys, ks.tolist(),
                                                                 strict=True)], np.int64)
        codes = person_codes(b.v.mykey_id.take(rows))[0][0]
        first = np.unique(codes, return_index=True)[1]  # by code: by first appearance
        keys = b.v.mykey_id.take(pa.array(rows[first])).to_pylist()
        pis = [person(key, k) for key, k in zip(keys, ks[first].tolist(), strict=True)]
        return np.asarray(pis, np.int64)[codes]  # type: ignore[no-any-return]

    def involve_waiting(self, lanes: np.ndarray, final: bool) -> None:
        """Add the people whose waits end in this call (or all, ``final``): a
        partition's waits end by its stream time (the largest of its lanes)."""
        new_st = lanes.reshape(len(self.parts), self.d.n_lanes).max(axis=1)
        for b, typ, _checked, _rows, _person, read in self.mine:
            if typ == kernel.TRANSACTION:
                at = (b.v.received != NO_TIME) & ~b.v.too_late
                np.maximum.at(new_st, read[at], b.v.received[at])
        for k, store in enumerate(self.stores):
            parked = store.parked
            for key in list(parked) if final else parked.due_before(int(new_st[k])):
                self.person(key, k)

    def load(self) -> None:
        """The people's stored state as columns (one compiled pass over their values;
        msgspec's objects for the few of another shape), then which records are
        already in it (:meth:`_not_applied`), then the waiting records, which go
        first, by arrival."""
        np_ = len(self.plist)
        # every person is known by now (select, involve_waiting)
        self.part_of = np.asarray(self.pk, np.int64)
        # writable: new_state writes the decided status and refunded sums into the
        # stored rows in place (patch_rows)
        if len(self.stores) == 1:
            buf, offs = self.stores[0].packed(self.plist)
        else:
            bufs, spans, base = [], np.zeros((np_, 2), np.int64), 0
            for k, store in enumerate(self.stores):
                idx = np.flatnonzero(self.part_of == k)
                got, o = store.packed([self.plist[i] for i in idx.tolist()])
                spans[idx, 0], spans[idx, 1] = o[:-1] + base, np.diff(o)
                bufs.append(got)
                base += len(got)
            buf = gather(np.concatenate(bufs), spans) if bufs else np.empty(0, np.uint8)
            offs = np.zeros(np_ + 1, np.int64)
            np.cumsum(spans[:, 1], out=offs[1:])
        p = self.p = decode_people(buf, offs, self.d.names)
        used = int(p.mstart[-1] + p.mcount[-1]) if np_ else 0
        mkeys, mvals = [p.mkeys[:used]], [p.mvals[:used]]
        extra = [buf]
        base = len(buf)
        rcode = self.d.registry.code
        for pi in np.flatnonzero(~p.ok).tolist():
            st = self.objs[pi] = decode_person(buf[offs[pi]:offs[pi + 1]].tobytes())
            enrolled = st.enr_op is not None
            p.op[pi] = rcode(st.enr_op) if st.enr_op is not None else -1
            p.kind[pi] = st.enr_kind if enrolled else -1
            p.day[pi] = st.enr_day if enrolled else 0
            p.c[pi], p.r[pi] = st.c, st.r
            p.entries[pi] = base, len(st.entries)
            base += len(st.entries)
            extra.append(np.frombuffer(st.entries, np.uint8))
            p.mstart[pi], p.mcount[pi] = used, len(st.marks)
            used += len(st.marks)
            mkeys.append(np.fromiter(st.marks.keys(), np.uint64, len(st.marks)))
            mvals.append(np.fromiter(st.marks.values(), np.int64, len(st.marks)))
        # the stored entries stay in the bytes they were read in (DECISIONS 129):
        # marshal copies out only the rows a record names, new_state writes each
        # person's value from these bytes
        self.ebuf = np.concatenate(extra) if len(extra) > 1 else buf
        self.mkeys, self.mvals = np.concatenate(mkeys), np.concatenate(mvals)
        self._not_applied()
        for pi, st in sorted(self.objs.items()):
            for pk in st.parked:
                self.pre.append((pi, pk))
        self.pre.sort(key=lambda x: x[1].arrival)

    def _not_applied(self) -> None:
        """Which of the partition's records are not in their person's state yet. A
        record at or below its person's mark for the source it was first read at
        was applied before a crash (redelivered, or re-routed again). The records of
        all batches in one pass, in the order they are decided (enrollments first),
        as one record at a time would raise the marks; marks new to a person are
        kept apart (``added``), in that order."""
        origins: list[np.ndarray] = []
        ats: list[np.ndarray] = []
        okeys: list[int] = []
        for b, _typ, _checked, rows, _person, _read in self.mine:
            origin = b.origin[rows].astype(np.int64)
            at = b.origin_at[rows].copy()
            base = len(okeys)
            okeys.extend(source_key(w) for w in b.origins)
            for q in np.flatnonzero(origin < 0).tolist():  # a source of no usual form
                src, at[q] = parse_source(b.source[int(rows[q])])
                origin[q] = len(okeys) - base
                okeys.append(source_key(src))
            origins.append(origin + base)
            ats.append(at)
        if okeys:
            person = np.concatenate([m[4] for m in self.mine])
            origin = np.concatenate(origins)
            _, first, group = np.unique(person * len(okeys) + origin, return_index=True,
                                        return_inverse=True)
            g_person = person[first]
            g_key = np.asarray(okeys, np.uint64)[origin[first]]
            slot = find_marks(self.mkeys, self.p.mstart, self.p.mcount, g_person, g_key)
            found = slot >= 0
            before = np.full(len(slot), -1, np.int64)
            before[found] = self.mvals[slot[found]]
            raised = before.copy()
            fresh = not_applied(group.reshape(-1), np.concatenate(ats), raised)
            changed = raised != before
            self.mvals[slot[changed & found]] = raised[changed & found]
            new = changed & ~found  # in group order: by person, then source
            self.added = (g_person[new], g_key[new], raised[new])
        else:
            fresh = np.zeros(0, np.bool_)
            self.added = (np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int64))
        start = 0
        for b, typ, checked, rows, person, read in self.mine:
            decided = ~checked
            decided[rows[fresh[start:start + len(rows)]]] = True
            start += len(rows)
            idx = np.flatnonzero(decided)
            pidx = np.full(b.v.n, -1, np.int64)
            pidx[rows] = person
            self.keep.append((b, typ, idx, pidx[idx].tolist(), read[idx]))

    def marshal(self) -> None:
        """The kernel's records (waiting ones first), people and registry: every
        entry of the people involved, with txn codes dense over the entry keys of
        this call (engine.streams.entries)."""
        n_pre = len(self.pre)
        n = n_pre + sum(len(k[2]) for k in self.keep)
        recs = self.recs = new_records(n)
        keys = np.zeros(n, np.uint64)    # entry key of each record's own txn_id
        origs = np.zeros(n, np.uint64)   # and of its original_txn_id
        rcode = self.d.registry.code
        for j, (pi, pk) in enumerate(self.pre):
            recs.typ[j] = kernel.TRANSACTION
            recs.person[j] = pi
            recs.op[j] = rcode(pk.operator_id)
            recs.kind[j] = pk.kind
            recs.amount[j] = pk.amount
            recs.at[j] = pk.at
            recs.day[j] = pk.day
            recs.received[j] = pk.received
            recs.preparked[j] = 1
            recs.lane[j] = self.d.lane(pk.source) + int(self.part_of[pi]) * self.d.n_lanes
        if n_pre:
            ops = [pk.operator_id for _, pk in self.pre]
            keys[:n_pre] = entry_keys(ops, [pk.txn_id for _, pk in self.pre])
            origs[:n_pre] = entry_keys(ops, [pk.orig for _, pk in self.pre])
        # each kernel record's partition (k): its lanes are that partition's run
        rec_part = self.rec_part = np.zeros(n, np.int64)
        if n_pre:
            rec_part[:n_pre] = self.part_of[recs.person[:n_pre]]
        j = n_pre
        for b, typ, rows, pidx, read in self.keep:
            m = len(rows)
            v = b.v
            person = np.asarray(pidx, np.int32)
            fill_records(recs, slice(j, j + m), typ, v, rows, person)
            rec_part[j:j + m] = read
            # by where each record was first read (its topic), one lookup per topic
            lanes = np.asarray([self.d.lane(w) for w in b.origins] + [-1], np.int32)
            recs.lane[j:j + m] = lanes[b.origin[rows]]
            for q in np.flatnonzero(b.origin[rows] < 0).tolist():
                recs.lane[j + q] = self.d.lane(b.source[int(rows[q])])
            recs.lane[j:j + m] += (read * self.d.n_lanes).astype(np.int32)
            if typ == kernel.TRANSACTION and m:
                # only records with a person meet the state (the rest failed a check)
                with_person = person >= 0
                keys[j:j + m] = np.where(with_person,
                                         entry_keys(v.operator_id, v.txn_id)[rows], 0)
                origs[j:j + m] = np.where(
                    with_person, entry_keys(v.operator_id, v.original_txn_id)[rows], 0)
            self.spans.append((b, j, rows))
            j += m
        people = self.people_a = new_people(len(self.plist))
        p, np_ = self.p, len(self.plist)
        counts = p.entries[:, 1] // ENTRY.itemsize
        people.op[:np_] = p.op
        people.kind[:np_] = p.kind
        people.day[:np_] = p.day
        people.c[:np_] = p.c
        people.r[:np_] = p.r
        people.n[:np_] = counts
        codes, self.key_of = dense_codes(np.concatenate((keys, origs)))
        recs.txn[:] = codes[:n]
        recs.orig[:] = codes[n:]
        # The kernel reads an entry only through a record naming its key (DUPLICATE,
        # an original, a waiting record's own entry), so it is given only the stored
        # entries whose key a record of this call names (DECISIONS 129): the rest of
        # a long history costs a probe here and a copy in new_state, not a registry
        # row, a sort and a copy into fresh memory.
        self.epos, s_codes, s_owner = named_rows(self.ebuf, p.entries, self.key_of)
        self.n0 = n0 = len(self.epos)
        recs.fp[:] = fingerprints(recs.at, origs)
        reg = self.reg = new_entries(n0 + n)
        if n0:
            stored = np.frombuffer(gather(self.ebuf, np.stack(
                (self.epos, np.full(n0, ENTRY.itemsize, np.int64)), axis=1)), ENTRY)
            reg.person[:n0] = s_owner
            reg.txn[:n0] = s_codes
            for name in ("kind", "amount", "fp", "status", "refunded"):
                getattr(reg, name)[:n0] = stored[name]
            # an entry's operator is part of its key, so any record naming the key
            # has it; the kernel matches entries by (person, operator, code)
            op_of = np.full(len(self.key_of) + 1, -1, np.int32)
            op_of[recs.txn] = recs.op
            op_of[recs.orig] = recs.op
            op_of[-1] = -1
            reg.op[:n0] = op_of[reg.txn[:n0]]
            if n_pre:
                self._link_waiting(n0, len(self.key_of))
        ts = recs.received
        recs.deadline[:] = np.where(ts == NO_TIME, NO_TIME, ts + self.d.campaign.park_timeout)
        # where each kernel record came from: (span, row) of a batch, or -1 (waiting)
        self.span_of = np.full(n, -1, np.int64)
        self.row_of = np.full(n, -1, np.int64)
        for si, (_b, start, rows) in enumerate(self.spans):
            self.span_of[start:start + len(rows)] = si
            self.row_of[start:start + len(rows)] = rows

    def _link_waiting(self, n0: int, n_codes: int) -> None:
        """A waiting record is its person's entry already (first seen, PENDING):
        tell the kernel which one (``rec``), so it is not taken for a duplicate."""
        reg, recs, n_pre = self.reg, self.recs, len(self.pre)
        width = n_codes + 1
        mine = np.isin(reg.person[:n0], recs.person[:n_pre])
        where = np.flatnonzero(mine)
        at = dict(zip((reg.person[where].astype(np.int64) * width
                       + reg.txn[where]).tolist(), where.tolist(), strict=True))
        for j, k in enumerate((recs.person[:n_pre].astype(np.int64) * width
                               + recs.txn[:n_pre]).tolist()):
            e = at.get(k)
            if e is not None:
                reg.rec[e] = j

    def run_kernel(self, terms: kernel.Terms, lanes: np.ndarray, follows: np.ndarray) -> None:
        self.out = new_decided(len(self.recs.typ))
        n_entries, _ = kernel.decide(
            self.people_a, self.recs, self.reg, self.n0, max(len(self.key_of), 1), terms,
            lanes, follows, self.out)
        self.n_entries = int(n_entries)
        ops, width = self.d.op_ids, self.d.n_lanes
        for k, store in enumerate(self.stores):
            meta, own = store.meta, lanes[k * width:(k + 1) * width]
            for code in np.flatnonzero(own != NO_TIME).tolist():
                meta.lanes[ops[code] if code < len(ops) else ""] = int(own[code])
            meta.stream_time = max(meta.stream_time, int(own.max()))

    def outcomes(self) -> None:
        """Grants and rejections, in decision order, to each record's partition: the
        ids of the records decided are gathered column-wise (Arrow), only rejections
        are built one by one."""
        results, recs, out, rec_part = self.results, self.recs, self.out, self.rec_part
        order = np.argsort(np.where(out.reason == kernel.PARKED, np.iinfo(np.int64).max,
                                    out.seq), kind="stable")
        decided = order[out.reason[order] != kernel.PARKED]
        reason = out.reason[decided]
        is_txn = recs.typ[decided] == kernel.TRANSACTION
        d_part = rec_part[decided]
        for k, res in enumerate(results):
            at = d_part == k
            res.outcomes = {"enrollment": reason[~is_txn & at],
                            "transaction": reason[is_txn & at]}
        rejected_a = decided[reason != 0]
        if len(rejected_a):
            typ_l = recs.typ.tolist()
            reason_l = out.reason.tolist()
            part_l = rec_part.tolist()
            key_l, op_l, tid_l, src_l = (self.ids(name, rejected_a).to_pylist() for name in
                                         ("mykey_id", "operator_id", "txn_id", "source"))
            detail_l = self.details()[rejected_a].tolist()
            rejected = rejected_a.tolist()
            for j, key, opid, tid, src, detail in zip(rejected, key_l, op_l, tid_l, src_l,
                                                      detail_l, strict=True):
                r = reason_l[j]
                txn = typ_l[j] == kernel.TRANSACTION
                results[part_l[j]].rejections.append(OutcomeMessage(
                    key.encode() if key is not None else None, {
                        "record_type": "transaction" if txn else "enrollment",
                        "reason": REASON_NAMES[r],
                        "detail": detail if detail is not None else STATEFUL_DETAIL[Reason(r)],
                        "txn_id": tid if txn else None,
                        "operator_id": opid, "mykey_id": key, "source": src}))
        accepted = decided[(reason == 0) & is_txn]
        if not len(accepted):
            return
        # grouped by partition, each partition's in decision order: one gather of the
        # ids for all, each partition's grants a slice of it
        accepted = accepted[np.argsort(rec_part[accepted], kind="stable")]
        bounds = np.searchsorted(rec_part[accepted], np.arange(len(results) + 1)).tolist()
        pts_a = out.points[accepted]
        g_keys, g_ops, g_tids, g_srcs = (self.ids(name, accepted) for name in
                                         ("mykey_id", "operator_id", "txn_id", "source"))
        fields = GrantFields(g_ops, g_tids, recs.kind[accepted], recs.amount[accepted],
                             pts_a, out.cum[accepted], recs.at[accepted])
        for res, lo, hi in zip(results, bounds[:-1], bounds[1:], strict=True):
            if hi == lo:
                continue
            pts = pts_a[lo:hi]
            res.points += int(pts[pts > 0].sum())
            res.clawed_back -= int(pts[pts < 0].sum())
            res.grant_messages = GrantMessages(
                g_keys.slice(lo, hi - lo), g_srcs.slice(lo, hi - lo), self.d.grant_json,
                GrantFields(*(f.slice(lo, hi - lo) if isinstance(f, pa.Array) else f[lo:hi]
                              for f in fields)))

    def column(self, name: str) -> pa.Array:
        """An id per kernel record (large strings, Arrow): ``mykey_id``,
        ``operator_id``, ``txn_id``, ``original_txn_id`` or ``source``, taken from the
        batches' columns by row, the waiting records' from their state."""
        col = self._columns.get(name)
        if col is None:
            if name == "mykey_id":
                pre = [self.plist[pi] for pi, _ in self.pre]
            else:
                attr = "orig" if name == "original_txn_id" else name
                pre = [getattr(pk, attr) for _, pk in self.pre]
            parts = [pa.array(pre, pa.large_string())]
            for b, _start, rows in self.spans:
                whole = (pa.array(b.source, pa.large_string()) if name == "source"
                         else getattr(b.v, name).cast(pa.large_string()))
                parts.append(whole.take(pa.array(rows)))
            col = self._columns[name] = pa.concat_arrays(parts)
        return col

    def ids(self, name: str, at: np.ndarray) -> pa.Array:
        """``column(name).take(at)``. A call with no waiting records and one batch
        (a small poll's usual case) takes them from that batch's column directly: the
        whole column's cast and copy cost more than its few rows."""
        if self.pre or len(self.spans) != 1 or name in self._columns:
            return self.column(name).take(pa.array(at))
        b, _start, rows = self.spans[0]  # the kernel's records are these rows, in order
        pick = rows[at]
        if name == "source":
            return pa.array([b.source[i] for i in pick.tolist()], pa.large_string())
        return getattr(b.v, name).take(pa.array(pick)).cast(pa.large_string())

    def details(self) -> np.ndarray:
        """Per kernel record, the stateless check's detail (None for a waiting record)."""
        out = np.full(len(self.recs.typ), None, object)
        for b, start, rows in self.spans:
            out[start:start + len(rows)] = b.v.detail[rows]
        return out

    def new_state(self) -> None:
        """Every involved person's new value, staged in the store (``pending``) with the
        meta: in one compiled pass for the people with nothing waiting (person_codec),
        as msgspec objects for the others."""
        people, p = self.people_a, self.p
        np_ = len(self.plist)
        ebuf, espans = self.ebuf, p.entries
        if self.n0:  # the stored rows the kernel was given, as it left them
            patch_rows(ebuf, self.epos, self.reg.status[:self.n0], self.reg.refunded[:self.n0])
        nbuf, nspans = self._new_entries(np_)
        a_person, a_key, a_val = self.added
        a_count = np.bincount(a_person, minlength=np_).astype(np.int64)
        a_start = np.cumsum(a_count) - a_count
        waiting = self._waiting()
        timeout = self.d.campaign.park_timeout
        cols = (people.op[:np_], people.kind[:np_].astype(np.int64),
                people.day[:np_].astype(np.int64), people.c[:np_], people.r[:np_])
        plain = np.ones(np_, np.bool_)
        plain[list(waiting)] = False
        fast = np.flatnonzero(plain)
        f_op, f_kind, f_day, f_c, f_r = (col[fast] for col in cols)
        data, offs = encode_people(
            f_op, f_kind, f_day, f_c, f_r, ebuf, espans[fast], self.d.names,
            (self.mkeys, self.mvals, p.mstart[fast], p.mcount[fast]),
            (a_key, a_val, a_start[fast], a_count[fast]), (nbuf, nspans[fast]))
        keys = list(map(self.plist.__getitem__, fast.tolist()))
        values = cut(data, offs)
        f_part = self.part_of[fast]
        for k, store in enumerate(self.stores):
            staged, due = store.pending, store.parked
            at = (f_part == k).tolist()
            mine = list(itertools.compress(keys, at))
            staged.update(zip(mine, itertools.compress(values, at), strict=True))
            for key in due.keys() & set(mine):  # nothing waits for them any more
                del due[key]
                staged[WAIT_PREFIX + key] = None
        names = [*self.d.op_ids, None]  # by operator code; -1: not enrolled
        for pi, parked in waiting.items():
            key = self.plist[pi]
            store = self.stores[int(self.part_of[pi])]
            staged, due = store.pending, store.parked
            o, k, d, c, r = (int(col[pi]) for col in cols)
            m0, mn, x0, xn = (int(x) for x in (p.mstart[pi], p.mcount[pi], a_start[pi],
                                                a_count[pi]))
            marks = dict(zip(self.mkeys[m0:m0 + mn].tolist(), self.mvals[m0:m0 + mn].tolist(),
                             strict=True))
            marks.update(zip(a_key[x0:x0 + xn].tolist(), a_val[x0:x0 + xn].tolist(),
                             strict=True))
            (s0, sn), (t0, tn) = espans[pi].tolist(), nspans[pi].tolist()
            entries = ebuf[s0:s0 + sn].tobytes() + nbuf[t0:t0 + tn].tobytes()
            staged[key] = encode(PersonState(names[o], k, d, c, r, parked=parked,
                                            entries=entries, marks=marks))
            first = min((pk.received for pk in parked if pk.received != NO_TIME),
                        default=NO_DEADLINE)
            if due.get(key) != first + timeout or due.count(key) != len(parked):
                staged[WAIT_PREFIX + key] = encode_wait(first, len(parked))
            due.set(key, first + timeout, len(parked))
        for store, res in zip(self.stores, self.results, strict=True):
            store.pending[META_KEY] = encode(store.meta)
            res.parked = store.parked.records

    def _new_entries(self, np_: int) -> tuple[np.ndarray, np.ndarray]:
        """The new entries, packed in person order and in the order they were first
        seen, with each person's (start, length) in them (a value is written from the
        person's stored rows, then these)."""
        reg, n0, ne = self.reg, self.n0, self.n_entries
        owner = reg.person[n0:ne]
        # gathered field by field into person order: a gather of the packed 22-byte
        # rows themselves costs twice as much
        order = np.argsort(owner, kind="stable")
        rows = np.empty(ne - n0, ENTRY)
        key_of = np.append(self.key_of, np.uint64(0))  # code -1: no key
        rows["key"] = key_of[reg.txn[n0:ne][order]]
        for name in ("fp", "amount", "refunded", "kind", "status"):
            rows[name] = getattr(reg, name)[n0:ne][order]
        sizes = np.bincount(owner, minlength=np_).astype(np.int64) * ENTRY.itemsize
        return rows.view(np.uint8), np.stack((np.cumsum(sizes) - sizes, sizes), axis=1)

    def _waiting(self) -> dict[int, list[Parked]]:
        """The records that wait after this call, by person index, in record order."""
        recs, n_pre = self.recs, len(self.pre)
        waits = np.flatnonzero(self.out.reason == kernel.PARKED)
        out: dict[int, list[Parked]] = {}
        if not len(waits):
            return out
        fresh = waits[waits >= n_pre]
        ids: Iterator[tuple[Any, ...]] = iter(())
        if len(fresh):
            ids = zip(*(self.ids(name, fresh).to_pylist() for name in
                        ("operator_id", "txn_id", "original_txn_id", "source")), strict=True)
        for j in waits.tolist():
            if j < n_pre:
                pk = self.pre[j][1]
            else:
                b = self.spans[int(self.span_of[j])][0]
                opid, tid, orig, src = next(ids)
                pk = Parked(int(b.arrival[int(self.row_of[j])]), int(recs.kind[j]), opid, tid,
                            orig, int(recs.amount[j]), int(recs.at[j]), int(recs.day[j]),
                            int(recs.received[j]), src)
            out.setdefault(int(recs.person[j]), []).append(pk)
        return out
