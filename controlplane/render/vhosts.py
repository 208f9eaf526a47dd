"""Pure rendering of one site into an Envoy VirtualHost (JSON form): its routes, the
HTTP -> HTTPS redirects of a TLS site, header edits, and the site-wide features.

Site-wide features come from `filters`.
"""

from __future__ import annotations

from typing import Any

from controlplane.render.allowlist import ROUTE
from controlplane.render.authz import EXT_AUTHZ
from controlplane.render.clusters import cluster_name
from controlplane.render.filters import BASIC_AUTH, FILTER_CONFIG, site_features
from controlplane.render.overrides import confine
from controlplane.render.responses import Page
from controlplane.site.fields import HeaderEdits, envoy_duration
from controlplane.site.formats import literal
from controlplane.site.routes import HeaderMatch, QueryMatch, Redirect, Route
from controlplane.site.spec import Site

_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
          308: "PERMANENT_REDIRECT"}
_CATCH_ALL = Route.model_validate({"prefix": "/"})
"""The route of a site without `routes`: everything to its one upstream."""


def virtual_host(site: Site, https_port: int, htpasswd: str | None = None,
                 pages: tuple[Page, ...] = ()) -> dict[str, Any]:
    """The site's virtual host; `https_port` is where its HTTP -> HTTPS redirects point;
    `htpasswd` is the digest of the site's htpasswd file (a changed file, a new version);
    `pages` its error pages as read."""
    routes = site.spec.routes or [_CATCH_ALL]
    rendered: list[dict[str, Any]] = []
    for number, route in enumerate(routes):
        main = _route(site, route)
        if site.spec.tls is not None and site.spec.tls.redirect and route.https_redirect:
            rendered.append(_opted_out(_to_https(site, main["match"], https_port), site,
                                       basic=True, forward=True))
        main = _opted_out(main, site, basic=route.basic_auth is False,
                          forward=route.forward_auth is False)
        rendered.append(_merged_route(site, number, main, route))
    vhost: dict[str, Any] = {"name": site.name, "domains": list(site.spec.domains),
                             "routes": rendered}
    vhost.update(header_fields(site.spec.request_headers, site.spec.response_headers))
    features = site_features(site, pages)
    if features:
        vhost["typed_per_filter_config"] = features
    if htpasswd is not None:
        vhost["metadata"] = {"filter_metadata": {"controlplane": {"htpasswd": htpasswd}}}
    return vhost


def _opted_out(route: dict[str, Any], site: Site, *, basic: bool,
               forward: bool) -> dict[str, Any]:
    """A route that asks for no password (`basic`) or no auth service (`forward`): opted
    out, or the redirect to HTTPS (credentials are asked over HTTPS, never sent in the
    clear first)."""
    off = [name for name, wanted, used in (
        (BASIC_AUTH, basic, site.spec.basic_auth), (EXT_AUTHZ, forward,
                                                    site.spec.forward_auth)) if wanted and used]
    if not off:
        return route
    return {**route, "typed_per_filter_config": {
        name: {"@type": FILTER_CONFIG, "disabled": True} for name in off}}


def _merged_route(site: Site, number: int, main: dict[str, Any], route: Route) -> dict[str, Any]:
    """The route with its `envoy:` fields, inside the fence (`overrides.ROUTE`)."""
    if not route.envoy:
        return main
    own = frozenset(cluster_name(site, u) for u in site.upstream_names())
    return confine(site.source, f"routes[{number + 1}].envoy", ROUTE, main, route.envoy, own)


def _route(site: Site, route: Route) -> dict[str, Any]:
    rendered: dict[str, Any] = {"match": _match(route)}
    if route.redirect is not None:
        rendered["redirect"] = _redirect(route.redirect)
    elif route.respond is not None:
        body = {"body": {"inline_string": route.respond.body}} if route.respond.body else {}
        rendered["direct_response"] = {"status": route.respond.status, **body}
    else:
        rendered["route"] = _action(site, route)
    rendered.update(header_fields(route.request_headers, route.response_headers))
    if site.spec.stats_prefix is not None:
        rendered["stat_prefix"] = site.spec.stats_prefix
    if site.spec.access_log is not None:
        rendered["metadata"] = _metadata(site)
    return rendered


def _metadata(site: Site) -> dict[str, Any]:
    return {"filter_metadata": {"controlplane": {"site": site.name}}}


def _match(route: Route) -> dict[str, Any]:
    kind, value = route.match
    match: dict[str, Any] = {"safe_regex": {"regex": value}} if kind == "regex" else {kind: value}
    if route.headers:
        match["headers"] = [_header_match(h) for h in route.headers]
    if route.query:
        match["query_parameters"] = [_query_match(q) for q in route.query]
    return match


def _string_match(test: HeaderMatch | QueryMatch, keys: tuple[str, ...]) -> dict[str, Any]:
    for key in keys:
        value = getattr(test, key)
        if value is not None:
            return {"safe_regex": {"regex": value}} if key == "regex" else {key: value}
    return {}


def _header_match(test: HeaderMatch) -> dict[str, Any]:
    rendered: dict[str, Any] = {"name": test.name.lower()}
    if test.present is not None:
        rendered["present_match"] = test.present
    else:
        rendered["string_match"] = _string_match(test, ("exact", "prefix", "suffix",
                                                        "contains", "regex"))
    if test.invert:
        rendered["invert_match"] = True
    return rendered


def _query_match(test: QueryMatch) -> dict[str, Any]:
    if test.present:
        return {"name": test.name, "present_match": True}
    return {"name": test.name, "string_match": _string_match(test, ("exact", "prefix", "regex"))}


def _action(site: Site, route: Route) -> dict[str, Any]:
    action: dict[str, Any] = {}
    if route.split is not None:
        action["weighted_clusters"] = {"clusters": [
            {"name": cluster_name(site, s.upstream), "weight": s.weight} for s in route.split]}
    else:
        action["cluster"] = cluster_name(site, route.upstream or "")
    for key, field in (("timeout", "timeout"), ("idle_timeout", "idle_timeout")):
        if getattr(route, key) is not None:
            action[field] = envoy_duration(getattr(route, key))
    if route.retries is not None:
        action["retry_policy"] = {"retry_on": ",".join(route.retries.conditions),
                                  "num_retries": route.retries.attempts}
        if route.retries.per_try_timeout is not None:
            action["retry_policy"]["per_try_timeout"] = envoy_duration(
                route.retries.per_try_timeout)
    if route.websocket:
        action["upgrade_configs"] = [{"upgrade_type": "websocket"}]
    if route.rewrite_prefix is not None:
        action["prefix_rewrite"] = route.rewrite_prefix
    if route.rewrite_regex is not None:
        action["regex_rewrite"] = {"pattern": {"regex": route.rewrite_regex.pattern},
                                   "substitution": route.rewrite_regex.substitution}
    if route.host_rewrite is not None:
        action["host_rewrite_literal"] = route.host_rewrite
    return action


def _redirect(redirect: Redirect) -> dict[str, Any]:
    rendered: dict[str, Any] = {"response_code": _CODES[redirect.code]}
    for key, field in (("scheme", "scheme_redirect"), ("host", "host_redirect"),
                       ("port", "port_redirect"), ("path", "path_redirect"),
                       ("prefix", "prefix_rewrite")):
        if getattr(redirect, key) is not None:
            rendered[field] = getattr(redirect, key)
    if redirect.strip_query:
        rendered["strip_query"] = True
    return rendered


def _to_https(site: Site, match: dict[str, Any], port: int) -> dict[str, Any]:
    """A twin of a route's match, for plain HTTP only, answering 301 to HTTPS. Envoy at
    the edge (use_remote_address) sets x-forwarded-proto from the connection itself."""
    plain = {**match, "headers": [*match.get("headers", []), {
        "name": "x-forwarded-proto", "string_match": {"exact": "http"}}]}
    rendered: dict[str, Any] = {"match": plain, "redirect": {
        "https_redirect": True, "port_redirect": port, "response_code": "MOVED_PERMANENTLY"}}
    if site.spec.access_log is not None:
        rendered["metadata"] = _metadata(site)
    return rendered


def header_fields(request: HeaderEdits | None, response: HeaderEdits | None) -> dict[str, Any]:
    """The header fields of an Envoy VirtualHost or Route, only those in use."""
    fields: dict[str, Any] = {}
    for side, edits in (("request", request), ("response", response)):
        if edits is None:
            continue
        added = [{"header": {"key": key.lower(), "value": literal(value)},
                  "append_action": mode}
                 for mode, values in (("OVERWRITE_IF_EXISTS_OR_ADD", edits.set),
                                      ("APPEND_IF_EXISTS_OR_ADD", edits.add))
                 for key, value in sorted((values or {}).items())]
        if added:
            fields[f"{side}_headers_to_add"] = added
        if edits.remove:
            fields[f"{side}_headers_to_remove"] = sorted({n.lower() for n in edits.remove})
    return fields


