"""Documents -> validated Sites.

Every problem names the file, the dotted field path and the reason (and the line when
the YAML position is known), and every problem of a file is reported at once. Unknown
keys get a suggestion when a known key is close (`domain` -> `domains`).
"""

from __future__ import annotations

import difflib
import functools
import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from controlplane.errors import Problem, SiteError, field_path, parse_field_path
from controlplane.intake.defaults import Merged, placed
from controlplane.intake.loading import Document
from controlplane.site.auth import AUTH
from controlplane.site.places import Kind, Use
from controlplane.site.schema import schema
from controlplane.site.spec import Site, SiteSpec

_FIELD_PREFIX = re.compile(r"^([a-z_][a-z0-9_]*(?:\[[0-9]+\])*(?:\.[a-z0-9_]+(?:\[[0-9]+\])*)*):"
                           r" (.*)$", re.DOTALL)
_schema = functools.cache(schema)
"""Built on the first message that names the keys allowed (15-25 ms), not at import."""


def validate(name: str, where: str, digest: str, document: Document,
             merged: Merged | None = None) -> Site:
    """One site's document -> Site, or SiteError with every problem in the file (at most
    `MAX_PROBLEMS`, then one line saying how many more). Where its paths lead is judged
    at every pass, on the resolved paths (`paths.Fence`), not here."""
    if not isinstance(document.data, dict):
        kind = type(document.data).__name__
        raise SiteError([Problem(where, "", f"a site file is a mapping of keys, not a {kind}")])
    try:
        spec = SiteSpec.model_validate(document.data)
    except ValidationError as exc:
        raise SiteError([problem_of(where, error, document, merged)
                         for error in exc.errors()]) from None
    spec = anchored(spec, posixpath.dirname(os.path.abspath(where)))
    return Site(name=name, spec=spec, source=where, digest=digest)


def anchored(spec: SiteSpec, folder: str) -> SiteSpec:
    """The spec with each relative file path (certificates, htpasswd, error pages) taken
    from `folder`, the site file's: Envoy and every check then see absolute paths."""
    def anchor(path: str) -> str:
        return path if path.startswith("/") else posixpath.join(folder, path)

    update: dict[str, Any] = {}
    if spec.tls is not None and spec.tls.cert is not None and spec.tls.key is not None:
        update["tls"] = spec.tls.model_copy(update={"cert": anchor(spec.tls.cert),
                                                    "key": anchor(spec.tls.key)})
    if spec.basic_auth is not None:
        update["basic_auth"] = spec.basic_auth.model_copy(
            update={"htpasswd": anchor(spec.basic_auth.htpasswd)})
    if spec.error_pages is not None:
        update["error_pages"] = {code: anchor(p) for code, p in spec.error_pages.items()}
    return spec.model_copy(update=update) if update else spec


def path_uses(site: Site, document: Document) -> tuple[Use, ...]:
    """Every path (and TCP address) the site makes Envoy connect to, read or write, with
    the field the user wrote it in (`upstream.socket`, `upstreams.api.endpoints[2].address`)."""
    uses = []
    for upstream in site.upstream_names():
        base: tuple[str | int, ...] = (
            ("forward_auth", "upstream") if upstream == AUTH else
            ("upstreams", upstream) if upstream else ("upstream",))
        for i, endpoint in enumerate(site.endpoints(upstream)):
            key: Kind = "socket" if endpoint.socket is not None else "address"
            spelled = [(*base, "endpoints", i, key), (*base, i, key), (*base, key)]
            path = next((p for p in spelled if p in document.lines), spelled[0])
            uses.append(Use(field=field_path(path), kind=key,
                            path=endpoint.socket or str(endpoint.address),
                            line=document.lines.get(path)))
    spec = site.spec
    if spec.tls is not None and spec.tls.cert is not None and spec.tls.key is not None:
        uses += [Use(field="tls.cert", kind="read", path=spec.tls.cert,
                     line=document.lines.get(("tls", "cert"))),
                 Use(field="tls.key", kind="read", path=spec.tls.key,
                     line=document.lines.get(("tls", "key")))]
    if spec.access_log is not None:
        uses.append(Use(field="access_log.path", kind="write", path=spec.access_log.path,
                        line=document.lines.get(("access_log", "path"))))
    if spec.basic_auth is not None:
        uses.append(Use(field="basic_auth.htpasswd", kind="read",
                        path=spec.basic_auth.htpasswd,
                        line=document.lines.get(("basic_auth", "htpasswd"))))
    for code, page in sorted((spec.error_pages or {}).items()):
        uses.append(Use(field=f"error_pages.{code}", kind="page", path=page,
                        line=document.lines.get(("error_pages", str(code)))))
    return tuple(uses)


def problem_of(where: str, error: ErrorDetails, document: Document,
               merged: Merged | None = None) -> Problem:
    """One pydantic error as a Problem at the user's field and line (in the defaults file
    when the value was inherited)."""
    path = _document_path(error["loc"], document.data)
    reason = str(error["msg"]).removeprefix("Value error, ")
    matched = _FIELD_PREFIX.match(reason)
    if matched and error["type"] == "value_error":
        path = (*path, *parse_field_path(matched.group(1)))
        reason = matched.group(2)
    if error["type"] == "extra_forbidden":
        reason = "unknown key" + _suggestion(path)
    elif error["type"] == "missing":
        reason = "required"
    elif error["type"] == "too_long":
        limit = (error.get("ctx") or {}).get("max_length")
        reason = f"at most {limit} entries here; give fewer (or split the site in two files)"
    elif "input" in error and error["type"].endswith("_type"):
        reason = f"{reason}, got {type(error['input']).__name__} {_short(error['input'])}"
    line = _line(path, document)
    file, note = placed(merged, where, path)
    return Problem(file, field_path(path), reason + note, line)


def locate(problems: Iterable[Problem], document: Document,
           merged: Merged | None = None) -> list[Problem]:
    """The problems, each with the line of its field when it had none (problems found
    after validation, such as the escape hatch's, know only the field), and in the
    defaults file when the field was inherited."""
    found = []
    for p in problems:
        if p.line is not None or not p.field:
            found.append(p)
            continue
        path = parse_field_path(p.field)
        file, note = placed(merged, p.file, path)
        found.append(Problem(file, p.field, p.reason + note, _line(path, document)))
    return found


def _document_path(loc: Iterable[str | int], data: Any) -> tuple[str | int, ...]:
    """Pydantic's loc mapped back onto the document: drop the index that the model adds
    when a single endpoint mapping stands where a list is accepted, and the tag of a
    union's member (`str`, `dict[...]`) that stands between a key and what is in it."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(part, int) and isinstance(node, Mapping):
            if part in node:  # a status under error_pages: a key, not an index
                path.append(str(part))
                node = node[part]
            continue
        if isinstance(part, str) and _is_tag(part) and not (
                isinstance(node, Mapping) and part in node):
            continue
        path.append(part)
        node = _child(node, part)
    return tuple(path)


def _is_tag(part: str) -> bool:
    """A name pydantic gives a union's member in a location, never a key a user wrote."""
    return part in ("str", "int", "bool", "float", "text", "json") or any(
        c in part for c in "[(")


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, Mapping):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None


def _line(path: tuple[str | int, ...], document: Document) -> int | None:
    keys = tuple(path)
    for end in range(len(keys), -1, -1):
        if keys[:end] in document.lines:
            return document.lines[keys[:end]]
    return None


def _suggestion(path: tuple[str | int, ...]) -> str:
    known = _known_keys(path[:-1])
    close = difflib.get_close_matches(str(path[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known keys here: {', '.join(sorted(known))}" if known else ""


def _known_keys(path: tuple[str | int, ...]) -> list[str]:
    """The keys the JSON Schema allows at `path` (walks properties, items, unions)."""
    nodes = [_schema()]
    for part in path:
        nodes = [c for n in nodes for c in _schema_children(n, part)]
    return sorted({key for n in nodes for o in _options(n) for key in o.get("properties", {})})


def _schema_children(node: dict[str, Any], part: str | int) -> list[dict[str, Any]]:
    found = []
    for option in _options(node):
        if isinstance(part, int) and "items" in option:
            found.append(option["items"])
        elif part in option.get("properties", {}):
            found.append(option["properties"][part])
        elif option.get("type") == "object":
            found.extend(v for v in (*option.get("patternProperties", {}).values(),
                                     option.get("additionalProperties")) if isinstance(v, dict))
    return found


def _options(node: dict[str, Any]) -> list[dict[str, Any]]:
    node = _resolve_all(node)
    if "anyOf" in node:
        return [o for option in node["anyOf"] for o in _options(option)]
    return [node]


def _resolve_all(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = _schema()["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
