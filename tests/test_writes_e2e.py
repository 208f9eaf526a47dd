"""Half-written and copied site files, against the real daemon process and real files:
a file written in place is applied only once its writer closes it (or after a bounded
wait), and a backup copy never freezes the site it copies."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.parts import DaemonProcess, wait_for

pytestmark = pytest.mark.e2e


def _site(domains: list[str], extra: str = "") -> str:
    return f"domains: {json.dumps(domains)}\nupstream: {{socket: /tmp/w.sock}}\n{extra}"


def _put(sites: Path, name: str, text: str) -> None:
    (sites / f".{name}.partial").write_text(text)
    os.replace(sites / f".{name}.partial", sites / f"{name}.yaml")


def _rds(out: Path) -> str:
    return (out / "rds.json").read_text() if (out / "rds.json").exists() else ""


def _status(out: Path) -> dict[str, Any]:
    try:
        document: dict[str, Any] = json.loads((out / ".controlplane" / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return document


def _daemon(tmp: Path, settings: str = "") -> tuple[Path, Path, DaemonProcess]:
    sites, out = tmp / "sites", tmp / "out"
    sites.mkdir()
    config = tmp / "settings.yaml"
    config.write_text((settings or "") + "exclusive_upstreams: false\n")  # one socket for all
    return sites, out, DaemonProcess(tmp, [str(sites), "--out", str(out), "--no-envoy"],
                                     config=config)


def test_a_slow_writer_is_never_applied_half_written(short_tmp: Path) -> None:
    """Half a file, a pause, the rest: a pass that runs during the pause (another site
    arrives) keeps the site's previous version, and the whole file applies on close."""
    sites, out, daemon = _daemon(short_tmp)
    try:
        _put(sites, "w", _site(["w.example.com"]))
        wait_for(lambda: "w.example.com" in _rds(out), 10, "w's first version")
        with open(sites / "w.yaml", "w") as writer:
            writer.write(_site(["w.example.com", "half.example.com"]))
            writer.flush()
            _put(sites, "other", _site(["other.example.com"]))
            wait_for(lambda: "other.example.com" in _rds(out), 10, "a pass during the pause")
            assert "half.example.com" not in _rds(out)
            writer.write("routes:\n  - {prefix: /whole-file}\n")
        wait_for(lambda: "/whole-file" in _rds(out), 10, "the whole file after the close")
        assert "half.example.com" in _rds(out)
        assert not daemon.events("site.unclosed")
    finally:
        assert daemon.stop() == 0


def test_a_writer_that_never_closes_is_taken_after_the_bounded_wait(short_tmp: Path) -> None:
    """A file written and held open is applied once `write_close_wait_s` has passed,
    with a warning naming it."""
    sites, out, daemon = _daemon(short_tmp, "write_close_wait_s: 0.5\n")
    try:
        wait_for(lambda: (out / "rds.json").exists(), 10, "the first pass")
        with open(sites / "h.yaml", "w") as writer:
            writer.write(_site(["held.example.com"]))
            writer.flush()
            wait_for(lambda: "held.example.com" in _rds(out), 10, "taken after the wait")
            assert [e["file"] for e in daemon.events("site.unclosed")] == ["h.yaml"]
    finally:
        assert daemon.stop() == 0


def test_a_backup_copy_does_not_freeze_the_original(short_tmp: Path) -> None:
    """`cp blog.yaml blog-old.yaml`: the copy is reported as conflicting, naming the
    original; the original keeps its domains, has no problem, and takes its edits."""
    sites, out, daemon = _daemon(short_tmp)
    try:
        _put(sites, "blog", _site(["blog.example.com"]))
        wait_for(lambda: _status(out).get("sites", {}).get("blog", {}).get("state") ==
                 "serving", 10, "blog serving")
        shutil.copy(sites / "blog.yaml", sites / "blog-old.yaml")
        wait_for(lambda: "blog-old" in _status(out).get("sites", {}), 10, "the copy seen")
        copy = _status(out)["sites"]["blog-old"]
        assert copy["state"] == "invalid"
        assert any("also claimed by" in p["message"] and "blog.yaml" in p["message"]
                   for p in copy["problems"])
        assert _status(out)["sites"]["blog"]["problems"] == []
        _put(sites, "blog", _site(["blog.example.com"], "routes:\n  - {prefix: /edited}\n"))
        wait_for(lambda: "/edited" in _rds(out), 10, "the original's edit applied")
        sites_now = _status(out)["sites"]
        assert (sites_now["blog"]["state"], sites_now["blog"]["problems"]) == ("serving", [])
        assert sites_now["blog-old"]["state"] == "invalid"
        clusters = {r["name"] for r in json.loads((out / "cds.json").read_text())["resources"]}
        assert "blog" in clusters and "blog-old" not in clusters
    finally:
        assert daemon.stop() == 0
