"""Path attacks through the running daemon beside a real Envoy: a site whose socket
leads to Envoy's admin socket (at once, or by a symlink planted after it was accepted),
access logs that lead into the sites folder, and a FIFO as a certificate. Each proves
that the request or the write no longer reaches its target, and the other sites serve."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.parts import Node, get, upstream_kinds, wait_for

pytestmark = pytest.mark.e2e


def _reaches_admin(node: Node, host: str) -> bool:
    """Envoy's admin interface answered through the site (its /server_info JSON)."""
    status, body = get(node.port, host, "/server_info")
    return status == 200 and "command_line_options" in body


def _problems(node: Node, name: str) -> str:
    found = node.status().get("sites", {}).get(name, {}).get("problems", [])
    return " ".join(p["message"] for p in found)


def test_a_socket_symlinked_to_envoys_admin_socket_never_reaches_it(short_tmp: Path) -> None:
    """A link in an allowed folder to the admin socket is refused; the admin interface
    is not answered on the site's domain, and the good site serves."""
    node = Node(short_tmp, upstream_kinds()[0], shared_upstreams=True)
    try:
        good = node.upstreams.start("good")
        os.symlink(node.envoy.admin_socket, node.upstreams.folder / "evil.sock")
        node.put("good", node.site("good", ["good.example.com"], good))
        node.put("evil", node.site("evil", ["evil.example.com"],
                                   node.upstreams.folder / "evil.sock"))
        node.start()
        wait_for(lambda: node.serves("good.example.com", "good /"), 15, "the good site")
        wait_for(lambda: "is Envoy's admin socket" in _problems(node, "evil"), 10, "refusal")
        assert node.status()["sites"]["evil"]["state"] == "invalid"
        assert not _reaches_admin(node, "evil.example.com")
        assert node.envoy.rejections() == {}
    finally:
        node.close()


def test_a_symlink_planted_after_acceptance_takes_the_site_out_at_once(
        short_tmp: Path) -> None:
    """The socket is a real upstream when accepted; then it is swapped for a link to the
    admin socket. The site file is unchanged (its checks are cached), yet the event in
    the watched socket folder starts a pass that re-resolves the path and stops serving
    the site (its last good version names the same path), long before the 30 s resync.
    Restoring the real socket brings it back."""
    node = Node(short_tmp, upstream_kinds()[0], shared_upstreams=True)
    try:
        late = node.upstreams.start("late")
        node.put("late", node.site("late", ["late.example.com"], late))
        node.start()
        wait_for(lambda: node.serves("late.example.com", "late /server_info", "/server_info"),
                 15, "the site on its real upstream")
        os.rename(late, late.with_name("real.sock"))
        os.symlink(node.envoy.admin_socket, late.with_name("planted.tmp"))
        os.replace(late.with_name("planted.tmp"), late)
        wait_for(lambda: node.status_code("late.example.com") == 404, 10, "late taken out")
        assert "is Envoy's admin socket" in _problems(node, "late")
        assert node.status()["sites"]["late"]["state"] == "invalid"
        assert not _reaches_admin(node, "late.example.com")
        os.replace(late.with_name("real.sock"), late)
        wait_for(lambda: node.serves("late.example.com", "late /"), 10, "late back")
        assert node.envoy.rejections() == {}
    finally:
        node.close()


def test_access_logs_leading_into_the_sites_folder_are_refused_and_never_written(
        short_tmp: Path) -> None:
    """A log that is a symlink to a site file, and one under a folder linked to the sites
    folder, are refused with their resolved paths; after traffic, the site file is intact
    and no file appeared in the sites folder, while an honest log is written."""
    node = Node(short_tmp, upstream_kinds()[0], shared_upstreams=True)
    logs = short_tmp / "logs"
    logs.mkdir()
    try:
        sock = node.upstreams.start("up")
        node.put("victim", node.site("victim", ["victim.example.com"], sock))
        victim = (node.sites / "victim.yaml").read_bytes()
        os.symlink(node.sites / "victim.yaml", logs / "evil.log")
        os.symlink(node.sites, short_tmp / "sites-link")
        for name, path in (("linked", logs / "evil.log"),
                           ("folder", short_tmp / "sites-link" / "new.log"),
                           ("honest", logs / "honest.log")):
            node.put(name, node.site(name, [f"{name}.example.com"], sock,
                                     f"access_log: {{path: {path}}}\n"))
        node.start()
        wait_for(lambda: node.serves("honest.example.com", "up /"), 15, "the honest site")
        for host in ("linked", "folder", "honest", "victim"):
            get(node.port, f"{host}.example.com")
        wait_for(lambda: (logs / "honest.log").exists() and (logs / "honest.log").stat().st_size,
                 10, "the honest log written")
        assert "is a symlink to" in _problems(node, "linked")
        assert str(node.sites / "victim.yaml") in _problems(node, "linked")
        assert f"resolves to '{node.sites}/new.log'" in _problems(node, "folder")
        assert node.status_code("linked.example.com") == 404
        assert (node.sites / "victim.yaml").read_bytes() == victim
        assert not (node.sites / "new.log").exists()
        assert node.envoy.rejections() == {}
    finally:
        node.close()


def test_a_fifo_certificate_never_blocks_and_a_later_site_is_served(short_tmp: Path) -> None:
    """A TLS site whose certificate and key are FIFOs is refused at once; a site added
    after it is served promptly, and `check` returns too."""
    node = Node(short_tmp, upstream_kinds()[0], shared_upstreams=True)
    try:
        sock = node.upstreams.start("up")
        os.mkfifo(short_tmp / "cert.pem")
        os.mkfifo(short_tmp / "key.pem")
        tls = f"tls: {{cert: {short_tmp}/cert.pem, key: {short_tmp}/key.pem}}\n"
        node.put("fifo", node.site("fifo", ["fifo.example.com"], sock, tls))
        node.start()
        wait_for(lambda: "not a regular file" in _problems(node, "fifo"), 15, "the refusal")
        node.put("later", node.site("later", ["later.example.com"], sock))
        wait_for(lambda: node.serves("later.example.com", "up /"), 5, "the later site")
        assert node.status()["sites"]["fifo"]["state"] == "invalid"
        assert node.envoy.rejections() == {}
    finally:
        node.close()
