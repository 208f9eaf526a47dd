"""The render-and-check pipeline against a real Envoy and a real upstream on a socket."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.parts import Envoy, Upstreams, free_port, get, wait_for

pytestmark = pytest.mark.e2e


def _controlplane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controlplane", *args],
                          capture_output=True, text=True, timeout=120)


def test_rendered_sites_are_served_through_their_sockets(
    upstreams: Upstreams, short_tmp: Path, envoy_factory: list[Envoy],
) -> None:
    """render + bootstrap give files on which Envoy serves each site from its socket."""
    blog, api, static = (upstreams.start(n) for n in ("blog", "api", "static"))
    sites = short_tmp / "sites"
    sites.mkdir()
    (sites / "blog.yaml").write_text(f"domains: [blog.example.com]\nupstream:\n  socket: {blog}\n")
    (sites / "shop.yaml").write_text(f"""
domains: ["shop.example.com", "*.shop.example.com"]
upstreams:
  api: {{socket: {api}}}
  static: [{{socket: {static}}}]
routes:
  - prefix: /static/
    upstream: static
    rewrite_prefix: /s/
  - regex: "/v[0-9]+/.*"
    upstream: api
  - prefix: /
    upstream: api
""")
    port, out = free_port(), short_tmp / "out"
    rendered = _controlplane("render", str(sites), "--out", str(out),
                             "--listen", f"127.0.0.1:{port}")
    assert rendered.returncode == 0, rendered.stderr
    envoy = Envoy.start(envoy_factory, short_tmp / "envoy", out)

    wait_for(lambda: get(port, "blog.example.com") == (200, "blog /\n"), what="blog served")
    assert get(port, "shop.example.com", "/static/app.js") == (200, "static /s/app.js\n")
    assert get(port, "eu.shop.example.com", "/v2/items") == (200, "api /v2/items\n")
    assert get(port, "BLOG.example.com")[0] == 200
    assert get(port, "nobody.example.com")[0] == 404
    assert envoy.rejections() == {}


def test_broken_site_fails_check_and_render_writes_nothing(short_tmp: Path) -> None:
    """check exits 1 naming the file and field; render leaves the output folder empty."""
    sites = short_tmp / "sites"
    sites.mkdir()
    (sites / "good.yaml").write_text("domains: [good.example]\nupstream: {socket: /tmp/g.sock}\n")
    (sites / "bad.yaml").write_text("domains: [bad.example]\nupstream:\n  sokcet: /tmp/b.sock\n")
    checked = _controlplane("check", str(sites))
    assert checked.returncode == 1
    assert f"{sites}/bad.yaml:3: upstream.sokcet: unknown key; did you mean 'socket'?" in (
        checked.stderr)
    out = short_tmp / "out"
    rendered = _controlplane("render", str(sites), "--out", str(out))
    assert rendered.returncode == 1
    assert not out.exists() or list(out.iterdir()) == []
