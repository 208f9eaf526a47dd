"""Attacks by one site file on other sites' resources, through the running daemon beside
a real Envoy: each proves that the request no longer reaches its target, that the
established site keeps serving, and that Envoy never rejects an update."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.parts import Node, upstream_kinds, wait_for

pytestmark = pytest.mark.e2e


def _problems(node: Node, name: str) -> str:
    found = node.status().get("sites", {}).get(name, {}).get("problems", [])
    return " ".join(p["message"] for p in found)


def test_another_sites_upstream_socket_is_not_reachable_past_its_access_list(
        short_tmp: Path) -> None:
    """With `exclusive_upstreams` (the default), a newcomer naming an established site's socket (as
    written, and through a symlink) is refused: its domain never reaches that upstream,
    which the established site keeps guarding with its allow-list."""
    node = Node(short_tmp, upstream_kinds()[0])
    try:
        private = node.upstreams.start("private")
        os.symlink(private, node.upstreams.folder / "alias.sock")
        node.put("private", node.site("private", ["private.example.com"], private,
                                      "access: {allow: [10.9.9.9/32]}\n"))
        node.start()
        wait_for(lambda: node.status_code("private.example.com") == 403, 15, "the allow-list")
        node.put("thief", node.site("thief", ["thief.example.com"], private))
        node.put("alias", node.site("alias", ["alias.example.com"],
                                    node.upstreams.folder / "alias.sock"))
        for name in ("thief", "alias"):
            wait_for(lambda n=name: "an upstream belongs to one site" in _problems(node, n),
                     15, f"the refusal of {name}")
            assert node.status()["sites"][name]["state"] == "invalid"
            assert node.status_code(f"{name}.example.com") == 404
        assert node.status()["sites"]["private"]["state"] == "serving"
        assert node.status_code("private.example.com") == 403
        assert node.envoy.rejections() == {}
    finally:
        node.close()
