"""EngineMetrics as Prometheus scrapes it: names, label sets, values."""

from __future__ import annotations

import logging
import urllib.request

import numpy as np
import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import engine.metrics as metrics_module
from engine.metrics import (
    BAD_MESSAGE_KINDS,
    LATENCY_BUCKETS,
    METRIC_NAMES,
    EngineMetrics,
    Laps,
)
from engine.ops.logs import quiet
from engine.rules.model import ENROLLMENT_REASONS, TRANSACTION_REASONS, Reason

# 12 digits with a valid check digit (computed by the rule on the privacy section)
INDIVIDUAL_NUMBER = "123456789018"


def scrape(m: EngineMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(m.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: EngineMetrics, name: str, **labels: str) -> float:
    return scrape(m)[(name, frozenset(labels.items()))]


def exposed_names(m: EngineMetrics) -> set[str]:
    text = generate_latest(m.registry).decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}


def test_check_digit_of_test_number() -> None:
    digits = [int(c) for c in INDIVIDUAL_NUMBER[:11]][::-1]
    r = sum(p * (n + 1 if n <= 6 else n - 5) for n, p in enumerate(digits, start=1)) % 11
    assert int(INDIVIDUAL_NUMBER[11]) == (0 if r <= 1 else 11 - r)


def test_exactly_the_documented_metrics() -> None:
    m = EngineMetrics()
    m.observe_batch(1, 0.1)
    m.observe_points([1])
    assert exposed_names(m) == set(METRIC_NAMES)  # in particular, no "_created" series
    assert len(METRIC_NAMES) == 22


def test_fresh_registry_per_instance_and_given_registry_used() -> None:
    a, b = EngineMetrics(), EngineMetrics()
    assert a.registry is not b.registry
    a.observe_records("mynapoint.transactions", "transaction", 5)
    assert ("mynapoint_records_total",
            frozenset({("topic", "mynapoint.transactions"), ("record_type", "transaction")})
            ) not in scrape(b)
    reg = CollectorRegistry()
    c = EngineMetrics(reg)
    assert c.registry is reg
    with pytest.raises(ValueError):  # the same names twice on one registry
        EngineMetrics(reg)


def test_records_counter() -> None:
    m = EngineMetrics()
    m.observe_records("mynapoint.transactions", "transaction", 1000)
    m.observe_records("mynapoint.transactions", "transaction", 24)
    m.observe_records("mynapoint.enrollments", "enrollment", 7)
    m.observe_records("mynapoint.enrollments", "enrollment", 0)
    assert value(m, "mynapoint_records_total", topic="mynapoint.transactions",
                 record_type="transaction") == 1024
    assert value(m, "mynapoint_records_total", topic="mynapoint.enrollments",
                 record_type="enrollment") == 7


def test_outcome_series_exist_at_zero_from_the_start() -> None:
    s = scrape(EngineMetrics())
    for record_type, reasons in (("transaction", TRANSACTION_REASONS),
                                 ("enrollment", ENROLLMENT_REASONS)):
        for outcome in ["accepted", *(r.name for r in reasons)]:
            key = ("mynapoint_outcomes_total",
                   frozenset({("record_type", record_type), ("outcome", outcome)}))
            assert s[key] == 0
    for kind in BAD_MESSAGE_KINDS:
        assert s[("mynapoint_bad_messages_total", frozenset({("kind", kind)}))] == 0


def test_observe_outcomes_in_bulk() -> None:
    m = EngineMetrics()
    m.observe_outcomes("transaction", ["accepted"] * 90 + ["NOT_ENROLLED"] * 7
                       + ["MALFORMED"] * 3)
    m.observe_outcomes("transaction", ("accepted", "LATE"))
    m.observe_outcomes("enrollment", iter(["accepted", "ALREADY_ENROLLED"]))
    m.observe_outcomes("enrollment", [])
    assert value(m, "mynapoint_outcomes_total", record_type="transaction",
                 outcome="accepted") == 91
    assert value(m, "mynapoint_outcomes_total", record_type="transaction",
                 outcome="NOT_ENROLLED") == 7
    assert value(m, "mynapoint_outcomes_total", record_type="transaction",
                 outcome="MALFORMED") == 3
    assert value(m, "mynapoint_outcomes_total", record_type="transaction", outcome="LATE") == 1
    assert value(m, "mynapoint_outcomes_total", record_type="enrollment",
                 outcome="ALREADY_ENROLLED") == 1


def test_observe_reason_codes_matches_names() -> None:
    m = EngineMetrics()
    codes = np.array([0, 0, 0, Reason.NOT_ENROLLED, Reason.REFUND_EXCEEDS_ORIGINAL, 0],
                     dtype=np.int8)
    m.observe_reason_codes("transaction", codes)
    m.observe_reason_codes("transaction", [int(Reason.NOT_ENROLLED)])
    m.observe_reason_codes("transaction", np.array([], dtype=np.int64))
    assert value(m, "mynapoint_outcomes_total", record_type="transaction",
                 outcome="accepted") == 4
    assert value(m, "mynapoint_outcomes_total", record_type="transaction",
                 outcome="NOT_ENROLLED") == 2
    assert value(m, "mynapoint_outcomes_total", record_type="transaction",
                 outcome="REFUND_EXCEEDS_ORIGINAL") == 1
    with pytest.raises(ValueError):
        m.observe_reason_codes("transaction", [99])
    with pytest.raises(ValueError):
        m.observe_reason_codes("transaction", [-1])


def test_points_split_into_granted_and_clawed_back() -> None:
    m = EngineMetrics()
    m.observe_points([250, 0, 1250, -100, 5])
    m.observe_points(np.array([-5, 10], dtype=np.int64))
    m.observe_points([])
    assert value(m, "mynapoint_points_granted_total") == 1515
    assert value(m, "mynapoint_points_clawed_back_total") == 105


def test_batch_histograms() -> None:
    m = EngineMetrics()
    m.observe_batch(20_000, 0.180)
    m.observe_batch(3, 0.004)
    assert value(m, "mynapoint_batch_records_count") == 2
    assert value(m, "mynapoint_batch_records_sum") == 20_003
    assert value(m, "mynapoint_batch_records_bucket", le="10.0") == 1
    assert value(m, "mynapoint_batch_records_bucket", le="20000.0") == 2
    assert value(m, "mynapoint_batch_seconds_count") == 2
    assert value(m, "mynapoint_batch_seconds_sum") == pytest.approx(0.184)
    assert value(m, "mynapoint_batch_seconds_bucket", le="0.005") == 1
    assert value(m, "mynapoint_batch_seconds_bucket", le="0.25") == 2


def test_batch_phases_observed_by_name_and_closed() -> None:
    m = EngineMetrics()
    m.observe_batch(10, 0.030, {"decode": 0.004, "decide": 0.02, "outputs": 0.006})
    m.observe_batch(10, 0.003, {"decide": 0.003})
    assert value(m, "mynapoint_batch_phase_seconds_count", phase="decide") == 2
    assert value(m, "mynapoint_batch_phase_seconds_sum", phase="decide") == pytest.approx(0.023)
    assert value(m, "mynapoint_batch_phase_seconds_bucket", phase="decide", le="0.005") == 1
    assert value(m, "mynapoint_batch_phase_seconds_count", phase="decode") == 1
    assert value(m, "mynapoint_batch_phase_seconds_count", phase="state") == 0  # from the start
    with pytest.raises(ValueError, match="unknown batch phase"):
        m.observe_batch(1, 0.1, {"a record value": 0.1})  # never a label from data


def test_laps_book_each_interval_to_its_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 10.5, 10.75, 11.0, 12.0])
    monkeypatch.setattr(metrics_module.time, "perf_counter", lambda: next(clock))
    laps = Laps()                       # 10.0
    laps.lap("prepare")                 # 10.5
    laps.lap("decide")                  # 10.75
    laps.lap("decide")                  # 11.0: a phase met twice adds up
    assert laps.phases == {"prepare": 0.5, "decide": 0.5}
    assert laps.elapsed() == 2.0        # 12.0


def test_only_live_records_count_towards_the_latency_objective() -> None:
    """docs/SLO.md: a record appended within the last hour counts; one replayed from
    the archive (stamped in 2020) or stamped ahead of this clock does not."""
    m = EngineMetrics()
    now_ms = 1_800_000_000_000.0
    m.observe_live_latencies(now_ms, [int(now_ms) - 200, int(now_ms) - 3_599_000,
                                      1_600_000_000_000,          # 2020: a replay
                                      int(now_ms) - 3_600_000,    # an hour: not live
                                      int(now_ms) + 5_000])       # ahead of this clock
    m.observe_live_latencies(now_ms, [])
    s = scrape(m)
    assert s[("mynapoint_outcome_latency_seconds_count", frozenset())] == 2
    assert s[("mynapoint_outcome_latency_seconds_sum", frozenset())] == pytest.approx(3599.2)


def test_outcome_latency_bulk_histogram() -> None:
    m = EngineMetrics()
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 10.0
    # exactly on a bound counts in that bound's bucket ("le"); negatives count as 0
    m.observe_outcome_latencies([0.001, 0.0005, 0.2, 3.0, 60.0, -0.5, float("nan")])
    m.observe_outcome_latencies(np.array([0.001, 0.002]))
    m.observe_outcome_latencies([])
    s = scrape(m)

    def bucket(le: str) -> float:
        return s[("mynapoint_outcome_latency_seconds_bucket", frozenset({("le", le)}))]

    assert bucket("0.001") == 4     # 0.001, 0.0005, -0.5 (as 0), 0.001
    assert bucket("0.0025") == 5    # + 0.002
    assert bucket("0.25") == 6      # + 0.2
    assert bucket("5.0") == 7       # + 3.0
    assert bucket("10.0") == 7
    assert bucket("+Inf") == 8      # + 60.0; NaN is not counted
    assert s[("mynapoint_outcome_latency_seconds_count", frozenset())] == 8
    assert s[("mynapoint_outcome_latency_seconds_sum", frozenset())] == pytest.approx(
        0.001 + 0.0005 + 0.2 + 3.0 + 60.0 + 0.001 + 0.002)
    buckets = [k for k in s if k[0] == "mynapoint_outcome_latency_seconds_bucket"]
    assert len(buckets) == len(LATENCY_BUCKETS) + 1


def test_partition_gauges_and_forgetting_revoked_partitions() -> None:
    m = EngineMetrics()
    m.set_parked(0, 12)
    m.set_parked(3, 4)
    m.set_stream_time(0, 1_600_000_000.5)
    m.set_stream_time(np.int32(3), 1_600_000_100)  # type: ignore[arg-type]
    m.set_consumer_lag("mynapoint.transactions", 0, 500)
    m.set_consumer_lag("mynapoint.enrollments", 0, 2)
    m.set_consumer_lag("mynapoint.transactions", 3, 0)
    m.set_last_batch(0, 1_700_000_000.25)
    m.set_last_batch(3, 1_700_000_001)
    assert value(m, "mynapoint_parked_records", partition="0") == 12
    assert value(m, "mynapoint_stream_time_seconds", partition="0") == 1_600_000_000.5
    assert value(m, "mynapoint_stream_time_seconds", partition="3") == 1_600_000_100
    assert value(m, "mynapoint_last_batch_timestamp_seconds", partition="0") == 1_700_000_000.25
    assert value(m, "mynapoint_consumer_lag", topic="mynapoint.transactions",
                 partition="0") == 500
    m.forget_partitions([0, 7])
    s = scrape(m)
    remaining = {(name, dict(labels).get("partition")) for name, labels in s
                 if name in {"mynapoint_parked_records", "mynapoint_stream_time_seconds",
                             "mynapoint_consumer_lag",
                             "mynapoint_last_batch_timestamp_seconds"}}
    assert remaining == {("mynapoint_parked_records", "3"),
                         ("mynapoint_stream_time_seconds", "3"),
                         ("mynapoint_consumer_lag", "3"),
                         ("mynapoint_last_batch_timestamp_seconds", "3")}


def test_worker_gauges_and_bad_messages() -> None:
    m = EngineMetrics()
    assert value(m, "mynapoint_worker_up") == 0
    m.set_up(True)
    m.set_assigned_partitions(3)
    m.bad_message("invalid_json")
    m.bad_message("bad_batch", 2)
    assert value(m, "mynapoint_worker_up") == 1
    assert value(m, "mynapoint_assigned_partitions") == 3
    assert value(m, "mynapoint_bad_messages_total", kind="invalid_json") == 1
    assert value(m, "mynapoint_bad_messages_total", kind="bad_batch") == 2
    m.set_up(False)
    assert value(m, "mynapoint_worker_up") == 0


@pytest.mark.parametrize("call", [
    lambda m: m.observe_outcomes("transaction", [INDIVIDUAL_NUMBER]),
    lambda m: m.observe_outcomes("transaction", ["accepted", "OK"]),
    lambda m: m.observe_outcomes(INDIVIDUAL_NUMBER, ["accepted"]),
    lambda m: m.observe_records("mynapoint.transactions", INDIVIDUAL_NUMBER, 1),
    lambda m: m.observe_records("topic with/" + INDIVIDUAL_NUMBER, "transaction", 1),
    lambda m: m.bad_message(INDIVIDUAL_NUMBER),
    lambda m: m.set_parked(INDIVIDUAL_NUMBER, 1),
    lambda m: m.set_parked(True, 1),
    lambda m: m.set_parked(-1, 1),
    lambda m: m.set_stream_time("0", 1.0),
    lambda m: m.set_consumer_lag("bad topic", 0, 1),
    lambda m: m.set_last_batch(INDIVIDUAL_NUMBER, 1.0),
    lambda m: m.observe_operator_mismatches([INDIVIDUAL_NUMBER]),
    lambda m: m.known_operators(["PayPay"]),
])
def test_label_values_come_only_from_closed_sets(call) -> None:
    m = EngineMetrics()
    with pytest.raises(ValueError):
        call(m)
    assert INDIVIDUAL_NUMBER not in generate_latest(m.registry).decode()


def test_serve_on_loopback() -> None:
    m = EngineMetrics()
    m.set_up(True)
    server = m.serve(0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert "mynapoint_worker_up 1.0" in body
    finally:
        server.shutdown()
        server.server_close()


def test_serve_address_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYNAPOINT_METRICS_ADDR", "127.0.0.2")
    m = EngineMetrics()
    server = m.serve(0)
    try:
        assert server.server_address[0] == "127.0.0.2"
    finally:
        server.shutdown()
        server.server_close()
    explicit = m.serve(0, addr="127.0.0.1")  # an explicit address wins
    try:
        assert explicit.server_address[0] == "127.0.0.1"
    finally:
        explicit.shutdown()
        explicit.server_close()


def test_operator_mismatches_by_operator_from_zero() -> None:
    m = EngineMetrics()
    m.known_operators(["paypay", "aupay"])
    m.observe_operator_mismatches(["paypay", "paypay"])
    assert value(m, "mynapoint_operator_mismatches_total", operator="paypay") == 2
    assert value(m, "mynapoint_operator_mismatches_total", operator="aupay") == 0


def test_refusals_by_the_brokers_security_are_counted_by_kind() -> None:
    m = EngineMetrics()
    for e in (TopicAuthorizationFailedError("t"), GroupAuthorizationFailedError("g"),
              TopicAuthorizationFailedError("t"), KafkaConnectionError("down"),
              ValueError("no Kafka error")):
        m.kafka_error(e)
    assert value(m, "mynapoint_kafka_authorization_denials_total", resource="topic") == 2
    assert value(m, "mynapoint_kafka_authorization_denials_total", resource="group") == 1
    assert value(m, "mynapoint_kafka_authorization_denials_total", resource="cluster") == 0
    assert value(m, "mynapoint_kafka_authentication_failures_total") == 0
    handler = m.count_client_errors()
    log = logging.getLogger("aiokafka.client")
    try:
        # as aiokafka reports a refused SASL handshake, also while its output is muted
        with quiet("aiokafka"):
            log.error('Unable connect to "%s:%s": %s', "127.0.0.1", 9092,
                      SaslAuthenticationFailed("wrong password"))
        log.error("Unable connect to node with id %s: %s", 1, KafkaConnectionError("down"))
    finally:
        logging.getLogger("aiokafka").removeHandler(handler)
    log.error('Unable connect to "%s:%s": %s', "h", 1, SaslAuthenticationFailed("after"))
    assert value(m, "mynapoint_kafka_authentication_failures_total") == 1
