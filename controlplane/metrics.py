"""Health and metrics over HTTP (off by default; `--metrics 127.0.0.1:9102`).

- `/healthz`: 200 while the loop is alive: it has come round within its resync period
  (plus slack); a wedged loop turns it 503, so a liveness probe restarts the daemon.
- `/readyz`: 200 when the last pass was applied and confirmed by Envoy (or, without an
  admin socket, written without error); 503 otherwise, with the reason.
- `/metrics`: Prometheus text format from the daemon's own registry.

The server runs in one thread that only reads what the loop records; it is shut down and
joined on stop.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controlplane.reconciling import Outcome
from controlplane.settings import Listen

HEALTH_SLACK_S = 30.0
SITE_STATES = ("serving", "serving-last-good", "invalid")


class Metrics:
    """What the loop records, and what the endpoints and Prometheus read."""

    def __init__(self, resync_s: float) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._alive_within = resync_s + HEALTH_SLACK_S
        self._lock = threading.Lock()
        self._heartbeat = time.monotonic()
        self._ready: tuple[bool, str] = (False, "no pass yet")
        self.passes = Counter("controlplane_passes", "Reconciliation passes, by result.",
                              ["result"], registry=self.registry)
        self.sites = Gauge("controlplane_sites", "Sites by state.", ["state"],
                           registry=self.registry)
        self.errors = Counter("controlplane_errors", "Errors by kind.", ["kind"],
                              registry=self.registry)
        self.apply_seconds = Histogram(
            "controlplane_apply_seconds", "Duration of passes that wrote files.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry)
        self.last_success = Gauge("controlplane_last_success_timestamp_seconds",
                                  "When a pass last applied everything (Unix time).",
                                  registry=self.registry)

    def beat(self) -> None:
        """The loop is alive (called every time it comes round)."""
        with self._lock:
            self._heartbeat = time.monotonic()

    def record(self, outcome: Outcome, seconds: float, site_states: dict[str, int]) -> None:
        self.beat()
        failed = bool(outcome.errors or outcome.rejected)
        self.passes.labels("failed" if failed else "applied" if outcome.written
                           else "unchanged").inc()
        for state in SITE_STATES:
            self.sites.labels(state).set(site_states.get(state, 0))
        self._count_errors(outcome)
        if outcome.written:
            self.apply_seconds.observe(seconds)
        if not failed and outcome.confirmed is not False:
            self.last_success.set(time.time())
        with self._lock:
            self._ready = (not failed and outcome.confirmed is not False,
                           "; ".join(outcome.errors + outcome.rejected) or "ok")

    def waiting(self, reason: str) -> None:
        """Not ready, though nothing failed: Envoy is not up yet (start-up, not a fault)."""
        with self._lock:
            self._ready = (False, reason)

    def _count_errors(self, outcome: Outcome) -> None:
        if outcome.problems:
            self.errors.labels("validation").inc(len(outcome.problems))
        if outcome.rejected:
            self.errors.labels("envoy_rejected").inc(len(outcome.rejected))
        for error in outcome.errors:
            kind = ("envoy_timeout" if "did not confirm" in error or "admin" in error
                    else "output" if "cannot" in error else "other")
            self.errors.labels(kind).inc()

    def record_failure(self, kind: str, reason: str) -> None:
        self.beat()
        self.passes.labels("failed").inc()
        self.errors.labels(kind).inc()
        with self._lock:
            self._ready = (False, reason)

    def health(self) -> tuple[bool, str]:
        with self._lock:
            age = time.monotonic() - self._heartbeat
        return age <= self._alive_within, f"loop seen {age:.1f}s ago"

    def readiness(self) -> tuple[bool, str]:
        with self._lock:
            return self._ready


class MetricsServer:
    """The HTTP endpoint in its own thread; `close()` stops and joins it."""

    def __init__(self, listen: Listen, metrics: Metrics) -> None:
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,),
                            {"address_family": family, "daemon_threads": True})
        self._server = server_class((listen.host, listen.port), _handler(metrics))
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        kwargs={"poll_interval": 0.2})
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/readyz"):
                ok, why = metrics.health() if self.path == "/healthz" else metrics.readiness()
                self._send(200 if ok else 503, f"{why}\n".encode(), "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
