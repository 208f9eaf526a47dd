"""The allow-list of the `envoy:` escape hatch: which field paths of a cluster, a route
and a virtual host a site may change, and which `Any` types it may give where.

No I/O. Patterns are canonical field paths (`routes[*].route.timeout`; a bracket holds a
map key or `*`), each allowing its whole subtree; `overrides.confine` judges a site's
changes against them (see `fence` for how changes are found). The README's table under
'The envoy: escape hatch' lists the same fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.compressor.v3 import compressor_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf.message import Message
from udpa.type.v1 import typed_struct_pb2 as udpa_typed_struct_pb2
from xds.type.v3 import typed_struct_pb2

from controlplane.render.fence import pattern

# Imported so that their Any types can be parsed and unpacked.
_ = (compressor_pb2, cors_pb2, local_rate_limit_pb2, rbac_pb2, http_protocol_options_pb2,
     typed_struct_pb2, udpa_typed_struct_pb2)

FILE_FIELDS = frozenset({
    "filename", "environment_variable", "watched_directory", "path_config_source",
    "event_log_path", "access_log_path", "access_log", "event_logger", "key_log", "tap",
})
"""Envoy fields that read a file or the environment, or write a file, with Envoy's rights
(a response body from `/etc/passwd`, a health-check event log anywhere). Sites get files
only through the site file's own, checked fields (`tls`, `access_log`)."""
CLUSTER_PICKERS = frozenset({"cluster_header", "cluster_specifier_plugin",
                             "inline_cluster_specifier_plugin"})
"""Fields that pick a cluster at request time, outside the site's own."""
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"
_PER_FILTER = {
    "envoy.filters.http.cors": "envoy.extensions.filters.http.cors.v3.CorsPolicy",
    "envoy.filters.http.rbac": "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
    "envoy.filters.http.local_ratelimit":
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "envoy.filters.http.compressor":
        "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute",
}
"""The project's own HTTP filters a virtual host or route may configure, and their types."""
_HEADER_EDITS = ("request_headers_to_add", "request_headers_to_remove",
                 "response_headers_to_add", "response_headers_to_remove")


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """What the hatch may change in one kind of resource."""

    message: type[Message]
    allowed: tuple[tuple[str, ...], ...]
    """Field paths (patterns) whose whole subtree may change."""
    types: Mapping[tuple[str, ...], frozenset[str]] = field(default_factory=dict)
    """The `Any` types allowed at a path; an `Any` anywhere else is refused."""
    fixed: frozenset[str] = frozenset()
    """Top-level fields the site file owns (said so in the refusal)."""


def _per_filter(prefix: str) -> tuple[list[str], dict[tuple[str, ...], frozenset[str]]]:
    paths, types = [], {}
    for name, kind in _PER_FILTER.items():
        at = f"{prefix}typed_per_filter_config[{name}]"
        paths.append(at)
        types[pattern(at)] = frozenset({FILTER_CONFIG, kind})
        types[pattern(f"{at}.config")] = frozenset({kind})
    return paths, types


_ROUTE_ACTION = (
    "cluster", "weighted_clusters.clusters[*].name", "weighted_clusters.clusters[*].weight",
    *(f"weighted_clusters.clusters[*].{h}" for h in _HEADER_EDITS),
    "weighted_clusters.clusters[*].host_rewrite_literal", "cluster_not_found_response_code",
    "prefix_rewrite", "regex_rewrite", "host_rewrite_literal", "auto_host_rewrite",
    "host_rewrite_header", "host_rewrite_path_regex", "append_x_forwarded_host", "timeout",
    "idle_timeout", "flush_timeout", "retry_policy", "request_mirror_policies", "priority",
    "hash_policy", "max_grpc_timeout", "grpc_timeout_offset", "upgrade_configs",
    "hedge_policy", "max_stream_duration",
)


def _route_paths(prefix: str) -> tuple[list[str], dict[tuple[str, ...], frozenset[str]]]:
    filters, types = _per_filter(prefix)
    paths = [*(f"{prefix}route.{a}" for a in _ROUTE_ACTION), *filters,
             *(f"{prefix}{p}" for p in (
                 "name", "match", "redirect", "direct_response.status",
                 "direct_response.body.inline_string", "direct_response.body.inline_bytes",
                 "decorator", "per_request_buffer_limit_bytes", "request_body_buffer_limit",
                 *_HEADER_EDITS))]
    return paths, types


def _policy(message: type[Message], paths: list[str],
            types: dict[tuple[str, ...], frozenset[str]], fixed: frozenset[str]) -> Policy:
    return Policy(message=message, allowed=tuple(pattern(p) for p in paths), types=types,
                  fixed=fixed)


_HEALTH_CHECK = (
    "timeout", "interval", "initial_jitter", "interval_jitter", "interval_jitter_percent",
    "unhealthy_threshold", "healthy_threshold", "reuse_connection", "no_traffic_interval",
    "no_traffic_healthy_interval", "unhealthy_interval", "unhealthy_edge_interval",
    "healthy_edge_interval", "http_health_check", "tcp_health_check", "grpc_health_check",
)
CLUSTER = _policy(cluster_pb2.Cluster, [
    "connect_timeout", "per_connection_buffer_limit_bytes", "lb_policy", "circuit_breakers",
    "outlier_detection", "common_lb_config", "round_robin_lb_config",
    "least_request_lb_config", "ring_hash_lb_config", "maglev_lb_config",
    "upstream_connection_options", "close_connections_on_host_health_failure",
    "ignore_health_on_host_removal", "common_http_protocol_options", "http_protocol_options",
    "http2_protocol_options", "upstream_http_protocol_options", "protocol_selection",
    "max_requests_per_connection", "track_timeout_budgets", "track_cluster_stats",
    "preconnect_policy", "connection_pool_per_downstream_connection",
    *(f"health_checks[*].{h}" for h in _HEALTH_CHECK),
    *(f"typed_extension_protocol_options[{HTTP_OPTIONS}].{o}" for o in (
        "common_http_protocol_options", "upstream_http_protocol_options",
        "explicit_http_config", "use_downstream_protocol_config", "auto_config")),
], {pattern(f"typed_extension_protocol_options[{HTTP_OPTIONS}]"): frozenset({HTTP_OPTIONS})},
    frozenset({"name", "type", "cluster_type", "load_assignment", "eds_cluster_config",
               "alt_stat_name"}))
"""Cluster fields the hatch may set: timeouts, limits, load balancing, health checks
(without event logs or custom checkers), connection and HTTP protocol options."""
ROUTE = _policy(route_components_pb2.Route, *_route_paths(""),
                frozenset({"stat_prefix", "metadata"}))
"""Route fields the hatch may set: the match, the action's timeouts, retries, hashing,
rewrites, upgrades and mirrors (to the site's own clusters), redirects, inline
direct responses, header edits, decorators and the project's own per-filter configs."""
_VHOST_ROUTES, _VHOST_ROUTE_TYPES = _route_paths("routes[*].")
_VHOST_FILTERS, _VHOST_FILTER_TYPES = _per_filter("")
VIRTUAL_HOST = _policy(route_components_pb2.VirtualHost, [
    "include_request_attempt_count", "include_attempt_count_in_response",
    "include_is_timeout_retry_header", "retry_policy", "hedge_policy",
    "per_request_buffer_limit_bytes", "request_body_buffer_limit", "request_mirror_policies",
    *_HEADER_EDITS, *_VHOST_FILTERS, *_VHOST_ROUTES,
], {**_VHOST_FILTER_TYPES, **_VHOST_ROUTE_TYPES}, frozenset({"name", "domains"}))
"""Virtual host fields the hatch may set: the route fields above under `routes`, retry
and hedge policies, mirrors, header edits and the project's own per-filter configs."""
