"""Deciding one partition's batch against its stored state.

This is the streaming twin of :func:`engine.rules.settlement.decide_offline`:
the same kernel, fed with the people's state loaded from the shard store and
the records that were waiting, in the order the rules page prescribes
(waiting records by arrival, then enrollments, then transactions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

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
from engine.rules.strings import format_utc, kafka_partitions, rfc3339_utc
from engine.streams.decode import SUB_BITS, InBatch
from engine.streams.grant_json import GrantJson
from engine.streams.state import (
    META_KEY,
    WAIT_PREFIX,
    Parked,
    PersonState,
    ShardStore,
    Staged,
    TxnEntry,
    decode_entry,
    encode,
    encode_entry,
    txn_key,
)


def _origin(source: str) -> tuple[str, int]:
    """("topic/partition", arrival) of an engine-written ``topic/partition/offset[#i]``.

    >>> _origin("m.transactions/3/17#2")
    ('m.transactions/3', 1114114)
    """
    where, _, pos = source.rpartition("/")
    offset, _, index = pos.partition("#")
    return where, (int(offset) << SUB_BITS) | int(index or 0)


@dataclass(frozen=True, slots=True)
class Reroute:
    """A record read on the wrong partition, to be sent to its person's partition on
    the engine's internal re-routing topic."""

    record_type: str          # "enrollment" | "transaction"
    partition: int            # its person's partition
    record: dict[str, Any]    # the record as JSON, as validated (no extra fields)
    source: str               # where it was first read: topic/partition/offset[#i]
    received: int             # received_at (µs) or NO_TIME


# an outcome message: (key = mykey_id or None, the outcome as JSON)
Outcome = tuple[bytes | None, dict[str, Any]]


@dataclass
class ShardResult:
    # grants as their output messages: (key, JSON, source); see engine.streams.grant_json
    grant_messages: list[tuple[bytes | None, bytes, str]] = field(default_factory=list)
    rejections: list[Outcome] = field(default_factory=list)
    reroute: list[Reroute] = field(default_factory=list)
    blobs: Staged = field(default_factory=dict)
    outcomes: dict[str, list[str]] = field(default_factory=dict)
    points: int = 0
    clawed_back: int = 0
    parked: int = 0

    @property
    def grants(self) -> list[Outcome]:
        """The grants as (key, JSON object), decoded from their messages."""
        return [(k, orjson.loads(v)) for k, v, _ in self.grant_messages]


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


class ShardDecider:
    def __init__(self, campaign: Campaign, registry: Registry, partitions: int) -> None:
        self.campaign = campaign
        self.registry = registry
        self.partitions = partitions
        self.op_ids = [o.id for o in registry.operators]
        self.terms = terms_of(campaign, streaming=True)
        self.grant_json = GrantJson(campaign.id, campaign.cap_points)
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
        lanes = np.full(len(self.op_ids) + 1, NO_TIME, np.int64)
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
        call = _Call(self, store)
        call.select(partition, enr, txn)
        lanes = self.stream_times(store, clock)
        call.involve_waiting(int(lanes.max()), txn, final)
        call.marshal()
        follows = np.zeros(len(lanes), np.bool_)
        follows[[self._lane_of(name) for name in caught_up]] = True
        call.run_kernel(self.terms._replace(final=True) if final else self.terms, lanes,
                        follows)
        call.outcomes()
        call.new_state()
        return call.res



class _Call:
    """One :meth:`ShardDecider.decide` call, step by step: which records and people,
    the kernel's arrays, the kernel, the outcomes, the people's new state."""

    def __init__(self, d: ShardDecider, store: ShardStore) -> None:
        self.d = d
        self.store = store
        self.res = ShardResult()
        self.people: dict[str, int] = {}
        self.plist: list[str] = []
        self.states: list[PersonState] = []
        # (batch, record type, rows decided here, their person index or -1)
        self.keep: list[tuple[InBatch, int, np.ndarray, list[int]]] = []
        self.pre: list[tuple[int, Parked]] = []
        self.codes: dict[str, int] = {}
        self.entries: dict[tuple[int, str], int] = {}
        self.e_rows: list[tuple[int, int, str, TxnEntry, int]] = []
        self.spans: list[tuple[InBatch, int, np.ndarray]] = []

    def person(self, key: str) -> int:
        i = self.people.get(key)
        if i is None:
            i = len(self.plist)
            self.people[key] = i
            self.plist.append(key)
            self.states.append(self.store.get(key))
        return i

    def code(self, s: str | None) -> int:
        """Dense code of a txn_id within this call (-1: none)."""
        if s is None:
            return -1
        c = self.codes.get(s)
        if c is None:
            c = self.codes[s] = len(self.codes)
        return c

    def want_entry(self, pi: int, opc: int, txn_id: str | None, rec: int) -> None:
        """Load the person's registry entry of (operator, txn_id) if there is one;
        ``rec`` >= 0 names the batch record that waits as that entry."""
        if txn_id is None or opc < 0:
            return
        k = txn_key(self.d.op_ids[opc], txn_id)
        e = self.entries.get((pi, k))
        if e is not None:
            if rec >= 0:
                self.e_rows[e] = (*self.e_rows[e][:4], rec)
            return
        raw = self.states[pi].txns.get(k)
        if raw is not None:
            self.entries[(pi, k)] = len(self.e_rows)
            self.e_rows.append((pi, opc, txn_id, decode_entry(raw), rec))

    # ------------------------------------------------------------------ steps
    def select(self, partition: int, enr: InBatch | None, txn: InBatch | None) -> None:
        """Which records are decided here (not re-routed, not already applied), and
        the people they involve."""
        batches = [(b, t) for b, t in ((enr, kernel.ENROLLMENT), (txn, kernel.TRANSACTION))
                   if b is not None and b.v.n]
        for b, typ in batches:
            keys = b.v.mykey_id.to_pylist()
            parts = kafka_partitions(b.v.mykey_id, self.d.partitions).tolist()
            reasons = b.v.reason.tolist()
            idx: list[int] = []
            pidx: list[int] = []
            for i, key in enumerate(keys):
                if reasons[i] != 0 or key is None:
                    idx.append(i)
                    pidx.append(-1)
                    continue
                if parts[i] != partition:
                    self.res.reroute.append(Reroute(
                        b.v.record_type, parts[i], reroute_record(b, i, key),
                        b.source[i], int(b.v.received[i])))
                    continue
                pi = self.person(key)
                origin, at = _origin(b.source[i])
                if at <= self.states[pi].marks.get(origin, -1):
                    continue  # redelivered (or re-routed again) after a crash: decided
                self.states[pi].marks[origin] = at
                idx.append(i)
                pidx.append(pi)
            self.keep.append((b, typ, np.asarray(idx, dtype=np.int64), pidx))

    def involve_waiting(self, stream_time: int, txn: InBatch | None, final: bool) -> None:
        """Add the people whose waits end in this call (or all, ``final``); their
        waiting records go first, by arrival."""
        new_st = stream_time
        if txn is not None and txn.v.n:
            r = txn.v.received[(txn.v.received != NO_TIME) & ~txn.v.too_late]
            if len(r):
                new_st = max(new_st, int(r.max()))
        for key, due in list(self.store.parked.items()):
            if due < new_st or final:
                self.person(key)
        for pi, st in enumerate(self.states):
            for pk in st.parked:
                self.pre.append((pi, pk))
        self.pre.sort(key=lambda x: x[1].arrival)

    def marshal(self) -> None:
        """The kernel's records (waiting ones first), people and registry entries."""
        n_pre = len(self.pre)
        n = n_pre + sum(len(k[2]) for k in self.keep)
        recs = self.recs = new_records(n)
        code, want_entry = self.code, self.want_entry
        for j, (pi, pk) in enumerate(self.pre):
            opc = self.d.registry.code(pk.operator_id)
            recs.typ[j] = kernel.TRANSACTION
            recs.person[j] = pi
            recs.op[j] = opc
            recs.kind[j] = pk.kind
            recs.amount[j] = pk.amount
            recs.at[j] = pk.at
            recs.day[j] = pk.day
            recs.txn[j] = code(pk.txn_id)
            recs.orig[j] = code(pk.orig)
            recs.received[j] = pk.received
            recs.preparked[j] = 1
            recs.lane[j] = self.d.lane(pk.source)
            want_entry(pi, opc, pk.txn_id, j)
            want_entry(pi, opc, pk.orig, -1)
        j = n_pre
        for b, typ, rows, pidx in self.keep:
            m = len(rows)
            v = b.v
            fill_records(recs, slice(j, j + m), typ, v, rows, np.asarray(pidx, np.int32))
            src, lane = b.source, self.d.lane
            recs.lane[j:j + m] = [lane(src[i]) for i in rows.tolist()]
            if typ == kernel.TRANSACTION:
                tids = v.txn_id.to_pylist()
                oids = v.original_txn_id.to_pylist()
                for q, i in enumerate(rows.tolist()):
                    if pidx[q] < 0:
                        continue
                    t, o = tids[i], oids[i]
                    recs.txn[j + q] = code(t)
                    recs.orig[j + q] = code(o)
                    opc = int(v.op[i])
                    want_entry(pidx[q], opc, t, -1)
                    want_entry(pidx[q], opc, o, -1)
            self.spans.append((b, j, rows))
            j += m
        # whole columns from Python lists: element-wise numpy stores cost ~100 ns each
        people = self.people_a = new_people(len(self.plist))
        states, np_ = self.states, len(self.states)
        if np_:
            rcode = self.d.registry.code
            enrolled = [st.enr_op is not None for st in states]
            people.op[:np_] = [rcode(st.enr_op) if st.enr_op is not None else -1
                               for st in states]
            people.kind[:np_] = [st.enr_kind if e else -1
                                 for st, e in zip(states, enrolled, strict=True)]
            people.day[:np_] = [st.enr_day if e else 0
                                for st, e in zip(states, enrolled, strict=True)]
            people.c[:np_] = [st.c for st in states]
            people.r[:np_] = [st.r for st in states]
            people.n[:np_] = [len(st.txns) for st in states]
        self.n0 = n0 = len(self.e_rows)
        reg = self.reg = new_entries(n0 + n)
        if n0:
            loaded = self.e_rows
            reg.person[:n0] = [r[0] for r in loaded]
            reg.op[:n0] = [r[1] for r in loaded]
            reg.txn[:n0] = [code(r[2]) for r in loaded]
            reg.kind[:n0] = [r[3].kind for r in loaded]
            reg.amount[:n0] = [r[3].amount for r in loaded]
            reg.at[:n0] = [r[3].at for r in loaded]
            reg.orig[:n0] = [code(r[3].orig) for r in loaded]
            reg.status[:n0] = [r[3].status for r in loaded]
            reg.refunded[:n0] = [r[3].refunded for r in loaded]
            reg.rec[:n0] = [r[4] for r in loaded]
        ts = recs.received
        recs.deadline[:] = np.where(ts == NO_TIME, NO_TIME, ts + self.d.campaign.park_timeout)
        # where each kernel record came from: (span, row) of a batch, or -1 (waiting)
        self.span_of = np.full(n, -1, np.int64)
        self.row_of = np.full(n, -1, np.int64)
        for si, (_b, start, rows) in enumerate(self.spans):
            self.span_of[start:start + len(rows)] = si
            self.row_of[start:start + len(rows)] = rows
        self.cols = [{"mykey_id": b.v.mykey_id.to_pylist(),
                      "operator_id": b.v.operator_id.to_pylist(),
                      "txn_id": b.v.txn_id.to_pylist()} for b, _s, _r in self.spans]

    def run_kernel(self, terms: kernel.Terms, lanes: np.ndarray, follows: np.ndarray) -> None:
        self.out = new_decided(len(self.recs.typ))
        n_entries, _ = kernel.decide(
            self.people_a, self.recs, self.reg, self.n0, max(len(self.codes), 1), terms,
            lanes, follows, self.out)
        self.n_entries = int(n_entries)
        meta, ops = self.store.meta, self.d.op_ids
        for code in np.flatnonzero(lanes != NO_TIME).tolist():
            meta.lanes[ops[code] if code < len(ops) else ""] = int(lanes[code])
        meta.stream_time = max(meta.stream_time, int(lanes.max()))

    def outcomes(self) -> None:
        """Grants and rejections, in decision order."""
        res, recs, out = self.res, self.recs, self.out
        n_pre = len(self.pre)
        order = np.argsort(np.where(out.reason == kernel.PARKED, np.iinfo(np.int64).max,
                                    out.seq), kind="stable")
        outcomes: dict[str, list[str]] = {"enrollment": [], "transaction": []}
        reason_l = out.reason.tolist()
        decided = [j for j in order.tolist() if reason_l[j] != kernel.PARKED]
        span_l = self.span_of.tolist()
        row_l = self.row_of.tolist()
        typ_l = recs.typ.tolist()
        accepted = [j for j in decided if reason_l[j] == 0 and typ_l[j] == kernel.TRANSACTION]
        occurred = rfc3339_utc(recs.at[accepted]) if accepted else []
        # the grants' columns, in decision order (accepted is in it too)
        g_keys: list[str] = []
        g_ops: list[str] = []
        g_tids: list[str] = []
        g_srcs: list[str] = []
        for j in decided:
            r = reason_l[j]
            if j < n_pre:
                pi, pk = self.pre[j]
                key, opid, tid, src = self.plist[pi], pk.operator_id, pk.txn_id, pk.source
                rtype = "transaction"
                detail = None
            else:
                si = span_l[j]
                b = self.spans[si][0]
                i = row_l[j]
                c = self.cols[si]
                key, opid, tid, src = c["mykey_id"][i], c["operator_id"][i], c["txn_id"][i], \
                    b.source[i]
                rtype = b.v.record_type
                detail = b.v.detail[i]
            outcomes[rtype].append("accepted" if r == 0 else REASON_NAMES[r])
            kb = key.encode() if key is not None else None
            if r == 0 and rtype == "transaction":
                g_keys.append(key)
                g_ops.append(opid)
                g_tids.append(tid)
                g_srcs.append(src)
            elif r != 0:
                res.rejections.append((kb, {
                    "record_type": rtype, "reason": REASON_NAMES[r],
                    "detail": detail if detail is not None else STATEFUL_DETAIL[Reason(r)],
                    "txn_id": tid if rtype == "transaction" else None,
                    "operator_id": opid, "mykey_id": key, "source": src}))
        res.outcomes = outcomes
        if accepted:
            pts_a = out.points[accepted]
            res.points += int(pts_a[pts_a > 0].sum())
            res.clawed_back -= int(pts_a[pts_a < 0].sum())
            values = self.d.grant_json.encode(
                g_keys, g_ops, g_tids, recs.kind[accepted].tolist(),
                recs.amount[accepted].tolist(), pts_a.tolist(), out.cum[accepted].tolist(),
                occurred, g_srcs)
            res.grant_messages = [(k.encode(), v, s)
                                  for k, v, s in zip(g_keys, values, g_srcs, strict=True)]

    def new_state(self) -> None:
        """Every involved person's new state, staged as blobs with the meta."""
        people, reg, recs, out = self.people_a, self.reg, self.recs, self.out
        states, op_ids = self.states, self.d.op_ids
        strs = list(self.codes)
        np_ = len(states)
        for st, o, k, d, c, r in zip(states, people.op[:np_].tolist(),
                                     people.kind[:np_].tolist(), people.day[:np_].tolist(),
                                     people.c[:np_].tolist(), people.r[:np_].tolist(),
                                     strict=True):
            st.enr_op = op_ids[o] if o >= 0 else None
            st.enr_kind = k
            st.enr_day = d
            st.c = c
            st.r = r
            st.parked = []
        # of the entries loaded from the state only the status and refunded sum can
        # change, and only a changed one is encoded again
        n0, ne = self.n0, self.n_entries
        for (pi, o, t, ent, _r), se, re_ in zip(self.e_rows, reg.status[:n0].tolist(),
                                               reg.refunded[:n0].tolist(), strict=True):
            if ent.status != se or ent.refunded != re_:
                ent.status = se
                ent.refunded = re_
                states[pi].txns[txn_key(op_ids[o], t)] = encode_entry(ent)
        for pe, oe, te, ke, ae, ate, ore, se, re_ in zip(
                reg.person[n0:ne].tolist(), reg.op[n0:ne].tolist(), reg.txn[n0:ne].tolist(),
                reg.kind[n0:ne].tolist(), reg.amount[n0:ne].tolist(), reg.at[n0:ne].tolist(),
                reg.orig[n0:ne].tolist(), reg.status[n0:ne].tolist(),
                reg.refunded[n0:ne].tolist(), strict=True):
            states[pe].txns[txn_key(op_ids[oe], strs[te])] = encode_entry(TxnEntry(
                ke, ae, ate, strs[ore] if ore >= 0 else None, se, re_))
        n_pre = len(self.pre)
        for j in np.flatnonzero(out.reason == kernel.PARKED).tolist():
            pi = int(recs.person[j])
            if j < n_pre:
                pk = self.pre[j][1]
            else:
                si = int(self.span_of[j])
                b = self.spans[si][0]
                i = int(self.row_of[j])
                c = self.cols[si]
                o = int(recs.orig[j])
                pk = Parked(int(b.arrival[i]), int(recs.kind[j]), c["operator_id"][i],
                            c["txn_id"][i], strs[o] if o >= 0 else None, int(recs.amount[j]),
                            int(recs.at[j]), int(recs.day[j]), int(recs.received[j]),
                            b.source[i])
            states[pi].parked.append(pk)
        store, res = self.store, self.res
        timeout = self.d.campaign.park_timeout
        blobs = res.blobs
        for pi, st in enumerate(states):
            key = self.plist[pi]
            if st.parked:
                first = min(p.received for p in st.parked)
                if store.parked.get(key) != first + timeout:
                    blobs[WAIT_PREFIX + key] = encode(first)
                store.parked[key] = first + timeout
            elif store.parked.pop(key, None) is not None:
                blobs[WAIT_PREFIX + key] = None
            blobs[key] = encode(st)
        res.blobs[META_KEY] = encode(store.meta)
        res.parked = len(store.parked)
