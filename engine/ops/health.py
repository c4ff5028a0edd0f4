"""Health endpoints of a worker, served next to ``/metrics`` on its metrics port.

- ``/healthz``: the process is alive and its asyncio event loop responsive. The loop
  ticks :meth:`Readiness.beat` every second (:func:`heartbeat`); the HTTP server runs
  in its own thread, so a loop blocked for longer than :data:`STALL_SECONDS` answers
  503 even though the thread still can.
- ``/readyz``: the worker consumes: it has joined the group, owns partitions, none of
  them is still restoring its state, and the broker answers (:func:`watch_broker`).
  503 with the reason otherwise.

Both answer JSON (``status``, ``reason`` and the details ``mynapoint status`` shows
per worker: assigned and restoring partitions with their restore progress).

The worker advertises where its metrics port is in its Kafka consumer ``client_id``
(:func:`advertised_client_id`), which every member of the consumer group shows, so
that ``mynapoint status`` can find the workers from the broker alone.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

# Longer than any batch or restore step takes on the event loop, so that only a
# stuck loop (not a busy one) fails the liveness probe.
STALL_SECONDS = 30.0
BEAT_SECONDS = 1.0
BROKER_PROBE_SECONDS = 2.0
CLIENT_ID_PREFIX = "mynapoint-worker"
_WILDCARDS = {"", "0.0.0.0", "::"}


class _QuietHandler(WSGIRequestHandler):
    # a probe every few seconds would flood stderr with access lines
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Readiness:
    """What ``/healthz`` and ``/readyz`` report. The worker's event loop updates it;
    the HTTP thread reads it, hence the lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._started = False
        self._broker_error: str | None = None
        self._assigned: set[int] = set()
        self._restoring: dict[int, int | None] = {}  # partition -> records left, if known
        self._refused: dict[int, str] = {}
        self._last_beat = clock()

    # -- updates from the worker ------------------------------------------------------

    def started(self) -> None:
        """The consumer has started and subscribed."""
        with self._lock:
            self._started = True

    def beat(self) -> None:
        with self._lock:
            self._last_beat = self._clock()

    def broker(self, error: str | None) -> None:
        """``None``: the broker answered; else why it did not."""
        with self._lock:
            self._broker_error = error

    def assign(self, partitions: Iterable[int]) -> None:
        """These partitions are now this worker's."""
        with self._lock:
            self._assigned.update(partitions)

    def release(self, partitions: Iterable[int]) -> None:
        """These partitions are no longer this worker's (revoked, lost)."""
        with self._lock:
            for p in partitions:
                self._assigned.discard(p)
                self._restoring.pop(p, None)
                self._refused.pop(p, None)

    def restoring(self, partition: int, remaining: int | None = None) -> None:
        """Partition ``partition`` restores its state; ``remaining`` changelog records
        are left to read (``None``: not known yet)."""
        with self._lock:
            self._restoring[partition] = remaining

    def restored(self, partition: int) -> None:
        with self._lock:
            self._restoring.pop(partition, None)

    def refuse(self, partition: int, why: str) -> None:
        """The worker will not decide ``partition`` (its state cannot be trusted)."""
        with self._lock:
            self._restoring.pop(partition, None)
            self._refused[partition] = why

    # -- what the endpoints answer ----------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "assigned": sorted(self._assigned),
                "restoring": {str(p): {"remaining": n}
                              for p, n in sorted(self._restoring.items())},
                "refused": {str(p): why for p, why in sorted(self._refused.items())},
                "broker": self._broker_error is None,
            }

    def live(self) -> tuple[bool, str]:
        with self._lock:
            stalled = self._clock() - self._last_beat
        if stalled > STALL_SECONDS:
            return False, f"event loop unresponsive for {stalled:.0f} s"
        return True, "alive"

    def ready(self) -> tuple[bool, str]:
        with self._lock:
            if not self._started:
                return False, "starting: not yet consuming"
            if self._broker_error is not None:
                return False, f"broker unreachable: {self._broker_error}"
            if self._refused:
                p, why = min(self._refused.items())
                return False, f"partition {p} refused: {why}"
            if self._restoring:
                parts = ", ".join(str(p) for p in sorted(self._restoring))
                return False, f"restoring state of partitions {parts}"
            if not self._assigned:
                return False, "no partitions assigned"
        return self.live()


async def heartbeat(readiness: Readiness, interval: float = BEAT_SECONDS) -> None:
    """Prove the event loop runs: a tick per ``interval`` until cancelled."""
    while True:
        readiness.beat()
        await asyncio.sleep(interval)


async def watch_broker(readiness: Readiness, probe: Callable[[], Awaitable[Any]],
                       interval: float = BROKER_PROBE_SECONDS, timeout: float = 5.0,
                       on_change: Callable[[bool], None] | None = None) -> None:
    """Ask the broker for metadata every ``interval``; a probe that fails or takes
    longer than ``timeout`` marks the broker unreachable until one succeeds.
    ``on_change(reachable)`` is called when that flips (the worker's ``up`` gauge).

    A consumer whose broker is gone does not fail: its polls just return nothing.
    Without this probe a worker that lost the broker would look ready."""
    reachable = True
    while True:
        try:
            await asyncio.wait_for(probe(), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # any failure means "not reachable", whatever its type
            readiness.broker(describe_error(e))
            now = False
        else:
            readiness.broker(None)
            now = True
        if now != reachable and on_change is not None:
            on_change(now)
        reachable = now
        await asyncio.sleep(interval)


def describe_error(e: BaseException) -> str:
    """``Type: message`` in one bounded line (aiokafka's messages already start with
    their type).

    >>> describe_error(OSError("refused")), describe_error(TimeoutError())
    ('OSError: refused', 'TimeoutError')
    """
    text, name = " ".join(str(e).split()), type(e).__name__
    if not text:
        return name
    return (text if text.startswith(name) else f"{name}: {text}")[:300]


def _json(start_response: Callable[..., Any], ok: bool, body: dict[str, Any]) -> list[bytes]:
    start_response("200 OK" if ok else "503 Service Unavailable",
                   [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
    return [orjson.dumps(body) + b"\n"]


def make_app(registry: CollectorRegistry, readiness: Readiness | None) -> Callable[..., Any]:
    """A WSGI app: ``/metrics`` (and ``/``) from ``registry``; ``/healthz`` and
    ``/readyz`` from ``readiness`` when given."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if readiness is not None and path in ("/healthz", "/readyz"):
            ok, reason = readiness.live() if path == "/healthz" else readiness.ready()
            body = {"status": "ok" if ok else ("unhealthy" if path == "/healthz"
                                               else "not ready"),
                    "reason": reason}
            if path == "/readyz":
                body.update(readiness.snapshot())
            return _json(start_response, ok, body)
        return metrics(environ, start_response)

    return app


def serve(registry: CollectorRegistry, port: int, addr: str,
          readiness: Readiness | None = None) -> WSGIServer:
    """Serve :func:`make_app` over HTTP in a daemon thread; returns the server
    (``server.server_port`` is the bound port, ``server.shutdown()`` stops it)."""

    class Server(ThreadingWSGIServer):
        # IPv6 literals need the other address family
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

    httpd = make_server(addr, port, make_app(registry, readiness), Server,
                        handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True,
                     name="mynapoint-metrics").start()
    return httpd


def advertised_client_id(addr: str, port: int) -> str:
    """The Kafka ``client_id`` through which a worker tells ``mynapoint status`` where
    its metrics port is: ``mynapoint-worker@<host>:<port>``. A wildcard bind address
    leaves ``<host>`` empty: status then uses the address the broker sees the worker
    at. Without a metrics port it is just ``mynapoint-worker``.

    >>> advertised_client_id("127.0.0.1", 9100)
    'mynapoint-worker@127.0.0.1:9100'
    >>> advertised_client_id("0.0.0.0", 9100)
    'mynapoint-worker@:9100'
    >>> advertised_client_id("127.0.0.1", 0)
    'mynapoint-worker'
    """
    if not port:
        return CLIENT_ID_PREFIX
    host = "" if addr in _WILDCARDS else addr
    if ":" in host:
        host = f"[{host}]"
    return f"{CLIENT_ID_PREFIX}@{host}:{port}"


def metrics_address(client_id: str, client_host: str) -> tuple[str, int] | None:
    """Where the worker that joined with ``client_id`` serves its metrics, given the
    address the broker sees it at (``client_host``, e.g. ``/10.0.0.5``); ``None`` if
    the member is not a worker or has no metrics port.

    >>> metrics_address("mynapoint-worker@127.0.0.1:9100", "/10.0.0.5")
    ('127.0.0.1', 9100)
    >>> metrics_address("mynapoint-worker@:9100", "/10.0.0.5")
    ('10.0.0.5', 9100)
    >>> metrics_address("mynapoint-worker", "/10.0.0.5") is None
    True
    """
    prefix = CLIENT_ID_PREFIX + "@"
    if not client_id.startswith(prefix):
        return None
    host, sep, port = client_id[len(prefix):].rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    host = host.strip("[]") or client_host.lstrip("/")
    return (host, int(port)) if host else None
