"""The site file contract (v1) as frozen pydantic models: the domain types of the package.

No I/O, no YAML, no Envoy here. A document that validates into `SiteSpec` is a site that
can be rendered; checks that need other sites or settings live in `validating`. The JSON
Schema of the site file (`controlplane schema`) is generated from these models, so the
docs and the editor hints cannot drift from what is accepted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any

import re2
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
"""Site and upstream names: a DNS label of at most 63 characters."""

CONTROL_SOCKETS = frozenset({
    "docker.sock", "containerd.sock", "podman.sock", "crio.sock", "cri-dockerd.sock",
    "dockershim.sock", "kubelet.sock",
})
"""Socket names of container runtimes and the kubelet: an upstream on one of them would
hand the node to anyone who can reach the site."""

MAX_SOCKET_PATH_BYTES = 107
"""Envoy refuses a pipe path of 108 bytes or more (sun_path holds 108 with the NUL)."""

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def duration_ms(text: str) -> int:
    """`'1.5s'` -> 1500. The model has already checked the form."""
    match = _DURATION.match(text)
    assert match is not None
    return round(float(match.group(1)) * _UNIT_MS[match.group(2)])


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _domain(value: Any) -> Any:
    if not isinstance(value, str) or value == "*":  # the str type reports non-strings
        return value
    host = value.removeprefix("*.")
    if "://" in value or "/" in value:
        raise ValueError(f"{value!r}: a domain is a host name, without scheme or path")
    if ":" in host:
        raise ValueError(f"{value!r}: ports are not allowed in domains")
    labels = host.split(".")
    if len(host) > 253 or not all(DNS_LABEL.fullmatch(x) and len(x) <= 63 for x in labels):
        raise ValueError(f"{value!r} is not a host name (labels of a-z, 0-9 and '-')")
    if "*" in host:
        raise ValueError(f"{value!r}: a wildcard is allowed only as a leading '*.'")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Endpoint(_Strict):
    """One upstream endpoint: a Unix socket (the usual case) or a TCP address."""

    socket: str | None = Field(None, description="Absolute path of a Unix socket.")
    address: str | None = Field(None, description="HOST:PORT with an IP host, [v6]:port.")

    @model_validator(mode="after")
    def _one_kind(self) -> Endpoint:
        if (self.socket is None) == (self.address is None):
            raise ValueError("give exactly one of 'socket' or 'address'")
        if self.address is not None:
            self.host_port()
        return self

    @field_validator("socket")
    @classmethod
    def _socket(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is not None:
            context = info.context or {}
            _check_socket(path, context.get("socket_dirs", ()))
            if path in context.get("forbidden_sockets", ()) or path.rsplit("/", 1)[-1] in (
                    CONTROL_SOCKETS):
                raise ValueError(f"{path!r} is a control socket (a container runtime's or"
                                 " Envoy's admin); a site may not expose it")
        return path

    def host_port(self) -> tuple[str, int]:
        assert self.address is not None
        host, sep, port = self.address.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"address: {self.address!r}: the host must be an IP address"
                " (STATIC clusters do not resolve names)"
            ) from None
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"address: {self.address!r}: the port must be 1-65535")
        return host, int(port)


def _check_socket(path: str, allowed: tuple[str, ...]) -> None:
    """Absolute, no `..`, short enough for Envoy, under an allowed folder (if any)."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r}: the path must be absolute")
    if ".." in path.split("/"):
        raise ValueError(f"{path!r}: '..' is not allowed in the path")
    if "\x00" in path:
        raise ValueError("NUL bytes are not allowed in the path")
    size = len(path.encode())
    if size > MAX_SOCKET_PATH_BYTES:
        raise ValueError(f"path is {size} bytes; Envoy allows at most 107")
    if allowed and not any(path.startswith(root.rstrip("/") + "/") for root in allowed):
        raise ValueError(f"{path!r} is outside the allowed socket folders"
                         f" ({', '.join(allowed)})")


Endpoints = Annotated[
    list[Endpoint],
    BeforeValidator(_as_list, json_schema_input_type=Endpoint | list[Endpoint]),
    Field(min_length=1),
]
# Before-validators run last-first: lower-case, then check.
Domain = Annotated[str, BeforeValidator(_domain), BeforeValidator(_lower)]
Name = Annotated[str, Field(pattern=f"^{DNS_LABEL.pattern}$", max_length=63)]
Duration = Annotated[str, Field(pattern=_DURATION.pattern, examples=["30s", "500ms", "5m"])]


class Route(_Strict):
    """One route: a match (exactly one of prefix, path, regex) and where it goes."""

    prefix: str | None = Field(None, description="Match paths starting with this.")
    path: str | None = Field(None, description="Match this exact path.")
    regex: str | None = Field(None, description="Match the whole path with this RE2 regex.")
    upstream: Name | None = Field(None, description="A name under 'upstreams'.")
    timeout: Duration | None = Field(None, description="Request timeout (Envoy's: 15s).")
    websocket: bool = Field(False, description="Allow websocket upgrades.")
    rewrite_prefix: str | None = Field(None, description="Replace the matched prefix.")

    @model_validator(mode="after")
    def _one_match(self) -> Route:
        given = [k for k in ("prefix", "path", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'prefix', 'path' or 'regex'")
        for key in ("prefix", "path"):
            value = getattr(self, key)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{key}: {value!r} must start with '/'")
        if self.regex is not None:
            _check_re2(self.regex)
            if self.rewrite_prefix is not None:
                raise ValueError("rewrite_prefix: needs a 'prefix' or 'path' match")
        return self

    @property
    def match(self) -> tuple[str, str]:
        for key in ("prefix", "path", "regex"):
            value = getattr(self, key)
            if value is not None:
                return key, value
        raise AssertionError("validated route without a match")


_RE2_QUIET = re2.Options()
_RE2_QUIET.log_errors = False  # the reason is reported per file; nothing on stderr


def _check_re2(pattern: str) -> None:
    try:
        re2.compile(pattern, _RE2_QUIET)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"regex: {pattern!r} is not valid RE2 syntax: {reason}") from None


class SiteSpec(_Strict):
    """A site file: the domains it serves and where their requests go."""

    domains: Annotated[list[Domain], Field(min_length=1)] = Field(
        description="Host names, lower-cased; '*.example.com' and '*' allowed.",
    )
    upstream: Endpoints | None = Field(None, description="The one upstream of the site.")
    upstreams: dict[Name, Endpoints] | None = Field(None, description="Named upstreams.")
    routes: list[Route] | None = Field(None, description="First match wins.")

    @model_validator(mode="after")
    def _consistent(self) -> SiteSpec:
        if (self.upstream is None) == (self.upstreams is None):
            raise ValueError("give exactly one of 'upstream' or 'upstreams'")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError("domains: a domain is listed twice")
        if self.upstreams is not None and self.routes is None:
            raise ValueError("routes: required when 'upstreams' names several upstreams")
        for i, route in enumerate(self.routes or ()):
            self._check_reference(f"routes.{i}.upstream", route)
        return self

    def _check_reference(self, where: str, route: Route) -> None:
        if self.upstreams is None:
            if route.upstream is not None:
                raise ValueError(f"{where}: {route.upstream!r}: this site has one 'upstream';"
                                 " name several under 'upstreams'")
        elif route.upstream is None:
            raise ValueError(f"{where}: each route needs an upstream from 'upstreams'")
        elif route.upstream not in self.upstreams:
            known = ", ".join(sorted(self.upstreams))
            raise ValueError(f"{where}: {route.upstream!r} is not defined; known: {known}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    """A validated site: its name (the file stem), its spec, and where it came from."""

    name: str
    spec: SiteSpec
    source: str
    digest: str

    def upstream_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.spec.upstreams)) if self.spec.upstreams else ("",)

    def endpoints(self, upstream: str) -> list[Endpoint]:
        if self.spec.upstreams is None:
            assert self.spec.upstream is not None
            return self.spec.upstream
        return self.spec.upstreams[upstream]


def digest_of(content: bytes) -> str:
    """The content hash that identifies one version of a site file."""
    return hashlib.sha256(content).hexdigest()[:16]


def schema() -> dict[str, Any]:
    """The JSON Schema of a site file, for editors (`# yaml-language-server: $schema=`)."""
    document = SiteSpec.model_json_schema()
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
    if prop.get("type") == "object":
        values = [*prop.get("patternProperties", {}).values(), prop.get("additionalProperties")]
        return f"map of name to {_type_of(next(v for v in values if isinstance(v, dict)))}"
    pattern = f" `{prop['pattern']}`".replace("|", "\\|") if "pattern" in prop else ""
    return str(prop.get("type", "any")) + pattern
