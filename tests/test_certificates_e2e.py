"""Certificates in the running daemon, not only in `check`: a TLS site whose certificate
expires soon serves, with the warning in its status and its log, and the expiry in the
metrics."""

from __future__ import annotations

import datetime
import urllib.request
from collections.abc import Iterator

import pytest

from controlplane.daemon.statusfile import parse_time
from tests.parts import Node, free_port, temporary_node, wait_for
from tests.test_features_e2e import make_certificate

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Node, int]]:
    """A TLS site whose certificate has 5 days left, and the daemon's metrics."""
    port, tls = free_port(), free_port()
    with temporary_node("cp-cert-", extra_args=("--metrics", f"127.0.0.1:{port}",
                                                "--listen-tls", f"127.0.0.1:{tls}")) as running:
        folder = running.folder / "certs"
        folder.mkdir()
        make_certificate(folder / "cert.pem", folder / "key.pem", ["soon.test"], days=5)
        sock = running.upstreams.start("soon")
        running.put("soon", f"domains: [soon.test]\nupstream: {{socket: {sock}}}\n"
                            f"tls: {{cert: {folder}/cert.pem, key: {folder}/key.pem}}\n")
        running.start()
        wait_for(lambda: running.status().get("sites", {}).get("soon", {}).get("state") ==
                 "serving", 20, "soon serving")
        yield running, port


def test_the_status_says_the_certificate_expires_soon(node: tuple[Node, int]) -> None:
    """The serving site carries the warning and its certificate's expiry, in 4-5 days."""
    running, _ = node
    site = running.status()["sites"]["soon"]
    assert any("expires in 4 days" in w["message"] or "expires in 5 days" in w["message"]
               for w in site["warnings"]), site
    assert all(w["severity"] == "warning" for w in site["warnings"])
    expiry = parse_time(site["certificate_expiry"])
    assert expiry is not None
    left = expiry - datetime.datetime.now(datetime.UTC).timestamp()
    assert 4 * 86400 < left <= 5 * 86400


def test_the_log_and_the_metrics_carry_it(node: tuple[Node, int]) -> None:
    """One `site.warning` log line, and the expiry as a Prometheus gauge for the site."""
    running, port = node
    assert running.daemon is not None
    warnings = running.daemon.events("site.warning")
    assert [w["site"] for w in warnings] == ["soon"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    line = next(x for x in text.splitlines()
                if x.startswith('controlplane_certificate_expiry_timestamp_seconds{site="soon"}'))
    shown = float(line.split()[-1])
    site = running.status()["sites"]["soon"]
    assert shown == pytest.approx(parse_time(site["certificate_expiry"]), abs=1)
    assert site["state"] == "serving"
