"""Rate limits on the real Envoy, from two real client addresses on loopback: with
`by: client` one client exhausting its bucket leaves another's untouched; with the
default `by: site` the site's one bucket is shared by all."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest

from tests.parts import Node, temporary_node, wait_for

pytestmark = pytest.mark.e2e
FIRST, SECOND = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    """Two sites of 2 requests a minute: one bucket per client, and one for the site."""
    with temporary_node("cp-rl-", shared_upstreams=True) as running:
        sock = running.upstreams.start("app")
        running.put("each", running.site("each", ["each.example"], sock,
                                         "rate_limit: {requests: 2, per: 60s, by: client}\n"))
        running.put("shared", running.site("shared", ["shared.example"], sock,
                                           "rate_limit: {requests: 2, per: 60s}\n"))
        running.put("probe", running.site("probe", ["probe.example"], sock))
        running.start()
        wait_for(lambda: _status(running, "probe.example", FIRST) == 200, 20, "probe.example")
        yield running


def _status(node: Node, host: str, source: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5,
                                            source_address=(source, 0))
    try:
        connection.request("GET", "/", headers={"Host": host})
        response = connection.getresponse()
        response.read()
        return response.status
    except (TimeoutError, OSError):
        return 0
    finally:
        connection.close()


def test_one_client_exhausting_its_bucket_leaves_another_untouched(node: Node) -> None:
    """`by: client`: the first client gets 2 answers then 429; the second still gets 2."""
    assert [_status(node, "each.example", FIRST) for _ in range(3)] == [200, 200, 429]
    assert [_status(node, "each.example", SECOND) for _ in range(3)] == [200, 200, 429]


def test_the_sites_bucket_is_shared_by_every_client(node: Node) -> None:
    """`by: site` (the default): once one client took the site's 2, the other gets 429."""
    assert [_status(node, "shared.example", FIRST) for _ in range(2)] == [200, 200]
    assert _status(node, "shared.example", SECOND) == 429
