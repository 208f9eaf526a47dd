"""`controlplane diff SITES_DIR --admin-socket PATH`: what the folder would render against
what the live Envoy holds (its admin `/config_dump`).

Both sides are parsed into Envoy's protobuf types and printed back the same way (field
names as in the API, defaults left out, keys sorted, indented), so only real differences
show. The route configuration is compared one virtual host at a time, so a change is
told by site. Exit status as diff(1): 0 the same, 1 different, 2 or more trouble.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from controlplane.envoy.admin import AdminClient
from controlplane.errors import EnvoyBadAnswer
from controlplane.render import rendering, snapshot
from controlplane.settings import Settings

Resources = dict[str, Any]
"""`KIND/NAME` -> the resource in canonical form (`Cluster/blog`, `virtual_host/blog`)."""
REDACTED = "[redacted]"
"""What `/config_dump` shows for inline secrets (a basic_auth filter's users)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Difference:
    """Sites added, changed and removed by the folder, and the unified diff."""

    added: tuple[str, ...]
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    diff: str

    @property
    def same(self) -> bool:
        return not self.diff

    def summary(self) -> str:
        if self.same:
            return "the live Envoy holds what the folder renders"
        parts = [f"{what}: {', '.join(names)}" for what, names in (
            ("added", self.added), ("changed", self.changed), ("removed", self.removed))
            if names]
        return "; ".join(parts) or "the sites are the same; shared resources differ"


def rendered(target: snapshot.Snapshot) -> Resources:
    """The resources of a snapshot (cds, lds, sds, rds)."""
    found: Resources = {}
    for text in [*target.clusters.values(), *target.listeners, *target.secrets.values(),
                 target.routes]:
        found.update(_split(json.loads(text)))
    return found


def live_resources(settings: Settings) -> Resources:
    """What the live Envoy holds, from its admin `/config_dump`."""
    assert settings.admin_socket is not None
    text = AdminClient(settings.admin_socket, settings).get("/config_dump")
    try:
        return live(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise EnvoyBadAnswer(f"/config_dump is not Envoy's configuration: {exc}") from None


def live(dump: Mapping[str, Any]) -> Resources:
    """The resources of an admin `/config_dump` document (its dynamic, active parts)."""
    found: Resources = {}
    for config in dump.get("configs", []):
        for item in config.get("dynamic_active_clusters", []):
            found.update(_split(item["cluster"]))
        for item in config.get("dynamic_listeners", []):
            if "active_state" in item:
                found.update(_split(item["active_state"]["listener"]))
        for item in config.get("dynamic_route_configs", []):
            found.update(_split(item["route_config"]))
        for item in config.get("dynamic_active_secrets", []):
            found.update(_split(item["secret"]))
    return found


def compare(folder: Resources, envoy: Resources) -> Difference:
    """What changes from the live Envoy to the folder."""
    folder = {key: _redact(value, envoy.get(key)) for key, value in folder.items()}
    lines: list[str] = []
    for key in sorted(set(folder) | set(envoy)):
        if folder.get(key) != envoy.get(key):
            lines.extend(difflib.unified_diff(
                _lines(envoy.get(key)), _lines(folder.get(key)), fromfile=f"envoy/{key}",
                tofile=f"folder/{key}"))
    sites_now, sites_then = _sites(folder), _sites(envoy)
    changed = sorted(name for name in set(sites_now) & set(sites_then)
                     if sites_now[name] != sites_then[name])
    return Difference(added=tuple(sorted(set(sites_now) - set(sites_then))),
                      changed=tuple(changed),
                      removed=tuple(sorted(set(sites_then) - set(sites_now))),
                      diff="".join(lines))


def _split(resource: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """A resource as `(KIND/NAME, canonical text)`; a route configuration as its virtual
    hosts plus the rest of it."""
    type_url = str(resource.get("@type", ""))
    body = {k: v for k, v in resource.items() if k != "@type"}
    kind = type_url.rsplit(".", 1)[-1]
    if type_url == rendering.ROUTE_CONFIGURATION:
        for vhost in body.pop("virtual_hosts", []):
            yield f"virtual_host/{vhost['name']}", _canonical(vhost, "virtual_host")
    yield f"{kind}/{body.get('name', '')}", _canonical(body, type_url)


def _canonical(body: Mapping[str, Any], kind: str) -> Any:
    message = rendering.message_type(kind)()
    json_format.ParseDict(dict(body), message, ignore_unknown_fields=False)
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _redact(ours: Any, theirs: Any) -> Any:
    """Our value, with what Envoy's dump shows as `[redacted]` redacted the same way (a
    secret cannot be compared, and is not printed)."""
    if theirs == REDACTED and isinstance(ours, str):
        return REDACTED
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return {k: _redact(v, theirs.get(k)) for k, v in ours.items()}
    if isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs):
        return [_redact(a, b) for a, b in zip(ours, theirs, strict=True)]
    return ours


def _lines(resource: Any) -> list[str]:
    if resource is None:
        return []
    return (json.dumps(resource, indent=2, sort_keys=True) + "\n").splitlines(keepends=True)


def _sites(resources: Resources) -> dict[str, list[Any]]:
    """Each site's share, by its virtual host and its clusters (`SITE`, `SITE/UPSTREAM`)."""
    sites = {key.partition("/")[2]: [value] for key, value in resources.items()
             if key.startswith("virtual_host/")}
    for key, value in sorted(resources.items()):
        kind, _, name = key.partition("/")
        owner = name.partition("/")[0]
        if kind == "Cluster" and owner in sites:
            sites[owner].append(value)
    return sites
