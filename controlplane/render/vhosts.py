"""Pure rendering of one site into an Envoy VirtualHost (JSON form): its routes, the
HTTP -> HTTPS redirects of a TLS site, header edits, and the site-wide features.

Site-wide features use HTTP filters that the listener installs once, all disabled
(`HTTP_FILTERS`, a constant set); a site switches one on for its own virtual host with
`typed_per_filter_config` (Envoy's `FilterConfig` wrapper), so adding, changing or
removing a feature on a site changes only `rds.json`, never the listener.
"""

from __future__ import annotations

from typing import Any

from controlplane.render.allowlist import ROUTE
from controlplane.render.clusters import cluster_name
from controlplane.render.overrides import confine
from controlplane.site.features import Access, AccessLog, Cors, RateLimit
from controlplane.site.fields import HeaderEdits, duration_ms, envoy_duration
from controlplane.site.formats import literal
from controlplane.site.routes import HeaderMatch, QueryMatch, Redirect, Route
from controlplane.site.spec import Site

_API = "type.googleapis.com/envoy.extensions.filters.http"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
RBAC, RATE_LIMIT = "envoy.filters.http.rbac", "envoy.filters.http.local_ratelimit"
CORS, COMPRESSOR = "envoy.filters.http.cors", "envoy.filters.http.compressor"
BASIC_AUTH = "envoy.filters.http.basic_auth"
NOBODY = "nobody:{SHA}AAAAAAAAAAAAAAAAAAAAAAAAAAA="
"""The listener's basic_auth filter needs users; it is disabled, and a site's own
config (its htpasswd file) replaces them. Nobody's SHA-1 digest is all zeros."""
ROUTER = "envoy.filters.http.router"
CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
GZIP = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"
_CODES = {301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT",
          308: "PERMANENT_REDIRECT"}
HTTP_FILTERS: tuple[dict[str, Any], ...] = (
    {"name": RBAC, "disabled": True, "typed_config": {"@type": f"{_API}.rbac.v3.RBAC"}},
    {"name": RATE_LIMIT, "disabled": True, "typed_config": {
        "@type": f"{_API}.local_ratelimit.v3.LocalRateLimit", "stat_prefix": "rate_limit"}},
    {"name": CORS, "disabled": True, "typed_config": {"@type": f"{_API}.cors.v3.Cors"}},
    {"name": BASIC_AUTH, "disabled": True, "typed_config": {
        "@type": f"{_API}.basic_auth.v3.BasicAuth", "users": {"inline_string": NOBODY}}},
    {"name": COMPRESSOR, "disabled": True, "typed_config": {
        "@type": f"{_API}.compressor.v3.Compressor",
        "compressor_library": {"name": "gzip", "typed_config": {"@type": GZIP}}}},
    {"name": ROUTER, "typed_config": {"@type": f"{_API}.router.v3.Router"}},
)
"""The HTTP filters of every HttpConnectionManager, in order: deny early, then limit,
then CORS (its preflights need no password), then ask for one, then compress; all off
until a virtual host turns one on."""
_CATCH_ALL = Route.model_validate({"prefix": "/"})
"""The route of a site without `routes`: everything to its one upstream."""


def virtual_host(site: Site, https_port: int, htpasswd: str | None = None) -> dict[str, Any]:
    """The site's virtual host; `https_port` is where its HTTP -> HTTPS redirects point;
    `htpasswd` is the digest of the site's htpasswd file (a changed file, a new version)."""
    routes = site.spec.routes or [_CATCH_ALL]
    rendered: list[dict[str, Any]] = []
    for number, route in enumerate(routes):
        main = _route(site, route)
        if site.spec.tls is not None and site.spec.tls.redirect and route.https_redirect:
            rendered.append(_no_password(_to_https(site, main["match"], https_port), site))
        if route.basic_auth is False:
            main = _no_password(main, site)
        rendered.append(_merged_route(site, number, main, route))
    vhost: dict[str, Any] = {"name": site.name, "domains": list(site.spec.domains),
                             "routes": rendered}
    vhost.update(header_fields(site.spec.request_headers, site.spec.response_headers))
    features = _features(site)
    if features:
        vhost["typed_per_filter_config"] = features
    if htpasswd is not None:
        vhost["metadata"] = {"filter_metadata": {"controlplane": {"htpasswd": htpasswd}}}
    return vhost


def _no_password(route: dict[str, Any], site: Site) -> dict[str, Any]:
    """A route of a site with basic_auth that asks for none: opted out, or the redirect
    to HTTPS (the password is asked over HTTPS, never sent in the clear first)."""
    if site.spec.basic_auth is None:
        return route
    return {**route, "typed_per_filter_config": {
        BASIC_AUTH: {"@type": FILTER_CONFIG, "disabled": True}}}


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


def _features(site: Site) -> dict[str, Any]:
    """`typed_per_filter_config`: each feature the site uses turns its filter on."""
    spec, configs = site.spec, {}
    if spec.access is not None:
        configs[RBAC] = _rbac(spec.access)
    if spec.rate_limit is not None:
        configs[RATE_LIMIT] = _rate_limit(spec.rate_limit, spec.stats_prefix or site.name)
    if spec.cors is not None:
        configs[CORS] = _cors(spec.cors)
    if spec.compression:
        configs[COMPRESSOR] = {"@type": f"{_API}.compressor.v3.CompressorPerRoute",
                               "overrides": {}}
    if spec.basic_auth is not None:
        configs[BASIC_AUTH] = {"@type": f"{_API}.basic_auth.v3.BasicAuthPerRoute",
                               "users": {"filename": spec.basic_auth.htpasswd}}
    return {name: {"@type": FILTER_CONFIG, "config": config}
            for name, config in sorted(configs.items())}


def _cidrs(blocks: list[str]) -> list[dict[str, Any]]:
    ids = []
    for block in blocks:
        address, _, length = block.partition("/")
        # remote_ip: the client's address as Envoy found it (behind trusted balancers,
        # from X-Forwarded-For or the PROXY protocol), not the balancer's.
        ids.append({"remote_ip": {"address_prefix": address, "prefix_len": int(length)}})
    return ids


def _rbac(access: Access) -> dict[str, Any]:
    """Deny wins: allow = in an allowed block and in no denied one."""
    if access.allow is None:
        action, principal = "DENY", {"or_ids": {"ids": _cidrs(access.deny or [])}}
    else:
        action, principal = "ALLOW", {"or_ids": {"ids": _cidrs(access.allow)}}
        if access.deny:
            principal = {"and_ids": {"ids": [principal, {"not_id": {
                "or_ids": {"ids": _cidrs(access.deny)}}}]}}
    return {"@type": f"{_API}.rbac.v3.RBACPerRoute", "rbac": {"rules": {
        "action": action,
        "policies": {"access": {"permissions": [{"any": True}], "principals": [principal]}},
    }}}


MAX_CLIENT_BUCKETS = 10_000
"""Per-client buckets one site keeps (Envoy evicts the least recently used): bounds the
memory a flood of addresses can take."""


def _rate_limit(limit: RateLimit, prefix: str) -> dict[str, Any]:
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"},
              "runtime_key": "controlplane_rate_limit"}
    bucket: dict[str, Any] = {"max_tokens": limit.burst or limit.requests,
                              "tokens_per_fill": limit.requests,
                              "fill_interval": envoy_duration(limit.per)}
    config: dict[str, Any] = {
        "@type": f"{_API}.local_ratelimit.v3.LocalRateLimit", "stat_prefix": prefix,
        "token_bucket": bucket, "filter_enabled": always, "filter_enforced": always}
    if limit.by == "client":
        # Each request's descriptor is its client's address (masked: an IPv6 client gets
        # its /64); a descriptor entry without a value makes one bucket per address seen.
        key = "masked_remote_address"
        config.update({
            "rate_limits": [{"actions": [{key: {"v4_prefix_mask_len": 32,
                                                "v6_prefix_mask_len": 64}}]}],
            "descriptors": [{"entries": [{"key": key}], "token_bucket": bucket}],
            "max_dynamic_descriptors": MAX_CLIENT_BUCKETS,
            "always_consume_default_token_bucket": False,
        })
    return config


def _cors(cors: Cors) -> dict[str, Any]:
    origins = [{"safe_regex": {"regex": ".*"}} if o == "*" else {"exact": o}
               for o in cors.origins]
    policy: dict[str, Any] = {"@type": f"{_API}.cors.v3.CorsPolicy",
                              "allow_origin_string_match": origins}
    for key, field in (("methods", "allow_methods"), ("headers", "allow_headers"),
                       ("expose_headers", "expose_headers")):
        if getattr(cors, key):
            policy[field] = ",".join(getattr(cors, key))
    if cors.max_age is not None:
        policy["max_age"] = str(duration_ms(cors.max_age) // 1000)
    if cors.credentials:
        policy["allow_credentials"] = True
    return policy


DEFAULT_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    '%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '"%REQ(USER-AGENT)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"'
)
"""Envoy's default access log line, with the route's site known from the file."""


def access_log(site: Site) -> dict[str, Any] | None:
    """The site's HCM access log entry: a file logger for the requests routed to it
    (selected by the route metadata that `_route` sets)."""
    log = site.spec.access_log
    if log is None:
        return None
    where = "xds.route_metadata.filter_metadata"
    expression = (f"'controlplane' in {where} && {where}['controlplane']['site'] =="
                  f" '{site.name}'")
    return {
        "name": "envoy.access_loggers.file",
        "filter": {"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel",
                                        "typed_config": {"@type": CEL_FILTER,
                                                         "expression": expression}}},
        "typed_config": {"@type": FILE_LOG, "path": log.path, "log_format": _log_format(log)},
    }


def _log_format(log: AccessLog) -> dict[str, Any]:
    """A line of text (Envoy's default, or the site's format), or one JSON object."""
    if isinstance(log.format, dict):
        return {"json_format": log.format}
    return {"text_format_source": {"inline_string": (log.format or DEFAULT_LOG_FORMAT) + "\n"}}
