"""Pure rendering: validated Sites -> Envoy resources, and resources -> file bytes.

Each site renders on its own into a `SiteResources` (its clusters, its virtual host, its
TLS secret and access log, as Envoy's JSON form, each parsed strictly into Envoy's
protobuf types once, after the site's `envoy:` overrides are merged in). The files are
then assembled (`snapshot`) from cached per-resource JSON fragments, so a pass over 10,000 sites
that changes one re-renders one. Output is deterministic: sorted keys, sorted
resources, `version_info` a hash of the content.

The pieces: `clusters` (upstreams), `vhosts` (routes and site-wide features), `tls`
(secrets and HTTPS filter chains), `overrides` (the escape hatch).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.compression.gzip.compressor.v3 import gzip_pb2
from envoy.extensions.filters.http.basic_auth.v3 import basic_auth_pb2
from envoy.extensions.filters.http.compressor.v3 import compressor_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.proxy_protocol.v3 import proxy_protocol_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.http.original_ip_detection.xff.v3 import xff_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from controlplane.errors import Problem, SettingsError, SiteError
from controlplane.render import allowlist
from controlplane.render import overrides as hatch
from controlplane.render import tls as tls_rendering
from controlplane.render.clusters import cluster, cluster_name
from controlplane.render.vhosts import HTTP_FILTERS, access_log, virtual_host
from controlplane.settings import CDS_FILE, LDS_FILE, RDS_FILE, Settings
from controlplane.site.spec import Site

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_CONFIGURATION = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = tls_rendering.SECRET
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
_MESSAGES: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    LISTENER: listener_pb2.Listener,
    ROUTE_CONFIGURATION: route_pb2.RouteConfiguration,
    SECRET: secret_pb2.Secret,
    "virtual_host": route_components_pb2.VirtualHost,
    "access_log": http_connection_manager_pb2.HttpConnectionManager,
    "tls_context": tls_pb2.DownstreamTlsContext,
}
# Imported for their side effect: the Any types inside the resources must be registered.
_ = (basic_auth_pb2, router_pb2, file_pb2, cel_pb2, gzip_pb2, compressor_pb2, cors_pb2,
     local_rate_limit_pb2, rbac_pb2, tls_inspector_pb2, http_protocol_options_pb2,
     proxy_protocol_pb2, xff_pb2)


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteTls:
    """A TLS site's share of the HTTPS listener and of the SDS files."""

    secret_name: str
    secret: dict[str, Any]
    secret_json: str
    context: dict[str, Any]
    """DownstreamTlsContext naming the secret by SDS file (`sds_file` filled at assembly)."""
    static_context: dict[str, Any]
    """The same naming a static secret (the scratch bootstrap of `envoy --mode validate`)."""
    domains: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteResources:
    """One site's share of the output: clusters and virtual host, with JSON fragments."""

    name: str
    digest: str
    """Hash of the rendered resources: the key of the Envoy verification cache."""
    clusters: tuple[tuple[str, dict[str, Any]], ...]
    virtual_host: dict[str, Any]
    cluster_json: tuple[tuple[str, str], ...]
    virtual_host_json: str
    tls: SiteTls | None = None
    access_log: dict[str, Any] | None = None


def render_site(site: Site, settings: Settings | None = None, *,
                htpasswd: str | None = None) -> SiteResources:
    """Render one site, merge its overrides, and check every resource against Envoy's
    API types; a failure names the site file and the Envoy field. `htpasswd` is the
    digest of the site's htpasswd file, which the daemon read."""
    settings = settings or Settings()
    clusters = tuple((cluster_name(site, u), _cluster(site, u, settings.buffer_limit_bytes))
                     for u in site.upstream_names())
    vhost = _virtual_host(site, settings, htpasswd)
    for name, rendered in clusters:
        check_types(rendered, CLUSTER, site.source, f"cluster {name}")
    check_types(vhost, "virtual_host", site.source, "virtual_host")
    log = access_log(site)
    if log is not None:
        check_types({"access_log": [log]}, "access_log", site.source, "access_log")
    site_tls = _site_tls(site, settings)
    cluster_json = tuple((n, fragment(c, CLUSTER)) for n, c in clusters)
    vhost_json = fragment(vhost, None)
    extra = [fragment(log or {}, None), site_tls.secret_json if site_tls else "",
             fragment(site_tls.context, None) if site_tls else ""]
    digest = _hash([j for _, j in cluster_json] + [vhost_json] + extra)
    return SiteResources(name=site.name, digest=digest, clusters=clusters, virtual_host=vhost,
                         cluster_json=cluster_json, virtual_host_json=vhost_json,
                         tls=site_tls, access_log=log)


def _cluster(site: Site, upstream: str, buffer_limit: int) -> dict[str, Any]:
    rendered = cluster(site, upstream, buffer_limit)
    overrides = site.spec.envoy
    if overrides is None:
        return rendered
    for field, override in (("envoy.cluster", overrides.cluster),
                            (f"envoy.clusters.{upstream}", (overrides.clusters or {}).get(
                                upstream))):
        if override:
            rendered = hatch.confine(site.source, field, allowlist.CLUSTER, rendered, override)
    return rendered


def _virtual_host(site: Site, settings: Settings, htpasswd: str | None) -> dict[str, Any]:
    port = settings.https_redirect_port or settings.listen_tls.port
    vhost = virtual_host(site, port, htpasswd)
    override = site.spec.envoy.virtual_host if site.spec.envoy else None
    if override:
        own = frozenset(cluster_name(site, u) for u in site.upstream_names())
        vhost = hatch.confine(site.source, "envoy.virtual_host", allowlist.VIRTUAL_HOST, vhost,
                             override, own)
    return vhost


def _site_tls(site: Site, settings: Settings) -> SiteTls | None:
    spec = site.spec.tls
    if spec is None:
        return None
    name = tls_rendering.secret_name(spec)
    secret = tls_rendering.secret(spec)
    context = tls_rendering.tls_context(spec, tls_rendering.sds_path(settings.out_dir, name))
    check_types(secret, SECRET, site.source, "tls secret")
    check_types({k: v for k, v in context.items() if k != "@type"}, "tls_context",
                site.source, "tls context")
    return SiteTls(secret_name=name, secret=secret, secret_json=fragment(secret, SECRET),
                   context=context, static_context=tls_rendering.tls_context(spec, None),
                   domains=tuple(site.spec.domains))


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
    routes = route_config(settings, [r.virtual_host for r in sites])
    return Delivery(routes={"route_config": routes}, http=("127.0.0.1", 1),
                    https=("127.0.0.1", 2), static_secrets=True, null_logs=True)


def listeners(settings: Settings, sites: Sequence[SiteResources],
              delivery: Delivery | None = None) -> list[dict[str, Any]]:
    """The HTTP listener, and the HTTPS listener while some site has TLS. Routes come
    through RDS from a file and site features are per-virtual-host filter configs, so
    the listeners change only when a TLS site or an access log comes, goes or changes."""
    delivery = delivery or served(settings)
    logs = [_null_log(r.access_log) if delivery.null_logs else r.access_log
            for r in sites if r.access_log is not None]
    manager = hcm(settings, delivery.routes, logs)
    found = [_listener(settings, "http", delivery.http, [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}])]
    chains = [tls_rendering.filter_chain(
        r.name, list(r.tls.domains),
        r.tls.static_context if delivery.static_secrets else r.tls.context, manager)
        for r in sites if r.tls is not None]
    if chains:
        found.append(_listener(settings, "https", delivery.https, chains,
                               tls_rendering.TLS_INSPECTOR_FILTER))
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


def route_configuration(settings: Settings, vhost_fragments: list[str]) -> str:
    """The RouteConfiguration as a JSON fragment, from cached virtual-host fragments: the
    keys of `route_config` with `virtual_hosts` (sorted last) spliced in."""
    head = fragment(route_config(settings, []), ROUTE_CONFIGURATION)
    return f'{head[:-2]}{",".join(vhost_fragments)}]}}'


def route_config(settings: Settings, vhosts: list[dict[str, Any]]) -> dict[str, Any]:
    """The one RouteConfiguration. `Host: a.example:8080` matches the domain `a.example`;
    every request upstream carries the client's address as Envoy found it."""
    return {"ignore_port_in_host_matching": True, "name": settings.route_config_name,
            "request_headers_to_add": [dict(REAL_IP)], "virtual_hosts": vhosts}


REAL_IP = {"append_action": "OVERWRITE_IF_EXISTS_OR_ADD", "header": {
    "key": "x-real-ip", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}
"""A client's own `X-Real-IP` is replaced, never believed."""


def message_type(kind: str) -> type[Message]:
    """Envoy's protobuf type of a resource (`@type` URL) or part (`virtual_host`)."""
    return _MESSAGES[kind]


def check_types(resource: dict[str, Any], kind: str, where: str, what: str) -> None:
    """Parse strictly into Envoy's protobuf type; a failure names the Envoy field."""
    try:
        json_format.ParseDict(resource, _MESSAGES[kind](), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        reason = str(exc).split("\n Available Fields", 1)[0].strip()
        raise SiteError([Problem(where, f"envoy.{what}", reason)]) from None


def fragment(resource: dict[str, Any], type_url: str | None) -> str:
    body = {"@type": type_url, **resource} if type_url else resource
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)


def discovery_response(fragments: list[str], salt: str = "") -> tuple[str, bytes]:
    """(version, file bytes) of a DiscoveryResponse holding `fragments` in order.

    `salt` makes a new version for the same content (re-installing after a rejection)."""
    version = _hash([*fragments, salt])
    text = f'{{"resources":[{",".join(fragments)}],"version_info":"{version}"}}\n'
    return version, text.encode()


def _hash(parts: list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """What Envoy gets, built once from the serving sites: each resource as its JSON
    fragment, under its name. The Publisher, `render`, `check` and `diff` take it as it
    is; nothing parses the fragments back to learn a name."""

    clusters: Mapping[str, str]
    routes: str
    """The one RouteConfiguration of `rds.json`."""
    listeners: tuple[str, ...]
    secrets: Mapping[str, str]
    """One secret per SDS file, `sds/<name>.json`."""

    def files(self) -> dict[str, tuple[str, ...]]:
        """The fragments of each dynamic file: clusters sorted by name, then routes and
        listeners."""
        return {"cds": tuple(self.clusters[name] for name in sorted(self.clusters)),
                "rds": (self.routes,), "lds": self.listeners}


def snapshot(settings: Settings, sites: Sequence[SiteResources]) -> Snapshot:
    """The snapshot of these sites, in a deterministic order."""
    ordered = sorted(sites, key=lambda r: r.name)
    secrets = {r.tls.secret_name: r.tls.secret_json for r in ordered if r.tls is not None}
    return Snapshot(
        clusters={name: text for r in ordered for name, text in r.cluster_json},
        routes=route_configuration(settings, [r.virtual_host_json for r in ordered]),
        listeners=tuple(fragment(item, LISTENER) for item in listeners(settings, ordered)),
        secrets={name: secrets[name] for name in sorted(secrets)})


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
