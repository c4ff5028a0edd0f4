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

from engine.rules import kernel
from engine.rules.marshal import (
    fill_records,
    new_decided,
    new_entries,
    new_people,
    new_records,
    terms_of,
)
from engine.rules.model import KIND_NAMES, NO_TIME, Campaign, Reason, Registry
from engine.rules.settlement import STATEFUL_DETAIL
from engine.rules.strings import kafka_partitions, rfc3339_utc
from engine.streams.codec_out import format_utc
from engine.streams.decode import SUB_BITS, InBatch
from engine.streams.state import (
    META_KEY,
    Parked,
    PersonState,
    ShardStore,
    TxnEntry,
    encode,
    txn_key,
)

REASON_NAMES = [r.name for r in Reason]


def _origin(source: str) -> tuple[str, int]:
    """("topic/partition", arrival) of an engine-written ``topic/partition/offset[#i]``.

    >>> _origin("m.transactions/3/17#2")
    ('m.transactions/3', 1114114)
    """
    where, _, pos = source.rpartition("/")
    offset, _, index = pos.partition("#")
    return where, (int(offset) << SUB_BITS) | int(index or 0)


@dataclass
class ShardResult:
    grants: list[tuple[bytes | None, dict[str, Any]]] = field(default_factory=list)
    rejections: list[tuple[bytes | None, dict[str, Any]]] = field(default_factory=list)
    reroute: list[tuple[str, int, dict[str, Any], str, int]] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    outcomes: dict[str, list[str]] = field(default_factory=dict)
    points: int = 0
    clawed_back: int = 0
    parked: int = 0


class ShardDecider:
    def __init__(self, campaign: Campaign, registry: Registry, partitions: int) -> None:
        self.campaign = campaign
        self.registry = registry
        self.partitions = partitions
        self.op_ids = [o.id for o in registry.operators]
        self.terms = terms_of(campaign, streaming=True)

    def decide(self, store: ShardStore, partition: int, enr: InBatch | None,
               txn: InBatch | None) -> ShardResult:
        res = ShardResult()
        camp = self.campaign
        timeout = camp.park_timeout
        # --- which records are decided here, and which people they involve
        people: dict[str, int] = {}
        plist: list[str] = []
        states: list[PersonState] = []

        def person(key: str) -> int:
            i = people.get(key)
            if i is None:
                i = len(plist)
                people[key] = i
                plist.append(key)
                states.append(store.get(key))
            return i

        batches = [(b, t) for b, t in ((enr, kernel.ENROLLMENT), (txn, kernel.TRANSACTION))
                   if b is not None and b.v.n]
        keep: list[tuple[InBatch, int, Any, list[int]]] = []
        wm_new: dict[tuple[int, int], int] = {}
        for b, typ in batches:
            keys = b.v.mykey_id.to_pylist()
            parts = kafka_partitions(b.v.mykey_id, self.partitions).tolist()
            reasons = b.v.reason.tolist()
            arrivals = b.arrival.tolist()
            rerouted = b.rerouted.tolist()
            idx: list[int] = []
            pidx: list[int] = []
            for i, key in enumerate(keys):
                if reasons[i] != 0 or key is None:
                    idx.append(i)
                    pidx.append(-1)
                    continue
                if parts[i] != partition:
                    res.reroute.append((b.v.record_type, parts[i],
                                        self._reroute_record(b, i, key), b.source[i],
                                        int(b.v.received[i])))
                    continue
                pi = person(key)
                st = states[pi]
                arr = arrivals[i]
                if rerouted[i]:
                    origin, at_origin = _origin(b.source[i])
                    if at_origin <= st.rerouted.get(origin, -1):
                        continue  # a second copy, re-routed again after a crash
                    st.rerouted[origin] = at_origin
                elif arr <= (st.wm_e if typ == kernel.ENROLLMENT else st.wm_t):
                    continue  # redelivered after a crash; its outcome is already out
                wk = (pi, typ)
                if wm_new.get(wk, -1) < arr:
                    wm_new[wk] = arr
                idx.append(i)
                pidx.append(pi)
            keep.append((b, typ, np.asarray(idx, dtype=np.int64), pidx))

        new_st = store.meta.stream_time
        if txn is not None and txn.v.n:
            r = txn.v.received[(txn.v.received != NO_TIME) & ~txn.v.too_late]
            if len(r):
                new_st = max(new_st, int(r.max()))
        for key, due in list(store.parked.items()):
            if due < new_st:
                person(key)
        # --- waiting records of every involved person go first, by arrival
        pre: list[tuple[int, Parked]] = []
        for pi, st in enumerate(states):
            for pk in st.parked:
                pre.append((pi, pk))
        pre.sort(key=lambda x: x[1].arrival)

        codes: dict[str, int] = {}

        def code(s: str | None) -> int:
            if s is None:
                return -1
            c = codes.get(s)
            if c is None:
                c = codes[s] = len(codes)
            return c

        n_pre = len(pre)
        n = n_pre + sum(len(k[2]) for k in keep)
        recs = new_records(n)
        # prior registry entries the batch can touch
        entries: dict[tuple[int, str], int] = {}
        e_rows: list[tuple[int, int, str, TxnEntry, int]] = []

        def want_entry(pi: int, opc: int, txn_id: str | None, rec: int) -> None:
            if txn_id is None or opc < 0:
                return
            k = txn_key(self.op_ids[opc], txn_id)
            if (pi, k) in entries:
                if rec >= 0:
                    e_rows[entries[(pi, k)]] = (*e_rows[entries[(pi, k)]][:4], rec)
                return
            ent = states[pi].txns.get(k)
            if ent is not None:
                entries[(pi, k)] = len(e_rows)
                e_rows.append((pi, opc, txn_id, ent, rec))

        for j, (pi, pk) in enumerate(pre):
            opc = self.registry.code(pk.operator_id)
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
            want_entry(pi, opc, pk.txn_id, j)
            want_entry(pi, opc, pk.orig, -1)
        j = n_pre
        spans: list[tuple[InBatch, int, Any]] = []
        for b, typ, rows, pidx in keep:
            m = len(rows)
            sl = slice(j, j + m)
            v = b.v
            fill_records(recs, sl, typ, v, rows, np.asarray(pidx, np.int32))
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
            spans.append((b, j, rows))
            j += m

        # --- per person state and registry arrays
        people_a = new_people(len(plist))
        for pi, st in enumerate(states):
            if st.enr_op is not None:
                people_a.op[pi] = self.registry.code(st.enr_op)
                people_a.kind[pi] = st.enr_kind
                people_a.day[pi] = st.enr_day
            people_a.c[pi] = st.c
            people_a.r[pi] = st.r
            people_a.n[pi] = len(st.txns)
        n0 = len(e_rows)
        reg = new_entries(n0 + n)
        for e, (pi, opc, tid, ent, rec) in enumerate(e_rows):
            reg.person[e] = pi
            reg.op[e] = opc
            reg.txn[e] = code(tid)
            reg.kind[e] = ent.kind
            reg.amount[e] = ent.amount
            reg.at[e] = ent.at
            reg.orig[e] = code(ent.orig)
            reg.status[e] = ent.status
            reg.refunded[e] = ent.refunded
            reg.rec[e] = rec
        ts = recs.received
        recs.deadline[:] = np.where(ts == NO_TIME, NO_TIME, ts + timeout)
        out = new_decided(n)
        n_entries, st_after, _ = kernel.decide(
            people_a, recs, reg, n0, max(len(codes), 1), self.terms, store.meta.stream_time,
            out)
        store.meta.stream_time = int(st_after)

        # --- outcomes, in decision order
        strs = list(codes)
        order = np.argsort(np.where(out.reason == kernel.PARKED, np.iinfo(np.int64).max,
                                    out.seq), kind="stable")
        span_of = np.full(n, -1, np.int64)
        row_of = np.full(n, -1, np.int64)
        for si, (_b, start, idx) in enumerate(spans):
            span_of[start:start + len(idx)] = si
            row_of[start:start + len(idx)] = idx
        outcomes: dict[str, list[str]] = {"enrollment": [], "transaction": []}
        cols: dict[int, dict[str, list[Any]]] = {}
        for si, (b, _s, _i) in enumerate(spans):
            cols[si] = {"mykey_id": b.v.mykey_id.to_pylist(),
                        "operator_id": b.v.operator_id.to_pylist(),
                        "txn_id": b.v.txn_id.to_pylist()}
        cap = camp.cap_points
        reason_l = out.reason.tolist()
        order_l = order.tolist()
        decided = [j for j in order_l if reason_l[j] != kernel.PARKED]
        points_l = out.points.tolist()
        cum_l = out.cum.tolist()
        kind_l = recs.kind.tolist()
        amount_l = recs.amount.tolist()
        span_l = span_of.tolist()
        row_l = row_of.tolist()
        typ_l = recs.typ.tolist()
        accepted = [j for j in decided if reason_l[j] == 0 and typ_l[j] == kernel.TRANSACTION]
        occurred = dict(zip(accepted, rfc3339_utc(recs.at[accepted]), strict=True)) if accepted \
            else {}
        for j in decided:
            r = reason_l[j]
            if j < n_pre:
                pi, pk = pre[j]
                key, opid, tid, src = plist[pi], pk.operator_id, pk.txn_id, pk.source
                rtype = "transaction"
                detail = None
            else:
                si = span_l[j]
                b = spans[si][0]
                i = row_l[j]
                c = cols[si]
                key, opid, tid, src = c["mykey_id"][i], c["operator_id"][i], c["txn_id"][i], \
                    b.source[i]
                rtype = b.v.record_type
                detail = b.v.detail[i]
            outcomes[rtype].append("accepted" if r == 0 else REASON_NAMES[r])
            kb = key.encode() if key is not None else None
            if r == 0 and rtype == "transaction":
                pts = points_l[j]
                cum = cum_l[j]
                if pts >= 0:
                    res.points += pts
                else:
                    res.clawed_back -= pts
                res.grants.append((kb, {
                    "grant_id": f"{camp.id}/{opid}/{key}/{tid}", "campaign": camp.id,
                    "mykey_id": key, "operator_id": opid, "txn_id": tid,
                    "kind": KIND_NAMES[kind_l[j]], "amount": amount_l[j], "points": pts,
                    "cumulative_points": cum, "capped": cum == cap,
                    "occurred_at": occurred[j], "source": src}))
            elif r != 0:
                res.rejections.append((kb, {
                    "record_type": rtype, "reason": REASON_NAMES[r],
                    "detail": detail if detail is not None else STATEFUL_DETAIL[Reason(r)],
                    "txn_id": tid if rtype == "transaction" else None,
                    "operator_id": opid, "mykey_id": key, "source": src}))
        res.outcomes = outcomes

        # --- new state of every involved person
        for pi, st in enumerate(states):
            st.enr_op = self.op_ids[people_a.op[pi]] if people_a.op[pi] >= 0 else None
            st.enr_kind = int(people_a.kind[pi])
            st.enr_day = int(people_a.day[pi])
            st.c = int(people_a.c[pi])
            st.r = int(people_a.r[pi])
            st.parked = []
        for (pi, typ), w in wm_new.items():
            st = states[pi]
            if typ == kernel.ENROLLMENT:
                st.wm_e = max(st.wm_e, w)
            else:
                st.wm_t = max(st.wm_t, w)
        ne = int(n_entries)
        op_ids = self.op_ids
        for pe, oe, te, ke, ae, ate, ore, se, re_ in zip(
                reg.person[:ne].tolist(), reg.op[:ne].tolist(), reg.txn[:ne].tolist(),
                reg.kind[:ne].tolist(), reg.amount[:ne].tolist(), reg.at[:ne].tolist(),
                reg.orig[:ne].tolist(), reg.status[:ne].tolist(), reg.refunded[:ne].tolist(),
                strict=True):
            states[pe].txns[txn_key(op_ids[oe], strs[te])] = TxnEntry(
                ke, ae, ate, strs[ore] if ore >= 0 else None, se, re_)
        for j in np.flatnonzero(out.reason == kernel.PARKED).tolist():
            pi = int(recs.person[j])
            if j < n_pre:
                pk = pre[j][1]
            else:
                b, _start, _idx = spans[span_of[j]]
                i = int(row_of[j])
                c = cols[int(span_of[j])]
                o = int(recs.orig[j])
                pk = Parked(int(b.arrival[i]), int(recs.kind[j]), c["operator_id"][i],
                            c["txn_id"][i], strs[o] if o >= 0 else None, int(recs.amount[j]),
                            int(recs.at[j]), int(recs.day[j]), int(recs.received[j]),
                            b.source[i])
            states[pi].parked.append(pk)
        for pi, st in enumerate(states):
            key = plist[pi]
            if st.parked:
                store.parked[key] = min(p.received for p in st.parked) + timeout
            else:
                store.parked.pop(key, None)
            res.blobs[key] = encode(st)
        res.blobs[META_KEY] = encode(store.meta)
        res.parked = len(store.parked)
        return res

    def _reroute_record(self, b: InBatch, i: int, key: str) -> dict[str, Any]:
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
