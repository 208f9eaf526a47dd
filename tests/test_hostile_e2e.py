"""The hostile-input corpus through the running daemon beside a real Envoy: every entry
is reported, sites that had a good version keep serving it, the other sites keep
serving without a failed request, and Envoy never rejects an update."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.hostile import CASES
from tests.parts import Load, Node, upstream_kinds, wait_for

pytestmark = pytest.mark.e2e


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        os.unlink(path)


def test_daemon_survives_the_corpus_and_keeps_last_good_versions(short_tmp: Path) -> None:
    """Good versions first, then every hostile entry at once over them."""
    node = Node(short_tmp, upstream_kinds()[0], shared_upstreams=True)
    try:
        sock = node.upstreams.start("h")
        # `claimed` and `statsmate` serve first: the sites whose domain and stats name the
        # corpus then tries to take (a newcomer, refused however the passes fall).
        names = [c.name for c in CASES if c.keeps_name] + ["stable", "claimed", "statsmate"]
        for name in names:
            node.put(name, node.site(name, [f"{name}.example.com"], sock))
        node.start()
        wait_for(lambda: all(node.serves(f"{n}.example.com", "h /") for n in names), 15,
                 "every good version served")
        with Load(node.port, ["stable.example.com"]) as load:
            for case in CASES:
                target = node.sites / case.file
                if case.make is not None and target.exists():
                    _remove(target)
                case.create(node.sites)
            wait_for(lambda: _all_reported(node), 40, "every hostile entry in the status")
            for name in names:
                assert node.serves(f"{name}.example.com", "h /"), name
        assert load.total() > 0 and load.failures == [], load.failures[:5]
        sites = node.status()["sites"]
        for case in CASES:
            assert any(case.expected in p["message"] for p in sites[case.name]["problems"]), case
            expected_state = "serving-last-good" if case.keeps_name else "invalid"
            assert sites[case.name]["state"] == expected_state, (case.name, sites[case.name])
        assert node.envoy.rejections() == {}
        assert node.daemon is not None and node.daemon.process.poll() is None
    finally:
        for path in node.sites.glob("unreadable.yaml"):
            os.chmod(path, 0o600)
        node.close()


def _all_reported(node: Node) -> bool:
    sites = node.status().get("sites", {})
    return all(sites.get(c.name, {}).get("problems") for c in CASES)
