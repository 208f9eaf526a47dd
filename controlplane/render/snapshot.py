"""The snapshot of what Envoy gets: every resource of the serving sites as a JSON
fragment under its name, assembled from the sites' cached fragments (a pass over 10,000
sites that changes one re-renders one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from controlplane.render.listeners import listeners, route_config
from controlplane.render.rendering import LISTENER, ROUTE_CONFIGURATION, SiteResources, fragment
from controlplane.settings import Settings


def route_configuration(settings: Settings, vhost_fragments: list[str]) -> str:
    """The RouteConfiguration as a JSON fragment, from cached virtual-host fragments: the
    keys of `route_config` with `virtual_hosts` (sorted last) spliced in."""
    head = fragment(route_config(settings, []), ROUTE_CONFIGURATION)
    return f'{head[:-2]}{",".join(vhost_fragments)}]}}'


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
        routes=route_configuration(settings, [r.virtual_host_json for r in ordered
                                              if r.virtual_host_json]),
        listeners=tuple(fragment(item, LISTENER) for item in listeners(settings, ordered)),
        secrets={name: secrets[name] for name in sorted(secrets)})
