"""The bootstrap's stats listener (`--stats-listen`): Prometheus reads each site's Envoy
stats from it, and no other admin path (`/quitquitquit`, `/config_dump`, ...) can be
reached through it, however the request is spelled."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.parts import Node, free_port, temporary_node, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Node, int]]:
    """One site, and Envoy's bootstrap with the stats listener on a loopback port."""
    port = free_port()
    with temporary_node("cp-stats-", f"stats_listen: 127.0.0.1:{port}\n") as running:
        running.put("blog", running.site("blog", ["blog.example"],
                                         running.upstreams.start("blog")))
        running.start()
        wait_for(lambda: running.serves("blog.example", "blog /"), 20, "blog.example")
        yield running, port


def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    """Send the request bytes as they are; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(request)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_prometheus_reads_each_sites_requests(node: tuple[Node, int]) -> None:
    """`/stats/prometheus` answers with the site's upstream request counters, `/ready` with
    Envoy's state."""
    running, port = node
    assert running.serves("blog.example", "blog /")
    status, body = _raw(port, b"GET /stats/prometheus HTTP/1.1\r\nHost: x\r\n"
                              b"Connection: close\r\n\r\n")
    assert status == 200
    assert b'envoy_cluster_upstream_rq_total{envoy_cluster_name="blog"}' in body
    status, body = _raw(port, b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 200 and b"LIVE" in body


@pytest.mark.parametrize("request_line", [
    b"POST /quitquitquit", b"GET /quitquitquit", b"GET /config_dump", b"GET /stats",
    b"GET /stats?format=json", b"POST /runtime_modify?upstream.healthy_panic_threshold=0",
    b"POST /drain_listeners", b"POST /logging?level=trace", b"POST /stats/prometheus",
    b"GET /stats/prometheus/../../quitquitquit", b"GET //quitquitquit",
    b"GET /stats%2F..%2Fquitquitquit", b"GET /ready%2F..%2Fconfig_dump",
    b"GET /STATS/prometheus", b"GET /ready/../config_dump", b"GET http://x/quitquitquit",
    b"GET /stats/prometheus/", b"GET /clusters", b"GET /certs", b"POST /reset_counters",
])
def test_no_other_admin_path_is_reachable(node: tuple[Node, int], request_line: bytes) -> None:
    """Every other admin path, method or spelling is refused by the listener itself, and
    Envoy is unharmed: still live, serving, its config not leaked, its runtime and
    counters as they were."""
    running, port = node
    assert running.serves("blog.example", "blog /")
    status, body = _raw(port, request_line + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                             b"Connection: close\r\n\r\n")
    assert status in (400, 404), (status, body[:200])
    assert b"configs" not in body and b"cluster_statuses" not in body
    assert running.envoy.admin("/ready").strip() == "LIVE"
    assert "healthy_panic_threshold" not in running.envoy.admin("/runtime")
    assert running.envoy.stats(r"^cluster\.blog\.upstream_rq_total$")[
        "cluster.blog.upstream_rq_total"] >= 1
    assert running.serves("blog.example", "blog /")


def test_the_stats_listener_needs_the_admin_socket(tmp_path: Path) -> None:
    """Without an admin socket there is nothing to serve the stats from: a clear error."""
    from controlplane.cli import main

    assert main(["bootstrap", "--out", str(tmp_path), "--stats-listen", "127.0.0.1:9901"]) == 2


def test_http_client_sees_only_the_two_paths(node: tuple[Node, int]) -> None:
    """HEAD works on both paths, as Prometheus and probes may use it."""
    _, port = node
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for path in ("/stats/prometheus", "/ready"):
            connection.request("HEAD", path)
            response = connection.getresponse()
            response.read()
            assert response.status == 200
    finally:
        connection.close()
