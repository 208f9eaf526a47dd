"""Error pages on the real Envoy: a site's page replaces Envoy's own reply (the upstream
stopped: 503; a password asked: 401 with the site's realm), an upstream's own error
passes as sent, a changed page is served without a listener change, and a page that is
not one (outside the allowed folders, a key, a site file) is refused."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.cli import main
from tests.parts import Node, temporary_node, wait_for
from tests.unixserve import serving

pytestmark = pytest.mark.e2e
DOWN = "<!doctype html><h1>Back soon</h1>\n"


def _ask(node: Node, host: str, path: str = "/") -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, response.read().decode()
    finally:
        connection.close()


def _publish(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.new")
    temp.write_text(text)
    os.replace(temp, path)


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    with temporary_node("cp-pages-") as running:
        pages = running.sites / "_pages"
        pages.mkdir()
        (pages / "503.html").write_text(DOWN)
        (pages / "401.txt").write_text("Ask the staff for a password.\n")
        users = pages / "staff.htpasswd"
        users.write_text("alice:{SHA}" + base64.b64encode(hashlib.sha1(b"pw").digest())
                         .decode() + "\n")
        running.put("shop", running.site("shop", ["shop.example"], running.upstreams.start(
            "shop"), "error_pages: {503: _pages/503.html}\n"))
        failing = running.upstreams.folder / "failing.sock"
        running.put("failing", running.site("failing", ["failing.example"], failing,
                                            "error_pages: {503: _pages/503.html}\n"))
        running.put("staff", running.site("staff", ["staff.example"], running.upstreams.start(
            "staff"), "basic_auth: {htpasswd: _pages/staff.htpasswd, realm: Staff only}\n"
            "error_pages: {401: _pages/401.txt}\n"))
        running.put("realm", running.site("realm", ["realm.example"], running.upstreams.start(
            "realm"), "basic_auth: {htpasswd: _pages/staff.htpasswd, realm: Only a realm}\n"))
        with serving(failing, lambda path, headers: (503, {"Content-Type": "text/plain"},
                                                     b"the upstream's own 503\n")):
            running.start()
            wait_for(lambda: running.serves("shop.example", "shop /"), 20, "shop.example")
            yield running


def test_an_upstream_stopped_gets_the_page(node: Node) -> None:
    """The upstream's socket gone: Envoy's 503 carries the site's page, as HTML."""
    assert _ask(node, "shop.example")[0] == 200
    shop = next(u for u in node.upstreams._started if u.name == "shop")
    shop.stop()
    _, headers, body = wait_for(lambda: (found := _ask(node, "shop.example"))[0] == 503
                                     and found, 20, "the 503 page")
    assert body == DOWN
    assert headers["content-type"] == "text/html; charset=utf-8"


def test_an_upstreams_own_error_passes_as_sent(node: Node) -> None:
    """Only Envoy's own replies get pages: the upstream's 503 keeps its body."""
    status, headers, body = _ask(node, "failing.example")
    assert (status, body) == (503, "the upstream's own 503\n")
    assert headers["content-type"] == "text/plain"


def test_the_password_prompt_names_the_realm(node: Node) -> None:
    """401: the site's realm in WWW-Authenticate, with the 401 page or Envoy's body."""
    status, headers, body = _ask(node, "staff.example")
    assert (status, body) == (401, "Ask the staff for a password.\n")
    assert headers["www-authenticate"] == 'Basic realm="Staff only"'
    assert headers["content-type"] == "text/plain; charset=utf-8"
    status, headers, _ = _ask(node, "realm.example")
    assert status == 401
    assert headers["www-authenticate"] == 'Basic realm="Only a realm"'


def test_a_changed_page_is_served_without_a_listener_change(node: Node) -> None:
    """A new page file is a new route version only."""
    listeners = node.envoy.stats(r"^listener_manager\.lds\.version_text$")
    _publish(node.sites / "_pages" / "401.txt", "Ring the bell.\n")
    wait_for(lambda: _ask(node, "staff.example")[2] == "Ring the bell.\n", 35, "the new page")
    assert node.envoy.stats(r"^listener_manager\.lds\.version_text$") == listeners
    assert node.envoy.rejections() == {}


def test_what_is_not_a_page_is_refused(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Outside the sites folder and page_dirs (also through a symlink), a PEM key, a file
    without a page's suffix, a missing file: each refused with its field and the fix."""
    sites, elsewhere = tmp_path / "sites", tmp_path / "elsewhere"
    (sites / "_p").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "secret.html").write_text("not for the world\n")
    (sites / "_p" / "link.html").symlink_to(elsewhere / "secret.html")
    (sites / "_p" / "key.html").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n")
    pages = {"outside": f"{elsewhere}/secret.html", "link": "_p/link.html",
             "key": "_p/key.html", "yaml": "other.yaml", "gone": "_p/none.html"}
    for name, page in pages.items():
        (sites / f"{name}.yaml").write_text(
            f"domains: [{name}.example]\nupstream: {{socket: /tmp/{name}.sock}}\n"
            f"error_pages:\n  503: {page}\n")
    assert main(["check", str(sites), "--no-envoy", "--page-dirs", "/var/www"]) == 1
    err = capsys.readouterr().err
    assert f"outside.yaml:4: error_pages.503: '{elsewhere}/secret.html' is outside" in err
    assert f"link.yaml:4: error_pages.503: '{sites}/_p/link.html' (resolves to" in err
    assert "Envoy would serve it to anyone" in err
    assert "key.yaml:4: error_pages.503:" in err and "holds a PEM block" in err
    assert "yaml.yaml:4: error_pages.503:" in err and "a page is a .html" in err
    assert f"gone.yaml:4: error_pages.503: '{sites}/_p/none.html': cannot read" in err
    assert "not for the world" not in err
