"""Automatic HTTPS against a real ACME server (pebble, its mock DNS pointing every name
at 127.0.0.1, its HTTP-01 validations sent to Envoy's HTTP port): a site with
`tls: {acme: true}` is issued a certificate that verifies against pebble's root over
HTTPS through Envoy; a forced renewal serves a new serial without a listener change;
failing challenges and a server that is down leave the site on HTTP, the status saying
why."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cryptography import x509

from tests import acmeserver
from tests.parts import Node, free_port, get, temporary_node, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    not acmeserver.available() and os.environ.get("CONTROLPLANE_REQUIRE_NGINX") != "1",
    reason="pebble is not installed (apt-get install pebble)")]


@pytest.fixture(scope="module")
def acme() -> Iterator[tuple[Node, acmeserver.Pebble, int]]:
    """A node whose daemon orders from pebble, and the HTTPS port."""
    tls = free_port()
    with temporary_node("cp-acme-") as running:
        pebble = acmeserver.Pebble(running.folder / "pebble", running.port)
        running.extra_args = (*running.extra_args, "--listen-tls", f"127.0.0.1:{tls}",
                              *pebble.settings())
        try:
            pebble.start()
            running.start()
            yield running, pebble, tls
        finally:
            pebble.stop()


def _verified(port: int, host: str, root: str) -> tuple[int, str, int]:
    """(status, body, serial) of a GET over HTTPS, verified against `root` for `host`."""
    context = ssl.create_default_context(cadata=root)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return (int(head.split()[1]), body.decode(errors="replace"),
            x509.load_der_x509_certificate(der).serial_number)


def _site(running: Node, name: str) -> dict[str, object]:
    site: dict[str, object] = running.status().get("sites", {}).get(name, {})
    return site


def _notes(running: Node, name: str) -> str:
    warnings = _site(running, name).get("warnings") or []
    assert isinstance(warnings, list)
    return " | ".join(str(w.get("message", "")) for w in warnings if isinstance(w, dict))


def _lds(running: Node) -> tuple[str, int]:
    stats = running.envoy.stats("listener_manager")
    return (str(stats.get("listener_manager.lds.version_text")),
            int(stats.get("listener_manager.listener_modified", 0)))


def test_a_site_gets_a_certificate_that_verifies_against_the_acme_root(
        acme: tuple[Node, acmeserver.Pebble, int]) -> None:
    """HTTP serves at once; then the certificate pebble issued serves HTTPS, verified
    against pebble's root, plain HTTP redirects, and no challenge route is left."""
    running, pebble, tls = acme
    sock = running.upstreams.start("auto")
    running.put("auto", f"domains: [auto.test, www.auto.test]\nupstream: {{socket: {sock}}}\n"
                        "tls: {acme: true}\n")
    wait_for(lambda: running.serves("auto.test", "auto /") or running.status_code(
        "auto.test") == 301, 20, "auto on HTTP")
    root = pebble.root()
    for host in ("auto.test", "www.auto.test"):
        status, body, _ = wait_for(lambda h=host: _verified(tls, h, root), 60,
                                   f"HTTPS for {host} verified by pebble's root")
        assert status == 200 and body.startswith("auto"), (status, body)
    assert running.status_code("auto.test") == 301
    wait_for(lambda: _site(running, "auto").get("state") == "serving", 20, "auto serving")
    assert _site(running, "auto").get("certificate_expiry")
    assert "acme-challenge" not in (running.out / "rds.json").read_text()
    assert running.daemon is not None
    issued = running.daemon.events("acme.order.issued")
    assert [e["site"] for e in issued] == ["auto"], issued


def test_a_forced_renewal_serves_a_new_serial_without_a_listener_change(
        acme: tuple[Node, acmeserver.Pebble, int]) -> None:
    """`controlplane certificates --renew` makes the daemon order again; the new serial
    serves while the listeners keep their version and are never modified."""
    running, pebble, tls = acme
    root = pebble.root()
    _, _, before = wait_for(lambda: _verified(tls, "auto.test", root), 60, "auto on HTTPS")
    listeners = _lds(running)
    asked = subprocess.run([sys.executable, "-m", "controlplane", "certificates",
                            str(running.sites), "--out", str(running.out), "--renew", "auto"],
                           capture_output=True, text=True)
    assert asked.returncode == 0, asked.stderr
    wait_for(lambda: _verified(tls, "auto.test", root)[2] != before, 60, "a new serial")
    status, body, _ = _verified(tls, "auto.test", root)
    assert status == 200 and body.startswith("auto"), (status, body)
    assert _lds(running) == listeners
    assert running.daemon is not None
    wait_for(lambda: running.daemon and running.daemon.events("acme.order.renewed"), 10,
             "the renewal logged")


def test_failing_challenges_leave_http_serving_and_say_why(
        acme: tuple[Node, acmeserver.Pebble, int]) -> None:
    """pebble's validation of a name goes nowhere (its DNS points it elsewhere): the
    site serves plain HTTP, and its status waits for the certificate with the reason."""
    running, pebble, _ = acme
    pebble.point("fails.test", "127.0.0.2")
    sock = running.upstreams.start("fails")
    running.put("fails", f"domains: [fails.test]\nupstream: {{socket: {sock}}}\n"
                         "tls: {acme: true}\n")
    note = wait_for(lambda: "could not validate" in _notes(running, "fails")
                    and _notes(running, "fails"), 60, "the failure in the status")
    assert "waiting for certificate" in note and "fails.test" in note, note
    assert running.serves("fails.test", "fails /")
    assert _site(running, "fails").get("state") == "serving"
    assert "acme-challenge" not in (running.out / "rds.json").read_text()


def test_a_server_that_is_down_leaves_http_serving_and_says_why(
        acme: tuple[Node, acmeserver.Pebble, int]) -> None:
    """With pebble stopped a new site serves HTTP and its status names the unreachable
    server; `controlplane certificates` lists the error too."""
    running, pebble, _ = acme
    pebble.stop()
    sock = running.upstreams.start("down")
    running.put("down", f"domains: [down.test]\nupstream: {{socket: {sock}}}\n"
                        "tls: {acme: true}\n")
    note = wait_for(lambda: "cannot reach the ACME server" in _notes(running, "down")
                    and _notes(running, "down"), 60, "the failure in the status")
    assert "waiting for certificate" in note and "next attempt at" in note, note
    assert running.serves("down.test", "down /")
    assert get(running.port, "auto.test")[0] == 301  # the issued site is unaffected
    listed = subprocess.run([sys.executable, "-m", "controlplane", "certificates",
                             str(running.sites), "--out", str(running.out), "--json"],
                            capture_output=True, text=True)
    entries = {e["site"]: e for e in json.loads(listed.stdout)}
    assert "cannot reach" in entries["down"]["last_error"]
    assert entries["auto"]["serial"]
