"""Pure rendering of one upstream into an Envoy Cluster (JSON form): endpoints, load
balancing, active health checks, circuit breakers, HTTP/2, stats name.

Names: a site with one `upstream` gets the cluster `SITE`; named upstreams get
`SITE/UPSTREAM`. Clusters are STATIC: sockets are `pipe` addresses, TCP hosts are IPs.
"""

from __future__ import annotations

from typing import Any

from controlplane.site.fields import envoy_duration
from controlplane.site.spec import Site
from controlplane.site.upstreams import Endpoint, Upstream

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_LB = {"round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST", "random": "RANDOM"}


def cluster_name(site: Site, upstream: str) -> str:
    return f"{site.name}/{upstream}" if upstream else site.name


def stats_name(site: Site, upstream: str) -> str:
    """The cluster's stats prefix: `cluster.<this>.`; dots keep the site's stats together."""
    prefix = site.spec.stats_prefix or site.name
    return f"{prefix}.{upstream}" if upstream else prefix


def cluster(site: Site, upstream: str, buffer_limit: int | None = None) -> dict[str, Any]:
    """The Cluster of one upstream of a site (`""` for the site's single upstream);
    `buffer_limit` is its per-connection buffer (the edge-proxy guide's 32 KiB)."""
    name = cluster_name(site, upstream)
    spec = site.upstream(upstream)
    rendered: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": envoy_duration(spec.connect_timeout),
        **({} if buffer_limit is None else {"per_connection_buffer_limit_bytes": buffer_limit}),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(e)}}
                                            for e in spec.endpoints]}],
        },
    }
    if site.spec.stats_prefix is not None:
        rendered["alt_stat_name"] = stats_name(site, upstream)
    rendered.update(_options(spec, _health_host(site)))
    return rendered


def _health_host(site: Site) -> str:
    """The Host of health checks: the site's first plain domain (Envoy's default, the
    cluster name, is `site/upstream` for named upstreams, which nginx answers with 400)."""
    plain = [d for d in site.spec.domains if "*" not in d]
    return plain[0] if plain else site.name


def address(endpoint: Endpoint) -> dict[str, Any]:
    if endpoint.socket is not None:
        return {"pipe": {"path": endpoint.socket}}
    host, port = endpoint.host_port()
    return {"socket_address": {"address": host, "port_value": port}}


def _options(spec: Upstream, health_host: str) -> dict[str, Any]:
    """Only the options that differ from Envoy's defaults, so plain sites stay small."""
    options: dict[str, Any] = {}
    if spec.lb_policy != "round_robin":
        options["lb_policy"] = _LB[spec.lb_policy]
    if spec.health_check is not None:
        check = spec.health_check
        http: dict[str, Any] = {"path": check.path, "host": check.host or health_host}
        options["health_checks"] = [{
            "timeout": envoy_duration(check.timeout),
            "interval": envoy_duration(check.interval),
            "no_traffic_interval": envoy_duration(check.interval),  # Envoy's default: 60s
            "healthy_threshold": check.healthy,
            "unhealthy_threshold": check.unhealthy,
            "http_health_check": http,
        }]
    if spec.circuit_breaker is not None:
        limits = spec.circuit_breaker.model_dump(exclude_none=True)
        options["circuit_breakers"] = {"thresholds": [limits]}
    if spec.http2:
        options["typed_extension_protocol_options"] = {HTTP_OPTIONS: {
            "@type": f"type.googleapis.com/{HTTP_OPTIONS}",
            "explicit_http_config": {"http2_protocol_options": {}},
        }}
    return options
