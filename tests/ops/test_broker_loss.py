"""A worker that loses its broker says so: /readyz answers 503 with the reason and the
``up`` gauge drops to 0 (so ``WorkerDown`` fires), while /healthz stays 200 (the
process is fine; restarting it would not bring the broker back). Uses a broker of
its own, since it is stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.devtools import broker as devbroker
from engine.devtools.worker_process import WorkerProcess
from engine.kafka.client_config import ENV
from tests.ops.http import get, poll

pytestmark = pytest.mark.kafka  # starts a broker of its own (Java)


def test_readyz_reports_a_lost_broker(tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    port = devbroker.free_port()
    broker = devbroker.start(port=port, data_dir=tmp_path / "kafka", wait=120.0)
    monkeypatch.setenv(ENV, str(broker.credentials()))
    metrics = devbroker.free_port()
    w = WorkerProcess(broker.bootstrap, "loss", 2, state_dir=tmp_path / "state",
                      log_path=tmp_path / "w.log", extra=["--metrics-port", str(metrics)])
    base = f"http://127.0.0.1:{metrics}"
    try:
        w.start()
        assert poll(base + "/readyz", 200)["broker"] is True
        assert "mynapoint_worker_up 1.0" in get(base + "/metrics")[1]
        devbroker.stop(port=port, data_dir=tmp_path / "kafka")
        body = poll(base + "/readyz", 503, timeout=30)
        assert body["status"] == "not ready" and body["broker"] is False
        assert body["reason"].startswith("broker unreachable: ")
        assert get(base + "/healthz")[0] == 200
        assert "mynapoint_worker_up 0.0" in get(base + "/metrics")[1]
        assert w.alive
    finally:
        w.stop()
        devbroker.stop(port=port, data_dir=tmp_path / "kafka")
