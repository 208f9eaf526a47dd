"""`controlplane explain SITES_DIR URL`: which site and route serve a request, offline.

It answers from the rendered virtual hosts, the very routes Envoy gets, with Envoy's
matching rules: the Host (port ignored) picks a virtual host (exact, then the longest
`*.suffix`, then the longest `prefix.*`, then `*`); the path is normalised as the HTTP
connection manager does (dot segments removed, slashes merged; escaped slashes answered
by a redirect); then the first route whose path, headers and query match wins. The
answer names the route as the user wrote it: its number counted from 1 and its line.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2

from controlplane.intake import loading, validating
from controlplane.intake.checking import Checked
from controlplane.settings import Settings
from controlplane.site.spec import Site

_ESCAPED_SLASH = re.compile(r"%(2f|5c)", re.IGNORECASE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """The parts of a request that Envoy routes on."""

    scheme: str
    host: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    """Lower-cased names, pseudo-headers (`:method`) included."""

    @classmethod
    def parse(cls, url: str, headers: Sequence[str] = ()) -> Request:
        """`http://blog.example.com/a?b=1` and `K: V` header lines; ValueError if not."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r}: give an http:// or https:// URL with a host name")
        given: dict[str, str] = {}
        for line in headers:
            name, sep, value = line.partition(":")
            if not sep or not name.strip():
                raise ValueError(f"{line!r}: give a header as 'Name: value'")
            given[name.strip().lower()] = value.strip()
        given.setdefault(":method", "GET")
        given[":authority"] = parts.hostname
        given[":scheme"] = parts.scheme
        given["x-forwarded-proto"] = parts.scheme  # the edge sets it from the connection
        return cls(scheme=parts.scheme, host=parts.hostname.lower(), path=parts.path or "/",
                   query=tuple(urllib.parse.parse_qsl(parts.query, keep_blank_values=True)),
                   headers=given)


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """What Envoy would do with the request."""

    site: str | None = None
    file: str | None = None
    route: int | None = None
    """The user's route, counted from 1 (None: the site has no `routes`)."""
    line: int | None = None
    match: str = ""
    action: str = ""
    filters: tuple[str, ...] = ()

    @property
    def matched(self) -> bool:
        return self.site is not None and bool(self.action) and not self.action.startswith("404")

    def lines(self) -> list[str]:
        if self.site is None:
            return [f"site: none ({self.action})"]
        where = f"{self.file}:{self.line}" if self.line else f"{self.file}"
        route = (f"route {self.route} ({where}): {self.match}" if self.route
                 else f"route: {self.match} (the site's only route; {where})")
        return [f"site: {self.site} ({self.file})", route if self.match else "route: none",
                f"action: {self.action}", f"filters: {', '.join(self.filters) or 'none'}"]


def explain(request: Request, serving: Mapping[str, Checked], settings: Settings) -> Answer:
    """The answer for `request` among the sites that would serve."""
    if _ESCAPED_SLASH.search(request.path) and settings.escaped_slashes == (
            "unescape_and_redirect"):
        return Answer(action="redirect to the unescaped path (escaped_slashes)")
    # HTTP sites only: TCP and passthrough sites have no virtual host.
    sites = {name: item for name, item in serving.items()
             if item.resources is not None and item.resources.virtual_host}
    name = _virtual_host(request.host, {n: i.domains for n, i in sites.items()})
    if name is None:
        return Answer(action=f"404: no site serves the host {request.host!r}")
    item = sites[name]
    site, lines = _site(item)
    path = _normalise(request.path)
    routes = item.resources.virtual_host["routes"] if item.resources else []
    for index, route in enumerate(routes):
        if _route_matches(route["match"], path, request):
            return _answer(site, lines, routes, index, request)
    return Answer(site=name, file=item.source, action="404: no route of the site matches",
                  filters=_filters(site, request))


def _site(item: Checked) -> tuple[Site, dict[tuple[str | int, ...], int]]:
    """The serving version's Site and the line of each field (for the route's line)."""
    assert item.content is not None
    document = loading.parse(item.content, item.source)
    if item.site is not None:  # as checked: with the sites folder's defaults under it
        return item.site, document.lines
    site = validating.validate(item.name, item.source, item.digest, document)
    return site, document.lines


def _virtual_host(host: str, domains: Mapping[str, Sequence[str]]) -> str | None:
    """Envoy's order: exact, longest suffix wildcard, longest prefix wildcard, `*`."""
    exact = [n for n, ds in domains.items() if host in ds]
    if exact:
        return exact[0]
    best: tuple[int, int, str] | None = None
    for name, listed in domains.items():
        for domain in listed:
            rank = _wildcard_rank(domain, host)
            if rank is not None and (best is None or rank > best[:2]):
                best = (*rank, name)
    return best[2] if best is not None else None


def _wildcard_rank(domain: str, host: str) -> tuple[int, int] | None:
    """(kind, length) where a wildcard `domain` matches `host`: suffix wildcards outrank
    prefix wildcards, which outrank `*`; a longer wildcard outranks a shorter one. The `*`
    stands for one character or more, dots included, as in Envoy."""
    if domain == "*":
        return (0, 0)
    if domain.startswith("*") and len(host) > len(domain) - 1 and host.endswith(domain[1:]):
        return (2, len(domain))
    if domain.endswith("*") and len(host) > len(domain) - 1 and host.startswith(domain[:-1]):
        return (1, len(domain))
    return None


def _normalise(path: str) -> str:
    """normalize_path and merge_slashes: dot segments go, runs of `/` become one."""
    merged = re.sub(r"/{2,}", "/", path)
    normal = posixpath.normpath(merged)
    if merged.endswith("/") and normal != "/":
        normal += "/"
    return normal if normal.startswith("/") else "/" + normal


def _route_matches(match: Mapping[str, Any], path: str, request: Request) -> bool:
    if "prefix" in match and not path.startswith(match["prefix"]):
        return False
    if "path" in match and path != match["path"]:
        return False
    if "safe_regex" in match and re2.fullmatch(match["safe_regex"]["regex"], path) is None:
        return False
    headers = all(_header_matches(h, request.headers) for h in match.get("headers", ()))
    return headers and all(_query_matches(q, request.query)
                           for q in match.get("query_parameters", ()))


def _header_matches(test: Mapping[str, Any], headers: Mapping[str, str]) -> bool:
    value = headers.get(test["name"])
    if "present_match" in test:
        found = (value is not None) == bool(test["present_match"])
    else:
        found = value is not None and _string_matches(test["string_match"], value)
    return found != bool(test.get("invert_match", False))


def _query_matches(test: Mapping[str, Any], query: Sequence[tuple[str, str]]) -> bool:
    values = [v for k, v in query if k == test["name"]]
    if test.get("present_match"):
        return bool(values)
    return bool(values) and _string_matches(test["string_match"], values[0])


def _string_matches(test: Mapping[str, Any], value: str) -> bool:
    if "exact" in test:
        return value == str(test["exact"])
    if "prefix" in test:
        return value.startswith(str(test["prefix"]))
    if "suffix" in test:
        return value.endswith(str(test["suffix"]))
    if "contains" in test:
        return str(test["contains"]) in value
    return re2.fullmatch(test["safe_regex"]["regex"], value) is not None


def _answer(site: Site, lines: Mapping[tuple[str | int, ...], int],
            routes: Sequence[Mapping[str, Any]], index: int, request: Request) -> Answer:
    number = _user_route(site, index)
    line = lines.get(("routes", number - 1)) if number is not None else None
    return Answer(site=site.name, file=site.source, route=number, line=line,
                  match=_describe(routes[index]["match"]), action=_action(site, routes[index]),
                  filters=_filters(site, request))


def _describe(match: Mapping[str, Any]) -> str:
    """The match as the user wrote it (the redirect twin's own test shows as plain HTTP)."""
    parts = [f"{key} {match[key]!r}" for key in ("prefix", "path") if key in match]
    if "safe_regex" in match:
        parts.append(f"regex {match['safe_regex']['regex']!r}")
    for test in match.get("headers", ()):
        parts.append("plain HTTP" if test["name"] == "x-forwarded-proto"
                     else f"header {test['name']}")
    parts.extend(f"query {test['name']}" for test in match.get("query_parameters", ()))
    return ", ".join(parts)


def _user_route(site: Site, index: int) -> int | None:
    """The user's route (from 1) behind the rendered route at `index`: a TLS site's
    routes each have an HTTP -> HTTPS redirect twin first, unless they opt out."""
    if site.spec.routes is None:
        return None
    rendered = 0
    twins = site.spec.tls is not None and site.spec.tls.redirect
    for number, route in enumerate(site.spec.routes, start=1):
        rendered += 2 if twins and route.https_redirect else 1
        if index < rendered:
            return number
    return None


def _action(site: Site, route: Mapping[str, Any]) -> str:
    if "redirect" in route:
        redirect = route["redirect"]
        if redirect.get("https_redirect"):
            return f"redirect to https (port {redirect.get('port_redirect')})"
        parts = {k: v for k, v in redirect.items() if k != "response_code"}
        return f"redirect {redirect.get('response_code', 'MOVED_PERMANENTLY')} {parts}"
    if "direct_response" in route:
        return f"respond {route['direct_response']['status']}"
    action = route["route"]
    if "weighted_clusters" in action:
        shares = [f"{c['name']} ({c['weight']})" for c in action["weighted_clusters"]["clusters"]]
        return "split across " + ", ".join(shares)
    cluster = action["cluster"]
    upstream = cluster.partition("/")[2]
    endpoints = [e.socket or e.address for e in site.upstream(upstream).endpoints]
    return f"upstream {cluster} ({', '.join(str(e) for e in endpoints)})"


def _filters(site: Site, request: Request) -> tuple[str, ...]:
    spec, found = site.spec, []
    if spec.tls is not None:
        found.append("tls" if request.scheme == "https" else "tls (this request is plain HTTP)")
    if spec.access is not None:
        found.append(f"access (allow {spec.access.allow or 'all'}, deny {spec.access.deny or []})")
    if spec.rate_limit is not None:
        found.append(f"rate_limit ({spec.rate_limit.requests} per {spec.rate_limit.per})")
    if spec.cors is not None:
        found.append("cors")
    if spec.forward_auth is not None:
        found.append("forward_auth (unless the route opts out)")
    if spec.basic_auth is not None:
        found.append("basic_auth (unless the route opts out)")
    if spec.compression:
        found.append("compression")
    if spec.error_pages is not None:
        found.append(f"error_pages ({', '.join(str(c) for c in sorted(spec.error_pages))})")
    if spec.access_log is not None:
        found.append("access_log")
    return tuple(found)
