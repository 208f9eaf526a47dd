"""One validated Site -> its Envoy resources, and resources -> file bytes.

Each site renders on its own into a `SiteResources` (its clusters, its virtual host, its
TLS secret and access log, as Envoy's JSON form, each parsed strictly into Envoy's
protobuf types once, after the site's `envoy:` overrides are merged in), with the JSON
fragments the files are assembled from (`snapshot`). Output is deterministic: sorted
keys, sorted resources, `version_info` a hash of the content.

The pieces: `clusters` (upstreams), `vhosts` (routes and site-wide features), `tls`
(secrets and HTTPS filter chains), `overrides` (the escape hatch), `listeners`,
`snapshot` and `bootstraps`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Container
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
from envoy.extensions.filters.http.custom_response.v3 import custom_response_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.proxy_protocol.v3 import proxy_protocol_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.http.custom_response.local_response_policy.v3 import (
    local_response_policy_pb2,
)
from envoy.extensions.http.original_ip_detection.xff.v3 import xff_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import status_code_input_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from xds.type.matcher.v3 import cel_pb2 as cel_matcher_pb2
from xds.type.matcher.v3 import http_inputs_pb2

from controlplane.errors import Problem, SiteError
from controlplane.render import allowlist, streams
from controlplane.render import overrides as hatch
from controlplane.render import tls as tls_rendering
from controlplane.render.clusters import cluster, cluster_name
from controlplane.render.filters import access_log
from controlplane.render.responses import Page
from controlplane.render.vhosts import virtual_host
from controlplane.settings import Settings
from controlplane.site.spec import Site
from controlplane.site.streams import StreamSite

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
     proxy_protocol_pb2, xff_pb2, custom_response_pb2, local_response_policy_pb2,
     status_code_input_pb2, cel_matcher_pb2, http_inputs_pb2, ext_authz_pb2,
     header_mutation_pb2, tcp_proxy_pb2)


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
    tcp_listener: dict[str, Any] | None = None
    """A TCP site's own listener (its listener filters added by `listeners`)."""
    passthrough: dict[str, Any] | None = None
    """A passthrough site's filter chain on the HTTPS listener."""
    domains: tuple[str, ...] = ()
    """A passthrough site's SNI names."""


def render_site(site: Site, settings: Settings | None = None, *,
                htpasswd: str | None = None, pages: tuple[Page, ...] = (),
                trusted: Container[str] = frozenset(),
                envoy_judges: bool = False) -> SiteResources:
    """Render one site, merge its overrides, and check every resource against Envoy's
    API types; a failure names the site file and the Envoy field. `htpasswd` is the
    digest of the site's htpasswd file, `pages` its error pages, which the daemon read.

    The type checks parse each resource in pure Python (half of loading a plain site),
    and two cases skip them. `trusted`: render digests Envoy itself accepted (half of a
    restart at 10,000 sites). `envoy_judges`: Envoy's verdict comes before any render
    goes live (the daemon with a validator), so a site without `envoy:` overrides, all
    of whose render is the daemon's own making from a validated file, is left to it but
    for its TLS secret and context, which no validator is given as the live Envoy gets
    them (by SDS file); a site with overrides is always checked, for a message that
    names their field."""
    settings = settings or Settings()
    clusters = tuple((cluster_name(site, u), _cluster(site, u, settings.buffer_limit_bytes))
                     for u in site.upstream_names())
    vhost = _virtual_host(site, settings, htpasswd, pages)
    checks: list[tuple[dict[str, Any], str, str]] = [
        *((rendered, CLUSTER, f"cluster {name}") for name, rendered in clusters),
        (vhost, "virtual_host", "virtual_host")]
    log = access_log(site)
    if log is not None:
        checks.append(({"access_log": [log]}, "access_log", "access_log"))
    site_tls = _site_tls(site, settings)
    judged = len(checks)  # what Envoy's verdict is given; not the live TLS context (SDS)
    if site_tls is not None:
        checks += [(site_tls.secret, SECRET, "tls secret"), (
            {k: v for k, v in site_tls.context.items() if k != "@type"}, "tls_context",
            "tls context")]
    try:
        cluster_json = tuple((n, fragment(c, CLUSTER)) for n, c in clusters)
        vhost_json = fragment(vhost, None)
        extra = [fragment(log or {}, None), site_tls.secret_json if site_tls else "",
                 fragment(site_tls.context, None) if site_tls else ""]
    except ValueError:  # a value JSON cannot hold: the type checks name its field first
        _check_all(checks, site.source)
        raise
    digest = _hash([j for _, j in cluster_json] + [vhost_json] + extra)
    if digest not in trusted:
        _check_all(checks[judged:] if envoy_judges and not _overridden(site) else checks,
                   site.source)
    return SiteResources(name=site.name, digest=digest, clusters=clusters, virtual_host=vhost,
                         cluster_json=cluster_json, virtual_host_json=vhost_json,
                         tls=site_tls, access_log=log)


def render_stream(site: StreamSite, settings: Settings | None = None, *,
                  trusted: Container[str] = frozenset(),
                  envoy_judges: bool = False) -> SiteResources:
    """Render a TCP or passthrough site: its cluster, and its listener or filter chain,
    each checked against Envoy's types (`trusted` and `envoy_judges` as for
    `render_site`: a stream site has no overrides). It has no virtual host."""
    settings = settings or Settings()
    rendered = streams.cluster(site, settings.buffer_limit_bytes)
    checks: list[tuple[dict[str, Any], str, str]] = [(rendered, CLUSTER, f"cluster {site.name}")]
    if site.spec.kind == "tcp":
        own = streams.tcp_listener(site, settings.buffer_limit_bytes)
        checks.append((own, LISTENER, "listener"))
        extra, chain = fragment(own, None), None
    else:
        own, chain = None, streams.chain(site)
        checks.append(({"name": "x", "filter_chains": [chain]}, LISTENER, "chain"))
        extra = fragment(chain, None)
    cluster_json = ((site.name, fragment(rendered, CLUSTER)),)
    digest = _hash([cluster_json[0][1], extra])
    if digest not in trusted and not envoy_judges:
        _check_all(checks, site.source)
    return SiteResources(name=site.name, digest=digest,
                         clusters=((site.name, rendered),), virtual_host={},
                         cluster_json=cluster_json, virtual_host_json="", tcp_listener=own,
                         passthrough=chain, domains=tuple(site.spec.domains or ()))


def _overridden(site: Site) -> bool:
    """The site merges `envoy:` fields of its own, at the top or into a route."""
    return site.spec.envoy is not None or any(r.envoy for r in site.spec.routes or ())


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


def _virtual_host(site: Site, settings: Settings, htpasswd: str | None,
                  pages: tuple[Page, ...]) -> dict[str, Any]:
    port = settings.https_redirect_port or settings.listen_tls.port
    vhost = virtual_host(site, port, htpasswd, pages)
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
    return SiteTls(secret_name=name, secret=secret, secret_json=fragment(secret, SECRET),
                   context=context, static_context=tls_rendering.tls_context(spec, None),
                   domains=tuple(site.spec.domains))


def message_type(kind: str) -> type[Message]:
    """Envoy's protobuf type of a resource (`@type` URL) or part (`virtual_host`)."""
    return _MESSAGES[kind]


def _check_all(checks: list[tuple[dict[str, Any], str, str]], where: str) -> None:
    for resource, kind, what in checks:
        check_types(resource, kind, where, what)


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


