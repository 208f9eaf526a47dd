"""`controlplane explain` agrees with the real Envoy: for each request, the upstream,
redirect or direct response it names is what Envoy does with that request."""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.parts import Node, temporary_node, wait_for

pytestmark = pytest.mark.e2e

SHOP = """\
domains: [shop.example, "*.shop.example"]
upstreams:
  api: {{socket: {api}}}
  web: {{socket: {web}}}
routes:
  - prefix: /api/
    headers: [{{name: x-beta, exact: "1"}}]
    upstream: api
  - path: /health
    respond: {{status: 200, body: ok}}
  - prefix: /old
    redirect: {{path: /new}}
  - prefix: /
    upstream: web
"""
REQUESTS = [
    ("http://shop.example/", []),
    ("http://a.b.shop.example/api/x", ["X-Beta: 1"]),
    ("http://shop.example/api/x", []),
    ("http://shop.example/health", []),
    ("http://shop.example/old/page", []),
    ("http://elsewhere.example/", []),
    ("http://shop.example:8080//api/./x", ["X-Beta: 1"]),
    ("http://shop.example/web/../api/y", ["x-beta: 1"]),
]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A wildcard site, and a site with header, path, redirect and catch-all routes."""

    with temporary_node("cp-explain-") as running:
        sockets = {name: running.upstreams.start(name) for name in ("api", "web", "any")}
        running.put("shop", SHOP.format(api=sockets["api"], web=sockets["web"]))
        running.put("any", running.site("any", ["*"], sockets["any"]))
        running.start()
        wait_for(lambda: running.serves("shop.example", "web /"), 20, "shop.example")
        yield running


def _explain(node: Node, url: str, headers: list[str]) -> tuple[int, str]:
    flags = [f"--header={h}" for h in headers]
    done = subprocess.run([sys.executable, "-m", "controlplane", "explain", str(node.sites),
                           url, *flags], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout


def _envoy(node: Node, url: str, headers: list[str]) -> tuple[int, str | None]:
    """Envoy's status and the upstream that answered (nginx's X-Upstream), if any."""
    host, _, rest = url.removeprefix("http://").partition("/")
    sent = {"Host": host, **{k.strip(): v.strip() for k, _, v in
                             (h.partition(":") for h in headers)}}
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
    try:
        connection.request("GET", "/" + rest, headers=sent)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("x-upstream")
    finally:
        connection.close()


@pytest.mark.parametrize(("url", "headers"), REQUESTS)
def test_explain_names_what_envoy_does(node: Node, url: str, headers: list[str]) -> None:
    """The action `explain` prints is the one Envoy takes for the same request."""
    code, printed = _explain(node, url, headers)
    assert code == 0, printed
    action = re.search(r"^action: (.*)$", printed, re.MULTILINE)
    assert action is not None, printed
    status, upstream = _envoy(node, url, headers)
    if action.group(1).startswith("upstream "):
        socket_name = re.search(r"/(\w+)\.sock\)", action.group(1))
        assert socket_name is not None
        assert (status, upstream) == (200, socket_name.group(1)), printed
    elif action.group(1).startswith("respond "):
        assert (status, upstream) == (int(action.group(1).split()[1]), None), printed
    else:
        assert action.group(1).startswith("redirect"), printed
        assert status in (301, 302, 307, 308) and upstream is None, printed


def test_explain_names_the_route_by_number_and_line(node: Node) -> None:
    """The route is counted from 1 and shown with the line it starts on."""
    code, printed = _explain(node, "http://shop.example/health", [])
    assert code == 0
    assert re.search(r"^route 2 \(.*shop\.yaml:9\): path '/health'$", printed, re.MULTILINE), (
        printed)
    assert "site: shop (" in printed


def test_explain_exits_1_when_nothing_would_answer(node: Node) -> None:
    """A host no site serves (here every host is served by `*`) or no route: exit 1."""
    (node.sites / "any.yaml").rename(node.folder / "any.yaml")
    try:
        code, printed = _explain(node, "http://nobody.example/", [])
        assert code == 1 and "no site serves the host 'nobody.example'" in printed
    finally:
        (node.folder / "any.yaml").rename(node.sites / "any.yaml")
