"""Shared defaults on the real Envoy: `_defaults.yaml` in the sites folder merges under
every site (a site overrides a key or deletes it with null); a change re-checks every
site without a listener change; defaults that break a site leave it on its last good
version, with the problem told at the defaults file's line; a key the defaults may not
set is refused with its line."""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.cli import main
from tests.parts import Node, temporary_node, wait_for

pytestmark = pytest.mark.e2e
SHARED = ("response_headers:\n  set: {x-frame-options: DENY, x-policy: shared}\n"
          "rate_limit: {requests: 1000, per: 1s}\n")


def _headers(node: Node, host: str) -> dict[str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
    try:
        connection.request("GET", "/", headers={"Host": host})
        response = connection.getresponse()
        response.read()
        return {"status": str(response.status),
                **{k.lower(): v for k, v in response.getheaders()}}
    finally:
        connection.close()


def _publish(node: Node, text: str) -> None:
    temp = node.sites / ".defaults.partial"
    temp.write_text(text)
    os.replace(temp, node.sites / "_defaults.yaml")


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with temporary_node("cp-defaults-") as running:
        _publish(running, SHARED)
        running.put("plain", running.site("plain", ["plain.example"],
                                          running.upstreams.start("plain")))
        running.put("own", running.site("own", ["own.example"], running.upstreams.start("own"),
                                        "response_headers:\n  set: {x-policy: own}\n"
                                        "rate_limit: null\n"))
        running.start()
        wait_for(lambda: running.serves("plain.example", "plain /"), 20, "plain.example")
        wait_for(lambda: running.serves("own.example", "own /"), 20, "own.example")
        yield running


def test_sites_inherit_and_override(node: Node) -> None:
    """A site without the key inherits it; a site's own value wins key by key."""
    plain, own = _headers(node, "plain.example"), _headers(node, "own.example")
    assert (plain["x-frame-options"], plain["x-policy"]) == ("DENY", "shared")
    assert (own["x-frame-options"], own["x-policy"]) == ("DENY", "own")
    rds = (node.out / "rds.json").read_text()
    assert rds.count('"stat_prefix":"plain"') == 1 and '"stat_prefix":"own"' not in rds


def test_a_change_re_checks_every_site_without_a_listener_change(node: Node) -> None:
    """New defaults reach every site that inherits them; the listener stays."""
    listeners = node.envoy.stats(r"^listener_manager\.lds\.version_text$")
    _publish(node, SHARED.replace("DENY", "SAMEORIGIN"))
    for host in ("plain.example", "own.example"):
        wait_for(lambda h=host: _headers(node, h).get("x-frame-options") == "SAMEORIGIN", 35,
                 f"{host} with the new defaults")
    assert node.envoy.stats(r"^listener_manager\.lds\.version_text$") == listeners


def test_defaults_that_break_a_site_leave_it_on_its_last_good_version(node: Node) -> None:
    """A bad inherited value: the sites inheriting it keep serving their last good
    version and are told at the defaults file's line; a site that overrides it takes
    the rest of the change."""
    _publish(node, SHARED.replace("DENY", "broken").replace("requests: 1000", "requests: 0"))
    wait_for(lambda: _headers(node, "own.example").get("x-frame-options") == "broken", 35,
             "own.example with the new defaults")
    wait_for(lambda: node.status()["sites"]["plain"]["state"] == "serving-last-good", 35,
             "plain on its last good version")
    assert _headers(node, "plain.example")["x-frame-options"] == "SAMEORIGIN"
    problem = node.status()["sites"]["plain"]["problems"][0]
    assert problem["file"].endswith("/_defaults.yaml") and problem["line"] == 3, problem
    assert problem["field"] == "rate_limit.requests"
    assert "inherited by" in problem["message"] and "plain.yaml" in problem["message"]
    _publish(node, SHARED)
    wait_for(lambda: node.status()["sites"]["plain"]["state"] == "serving", 35, "plain again")


def test_a_key_the_defaults_may_not_set_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Domains, upstreams, routes (what makes a site itself) are never defaults: every
    site is told, at the defaults file's line, and none is served from broken defaults."""
    (tmp_path / "_defaults.yaml").write_text("compression: true\nupstream: {socket: /tmp/x.sock}\n")
    (tmp_path / "a.yaml").write_text("domains: [a.example]\nupstream: {socket: /tmp/a.sock}\n")
    assert main(["check", str(tmp_path), "--no-envoy"]) == 1
    err = capsys.readouterr().err
    assert (f"{tmp_path}/_defaults.yaml:2: upstream: not a key the defaults may set; they"
            " may set cors, rate_limit") in err
    assert "(the defaults of " in err and "a.yaml" in err
    assert "1 sites: 0 valid, 1 invalid" in err


def test_defaults_others_may_write_change_no_site(node: Node) -> None:
    """Defaults that group or others may write are not used: every site keeps serving its
    last good version on the real Envoy, told the file, its owner and mode; fixed
    defaults are taken at once."""
    temp = node.sites / ".defaults.partial"
    temp.write_text(SHARED.replace("DENY", "SAMEORIGIN"))
    os.chmod(temp, 0o666)  # before it is in place: the daemon never sees it writable-safe
    os.replace(temp, node.sites / "_defaults.yaml")
    for name in ("plain", "own"):
        wait_for(lambda n=name: node.status()["sites"][n]["state"] == "serving-last-good", 35,
                 f"{name} on its last good version")
    assert _headers(node, "plain.example")["x-frame-options"] == "DENY"
    problem = node.status()["sites"]["plain"]["problems"][0]
    assert problem["file"].endswith("/_defaults.yaml"), problem
    assert f"owned by uid {os.geteuid()} with mode 0666" in problem["message"]
    _publish(node, SHARED.replace("DENY", "SAMEORIGIN"))
    wait_for(lambda: _headers(node, "plain.example")["x-frame-options"] == "SAMEORIGIN", 35,
             "plain with the fixed defaults")
    _publish(node, SHARED)
