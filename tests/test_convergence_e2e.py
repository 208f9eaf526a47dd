"""Convergence after faults, with the status telling the truth throughout: Envoy killed
and restarted in the middle of make-before-break, and a listener whose port is taken
and later free. Real daemon, real Envoy, real upstreams."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.parts import Node, free_port, upstream_kinds, wait_for
from tests.test_features_e2e import https_get, make_certificate

pytestmark = pytest.mark.e2e
FAST_RETRY = "retry_s: 0.2\nretry_max_s: 0.5\nconfirm_timeout_s: 2\n"


@pytest.fixture
def node(short_tmp: Path) -> Iterator[Node]:
    """The daemon (retrying fast), Envoy and one upstream kind."""
    tls_port, metrics_port = free_port(), free_port()
    started = Node(short_tmp, upstream_kinds()[0],
                   extra_args=("--listen-tls", f"127.0.0.1:{tls_port}",
                               "--metrics", f"127.0.0.1:{metrics_port}"),
                   shared_upstreams=True)
    started.tls_port = tls_port  # type: ignore[attr-defined]
    started.metrics_port = metrics_port  # type: ignore[attr-defined]
    started.config = short_tmp / "settings.yaml"
    started.config.write_text(FAST_RETRY)
    try:
        yield started
    finally:
        started.close()


def _status(node: Node) -> dict[str, Any]:
    """The status file as `controlplane status --json` prints it (read directly: a
    subprocess per poll would slow every wait)."""
    try:
        document: dict[str, Any] = json.loads((node.out / ".controlplane" / "status.json")
                                              .read_bytes())
    except FileNotFoundError:
        return {}
    return document


def _fetch(node: Node, path: str) -> tuple[int, str]:
    port = node.metrics_port  # type: ignore[attr-defined]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _states(node: Node) -> dict[str, str]:
    return {name: site["state"] for name, site in _status(node).get("sites", {}).items()}


def _site(node: Node, name: str) -> dict[str, Any]:
    site: dict[str, Any] = _status(node).get("sites", {}).get(name, {})
    return site


def test_envoy_killed_at_any_step_converges_and_is_never_called_serving(node: Node) -> None:
    """Envoy SIGKILLed at several moments of an apply (before, during and after its
    steps), and once with nothing changing: once the daemon has looked (at once on a
    change, within its 2 s probe otherwise), no site is called serving while Envoy is
    down; after Envoy restarts, the daemon re-applies until every site serves its latest
    version and the status says so."""
    sock = node.upstreams.start("k")
    node.put("k0", node.site("k0", ["k0.example.com"], sock))
    node.start()
    wait_for(lambda: _states(node) == {"k0": "serving"}, 10, "k0 serving")
    for round_, delay in enumerate((0.0, 0.05), start=1):
        name = f"k{round_}"
        node.put(name, node.site(name, [f"{name}.example.com"], sock))
        time.sleep(delay)  # the fault's timing, not a wait for a result
        assert node.envoy.process is not None
        node.envoy.process.send_signal(signal.SIGKILL)
        node.envoy.process.wait(timeout=10)
        node.put("k0", node.site("k0", ["k0.example.com", f"r{round_}.example.com"], sock))
        wait_for(lambda: set(_states(node).values()) == {"pending"}, 10,
                 "every site pending while Envoy is down")
        assert _states(node).keys() == {f"k{i}" for i in range(round_ + 1)}
        wait_for(lambda: 'controlplane_sites{state="serving"} 0.0' in _fetch(node, "/metrics")[1],
                 10, "the metrics count no site serving")
        assert _fetch(node, "/readyz")[0] == 503
        node.envoy.launch()
        wait_for(lambda: set(_states(node).values()) == {"serving"}, 15,
                 "every site serving again")
        for i in range(round_ + 1):
            assert node.serves(f"k{i}.example.com", "k /")
        assert node.serves(f"r{round_}.example.com", "k /")
        assert _status(node)["last_pass"]["confirmed"] is True
    assert node.envoy.process is not None
    node.envoy.process.send_signal(signal.SIGKILL)  # and nothing changes: the probe sees it
    node.envoy.process.wait(timeout=10)
    wait_for(lambda: set(_states(node).values()) == {"pending"}, 10,
             "pending once a quiet daemon sees Envoy gone")
    node.envoy.launch()
    wait_for(lambda: set(_states(node).values()) == {"serving"}, 15, "serving again")
    assert node.envoy.rejections() == {}


def _tls_site(node: Node, name: str, folder: Path) -> None:
    folder.mkdir(parents=True)
    make_certificate(folder / "cert.pem", folder / "key.pem", [f"{name}.test"])
    sock = node.upstreams.start(name)
    node.put(name, f"domains: [{name}.test]\nupstream: {{socket: {sock}}}\n"
                   f"tls: {{cert: {folder}/cert.pem, key: {folder}/key.pem}}\n")


def test_a_taken_port_is_named_and_blames_no_site(node: Node, short_tmp: Path) -> None:
    """The HTTPS listener's port is taken when the first TLS site arrives: Envoy rejects
    the listener, which `--mode validate` cannot foresee. The status names the port in
    the pass's errors and in the TLS site's problems, keeps it pending (not invalid,
    not held back), the plain site goes on serving; once the port is free the daemon's
    retries bring the TLS site up by themselves."""
    port = node.tls_port  # type: ignore[attr-defined]
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    squatter.bind(("127.0.0.1", port))
    squatter.listen(1)
    try:
        sock = node.upstreams.start("plain")
        node.put("plain", node.site("plain", ["plain.example.com"], sock))
        node.start()
        wait_for(lambda: _states(node) == {"plain": "serving"}, 10, "plain serving")
        _tls_site(node, "sec", short_tmp / "certs" / "sec")
        wait_for(lambda: any("cannot bind" in p["message"] for p in _site(node, "sec").get(
            "problems", [])), 15, "the bind failure in sec's problems")
        site = _site(node, "sec")
        assert site["state"] == "pending", site
        assert any(f"127.0.0.1:{port}" in p["message"] and "Address already in use" in p["message"]
                   for p in site["problems"])
        assert any(f"127.0.0.1:{port}" in e for e in _status(node)["last_pass"]["errors"])
        assert _site(node, "plain")["state"] == "serving"
        assert node.serves("plain.example.com", "plain /")
        rejected = node.envoy.rejections()
        assert set(rejected) == {"listener_manager.lds.update_rejected"}, rejected
    finally:
        squatter.close()
    wait_for(lambda: https_get(port, "sec.test")[:2] == (200, "sec /\n"), 15,
             "sec served over HTTPS once the port is free")
    wait_for(lambda: _states(node) == {"plain": "serving", "sec": "serving"}, 10,
             "both serving")
    assert _site(node, "sec")["problems"] == []


def test_http_port_taken_when_envoy_starts_then_freed(node: Node) -> None:
    """Envoy starts while the HTTP listener's port is taken, so it refuses the listener
    from the file on disk: every site is pending with the port named, and once the
    port is free the daemon offers the file again (a new rename) until Envoy binds it."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", node.port))
    squatter.listen(1)
    try:
        sock = node.upstreams.start("h")
        node.put("h", node.site("h", ["h.example.com"], sock))
        node.start()
        wait_for(lambda: any(f"127.0.0.1:{node.port}" in p["message"]
                             and "cannot bind" in p["message"]
                             for p in _site(node, "h").get("problems", [])), 15,
                 "the taken HTTP port in h's problems")
        assert _site(node, "h")["state"] == "pending"
    finally:
        squatter.close()
    wait_for(lambda: node.serves("h.example.com", "h /"), 15, "h served once the port is free")
    wait_for(lambda: _states(node) == {"h": "serving"}, 10, "h serving")
