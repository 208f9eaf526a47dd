"""Pure rendering of a TCP or passthrough site: its cluster, and either its own listener
(`kind: tcp`) or its filter chain on the HTTPS listener, chosen by SNI
(`kind: tls-passthrough`), each forwarding bytes with Envoy's tcp_proxy.

These live on listeners, not in `rds.json`: adding, changing or removing a TCP site adds,
changes or removes its own listener (the others stay as they are); a passthrough site's
change is a filter-chain update of the HTTPS listener, which drains only that chain.
"""

from __future__ import annotations

from typing import Any

from controlplane.render.clusters import address
from controlplane.site.fields import envoy_duration
from controlplane.site.streams import StreamSite

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_LB = {"round_robin": "ROUND_ROBIN", "least_request": "LEAST_REQUEST", "random": "RANDOM"}


def listener_name(site: StreamSite) -> str:
    """`tcp-SITE`: never `http`, `https` or `stats` (a site's name is a DNS label)."""
    return f"tcp-{site.name}"


def cluster(site: StreamSite, buffer_limit: int) -> dict[str, Any]:
    """The site's one cluster, `SITE`, STATIC like every other."""
    spec = site.upstream
    rendered: dict[str, Any] = {
        "name": site.name, "type": "STATIC",
        "connect_timeout": envoy_duration(spec.connect_timeout),
        "per_connection_buffer_limit_bytes": buffer_limit,
        "load_assignment": {"cluster_name": site.name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": address(e)}} for e in spec.endpoints]}]},
    }
    if spec.lb_policy != "round_robin":
        rendered["lb_policy"] = _LB[spec.lb_policy]
    if spec.circuit_breaker is not None:
        rendered["circuit_breakers"] = {"thresholds": [
            spec.circuit_breaker.model_dump(exclude_none=True)]}
    return rendered


def tcp_proxy(site: StreamSite) -> dict[str, Any]:
    """The network filter that carries the bytes to the site's cluster."""
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": TCP_PROXY, "stat_prefix": site.name.replace("-", "_"), "cluster": site.name,
        "idle_timeout": envoy_duration(site.spec.idle_timeout)}}


def chain(site: StreamSite) -> dict[str, Any]:
    """A passthrough site's filter chain on the HTTPS listener: matched by SNI, no TLS
    context (the bytes pass as they come)."""
    assert site.spec.domains is not None
    return {"name": f"passthrough-{site.name}",
            "filter_chain_match": {"server_names": list(site.spec.domains)},
            "filters": [tcp_proxy(site)]}


def tcp_listener(site: StreamSite, buffer_limit: int) -> dict[str, Any]:
    """A TCP site's own listener, without the listener filters (`listeners` adds them)."""
    host, port = site.spec.listen_port()
    return {"name": listener_name(site),
            "address": {"socket_address": {"address": host, "port_value": port}},
            "per_connection_buffer_limit_bytes": buffer_limit,
            "filter_chains": [{"filters": [tcp_proxy(site)]}]}
