"""``mynapoint status``: is settlement healthy, and if not, where and why?

Everything comes from the broker, so it works from any machine that can reach it:

- the workers' consumer group (``describe_consumer_groups``): members, the input
  partitions each owns, and where each serves its metrics (advertised in its
  ``client_id``, see ``engine.ops.health``);
- the group's committed offsets and the topics' end offsets: lag per consumed
  partition (the public inputs and the workers' internal re-routing topics)
  (a partition without a committed offset counts from 0: topics keep records forever);
- per worker, where its metrics port is reachable: ``/metrics`` (stream time, parked
  records, last decided batch per partition) and ``/readyz`` (restore progress,
  readiness and its reason).

Verdict and exit code: **down** (2) when no worker is in the group; **degraded** (1)
when an input partition has no owner, a worker is not ready, a partition has unread
records and no decided batch for ``--stale-after`` seconds, or more than ``--max-lag``
unread records; else **healthy** (0). An unreachable broker, no engine topics or a
group that does not exist are errors: one line, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from engine.kafka.client_config import ClientConfigError, default_client, load_client_config
from engine.kafka.topics import Topics, discover, partition_counts
from engine.ops.health import describe_error, metrics_address

CONNECT_TIMEOUT = 15.0
HTTP_TIMEOUT = 2.0
HEALTHY, DEGRADED, DOWN = "healthy", "degraded", "down"
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, DOWN: 2}
REBALANCING = ("PreparingRebalance", "CompletingRebalance")
_PER_PARTITION = {"mynapoint_stream_time_seconds": "stream_time",
                  "mynapoint_parked_records": "parked",
                  "mynapoint_last_batch_timestamp_seconds": "last_batch"}


class StatusError(RuntimeError):
    """Status cannot be determined at all; ``str()`` is the one line to print."""


@dataclass
class PartitionStatus:
    topic: str
    partition: int
    owner: str | None  # member id of the worker that owns it
    committed: int | None
    end: int
    lag: int
    stream_time: float | None = None  # Unix seconds
    parked: int | None = None
    last_batch_age: float | None = None  # seconds since the owner last decided a batch
    internal: bool = False  # one of the workers' re-routing topics


@dataclass
class WorkerStatus:
    member_id: str
    client_id: str
    host: str
    partitions: list[int]
    metrics_url: str | None
    reachable: bool = False
    ready: bool | None = None
    reason: str | None = None
    restoring: dict[str, dict[str, int | None]] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


@dataclass
class Report:
    broker: str
    group: str
    group_state: str
    verdict: str
    reasons: list[str]
    partitions: list[PartitionStatus]
    workers: list[WorkerStatus]
    outputs: dict[str, dict[str, int]]  # topic -> partition -> end offset

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def to_json(self) -> bytes:
        return orjson.dumps({**asdict(self), "exit_code": self.exit_code},
                            option=orjson.OPT_INDENT_2) + b"\n"


def _fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:  # /readyz answers 503 with a body
        return e.code, e.read()


def scrape_worker(w: WorkerStatus) -> dict[str, dict[int, float]]:
    """Fill ``w``'s readiness from ``/readyz`` and return its per-partition gauges
    from ``/metrics`` (name -> partition -> value); ``{}`` if unreachable."""
    from prometheus_client.parser import text_string_to_metric_families

    if w.metrics_url is None:
        return {}
    try:
        _, body = _fetch(w.metrics_url + "/readyz")
        ready = orjson.loads(body)
        _, text = _fetch(w.metrics_url + "/metrics")
        families = list(text_string_to_metric_families(text.decode()))
    except (OSError, ValueError, orjson.JSONDecodeError):
        return {}
    w.reachable = True
    w.ready = ready.get("status") == "ok"
    w.reason = ready.get("reason")
    w.restoring = ready.get("restoring") or {}
    w.refused = ready.get("refused") or {}
    out: dict[str, dict[int, float]] = {k: {} for k in _PER_PARTITION.values()}
    for fam in families:
        key = _PER_PARTITION.get(fam.name)
        if key is None:
            continue
        for s in fam.samples:
            if "partition" in s.labels:
                out[key][int(s.labels["partition"])] = s.value
    return out


async def gather(bootstrap: str, topics: Topics, client: dict[str, Any] | None = None,
                 ) -> tuple[str, list[WorkerStatus], list[PartitionStatus],
                            dict[str, dict[str, int]]]:
    """Read the group and offsets from the broker: (group state, workers, input
    partitions without metrics yet, output end offsets)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from engine.ops.logs import quiet

    client = client or default_client()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, **client)
    try:
        with quiet("aiokafka"):  # its connection errors repeat the one line we print
            topics = await discover(bootstrap, topics, **client)
            names = [*topics.inputs, *topics.outputs]
            # the workers' own re-routing topics: consumed like inputs, created by them
            internal = [t for t in topics.consumed if t not in topics.inputs]
            await asyncio.wait_for(admin.start(), CONNECT_TIMEOUT)
            await asyncio.wait_for(consumer.start(), CONNECT_TIMEOUT)
            meta = await admin.describe_topics(names + internal)
            parts = partition_counts(meta)
            if not parts:
                raise StatusError(f"no engine topics on {bootstrap} (looked for "
                                  f"{', '.join(names)}; wrong --topic-prefix?)")
            missing = [t for t in names if t not in parts]
            if missing:
                raise StatusError(f"engine topics missing on {bootstrap}: "
                                  f"{', '.join(missing)}")
            (desc,) = await admin.describe_consumer_groups([topics.group_id])
            _, group_id, state, _, _, members = desc.groups[0][:6]
            committed = await admin.list_consumer_group_offsets(topics.group_id)
            if state == "Dead" and not committed:
                raise StatusError(f"consumer group {group_id} does not exist on {bootstrap} "
                                  "(no worker has joined it; wrong --group or "
                                  "--topic-prefix?)")
            tps = [TopicPartition(t, p) for t in names + internal for p in range(parts.get(t, 0))]
            ends = await consumer.end_offsets(tps)
    except (TimeoutError, KafkaConnectionError, OSError) as e:
        raise StatusError(f"cannot reach the Kafka broker at {bootstrap} "
                          f"({describe_error(e)})") from None
    except KafkaError as e:  # reached, but refused (e.g. an ACL) or failed
        raise StatusError(f"the Kafka broker at {bootstrap} refused a request "
                          f"({describe_error(e)})") from None
    finally:
        with quiet("aiokafka"):
            await consumer.stop()
            await admin.close()

    workers: list[WorkerStatus] = []
    owner: dict[tuple[str, int], str] = {}
    for member_id, client_id, client_host, _meta, assignment in members:
        owned: set[int] = set()
        if assignment:
            for topic, ps in ConsumerProtocolMemberAssignment.decode(assignment).assignment:
                for p in ps:
                    owner[(topic, p)] = member_id
                    owned.add(p)
        addr = metrics_address(client_id, client_host)
        url = None if addr is None else (
            f"http://[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"http://{addr[0]}:{addr[1]}")
        workers.append(WorkerStatus(member_id, client_id, client_host.lstrip("/"),
                                    sorted(owned), url))
    partitions = []
    for t in topics.consumed:
        for p in range(parts.get(t, 0)):
            tp = TopicPartition(t, p)
            c = committed.get(tp)
            off = c.offset if c is not None and c.offset >= 0 else None
            partitions.append(PartitionStatus(t, p, owner.get((t, p)), off, ends[tp],
                                              max(ends[tp] - (off or 0), 0),
                                              internal=t in internal))
    outputs = {t: {str(p): ends[TopicPartition(t, p)] for p in range(parts[t])}
               for t in topics.outputs}
    return state, workers, partitions, outputs


def judge(workers: list[WorkerStatus], partitions: list[PartitionStatus],
          stale_after: float, max_lag: int, group_state: str = "Stable"
          ) -> tuple[str, list[str]]:
    """The verdict and its reasons, most severe first."""
    if not workers:
        return DOWN, ["no worker is running in the consumer group: nothing is decided"]
    reasons = []
    unowned = [f"{p.topic}/{p.partition}" for p in partitions if p.owner is None]
    if group_state in REBALANCING:
        # assignments are being handed out: "no worker" would be the wrong alarm
        reasons.append(f"the consumer group is rebalancing ({group_state})")
    elif unowned:
        reasons.append(f"{len(unowned)} input partitions have no worker: "
                       + ", ".join(unowned[:8]) + (" …" if len(unowned) > 8 else ""))
    for w in workers:
        if w.reachable and not w.ready:
            reasons.append(f"worker {w.client_id} ({w.host}) not ready: {w.reason}")
    for p in partitions:
        where = f"{p.topic}/{p.partition}"
        if p.lag and p.last_batch_age is not None and p.last_batch_age > stale_after:
            reasons.append(f"{where} stalled: {p.lag:,} unread records, last batch "
                           f"{p.last_batch_age:.0f} s ago")
        elif p.lag > max_lag:
            reasons.append(f"{where} behind: {p.lag:,} unread records (> {max_lag:,})")
    return (DEGRADED, reasons) if reasons else (HEALTHY, [])


async def status(bootstrap: str, topics: Topics, client: dict[str, Any] | None = None,
                 stale_after: float = 60.0, max_lag: int = 100_000) -> Report:
    state, workers, partitions, outputs = await gather(bootstrap, topics, client)
    scraped = await asyncio.gather(*(asyncio.to_thread(scrape_worker, w) for w in workers))
    by_member = dict(zip((w.member_id for w in workers), scraped, strict=True))
    now = time.time()
    for p in partitions:
        gauges = by_member.get(p.owner or "", {})
        if not gauges:
            continue
        p.stream_time = gauges["stream_time"].get(p.partition)
        parked = gauges["parked"].get(p.partition)
        p.parked = None if parked is None else int(parked)
        last = gauges["last_batch"].get(p.partition)
        p.last_batch_age = None if last is None else max(now - last, 0.0)
    verdict, reasons = judge(workers, partitions, stale_after, max_lag, state)
    return Report(bootstrap, topics.group_id, state, verdict, reasons, partitions, workers,
                  outputs)


def render(report: Report) -> None:
    """The human view: three tables and the verdict line."""
    from rich.console import Console
    from rich.table import Table

    from engine.rules.strings import format_utc

    # piped output (a script, a log) gets whole rows rather than 80-column wrapping
    con = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    # a worker is named by its metrics address when it advertises one, else its host
    names = {w.member_id: w.metrics_url.split("//", 1)[1] if w.metrics_url else w.host
             for w in report.workers}

    def opt(v: Any, fmt: str = "{}") -> str:
        return "-" if v is None else fmt.format(v)

    t = Table(title=f"Input partitions (group {report.group}, {report.group_state})")
    for col in ("topic", "p", "worker", "committed", "end", "lag", "stream time (UTC)",
                "parked", "last batch"):
        t.add_column(col, justify="right" if col not in ("topic", "worker") else "left",
                     no_wrap=True)
    for p in report.partitions:
        st = None if p.stream_time is None else format_utc(int(p.stream_time * 1e6))[:19]
        # stream time, parked and last batch belong to the partition number: shown
        # once, on the public topics' rows
        per_partition = ["", "", ""] if p.internal else [
            opt(st), opt(p.parked, "{:,}"), opt(p.last_batch_age, "{:.0f} s ago")]
        t.add_row(p.topic, str(p.partition), names.get(p.owner or "", "NONE"),
                  opt(p.committed, "{:,}"), f"{p.end:,}", f"{p.lag:,}", *per_partition)
    con.print(t)
    w = Table(title="Workers")
    for col in ("worker", "partitions", "metrics", "ready", "restoring"):
        w.add_column(col)
    for ws in report.workers:
        restoring = ", ".join(
            f"p{p}: " + ("starting" if r.get("remaining") is None
                         else f"{r['remaining']:,} records left")
            for p, r in ws.restoring.items())
        w.add_row(names[ws.member_id], ",".join(map(str, ws.partitions)) or "-",
                  ws.metrics_url or "not advertised",
                  "unreachable" if not ws.reachable else
                  ("yes" if ws.ready else f"no: {ws.reason}"), restoring or "-")
    con.print(w)
    o = Table(title="Output topics (end offsets)")
    o.add_column("topic")
    o.add_column("records", justify="right")
    o.add_column("per partition")
    for topic, ends in report.outputs.items():
        o.add_row(topic, f"{sum(ends.values()):,}", " ".join(f"{e:,}" for e in ends.values()))
    con.print(o)
    line = f"{report.verdict.upper()}" + (f": {'; '.join(report.reasons)}"
                                          if report.reasons else "")
    # one line however long, so that the last line is the whole verdict (scripts and
    # runbooks read it; rich would otherwise cut it at the console's width)
    con.print(line, markup=False, soft_wrap=True)


def main(args: argparse.Namespace) -> int:
    try:
        client = load_client_config(args.client_config)
    except ClientConfigError as e:
        print(f"mynapoint status: {e}", file=sys.stderr)
        return 2
    topics = Topics(args.topic_prefix, args.group or "")
    try:
        report = asyncio.run(status(args.broker, topics, client, args.stale_after,
                                    args.max_lag))
    except StatusError as e:
        if args.json:
            sys.stdout.buffer.write(orjson.dumps({"verdict": DOWN, "error": str(e),
                                                  "exit_code": 2}) + b"\n")
        print(f"mynapoint status: {e}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.buffer.write(report.to_json())
    else:
        render(report)
    return report.exit_code
