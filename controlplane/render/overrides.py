"""The `envoy:` escape hatch: Envoy fields a site merges into its own generated
resources, and the allow-list that keeps them there.

Merge rules (`merge`), applied to Envoy's JSON form:

- a mapping merges into a mapping key by key, recursively;
- `null` deletes the key (back to Envoy's default);
- anything else replaces: scalars, lists (a list is never merged item by item), and a
  mapping whose `@type` differs from the generated one (another message type).

`confine` then parses the generated resource and the merged one into Envoy's message
and lets through only changes in the allow-listed field paths of a `Policy`
(`allowlist.CLUSTER`, `VIRTUAL_HOST`, `ROUTE`), with `Any` types allowed only where
listed (see `fence` for how the paths are found). Whatever the allow-list says, no field
that opens a file or reads the environment (`FILE_FIELDS`) and no field that picks a
cluster at request time (`CLUSTER_PICKERS`) passes; every cluster a route or a mirror
names is the site's own; buffer limits stay at most Envoy's default; header values are
formats with only the allowed commands; no string holds a control character. Each
refusal names the site file and the field as the user spelled it.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from controlplane.errors import Problem, SiteError
from controlplane.render.allowlist import CLUSTER_PICKERS, FILE_FIELDS, Policy
from controlplane.render.fence import (
    TYPED_STRUCTS,
    Change,
    Field,
    Path,
    canonical_keys,
    changes,
    covered,
    matched,
    spelled,
    strings,
    visit,
)
from controlplane.site import formats

MAX_BUFFER_BYTES = 1024 * 1024
"""The most a buffer limit set through the hatch may be: Envoy's own default. Envoy's
memory is shared by every site, so no site may raise its buffers past it."""
_BUFFER_LIMITS = ("per_connection_buffer_limit_bytes", "per_request_buffer_limit_bytes",
                  "request_body_buffer_limit")
MAX_TABLE_ENTRIES = {
    ("envoy.config.cluster.v3.Cluster.RingHashLbConfig", "minimum_ring_size"): 65536,
    ("envoy.config.cluster.v3.Cluster.RingHashLbConfig", "maximum_ring_size"): 65536,
    ("envoy.config.cluster.v3.Cluster.MaglevLbConfig", "table_size"): 65537,
    ("envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
     "max_dynamic_descriptors"): 1000,
}
"""The largest tables the hatch may ask for (Envoy's defaults: a ring of 1,024, a Maglev
table of 65,537, a few rate-limit buckets made from request values): Envoy keeps one per
cluster or filter, in memory every site shares (four rings of 8,388,608 took Envoy from
68 MB to 856 MB; unbounded buckets grew it 1 MB per 1,000 distinct client headers)."""
MAX_MIRRORS = 2
"""Mirror policies per route or virtual host: each sends a copy of every request (200 on
one route made Envoy send about 90 upstream requests for each client request)."""


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


def parse(resource: dict[str, Any], message: type[Message], where: str, field: str) -> Message:
    """`resource` parsed strictly into `message`; a failure names the file and `field`."""
    try:
        return json_format.ParseDict(resource, message(), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        reason = str(exc).split("\n Available Fields", 1)[0].strip()
        if "oneof" in reason:
            reason += (" (Envoy takes one of them: set the generated one to null, e.g."
                       " 'cluster: null', to choose another)")
        raise SiteError([Problem(where, field, reason)]) from None
    except (TypeError, ValueError, AttributeError) as exc:  # ParseDict on odd values
        raise SiteError([Problem(where, field, f"not Envoy's JSON form: {exc}")]) from None


def confine(where: str, field: str, policy: Policy, base: dict[str, Any],
            override: dict[str, Any], own: frozenset[str] = frozenset()) -> dict[str, Any]:
    """`override` merged into `base` and re-written in canonical form, if the result
    stays inside the site; else a SiteError naming each field as written under `field`
    (`envoy.virtual_host...`)."""
    _check_type_urls(where, field, override)
    merged = merge(base, canonical_keys(override, policy.message.DESCRIPTOR))
    before = parse(base, policy.message, where, field)
    after = parse(merged, policy.message, where, field)
    found: dict[str, str] = {}
    for change in changes(before, after):
        verdict = judge(policy, change)
        if verdict is not None:
            found.setdefault(spelled(verdict[0], override), verdict[1])
    for path, reason in values(after, own):
        found.setdefault(spelled(path, override), reason)
    if found:
        raise SiteError([Problem(where, f"{field}.{path}", reason)
                         for path, reason in sorted(found.items())])
    # Envoy gets the message that was judged, in canonical form: no parser differences.
    return dict(json_format.MessageToDict(after, preserving_proto_field_name=True))


def _check_type_urls(where: str, field: str, node: Any, path: str = "") -> None:
    """Every `@type` is a string (ParseDict fails on others with no path)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(
        node, list) else ()
    for key, value in items:
        here = f"{path}.{key}" if path else str(key)
        if key == "@type" and not isinstance(value, str):
            raise SiteError([Problem(where, f"{field}.{here}", "must be a type URL such as"
                                     " 'type.googleapis.com/envoy.config.route.v3.FilterConfig'")])
        _check_type_urls(where, field, value, here)


def judge(policy: Policy, change: Change) -> tuple[Path, str] | None:
    """None when `policy` allows `change`; else the path to name and the reason."""
    path = change.path
    for depth, segment in enumerate(path, 1):
        if isinstance(segment, Field) and segment.name in FILE_FIELDS:
            return path[:depth], ("makes Envoy open a file or read its environment; a site"
                                  " may not (use the site file's own tls and access_log)")
        if isinstance(segment, Field) and segment.name in CLUSTER_PICKERS:
            return path[:depth], "picks a cluster at request time; a site may only use its own"
    if change.type_name:
        return _judge_type(policy, change)
    if covered(policy.allowed, path) or (
            change.removed and matched(policy.allowed, path) == len(path)):
        return None
    cut = path[:matched(policy.allowed, path) + 1]
    if len(cut) == 1 and str(cut[0]) in policy.fixed:
        return cut, "fixed by the site file; it cannot be overridden"
    return cut, "not on the escape hatch's allow-list (see README 'The envoy: escape hatch')"


def _judge_type(policy: Policy, change: Change) -> tuple[Path, str] | None:
    name, path = change.type_name, change.path
    if name in TYPED_STRUCTS:
        return path, (f"{name} is refused: it hides an extension's fields; write the"
                      " extension's own @type")
    allowed = set().union(*(kinds for parts, kinds in policy.types.items()
                            if len(parts) == len(path) and matched((parts,), path) == len(path)))
    if name in allowed:
        return None
    listed = f"; allowed here: {', '.join(sorted(allowed))}" if allowed else ""
    return path, f"the type {name} is not allowed here{listed}"


def values(message: Message, own: frozenset[str]) -> list[tuple[Path, str]]:
    """What is wrong with the values in `message`: clusters not of the site, header
    values with commands not allowed, control characters."""
    found: list[tuple[Path, str]] = []

    def check(path: Path, descriptor: Descriptor, item: Message) -> None:
        found.extend(_limits(path, descriptor, item))
        for named in _clusters_named(descriptor.full_name, item):
            if named not in own:
                name = _CLUSTER_FIELD[descriptor.full_name]
                found.append(((*path, Field(name, name)),
                              f"{named!r} is not a cluster of this site (its own:"
                              f" {', '.join(sorted(own)) or 'none'})"))
        is_body = len(path) >= 2 and str(path[-1]) == "body" and str(
            path[-2]) == "direct_response"
        for fd, text in strings(item):
            bad = formats.control_character(text, formats.BODY_ALLOWED if is_body else "")
            if bad is None and descriptor.full_name == "envoy.config.core.v3.HeaderValue" and (
                    fd.name in ("value", "raw_value")):
                bad = formats.format_problem(text)
            elif bad is not None:
                bad = f"holds {bad}; control characters are not allowed"
            if bad is not None:
                found.append(((*path, Field(fd.name, fd.json_name)), bad))

    visit(message, check)
    return found


def _limits(path: Path, descriptor: Descriptor, item: Message) -> list[tuple[Path, str]]:
    """Values past what one site may take of Envoy's shared memory and traffic."""
    found: list[tuple[Path, str]] = []
    for name in _BUFFER_LIMITS:
        fd = descriptor.fields_by_name.get(name)
        if fd is not None and item.HasField(name) and _bytes(item, name) > MAX_BUFFER_BYTES:
            found.append(((*path, Field(name, fd.json_name)),
                          f"{_bytes(item, name)} is over {MAX_BUFFER_BYTES} bytes, Envoy's"
                          " default; a site may lower its buffers, not raise them"))
    for (kind, name), cap in MAX_TABLE_ENTRIES.items():
        if kind == descriptor.full_name and item.HasField(name) and _bytes(item, name) > cap:
            fd = descriptor.fields_by_name[name]
            found.append(((*path, Field(name, fd.json_name)),
                          f"{_bytes(item, name)} is over {cap}: Envoy keeps a table that"
                          " large, in memory every site shares"))
    mirrors = descriptor.fields_by_name.get("request_mirror_policies")
    if mirrors is not None and len(getattr(item, mirrors.name)) > MAX_MIRRORS:
        found.append(((*path, Field(mirrors.name, mirrors.json_name)),
                      f"{len(getattr(item, mirrors.name))} mirror policies; at most"
                      f" {MAX_MIRRORS}: each copies every request (Envoy as an amplifier)"))
    return found


_CLUSTER_FIELD = {
    "envoy.config.route.v3.RouteAction": "cluster",
    "envoy.config.route.v3.WeightedCluster.ClusterWeight": "name",
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy": "cluster",
}


def _bytes(item: Message, name: str) -> int:
    value = getattr(item, name)
    return int(getattr(value, "value", value))


def _clusters_named(kind: str, item: Message) -> tuple[str, ...]:
    name = _CLUSTER_FIELD.get(kind)
    value = getattr(item, name) if name is not None else ""
    return (value,) if value else ()
