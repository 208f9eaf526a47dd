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

import json
import platform
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from controlplane import __version__
from controlplane.daemon import statuspage
from controlplane.daemon.passes import Outcome
from controlplane.daemon.statusfile import STATUS_FILE, clip_all
from controlplane.envoy.files import Confirmation
from controlplane.errors import OutputError, SiteError
from controlplane.values import Listen

HEALTH_SLACK_S = 30.0
SITE_STATES = ("serving", "serving-last-good", "pending", "invalid")


disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series


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
        self.last_apply_success = Gauge(
            "controlplane_last_apply_success",
            "1 when the last pass applied everything (confirmed by Envoy), else 0.",
            registry=self.registry)
        self._about_the_process()
        self.certificate_expiry = Gauge(
            "controlplane_certificate_expiry_timestamp_seconds",
            "When each serving TLS site's certificate expires (Unix time; judged again at"
            " least every 6 hours).", ["site"], registry=self.registry)
        self.upstream_up = Gauge(
            "controlplane_upstream_up",
            "1 when a serving site's upstream endpoint accepts connections (a socket that is"
            " up) and Envoy, where the site has health checks, finds it healthy; else 0.",
            ["site", "endpoint"], registry=self.registry)
        self._upstream_seen: dict[tuple[str, str], bool] = {}
        self.orders = Counter("controlplane_acme_orders", "ACME orders, by result: issued,"
                              " renewed, invalid (challenge failed), unreachable, timeout,"
                              " rate_limited, refused, terms, unconfirmed, error.", ["result"],
                              registry=self.registry)

    def _about_the_process(self) -> None:
        build = Gauge("controlplane_build_info", "The running version, as a label; always 1.",
                      ["version", "python"], registry=self.registry)
        build.labels(__version__, platform.python_version()).set(1)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, _resident_...

    def order_result(self, result: str) -> None:
        """One ACME order ended (`issued`, `renewed`, or why it failed); any thread."""
        self.orders.labels(result).inc()

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
        succeeded = not failed and outcome.confirmation is not Confirmation.UNCONFIRMED
        if succeeded:
            self.last_success.set(time.time())
        self.last_apply_success.set(1 if succeeded else 0)
        pending = site_states.get("pending", 0)
        with self._lock:
            reasons = "; ".join(clip_all([str(e) for e in outcome.errors + outcome.rejected]))
            if succeeded and pending:  # written, not yet confirmed as running
                reasons = f"{pending} sites pending: Envoy has not confirmed their version"
            self._ready = (succeeded and not pending, reasons or "ok")

    def certificates(self, expiries: dict[str, float]) -> None:
        """One series per serving TLS site; a site that stops being one loses its series."""
        self.certificate_expiry.clear()
        for site, expiry in sorted(expiries.items()):
            self.certificate_expiry.labels(site).set(expiry)

    def upstreams(self, rows: list[tuple[str, str, bool]]) -> None:
        """One series per followed endpoint of each serving site; the rest are dropped."""
        wanted = {(site, endpoint): up for site, endpoint, up in rows}
        for labels in set(self._upstream_seen) - set(wanted):  # never a scrape with none
            self.upstream_up.remove(*labels)
        for labels, up in wanted.items():
            if self._upstream_seen.get(labels) != up:
                self.upstream_up.labels(*labels).set(1 if up else 0)
        self._upstream_seen = wanted

    def waiting(self, reason: str) -> None:
        """Not ready, though nothing failed: Envoy is not up yet (start-up, not a fault)."""
        self.last_apply_success.set(0)
        with self._lock:
            self._ready = (False, reason)

    def _count_errors(self, outcome: Outcome) -> None:
        """One count per error, under the kind its class carries."""
        if outcome.problems:
            self.errors.labels(SiteError.kind).inc(len(outcome.problems))
        for error in outcome.rejected + outcome.errors:
            self.errors.labels(error.kind).inc()

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


def open_server(listen: Listen | None, metrics: Metrics,
                state_dir: Path | None) -> MetricsServer | None:
    """The endpoint at `listen` (the `metrics` setting; None: off)."""
    if listen is None:
        return None
    try:
        return MetricsServer(listen, metrics, state_dir)
    except OSError as exc:
        raise OutputError(f"--metrics {listen}: cannot listen there: {exc.strerror or exc};"
                          " choose a free address and port") from exc


class MetricsServer:
    """The HTTP endpoint in its own thread; `close()` stops and joins it. `state_dir`
    holds the status file that the page at `/` shows."""

    def __init__(self, listen: Listen, metrics: Metrics, state_dir: Path | None = None) -> None:
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,),
                            {"address_family": family, "daemon_threads": True})
        self._server = server_class((listen.host, listen.port), _handler(metrics, state_dir))
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        kwargs={"poll_interval": 0.2})
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(metrics: Metrics, state_dir: Path | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def _answer(self, with_body: bool) -> None:
            path = self.path.partition("?")[0]
            if path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST, with_body)
            elif path in ("/healthz", "/readyz"):
                ok, why = metrics.health() if path == "/healthz" else metrics.readiness()
                self._send(200 if ok else 503, f"{why}\n".encode(), "text/plain", with_body)
            elif path == "/":
                self._send(200, _status_page(state_dir), "text/html; charset=utf-8", with_body)
            else:
                self._send(404, b"not found\n", "text/plain", with_body)

        def _send(self, status: int, body: bytes, content_type: str, with_body: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", statuspage.CONTENT_SECURITY_POLICY)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


def _status_page(state_dir: Path | None) -> bytes:
    if state_dir is None:
        return statuspage.page(None, "no state folder").encode()
    try:
        document = json.loads((state_dir / STATUS_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        return statuspage.page(None, f"{state_dir / STATUS_FILE}: {exc}").encode()
    return statuspage.page(document).encode()
