"""Envoy's edge-proxy guidance, seen on the real Envoy: clients that never finish their
headers are cut off, a listener's connections are capped, header names with `_` and
paths with escaped slashes are handled as documented, and the other sites keep serving."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator

import pytest

from tests.parts import Node, temporary_node, wait_for

pytestmark = pytest.mark.e2e
HEADERS_TIMEOUT_S = 1.0
LISTENER_CAP = 4


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    """One node for the module: two sites, the edge limits made small enough to test."""
    with temporary_node("cp-edge-", (f"request_headers_timeout_s: {HEADERS_TIMEOUT_S}\n"
                                     f"listener_max_connections: {LISTENER_CAP}\n")) as running:
        for name in ("slow", "fast"):
            sock = running.upstreams.start(name)
            running.put(name, running.site(name, [f"{name}.example"], sock))
        running.start()
        wait_for(lambda: running.serves("fast.example", "fast /"), 20, "fast.example")
        yield running


def _open_partial(port: int) -> socket.socket:
    """A connection that sends the start of a request and never finishes its headers."""
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(b"GET / HTTP/1.1\r\nHost: slow.example\r\nX-Slow: ")
    return client


def _closed_by_peer(client: socket.socket, within: float) -> bool:
    """True when the peer answers and/or closes the connection within `within` seconds."""
    client.settimeout(within)
    try:
        while client.recv(4096):
            pass  # a 408 may come before the close
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def test_slowloris_connections_are_cut_off_within_the_headers_timeout(node: Node) -> None:
    """Connections that never finish their headers are closed after the headers timeout,
    while another site answers at once throughout."""
    clients = [_open_partial(node.port) for _ in range(2)]
    try:
        started = time.monotonic()
        assert node.serves("fast.example", "fast /")
        assert all(_closed_by_peer(c, HEADERS_TIMEOUT_S + 4) for c in clients)
        assert time.monotonic() - started >= HEADERS_TIMEOUT_S * 0.9
        timeouts = node.envoy.stats(r"downstream_rq_header_timeout$")
        assert sum(timeouts.values()) >= 2, timeouts
        assert node.serves("fast.example", "fast /")
    finally:
        for client in clients:
            client.close()


def test_a_listener_takes_at_most_its_connection_limit(node: Node) -> None:
    """Past `listener_max_connections`, Envoy closes new connections on that listener;
    once one closes, a new one is served again."""
    held = []
    try:
        for _ in range(LISTENER_CAP):
            connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
            connection.request("GET", "/", headers={"Host": "fast.example"})
            assert connection.getresponse().read() == b"fast /\n"
            held.append(connection)
        extra = socket.create_connection(("127.0.0.1", node.port), timeout=5)
        with extra:
            extra.sendall(b"GET / HTTP/1.1\r\nHost: fast.example\r\n\r\n")
            assert _closed_by_peer(extra, 5)
        overflow = node.envoy.stats(r"downstream_cx_overflow$")
        assert sum(overflow.values()) >= 1, overflow
    finally:
        for connection in held:
            connection.close()
    wait_for(lambda: node.serves("fast.example", "fast /"), 10, "a connection after the cap")


def test_header_names_with_underscores_are_refused(node: Node) -> None:
    """`x_user` could pose as `x-user` upstream: Envoy answers 400 (headers_with_underscores)."""
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
    try:
        connection.request("GET", "/", headers={"Host": "fast.example", "X_User": "admin"})
        assert connection.getresponse().status == 400
    finally:
        connection.close()
    assert node.serves("fast.example", "fast /")


def test_escaped_slashes_are_redirected_to_the_unescaped_path(node: Node) -> None:
    """`/a%2Fb` is answered with a redirect to `/a/b`, so routes see what upstreams see."""
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
    try:
        connection.request("GET", "/public%2F..%2Fadmin", headers={"Host": "fast.example"})
        response = connection.getresponse()
        response.read()
        assert response.status in (301, 302, 307, 308)
        assert "%2F" not in (response.getheader("location") or "%2F")
    finally:
        connection.close()
