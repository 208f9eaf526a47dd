"""The daemon beside a real Envoy and real upstreams on Unix sockets, with a load
generator on the sites that must keep serving: every non-2xx counts."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.parts import Load, Node, upstream_kinds, wait_for

pytestmark = pytest.mark.e2e
SERVED_WITHIN_S = 1.0


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    folder = Path(tempfile.mkdtemp(prefix="cp-", dir="/tmp"))
    running = Node(folder, upstream_kinds()[0], shared_upstreams=True)
    try:
        stable = running.upstreams.start("stable")
        running.put("stable", running.site("stable", ["stable.example.com"], stable))
        running.start()
        wait_for(lambda: running.serves("stable.example.com", "stable /"), 10, "stable site")
        yield running
    finally:
        running.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def load(node: Node) -> Iterator[Load]:
    """Steady requests to the stable site during the test; none may fail."""
    with Load(node.port, ["stable.example.com"]) as running:
        wait_for(lambda: running.total() > 5, 5, "load to start")
        yield running
    assert running.failures == [], running.failures[:5]
    assert node.envoy.rejections() == {}


def _served_within(node: Node, host: str, body: str, seconds: float, path: str = "/") -> float:
    started = time.monotonic()
    wait_for(lambda: node.serves(host, body, path), seconds, f"{host} to serve {body!r}")
    return time.monotonic() - started


def test_site_lifecycle_add_edit_break_fix_delete(node: Node, load: Load) -> None:
    """New site served within 1 s; edit served; broken keeps the old version with the
    error in status; fixed served; deleted gives 404 and its cluster leaves Envoy."""
    one, two = node.upstreams.start("blog1"), node.upstreams.start("blog2")
    node.put("blog", node.site("blog", ["blog.example.com"], one))
    _served_within(node, "blog.example.com", "blog1 /", SERVED_WITHIN_S)

    node.put("blog", node.site("blog", ["blog.example.com"], two))
    _served_within(node, "blog.example.com", "blog2 /", SERVED_WITHIN_S)

    node.put("blog", "domains: [blog.example.com]\nupstream:\n  sockt: /tmp/x.sock\n")
    wait_for(lambda: node.status()["sites"]["blog"]["state"] == "serving-last-good", 5)
    problems = node.status()["sites"]["blog"]["problems"]
    assert [p["message"] for p in problems] == [
        f"{node.sites}/blog.yaml:3: upstream.sockt: unknown key; did you mean 'socket'?"]
    assert (problems[0]["line"], problems[0]["field"]) == (3, "upstream.sockt")
    assert node.serves("blog.example.com", "blog2 /")

    node.put("blog", node.site("blog", ["blog.example.com", "www.blog.example.com"], one))
    _served_within(node, "www.blog.example.com", "blog1 /", SERVED_WITHIN_S)

    os.unlink(node.sites / "blog.yaml")
    wait_for(lambda: node.status_code("blog.example.com") == 404 and
             node.envoy.clusters() == {"stable"}, SERVED_WITHIN_S, "blog removed")
    assert node.status()["sites"].keys() == {"stable"}


def test_vim_style_save_is_applied(node: Node, load: Load) -> None:
    """vim's save dance (probe file 4913, rename to name~, write new) applies once."""
    sock = node.upstreams.start("vim")
    node.put("vim", node.site("vim", ["vim.example.com"], sock))
    _served_within(node, "vim.example.com", "vim /", SERVED_WITHIN_S)
    (node.sites / "4913").write_text("")
    os.unlink(node.sites / "4913")
    os.rename(node.sites / "vim.yaml", node.sites / "vim.yaml~")
    (node.sites / "vim.yaml").write_text(node.site("vim", ["vim2.example.com"], sock))
    _served_within(node, "vim2.example.com", "vim /", SERVED_WITHIN_S)
    os.unlink(node.sites / "vim.yaml~")
    os.unlink(node.sites / "vim.yaml")


def test_configmap_data_swap_is_applied(node: Node, load: Load) -> None:
    """Kubernetes swaps `..data` by a rename; the linked site files change with it."""
    sock = node.upstreams.start("cm")
    first, second = node.sites / "..2026_01", node.sites / "..2026_02"
    first.mkdir()
    (first / "cm.yaml").write_text(node.site("cm", ["cm1.example.com"], sock))
    os.symlink(first.name, node.sites / "..data")
    os.symlink("..data/cm.yaml", node.sites / "cm.yaml")
    _served_within(node, "cm1.example.com", "cm /", SERVED_WITHIN_S)

    second.mkdir()
    (second / "cm.yaml").write_text(node.site("cm", ["cm2.example.com"], sock))
    os.symlink(second.name, node.sites / "..data_tmp")
    os.rename(node.sites / "..data_tmp", node.sites / "..data")
    shutil.rmtree(first)
    _served_within(node, "cm2.example.com", "cm /", SERVED_WITHIN_S)
    for name in ("cm.yaml", "..data"):
        os.unlink(node.sites / name)
    shutil.rmtree(second)


def test_burst_of_200_files_becomes_a_few_passes(node: Node, load: Load) -> None:
    """200 files dropped at once are all served after a handful of passes."""
    assert node.daemon is not None
    sock = node.upstreams.start("burst")
    before = len(node.daemon.events("pass"))
    staging = node.folder / "staging"
    staging.mkdir()
    for i in range(200):
        (staging / f"b{i}.yaml").write_text(node.site(f"b{i}", [f"b{i}.example.com"], sock))
    for i in range(200):
        os.rename(staging / f"b{i}.yaml", node.sites / f"b{i}.yaml")
    _served_within(node, "b199.example.com", "burst /", 10)
    assert all(node.serves(f"b{i}.example.com", "burst /") for i in range(0, 200, 20))
    daemon = node.daemon
    wait_for(lambda: any("b199" in e.get("added", []) for e in daemon.events("pass")), 10,
             "the pass that added the last file to be logged")
    passes = len(daemon.events("pass")) - before
    assert 1 <= passes <= 5, passes
    for i in range(200):
        os.unlink(node.sites / f"b{i}.yaml")
    wait_for(lambda: node.envoy.clusters() == {"stable"}, 10, "burst sites removed")


def test_junk_and_special_files_do_not_disturb(node: Node, load: Load) -> None:
    """A FIFO named like a site is reported without blocking; junk names are ignored."""
    os.mkfifo(node.sites / "pipe.yaml")
    (node.sites / "notes.txt").write_text("hello")
    (node.sites / ".hidden.yaml").write_text("{{{")
    sock = node.upstreams.start("after")
    node.put("after", node.site("after", ["after.example.com"], sock))
    _served_within(node, "after.example.com", "after /", SERVED_WITHIN_S)
    assert "not a regular file" in node.status()["sites"]["pipe"]["problems"][0]["message"]
    assert {"notes", "hidden"}.isdisjoint(node.status()["sites"])
    for name in ("pipe.yaml", "notes.txt", ".hidden.yaml", "after.yaml"):
        os.unlink(node.sites / name)


def test_sites_folder_removed_and_recreated(node: Node, load: Load) -> None:
    """Removing the folder keeps what serves; a re-created folder is watched again."""
    saved = node.folder / "saved-sites"
    shutil.copytree(node.sites, saved, symlinks=True)
    shutil.rmtree(node.sites)
    wait_for(lambda: any("the sites folder is missing" in e for e in node.status().get(
        "last_pass", {}).get("errors", [])), 10, "the daemon to see the folder gone")
    assert node.serves("stable.example.com", "stable /")  # what serves stays
    shutil.copytree(saved, node.sites, symlinks=True)
    sock = node.upstreams.start("back")
    node.put("back", node.site("back", ["back.example.com"], sock))
    _served_within(node, "back.example.com", "back /", 5)
    os.unlink(node.sites / "back.yaml")


def test_restart_with_a_broken_file_serves_its_last_good_version(node: Node, load: Load) -> None:
    """After a restart, a site whose file broke meanwhile still serves its last good
    version, and the restart drops no request."""
    sock = node.upstreams.start("keep")
    node.put("keep", node.site("keep", ["keep.example.com"], sock))
    _served_within(node, "keep.example.com", "keep /", SERVED_WITHIN_S)
    assert node.daemon is not None
    assert node.daemon.stop() == 0
    node.put("keep", "domains: [keep.example.com]\nupstream: {socket: relative.sock}\n")
    node.start_daemon()
    wait_for(lambda: node.status().get("sites", {}).get("keep", {}).get("state") ==
             "serving-last-good", 10, "restarted daemon's status")
    assert node.serves("keep.example.com", "keep /")
    os.unlink(node.sites / "keep.yaml")


def test_adding_and_removing_sites_never_answers_503(node: Node, load: Load) -> None:
    """Make-before-break: a site coming and going answers 404 or 200, never 503 (a
    route to a cluster Envoy does not have yet, or no longer has)."""
    sock = node.upstreams.start("flip")
    with Load(node.port, ["flip.example.com"], ok=frozenset({200, 404})) as flips:
        for _ in range(5):
            node.put("flip", node.site("flip", ["flip.example.com"], sock))
            _served_within(node, "flip.example.com", "flip /", SERVED_WITHIN_S)
            os.unlink(node.sites / "flip.yaml")
            wait_for(lambda: node.status_code("flip.example.com") == 404, SERVED_WITHIN_S)
    assert flips.total() > 20
    assert flips.failures == [], flips.failures[:5]
