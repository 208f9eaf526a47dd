"""Start-up, shutdown and running without an admin socket, with real processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controlplane.writing import TEMP_PREFIX
from tests.parts import Load, Node, free_port, get, upstream_kinds, wait_for

pytestmark = pytest.mark.e2e


def test_without_admin_socket_it_warns_once_and_still_applies(short_tmp: Path) -> None:
    """No --admin-socket: one warning at start, changes still reach Envoy in order."""
    node = Node(short_tmp, upstream_kinds()[0], tell_admin=False, shared_upstreams=True)
    try:
        sock = node.upstreams.start("plain")
        node.start()
        node.put("plain", node.site("plain", ["plain.example.com"], sock))
        wait_for(lambda: node.serves("plain.example.com", "plain /"), 5, "plain served")
        assert node.daemon is not None
        assert len(node.daemon.events("envoy.admin.none")) == 1
        assert node.status()["last_pass"]["confirmed"] is None
        assert node.envoy.rejections() == {}
    finally:
        node.close()


def test_first_pass_writes_complete_files_for_an_empty_folder(short_tmp: Path) -> None:
    """Envoy can start on an empty folder's files: they exist and Envoy accepts them."""
    node = Node(short_tmp, upstream_kinds()[0], shared_upstreams=True)
    try:
        node.start()
        wait_for(lambda: node.status().get("last_pass", {}).get("confirmed") is True, 10)
        assert get(node.port, "any.example.com")[0] == 404
        assert node.envoy.rejections() == {}
    finally:
        node.close()


def test_sigterm_stops_promptly_and_leaves_the_files(short_tmp: Path) -> None:
    """SIGTERM: exit 0 soon, the output files stay, no temp file is left."""
    sites, out = short_tmp / "sites", short_tmp / "out"
    sites.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "controlplane", "run", str(sites),
                                "--out", str(out), "--no-envoy"], stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (out / "lds.json").exists(), 10, "the first pass")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=5)
        assert process.returncode == 0, errors
        assert time.monotonic() - started < 5
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    names = set(os.listdir(out))
    assert {"cds.json", "rds.json", "lds.json"} <= names
    assert not [n for n in names if n.startswith(TEMP_PREFIX)]


def test_demo_serves_the_examples_and_cleans_up(short_tmp: Path) -> None:
    """The demo serves every example site from its socket and leaves nothing behind."""
    repo = Path(__file__).resolve().parent.parent
    sites, sockets = short_tmp / "sites", short_tmp / "sockets"
    sites.mkdir()
    for example in (repo / "config" / "sites").glob("*.yaml"):
        text = example.read_text().replace("/dev/shm/controlplane-demo", str(sockets))
        (sites / example.name).write_text(text)
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "controlplane.demo", "--sites", str(sites), "--work",
         str(short_tmp / "work"), "--sockets", str(sockets), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: get(port, "blog.example.com") == (200, "blog /\n"), 20, "blog")
        assert get(port, "comments.example.com", "/static/a.css") == (
            200, "comments-static /a.css\n")
        shutil.copy(repo / "config" / "examples" / "shop.yaml", sites / "shop.yaml")
        (sites / "shop.yaml").write_text((sites / "shop.yaml").read_text().replace(
            "/dev/shm/controlplane-demo", str(sockets)))
        wait_for(lambda: get(port, "shop.example.com") == (200, "shop /\n"), 5, "shop")
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, output
    assert "curl -H 'Host: blog.example.com'" in output
    assert not sockets.exists() or list(sockets.iterdir()) == []
    with pytest.raises(OSError):
        get(port, "blog.example.com", timeout=1)


def test_envoy_rejection_is_undone_and_the_site_held_back(short_tmp: Path) -> None:
    """A live Envoy stricter than the validating one rejects a route file: the last good
    file comes back under a new version, the site carrying the change is held back with
    the reason in its status, other sites keep serving, and a fixed file goes through."""
    node = Node(short_tmp, upstream_kinds()[0], shared_upstreams=True)
    node.envoy.runtime = {"re2.max_program_size.error_level": 10}
    try:
        sock = node.upstreams.start("r")
        node.put("stable", node.site("stable", ["stable.example.com"], sock))
        node.start()
        wait_for(lambda: node.serves("stable.example.com", "r /"), 10, "stable served")
        with Load(node.port, ["stable.example.com"]) as load:
            node.put("rx", node.site("rx", ["rx.example.com"], sock,
                                     "routes:\n  - regex: '/api/v[0-9]+/live'\n"))
            wait_for(lambda: node.status().get("sites", {}).get("rx", {}).get("state") ==
                     "invalid", 10, "rx held back")
            problems = node.status()["sites"]["rx"]["problems"]
            message = problems[0]["message"]
            assert "Envoy rejected" in message and "rds.json" in message
            assert node.status_code("rx.example.com") == 404
            assert node.envoy.rejections() == {
                "http.ingress_http.rds.routes.update_rejected": 1}
            versions = node.envoy.stats(r"rds\.routes\.version_text")
            assert node.status()["last_pass"]["versions"]["rds"] in versions.values()
            node.put("rx", node.site("rx", ["rx.example.com"], sock))
            wait_for(lambda: node.serves("rx.example.com", "r /"), 5, "fixed rx served")
        assert load.total() > 0 and load.failures == []
    finally:
        node.close()
