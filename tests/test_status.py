"""The status file: valid JSON, a readable table, and incremental serialisation that
never shows a stale line."""

from __future__ import annotations

import stat
from pathlib import Path

from controlplane import status
from controlplane.errors import Problem


def _pass() -> status.PassStatus:
    return status.PassStatus(at=1.0, added=["a"], changed=[], removed=[], invalid=["b"],
                             written=["cds"], confirmed=True, errors=[],
                             versions={"cds": "v1"})


def test_status_file_round_trips_and_prints_as_a_table(tmp_path: Path) -> None:
    """What the daemon writes, `controlplane status` reads and prints per site."""
    sites = {"a": status.SiteStatus(state="serving", file="a.yaml", serving="d1"),
             "b": status.SiteStatus(state="invalid", file="b.yaml",
                                    problems=[Problem("b.yaml", "x", "bad", line=2)])}
    status.write_status(tmp_path, status.sites_json(sites), _pass())
    document = status.read_status(tmp_path)
    assert document["sites"]["b"]["problems"] == [
        {"file": "b.yaml", "line": 2, "field": "x", "reason": "bad", "message": "b.yaml:2: x: bad"}]
    assert document["last_pass"]["at"] == "1970-01-01T00:00:01.000Z"
    assert document["last_pass"]["versions"] == {"cds": "v1"}
    assert stat.S_IMODE((tmp_path / status.STATUS_FILE).stat().st_mode) == 0o600
    table = status.table(document, now=61.0)
    assert "a     serving" in table and "b.yaml:2: x: bad" in table
    assert "last pass: 1970-01-01T00:00:01Z (1m ago), confirmed by Envoy" in table


def test_cached_lines_follow_every_change() -> None:
    """A site whose status object changes gets a new line; removed sites vanish."""
    cache: dict[str, tuple[status.SiteStatus, str]] = {}
    first = {"a": status.SiteStatus(state="serving", file="a.yaml", serving="d1"),
             "b": status.SiteStatus(state="serving", file="b.yaml", serving="d2")}
    assert '"d1"' in status.sites_json(first, cache)
    second = {"a": status.SiteStatus(state="serving", file="a.yaml", serving="d9")}
    text = status.sites_json(second, cache)
    assert '"d9"' in text and '"d1"' not in text and '"b"' not in text
    assert set(cache) == {"a"}
