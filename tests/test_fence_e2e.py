"""Attacks through the running daemon beside a real Envoy and real upstreams: a site's
escape hatch that would route to another site's cluster (in lowerCamel spellings and
weighted splits), and strings that would split a response or send Envoy's environment
to clients. Each is refused naming the site file and the field as written, the
attacker's last good version keeps serving, no request reaches the other site's
upstream, and Envoy never rejects an update."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.parts import Node, get, upstream_kinds, wait_for
from tests.test_features_e2e import request

pytestmark = pytest.mark.e2e


def _problems(node: Node, name: str) -> list[str]:
    return [p["message"] for p in node.status().get("sites", {}).get(name, {}).get("problems", [])]


def _refused(node: Node, name: str, field: str) -> list[str]:
    """Wait until the site's problems name `field`; they name the site file."""
    wait_for(lambda: any(field in p for p in _problems(node, name)), 20,
             f"{name}: the problem naming {field}")
    problems = _problems(node, name)
    assert all(str(node.sites / f"{name}.yaml") in p for p in problems), problems
    assert node.status()["sites"][name]["state"] == "serving-last-good"
    return problems


def test_a_hatch_cannot_route_to_another_sites_cluster(short_tmp: Path) -> None:
    """`clusterHeader` and a camelCase weighted split naming another site's cluster are
    refused; a request asking for the victim's cluster still reaches the attacker's own
    upstream, and the victim's allow-list still holds."""
    node = Node(short_tmp, upstream_kinds()[0])
    try:
        victim, attacker = node.upstreams.start("victim"), node.upstreams.start("attacker")
        node.put("victim", node.site("victim", ["victim.test"], victim,
                                     "access: {allow: [10.9.9.9/32]}\n"))
        node.put("attacker", node.site("attacker", ["attacker.test"], attacker))
        node.start()
        wait_for(lambda: node.serves("attacker.test", "attacker /"), 20, "attacker served")
        assert node.status_code("victim.test") == 403
        base = node.site("attacker", ["attacker.test"], attacker)
        for hatch, field in (
            ("routes: [{prefix: /, envoy: {route: {cluster: null, clusterHeader: x-to}}}]\n",
             "routes[1].envoy.route.clusterHeader"),
            ("routes: [{prefix: /, envoy: {route: {cluster: null, weightedClusters: {clusters:"
             " [{name: victim, weight: 1}]}}}}]\n",
             "routes[1].envoy.route.weightedClusters.clusters[1].name"),
            ("envoy: {virtual_host: {requestMirrorPolicies: [{clusterHeader: x-to}]}}\n",
             "envoy.virtual_host.requestMirrorPolicies[1].clusterHeader"),
        ):
            node.put("attacker", base + hatch)
            _refused(node, "attacker", field)
            status, _, body = request(node.port, "attacker.test", "/", {"x-to": "victim"})
            assert (status, body.decode().rstrip("\n")) == (200, "attacker /")
        assert node.status_code("victim.test") == 403
        assert node.envoy.rejections() == {}
    finally:
        node.close()


def test_strings_cannot_split_responses_or_leak_the_environment(short_tmp: Path) -> None:
    """A `%ENVIRONMENT(...)%` in a schema header value reaches the client literally; the
    same in the hatch, a CR/LF header value, a CR/LF CORS origin and an access-log format
    reading the environment are refused, and no response carries an injected header or
    Envoy's environment."""
    node = Node(short_tmp, upstream_kinds()[0])
    secret = os.environ["PATH"]
    try:
        sock = node.upstreams.start("hdr")
        base = node.site("hdr", ["hdr.test"], sock)
        good = base + "response_headers: {set: {x-a: '%ENVIRONMENT(PATH)% 100%'}}\n"
        node.put("hdr", good)
        node.start()
        wait_for(lambda: node.serves("hdr.test", "hdr /"), 20, "hdr served")
        _, headers, _ = request(node.port, "hdr.test")
        assert headers["x-a"] == "%ENVIRONMENT(PATH)% 100%"
        for text, field in (
            (base + "envoy: {virtual_host: {responseHeadersToAdd: [{header: {key: x-b,"
             " value: '%ENVIRONMENT(PATH)%'}}]}}\n",
             "envoy.virtual_host.responseHeadersToAdd[1].header.value"),
            (base + 'response_headers: {set: {x-a: "a\\r\\nset-cookie: stolen=1"}}\n',
             "response_headers.set.x-a"),
            (base + 'cors: {origins: ["https://a.test\\r\\nx-c: injected"]}\n', "cors.origins[1]"),
            (base + f"access_log: {{path: {short_tmp}/hdr.log, format: '%ENVIRONMENT(PATH)%'}}\n",
             "access_log.format"),
        ):
            node.put("hdr", text)
            _refused(node, "hdr", field)
            _, headers, _ = request(node.port, "hdr.test", "/", {"Origin": "https://a.test"})
            assert headers.get("x-a") == "%ENVIRONMENT(PATH)% 100%", headers
            assert "set-cookie" not in headers and "x-c" not in headers, headers
            assert not any(secret in value for value in headers.values()), headers
        assert not (short_tmp / "hdr.log").exists()
        assert get(node.port, "hdr.test")[0] == 200
        assert node.envoy.rejections() == {}
    finally:
        node.close()
