"""Prometheus metrics of the streaming worker.

Every label value comes from a closed set fixed by the code (record types, reason
names, bad-message kinds) or from configuration (topic names, partition numbers);
none is ever taken from a record. That is the privacy rule for metrics: an
Individual Number, or any other record value, cannot reach a label. Values outside
the closed sets raise ``ValueError`` rather than being exported.

Updates are made per batch, not per record, so that metrics stay off the hot path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections import Counter as _Tally
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.rules.model import ENROLLMENT_REASONS, OPERATOR_ID, TRANSACTION_REASONS, Reason

if TYPE_CHECKING:
    from engine.ops.health import Readiness

METRICS_ADDR_ENV = "MYNAPOINT_METRICS_ADDR"
RECORD_TYPES = ("transaction", "enrollment")
ACCEPTED = "accepted"
OUTCOMES = (ACCEPTED, *(r.name for r in Reason if r is not Reason.OK))
BAD_MESSAGE_KINDS = ("invalid_utf8", "invalid_json", "too_large", "wrong_key", "no_key",
                     "bad_batch")

# A batch's way through the worker, in order (engine.streams.checkpoint for the last
# four): messages merged and held back, decoded, decided, outcomes acknowledged,
# state in the changelog, offsets committed, local checkpoint taken.
BATCH_PHASES = ("prepare", "decode", "decide", "outputs", "state", "commit", "local")

BATCH_RECORDS_BUCKETS = (1, 10, 100, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)
BATCH_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                         10.0, 30.0)
# records appended longer ago than this are not live traffic (docs/SLO.md)
LIVE_WINDOW_SECONDS = 3600
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Kafka's own rule for topic names; anything else cannot be a topic and is refused.
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")
_OUTCOME_SET = frozenset(OUTCOMES)
_REASONS_BY_TYPE = {"transaction": TRANSACTION_REASONS, "enrollment": ENROLLMENT_REASONS}

METRIC_NAMES = (
    "mynapoint_records_total",
    "mynapoint_outcomes_total",
    "mynapoint_points_granted_total",
    "mynapoint_points_clawed_back_total",
    "mynapoint_batch_records",
    "mynapoint_batch_seconds",
    "mynapoint_batch_phase_seconds",
    "mynapoint_batch_deferred_messages_total",
    "mynapoint_outcome_latency_seconds",
    "mynapoint_parked_records",
    "mynapoint_stream_time_seconds",
    "mynapoint_consumer_lag",
    "mynapoint_bad_messages_total",
    "mynapoint_worker_up",
    "mynapoint_assigned_partitions",
    "mynapoint_partition_refused",
    "mynapoint_restore_remaining_records",
    "mynapoint_fenced_records_ignored_total",
    "mynapoint_last_batch_timestamp_seconds",
    "mynapoint_operator_mismatches_total",
    "mynapoint_kafka_authentication_failures_total",
    "mynapoint_kafka_authorization_denials_total",
)
# What a refused request was about (aiokafka's error classes, by what they name)
AUTHORIZATION_RESOURCES = {
    "TopicAuthorizationFailedError": "topic",
    "GroupAuthorizationFailedError": "group",
    "ClusterAuthorizationFailedError": "cluster",
    "TransactionalIdAuthorizationFailed": "transactional_id",
}
AUTHENTICATION_ERRORS = ("SaslAuthenticationFailed", "AuthenticationFailedError")


def _record_type(record_type: str) -> str:
    if record_type not in _REASONS_BY_TYPE:
        raise ValueError(f"record_type must be one of {RECORD_TYPES}")
    return record_type


def _topic(topic: str) -> str:
    if not _TOPIC_RE.match(topic):
        raise ValueError("not a Kafka topic name")
    return topic


class _ClientErrorHandler(logging.Handler):
    def __init__(self, metrics: EngineMetrics) -> None:
        super().__init__(logging.WARNING)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        found = [a for a in (record.args if isinstance(record.args, tuple) else ())
                 if isinstance(a, BaseException)]
        if record.exc_info and record.exc_info[1] is not None:
            found.append(record.exc_info[1])
        for e in found:
            if type(e).__name__ in AUTHENTICATION_ERRORS:
                self.metrics.kafka_error(e)


def _partition(partition: int) -> str:
    # bool is an int subclass; True as a partition is a bug, not partition 1
    if isinstance(partition, bool) or not isinstance(partition, int | np.integer) \
            or partition < 0:
        raise ValueError("partition must be a non-negative integer")
    return str(int(partition))


class Laps:
    """A batch's stopwatch: :meth:`lap` books the time since the previous lap (or
    the start) to a phase of :data:`BATCH_PHASES`."""

    def __init__(self) -> None:
        self.start = self._last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._last
        self._last = now

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class _BulkHistogram(Collector):
    """An unlabelled histogram that takes a whole batch of observations at once.

    ``prometheus_client.Histogram.observe`` takes a lock per value; at tens of
    thousands of records per batch that would cost more than the decisions.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)  # last: +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: Iterable[float] | np.ndarray) -> None:
        arr = np.asarray(values if isinstance(values, np.ndarray) else list(values),
                         dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            return
        # A producer clock ahead of the broker's can make a latency negative; count
        # it as zero so that the sum (and any mean derived from it) stays sane.
        arr = np.maximum(arr, 0.0)
        # "le" buckets: v lands in the first bucket whose bound is >= v
        counts = np.bincount(np.searchsorted(self._bounds, arr, side="left"),
                             minlength=len(self._counts))
        total = float(arr.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def _family(self, with_samples: bool) -> HistogramMetricFamily:
        if not with_samples:
            return HistogramMetricFamily(self.name, self.documentation)
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        buckets = [(_fmt(b), float(c)) for b, c in zip(self._bounds, cumulative[:-1],
                                                      strict=True)]
        buckets.append(("+Inf", float(cumulative[-1])))
        return HistogramMetricFamily(self.name, self.documentation, buckets=buckets,
                                     sum_value=total)

    def describe(self) -> Iterator[Metric]:
        yield self._family(with_samples=False)

    def collect(self) -> Iterator[Metric]:
        yield self._family(with_samples=True)


def _fmt(bound: float) -> str:
    # the same spelling prometheus_client uses for its own bucket bounds
    return repr(float(bound))


class EngineMetrics:
    """The worker's metrics, registered on one registry.

    With no ``registry`` a fresh one is made, so that several instances (tests, two
    workers in one process) never collide on metric names.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The "_created" gauges would double the series count for nothing Prometheus
        # uses; the switch is process-wide, which is right for a worker process.
        disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "mynapoint_records_total", "Input records decoded, by topic and record type.",
            ["topic", "record_type"], registry=r)
        self.outcomes = Counter(
            "mynapoint_outcomes_total",
            'Outcomes emitted: outcome is "accepted" or the rejection reason code.',
            ["record_type", "outcome"], registry=r)
        self.points_granted = Counter(
            "mynapoint_points_granted_total",
            "Points of grants with positive points (net = this - clawed back).", registry=r)
        self.points_clawed_back = Counter(
            "mynapoint_points_clawed_back_total",
            "Points taken back by grants with negative points (refunds), as a positive "
            "number.", registry=r)
        self.batch_records = Histogram(
            "mynapoint_batch_records", "Input records per processed batch (a commit "
            "of earlier batches on its own counts as a batch of 0).",
            buckets=BATCH_RECORDS_BUCKETS, registry=r)
        self.batch_seconds = Histogram(
            "mynapoint_batch_seconds",
            "Time to decide, produce and commit one batch, in seconds (the commit of "
            "the batches since the last one, every 0.1 s, is in the batch that makes it, "
            "or on its own).",
            buckets=BATCH_SECONDS_BUCKETS, registry=r)
        self.batch_phase_seconds = Histogram(
            "mynapoint_batch_phase_seconds",
            "Time of one phase of a batch (prepare, decode, decide, outputs, state, "
            "commit, local), in seconds: where mynapoint_batch_seconds goes.",
            ["phase"], buckets=BATCH_SECONDS_BUCKETS, registry=r)
        # made once (each phase's series exists from the start, at 0): a labels() call
        # per phase per batch cost more than the observation itself
        self._phase_seconds = {p: self.batch_phase_seconds.labels(phase=p)
                               for p in BATCH_PHASES}
        self.deferred_messages = Counter(
            "mynapoint_batch_deferred_messages_total",
            "Input messages fetched by a poll that waited in memory for a later batch "
            "(the batch's byte budget, --max-batch-bytes): a backlog being drained.",
            registry=r)
        self.outcome_latency = _BulkHistogram(
            "mynapoint_outcome_latency_seconds",
            "Time from an input record's append to Kafka until its outcome was produced.",
            LATENCY_BUCKETS)
        r.register(self.outcome_latency)
        self.parked = Gauge(
            "mynapoint_parked_records",
            "Records waiting for the record they depend on, by input partition.",
            ["partition"], registry=r)
        self.stream_time = Gauge(
            "mynapoint_stream_time_seconds",
            "Stream time of an input partition (largest record timestamp seen), Unix "
            "seconds.", ["partition"], registry=r)
        self.consumer_lag = Gauge(
            "mynapoint_consumer_lag",
            "Records between the committed position and the end of the partition.",
            ["topic", "partition"], registry=r)
        self.bad_messages = Counter(
            "mynapoint_bad_messages_total",
            "Input messages that could not be read as published, by kind.",
            ["kind"], registry=r)
        self.worker_up = Gauge(
            "mynapoint_worker_up", "1 while the worker is consuming, 0 otherwise.", registry=r)
        self.assigned_partitions = Gauge(
            "mynapoint_assigned_partitions",
            "Input partitions currently assigned to this worker.", registry=r)
        self.partition_refused = Gauge(
            "mynapoint_partition_refused",
            "1 while the worker refuses to decide an assigned partition because its state "
            "and input no longer belong together (changelog or input topic lost).",
            ["partition"], registry=r)
        self.restore_remaining = Gauge(
            "mynapoint_restore_remaining_records",
            "Changelog records still to read before an assigned partition is restored.",
            ["partition"], registry=r)
        self.fenced_ignored = Counter(
            "mynapoint_fenced_records_ignored_total",
            "Changelog records ignored on restore because a worker wrote them after it "
            "had lost the partition (a zombie).", registry=r)
        self.last_batch = Gauge(
            "mynapoint_last_batch_timestamp_seconds",
            "When this worker last decided a batch of an input partition, Unix seconds.",
            ["partition"], registry=r)
        self.operator_mismatches = Counter(
            "mynapoint_operator_mismatches_total",
            "OPERATOR_MISMATCH rejections (a record naming another operator than the "
            "one whose input topic it arrived on), by that topic's operator.",
            ["operator"], registry=r)
        self.authentication_failures = Counter(
            "mynapoint_kafka_authentication_failures_total",
            "SASL authentications of this process's Kafka clients the broker refused.",
            registry=r)
        self.authorization_denials = Counter(
            "mynapoint_kafka_authorization_denials_total",
            "Kafka requests of this process refused by an ACL, by resource type.",
            ["resource"], registry=r)
        self._operators: set[str] = set()
        self._lag_series: set[tuple[str, str]] = set()
        self._series_lock = threading.Lock()

        # Series that exist from the start read 0 instead of being absent, so that
        # rate() and the alert ratios work from the first scrape.
        for record_type, reasons in _REASONS_BY_TYPE.items():
            self.outcomes.labels(record_type, ACCEPTED)
            for reason in reasons:
                self.outcomes.labels(record_type, reason.name)
        for kind in BAD_MESSAGE_KINDS:
            self.bad_messages.labels(kind)
        for resource in AUTHORIZATION_RESOURCES.values():
            self.authorization_denials.labels(resource)

    # -- counters, in bulk ------------------------------------------------------------

    def observe_records(self, topic: str, record_type: str, n: int) -> None:
        """Count ``n`` decoded input records of one topic."""
        if n:
            self.records.labels(_topic(topic), _record_type(record_type)).inc(n)

    def observe_outcomes(self, record_type: str, outcome_names: Iterable[str]) -> None:
        """Count a batch of outcomes: each name is ``"accepted"`` or a reason name."""
        rt = _record_type(record_type)
        for name, count in _Tally(outcome_names).items():
            if name not in _OUTCOME_SET:
                raise ValueError("outcome must be 'accepted' or a Reason name")
            self.outcomes.labels(rt, name).inc(count)

    def observe_reason_codes(self, record_type: str, codes: Iterable[int] | np.ndarray) -> None:
        """Like :meth:`observe_outcomes` for integer ``Reason`` codes (``OK`` = accepted),
        as the vectorised decision code produces them."""
        rt = _record_type(record_type)
        arr = np.asarray(codes if isinstance(codes, np.ndarray) else list(codes),
                         dtype=np.int64)
        if arr.size == 0:
            return
        if arr.min() < 0 or arr.max() > max(Reason):
            raise ValueError("not a Reason code")
        for code in np.flatnonzero(counts := np.bincount(arr)):
            name = ACCEPTED if code == Reason.OK else Reason(int(code)).name
            self.outcomes.labels(rt, name).inc(int(counts[code]))

    def observe_points(self, points: Iterable[int] | np.ndarray) -> None:
        """Add the ``points`` of a batch of grants (negative ones are clawbacks)."""
        arr = np.asarray(points if isinstance(points, np.ndarray) else list(points),
                         dtype=np.int64)
        granted = int(arr[arr > 0].sum())
        clawed_back = -int(arr[arr < 0].sum())
        if granted:
            self.points_granted.inc(granted)
        if clawed_back:
            self.points_clawed_back.inc(clawed_back)

    def bad_message(self, kind: str, n: int = 1) -> None:
        if kind not in BAD_MESSAGE_KINDS:
            raise ValueError(f"kind must be one of {BAD_MESSAGE_KINDS}")
        if n:
            self.bad_messages.labels(kind).inc(n)

    def known_operators(self, operator_ids: Iterable[str]) -> None:
        """The operators of the registry: the closed set of ``operator`` labels (each
        exported as 0 from the start)."""
        for op in operator_ids:
            if not isinstance(op, str) or not OPERATOR_ID.fullmatch(op):
                raise ValueError("not an operator id")
            self._operators.add(op)
            self.operator_mismatches.labels(op)

    def observe_operator_mismatches(self, operators: Iterable[str]) -> None:
        """Count OPERATOR_MISMATCH rejections, one source operator each."""
        for op, n in _Tally(operators).items():
            if op not in self._operators:
                raise ValueError("not an operator of the registry")
            self.operator_mismatches.labels(op).inc(n)

    def kafka_error(self, e: BaseException) -> None:
        """Count an error one of our Kafka clients got, if it is a refusal by the
        broker's security (an authorization denial, a failed authentication)."""
        name = type(e).__name__
        if name in AUTHORIZATION_RESOURCES:
            self.authorization_denials.labels(AUTHORIZATION_RESOURCES[name]).inc()
        elif name in AUTHENTICATION_ERRORS:
            self.authentication_failures.inc()

    def count_client_errors(self, logger: str = "aiokafka") -> logging.Handler:
        """Count the refusals the Kafka client library only logs, from now on (the
        handler returned can be removed from ``logger``): aiokafka reports a failed
        SASL authentication as a generic connection error and puts the broker's answer
        (``SaslAuthenticationFailed``) in a log record's arguments, so that is where it
        is counted (by the exception object, not the text)."""
        handler = _ClientErrorHandler(self)
        logging.getLogger(logger).addHandler(handler)
        return handler

    # -- histograms -------------------------------------------------------------------

    def observe_batch(self, records: int, seconds: float,
                      phases: dict[str, float] | None = None) -> None:
        """One processed batch: its size, its decide+produce+commit time and that
        time by phase (:data:`BATCH_PHASES`; a phase the batch did not go through
        is not observed)."""
        self.batch_records.observe(records)
        self.batch_seconds.observe(seconds)
        for phase, t in (phases or {}).items():
            child = self._phase_seconds.get(phase)
            if child is None:
                raise ValueError(f"unknown batch phase {phase!r}")
            child.observe(t)

    def deferred(self, messages: int) -> None:
        """``messages`` of a poll left for a later batch by the byte budget."""
        self.deferred_messages.inc(messages)

    def observe_outcome_latencies(self, seconds: Iterable[float] | np.ndarray) -> None:
        """Append-to-outcome latencies of a batch's records, in seconds."""
        self.outcome_latency.observe_many(seconds)

    def observe_live_latencies(self, now_ms: float, stamps_ms: Sequence[int]) -> None:
        """The latencies of the records of a batch decided at ``now_ms`` whose Kafka
        timestamps (their ``received_at``) lie within :data:`LIVE_WINDOW_SECONDS`
        before it. Only live traffic says how fast the engine is: a replayed archive
        carries business times from years ago, and a clock ahead of ours no age."""
        lat = (now_ms - np.asarray(stamps_ms, dtype=np.float64)) / 1000
        live = lat[(lat >= 0) & (lat < LIVE_WINDOW_SECONDS)]
        if len(live):
            self.observe_outcome_latencies(live)

    # -- gauges -----------------------------------------------------------------------

    def set_parked(self, partition: int, n: int) -> None:
        self.parked.labels(_partition(partition)).set(n)

    def set_stream_time(self, partition: int, unix_seconds: float) -> None:
        self.stream_time.labels(_partition(partition)).set(unix_seconds)

    def set_last_batch(self, partition: int, unix_seconds: float) -> None:
        self.last_batch.labels(_partition(partition)).set(unix_seconds)

    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        key = (_topic(topic), _partition(partition))
        with self._series_lock:
            self._lag_series.add(key)
        self.consumer_lag.labels(*key).set(lag)

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the per-partition series of revoked partitions.

        After a rebalance the new owner reports them; a stale copy here would be
        summed twice by the dashboards and alerts.
        """
        for p in partitions:
            label = _partition(p)
            for gauge in (self.parked, self.stream_time, self.partition_refused,
                          self.restore_remaining, self.last_batch):
                with contextlib.suppress(KeyError):
                    gauge.remove(label)
            with self._series_lock:
                gone = [k for k in self._lag_series if k[1] == label]
                self._lag_series.difference_update(gone)
            for key in gone:
                self.consumer_lag.remove(*key)

    def set_refused(self, partition: int, refused: bool) -> None:
        self.partition_refused.labels(_partition(partition)).set(1 if refused else 0)

    def set_restore_remaining(self, partition: int, remaining: int) -> None:
        self.restore_remaining.labels(_partition(partition)).set(remaining)

    def fenced_records_ignored(self, n: int) -> None:
        if n:
            self.fenced_ignored.inc(n)

    def set_up(self, up: bool) -> None:
        self.worker_up.set(1 if up else 0)

    def set_assigned_partitions(self, n: int) -> None:
        self.assigned_partitions.set(n)

    # -- exposition -------------------------------------------------------------------

    def serve(self, port: int, addr: str | None = None,
              readiness: Readiness | None = None) -> WSGIServer:
        """Serve ``/metrics`` (and with ``readiness`` the health endpoints of
        ``engine.ops.health``) over HTTP in a daemon thread; returns the server
        (``server.server_port`` is the bound port when ``port`` is 0,
        ``server.shutdown()`` stops it).

        ``addr`` defaults to ``$MYNAPOINT_METRICS_ADDR``, else ``127.0.0.1``: metrics
        reveal volumes and timing, so exposing them beyond the host is a deployment
        decision. The container image sets ``0.0.0.0`` because Prometheus scrapes the
        workers over the compose network.
        """
        if addr is None:
            addr = os.environ.get(METRICS_ADDR_ENV) or "127.0.0.1"
        from engine.ops.health import serve

        return serve(self.registry, port, addr, readiness)
