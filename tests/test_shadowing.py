"""Route shadowing: `check` warns about a route that an earlier route of the same site
always takes first, naming both by number and line and the order that fixes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.intake.checking import check_content
from controlplane.settings import Settings

SETTINGS = Settings(verify_with_envoy=False, socket_dirs=())
HEAD = "domains: [a.example]\nupstreams:\n  web: {socket: /tmp/web.sock}\nroutes:\n"


def _warnings(routes: str) -> list[str]:
    item = check_content("a", "a.yaml", (HEAD + routes).encode(), SETTINGS)
    assert not item.problems, item.problems
    return [str(w) for w in item.warnings]


@pytest.mark.parametrize(("routes", "expected"), [
    ("  - {prefix: /, upstream: web}\n  - {prefix: /api, upstream: web}\n",
     "a.yaml:6: routes.1: route 2 never matches: route 1 (line 5), prefix '/', takes every"
     " request it would first; put route 2 before route 1, or narrow route 1"),
    ("  - {prefix: /api, upstream: web}\n  - {path: /api/v1, upstream: web}\n",
     "route 2 never matches: route 1 (line 5), prefix '/api'"),
    ("  - {path: /x, upstream: web}\n  - {path: /x, respond: {status: 200}}\n",
     "route 2 never matches: route 1 (line 5), path '/x'"),
    ("  - {prefix: /, upstream: web}\n  - {regex: '/a.*', upstream: web}\n",
     "route 2 never matches: route 1"),
])
def test_a_route_covered_by_an_earlier_one_is_warned_about(routes: str, expected: str) -> None:
    """An earlier route with no header or query test that covers a later one's paths."""
    found = _warnings(routes)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("routes", [
    "  - {prefix: /api/v1, upstream: web}\n  - {prefix: /api, upstream: web}\n",
    "  - {path: /x, upstream: web}\n  - {prefix: /x, upstream: web}\n",
    "  - {prefix: /a, headers: [{name: x-beta, present: true}], upstream: web}\n"
    "  - {prefix: /a/b, upstream: web}\n",
    "  - {prefix: /a, query: [{name: v, exact: '1'}], upstream: web}\n"
    "  - {path: /a/b, upstream: web}\n",
    "  - {regex: '/.*', upstream: web}\n  - {prefix: /b, upstream: web}\n",
])
def test_routes_that_can_still_match_are_not_warned_about(routes: str) -> None:
    """Narrower first, or an earlier route that tests headers or the query, or a regex
    (not judged): no warning."""
    assert _warnings(routes) == []


def test_check_prints_the_warning_and_still_passes(tmp_path: Path) -> None:
    """A shadowed route is a `warning:` line in `check`; the site is still valid."""
    sites = tmp_path / "sites"
    sites.mkdir()
    (sites / "a.yaml").write_text(HEAD + "  - {prefix: /, upstream: web}\n"
                                  "  - {prefix: /api, upstream: web}\n")
    done = subprocess.run([sys.executable, "-m", "controlplane", "check", str(sites),
                           "--no-envoy"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "warning: " in done.stderr and "route 2 never matches" in done.stderr
