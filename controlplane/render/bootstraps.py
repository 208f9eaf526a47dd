"""The Envoy bootstraps: the one users run (dynamic resources from the output files, the
admin interface on a Unix socket, the optional stats listener, the edge-proxy guide's
overload manager and connection limits).
"""

from __future__ import annotations

from typing import Any

from controlplane.errors import SettingsError
from controlplane.render.filters import HTTP_FILTERS
from controlplane.render.listeners import edge_limits
from controlplane.render.rendering import HCM
from controlplane.settings import CDS_FILE, LDS_FILE, Settings


def bootstrap(settings: Settings) -> dict[str, Any]:
    """An Envoy bootstrap that reads CDS and LDS from the files in the output folder,
    with the admin interface on a Unix socket (mode 0600) when one is given."""
    out = settings.out_dir.absolute()
    document: dict[str, Any] = {
        "node": {"id": "controlplane", "cluster": "controlplane"},
        "dynamic_resources": {
            "cds_config": {"path_config_source": {"path": str(out / CDS_FILE)},
                           "resource_api_version": "V3"},
            "lds_config": {"path_config_source": {"path": str(out / LDS_FILE)},
                           "resource_api_version": "V3"},
        },
    }
    if settings.admin_socket is not None:
        document["admin"] = {"address": {"pipe": {"path": str(settings.admin_socket.absolute()),
                                                  "mode": 0o600}}}
    if settings.stats_listen is not None:
        document["static_resources"] = stats_resources(settings)
    document["overload_manager"] = overload_manager(settings)
    limit = settings.listener_max_connections
    document["layered_runtime"] = {"layers": [{"name": "controlplane", "static_layer": {
        f"envoy.resource_limits.listener.{name}.connection_limit": limit
        for name in ("http", "https", STATS)}}]}
    return document


STATS = "stats"


STATS_CLUSTER = "_admin_stats"
"""Not a DNS label, so no site's cluster (`SITE`, `SITE/UPSTREAM`) can take the name."""


STATS_PATHS = ("/stats/prometheus", "/ready")
"""The admin paths the stats listener passes on: read-only, and all Prometheus needs."""


def stats_resources(settings: Settings) -> dict[str, Any]:
    """The stats listener and its cluster, the admin socket. Only GET or HEAD of exactly
    `STATS_PATHS` (after normalising the path; escaped slashes refused) reach admin;
    everything else is answered 404 by the listener itself, so `/quitquitquit`,
    `/config_dump` or `/runtime_modify` never reach Envoy's admin from there."""
    if settings.admin_socket is None or settings.stats_listen is None:
        raise SettingsError("stats_listen: needs admin_socket (the stats come from it)")
    allowed = [{"match": {"path": path, "headers": [{
        "name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}]},
                "route": {"cluster": STATS_CLUSTER, "timeout": "5s"}} for path in STATS_PATHS]
    refused = {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {
        "inline_string": "only GET /stats/prometheus and /ready are served here\n"}}}
    manager = {"@type": HCM, "stat_prefix": STATS, "normalize_path": True,
               "merge_slashes": True, "path_with_escaped_slashes_action": "REJECT_REQUEST",
               **edge_limits(settings),
               "route_config": {"name": STATS, "virtual_hosts": [
                   {"name": STATS, "domains": ["*"], "routes": [*allowed, refused]}]},
               "http_filters": [dict(HTTP_FILTERS[-1])]}
    address = settings.stats_listen
    admin = {"pipe": {"path": str(settings.admin_socket.absolute())}}
    return {
        "listeners": [{
            "name": STATS,
            "address": {"socket_address": {"address": address.host,
                                           "port_value": address.port}},
            "per_connection_buffer_limit_bytes": settings.buffer_limit_bytes,
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": manager}]}],
        }],
        "clusters": [{
            "name": STATS_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": STATS_CLUSTER, "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": admin}}]}]},
        }],
    }


_MONITORS = "type.googleapis.com/envoy.extensions.resource_monitors"


HEAP_MONITOR = "envoy.resource_monitors.fixed_heap"


def overload_manager(settings: Settings) -> dict[str, Any]:
    """The edge-proxy guide's overload manager: a cap on downstream connections, and a
    heap monitor that makes Envoy shrink its heap at 95% and refuse requests at 98%."""
    def when(value: float) -> list[dict[str, Any]]:
        return [{"name": HEAP_MONITOR, "threshold": {"value": value}}]

    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {"name": "envoy.resource_monitors.global_downstream_max_connections",
             "typed_config": {
                 "@type": f"{_MONITORS}.downstream_connections.v3.DownstreamConnectionsConfig",
                 "max_active_downstream_connections": settings.max_connections}},
            {"name": HEAP_MONITOR, "typed_config": {
                "@type": f"{_MONITORS}.fixed_heap.v3.FixedHeapConfig",
                "max_heap_size_bytes": settings.max_heap_bytes}},
        ],
        "actions": [
            {"name": "envoy.overload_actions.shrink_heap", "triggers": when(0.95)},
            {"name": "envoy.overload_actions.stop_accepting_requests", "triggers": when(0.98)},
        ],
    }
