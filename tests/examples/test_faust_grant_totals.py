"""examples/faust_grant_totals.py, a user's own Faust app reading the engine's outputs,
on the real secured broker: the engine settles a campaign, the Faust app adds up the
grants per operator in a Faust Table, and its published totals equal the sums of the
points the engine granted (the same as offline settle's)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from engine.devtools import broker as devbroker
from engine.devtools import security
from engine.devtools.worker_process import terminate
from engine.kafka.client_config import default_client
from tests.streams.harness import (
    collect_and_compare,
    make_scenario,
    publish,
    topics_for,
    worker,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "faust_grant_totals.py"


async def _latest_totals(bootstrap: str, topic: str, want: dict[str, int],
                         timeout: float) -> dict[str, int]:
    """The newest value per key of ``topic``, read until it equals ``want`` or the
    time is up (the app creates the topic when it starts)."""
    end = time.monotonic() + timeout
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client(),
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         metadata_max_age_ms=1000)
    await c.start()
    latest: dict[str, int] = {}
    try:
        while topic not in await c.topics() and time.monotonic() < end:
            await asyncio.sleep(1.0)
        c.subscribe([topic])
        while time.monotonic() < end and latest != want:
            got = await c.getmany(timeout_ms=500)
            for msgs in got.values():
                for m in msgs:
                    latest[m.key.decode().strip('"')] = orjson.loads(m.value)
    finally:
        await c.stop()
    return latest


def test_a_users_faust_agent_adds_up_the_engines_grants_per_operator(
        kafka_broker: devbroker.Broker, topic_prefix: object, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap
    prefix = topic_prefix()  # type: ignore[operator]
    sc = make_scenario(tmp_path / "data", 40, 400, seed=31)
    publish(bootstrap, prefix, sc, tmp_path / "m.parquet", 50)
    w = worker(bootstrap, prefix, tmp_path)
    w.start()
    try:
        cmp, grants, _ = collect_and_compare(bootstrap, prefix, sc, tmp_path / "m.parquet")
    finally:
        w.stop()
    assert cmp.equal, str(cmp)
    want: dict[str, int] = defaultdict(int)
    for g in sc.offline.grants.to_pylist():
        want[g["operator_id"]] += g["points"]
    assert len(want) >= 3 and any(g["points"] < 0 for g in grants.to_pylist()), \
        "the scenario should span operators and include a claw-back"

    app = f"{prefix}-totals-app"
    before = asyncio.run(_topics(bootstrap))
    env = {**os.environ, "GRANT_TOTALS_BROKER": bootstrap,
           "GRANT_TOTALS_TOPICS": ",".join(
               t for t, kind in topics_for(prefix).outcomes.items() if kind == "grant"),
           "GRANT_TOTALS_APP": app,
           "GRANT_TOTALS_CLIENT_CONFIG": str(kafka_broker.credentials(security.ADMIN)),
           "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "faust.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(EXAMPLE), "--datadir", str(tmp_path / "faust"),
                             "worker", "-l", "warn", "--without-web"],
                            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        got = asyncio.run(_latest_totals(bootstrap, f"{app}-totals", dict(want), 150.0))
    finally:
        terminate(proc)
        log.close()
    assert got == dict(want), _failure_story(tmp_path / "faust.log", got, dict(want))
    # everything the app created is under its own prefix: one prefixed ACL grants it
    created = asyncio.run(_topics(bootstrap)) - before
    assert created and all(t.startswith(f"{app}-") for t in created), created
    # no leader election, so no leader topic racing the subscription (docs/RELIABILITY.md)
    assert not any("__assignor" in t for t in created), created


def _failure_story(log: Path, got: dict[str, int], want: dict[str, int]) -> str:
    """Which totals differ, and the app's warnings and errors (a rare failure here:
    the whole story is needed to find its cause, not the log's last lines)."""
    wrong = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    lines = log.read_text(errors="replace").splitlines()
    told = [x for x in lines if any(w in x for w in ("WARN", "ERROR", "Error", "crash"))]
    return (f"totals (got, want) that differ: {wrong}\n" + "\n".join(told[:40])
            + "\n...\n" + "\n".join(lines[-40:]))


async def _topics(bootstrap: str) -> set[str]:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, **default_client())
    await c.start()
    try:
        return set(await c.topics())
    finally:
        await c.stop()


def test_the_app_creates_its_topics_with_leaders_before_its_worker_starts(
        kafka_broker: devbroker.Broker, topic_prefix: object,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cause of the totals that stopped (docs/RELIABILITY.md): topics Faust created
    while starting were missing from its consumer's first assignment. Every topic the
    app reads or writes of its own exists, led, before Faust runs; the changelog
    compacted like Faust's own; a second start finds them and changes nothing."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    app = f"{topic_prefix()}-app"  # type: ignore[operator]
    monkeypatch.setenv("GRANT_TOTALS_BROKER", kafka_broker.bootstrap)
    monkeypatch.setenv("GRANT_TOTALS_APP", app)
    monkeypatch.setenv("GRANT_TOTALS_PARTITIONS", "3")
    monkeypatch.setenv("GRANT_TOTALS_CLIENT_CONFIG",
                       str(kafka_broker.credentials(security.ADMIN)))
    spec = importlib.util.spec_from_file_location(f"grant_totals_{app}", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    names = [f"{app}-by-operator", f"{app}-totals", f"{app}-points-by-operator-changelog"]

    async def described() -> tuple[dict[str, list[int]], dict[str, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap,
                                    **default_client())
        await admin.start()
        try:
            leaders = {m["topic"]: sorted(p["leader"] for p in m["partitions"])
                       for m in await admin.describe_topics(names) if not m["error_code"]}
            res = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, n) for n in leaders])
            policy = {o["resource_name"]: e["config_value"]
                      for r in res for o in r.to_object()["resources"]
                      for e in o["config_entries"] if e["config_names"] == "cleanup.policy"}
            return leaders, policy
        finally:
            await admin.close()

    assert asyncio.run(described()) == ({}, {})
    for _ in range(2):
        asyncio.run(example.declare_topics(example.app))
        leaders, policy = asyncio.run(described())
        node = kafka_broker.node_id
        assert leaders == {n: [node] * 3 for n in names}
        assert policy == {names[0]: "delete", names[1]: "delete", names[2]: "compact"}
