"""`controlplane diff` against the real Envoy: the folder the daemon applied is the same
as what Envoy holds (exit 0); a copy of it with a site changed, added or removed differs
(exit 1) and names those sites; an unreachable admin socket is trouble (exit 3)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.parts import Node, temporary_node, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    """Two sites served and confirmed."""
    with temporary_node("cp-diff-") as running:
        for name in ("blog", "shop"):
            running.put(name, running.site(name, [f"{name}.example"],
                                           running.upstreams.start(name)))
        running.start()
        for name in ("blog", "shop"):
            wait_for(lambda n=name: running.serves(f"{n}.example", f"{n} /"), 20, name)
        yield running


def _diff(node: Node, sites: Path, admin: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane", "diff", str(sites), "--out", str(node.out),
         "--listen",
         f"127.0.0.1:{node.port}", "--admin-socket", str(admin or node.envoy.admin_socket)],
        capture_output=True, text=True, timeout=60)


def test_the_applied_folder_is_what_envoy_holds(node: Node) -> None:
    """Nothing differs right after the daemon applied the folder: exit 0, no diff."""
    done = _diff(node, node.sites)
    assert (done.returncode, done.stdout) == (0, ""), done.stderr
    assert "holds what the folder renders" in done.stderr


def test_a_changed_copy_names_each_site_and_shows_the_diff(node: Node, tmp_path: Path) -> None:
    """A copy with blog changed, shop removed and news added: exit 1, each site named, and
    a unified diff of the Envoy resources."""
    copy = tmp_path / "sites"
    shutil.copytree(node.sites, copy)
    (copy / "blog.yaml").write_text((copy / "blog.yaml").read_text() + "compression: true\n")
    (copy / "shop.yaml").unlink()
    news = (node.folder / "sockets" / "shop.sock")
    (copy / "news.yaml").write_text(node.site("news", ["news.example"], news))
    done = _diff(node, copy)
    assert done.returncode == 1, done.stderr
    assert "added: news; changed: blog; removed: shop" in done.stderr
    assert "--- envoy/virtual_host/blog" in done.stdout
    assert "+++ folder/virtual_host/blog" in done.stdout
    assert '+    "envoy.filters.http.compressor"' in done.stdout
    assert "--- envoy/Cluster/shop" in done.stdout


def test_an_unreachable_admin_socket_is_trouble(node: Node, tmp_path: Path) -> None:
    """No Envoy to compare with: exit 3 and a clear reason, not "different"."""
    done = _diff(node, node.sites, admin=tmp_path / "nothing.sock")
    assert done.returncode == 3
    assert "cannot read the live Envoy's configuration" in done.stderr
