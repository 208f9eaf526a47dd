"""Basic authentication on the real Envoy: a site asks for a user and password from its
htpasswd file, a route opts out, a changed file is applied without a listener change,
and hashes Envoy cannot check are refused with the line and the fix."""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.intake.checking import check_content
from controlplane.settings import Settings
from tests.parts import Node, temporary_node, wait_for

pytestmark = pytest.mark.e2e


def _entry(user: str, password: str) -> str:
    return f"{user}:{{SHA}}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()


def _publish(path: Path, text: str) -> None:
    """Replace the file by a rename, as `htpasswd` and deploy tools do."""
    temp = path.with_name(path.name + ".new")
    temp.write_text(text)
    os.replace(temp, path)


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[Node, Path]]:
    with temporary_node("cp-ba-") as running:
        users = running.folder / "auth" / "users.htpasswd"
        users.parent.mkdir()
        users.write_text(_entry("alice", "secret") + "\n")
        sock = running.upstreams.start("app")
        running.put("staff", running.site("staff", ["staff.example"], sock, (
            f"basic_auth: {{htpasswd: {users}}}\n"
            "routes:\n  - {path: /health, basic_auth: false}\n  - {prefix: /}\n")))
        running.start()
        wait_for(lambda: _ask(running, "/health") == 200, 20, "staff.example/health")
        yield running, users


def _ask(node: Node, path: str, user: str | None = None, password: str = "") -> int:
    headers = {"Host": "staff.example"}
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_a_password_is_asked_and_checked(node: tuple[Node, Path]) -> None:
    """No or wrong credentials: 401; the right ones: the upstream answers."""
    running, _ = node
    assert _ask(running, "/") == 401
    assert _ask(running, "/", "alice", "wrong") == 401
    assert _ask(running, "/", "alice", "secret") == 200


def test_a_route_opts_out(node: tuple[Node, Path]) -> None:
    """`basic_auth: false` on a route: no password there, still one everywhere else."""
    running, _ = node
    assert _ask(running, "/health") == 200
    assert _ask(running, "/healthz") == 401


def test_a_changed_file_applies_without_a_listener_change(node: tuple[Node, Path]) -> None:
    """A new htpasswd file is a new route version only: the listener stays as it was."""
    running, users = node
    listeners = running.envoy.stats(r"^listener_manager\.lds\.version_text$")
    _publish(users, _entry("bob", "hunter2") + "\n")
    wait_for(lambda: _ask(running, "/", "bob", "hunter2") == 200, 35, "bob let in")
    assert _ask(running, "/", "alice", "secret") == 401
    assert running.envoy.stats(r"^listener_manager\.lds\.version_text$") == listeners
    assert running.envoy.rejections() == {}


@pytest.mark.parametrize(("line", "expected"), [
    ("carol:$apr1$abc$def", "users.htpasswd:1: MD5 (htpasswd -m, the default); Envoy checks"
                            " only {SHA} entries: write the user with `htpasswd -s FILE USER`"),
    ("carol:$2y$05$abcdefghijklmnopqrstuv", "users.htpasswd:1: bcrypt (htpasswd -B)"),
    ("carol:{SHA}short", "users.htpasswd:1: {SHA} is not followed by a base64 SHA-1 digest"),
    ("no colon here", "users.htpasswd:1: not `user:{SHA}hash`"),
])
def test_hashes_envoy_cannot_check_are_refused(tmp_path: Path, line: str, expected: str) -> None:
    """The file's line and the fix, and never the file's content in the message."""
    users = tmp_path / "users.htpasswd"
    users.write_text(line + "\n")
    text = (f"domains: [a.example]\nupstream: {{socket: /tmp/a.sock}}\n"
            f"basic_auth: {{htpasswd: {users}}}\n")
    checked = check_content("a", "a.yaml", text.encode(), Settings(verify_with_envoy=False))
    found = [str(p) for p in checked.problems]
    assert any(expected in p and p.startswith("a.yaml:3: basic_auth.htpasswd:") for p in found), (
        found)
    assert not any("carol" in p for p in found)
