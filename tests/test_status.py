"""The status file: valid JSON, a readable table, and incremental serialisation that
never shows a stale line."""

from __future__ import annotations

import stat
from pathlib import Path

from controlplane.daemon import statusfile, statustable
from controlplane.errors import Problem


def _pass() -> statusfile.PassStatus:
    return statusfile.PassStatus(at=1.0, added=["a"], changed=[], removed=[], invalid=["b"],
                             written=["cds"], confirmed=True, errors=[],
                             versions={"cds": "v1"})


def test_status_file_round_trips_and_prints_as_a_table(tmp_path: Path) -> None:
    """What the daemon writes, `controlplane status` reads and prints per site."""
    sites = {"a": statusfile.SiteStatus(state="serving", file="a.yaml", serving="d1"),
             "b": statusfile.SiteStatus(state="invalid", file="b.yaml",
                                    problems=[Problem("b.yaml", "x", "bad", line=2)])}
    written = statusfile.StatusFile(tmp_path)
    written.update(sites)
    written.write(_pass())
    document = statusfile.read_status(tmp_path)
    assert document["sites"]["b"]["problems"] == [
        {"file": "b.yaml", "line": 2, "field": "x", "reason": "bad", "message": "b.yaml:2: x: bad"}]
    assert document["last_pass"]["at"] == "1970-01-01T00:00:01.000Z"
    assert document["last_pass"]["versions"] == {"cds": "v1"}
    assert stat.S_IMODE((tmp_path / statusfile.STATUS_FILE).stat().st_mode) == 0o600
    table = statustable.table(document, now=61.0)
    assert "a     serving" in table and "b.yaml:2: x: bad" in table
    assert "last pass: 1970-01-01T00:00:01Z (1m ago), confirmed by Envoy" in table


def test_the_status_file_follows_every_change_and_keeps_changed_at(tmp_path: Path) -> None:
    """Each pass's status reaches the file (cached lines never go stale; removed sites
    vanish); a site whose state, version and problems stay keeps its `changed_at`."""
    written = statusfile.StatusFile(tmp_path)

    def sites_after(**found: statusfile.SiteStatus) -> dict[str, dict[str, object]]:
        written.update(found)
        written.write(_pass())
        return statusfile.read_status(tmp_path)["sites"]  # type: ignore[no-any-return]

    sites_after(a=statusfile.SiteStatus(state="serving", file="a.yaml", serving="d1", changed_at=1),
                b=statusfile.SiteStatus(state="serving", file="b.yaml", serving="d2", changed_at=1))
    warned = sites_after(a=statusfile.SiteStatus(
        state="serving", file="a.yaml", serving="d1", changed_at=5,
        warnings=[Problem("a.yaml", "tls", "expires soon")]))
    assert set(warned) == {"a"} and warned["a"]["warnings"]
    assert warned["a"]["changed_at"] == statusfile.iso_time(1)
    moved = sites_after(a=statusfile.SiteStatus(state="serving", file="a.yaml", serving="d9",
                                            changed_at=7))
    assert moved["a"]["serving"] == "d9" and moved["a"]["changed_at"] == statusfile.iso_time(7)
    assert not moved["a"]["warnings"]
