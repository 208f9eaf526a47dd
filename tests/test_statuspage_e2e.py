"""The status page at `/` on the metrics address, in a real headless browser: it shows
every site with its state and a broken site's error, and runs no script from site
content; every endpoint answers HEAD."""

from __future__ import annotations

import http.client
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.parts import Node, free_port, temporary_node, wait_for

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE_KEY = "<script>document.title='PWNED'</script><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Node, int]]:
    """A serving site and a broken one whose problem carries markup."""
    port = free_port()
    with temporary_node("cp-page-", extra_args=("--metrics", f"127.0.0.1:{port}")) as running:
        running.put("good", running.site("good", ["good.example"],
                                         running.upstreams.start("good")))
        running.put("evil", f'domains: [evil.example]\n"{HOSTILE_KEY}": 1\n')
        running.start()
        wait_for(lambda: "evil" in _get(port, "/") and "good" in _get(port, "/"), 20, "page")
        yield running, port


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.read().decode()


def _browser_dom(url: str, profile: Path) -> str:
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=2000",
         "--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_page_shows_each_site_and_runs_no_site_script(
        node: tuple[Node, int], tmp_path: Path) -> None:
    """In the browser: both sites with their states, the broken site's error as text, the
    title untouched by the script in the site file, no element made from its markup."""
    _, port = node
    dom = _browser_dom(f"http://127.0.0.1:{port}/", tmp_path / "profile")
    assert "<title>controlplane status</title>" in dom
    assert "PWNED" not in dom.split("</title>")[0]
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;" in dom
    assert "<img" not in dom
    assert ">serving<" in dom and ">invalid<" in dom
    assert "unknown key" in dom


def test_every_endpoint_answers_head_and_the_page_forbids_scripts(node: tuple[Node, int]) -> None:
    """HEAD works on /, /metrics, /healthz and /readyz; the page's policy allows no script."""
    _, port = node
    for path in ("/", "/metrics", "/healthz", "/readyz"):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("HEAD", path)
            response = connection.getresponse()
            assert response.status in (200, 503) and response.read() == b""
            assert int(response.getheader("content-length") or 0) > 0
        finally:
            connection.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
        policy = answer.headers["Content-Security-Policy"]
        assert answer.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in policy and "script-src" not in policy
