"""forward_auth on the real Envoy with a real auth service on a Unix socket: a 2xx lets
the request through with the headers the service vouches for (a client's forged copy
removed), a denial reaches the client as the service gave it, a silent service is 503
(fail closed), a route opts out, and the service sees only the headers the site lists."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.cli import main
from tests.parts import Node, temporary_node, wait_for
from tests.unixserve import Answer, Seen, serving

pytestmark = pytest.mark.e2e
RELEASE = threading.Event()
"""Set at teardown, so a check the test made slow does not hold the server's shutdown."""


def _decide(path: str, headers: dict[str, str]) -> Answer:
    cookie = headers.get("cookie", "")
    if cookie == "session=good":
        return 200, {"X-User": "alice", "X-Other": "not vouched"}, b""
    if cookie == "session=slow":
        RELEASE.wait(2)
        return 200, {"X-User": "late"}, b""
    return 302, {"Location": "https://login.example/", "Set-Cookie": "next=/"}, b"log in\n"


def _upstream(path: str, headers: dict[str, str]) -> Answer:
    body = f"app {path} user={headers.get('x-user')}\n".encode()
    return 200, {"Content-Type": "text/plain"}, body


def _ask(node: Node, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": "app.example", **headers})
        response = connection.getresponse()
        found = {k.lower(): v for k, v in response.getheaders()}
        return response.status, found, response.read().decode()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Node, Seen, Seen]]:
    with temporary_node("cp-fa-") as running:
        folder = running.upstreams.folder
        auth, app = folder / "auth.sock", folder / "app.sock"
        with serving(auth, _decide) as checks, serving(app, _upstream) as requests:
            running.put("app", running.site("app", ["app.example"], app, (
                f"forward_auth:\n  upstream: {{socket: {auth}}}\n  path: /verify\n"
                "  headers: [cookie]\n  response_headers: [x-user]\n  timeout: 1s\n"
                "routes:\n  - {path: /health, forward_auth: false}\n  - {prefix: /}\n")))
            running.start()
            wait_for(lambda: _ask(running, "/health")[0] == 200, 40, "app.example/health")
            try:
                yield running, checks, requests
            finally:
                RELEASE.set()


def test_an_allowed_request_carries_the_vouched_header(node: tuple[Node, Seen, Seen]) -> None:
    """2xx: the upstream answers, with X-User from the service and no forged copy."""
    running, checks, requests = node
    status, _, body = _ask(running, "/orders?x=1", Cookie="session=good", **{
        "X-User": "mallory", "X-Secret": "not for the auth service"})
    assert (status, body) == (200, "app /orders?x=1 user=alice\n")
    path, sent = checks[-1]
    assert path == "/verify/orders?x=1"
    assert sent["cookie"] == "session=good"
    assert (sent["x-forwarded-uri"], sent["x-forwarded-method"]) == ("/orders?x=1", "GET")
    assert sent["x-forwarded-host"] == "app.example"
    assert "x-secret" not in sent and "x-user" not in sent
    assert "x-other" not in requests[-1][1]


def test_a_forged_header_never_reaches_the_upstream(node: tuple[Node, Seen, Seen]) -> None:
    """A client's own X-User is removed even when the service does not set one."""
    running, _, requests = node
    assert _ask(running, "/health", **{"X-User": "mallory"})[2] == "app /health user=None\n"
    assert "x-user" not in requests[-1][1]


def test_a_denial_reaches_the_client_as_given(node: tuple[Node, Seen, Seen]) -> None:
    """Non-2xx: the service's status, body and headers (a login redirect), no upstream."""
    running, _, requests = node
    before = len(requests)
    status, headers, body = _ask(running, "/orders", Cookie="session=bad")
    assert (status, body) == (302, "log in\n")
    assert headers["location"] == "https://login.example/"
    assert headers["set-cookie"] == "next=/"
    assert len(requests) == before


def test_a_silent_service_fails_closed(node: tuple[Node, Seen, Seen]) -> None:
    """No answer within the timeout: 503, and the upstream is never asked."""
    running, _, requests = node
    before = len(requests)
    assert _ask(running, "/orders", Cookie="session=slow")[0] == 503
    assert len(requests) == before


def test_a_route_opts_out(node: tuple[Node, Seen, Seen]) -> None:
    """`forward_auth: false`: the service is not asked there."""
    running, checks, _ = node
    before = len(checks)
    assert _ask(running, "/health")[0] == 200
    assert len(checks) == before


@pytest.mark.parametrize(("extra", "expected"), [
    ("forward_auth:\n  upstream: {socket: SOCK}\n",
     "forward_auth.upstream.socket: the upstream socket"),
    ("forward_auth:\n  upstream: {address: 169.254.169.254:80}\n",
     "forward_auth.upstream.address: '169.254.169.254:80' is link-local"),
    ("forward_auth:\n  upstream: {socket: /tmp/x.sock}\n  response_headers: [x-real-ip]\n",
     "forward_auth.response_headers: 'x-real-ip' is not the auth service's to set"),
    ("forward_auth:\n  upstream: {socket: /tmp/x.sock}\n  headers: [Authorization]\n",
     "forward_auth.headers: 'authorization' is always sent"),
    ("routes: [{prefix: /, forward_auth: false}]\n",
     "routes[1].forward_auth: false opts a route out"),
])
def test_a_hostile_or_wrong_forward_auth_is_refused(tmp_path: Path, extra: str, expected: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The auth upstream is fenced like every upstream (another site's socket, cloud
    metadata), and the headers a service may set or see are bounded."""
    taken = tmp_path / "taken.sock"
    (tmp_path / "holder.yaml").write_text(f"domains: [holder.example]\nupstream: {{socket:"
                                          f" {taken}}}\n")
    (tmp_path / "b.yaml").write_text("domains: [b.example]\nupstream: {socket: /tmp/b.sock}\n"
                                     + extra.replace("SOCK", str(taken)))
    assert main(["check", str(tmp_path), "--no-envoy"]) == 1
    err = capsys.readouterr().err
    assert any(expected in line and "b.yaml" in line for line in err.splitlines()), err
