"""The one listener builder: the HTTP listener and, while some site has TLS, the HTTPS
listener, with the connection manager both share. It serves both the LDS file and the
scratch bootstrap of `envoy --mode validate` (`Delivery`), so what is validated is
what is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controlplane.render import tls as tls_rendering
from controlplane.render.filters import HTTP_FILTERS
from controlplane.render.rendering import HCM, SiteResources
from controlplane.settings import RDS_FILE, Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """How the listeners reach what the output files hold: the one difference between the
    listeners Envoy serves and those `envoy --mode validate` checks, so what is validated
    is what is served. Served: routes from `rds.json`, secrets from SDS files, the
    configured addresses. Validated (validate mode reads no path-based dynamic files,
    envoyproxy/envoy#24663): the same routes inline, the secrets static, access logs to
    /dev/null (validate opens every log it is given), and addresses never bound."""

    routes: dict[str, Any]
    """The HCM's `rds`, or its `route_config`."""
    http: tuple[str, int]
    https: tuple[str, int]
    static_secrets: bool = False
    null_logs: bool = False


def served(settings: Settings) -> Delivery:
    """The listeners of the LDS file."""
    return Delivery(routes=rds(settings), http=(settings.listen.host, settings.listen.port),
                    https=(settings.listen_tls.host, settings.listen_tls.port))


def validated(settings: Settings, sites: Sequence[SiteResources]) -> Delivery:
    """The listeners of the scratch bootstrap: the route file's content inline."""
    routes = route_config(settings, [r.virtual_host for r in sites if r.virtual_host])
    return Delivery(routes={"route_config": routes}, http=("127.0.0.1", 1),
                    https=("127.0.0.1", 2), static_secrets=True, null_logs=True)


def listeners(settings: Settings, sites: Sequence[SiteResources],
              delivery: Delivery | None = None) -> list[dict[str, Any]]:
    """The HTTP listener; the HTTPS listener while some site has TLS or passes TLS through
    (its chains chosen by SNI); and each TCP site's own listener. Routes come through RDS
    from a file and site features are per-virtual-host filter configs, so the listeners
    change only when a TLS, passthrough or TCP site or an access log comes, goes or
    changes."""
    delivery = delivery or served(settings)
    logs = [_null_log(r.access_log) if delivery.null_logs else r.access_log
            for r in sites if r.access_log is not None]
    manager = hcm(settings, delivery.routes, logs)
    found = [_listener(settings, "http", delivery.http, [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}])]
    chains = [tls_rendering.filter_chain(
        r.name, list(r.tls.domains),
        r.tls.static_context if delivery.static_secrets else r.tls.context, manager)
        if r.tls is not None else dict(r.passthrough or {})
        for r in sites if r.tls is not None or r.passthrough is not None]
    if chains:
        found.append(_listener(settings, "https", delivery.https, chains,
                               tls_rendering.TLS_INSPECTOR_FILTER))
    found.extend({**r.tcp_listener, **listener_filters(settings)}
                 for r in sites if r.tcp_listener is not None)
    return found


def listener(settings: Settings, access_logs: list[dict[str, Any]] | None = None) -> dict[
        str, Any]:
    """The HTTP listener of the LDS file: one filter chain, routes from `rds.json`."""
    manager = hcm(settings, rds(settings), access_logs or [])
    return _listener(settings, "http", (settings.listen.host, settings.listen.port), [{
        "filters": [{"name": "envoy.filters.network.http_connection_manager",
                     "typed_config": manager}]}])


def _listener(settings: Settings, name: str, address: tuple[str, int],
              chains: list[dict[str, Any]], *filters: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": address[0], "port_value": address[1]}},
        "per_connection_buffer_limit_bytes": settings.buffer_limit_bytes,
        **listener_filters(settings, *filters),
        "filter_chains": chains,
    }


def _null_log(log: dict[str, Any]) -> dict[str, Any]:
    return {**log, "typed_config": {**log["typed_config"], "path": "/dev/null"}}


PROXY_PROTOCOL = ("type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3"
                  ".ProxyProtocol")


def listener_filters(settings: Settings, *after: dict[str, Any]) -> dict[str, Any]:
    """The listener filters: the PROXY protocol first when a balancer speaks it, then
    `after` (the HTTPS listener's TLS inspector)."""
    found = [{"name": "envoy.filters.listener.proxy_protocol",
              "typed_config": {"@type": PROXY_PROTOCOL}}] if settings.proxy_protocol else []
    found.extend(after)
    return {"listener_filters": found} if found else {}


def rds(settings: Settings) -> dict[str, Any]:
    """The HCM's routes: the one RouteConfiguration of `rds.json`, shared by every HCM
    (Envoy keeps one subscription for equal RDS configs)."""
    return {"rds": {
        "route_config_name": settings.route_config_name,
        "config_source": {"path_config_source": {
            "path": str(settings.out_dir.absolute() / RDS_FILE)}, "resource_api_version": "V3"},
    }}


def hcm(settings: Settings, routes: dict[str, Any],
        access_logs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The HttpConnectionManager, with its routes given as `rds` or `route_config`, the
    constant set of HTTP filters, and the sites' access logs."""
    manager = {
        "@type": HCM,
        "stat_prefix": settings.stat_prefix,
        **client_address(settings),
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": settings.escaped_slashes.upper(),
        **edge_limits(settings),
        **routes,
        "http_filters": [dict(f) for f in HTTP_FILTERS],
    }
    if access_logs:
        manager["access_log"] = list(access_logs)
    return manager


XFF_DETECTION = ("type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3"
                 ".XffConfig")


def client_address(settings: Settings) -> dict[str, Any]:
    """How the HCM finds the client's address. By default the connection's own (the
    edge: `use_remote_address`, Envoy appends it to X-Forwarded-For). Behind balancers
    listed in `trusted_proxies`: Envoy's XFF detection, which Envoy refuses beside
    `use_remote_address`, so Envoy then leaves X-Forwarded-For as the balancer sent it.
    With `xff_trusted_hops`: that many hops of X-Forwarded-For are believed."""
    if settings.trusted_proxies:
        blocks = []
        for block in settings.trusted_proxies:
            address, _, length = block.partition("/")
            blocks.append({"address_prefix": address, "prefix_len": int(length)})
        return {"original_ip_detection_extensions": [{
            "name": "envoy.extensions.http.original_ip_detection.xff",
            "typed_config": {"@type": XFF_DETECTION, "xff_trusted_cidrs": {"cidrs": blocks}},
        }]}
    found: dict[str, Any] = {"use_remote_address": True}
    if settings.xff_trusted_hops:
        found["xff_num_trusted_hops"] = settings.xff_trusted_hops
    return found


def edge_limits(settings: Settings) -> dict[str, Any]:
    """The HCM's timeouts and HTTP/2 limits that Envoy's edge-proxy guide asks an edge
    to set (Envoy's defaults suit a service mesh)."""
    limits: dict[str, Any] = {
        "request_headers_timeout": seconds(settings.request_headers_timeout_s),
        "stream_idle_timeout": seconds(settings.stream_idle_timeout_s),
        "common_http_protocol_options": {
            "idle_timeout": seconds(settings.idle_timeout_s),
            "headers_with_underscores_action": settings.headers_with_underscores.upper(),
        },
        "http2_protocol_options": {
            "max_concurrent_streams": settings.http2_max_concurrent_streams,
            "initial_stream_window_size": settings.http2_initial_stream_window_bytes,
            "initial_connection_window_size": settings.http2_initial_connection_window_bytes,
        },
    }
    if settings.request_timeout_s > 0:
        limits["request_timeout"] = seconds(settings.request_timeout_s)
    return limits


def seconds(value: float) -> str:
    """A protobuf JSON duration: `10s`, `0.250s`."""
    millis = round(value * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis / 1000:.3f}s"


def route_config(settings: Settings, vhosts: list[dict[str, Any]]) -> dict[str, Any]:
    """The one RouteConfiguration. `Host: a.example:8080` matches the domain `a.example`;
    every request upstream carries the client's address as Envoy found it."""
    return {"ignore_port_in_host_matching": True, "name": settings.route_config_name,
            "request_headers_to_add": [dict(REAL_IP)], "virtual_hosts": vhosts}


REAL_IP = {"append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "header": {
    "key": "x-real-ip", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}
"""A client's own `X-Real-IP` is replaced, never believed."""
