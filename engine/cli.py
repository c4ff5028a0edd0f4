"""The ``mynapoint`` command line.

Argument parsing lives here so that ``mynapoint --help`` stays fast; each command
imports its (heavy) implementation only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

DEFAULT_BROKER = "127.0.0.1:9092"

# What `mynapoint --help` shows; the module docstring above is for developers.
DESCRIPTION = """\
Mynapoint settlement engine: decides, for every enrollment and transaction a payment
operator sends, whether it earns Mynapoint points, and emits one grant or rejection
per record. Settle files offline (generate, settle) or run the streaming engine on
Kafka (kafka, worker, publish, collect, status, admin)."""
EPILOG = """\
Run `mynapoint COMMAND --help` for a command's options. Exit codes: 0 success,
1 a check failed or results are incomplete, 2 bad input, configuration or broker
unreachable, 3 conflicting outcomes (collect)."""

KAFKA_ACTIONS = {
    "fetch": "download the Kafka broker jars from Maven Central (once; cached)",
    "start": "start a local broker on 127.0.0.1:PORT, or a cluster with --brokers N "
             "(fetches first if needed)",
    "stop": "stop the local broker (or cluster) started for PORT",
    "status": "exit 0 if the local broker (every node of a cluster) for PORT runs and "
              "answers, else 1",
    "add-operator": "a new operator ID on the running local broker: SCRAM user, "
                    "password, ACLs (no restart); prints its properties file",
    "credentials": "print the path of PRINCIPAL's Kafka client properties file "
                   "(admin, engine, finance or an operator id)",
}
CLIENT_CONFIG_HELP = ("Kafka client properties (security.protocol, sasl.mechanism, "
                      "sasl.jaas.config, ssl.*), as the Java tools' --command-config; "
                      "default $MYNAPOINT_CLIENT_CONFIG, else plaintext")

# command name -> "module:function"; the function takes the parsed args, returns exit code
_COMMANDS = {
    "generate": "engine.tools.generate:main",
    "settle": "engine.tools.settle:main",
    "kafka": "engine.devtools.broker:main",
    "worker": "engine.streams.worker:main",
    "publish": "engine.tools.publish:main",
    "collect": "engine.tools.collect:main",
    "status": "engine.ops.status:main",
    "demo": "engine.tools.demo:main",
    "ledger": "engine.finance.cli:main",
    "admin": "engine.cli:admin",
    "archive": "engine.archive.archiver:main",
}


# engine.streams.worker's IDLE_FETCH_WAIT_MS and its bounds, repeated so that the parser
# does not import the worker (tests/test_documented_defaults.py keeps them equal)
IDLE_FETCH_WAIT_MS = (20, 500, 2_000)


def _idle_fetch_wait(text: str) -> int:
    low, _, high = IDLE_FETCH_WAIT_MS
    try:
        ms = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of ms: {text!r}") from None
    if not low <= ms <= high:
        # below the live wait it would fetch more often idle than busy; above the
        # bound, near the 5 s after which an unanswered fetch means a broker away
        raise argparse.ArgumentTypeError(f"{ms} ms is outside {low}-{high} ms")
    return ms


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mynapoint", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="generate a seeded, realistic synthetic campaign")
    g.add_argument("--users", type=int, default=100_000)
    g.add_argument("--transactions", type=int, default=1_000_000)
    g.add_argument("--out", default="data/")
    g.add_argument("--seed", type=int, default=2020)
    g.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    g.add_argument("--clean", action="store_true",
                   help="only well-formed, eligible-looking records (benchmarks)")

    s = sub.add_parser("settle", help="settle enrollment and transaction files, or an "
                                      "archive, offline")
    tagged = ("a file, or OPERATOR=FILE for a file of that operator's records (a record "
              "naming another operator is OPERATOR_MISMATCH); repeat for several files")
    s.add_argument("--enrollments", action="append", default=None, metavar="[OPERATOR=]FILE",
                   help=tagged)
    s.add_argument("--transactions", action="append", default=None, metavar="[OPERATOR=]FILE",
                   help=tagged)
    s.add_argument("--archive", default=None, metavar="DIR",
                   help="settle a redacted archive (mynapoint archive) instead of files")
    s.add_argument("--operators", default=None, help="operators.toml (default: shipped)")
    s.add_argument("--campaign", default=None, help="campaign.toml (default: shipped)")
    s.add_argument("--out", required=True)
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    s.add_argument("--partitions", type=int, default=None, metavar="N",
                   help="settle one slice of N: the people Kafka's murmur2 partitioner puts "
                        "on partition --partition of N (records without a valid mykey_id: "
                        "partition 0); the N slices' outputs together are the whole run")
    s.add_argument("--partition", type=int, default=None, metavar="K",
                   help="which slice, 0 to N-1 (with --partitions)")
    s.add_argument("--slice-rows", type=int, default=None, metavar="N",
                   help="transactions decided in memory at once (default 10,000,000): a "
                        "larger input is decided in slices of people spilled to disk in "
                        "--out, with the same outputs")

    k = sub.add_parser(
        "kafka", help="local Kafka broker or cluster (loopback only)",
        description="A local Kafka broker (or a KRaft cluster of N brokers) for development,\n"
                    "tests and the demo, bound to 127.0.0.1, data in .kafka/.\n\nactions:\n"
                    + "\n".join(f"  {a:<14}{h}" for a, h in KAFKA_ACTIONS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("action", choices=list(KAFKA_ACTIONS), metavar="ACTION",
                   help="one of: " + ", ".join(KAFKA_ACTIONS) + " (see above)")
    k.add_argument("--port", type=int, default=9092,
                   help="client port (default 9092; of node 1 in a cluster, node i uses "
                        "PORT+i-1)")
    k.add_argument("--brokers", type=int, default=1,
                   help="start a KRaft cluster of N brokers (replication factor min(3, N))")
    k.add_argument("principal", nargs="?", default=None, metavar="PRINCIPAL",
                   help="credentials: whose properties file; add-operator: the new id")
    k.add_argument("--tls", action="store_true",
                   help="start: SASL_SSL with a CA and certificate made by "
                        "scripts/make-certs.sh (in the data dir's tls/)")
    k.add_argument("--operators", default=None,
                   help="operators.toml: one SCRAM principal per operator (default: shipped)")

    w = sub.add_parser("worker", help="run a streaming settlement worker")
    w.add_argument("--operators", default=None)
    w.add_argument("--campaign", default=None)
    w.add_argument("--broker", default=DEFAULT_BROKER)
    w.add_argument("--client-config", default=None, metavar="FILE", help=CLIENT_CONFIG_HELP)
    w.add_argument("--partitions", type=int, default=8,
                   help="partition count for topics the worker creates")
    w.add_argument("--group", default=None,
                   help="consumer group (default: <topic-prefix>-engine)")
    w.add_argument("--state-dir", default=".kafka/state")
    w.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus metrics on 127.0.0.1:PORT (0 = off)")
    w.add_argument("--topic-prefix", default="mynapoint")
    w.add_argument("--max-batch", type=int, default=20_000,
                   help="messages per poll at most (default 20000)")
    w.add_argument("--max-batch-bytes", type=int, default=None,
                   help="input bytes decided per batch, about (default 4 MiB); the rest "
                        "of a larger poll waits in memory for the next batch")
    # engine.streams.worker.QUIET_SECONDS, repeated so that the parser does not import
    # the worker (tests/test_documented_defaults.py keeps the two equal)
    w.add_argument("--quiet-seconds", type=float, default=30.0,
                   help="an operator's transactions input that delivered nothing for "
                        "this long (default 30) has its waiting records follow the "
                        "partition's stream time (docs/DECISIONS.md, 112)")
    # engine.streams.worker.COMMIT_INTERVAL_SECONDS, repeated likewise
    w.add_argument("--commit-interval", type=float, default=0.1, metavar="SECONDS",
                   help="state and offsets of the batches decided since the last commit "
                        "are committed once the first is this old (default 0.1; 0: every "
                        "batch; the faust runtime commits every batch); a crash decides "
                        "about this much input again (docs/DECISIONS.md, 131)")
    w.add_argument("--idle-fetch-wait-ms", type=_idle_fetch_wait,
                   default=IDLE_FETCH_WAIT_MS[1], metavar="MS",
                   help="how long the broker may hold a fetch once no record came for a "
                        "second (default 500; 20-2000; 20 while records flow): an idle "
                        "worker's fetch rate (docs/DECISIONS.md, 134)")
    w.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="text (default) or one JSON object per line")
    w.add_argument("--runtime", choices=["aiokafka", "faust"], default="aiokafka",
                   help="aiokafka (default, the faster) or faust: the same settlement "
                        "logic and guarantees inside a Faust app (docs/ARCHITECTURE.md)")
    w.add_argument("--replay", action="store_true",
                   help="the input topics are a replay written by `publish --archive`: "
                        "believe its original positions and archived verdicts (only on "
                        "fresh topics no operator may write: docs/PRIVACY.md)")

    pb = sub.add_parser("publish", help="replay enrollment/transaction files, or a "
                                        "redacted archive, into Kafka")
    pb.add_argument("--enrollments", default=None)
    pb.add_argument("--transactions", default=None)
    pb.add_argument("--archive", default=None, metavar="DIR",
                    help="replay an archive (mynapoint archive) message for message into "
                         "fresh topics, for a worker started with --replay")
    pb.add_argument("--rate", type=float, default=0.0, help="records per second (0 = max)")
    pb.add_argument("--batch", type=int, default=1000,
                    help="records per message (1 = one JSON record per message)")
    pb.add_argument("--broker", default=DEFAULT_BROKER)
    pb.add_argument("--client-config", default=None, metavar="FILE", help=CLIENT_CONFIG_HELP)
    pb.add_argument("--partitions", type=int, default=8)
    pb.add_argument("--topic-prefix", default="mynapoint")
    pb.add_argument("--operator", default=None, metavar="ID",
                    help="publish as this operator: every record to its input topics "
                         "(default: each record to the operator its operator_id names)")
    pb.add_argument("--operators", default=None,
                    help="operators.toml: whose topics records are routed to "
                         "(default: shipped)")
    pb.add_argument("--quiet", action="store_true")
    pb.add_argument("--manifest", default=None, metavar="FILE",
                    help="write a Parquet file mapping every input line/row to its "
                         "topic/partition/offset[#i]")

    c = sub.add_parser("collect", help="read the output topics into Parquet files")
    c.add_argument("--out", required=True)
    c.add_argument("--broker", default=DEFAULT_BROKER)
    c.add_argument("--client-config", default=None, metavar="FILE", help=CLIENT_CONFIG_HELP)
    c.add_argument("--topic-prefix", default="mynapoint")
    c.add_argument("--expect", type=int, default=0,
                   help="wait until this many distinct outcomes were read")
    c.add_argument("--timeout", type=float, default=45.0,
                   help="with --expect: give up after this many seconds in which no "
                        "message arrived (default 45: longer than a worker's "
                        "--quiet-seconds, after which the last waits of a finished "
                        "input end). Without --expect collect stops at the current "
                        "end of the topics and does not wait.")
    c.add_argument("--campaign", default=None,
                   help="campaign.toml for the summary's cap and id (default: shipped)")

    ar = sub.add_parser("archive", help="archive the input topics, redacted, to Parquet")
    ar.add_argument("--out", required=True, metavar="DIR")
    ar.add_argument("--follow", action="store_true",
                    help="keep archiving new input (default: stop at the inputs' end)")
    ar.add_argument("--broker", default=DEFAULT_BROKER)
    ar.add_argument("--topic-prefix", default="mynapoint")
    ar.add_argument("--client-config", default=None, metavar="F",
                    help="Kafka client properties (security.protocol, sasl.*, ssl.*)")
    ar.add_argument("--file-rows", type=int, default=20_000,
                    help="messages per archive file (at most)")
    ar.add_argument("--verify", action="store_true",
                    help="only audit DIR against its manifest (exit 1 on a problem)")

    st = sub.add_parser(
        "status", help="the whole streaming engine at a glance (exit 0/1/2)",
        description="Per input partition: owning worker, committed offset, lag, stream "
                    "time, parked records, age of the last decided batch; per worker: "
                    "partitions and state restore progress; per output topic: end "
                    "offsets; a verdict. Exit 0 healthy, 1 degraded, 2 down or "
                    "unreachable. Reads the consumer group from the broker and each "
                    "worker's metrics port where reachable.")
    st.add_argument("--broker", default=DEFAULT_BROKER,
                    help=f"bootstrap server (default {DEFAULT_BROKER})")
    st.add_argument("--client-config", default=None, metavar="FILE",
                    help="Kafka client properties (security.protocol, sasl.*, ssl.*)")
    st.add_argument("--topic-prefix", default="mynapoint")
    st.add_argument("--group", default=None,
                    help="workers' consumer group (default: <topic-prefix>-engine)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--stale-after", type=float, default=60.0, metavar="SECONDS",
                    help="a partition with unread records and no batch decided for this "
                         "long is stalled (default 60)")
    st.add_argument("--max-lag", type=int, default=100_000,
                    help="more unread records than this on a partition is degraded "
                         "(default 100000)")

    _ledger_parser(sub)

    a = sub.add_parser("admin", help="operator actions on the engine's Kafka state")
    a.add_argument("action", choices=["rebuild-state", "accept-loss", "locate"],
                   help="rebuild-state: void the state of partitions and decide their "
                        "input again from the beginning (workers must be stopped); "
                        "accept-loss: accept input deleted by retention before it was "
                        "decided, keeping the state (workers must be stopped); "
                        "locate: every place holding data about --mykey-id")
    a.add_argument("--partition", type=int, action="append", default=[],
                   help="partition to rebuild or accept a loss on (repeatable; "
                        "default: all)")
    a.add_argument("--broker", default=DEFAULT_BROKER)
    a.add_argument("--client-config", default=None, metavar="FILE", help=CLIENT_CONFIG_HELP)
    a.add_argument("--topic-prefix", default="mynapoint")
    a.add_argument("--group", default=None,
                   help="the workers' consumer group (default: <topic-prefix>-engine)")
    a.add_argument("--mykey-id", default=None, help="locate: the person")
    a.add_argument("--state-dir", default=".kafka/state",
                   help="locate: the workers' local state root")
    a.add_argument("--archive", default=None, metavar="DIR", help="locate: an archive")
    a.add_argument("--ledger", default=None, metavar="L.duckdb", help="locate: a ledger")
    a.add_argument("--kafka", dest="with_kafka", action="store_true",
                   help="locate: also read the engine's topics on --broker")

    d = sub.add_parser("demo", help="the main job, end to end on a local broker")
    d.add_argument("--users", type=int, default=20_000)
    d.add_argument("--transactions", type=int, default=200_000)
    d.add_argument("--port", type=int, default=9092)
    d.add_argument("--offline", action="store_true", help="skip Kafka, settle offline only")
    return p


def admin(args: argparse.Namespace) -> int:
    module = "engine.privacy.locate" if args.action == "locate" else "engine.streams.rebuild"
    return int(importlib.import_module(module).main(args) or 0)


def _ledger_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    lp = sub.add_parser("ledger", help="finance: the DuckDB ledger, statements, settlement, "
                                       "claim reconciliation, what-if diff, report")
    ls = lp.add_subparsers(dest="ledger_command", required=True)
    operators_help = "operators.toml with the payout schedules (default: shipped)"

    ld = ls.add_parser("load", help="append settle outputs (Parquet) or the output topics")
    ld.add_argument("--ledger", required=True, metavar="L.duckdb")
    ld.add_argument("--from", dest="source", default=None, metavar="OUT_DIR",
                    help="a settle/collect output directory (grants.parquet, rejections.parquet)")
    ld.add_argument("--from-kafka", action="store_true",
                    help="exactly-once sink of the output topics")
    ld.add_argument("--follow", action="store_true",
                    help="with --from-kafka: keep running as a service")
    ld.add_argument("--broker", default=DEFAULT_BROKER)
    ld.add_argument("--client-config", default=None, metavar="F",
                    help="Kafka client properties (security.protocol, sasl.mechanism, "
                         "sasl.jaas.config)")
    ld.add_argument("--topic-prefix", default="mynapoint")
    ld.add_argument("--metrics-port", type=int, default=0,
                    help="serve Prometheus metrics on 127.0.0.1:PORT (0 = off)")
    ld.add_argument("--idle-timeout", type=float, default=10.0,
                    help="without --follow: stop after this many seconds without news "
                         "even if not caught up")
    ld.add_argument("--max-batch", type=int, default=20_000,
                    help="messages per ledger transaction")

    st = ls.add_parser("statements", help="monthly statements per operator")
    st.add_argument("--ledger", required=True)
    st.add_argument("--out", required=True)
    st.add_argument("--operators", default=None, help=operators_help)

    se = ls.add_parser("settlement", help="final settlement against the advances paid")
    se.add_argument("--ledger", required=True)
    se.add_argument("--advances", required=True, metavar="A.csv")
    se.add_argument("--out", required=True)
    se.add_argument("--operators", default=None, help=operators_help)

    rc = ls.add_parser("reconcile", help="reconcile an operator's claim with the ledger")
    rc.add_argument("--ledger", required=True)
    rc.add_argument("--operator", required=True, metavar="ID")
    rc.add_argument("--claim", required=True, metavar="C.csv")
    rc.add_argument("--out", required=True)

    df = ls.add_parser("diff", help="compare two ledgers (what-if)")
    df.add_argument("--ledger", required=True)
    df.add_argument("--against", required=True, metavar="L2.duckdb")
    df.add_argument("--out", required=True)

    rp = ls.add_parser("report", help="one self-contained HTML report")
    rp.add_argument("--ledger", required=True)
    rp.add_argument("--out", required=True)
    rp.add_argument("--operators", default=None, help=operators_help)
    rp.add_argument("--campaign", default=None, help="campaign.toml with the budget")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engine.kafka.client_config import ClientConfigError, use_client_config

    try:
        # one place for every command: its clients and any process it starts use it
        use_client_config(getattr(args, "client_config", None))
    except ClientConfigError as e:
        print(f"mynapoint {args.command}: {e}", file=sys.stderr)
        return 2
    module_name, func_name = _COMMANDS[args.command].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
