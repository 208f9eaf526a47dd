"""The site file's JSON Schema and its Markdown reference, generated from the models
(`controlplane schema`, `config/site.schema.json`, the README's reference).
"""

from __future__ import annotations

from typing import Any

from controlplane.site.spec import SiteSpec
from controlplane.site.streams import StreamSpec


def schema() -> dict[str, Any]:
    """The JSON Schema of a site file, for editors (`# yaml-language-server: $schema=`):
    an HTTP site; a TCP or passthrough site is `#/$defs/StreamSpec`."""
    document = SiteSpec.model_json_schema()
    streams = StreamSpec.model_json_schema()
    document["$defs"].update(streams.pop("$defs", {}))
    document["$defs"]["StreamSpec"] = streams
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "controlplane site file (v1)"
    return document


def reference() -> str:
    """The site file reference as a Markdown table, generated from the JSON Schema so
    the README cannot drift from what is accepted (a test compares them)."""
    document = schema()
    rows = ["| where | key | type | meaning |", "|---|---|---|---|"]
    sections = [("site", document), *sorted(document["$defs"].items())]
    for where, node in sections:
        for key, prop in node.get("properties", {}).items():
            required = key in node.get("required", [])
            meaning = prop.get("description", "") + (" Required." if required else "")
            rows.append(f"| {where} | `{key}` | {_type_of(prop)} | {meaning.strip()} |")
    return "\n".join(rows) + "\n"


def _type_of(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in prop:
        kinds = [_type_of(p) for p in prop["anyOf"] if p.get("type") != "null"]
        return " or ".join(kinds)
    if prop.get("type") == "array":
        return f"list of {_type_of(prop.get('items', {}))}"
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"]).replace("|", "\\|")
    if prop.get("type") == "object":
        values = [*prop.get("patternProperties", {}).values(), prop.get("additionalProperties")]
        typed = [v for v in values if isinstance(v, dict) and v]
        return f"map of name to {_type_of(typed[0])}" if typed else "mapping (Envoy fields)"
    pattern = f" `{prop['pattern']}`".replace("|", "\\|") if "pattern" in prop else ""
    return str(prop.get("type", "any")) + pattern
