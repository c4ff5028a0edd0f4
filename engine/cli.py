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

# command name -> "module:function"; the function takes the parsed args, returns exit code
_COMMANDS = {
    "generate": "engine.generate:main",
    "settle": "engine.ledger.settle:main",
    "kafka": "engine.kafka.local:main",
    "worker": "engine.streams.worker:main",
    "publish": "engine.streams.publish:main",
    "collect": "engine.streams.collect:main",
    "demo": "engine.demo:main",
    "admin": "engine.cli:admin",
    "archive": "engine.archive.archiver:main",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mynapoint", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

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
    s.add_argument("--enrollments", default=None)
    s.add_argument("--transactions", default=None)
    s.add_argument("--archive", default=None, metavar="DIR",
                   help="settle a redacted archive (mynapoint archive) instead of files")
    s.add_argument("--operators", default=None, help="operators.toml (default: shipped)")
    s.add_argument("--campaign", default=None, help="campaign.toml (default: shipped)")
    s.add_argument("--out", required=True)
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary table")

    k = sub.add_parser("kafka", help="local single-node Kafka broker (loopback only)")
    k.add_argument("action", choices=["fetch", "start", "stop", "status"])
    k.add_argument("--port", type=int, default=9092)

    w = sub.add_parser("worker", help="run a streaming settlement worker")
    w.add_argument("--operators", default=None)
    w.add_argument("--campaign", default=None)
    w.add_argument("--broker", default=DEFAULT_BROKER)
    w.add_argument("--partitions", type=int, default=8,
                   help="partition count for topics the worker creates")
    w.add_argument("--group", default=None,
                   help="consumer group (default: <topic-prefix>-engine)")
    w.add_argument("--state-dir", default=".kafka/state")
    w.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus metrics on 127.0.0.1:PORT (0 = off)")
    w.add_argument("--topic-prefix", default="mynapoint")
    w.add_argument("--max-batch", type=int, default=20_000)

    pb = sub.add_parser("publish", help="replay enrollment/transaction files into Kafka")
    pb.add_argument("--enrollments", default=None)
    pb.add_argument("--transactions", default=None)
    pb.add_argument("--rate", type=float, default=0.0, help="records per second (0 = max)")
    pb.add_argument("--batch", type=int, default=1000,
                    help="records per message (1 = one JSON record per message)")
    pb.add_argument("--broker", default=DEFAULT_BROKER)
    pb.add_argument("--partitions", type=int, default=8)
    pb.add_argument("--topic-prefix", default="mynapoint")
    pb.add_argument("--quiet", action="store_true")
    pb.add_argument("--manifest", default=None, metavar="FILE",
                    help="write a Parquet file mapping every input line/row to its "
                         "topic/partition/offset[#i]")

    c = sub.add_parser("collect", help="read the output topics into Parquet files")
    c.add_argument("--out", required=True)
    c.add_argument("--broker", default=DEFAULT_BROKER)
    c.add_argument("--topic-prefix", default="mynapoint")
    c.add_argument("--expect", type=int, default=0,
                   help="wait until this many distinct outcomes were read")
    c.add_argument("--timeout", type=float, default=10.0,
                   help="stop after this many idle seconds")
    c.add_argument("--campaign", default=None,
                   help="campaign.toml for the summary's cap and id (default: shipped)")

    ar = sub.add_parser("archive", help="archive the input topics, redacted, to Parquet")
    ar.add_argument("--out", required=True, metavar="DIR")
    ar.add_argument("--follow", action="store_true",
                    help="keep archiving new input (default: stop at the inputs' end)")
    ar.add_argument("--broker", default=DEFAULT_BROKER)
    ar.add_argument("--topic-prefix", default="mynapoint")
    ar.add_argument("--client-config", default=None, metavar="F",
                    help="Kafka client properties (not supported yet)")
    ar.add_argument("--file-rows", type=int, default=20_000,
                    help="messages per archive file (at most)")
    ar.add_argument("--verify", action="store_true",
                    help="only audit DIR against its manifest (exit 1 on a problem)")

    a = sub.add_parser("admin", help="operator actions on the engine's Kafka state")
    a.add_argument("action", choices=["rebuild-state", "locate"],
                   help="rebuild-state: void the state of partitions and decide their "
                        "input again from the beginning (workers must be stopped); "
                        "locate: every place holding data about --mykey-id")
    a.add_argument("--partition", type=int, action="append", default=[],
                   help="partition to rebuild (repeatable; default: all)")
    a.add_argument("--broker", default=DEFAULT_BROKER)
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, func_name = _COMMANDS[args.command].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
