"""The listener's constant HTTP filters, and a site's features as their per-route
configs (error pages, IP access lists, rate limits, CORS, forward and basic auth,
compression), with its access log.

The listener installs the filters once, all disabled (`HTTP_FILTERS`); a site switches
one on for its own virtual host with `typed_per_filter_config` (Envoy's `FilterConfig`
wrapper), so adding, changing or removing a feature on a site changes only `rds.json`,
never the listener.
"""

from __future__ import annotations

from typing import Any

from controlplane.render import authz
from controlplane.render.responses import CUSTOM_RESPONSE, LISTENER_FILTER, Page, custom_response
from controlplane.site.auth import AUTH
from controlplane.site.features import Access, AccessLog, Cors, RateLimit
from controlplane.site.fields import duration_ms, envoy_duration
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
HTTP_FILTERS: tuple[dict[str, Any], ...] = (
    LISTENER_FILTER,
    {"name": RBAC, "disabled": True, "typed_config": {"@type": f"{_API}.rbac.v3.RBAC"}},
    {"name": RATE_LIMIT, "disabled": True, "typed_config": {
        "@type": f"{_API}.local_ratelimit.v3.LocalRateLimit", "stat_prefix": "rate_limit"}},
    {"name": CORS, "disabled": True, "typed_config": {"@type": f"{_API}.cors.v3.Cors"}},
    *authz.LISTENER_FILTERS,
    {"name": BASIC_AUTH, "disabled": True, "typed_config": {
        "@type": f"{_API}.basic_auth.v3.BasicAuth", "users": {"inline_string": NOBODY}}},
    {"name": COMPRESSOR, "disabled": True, "typed_config": {
        "@type": f"{_API}.compressor.v3.Compressor",
        "compressor_library": {"name": "gzip", "typed_config": {"@type": GZIP}}}},
    {"name": ROUTER, "typed_config": {"@type": f"{_API}.router.v3.Router"}},
)
"""The HTTP filters of every HttpConnectionManager, in order: error pages (first, so they
see every later filter's replies), deny early, then limit, then CORS (its preflights need
no password), then ask the auth service (its vouched headers stripped from the client's
request first), then ask for a password, then compress; all off until a virtual host
turns one on."""


def bypass_all() -> dict[str, Any]:
    """A route's `typed_per_filter_config` that switches off every optional filter of the
    listener (error pages, access lists, rate limits, CORS, the auth service, passwords,
    compression): for a route that must answer anyone as it is, such as an ACME
    challenge. The header mutation stays on: it only strips the client's copies of the
    headers an auth service vouches for."""
    return {f["name"]: {"@type": FILTER_CONFIG, "disabled": True} for f in HTTP_FILTERS
            if f.get("disabled") and f["name"] != authz.HEADER_MUTATION}


def site_features(site: Site, pages: tuple[Page, ...] = ()) -> dict[str, Any]:
    """`typed_per_filter_config`: each feature the site uses turns its filter on."""
    spec, configs = site.spec, {}
    responses = custom_response(pages, spec.basic_auth.realm if spec.basic_auth else None)
    if responses is not None:
        configs[CUSTOM_RESPONSE] = responses
    if spec.access is not None:
        configs[RBAC] = _rbac(spec.access)
    if spec.rate_limit is not None:
        configs[RATE_LIMIT] = _rate_limit(spec.rate_limit, spec.stats_prefix or site.name)
    if spec.cors is not None:
        configs[CORS] = _cors(spec.cors)
    if spec.compression:
        configs[COMPRESSOR] = {"@type": f"{_API}.compressor.v3.CompressorPerRoute",
                               "overrides": {}}
    if spec.forward_auth is not None:
        configs.update(authz.configs(spec.forward_auth, f"{site.name}/{AUTH}",
                                     envoy_duration(spec.forward_auth.timeout)))
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
