"""The command line as a first-time operator meets it: help texts, and a clean one-line
error when the broker is not there."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import KAFKA_ACTIONS, build_parser
from engine.devtools.broker import free_port as closed_port  # nothing listens there

ROOT = Path(__file__).resolve().parent.parent


def mynapoint(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_top_level_help_is_for_users() -> None:
    r = mynapoint("--help")
    assert r.returncode == 0
    assert "Argument parsing" not in r.stdout and "imports its" not in r.stdout
    assert "Mynapoint settlement engine" in r.stdout
    for command in ("generate", "settle", "kafka", "worker", "publish", "collect",
                    "status", "admin", "demo"):
        assert f"    {command}" in r.stdout, command
    assert "Exit codes" in r.stdout


def test_kafka_help_describes_every_action() -> None:
    out = mynapoint("kafka", "--help").stdout
    for action, text in KAFKA_ACTIONS.items():
        assert f"  {action:<14}{text}" in out
    # every option is explained too, not just named
    assert re.search(r"^  --port PORT {2,}\S", out, re.M), out


def test_collect_waits_longer_than_a_worker_takes_to_end_the_last_waits() -> None:
    """With the defaults, ``collect --expect`` outlasts the worker's quiet period, after
    which the last waits of a finished input end (DECISIONS 112)."""
    p = build_parser()
    collect = p.parse_args(["collect", "--out", "o", "--expect", "1"])
    assert collect.timeout > p.parse_args(["worker"]).quiet_seconds + 10


def test_collect_timeout_help_says_what_it_does() -> None:
    help_text = " ".join(mynapoint("collect", "--help").stdout.split())
    assert "idle seconds" not in help_text
    assert "with --expect: give up after this many seconds in which no message arrived" \
        in help_text
    assert "Without --expect collect stops at the current end of the topics" in help_text


def test_worker_log_format_option() -> None:
    p = build_parser()
    assert p.parse_args(["worker"]).log_format == "text"
    assert p.parse_args(["worker", "--log-format", "json"]).log_format == "json"
    with pytest.raises(SystemExit):
        p.parse_args(["worker", "--log-format", "xml"])


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_worker_without_broker_exits_2_with_one_line(tmp_path: Path, fmt: str) -> None:
    port = closed_port()
    t0 = time.monotonic()
    r = mynapoint("worker", "--broker", f"127.0.0.1:{port}", "--state-dir",
                  str(tmp_path / "state"), "--log-format", fmt)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"mynapoint worker: cannot start on the Kafka broker at "
                               f"127.0.0.1:{port}")
    assert "Unable to bootstrap" in lines[0]
    assert r.stdout == ""
    assert time.monotonic() - t0 < 30


def test_status_without_broker_exits_2_with_one_line() -> None:
    port = closed_port()
    for extra in ([], ["--json"]):
        r = mynapoint("status", "--broker", f"127.0.0.1:{port}", *extra)
        assert r.returncode == 2
        assert "Traceback" not in r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"mynapoint status: cannot reach the Kafka broker at "
                               f"127.0.0.1:{port}")
        if extra:  # a script reading --json gets the verdict too
            doc = json.loads(r.stdout)
            assert (doc["verdict"], doc["exit_code"]) == ("down", 2)
            assert doc["error"] == line.removeprefix("mynapoint status: ")
        else:
            assert r.stdout == ""


def test_status_with_unusable_client_config_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "client.properties"
    f.write_text("security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nsasl.password=topsecret\n")
    r = mynapoint("status", "--client-config", str(f))
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert str(f) in line and "user name and password" in line
    assert "topsecret" not in r.stderr + r.stdout


def test_worker_with_metrics_port_taken_exits_2_with_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = mynapoint("worker", "--broker", f"127.0.0.1:{closed_port()}", "--state-dir",
                      str(tmp_path / "state"), "--metrics-port", str(port))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line == f"mynapoint worker: cannot serve metrics on port {port}: " \
                   "Address already in use"


@pytest.mark.parametrize("action", ["rebuild-state", "accept-loss"])
def test_admin_without_broker_exits_2_with_one_line(action: str) -> None:
    port = closed_port()
    r = mynapoint("admin", action, "--broker", f"127.0.0.1:{port}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"mynapoint admin: cannot reach the broker at 127.0.0.1:{port}")
