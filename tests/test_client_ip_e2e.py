"""The real client address behind a balancer, on the real Envoy: X-Forwarded-For believed
only from `trusted_proxies` (or for `xff_trusted_hops`), the PROXY protocol, and what
access lists and the upstream's X-Real-IP make of each. Clients are real sockets bound to
other loopback addresses (127.0.0.2 is the balancer, 127.0.0.3 a stranger)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.parts import Node, temporary_node, wait_for

pytestmark = pytest.mark.e2e
BALANCER, STRANGER, CLIENT = "127.0.0.2", "127.0.0.3", "203.0.113.7"


@contextlib.contextmanager
def _node(settings: str) -> Iterator[Node]:
    """A node with two sites on these settings: `guarded` allows only CLIENT."""
    with temporary_node("cp-ip-", settings, shared_upstreams=True) as running:
        sock = running.upstreams.start("app")
        running.put("guarded", running.site("guarded", ["guarded.example"], sock,
                                            f"access: {{allow: [{CLIENT}/32]}}\n"))
        running.put("open", running.site("open", ["open.example"], sock))
        running.start()
        yield running


def _ask(node: Node, host: str, source: str, headers: dict[str, str] | None = None,
         preface: bytes = b"") -> tuple[int, dict[str, str]]:
    """One request from `source`; the status and the response headers (lower-cased)."""
    lines = ["GET / HTTP/1.1", f"Host: {host}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection(("127.0.0.1", node.port), timeout=5,
                                  source_address=(source, 0)) as client:
        client.sendall(preface + ("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        with contextlib.suppress(ConnectionResetError, TimeoutError):  # no answer
            while chunk := client.recv(65536):
                answer += chunk
    if not answer:
        return 0, {}
    head = answer.partition(b"\r\n\r\n")[0].decode().split("\r\n")
    found = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
    return int(head[0].split()[1]), {k.lower(): v for k, v in found.items()}


@pytest.fixture(scope="module")
def behind_balancer() -> Iterator[Node]:
    with _node(f"trusted_proxies: [{BALANCER}/32]\n") as node:
        yield node


def test_the_balancers_forwarded_for_is_believed(behind_balancer: Node) -> None:
    """From the trusted balancer, the client in X-Forwarded-For passes the allow list, and
    the upstream is told its address."""
    node = behind_balancer
    wait_for(lambda: _ask(node, "open.example", BALANCER)[0] == 200, 20, "open.example")
    status, _ = _ask(node, "guarded.example", BALANCER, {"X-Forwarded-For": CLIENT})
    assert status == 200
    status, seen = _ask(node, "open.example", BALANCER, {"X-Forwarded-For": CLIENT})
    assert status == 200 and seen["x-seen-real-ip"] == CLIENT


@pytest.mark.parametrize(("source", "forwarded"), [
    (STRANGER, CLIENT),                       # a stranger claims to be the client
    (BALANCER, f"{CLIENT}, 198.51.100.1"),    # the client forged the left of the chain
    (BALANCER, None),                         # the balancer itself is no client
])
def test_a_forged_forwarded_for_changes_nothing(behind_balancer: Node, source: str,
                                                forwarded: str | None) -> None:
    """Only the address the trusted balancer appended counts: a forged X-Forwarded-For
    from a stranger, or a forged left part, never passes the allow list."""
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    assert _ask(behind_balancer, "guarded.example", source, headers)[0] == 403


def test_a_strangers_own_address_goes_upstream(behind_balancer: Node) -> None:
    """A stranger's forged X-Real-IP and X-Forwarded-For are not what the upstream is
    told: X-Real-IP is the stranger's own address."""
    status, seen = _ask(behind_balancer, "open.example", STRANGER,
                        {"X-Forwarded-For": CLIENT, "X-Real-IP": CLIENT})
    assert status == 200 and seen["x-seen-real-ip"] == STRANGER


def test_trusted_hops_believe_the_last_forwarded_address() -> None:
    """`xff_trusted_hops: 1`: the rightmost X-Forwarded-For address is the client's,
    whoever connects; Envoy appends the connection's own address for the upstream."""
    with _node("xff_trusted_hops: 1\n") as node:
        wait_for(lambda n=node: _ask(n, "open.example", STRANGER)[0] == 200, 20, "open")
        assert _ask(node, "guarded.example", STRANGER, {"X-Forwarded-For": CLIENT})[0] == 200
        assert _ask(node, "guarded.example", STRANGER,
                    {"X-Forwarded-For": f"{CLIENT}, 198.51.100.1"})[0] == 403
        _, seen = _ask(node, "open.example", STRANGER, {"X-Forwarded-For": CLIENT})
        assert seen["x-seen-forwarded-for"] == f"{CLIENT},{STRANGER}"


def test_the_proxy_protocol_gives_the_client_address() -> None:
    """`proxy_protocol: true`: the PROXY header's source is the client (the allow list
    passes); a connection without the header is refused."""
    preface = f"PROXY TCP4 {CLIENT} 127.0.0.1 40000 80\r\n".encode()
    with _node("proxy_protocol: true\n") as node:
        wait_for(lambda n=node: _ask(n, "open.example", BALANCER, preface=preface)[0] == 200,
                 20, "open.example over the PROXY protocol")
        assert _ask(node, "guarded.example", BALANCER, preface=preface)[0] == 200
        assert _ask(node, "guarded.example", BALANCER)[0] in (0, 400)  # refused, not served
        assert _ask(node, "open.example", BALANCER, preface=preface)[1]["x-seen-real-ip"] == (
            CLIENT)


def test_trusted_proxies_and_hops_exclude_each_other(tmp_path: Path) -> None:
    """Both at once is a settings error (exit 2) naming both."""
    from controlplane.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("trusted_proxies: [10.0.0.0/8]\nxff_trusted_hops: 1\n")
    assert main(["--config", str(config), "check", str(tmp_path), "--no-envoy"]) == 2
