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
from engine.rules.model import KIND_NAMES, NO_TIME, REASON_NAMES, Campaign, Reason, Registry
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
            r = txn.v.received[(txn.v.received != NO_TIME) & ~txn.v.flag_a]
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
        typ_a = np.zeros(n, np.int8)
        reason = np.zeros(n, np.int8)
        pers = np.full(n, -1, np.int32)
        op = np.full(n, -1, np.int32)
        kind = np.zeros(n, np.int8)
        amount = np.zeros(n, np.int64)
        at = np.zeros(n, np.int64)
        day = np.zeros(n, np.int32)
        txc = np.full(n, -1, np.int64)
        orc = np.full(n, -1, np.int64)
        ts = np.full(n, NO_TIME, np.int64)
        fa = np.zeros(n, np.bool_)
        fb = np.zeros(n, np.bool_)
        fc = np.zeros(n, np.bool_)
        preparked = np.zeros(n, np.int8)
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
            typ_a[j] = kernel.TRANSACTION
            pers[j] = pi
            op[j] = opc
            kind[j] = pk.kind
            amount[j] = pk.amount
            at[j] = pk.at
            day[j] = pk.day
            txc[j] = code(pk.txn_id)
            orc[j] = code(pk.orig)
            ts[j] = pk.received
            preparked[j] = 1
            want_entry(pi, opc, pk.txn_id, j)
            want_entry(pi, opc, pk.orig, -1)
        j = n_pre
        spans: list[tuple[InBatch, int, Any]] = []
        for b, typ, idx, pidx in keep:
            m = len(idx)
            sl = slice(j, j + m)
            v = b.v
            typ_a[sl] = typ
            reason[sl] = v.reason[idx]
            pers[sl] = pidx
            op[sl] = v.op[idx]
            kind[sl] = v.kind[idx]
            amount[sl] = v.amount[idx]
            at[sl] = v.at[idx]
            day[sl] = v.day[idx]
            ts[sl] = v.received[idx]
            fa[sl] = v.flag_a[idx]
            fb[sl] = v.flag_b[idx]
            fc[sl] = v.flag_c[idx]
            if typ == kernel.TRANSACTION:
                tids = v.txn_id.to_pylist()
                oids = v.original_txn_id.to_pylist()
                for q, i in enumerate(idx):
                    if pidx[q] < 0:
                        continue
                    t, o = tids[i], oids[i]
                    txc[j + q] = code(t)
                    orc[j + q] = code(o)
                    opc = int(v.op[i])
                    want_entry(pidx[q], opc, t, -1)
                    want_entry(pidx[q], opc, o, -1)
            spans.append((b, j, idx))
            j += m

        # --- per person state and registry arrays
        np_ = max(len(plist), 1)
        p_op = np.full(np_, -1, np.int32)
        p_kind = np.full(np_, -1, np.int8)
        p_day = np.zeros(np_, np.int32)
        p_c = np.zeros(np_, np.int64)
        p_r = np.zeros(np_, np.int64)
        p_n = np.zeros(np_, np.int64)
        for pi, st in enumerate(states):
            if st.enr_op is not None:
                p_op[pi] = self.registry.code(st.enr_op)
                p_kind[pi] = st.enr_kind
                p_day[pi] = st.enr_day
            p_c[pi] = st.c
            p_r[pi] = st.r
            p_n[pi] = len(st.txns)
        n0 = len(e_rows)
        cap_e = n0 + n
        e_person = np.zeros(cap_e, np.int32)
        e_op = np.zeros(cap_e, np.int32)
        e_txn = np.zeros(cap_e, np.int64)
        e_kind = np.zeros(cap_e, np.int8)
        e_amount = np.zeros(cap_e, np.int64)
        e_at = np.zeros(cap_e, np.int64)
        e_orig = np.zeros(cap_e, np.int64)
        e_status = np.zeros(cap_e, np.int8)
        e_refunded = np.zeros(cap_e, np.int64)
        e_rec = np.full(cap_e, -1, np.int64)
        for e, (pi, opc, tid, ent, rec) in enumerate(e_rows):
            e_person[e] = pi
            e_op[e] = opc
            e_txn[e] = code(tid)
            e_kind[e] = ent.kind
            e_amount[e] = ent.amount
            e_at[e] = ent.at
            e_orig[e] = code(ent.orig)
            e_status[e] = ent.status
            e_refunded[e] = ent.refunded
            e_rec[e] = rec
        out_reason = np.zeros(n, np.int8)
        out_points = np.zeros(n, np.int64)
        out_cum = np.zeros(n, np.int64)
        out_seq = np.zeros(n, np.int64)
        deadline = np.where(ts == NO_TIME, NO_TIME, ts + timeout)
        n_entries, st_after, _ = kernel.decide(  # type: ignore[call-arg]
            p_op, p_kind, p_day, p_c, p_r, p_n,
            typ_a, reason, pers, op, kind, amount, at, day, txc, orc, ts, deadline,
            fa, fb, fc, preparked.copy(),
            e_person, e_op, e_txn, e_kind, e_amount, e_at, e_orig, e_status, e_refunded,
            e_rec, n0, max(len(codes), 1),
            camp.rate_percent, camp.cap_points, int(camp.rounding), True, False,
            store.meta.stream_time, camp.person_limit,
            out_reason, out_points, out_cum, out_seq,
        )
        store.meta.stream_time = int(st_after)

        # --- outcomes, in decision order
        strs = list(codes)
        order = np.argsort(np.where(out_reason == kernel.PARKED, np.iinfo(np.int64).max,
                                    out_seq), kind="stable")
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
        reason_l = out_reason.tolist()
        order_l = order.tolist()
        decided = [j for j in order_l if reason_l[j] != kernel.PARKED]
        points_l = out_points.tolist()
        cum_l = out_cum.tolist()
        kind_l = kind.tolist()
        amount_l = amount.tolist()
        span_l = span_of.tolist()
        row_l = row_of.tolist()
        typ_l = typ_a.tolist()
        accepted = [j for j in decided if reason_l[j] == 0 and typ_l[j] == kernel.TRANSACTION]
        occurred = dict(zip(accepted, rfc3339_utc(at[accepted]), strict=True)) if accepted \
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
            st.enr_op = self.op_ids[p_op[pi]] if p_op[pi] >= 0 else None
            st.enr_kind = int(p_kind[pi])
            st.enr_day = int(p_day[pi])
            st.c = int(p_c[pi])
            st.r = int(p_r[pi])
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
                e_person[:ne].tolist(), e_op[:ne].tolist(), e_txn[:ne].tolist(),
                e_kind[:ne].tolist(), e_amount[:ne].tolist(), e_at[:ne].tolist(),
                e_orig[:ne].tolist(), e_status[:ne].tolist(), e_refunded[:ne].tolist(),
                strict=True):
            states[pe].txns[txn_key(op_ids[oe], strs[te])] = TxnEntry(
                ke, ae, ate, strs[ore] if ore >= 0 else None, se, re_)
        for j in np.flatnonzero(out_reason == kernel.PARKED).tolist():
            pi = int(pers[j])
            if j < n_pre:
                pk = pre[j][1]
            else:
                b, _start, _idx = spans[span_of[j]]
                i = int(row_of[j])
                c = cols[int(span_of[j])]
                pk = Parked(int(b.arrival[i]), int(kind[j]), c["operator_id"][i],
                            c["txn_id"][i], strs[orc[j]] if orc[j] >= 0 else None,
                            int(amount[j]), int(at[j]), int(day[j]), int(ts[j]), b.source[i])
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
