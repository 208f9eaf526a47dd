"""Health, readiness and Prometheus metrics of a running daemon beside a real Envoy."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.parts import Node, free_port, upstream_kinds, wait_for

pytestmark = pytest.mark.e2e


def _fetch(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_readiness_and_metrics_follow_envoy(short_tmp: Path) -> None:
    """Ready once Envoy confirmed; not ready while Envoy is down; metrics count it all."""
    port = free_port()
    node = Node(short_tmp, upstream_kinds()[0], extra_args=("--metrics", f"127.0.0.1:{port}"))
    try:
        sock = node.upstreams.start("m")
        node.put("m", node.site("m", ["m.example.com"], sock))
        node.start()
        wait_for(lambda: _fetch(port, "/readyz")[0] == 200, 10, "ready")
        assert _fetch(port, "/healthz")[0] == 200
        status, text = _fetch(port, "/metrics")
        assert status == 200
        assert 'controlplane_sites{state="serving"} 1.0' in text
        assert "controlplane_passes_total" in text
        assert "controlplane_last_success_timestamp_seconds" in text
        assert "controlplane_last_apply_success 1.0" in text
        assert 'controlplane_build_info{python="' in text and 'version="0.1.0"' in text
        assert "process_resident_memory_bytes" in text and "_created" not in text

        node.envoy.stop()
        node.put("m", node.site("m", ["m2.example.com"], sock))
        wait_for(lambda: _fetch(port, "/readyz")[0] == 503, 15, "not ready without Envoy")
        assert _fetch(port, "/healthz")[0] == 200  # alive, just not confirmed
        assert 'controlplane_errors_total{kind="envoy_refused"}' in _fetch(port, "/metrics")[1]
        assert "controlplane_last_apply_success 0.0" in _fetch(port, "/metrics")[1]

        node.envoy.launch()
        wait_for(lambda: _fetch(port, "/readyz")[0] == 200, 15, "ready again")
        wait_for(lambda: node.serves("m2.example.com", "m /"), 5, "served after restart")
        assert _fetch(port, "/nope")[0] == 404
    finally:
        node.close()
