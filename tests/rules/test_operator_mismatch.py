"""OPERATOR_MISMATCH (SETTLEMENT_RULES.md v2, enrollment check 3, transaction check 4):
examples of its place in the order of checks, and properties against the reference
model, including that a forged record changes nobody's state."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.config import DEFAULT_CAMPAIGN, DEFAULT_REGISTRY
from engine.rules.settlement import settle_records
from tests import reference_model
from tests.rules.test_properties import OP_IDS, SETTINGS, Scenario, fields, merge, scenarios
from tests.rules.test_reasons import PII, enr, txn


def both(es: list, ts: list, es_src: list, ts_src: list) -> list[str | None]:
    """Reasons from the engine, after checking the reference model agrees."""
    got = settle_records(es, ts, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY, es_src, ts_src)
    ref = reference_model.settle_records(es, ts, DEFAULT_CAMPAIGN, DEFAULT_REGISTRY,
                                         es_src, ts_src)
    assert [fields(o) for o in got] == [fields(r) for r in ref]
    return [o.reason for o in got]


def test_a_record_from_another_operator_is_rejected_and_detail_names_the_source() -> None:
    got = settle_records([enr(op="paypay")], [txn(op="paypay")], DEFAULT_CAMPAIGN,
                         DEFAULT_REGISTRY, ["aupay"], ["aupay"])
    assert [o.reason for o in got] == ["OPERATOR_MISMATCH", "OPERATOR_MISMATCH"]
    assert got[1].detail == "field 'operator_id' is not 'aupay', the operator the record came from"


def test_unknown_source_skips_the_check_and_a_matching_one_passes() -> None:
    assert both([enr(op="paypay")], [txn(op="paypay")], [None], ["paypay"]) == [None, None]
    assert both([enr(op="paypay")], [txn(op="paypay")], ["paypay"], [None]) == [None, None]


def test_order_of_checks() -> None:
    ts = [txn(op="paypay", note=PII),            # 1 before 4
          txn(op="paypay", kind="gift"),          # 2 before 4
          txn(op="paypay", amount=0),             # 3 before 4
          txn(op="no-such-pay"),                  # 4 before UNKNOWN_OPERATOR
          txn(op="no-such-pay")]                  # ... which a matching source reaches
    assert both([], ts, [], ["aupay"] * 4 + ["no-such-pay"]) == [
        "PERSONAL_NUMBER_FORBIDDEN", "MALFORMED", "INVALID_AMOUNT", "OPERATOR_MISMATCH",
        "UNKNOWN_OPERATOR"]
    es = [enr(op="paypay", note=PII), enr(op="paypay", applied_at="yesterday"),
          enr(op="nope")]
    assert both(es, [], ["aupay"] * 3, []) == [
        "PERSONAL_NUMBER_FORBIDDEN", "MALFORMED", "OPERATOR_MISMATCH"]


def test_a_forged_enrollment_does_not_lock_the_persons_choice() -> None:
    # B's customer forged on A's input: the genuine B application is still accepted,
    # and B's transaction earns
    es = [enr(op="paypay"), enr(op="paypay")]
    ts = [txn(op="paypay")]
    assert both(es, ts, ["aupay", "paypay"], ["paypay"]) == ["OPERATOR_MISMATCH", None, None]


def with_sources(data: st.DataObject, s: Scenario) -> tuple[list, list, list, list]:
    """The scenario's records, each with a drawn source: none, its own operator (the
    honest case) or any operator (a forgery, mostly)."""
    es, _ = merge(s.enrollments, s.enroll_order)
    ts, _ = merge(s.transactions, s.txn_order)

    def source(rec: object) -> str | None:
        own = rec.get("operator_id") if isinstance(rec, dict) else None
        honest = own if isinstance(own, str) else None
        return data.draw(st.sampled_from([None, honest, honest, *OP_IDS]))

    return es, ts, [source(r) for r in es], [source(r) for r in ts]


@SETTINGS
@given(scenarios(), st.data())
def test_engine_agrees_with_reference_with_sources(s: Scenario, data: st.DataObject) -> None:
    es, ts, e_src, t_src = with_sources(data, s)
    out = settle_records(es, ts, s.campaign, s.registry, e_src, t_src)
    ref = reference_model.settle_records(es, ts, s.campaign, s.registry, e_src, t_src)
    assert [(o.record_type, o.index, *fields(o), o.seq) for o in out] == [
        (r.record_type, r.index, *fields(r), r.seq) for r in ref]


@SETTINGS
@given(scenarios(), st.data())
def test_forged_records_change_nothing_else(s: Scenario, data: st.DataObject) -> None:
    """Every other record is decided as if the OPERATOR_MISMATCH ones never existed."""
    es, ts, e_src, t_src = with_sources(data, s)
    out = settle_records(es, ts, s.campaign, s.registry, e_src, t_src)
    forged = {(o.record_type, o.index) for o in out if o.reason == "OPERATOR_MISMATCH"}
    keep_e = [i for i in range(len(es)) if ("enrollment", i) not in forged]
    keep_t = [i for i in range(len(ts)) if ("transaction", i) not in forged]
    without = settle_records([es[i] for i in keep_e], [ts[i] for i in keep_t], s.campaign,
                             s.registry, [e_src[i] for i in keep_e], [t_src[i] for i in keep_t])
    rest = [o for o in out if (o.record_type, o.index) not in forged]
    assert [fields(o) for o in rest] == [fields(o) for o in without]
    assert all(o.reason != "OPERATOR_MISMATCH" for o in without)
