"""What one site's rendered resources claim, judged across sites or against the
filesystem each pass: the Unix sockets they name (wherever in a cluster, as the `envoy:`
hatch could put one), every name they give Envoy (which must be unique across sites),
and the upstreams they reach (each belongs to one site).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from controlplane.intake.paths import Fence
from controlplane.render.rendering import SiteResources
from controlplane.site.places import Use


def sockets(resources: SiteResources, known: set[str]) -> tuple[Use, ...]:
    """Any other Unix socket the rendered clusters name (`pipe` anywhere, as the `envoy:`
    hatch could put it) is judged like an endpoint."""
    found: list[Use] = []
    stack: list[object] = [c for _, c in resources.clusters]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            pipe = node.get("pipe")
            if isinstance(pipe, dict) and isinstance(pipe.get("path"), str) and (
                    pipe["path"] not in known):
                found.append(Use(field="envoy.cluster", kind="socket", path=pipe["path"]))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return tuple(found)


def names(resources: SiteResources) -> tuple[tuple[str, str, str, str], ...]:
    """(kind, name, field, content) of every name a site's resources give Envoy: clusters,
    their stats names, the virtual host, route and filter stats prefixes, the HTTPS filter
    chain, the secret (shared only when its content is the same)."""
    stats_field = "stats_prefix" if any("alt_stat_name" in c for _, c in resources.clusters) else ""
    names = [("virtual host", str(resources.virtual_host.get("name")), "", "")
             ] if resources.virtual_host else []
    if resources.tcp_listener is not None:
        names.append(("listener", str(resources.tcp_listener["name"]), "", ""))
        port = resources.tcp_listener["address"]["socket_address"]["port_value"]
        names.append(("listen port", str(port), "listen", ""))
    if resources.passthrough is not None:
        names.append(("HTTPS filter chain", resources.name, "", ""))
    for name, cluster in resources.clusters:
        names.append(("cluster", name, "", ""))
        names.append(("cluster stats name", str(cluster.get("alt_stat_name", name)),
                      stats_field, ""))
    for route in resources.virtual_host.get("routes", []):
        if "stat_prefix" in route:
            names.append(("route stats prefix", str(route["stat_prefix"]), stats_field, ""))
    for filter_name, config in resources.virtual_host.get("typed_per_filter_config", {}).items():
        inner = config.get("config", {}) if isinstance(config, dict) else {}
        if isinstance(inner, dict) and "stat_prefix" in inner:
            names.append((f"stats prefix of {filter_name}", str(inner["stat_prefix"]),
                          stats_field, ""))
    if resources.tls is not None:
        names.append(("HTTPS filter chain", resources.name, "", ""))
        names.append(("TLS secret", resources.tls.secret_name, "tls", resources.tls.secret_json))
    return tuple(names)


def upstreams(uses: tuple[Use, ...], fence: Fence) -> tuple[tuple[str, str, str, str], ...]:
    """(kind, target, field, "") of every upstream a site connects to: a socket by what it
    resolves to now (aliases and symlinks to one socket are one), a TCP address in
    canonical form (every loopback address as one). With `exclusive_upstreams` each
    belongs to one site: another naming it would reach it past that site's access list,
    rate limit and routes."""
    found = []
    for use in uses:
        if use.kind == "socket":
            found.append(("upstream socket", fence.resolve(use.path)[0], use.field, ""))
        elif use.kind == "address":
            host, _, port = use.path.rpartition(":")
            ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
            # Any loopback address reaches a server listening on all of them.
            shown = "loopback" if ip.is_loopback else str(ip)
            found.append(("upstream address", f"{shown}:{int(port)}", use.field, ""))
    return tuple(found)


FileClaim = tuple[int, str, str, str]
"""(its place among the site's uses, kind, field, path as written) of a file a site uses."""


def file_claims(uses: tuple[Use, ...], fence: Fence) -> Iterator[tuple[str, FileClaim]]:
    """(what it resolves to now, claim) of each file a site has Envoy read, append to or
    serve as a page."""
    for place, use in enumerate(uses):
        if use.kind in ("read", "page", "write"):
            yield fence.resolve(use.path)[0], (place, use.kind, use.field, use.path)


def written_files(shared: list[tuple[str, list[tuple[str, str, FileClaim]]]]) -> dict[
        str, list[tuple[str, str]]]:
    """Site -> (field, reason) for each file it makes Envoy append to, or serve as an error
    page, that some site (itself included) has Envoy read (a certificate, a key, an
    htpasswd file) or serve as a page: log lines would corrupt it, a page would publish
    it; and for each page that is some site's access log (a client's text written into a
    page served to anyone, or the log published). `shared`: each file two claims or more
    resolve to, with its (site, file, claim) claims in the folder's order (the first
    claim of a kind holds the file)."""
    guarded = {"write": ("read", "page"), "page": ("read", "write")}
    found: dict[str, list[tuple[int, str, str]]] = {}
    for _, users in shared:
        protected: dict[str, tuple[str, str]] = {}
        for _, source, (_, kind, field, _) in users:
            protected.setdefault(kind, (source, field))
        for name, _, (place, kind, field, path) in users:
            held = next((protected[k] for k in guarded.get(kind, ()) if k in protected), None)
            if held is not None:
                found.setdefault(name, []).append((place, field, (
                    f"{path!r} is the {held[1]} of {held[0]}; {_HARM[kind]}")))
    return {name: [(field, reason) for _, field, reason in sorted(items)]
            for name, items in found.items()}


_HARM = {"write": "Envoy would append log lines to it: name a log file of its own",
         "page": "Envoy would serve it to anyone as an error page: name a page"}
