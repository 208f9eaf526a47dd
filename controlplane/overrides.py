"""The `envoy:` escape hatch: Envoy fields a site merges into its own generated
resources, and the allow-list that keeps them there.

Merge rules (`merge`), applied to Envoy's JSON form:

- a mapping merges into a mapping key by key, recursively;
- `null` deletes the key (back to Envoy's default);
- anything else replaces: scalars, lists (a list is never merged item by item), and a
  mapping whose `@type` differs from the generated one (another message type).

`confine` then parses the generated resource and the merged one into Envoy's message
and lets through only changes in the allow-listed field paths of `CLUSTER`,
`VIRTUAL_HOST` and `ROUTE`, with `Any` types allowed only where listed (see `fence` for
how the paths are found). Whatever the allow-list says, no field that opens a file or
reads the environment (`FILE_FIELDS`) and no field that picks a cluster at request time
(`CLUSTER_PICKERS`) passes; every cluster a route or a mirror names is the site's own;
header values are formats with only the allowed commands; no string holds a control
character. Each refusal names the site file and the field as the user spelled it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.compressor.v3 import compressor_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from udpa.type.v1 import typed_struct_pb2 as udpa_typed_struct_pb2
from xds.type.v3 import typed_struct_pb2

from controlplane import formats
from controlplane.errors import Problem, SiteError
from controlplane.fence import (
    TYPED_STRUCTS,
    Change,
    Field,
    Path,
    canonical_keys,
    changes,
    covered,
    matched,
    pattern,
    spelled,
    strings,
    visit,
)

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
MAX_BUFFER_BYTES = 1024 * 1024
"""The most a buffer limit set through the hatch may be: Envoy's own default. Envoy's
memory is shared by every site, so no site may raise its buffers past it."""
_BUFFER_LIMITS = ("per_connection_buffer_limit_bytes", "per_request_buffer_limit_bytes",
                  "request_body_buffer_limit")
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


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into a copy of `base` by the rules above."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and (
                value.get("@type", merged[key].get("@type")) == merged[key].get("@type")):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse(resource: dict[str, Any], message: type[Message], where: str, field: str) -> Message:
    """`resource` parsed strictly into `message`; a failure names the file and `field`."""
    try:
        return json_format.ParseDict(resource, message(), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        reason = str(exc).split("\n Available Fields", 1)[0].strip()
        if "oneof" in reason:
            reason += (" (Envoy takes one of them: set the generated one to null, e.g."
                       " 'cluster: null', to choose another)")
        raise SiteError([Problem(where, field, reason)]) from None
    except (TypeError, ValueError, AttributeError) as exc:  # ParseDict on odd values
        raise SiteError([Problem(where, field, f"not Envoy's JSON form: {exc}")]) from None


def confine(where: str, field: str, policy: Policy, base: dict[str, Any],
            override: dict[str, Any], own: frozenset[str] = frozenset()) -> dict[str, Any]:
    """`override` merged into `base` and re-written in canonical form, if the result
    stays inside the site; else a SiteError naming each field as written under `field`
    (`envoy.virtual_host...`)."""
    _check_type_urls(where, field, override)
    merged = merge(base, canonical_keys(override, policy.message.DESCRIPTOR))
    before = parse(base, policy.message, where, field)
    after = parse(merged, policy.message, where, field)
    found: dict[str, str] = {}
    for change in changes(before, after):
        verdict = judge(policy, change)
        if verdict is not None:
            found.setdefault(spelled(verdict[0], override), verdict[1])
    for path, reason in values(after, own):
        found.setdefault(spelled(path, override), reason)
    if found:
        raise SiteError([Problem(where, f"{field}.{path}", reason)
                         for path, reason in sorted(found.items())])
    # Envoy gets the message that was judged, in canonical form: no parser differences.
    return dict(json_format.MessageToDict(after, preserving_proto_field_name=True))


def _check_type_urls(where: str, field: str, node: Any, path: str = "") -> None:
    """Every `@type` is a string (ParseDict fails on others with no path)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(
        node, list) else ()
    for key, value in items:
        here = f"{path}.{key}" if path else str(key)
        if key == "@type" and not isinstance(value, str):
            raise SiteError([Problem(where, f"{field}.{here}", "must be a type URL such as"
                                     " 'type.googleapis.com/envoy.config.route.v3.FilterConfig'")])
        _check_type_urls(where, field, value, here)


def judge(policy: Policy, change: Change) -> tuple[Path, str] | None:
    """None when `policy` allows `change`; else the path to name and the reason."""
    path = change.path
    for depth, segment in enumerate(path, 1):
        if isinstance(segment, Field) and segment.name in FILE_FIELDS:
            return path[:depth], ("makes Envoy open a file or read its environment; a site"
                                  " may not (use the site file's own tls and access_log)")
        if isinstance(segment, Field) and segment.name in CLUSTER_PICKERS:
            return path[:depth], "picks a cluster at request time; a site may only use its own"
    if change.type_name:
        return _judge_type(policy, change)
    if covered(policy.allowed, path) or (
            change.removed and matched(policy.allowed, path) == len(path)):
        return None
    cut = path[:matched(policy.allowed, path) + 1]
    if len(cut) == 1 and str(cut[0]) in policy.fixed:
        return cut, "fixed by the site file; it cannot be overridden"
    return cut, "not on the escape hatch's allow-list (see README 'The envoy: escape hatch')"


def _judge_type(policy: Policy, change: Change) -> tuple[Path, str] | None:
    name, path = change.type_name, change.path
    if name in TYPED_STRUCTS:
        return path, (f"{name} is refused: it hides an extension's fields; write the"
                      " extension's own @type")
    allowed = set().union(*(kinds for parts, kinds in policy.types.items()
                            if len(parts) == len(path) and matched((parts,), path) == len(path)))
    if name in allowed:
        return None
    listed = f"; allowed here: {', '.join(sorted(allowed))}" if allowed else ""
    return path, f"the type {name} is not allowed here{listed}"


def values(message: Message, own: frozenset[str]) -> list[tuple[Path, str]]:
    """What is wrong with the values in `message`: clusters not of the site, header
    values with commands not allowed, control characters."""
    found: list[tuple[Path, str]] = []

    def check(path: Path, descriptor: Descriptor, item: Message) -> None:
        for name in _BUFFER_LIMITS:
            fd = descriptor.fields_by_name.get(name)
            if fd is not None and item.HasField(name) and _bytes(item, name) > MAX_BUFFER_BYTES:
                found.append(((*path, Field(name, fd.json_name)),
                              f"{_bytes(item, name)} is over {MAX_BUFFER_BYTES} bytes, Envoy's"
                              " default; a site may lower its buffers, not raise them"))
        for named in _clusters_named(descriptor.full_name, item):
            if named not in own:
                name = _CLUSTER_FIELD[descriptor.full_name]
                found.append(((*path, Field(name, name)),
                              f"{named!r} is not a cluster of this site (its own:"
                              f" {', '.join(sorted(own)) or 'none'})"))
        is_body = len(path) >= 2 and str(path[-1]) == "body" and str(
            path[-2]) == "direct_response"
        for fd, text in strings(item):
            bad = formats.control_character(text, formats.BODY_ALLOWED if is_body else "")
            if bad is None and descriptor.full_name == "envoy.config.core.v3.HeaderValue" and (
                    fd.name in ("value", "raw_value")):
                bad = formats.format_problem(text)
            elif bad is not None:
                bad = f"holds {bad}; control characters are not allowed"
            if bad is not None:
                found.append(((*path, Field(fd.name, fd.json_name)), bad))

    visit(message, check)
    return found


_CLUSTER_FIELD = {
    "envoy.config.route.v3.RouteAction": "cluster",
    "envoy.config.route.v3.WeightedCluster.ClusterWeight": "name",
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy": "cluster",
}


def _bytes(item: Message, name: str) -> int:
    value = getattr(item, name)
    return int(getattr(value, "value", value))


def _clusters_named(kind: str, item: Message) -> tuple[str, ...]:
    name = _CLUSTER_FIELD.get(kind)
    value = getattr(item, name) if name is not None else ""
    return (value,) if value else ()
