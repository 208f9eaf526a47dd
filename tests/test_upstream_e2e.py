"""Upstream sockets watched, on the real parts: nginx on sockets in a temp folder, the
daemon, Envoy. A socket that appears or disappears while the daemon runs turns its
site's `upstream` state, the metric and the page; each state is produced for real
(a regular file, a socket nobody listens on, a server killed by SIGKILL, a chmod 000
socket with root's file capabilities dropped); Envoy's health checks turn an endpoint
unhealthy; `check` says the same as warnings."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.demo import servers
from tests.parts import Node, free_port, temporary_node, wait_for

pytestmark = pytest.mark.e2e
SETPRIV = shutil.which("setpriv")
NO_OVERRIDE = ("--bounding-set=-dac_override,-dac_read_search",)
"""As root, drop the capabilities that ignore file modes: a chmod 000 socket then refuses
this process as it refuses any other user (tests run as root)."""
DROP = (SETPRIV, *NO_OVERRIDE) if os.geteuid() == 0 and SETPRIV else ()
HAS_NGINX = servers.available_kind() == servers.NGINX


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Node, int]]:
    """The daemon (without root's file capabilities, when root) with metrics, and Envoy."""
    port = free_port()
    with temporary_node("cp-up-", extra_args=("--metrics", f"127.0.0.1:{port}"),
                        daemon_prefix=tuple(p for p in DROP if p)) as running:
        running.put("first", running.site("first", ["first.example"],
                                          running.upstreams.start("first")))
        running.start()
        wait_for(lambda: _upstream(running, "first").get("state") == "up", 20, "first up")
        yield running, port


def _upstream(node: Node, name: str) -> dict[str, Any]:
    site = node.status().get("sites", {}).get(name) or {}
    return site.get("upstream") or {}


def _endpoint(node: Node, name: str, path: Path) -> dict[str, Any]:
    endpoints: dict[str, Any] = _upstream(node, name).get("endpoints") or {}
    return endpoints.get(str(path)) or {}


def _metric(port: int, site: str, endpoint: Path) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    wanted = f'controlplane_upstream_up{{endpoint="{endpoint}",site="{site}"}} '
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line.split()[-1])
    return None


def _page(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
        return answer.read().decode()


def _check(node: Node, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "controlplane", "check",
                           str(node.sites), "--no-envoy"], capture_output=True, text=True,
                          timeout=60)


def test_a_socket_that_appears_and_disappears_turns_the_site_up_and_missing(
        node: tuple[Node, int]) -> None:
    """A site whose nginx is not started is configured, `missing` with the hint; nginx
    starting turns it `up` (status, metric, page, the request), nginx stopping (it
    removes its socket) turns it `missing` again, while the daemon runs."""
    running, port = node
    sock = running.upstreams.folder / "late.sock"
    running.put("late", running.site("late", ["late.example"], sock))
    wait_for(lambda: _endpoint(running, "late", sock).get("state") == "missing", 20, "missing")
    entry = _endpoint(running, "late", sock)
    assert f"`listen unix:{sock};`" in entry["hint"] and "is nginx running?" in entry["hint"]
    assert running.status()["sites"]["late"]["state"] == "serving"  # configured all along
    wait_for(lambda: _metric(port, "late", sock) == 0, 10, "metric 0")
    assert "missing" in _page(port) and f"listen unix:{sock};" in _page(port)
    late = servers.start("late", sock, running.upstreams.kind, running.folder / "nginx-late")
    try:
        wait_for(lambda: _endpoint(running, "late", sock).get("state") == "up", 10, "up")
        wait_for(lambda: _metric(port, "late", sock) == 1, 10, "metric 1")
        assert running.serves("late.example", "late /")
    finally:
        late.stop()  # nginx removes its socket as it quits
    wait_for(lambda: _endpoint(running, "late", sock).get("state") == "missing", 10, "gone")
    wait_for(lambda: _metric(port, "late", sock) == 0, 10, "metric 0 again")
    assert running.daemon is not None
    downs = [e for e in running.daemon.events("upstream.down") if e.get("site") == "late"]
    assert downs and downs[-1]["state"] == "missing"


def test_each_state_is_produced_for_real_and_check_warns(node: tuple[Node, int]) -> None:
    """A regular file is `not-a-socket`, a socket bound with no listener is `refused`, a
    server killed by SIGKILL (its socket left behind) turns `refused`; the text status
    and `check` name each with its hint, as warnings: check still exits 0."""
    running, _ = node
    folder = running.upstreams.folder
    plain, unheard, killed = folder / "plain.sock", folder / "unheard.sock", folder / "killed.sock"
    plain.write_text("not a socket\n")
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(str(unheard))  # bound, never listening: connect() is refused
    victim = servers.start("killed", killed, servers.STANDIN, running.folder / "killed")
    try:
        for name, path in (("plain", plain), ("unheard", unheard), ("killed", killed)):
            running.put(name, running.site(name, [f"{name}.example"], path))
        wait_for(lambda: _endpoint(running, "plain", plain).get("state") == "not-a-socket", 20)
        wait_for(lambda: _endpoint(running, "unheard", unheard).get("state") == "refused", 20)
        wait_for(lambda: _endpoint(running, "killed", killed).get("state") == "up", 20)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        assert killed.exists()  # a killed server leaves its socket file
        wait_for(lambda: _endpoint(running, "killed", killed).get("state") == "refused", 30,
                 "refused after SIGKILL (re-checked within 10 s)")
        text = subprocess.run([sys.executable, "-m", "controlplane", "status", "--out",
                               str(running.out)], capture_output=True, text=True).stdout
        assert "UPSTREAM" in text and f"unheard: {unheard}: refused" in text
        assert f"plain: {plain}: not-a-socket" in text
        checked = _check(running)
        assert checked.returncode == 0, checked.stderr
        lines = checked.stderr.splitlines()
        assert any(line.startswith("warning: ") and "not-a-socket" in line and str(plain) in line
                   for line in lines), checked.stderr
        assert any(line.startswith("warning: ") and "refused" in line and str(unheard) in line
                   for line in lines), checked.stderr
    finally:
        bound.close()
        victim.stop()
        for name in ("plain", "unheard", "killed"):
            (running.sites / f"{name}.yaml").unlink()
        plain.unlink()
        unheard.unlink(missing_ok=True)


@pytest.mark.skipif(os.geteuid() == 0 and SETPRIV is None,
                    reason="as root a chmod 000 socket needs setpriv to drop CAP_DAC_OVERRIDE")
def test_a_socket_this_user_may_not_connect_to_is_no_permission(node: tuple[Node, int]) -> None:
    """A chmod 000 socket with a live nginx behind it: `no-permission` in the daemon (which
    runs without root's file capabilities) and in `check` run the same way."""
    running, port = node
    sock = running.upstreams.folder / "closed.sock"
    closed = servers.start("closed", sock, running.upstreams.kind,
                             running.folder / "nginx-closed")
    try:
        os.chmod(sock, 0)
        running.put("closed", running.site("closed", ["closed.example"], sock))
        wait_for(lambda: _endpoint(running, "closed", sock).get("state") == "no-permission",
                 20, "no-permission")
        assert "write permission" in _endpoint(running, "closed", sock)["hint"]
        wait_for(lambda: _metric(port, "closed", sock) == 0, 10, "metric 0")
        checked = _check(running, tuple(p for p in DROP if p))
        assert any(line.startswith("warning: ") and "no-permission" in line
                   for line in checked.stderr.splitlines()), checked.stderr
    finally:
        closed.stop()
        (running.sites / "closed.yaml").unlink()


@pytest.mark.skipif(not HAS_NGINX, reason="needs nginx (its /health answers from a file)")
def test_envoys_health_check_turns_an_endpoint_unhealthy(node: tuple[Node, int]) -> None:
    """A site with health checks: Envoy's verdict is in its status (`health`) and the
    metric; /health answering 503 makes the endpoint unhealthy (its socket stays up),
    and healthy again when it answers 200."""
    running, port = node
    flags = Path(tempfile.mkdtemp(prefix="cp-up-flag-", dir="/tmp"))
    flags.chmod(0o755)  # nginx's workers (nobody) look for the file
    sock, down = running.upstreams.folder / "checked.sock", flags / "checked.down"
    served = servers.start("checked", sock, servers.NGINX, running.folder / "nginx-checked",
                             down_file=down)
    try:
        running.put("checked", f"""domains: [checked.example]
upstream:
  endpoints: [{{socket: {sock}}}]
  health_check: {{path: /health, interval: 1s, timeout: 500ms, unhealthy: 1, healthy: 1}}
""")
        wait_for(lambda: _endpoint(running, "checked", sock).get("health") == "healthy", 30)
        wait_for(lambda: _metric(port, "checked", sock) == 1, 10, "metric 1")
        down.touch()
        wait_for(lambda: _endpoint(running, "checked", sock).get("health") == "unhealthy", 30)
        assert _endpoint(running, "checked", sock)["state"] == "up"
        wait_for(lambda: _metric(port, "checked", sock) == 0, 10, "metric 0")
        assert "health: unhealthy" in _page(port)
        down.unlink()
        wait_for(lambda: _endpoint(running, "checked", sock).get("health") == "healthy", 30)
    finally:
        served.stop()
        (running.sites / "checked.yaml").unlink()
        shutil.rmtree(flags)
