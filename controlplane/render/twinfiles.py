"""The files of the validation twin (`envoy/twinning`): a group of sites as the live Envoy
is given it, with the five differences Envoy does not judge when it applies a file.

- listeners do not bind (`bind_to_port: false`), at the configured addresses;
- health checks are aimed at a socket that does not exist, so the twin never probes an
  upstream (each endpoint's `health_check_config.address`);
- certificates are inline in the listener (no SDS files, which would cost inotify
  instances), so a key that does not match its certificate refuses the listener, as
  `envoy --mode validate` does;
- access logs go to /dev/null;
- the route table has `validate_clusters: true`, so a route to a cluster the group lacks
  is refused, as by `--mode validate` (the live Envoy would answer 503).

Pure: the listeners come from the one builder (`listeners`), the route table from
`snapshot`, so what the twin judges is what is served.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controlplane.render import listeners as listener_rendering
from controlplane.render import rendering
from controlplane.render.rendering import SiteResources
from controlplane.render.snapshot import route_configuration
from controlplane.settings import Settings


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TwinFiles:
    """What the twin's three files hold (cluster name -> fragment for CDS)."""

    clusters: dict[str, str]
    rds: tuple[str, ...]
    lds: tuple[str, ...]


EMPTY = TwinFiles(clusters={}, rds=(), lds=())
"""What a fresh or re-synced twin holds: no clusters; its route and listener files are
rewritten by the next check whatever they hold."""


def twin_files(settings: Settings, group: Sequence[SiteResources], nowhere: Path,
               rds_path: Path) -> TwinFiles:
    """The group as the twin is given it (see the module's docstring)."""
    clusters = {}
    for site in group:
        for (name, cluster), (_, text) in zip(site.clusters, site.cluster_json, strict=True):
            clusters[name] = text if "health_checks" not in cluster else rendering.fragment(
                _unreachable_checks(cluster, nowhere), rendering.CLUSTER)
    routes = route_configuration(settings, [r.virtual_host_json for r in group])
    delivery = listener_rendering.Delivery(
        routes={"rds": {"route_config_name": settings.route_config_name, "config_source": {
            "path_config_source": {"path": str(rds_path)}, "resource_api_version": "V3"}}},
        http=(settings.listen.host, settings.listen.port),
        https=(settings.listen_tls.host, settings.listen_tls.port),
        static_secrets=True, null_logs=True)
    inline = [dataclasses.replace(r, tls=_inline_tls(r.tls)) if r.tls is not None else r
              for r in group]
    listeners = [{**item, "bind_to_port": False}
                 for item in listener_rendering.listeners(settings, inline, delivery)]
    return TwinFiles(clusters=clusters, rds=('{"validate_clusters":true,' + routes[1:],),
                     lds=tuple(rendering.fragment(item, rendering.LISTENER)
                               for item in listeners))


def _unreachable_checks(cluster: dict[str, Any], nowhere: Path) -> dict[str, Any]:
    """A copy whose endpoints are health-checked at a socket that does not exist."""
    copied = copy.deepcopy(cluster)
    for locality in copied.get("load_assignment", {}).get("endpoints", []):
        for endpoint in locality.get("lb_endpoints", []):
            endpoint.setdefault("endpoint", {})["health_check_config"] = {
                "address": {"pipe": {"path": str(nowhere)}}}
    return copied


def _inline_tls(tls: rendering.SiteTls) -> rendering.SiteTls:
    """The site's TLS with the certificate files inline in its listener context."""
    context = copy.deepcopy(tls.static_context)
    common = context["common_tls_context"]
    common.pop("tls_certificate_sds_secret_configs", None)
    common["tls_certificates"] = [{key: value for key, value in
                                   tls.secret["tls_certificate"].items()
                                   if key != "watched_directory"}]
    return dataclasses.replace(tls, static_context=context)
