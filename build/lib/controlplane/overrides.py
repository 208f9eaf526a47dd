"""The `envoy:` escape hatch: Envoy fields a site merges into its own generated
resources, and the fence that keeps them there.

Merge rules (`merge`), applied to Envoy's JSON form (snake_case field names):

- a mapping merges into a mapping key by key, recursively;
- `null` deletes the key (back to Envoy's default);
- anything else replaces: scalars, lists (a list is never merged item by item), and a
  mapping whose `@type` differs from the generated one (another message type).

The result is then parsed strictly into Envoy's types and checked by the Envoy binary
like everything else. The fence (`confine_cluster`, `confine_virtual_host`): a site may
not rename its resources, change its domains, replace a cluster's endpoints or type
(the endpoint checks would be bypassed), or name a cluster that is not its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from controlplane.errors import Problem, SiteError

FIXED_CLUSTER_KEYS = ("name", "type", "cluster_type", "load_assignment", "eds_cluster_config")
"""Cluster fields a site cannot override: its identity and where its endpoints come from."""
FIXED_VHOST_KEYS = ("name", "domains")
"""Virtual host fields a site cannot override: the domain checks stay authoritative."""
FORBIDDEN_ROUTE_KEYS = ("cluster_header", "cluster_specifier_plugin",
                        "inline_cluster_specifier_plugin")
"""Route fields that would pick a cluster at request time, outside the site's own."""
_CLUSTER_REFERENCES = ("cluster", "cluster_name")
FILE_KEYS = frozenset({
    "filename", "environment_variable", "watched_directory", "path_config_source",
    "event_log_path", "access_log_path", "access_log", "event_logger",
})
"""Envoy fields that read a file or the environment, or write a file, with Envoy's rights:
a direct response body from `/etc/passwd`, a health-check event log anywhere. Sites get
files only through fields the schema checks (`tls`, `access_log`)."""


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into a copy of `base` by the rules above."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict) and (
                value.get("@type", merged[key].get("@type")) == merged[key].get("@type")):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def confine_cluster(where: str, field: str, override: dict[str, Any]) -> None:
    """Refuse overrides of a cluster's fixed fields."""
    problems = [Problem(where, f"{field}.{key}", "fixed by the site file; it cannot be"
                        " overridden") for key in FIXED_CLUSTER_KEYS if key in override]
    if problems:
        raise SiteError(problems)


def confine_virtual_host(where: str, field: str, override: dict[str, Any]) -> None:
    problems = [Problem(where, f"{field}.{key}", "fixed by the site file; it cannot be"
                        " overridden") for key in FIXED_VHOST_KEYS if key in override]
    if problems:
        raise SiteError(problems)


def confine_files(where: str, field: str, resource: dict[str, Any]) -> None:
    """Refuse any field that reads or writes a file (or the environment)."""
    problems = [Problem(where, f"{path}.{key}", "reads or writes a file with Envoy's"
                        " rights; a site may not (the site file's own fields are checked)")
                for path, key, _ in _walk(resource, field) if key in FILE_KEYS]
    if problems:
        raise SiteError(problems)


def confine_references(where: str, vhost: dict[str, Any], own: set[str]) -> None:
    """Every cluster the virtual host names must be one of the site's own."""
    confine_files(where, "envoy.virtual_host", vhost)
    problems = []
    for path, key, value in _walk(vhost, "envoy.virtual_host"):
        if key in FORBIDDEN_ROUTE_KEYS:
            problems.append(Problem(where, f"{path}.{key}", "picks a cluster at request time;"
                                    " a site may only use its own clusters"))
        elif key in _CLUSTER_REFERENCES and isinstance(value, str) and value not in own:
            problems.append(Problem(where, f"{path}.{key}", f"{value!r} is not a cluster of"
                                    f" this site (its own: {', '.join(sorted(own))})"))
        elif key == "weighted_clusters" and isinstance(value, dict):
            for i, share in enumerate(value.get("clusters", [])):
                name = share.get("name") if isinstance(share, dict) else None
                if name not in own:
                    problems.append(Problem(where, f"{path}.weighted_clusters.clusters.{i}.name",
                                            f"{name!r} is not a cluster of this site"))
    if problems:
        raise SiteError(problems)


def _walk(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """(path of the parent, key, value) of every mapping entry under `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, str(key), value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}.{i}")
