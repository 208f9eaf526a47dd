"""Pure rendering: validated Sites -> Envoy resources, and resources -> file bytes.

Each site renders on its own into a `SiteResources` (its clusters and its virtual host,
as Envoy's JSON form, each parsed strictly into Envoy's protobuf types once). The files
are then assembled from cached per-resource JSON fragments, so a pass over 10,000 sites
that changes one re-renders one. Output is deterministic: sorted keys, sorted resources,
`version_info` a hash of the content.

Names: a site with one `upstream` gets the cluster `SITE`; named upstreams get
`SITE/UPSTREAM`. The virtual host is named after the site.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from google.protobuf import json_format
from google.protobuf.message import Message

from controlplane.errors import Problem, SiteError
from controlplane.model import Endpoint, Route, Site, duration_ms
from controlplane.settings import CDS_FILE, LDS_FILE, RDS_FILE, Settings

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_CONFIGURATION = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_MESSAGES: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    LISTENER: listener_pb2.Listener,
    ROUTE_CONFIGURATION: route_pb2.RouteConfiguration,
    "virtual_host": route_components_pb2.VirtualHost,
}
# Imported for their side effect: the Any types inside the listener must be registered.
_ = (router_pb2, http_connection_manager_pb2)


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


def cluster_name(site: Site, upstream: str) -> str:
    return f"{site.name}/{upstream}" if upstream else site.name


def render_site(site: Site) -> SiteResources:
    """Render one site and check every resource against Envoy's API types."""
    clusters = tuple(
        (cluster_name(site, u), _cluster(cluster_name(site, u), site.endpoints(u)))
        for u in site.upstream_names()
    )
    vhost = _virtual_host(site)
    for name, cluster in clusters:
        check_types(cluster, CLUSTER, site.source, f"cluster {name}")
    check_types(vhost, "virtual_host", site.source, "virtual_host")
    cluster_json = tuple((n, fragment(c, CLUSTER)) for n, c in clusters)
    vhost_json = fragment(vhost, None)
    digest = _hash([j for _, j in cluster_json] + [vhost_json])
    return SiteResources(name=site.name, digest=digest, clusters=clusters, virtual_host=vhost,
                         cluster_json=cluster_json, virtual_host_json=vhost_json)


def _cluster(name: str, endpoints: list[Endpoint]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(e)}}
                                            for e in endpoints]}],
        },
    }


def _address(endpoint: Endpoint) -> dict[str, Any]:
    if endpoint.socket is not None:
        return {"pipe": {"path": endpoint.socket}}
    host, port = endpoint.host_port()
    return {"socket_address": {"address": host, "port_value": port}}


def _virtual_host(site: Site) -> dict[str, Any]:
    routes = site.spec.routes
    if routes is None:
        rendered = [{"match": {"prefix": "/"}, "route": {"cluster": cluster_name(site, "")}}]
    else:
        rendered = [_route(site, r) for r in routes]
    return {"name": site.name, "domains": list(site.spec.domains), "routes": rendered}


def _route(site: Site, route: Route) -> dict[str, Any]:
    kind, value = route.match
    match = {"safe_regex": {"regex": value}} if kind == "regex" else {kind: value}
    action: dict[str, Any] = {"cluster": cluster_name(site, route.upstream or "")}
    if route.timeout is not None:
        action["timeout"] = _duration(route.timeout)
    if route.websocket:
        action["upgrade_configs"] = [{"upgrade_type": "websocket"}]
    if route.rewrite_prefix is not None:
        action["prefix_rewrite"] = route.rewrite_prefix
    return {"match": match, "route": action}


def _duration(text: str) -> str:
    ms = duration_ms(text)
    return f"{ms // 1000}.{ms % 1000:03d}s"


def listener(settings: Settings) -> dict[str, Any]:
    """The one HTTP listener. Routes come through RDS from a file, so site changes
    never modify the listener (an inline route_config change would drain it)."""
    rds_path = str(settings.out_dir.absolute() / RDS_FILE)
    return {
        "name": "http",
        "address": {"socket_address": {"address": settings.listen.host,
                                       "port_value": settings.listen.port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": hcm(settings, {"rds": {
                "route_config_name": settings.route_config_name,
                "config_source": {"path_config_source": {"path": rds_path},
                                  "resource_api_version": "V3"},
            }}),
        }]}],
    }


def hcm(settings: Settings, routes: dict[str, Any]) -> dict[str, Any]:
    """The HttpConnectionManager, with its routes given as `rds` or `route_config`."""
    return {
        "@type": HCM,
        "stat_prefix": settings.stat_prefix,
        "use_remote_address": True,
        "normalize_path": True,
        "merge_slashes": True,
        **routes,
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": ROUTER}}],
    }


def route_configuration(settings: Settings, vhost_fragments: list[str]) -> str:
    """The RouteConfiguration as a JSON fragment, from cached virtual-host fragments."""
    return (f'{{"@type":"{ROUTE_CONFIGURATION}","name":{json.dumps(settings.route_config_name)},'
            f'"virtual_hosts":[{",".join(vhost_fragments)}]}}')


def check_types(resource: dict[str, Any], kind: str, where: str, what: str) -> None:
    """Parse strictly into Envoy's protobuf type; a failure names the Envoy field."""
    try:
        json_format.ParseDict(resource, _MESSAGES[kind](), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise SiteError([Problem(where, f"envoy.{what}", str(exc))]) from None


def fragment(resource: dict[str, Any], type_url: str | None) -> str:
    body = {"@type": type_url, **resource} if type_url else resource
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


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


def assemble(settings: Settings, sites: list[SiteResources]) -> dict[str, list[str]]:
    """The fragments of each file for these sites: `clusters` (sorted by name), `rds`,
    `lds`. The daemon and `render` write exactly these."""
    ordered = sorted(sites, key=lambda r: r.name)
    clusters = sorted((name, text) for r in ordered for name, text in r.cluster_json)
    return {
        "cds": [text for _, text in clusters],
        "rds": [route_configuration(settings, [r.virtual_host_json for r in ordered])],
        "lds": [fragment(listener(settings), LISTENER)],
    }


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
    document["overload_manager"] = {"resource_monitors": [{
        "name": "envoy.resource_monitors.global_downstream_max_connections",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors"
                     ".downstream_connections.v3.DownstreamConnectionsConfig",
            "max_active_downstream_connections": settings.max_connections,
        },
    }]}
    return document
