"""Health endpoints: what /healthz and /readyz answer for each worker state, over real
HTTP, and the probes that drive them."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.metrics import EngineMetrics
from engine.ops import health
from engine.ops.health import Readiness
from tests.ops.http import get_json


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served() -> Iterator[tuple[str, Readiness, Clock]]:
    clock = Clock()
    ready = Readiness(clock)
    m = EngineMetrics()
    m.set_up(True)
    server = m.serve(0, addr="127.0.0.1", readiness=ready)
    try:
        yield f"http://127.0.0.1:{server.server_port}", ready, clock
    finally:
        server.shutdown()
        server.server_close()


def test_readiness_walks_through_the_worker_lifecycle(served) -> None:
    url, ready, _ = served
    code, body = get_json(url + "/readyz")
    assert (code, body["status"]) == (503, "not ready")
    assert body["reason"].startswith("starting")
    ready.started()
    code, body = get_json(url + "/readyz")
    assert (code, body["reason"]) == (503, "no partitions assigned")
    ready.assign({3, 5})
    ready.restoring(3)
    code, body = get_json(url + "/readyz")
    assert code == 503 and body["reason"] == "restoring state of partitions 3"
    assert body["restoring"] == {"3": {"remaining": None}}
    ready.restoring(3, 600)
    code, body = get_json(url + "/readyz")
    assert body["restoring"] == {"3": {"remaining": 600}}
    assert body["assigned"] == [3, 5]
    ready.restored(3)
    code, body = get_json(url + "/readyz")
    assert (code, body["status"], body["restoring"]) == (200, "ok", {})
    ready.broker("KafkaConnectionError: Unable to bootstrap")
    code, body = get_json(url + "/readyz")
    assert code == 503 and body["reason"].startswith("broker unreachable: KafkaConnection")
    assert body["broker"] is False
    ready.broker(None)
    assert get_json(url + "/readyz")[0] == 200
    # a refused partition is decided by nobody: not ready, with the worker's reason
    ready.refuse(5, "changelog lost")
    code, body = get_json(url + "/readyz")
    assert (code, body["reason"]) == (503, "partition 5 refused: changelog lost")
    assert body["refused"] == {"5": "changelog lost"}
    # partitions that leave take their restore and refusal with them
    ready.restoring(9, 1)
    ready.assign({9})
    ready.release({5, 9})
    code, body = get_json(url + "/readyz")
    assert (code, body["assigned"], body["restoring"], body["refused"]) == (200, [3], {}, {})
    ready.release({3})
    assert get_json(url + "/readyz")[1]["reason"] == "no partitions assigned"


def test_liveness_follows_the_event_loop_heartbeat(served) -> None:
    url, ready, clock = served
    assert get_json(url + "/healthz") == (200, {"status": "ok", "reason": "alive"})
    clock.now += health.STALL_SECONDS + 1
    code, body = get_json(url + "/healthz")
    assert code == 503 and body["status"] == "unhealthy"
    assert "event loop unresponsive" in body["reason"]
    # a stuck loop is not ready either, even with everything else fine
    ready.started()
    ready.assign({0})
    assert get_json(url + "/readyz")[0] == 503
    ready.beat()
    assert get_json(url + "/healthz")[0] == 200
    assert get_json(url + "/readyz")[0] == 200


def test_metrics_still_served_next_to_the_health_endpoints(served) -> None:
    url, _, _ = served
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        assert "mynapoint_worker_up 1.0" in r.read().decode()


def test_without_readiness_health_paths_are_not_answered() -> None:
    m = EngineMetrics()
    server = m.serve(0, addr="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/healthz",
                                    timeout=5) as r:
            assert "mynapoint_worker_up" in r.read().decode()  # the metrics app answers
    finally:
        server.shutdown()
        server.server_close()


def test_heartbeat_and_broker_watch_drive_readiness() -> None:
    clock = Clock()
    ready = Readiness(clock)
    ready.started()
    ready.assign({1})
    answers = [OSError("connection refused"), None, TimeoutError()]

    async def probe() -> None:
        a = answers.pop(0) if answers else None
        if isinstance(a, TimeoutError):
            await asyncio.sleep(10)  # slower than the watch's timeout
        elif a is not None:
            raise a

    async def until(expected: tuple[bool, str]) -> tuple[bool, str]:
        for _ in range(500):  # polls, so that a slow machine only takes longer
            if ready.ready() == expected:
                break
            await asyncio.sleep(0.01)
        return ready.ready()

    async def scenario() -> list[tuple[bool, str]]:
        clock.now += 100  # stale until the heartbeat runs
        beat = asyncio.create_task(health.heartbeat(ready, interval=0.01))
        watch = asyncio.create_task(health.watch_broker(ready, probe, interval=0.02,
                                                        timeout=0.2))
        seen = [await until((False, "broker unreachable: OSError: connection refused")),
                await until((True, "alive")),
                await until((False, "broker unreachable: TimeoutError")),
                await until((True, "alive"))]
        beat.cancel()
        watch.cancel()
        return seen

    seen = asyncio.run(scenario())
    assert seen == [(False, "broker unreachable: OSError: connection refused"),
                    (True, "alive"), (False, "broker unreachable: TimeoutError"),
                    (True, "alive")]
    assert not answers


@given(host=st.sampled_from(["127.0.0.1", "10.1.2.3", "worker-1.example", "::1"]),
       port=st.integers(1, 65535), seen_at=st.sampled_from(["/10.9.8.7", "/127.0.0.1"]))
def test_advertised_address_round_trips(host: str, port: int, seen_at: str) -> None:
    cid = health.advertised_client_id(host, port)
    assert health.metrics_address(cid, seen_at) == (host, port)
    # a wildcard bind is reached at the address the broker sees
    wild = health.advertised_client_id("0.0.0.0", port)
    assert health.metrics_address(wild, seen_at) == (seen_at.lstrip("/"), port)


@pytest.mark.parametrize("client_id", ["aiokafka-0.14", "mynapoint-worker",
                                       "mynapoint-worker@host:", "mynapoint-worker@h:0",
                                       "mynapoint-worker@h:99999", "mynapoint-worker@h:x"])
def test_members_without_a_usable_metrics_address(client_id: str) -> None:
    assert health.metrics_address(client_id, "/10.0.0.1") is None
