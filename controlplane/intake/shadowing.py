"""Routes that can never match: first match wins, so a route whose every request an
earlier route of the same site already takes is dead. `check` and the daemon warn about
it, naming both routes by number (from 1) and line, with the order that fixes it.

Pure: judged from the validated Site and the line of each route, no Envoy. Only what
can be told for sure is reported: an earlier route with no header or query test whose
path match covers the later one's (a prefix covering a prefix or a path, an equal path,
or the prefix `/`, which covers everything).
"""

from __future__ import annotations

from collections.abc import Mapping

from controlplane.errors import Problem
from controlplane.site.routes import Route
from controlplane.site.spec import Site


def shadowed(site: Site, lines: Mapping[tuple[str | int, ...], int]) -> list[Problem]:
    """One warning per route that an earlier route shadows (the first that does)."""
    routes = site.spec.routes or []
    warnings = []
    for later, route in enumerate(routes):
        for earlier in range(later):
            if _covers(routes[earlier], route):
                warnings.append(_warning(site, lines, earlier, later))
                break
    return warnings


def _covers(first: Route, then: Route) -> bool:
    """Whether every request `then` matches is matched by `first` already."""
    if first.headers or first.query or _own_match(first) or _own_match(then):
        return False
    kind, value = first.match
    other_kind, other = then.match
    if kind == "prefix":
        return value == "/" or (other_kind in ("prefix", "path") and other.startswith(value))
    return kind == "path" and other_kind == "path" and other == value


def _own_match(route: Route) -> bool:
    """An `envoy:` override of the match makes the route's match Envoy's business."""
    return bool(route.envoy) and "match" in (route.envoy or {})


def _warning(site: Site, lines: Mapping[tuple[str | int, ...], int], earlier: int,
             later: int) -> Problem:
    first, then = lines.get(("routes", earlier)), lines.get(("routes", later))
    kind, value = (site.spec.routes or [])[earlier].match
    return Problem(site.source, f"routes.{later}",
                   f"route {later + 1} never matches: route {earlier + 1} (line {first}),"
                   f" {kind} {value!r}, takes every request it would first; put route"
                   f" {later + 1} before route {earlier + 1}, or narrow route {earlier + 1}",
                   then)
