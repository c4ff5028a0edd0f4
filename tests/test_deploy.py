"""The docker-compose deployment: files parse, reference what exists, use only metrics the
engine defines, and pass Prometheus' own checks (promtool). Nothing here starts a
container: the compose stack is checked statically."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import javaproperties
import pytest
import yaml

from engine.cli import build_parser
from engine.devtools import broker as devbroker
from engine.devtools import deployment, security
from engine.kafka.client_config import parse_client_config
from engine.kafka.topics import Topics
from engine.metrics import METRIC_NAMES, EngineMetrics

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
GRAFANA = ROOT / "deploy/grafana"
DASHBOARD = GRAFANA / "dashboards/mynapoint.json"
SECRETS = ROOT / "deploy/secrets"

METRIC_RE = re.compile(r"\bmynapoint_[a-z_]+")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def bind_mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """container path -> host path of a service's bind mounts (short syntax)."""
    out = {}
    for v in svc.get("volumes", []):
        src, dst = v.split(":")[:2]
        if src.startswith((".", "/")):
            out[dst] = (COMPOSE.parent / src).resolve()
    return out


def host_path(svc: dict[str, Any], container_path: str) -> Path | None:
    """The host file behind a container path, through the service's bind mounts."""
    target = PurePosixPath(container_path)
    for dst, src in bind_mounts(svc).items():
        d = PurePosixPath(dst)
        if target == d:
            return src
        if d in target.parents:
            return src / target.relative_to(d)
    return None


def exposed_series_names() -> set[str]:
    """Every series name EngineMetrics can expose, as PromQL sees it."""
    names = set()
    for family in EngineMetrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_count", "_sum"))
        else:
            names.add(family.name)
    return names


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "alert" in r]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "secrets"
    deployment.write_secrets(out, ["paypay", "aupay"])
    return out


# -- files parse and reference what exists --------------------------------------------


def test_every_deploy_file_parses() -> None:
    assert compose()["services"]
    for path in [PROMETHEUS, ALERTS, *sorted((GRAFANA / "provisioning").rglob("*.yml"))]:
        assert load_yaml(path), path
    assert json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]


def test_services() -> None:
    assert set(compose()["services"]) == {"kafka", "kafka-acls", "worker", "archiver",
                                          "prometheus", "grafana"}
    # the archive, the system of record for replays, outlives the containers
    archiver = service("archiver")
    assert archiver["command"][:2] == ["archive", "--follow"]
    assert archiver["volumes"][0] == "archive:/var/lib/mynapoint/archive"
    assert "archive" in compose()["volumes"]
    assert service("worker")["environment"]["MYNAPOINT_INPUT_RETENTION"] == "P7D"
    assert service("kafka")["image"] == "apache/kafka:3.9.1"
    assert service("prometheus")["image"].startswith("prom/prometheus:")
    assert service("grafana")["image"].startswith("grafana/grafana:")


def test_every_referenced_file_exists(secrets: Path) -> None:
    """Secrets (deploy/secrets, not in the repository) exist once the deployment's
    generator has run: checked against a freshly generated directory."""
    c = compose()
    for name, svc in c["services"].items():
        build = svc.get("build")
        if build:
            context = COMPOSE.parent / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        for dst, src in bind_mounts(svc).items():
            if SECRETS in (src, *src.parents):
                src = secrets / src.relative_to(SECRETS)
            assert src.exists(), f"{name}: {src} (mounted at {dst}) does not exist"
        for v in svc.get("volumes", []):
            src = v.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in c.get("volumes", {}), f"{name}: undeclared volume {src}"
        for dep in svc.get("depends_on", []):
            assert dep in c["services"], f"{name} depends on unknown {dep}"


def test_dockerfile() -> None:
    lines = [ln.strip() for ln in DOCKERFILE.read_text(encoding="utf-8").splitlines()]
    assert "FROM python:3.11-slim" in lines
    for ln in lines:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    assert any(re.match(r"RUN pip install \.(\s|$)", ln) for ln in lines)
    assert "ENV MYNAPOINT_METRICS_ADDR=0.0.0.0" in lines
    assert 'ENTRYPOINT ["mynapoint"]' in lines


def server_properties() -> dict[str, str]:
    return javaproperties.loads((ROOT / "deploy/kafka/server.properties").read_text())


def test_kafka_is_a_single_kraft_node() -> None:
    props = server_properties()
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.voters"] == f"{props['node.id']}@127.0.0.1:9093"
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", service("kafka")["environment"]["CLUSTER_ID"])
    listeners = dict(item.split("://") for item in props["listeners"].split(","))
    protocols = dict(item.split(":") for item in
                     props["listener.security.protocol.map"].split(","))
    assert set(listeners) == set(protocols)
    assert props["controller.listener.names"] in listeners
    assert props["inter.broker.listener.name"] in listeners
    advertised = dict(item.split("://") for item in props["advertised.listeners"].split(","))
    assert advertised[props["inter.broker.listener.name"]] == "kafka:9092"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr"):
        assert props[key] == "1", key
    # host ports only on loopback
    for svc in compose()["services"].values():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port


def test_kafka_treats_business_time_as_the_local_broker_does() -> None:
    # Records carry business time as their timestamps: the local broker rolls segments
    # by size only (a replay would roll one per append otherwise) and keeps idempotent
    # producers the longest Kafka allows (a shorter expiry doubles a retried batch of
    # a late backlog across a restart: tests/devtools/test_broker_idempotence.py).
    local = javaproperties.loads(devbroker._server_properties(Path("/data"), 9092, 9093, "pw"))
    compose_props = server_properties()
    for key in ("log.roll.ms", "producer.id.expiration.ms"):
        assert compose_props.get(key) == local[key], key
    assert local["producer.id.expiration.ms"] == str(devbroker.PRODUCER_ID_EXPIRATION_MS)


def test_worker_command_is_a_valid_cli_call_and_scalable() -> None:
    w = service("worker")
    args = build_parser().parse_args(w["command"])
    assert args.command == "worker"
    assert args.broker == "kafka:9092"
    assert args.metrics_port == 9100
    # `docker compose up --scale worker=N` needs these absent
    assert "container_name" not in w and "ports" not in w
    assert service("kafka")["healthcheck"]
    assert w["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert w["depends_on"]["kafka-acls"]["condition"] == "service_completed_successfully"
    # the image's default command is the same call
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd and json.loads(cmd.group(1)) == w["command"]


def test_prometheus_scrapes_every_worker_replica() -> None:
    cfg = load_yaml(PROMETHEUS)
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "mynapoint-worker"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    assert sd["port"] == build_parser().parse_args(service("worker")["command"]).metrics_port
    prom = service("prometheus")
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_in_container = config_arg.split("=", 1)[1]
    assert host_path(prom, config_in_container) == PROMETHEUS.resolve()
    # rule files are resolved against the config file's directory, in the container
    for rule_file in cfg["rule_files"]:
        in_container = PurePosixPath(config_in_container).parent / rule_file
        assert host_path(prom, str(in_container)) == (PROMETHEUS.parent / rule_file).resolve()


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    graf = service("grafana")
    prov = host_path(graf, "/etc/grafana/provisioning")
    assert prov == (GRAFANA / "provisioning").resolve()
    (provider,) = load_yaml(prov / "dashboards/mynapoint.yml")["providers"]
    dash_dir = host_path(graf, provider["options"]["path"])
    assert dash_dir is not None and (dash_dir / "mynapoint.json").is_file()
    (ds,) = load_yaml(prov / "datasources/prometheus.yml")["datasources"]
    assert ds["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    uids = {p["datasource"]["uid"] for p in dash["panels"]}
    uids |= {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert uids == {ds["uid"]}
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(graf, home) == DASHBOARD.resolve()


# -- metric names ---------------------------------------------------------------------


def test_exposed_names_cover_every_metric() -> None:
    names = exposed_series_names()
    for metric in METRIC_NAMES:
        assert metric in names or metric + "_bucket" in names, metric


def test_alerts_use_only_defined_metrics() -> None:
    defined = exposed_series_names()
    used = {m for r in alert_rules() for m in METRIC_RE.findall(r["expr"])}
    assert used and used <= defined, used - defined


def test_dashboard_uses_only_defined_metrics_and_all_of_them() -> None:
    defined = exposed_series_names()
    used = {m for e in dashboard_exprs() for m in METRIC_RE.findall(e)}
    assert used <= defined, used - defined
    base = {re.sub(r"_(bucket|count|sum)$", "", m) for m in used}
    assert set(METRIC_NAMES) <= base, set(METRIC_NAMES) - base


def test_required_alerts_and_panels() -> None:
    assert {r["alert"] for r in alert_rules()} >= {
        "WorkerDown", "ConsumerLagGrowing", "HighRejectionRatio", "ParkedRecordsGrowing",
        "OutcomeLatencyHigh"}
    for r in alert_rules():
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]
    titles = [p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    for wanted in ("Records/s by topic", "Outcomes/s by outcome", "Rejection ratio",
                   "Points granted", "Batch latency", "Outcome latency", "Consumer lag",
                   "Parked records", "Workers up"):
        assert any(t.startswith(wanted) for t in titles), wanted
    exprs = "\n".join(dashboard_exprs())
    assert "histogram_quantile(0.5, sum by (le) (rate(mynapoint_batch_seconds_bucket" in exprs
    assert "histogram_quantile(0.99, sum by (le) (rate(mynapoint_batch_seconds_bucket" in exprs
    assert "histogram_quantile(0.99, sum by (le) (rate(mynapoint_outcome_latency_seconds" \
        in exprs


# -- promtool -------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run scripts/ensure-promtool.sh "
                    "(installs the Debian package 'prometheus')")
    return path


def run(cmd: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


def test_promtool_check_config() -> None:
    r = run([promtool(), "check", "config", str(PROMETHEUS)])
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_check_rules() -> None:
    r = run([promtool(), "check", "rules", str(ALERTS)])
    assert r.returncode == 0, r.stdout + r.stderr


# Alert behaviour on synthetic series. The annotations are stripped from a copy of the
# rules (promtool compares them verbatim); `check rules` above validates their templates.
ALERT_TESTS = """
- interval: 1m
  input_series:
    - series: 'up{job="mynapoint-worker", instance="w1:9100"}'
      values: '1 1 0 0 0 0 0 0'
    - series: 'up{job="mynapoint-worker", instance="w2:9100"}'
      values: '1 1 1 1 1 1 1 1'
    - series: 'mynapoint_worker_up{job="mynapoint-worker", instance="w2:9100"}'
      values: '1 1 1 1 1 1 1 1'
  alert_rule_test:
    - eval_time: 3m
      alertname: WorkerDown
      exp_alerts: []
    - eval_time: 6m
      alertname: WorkerDown
      exp_alerts:
        - exp_labels: {severity: critical, job: mynapoint-worker, instance: "w1:9100"}
    - eval_time: 6m
      alertname: NoWorkerRunning
      exp_alerts: []
- interval: 1m
  input_series:
    - series: 'up{job="mynapoint-worker", instance="w1:9100"}'
      values: '1 1 1 1 1 1 1 1'
    - series: 'mynapoint_worker_up{job="mynapoint-worker", instance="w1:9100"}'
      values: '0 0 0 0 0 0 0 0'
  alert_rule_test:
    - eval_time: 6m
      alertname: WorkerDown
      exp_alerts:
        - exp_labels: {severity: critical, job: mynapoint-worker, instance: "w1:9100"}
- interval: 1m
  input_series:
    - series: 'up{job="mynapoint-worker", instance="w1:9100"}'
      values: '1 1 stale'
  alert_rule_test:
    - eval_time: 6m
      alertname: NoWorkerRunning
      exp_alerts:
        - exp_labels: {severity: critical}
- interval: 1m
  input_series:
    - series: 'mynapoint_consumer_lag{topic="mynapoint.transactions", partition="0", instance="w1"}'
      values: '150000+1000x30'
    - series: 'mynapoint_consumer_lag{topic="mynapoint.enrollments", partition="0", instance="w1"}'
      values: '150000+0x30'
  alert_rule_test:
    - eval_time: 3m
      alertname: ConsumerLagGrowing
      exp_alerts: []
    - eval_time: 15m
      alertname: ConsumerLagGrowing
      exp_alerts:
        - exp_labels: {severity: warning, topic: mynapoint.transactions}
- interval: 1m
  input_series:
    - series: 'mynapoint_outcomes_total{record_type="transaction", outcome="accepted"}'
      values: '0+70x40'
    - series: 'mynapoint_outcomes_total{record_type="transaction", outcome="NOT_ENROLLED"}'
      values: '0+30x40'
    - series: 'mynapoint_outcomes_total{record_type="enrollment", outcome="accepted"}'
      values: '0+95x40'
    - series: 'mynapoint_outcomes_total{record_type="enrollment", outcome="MALFORMED"}'
      values: '0+5x40'
  alert_rule_test:
    - eval_time: 30m
      alertname: HighRejectionRatio
      exp_alerts:
        - exp_labels: {severity: warning, record_type: transaction}
- interval: 1m
  input_series:
    - series: 'mynapoint_parked_records{partition="0", instance="w1"}'
      values: '20000+100x90'
    - series: 'mynapoint_parked_records{partition="1", instance="w1"}'
      values: '5000+0x90'
  alert_rule_test:
    - eval_time: 20m
      alertname: ParkedRecordsGrowing
      exp_alerts: []
    - eval_time: 75m
      alertname: ParkedRecordsGrowing
      exp_alerts:
        - exp_labels: {severity: warning}
- interval: 1m
  input_series:
    - series: 'mynapoint_parked_records{partition="0", instance="w1"}'
      values: '20000+0x90'
  alert_rule_test:
    - eval_time: 75m
      alertname: ParkedRecordsGrowing
      exp_alerts: []
- interval: 1m
  input_series:
    - series: 'mynapoint_outcome_latency_seconds_bucket{le="0.5", instance="w1"}'
      values: '0+900x30'
    - series: 'mynapoint_outcome_latency_seconds_bucket{le="1.0", instance="w1"}'
      values: '0+900x30'
    - series: 'mynapoint_outcome_latency_seconds_bucket{le="2.5", instance="w1"}'
      values: '0+1000x30'
    - series: 'mynapoint_outcome_latency_seconds_bucket{le="+Inf", instance="w1"}'
      values: '0+1000x30'
  alert_rule_test:
    - eval_time: 3m
      alertname: OutcomeLatencyHigh
      exp_alerts: []
    - eval_time: 15m
      alertname: OutcomeLatencyHigh
      exp_alerts:
        - exp_labels: {severity: warning}
- interval: 1m
  input_series:
    - series: 'mynapoint_consumer_lag{topic="mynapoint.enrollments", partition="0", instance="w1"}'
      values: '500x20'
    - series: 'mynapoint_batch_records_count{instance="w1"}'
      values: '0+10x5 50x15'
    - series: 'mynapoint_consumer_lag{topic="mynapoint.enrollments", partition="1", instance="w2"}'
      values: '500x20'
    - series: 'mynapoint_batch_records_count{instance="w2"}'
      values: '0+10x20'
    - series: 'mynapoint_consumer_lag{topic="mynapoint.enrollments", partition="2", instance="w3"}'
      values: '0x20'
    - series: 'mynapoint_batch_records_count{instance="w3"}'
      values: '0x20'
  alert_rule_test:
    - eval_time: 8m
      alertname: DecisionsStalled
      exp_alerts: []
    - eval_time: 16m
      alertname: DecisionsStalled
      exp_alerts:
        - exp_labels: {severity: critical, instance: w1}
# SLO burn rates. 20 % of records later than 5 s: the fast burn pages within minutes.
- interval: 1m
  input_series:
    - series: 'mynapoint_outcome_latency_seconds_bucket{le="5.0", instance="w1"}'
      values: '0+80x70'
    - series: 'mynapoint_outcome_latency_seconds_count{instance="w1"}'
      values: '0+100x70'
  alert_rule_test:
    - eval_time: 65m
      alertname: DecisionLatencyBudgetFastBurn
      exp_alerts:
        - exp_labels: {severity: critical, slo: decision-latency}
# 0.5 % late: inside the objective, neither alert fires even after days.
- interval: 10m
  input_series:
    - series: 'mynapoint_outcome_latency_seconds_bucket{le="5.0", instance="w1"}'
      values: '0+9950x500'
    - series: 'mynapoint_outcome_latency_seconds_count{instance="w1"}'
      values: '0+10000x500'
  alert_rule_test:
    - eval_time: 80h
      alertname: DecisionLatencyBudgetFastBurn
      exp_alerts: []
    - eval_time: 80h
      alertname: DecisionLatencyBudgetSlowBurn
      exp_alerts: []
# 4 % late for a day: too little to page (< 6x), enough for a ticket (> 3x over 1 d).
- interval: 10m
  input_series:
    - series: 'mynapoint_outcome_latency_seconds_bucket{le="5.0", instance="w1"}'
      values: '0+9600x200'
    - series: 'mynapoint_outcome_latency_seconds_count{instance="w1"}'
      values: '0+10000x200'
  alert_rule_test:
    - eval_time: 20m
      alertname: DecisionLatencyBudgetSlowBurn
      exp_alerts: []
    - eval_time: 26h
      alertname: DecisionLatencyBudgetFastBurn
      exp_alerts: []
    - eval_time: 26h
      alertname: DecisionLatencyBudgetSlowBurn
      exp_alerts:
        - exp_labels: {severity: warning, slo: decision-latency}
# A short spike (10 min at 50 %) after hours of good traffic: the 1 h window stays under
# 14.4x and nothing pages, though the 5 m window alone would.
- interval: 1m
  input_series:
    - series: 'mynapoint_outcome_latency_seconds_bucket{le="5.0", instance="w1"}'
      values: '0+1000x300 300000+500x10 305000+1000x20'
    - series: 'mynapoint_outcome_latency_seconds_count{instance="w1"}'
      values: '0+1000x300 301000+1000x10 311000+1000x20'
  alert_rule_test:
    - eval_time: 308m
      alertname: DecisionLatencyBudgetFastBurn
      exp_alerts: []
- interval: 1m
  input_series:
    - series: 'mynapoint_outcome_latency_seconds_bucket{le="0.5", instance="w1"}'
      values: '0+995x30'
    - series: 'mynapoint_outcome_latency_seconds_bucket{le="1.0", instance="w1"}'
      values: '0+1000x30'
    - series: 'mynapoint_outcome_latency_seconds_bucket{le="+Inf", instance="w1"}'
      values: '0+1000x30'
  alert_rule_test:
    - eval_time: 15m
      alertname: OutcomeLatencyHigh
      exp_alerts: []
# One operator's records claim another operator: a ticket while the 10 min window holds
# them, none for the operator with none, none once the window has passed.
- interval: 1m
  input_series:
    - series: 'mynapoint_operator_mismatches_total{operator="paypay", instance="w1"}'
      values: '0 0 0 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3'
    - series: 'mynapoint_operator_mismatches_total{operator="aupay", instance="w1"}'
      values: '0x17'
  alert_rule_test:
    - eval_time: 2m
      alertname: OperatorMismatch
      exp_alerts: []
    - eval_time: 5m
      alertname: OperatorMismatch
      exp_alerts:
        - exp_labels: {severity: warning, operator: paypay}
    - eval_time: 16m
      alertname: OperatorMismatch
      exp_alerts: []
# A refused partition pages after a minute, for that partition only, and clears once
# an operator's rebuild (or accepted loss) lets the worker decide it again.
- interval: 1m
  input_series:
    - series: 'mynapoint_partition_refused{partition="3", instance="w1"}'
      values: '0 0 1 1 1 1 1 0 0 0'
    - series: 'mynapoint_partition_refused{partition="4", instance="w1"}'
      values: '0x9'
  alert_rule_test:
    - eval_time: 2m
      alertname: PartitionRefused
      exp_alerts: []
    - eval_time: 4m
      alertname: PartitionRefused
      exp_alerts:
        - exp_labels: {severity: critical, partition: "3"}
    - eval_time: 9m
      alertname: PartitionRefused
      exp_alerts: []
# A worker whose password is refused pages at once; one that is not refused does not.
- interval: 1m
  input_series:
    - series: 'mynapoint_kafka_authentication_failures_total{instance="w1"}'
      values: '0 0 0 1 2 3 4 5 6 7 8 9 10'
    - series: 'mynapoint_kafka_authorization_denials_total{instance="w2", resource="group"}'
      values: '0x12'
    - series: 'mynapoint_kafka_authorization_denials_total{instance="w3", resource="topic"}'
      values: '0 0 0 0 0 0 0 0 1 1 1 1 1'
  alert_rule_test:
    - eval_time: 2m
      alertname: KafkaAccessRefused
      exp_alerts: []
    - eval_time: 6m
      alertname: KafkaAccessRefused
      exp_alerts:
        - exp_labels: {severity: critical, instance: w1}
    - eval_time: 10m
      alertname: KafkaAccessRefused
      exp_alerts:
        - exp_labels: {severity: critical, instance: w1}
        - exp_labels: {severity: critical, instance: w3}
"""


def test_every_alert_has_a_promtool_case() -> None:
    """An alert nobody has seen fire (and stay silent) is a claim without a test."""
    tested = {t["alertname"] for case in yaml.safe_load(ALERT_TESTS)
              for t in case["alert_rule_test"]}
    assert {r["alert"] for r in alert_rules()} == tested


def test_promtool_alert_unit_tests(tmp_path: Path) -> None:
    rules = load_yaml(ALERTS)
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    spec = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m",
            "tests": yaml.safe_load(ALERT_TESTS)}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    r = run([promtool(), "test", "rules", "alerts_test.yml"], cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


# `docker compose config` cannot run here (no compose CLI, no engine); the compose
# file is checked statically by the tests above.


# -- runbook, SLO recording rules, health checks --------------------------------------

RUNBOOK = ROOT / "docs/RUNBOOK.md"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """anchor -> text of each '## ' section."""
    text = RUNBOOK.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {github_anchor(h): body for h, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_alert_links_its_runbook_section() -> None:
    sections = runbook_sections()
    rules = alert_rules()
    assert len(rules) >= 9
    for r in rules:
        url = r["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert (ROOT / path).resolve() == RUNBOOK.resolve(), url
        assert anchor == github_anchor(r["alert"]), url
        assert anchor in sections, f"{r['alert']}: no heading for #{anchor}"
        body = sections[anchor]
        for part in ("**Meaning.**", "**Confirm.**", "**Mitigate.**", "**Recover.**"):
            assert part in body, (r["alert"], part)
        assert "```promql" in body, r["alert"]
        assert "Finance" in body or "finance" in body, r["alert"]
    # and no section for an alert that does not exist
    alerts = {github_anchor(r["alert"]) for r in rules}
    assert set(sections) - alerts == {"first-steps-for-any-alert"}


def runbook_queries() -> list[str]:
    """The PromQL of the runbook: one query per line of its ```promql blocks."""
    text = RUNBOOK.read_text(encoding="utf-8")
    blocks = re.findall(r"```promql\n(.*?)```", text, flags=re.S)
    return [q for b in blocks for q in b.strip().splitlines()]


def test_runbook_promql_uses_only_defined_series() -> None:
    blocks = runbook_queries()
    used = {m for b in blocks for m in METRIC_RE.findall(b)}
    assert used and used <= exposed_series_names(), used - exposed_series_names()
    records = {r["record"] for g in load_yaml(ALERTS)["groups"] for r in g["rules"]
               if "record" in r}
    named = {m for b in blocks for m in re.findall(r"\bmynapoint:[a-z0-9_:]+", b)}
    assert named and named <= records, named - records


def test_dashboard_recording_rules_exist() -> None:
    records = {r["record"] for g in load_yaml(ALERTS)["groups"] for r in g["rules"]
               if "record" in r}
    named = {m for e in dashboard_exprs() for m in re.findall(r"\bmynapoint:[a-z0-9_:]+", e)}
    assert named and named <= records, named - records


def test_worker_healthcheck_probes_the_health_endpoints() -> None:
    from engine.ops.health import Readiness, make_app

    test = service("worker")["healthcheck"]["test"]
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)(/\w+)", " ".join(test))
    port = build_parser().parse_args(service("worker")["command"]).metrics_port
    assert {(int(p), path) for p, path in urls} == {(port, "/healthz"), (port, "/readyz")}
    # the engine answers exactly those paths: 200 when ready, 503 before
    ready = Readiness()
    app = make_app(EngineMetrics().registry, ready)

    def call(path: str) -> str:
        status: list[str] = []
        app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda s, h: status.append(s))
        return status[0]

    assert call("/readyz").startswith("503") and call("/healthz").startswith("200")
    ready.started()
    ready.assign({0})
    assert call("/readyz").startswith("200")


# -- SASL_SSL -------------------------------------------------------------------------


def test_kafka_speaks_sasl_ssl_only_and_its_controller_is_private() -> None:
    props = server_properties()
    protocols = dict(item.split(":") for item in
                     props["listener.security.protocol.map"].split(","))
    listeners = dict(item.split("://") for item in props["listeners"].split(","))
    controller = props["controller.listener.names"]
    assert {p for name, p in protocols.items() if name != controller} == {"SASL_SSL"}
    # the ANONYMOUS super user of the PLAINTEXT controller is reachable from nowhere else
    assert protocols[controller] == "PLAINTEXT"
    assert listeners[controller].startswith("127.0.0.1:")
    assert props["sasl.enabled.mechanisms"] == security.MECHANISM
    assert props["super.users"] == security.SUPER_USERS
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    # every secret the broker reads is a mounted file
    for key in ("ssl.keystore.location", "ssl.truststore.location"):
        assert host_path(service("kafka"), props[key]) is not None, key
    assert not [k for k in props if "jaas" in k or "password" in k]


def test_secrets_are_private_and_mounted_only_where_needed(secrets: Path) -> None:
    for f in secrets.rglob("*"):
        if f.is_file() and f.name != "ca.pem":
            assert f.stat().st_mode & 0o077 == 0, f
    mounted = {name: {src.relative_to(SECRETS).as_posix()
                      for src in bind_mounts(svc).values()
                      if SECRETS in (src, *src.parents)}
               for name, svc in compose()["services"].items()}
    assert mounted["kafka"] == {"broker.properties", "scram.args", "tls/broker-keystore.pem",
                                "tls/ca.pem", "credentials/admin.properties"}
    assert mounted["kafka-acls"] == {"acls.args", "tls/ca.pem", "credentials/admin.properties"}
    for name in ("worker", "archiver"):
        assert mounted[name] == {"credentials/engine.properties", "tls/ca.pem"}, name
        env = service(name)["environment"]["MYNAPOINT_CLIENT_CONFIG"]
        assert host_path(service(name), env) == SECRETS / "credentials/engine.properties"
    assert mounted["prometheus"] == mounted["grafana"] == set()
    assert not any("ca-key.pem" in m for ms in mounted.values() for m in ms)


def test_generated_client_files_trust_the_mounted_ca(secrets: Path) -> None:
    for principal in ("admin", "engine", "finance", "paypay"):
        # as the container sees it: the mount point holds the generated directory
        text = (secrets / "credentials" / f"{principal}.properties").read_text()
        kw = parse_client_config(text.replace(str(deployment.MOUNT), str(secrets)))
        assert kw["security_protocol"] == "SASL_SSL"
        assert kw["sasl_plain_username"] == principal
        assert kw["ssl_context"] is not None
    text = (secrets / "credentials/engine.properties").read_text()
    ca = re.search(r"^ssl.truststore.location=(.+)$", text, re.M)
    assert ca and host_path(service("worker"), ca.group(1)) == SECRETS / "tls/ca.pem"
    # operators publish from the host: their file names the CA on the host
    op = (secrets / "credentials/paypay.properties").read_text()
    assert f"ssl.truststore.location={(secrets / 'tls/ca.pem').resolve()}" in op


def test_users_and_acls_are_the_local_brokers(secrets: Path) -> None:
    scram = (secrets / "scram.args").read_text().splitlines()
    users = {re.search(r"name=([^,]+),", v).group(1) for v in scram[1::2]}  # type: ignore[union-attr]
    assert set(scram[0::2]) == {"--add-scram"}
    assert users == set(security.principals(["paypay", "aupay"]))
    lines = (secrets / "acls.args").read_text().splitlines()
    assert [shlex.split(x) for x in lines] == security.acl_plan(Topics(), ["paypay", "aupay"])
    admin = re.search(r'password="([^"]+)"', (secrets / "broker.properties").read_text())
    assert admin and f"password={admin.group(1)}]" in "\n".join(scram)
    # the entrypoint formats with them and passes them in an argument file only
    start = (ROOT / "deploy/kafka/start.sh").read_text()
    assert "scram.args" in start and '"@$args"' in start
