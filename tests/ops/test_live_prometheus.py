"""The shipped dashboard and alert rules on a real Prometheus (the Debian package's
server, as promtool) scraping a real worker during an end-to-end run: every panel
query returns data, every rule evaluates healthy, and stopping the worker makes the
down alert fire for real.

The shipped rules are loaded unchanged. Waiting the 2 minutes of their ``for:`` would
make the suite slow, so a test rule file adds a copy of ``WorkerDown`` with a
test-sized ``for:`` (label ``variant: test``); the shipped one must be pending then.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.devtools import broker as devbroker
from engine.devtools.worker_process import WorkerProcess
from engine.kafka.client_config import default_client
from tests.builders import txn_topic
from tests.ops.http import get_json, wait_until
from tests.streams.harness import make_scenario, publish, topics_for, worker
from tests.test_deploy import ALERTS, dashboard_exprs, runbook_queries

JOB = "mynapoint-worker"
GRAFANA_VARIABLES = {"$__range": "5m", "$__rate_interval": "1m", "$__interval": "1m"}


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        _, doc = get_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert doc["status"] == "success", (expr, doc)
        return doc["data"]["result"]

    def value(self, expr: str) -> float:
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else float("nan")

    def rules(self) -> list[dict[str, Any]]:
        _, doc = get_json(f"{self.url}/api/v1/rules")
        return [r for g in doc["data"]["groups"] for r in g["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        return get_json(f"{self.url}/api/v1/alerts")[1]["data"]["alerts"]


def fast_rule_file(directory: Path) -> Path:
    """The shipped ``WorkerDown``, unchanged but for a test-sized ``for:``."""
    shipped = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
               if r.get("alert") == "WorkerDown"]
    (rule,) = shipped
    fast = {**rule, "for": "1s", "labels": {**rule["labels"], "variant": "test"}}
    path = directory / "test-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "test-sized", "rules": [fast]}]}))
    return path


@pytest.fixture
def prometheus(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[
        Callable[[int], Prometheus]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run scripts/ensure-promtool.sh "
                    "(installs the Debian package 'prometheus')")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> Prometheus:
        port = devbroker.free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "1s"},
            "rule_files": [str(ALERTS), str(fast_rule_file(tmp_path))],
            "scrape_configs": [{"job_name": JOB, "static_configs": [
                {"targets": [f"127.0.0.1:{target_port}"]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"

        def is_ready() -> bool:
            with urllib.request.urlopen(url + "/-/ready", timeout=2) as r:
                return r.status == 200
        wait_until("Prometheus to start", is_ready, 30)
        return Prometheus(url)

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def panel_queries() -> list[str]:
    out = []
    for expr in dashboard_exprs():
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        out.append(expr)
    return out


def produce_live(bootstrap: str, topic: str) -> None:
    """A few messages stamped "now" (one not JSON): the outcome latency histogram only
    counts live traffic, and the bad-message panel needs a bad message."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, **default_client())
        await p.start()
        try:
            for i in range(4):
                await p.send_and_wait(topic, b"not json" if i == 0 else json.dumps({
                    "txn_id": f"live-{i}", "operator_id": "paypay", "mykey_id": "LIVE0001",
                    "kind": "purchase", "amount": 1000,
                    "occurred_at": "2020-10-01T00:00:00Z"}).encode(), key=b"LIVE0001")
        finally:
            await p.stop()
    asyncio.run(go())


def test_dashboard_and_alerts_on_a_live_prometheus(
        kafka_broker: devbroker.Broker, topic_prefix: str, tmp_path: Path,
        prometheus: Callable[[int], Prometheus]) -> None:
    t0 = time.monotonic()
    sc = make_scenario(tmp_path / "data", users=150, transactions=1200, seed=11)
    metrics_port = devbroker.free_port()
    w: WorkerProcess = worker(kafka_broker.bootstrap, topic_prefix, tmp_path / "logs")
    w.args += ["--metrics-port", str(metrics_port), "--log-format", "json"]
    w.start()
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        wait_until("the worker to be ready",
                   lambda: get_json(base + "/readyz")[1]["status"] == "ok")
        assert get_json(base + "/healthz") == (200, {"status": "ok", "reason": "alive"})
        prom = prometheus(metrics_port)
        wait_until("the first scrape", lambda: prom.value(f'up{{job="{JOB}"}}') == 1)

        publish(kafka_broker.bootstrap, topic_prefix, sc, tmp_path / "m.parquet", batch=50)
        produce_live(kafka_broker.bootstrap, txn_topic(topics_for(topic_prefix)))
        expected = sc.expected_outcomes + 4
        wait_until("every outcome to be counted",
                   lambda: prom.value("sum(mynapoint_outcomes_total)") >= expected)
        wait_until("the live latencies",
                   lambda: prom.value("sum(mynapoint_outcome_latency_seconds_count)") >= 4)
        time.sleep(2)  # one more scrape, so that every rate() window holds an increase

        queries = panel_queries()
        assert len(queries) >= 20
        empty = [q for q in queries if not prom.query(q)]
        assert not empty, f"panel queries without data: {empty}"
        assert prom.value("sum(mynapoint_points_granted_total)") > 0
        # the runbook's "how to confirm" queries all run (data or not: they look for
        # trouble); query() asserts Prometheus accepted each one
        for q in runbook_queries():
            prom.query(q)
        assert prom.value('sum(mynapoint_bad_messages_total{kind="invalid_json"})') >= 1

        rules = wait_until("every rule to be evaluated", lambda: (
            rs := prom.rules()) and all(r["lastEvaluation"] > "2000" for r in rs) and rs)
        shipped = yaml.safe_load(ALERTS.read_text())
        n_shipped = sum(len(g["rules"]) for g in shipped["groups"])
        assert len(rules) == n_shipped + 1
        unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
        assert not unhealthy
        assert not [a for a in prom.alerts() if a["state"] == "firing"]
    finally:
        w.stop()

    def down_fired() -> list[dict[str, Any]]:
        return [a for a in prom.alerts() if a["labels"]["alertname"] == "WorkerDown"
                and a["state"] == "firing"]
    (fired,) = wait_until("WorkerDown to fire", down_fired, 30)
    assert fired["labels"]["variant"] == "test"
    assert fired["labels"]["instance"] == f"127.0.0.1:{metrics_port}"
    assert fired["annotations"]["runbook_url"] == "docs/RUNBOOK.md#workerdown"
    # the shipped rule, with its real 2 minutes, is only pending
    shipped_down = [a for a in prom.alerts() if a["labels"]["alertname"] == "WorkerDown"
                    and "variant" not in a["labels"]]
    assert [a["state"] for a in shipped_down] == ["pending"]

    # the worker logged JSON lines, none of them with a record value
    # (stdout and stderr both): one JSON object per line, nothing else
    lines = (tmp_path / "logs" / "w.log").read_text().splitlines()
    docs = [json.loads(ln) for ln in lines]
    assert any("consuming" in d["message"] for d in docs)
    assert any(d["logger"] == "mynapoint.worker" and "partition" in d for d in docs)
    assert all({"time", "level", "logger", "message"} <= set(d) for d in docs)
    assert not re.search(r"LIVE0001", "\n".join(lines))
    assert time.monotonic() - t0 < 110
