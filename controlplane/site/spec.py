"""The site file contract (v1) as frozen pydantic models: the domain types of the package.

No I/O, no YAML, no Envoy here. A document that validates into `SiteSpec` is a site that
can be rendered; checks that need other sites or settings live in `validating`. The JSON
Schema of the site file (`controlplane schema`) is generated from these models, so the
docs and the editor hints cannot drift from what is accepted.
"""

from __future__ import annotations

import hashlib
import ipaddress
import posixpath
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from controlplane.intake.paths import CONTROL_SOCKET_NAMES
from controlplane.site.features import (
    Access,
    AccessLog,
    BasicAuth,
    CircuitBreaker,
    Cors,
    HealthCheck,
    LbPolicy,
    RateLimit,
    Tls,
)
from controlplane.site.fields import (
    DNS_LABEL,
    Duration,
    HeaderEdits,
    Name,
    PositiveDuration,
    Strict,
    duration_ms,
)
from controlplane.site.routes import Route

__all__ = ["DNS_LABEL", "Duration", "Endpoint", "Route", "Site", "SiteSpec", "Upstream",
           "duration_ms"]

MAX_SOCKET_PATH_BYTES = 107
"""Envoy refuses a pipe path of 108 bytes or more (sun_path holds 108 with the NUL)."""

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


class Endpoint(Strict):
    """One upstream endpoint: a Unix socket (the usual case) or a TCP address."""

    socket: str | None = Field(None, description="Absolute path of a Unix socket.")
    address: str | None = Field(None, description="HOST:PORT with an IP host, [v6]:port.")

    @model_validator(mode="before")
    @classmethod
    def _not_a_url(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(endpoint_hint(value))
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Endpoint:
        if (self.socket is None) == (self.address is None):
            raise ValueError("give exactly one of 'socket' or 'address'")
        if self.address is not None:
            self.host_port()
        return self

    @field_validator("socket")
    @classmethod
    def _socket(cls, path: str | None) -> str | None:
        """The spelling only. Where the path leads (its folder, Envoy's admin socket,
        control sockets) is judged on the resolved path at every pass: `paths.Fence`."""
        if path is not None:
            _check_socket(path)
            if path.rsplit("/", 1)[-1] in CONTROL_SOCKET_NAMES:
                raise ValueError(f"{path!r} is a control socket (a container runtime's, the"
                                 " kubelet's or D-Bus'); a site may not expose it")
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


def endpoint_hint(text: str) -> str:
    """What to write instead of an endpoint given as a string (`http://127.0.0.1:8000`)."""
    rest = text.split("://", 1)[-1] if "://" in text else text.removeprefix("unix:")
    if rest.startswith("/"):
        return f"{text!r} is not an endpoint; write {{socket: {rest}}}"
    host_port = rest.split("/", 1)[0]
    host = host_port.rpartition(":")[0].strip("[]") or host_port
    try:
        ipaddress.ip_address(host)
        suggestion = host_port
    except ValueError:
        suggestion = "127.0.0.1:8000 (an IP address: clusters do not resolve names)"
    return f"{text!r} is not an endpoint; write {{address: {suggestion}}}"


_OPTIONS = ("lb_policy", "health_check", "circuit_breaker", "http2", "connect_timeout")


def _options_hint(value: dict[str, Any]) -> str | None:
    """Upstream options in the short form `{socket: ..., connect_timeout: 1s}`: point to
    the mapping form, built from the user's own values."""
    options = [k for k in value if k in _OPTIONS]
    if not options:
        return None
    endpoint = ", ".join(f"{k}: {v}" for k, v in value.items() if k not in _OPTIONS)
    rest = ", ".join(f"{k}: {value[k]}" for k in options)
    return (f"{options[0]}: options need the mapping form of an upstream:"
            f" {{endpoints: [{{{endpoint}}}], {rest}}}")


def _check_socket(path: str) -> None:
    """Absolute, no `..`, written plainly, short enough for Envoy."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r}: the path must be absolute")
    if ".." in path.split("/"):
        raise ValueError(f"{path!r}: '..' is not allowed in the path")
    if posixpath.normpath(path) != path:  # '//' or '/./' would dodge the checks below
        raise ValueError(f"{path!r}: write the path plainly, as"
                         f" {posixpath.normpath(path)!r}")
    if "\x00" in path:
        raise ValueError("NUL bytes are not allowed in the path")
    size = len(path.encode())
    if size > MAX_SOCKET_PATH_BYTES:
        raise ValueError(f"path is {size} bytes; Envoy allows at most 107")


# Before-validators run last-first: lower-case, then check.
Domain = Annotated[str, BeforeValidator(_domain), BeforeValidator(_lower)]


class Upstream(Strict):
    """An upstream: its endpoints and how Envoy talks to them. A site file may also give
    just an endpoint mapping or a list of endpoints (no options)."""

    endpoints: Annotated[list[Endpoint], Field(min_length=1)] = Field(
        description="The endpoints (sockets or addresses).")
    lb_policy: LbPolicy = Field("round_robin", description="How requests are spread.")
    health_check: HealthCheck | None = Field(None, description="Active HTTP health checks.")
    circuit_breaker: CircuitBreaker | None = Field(None, description="Limits in flight.")
    http2: bool = Field(False, description="Speak HTTP/2 (cleartext) to the endpoints.")
    connect_timeout: PositiveDuration = Field("5s", description="Connection timeout.")

    @model_validator(mode="wrap")
    @classmethod
    def _short_forms(cls, value: Any, handler: ModelWrapValidatorHandler[Upstream]) -> Upstream:
        """`{socket: ...}` and `[...]` mean `{endpoints: [...]}`; errors keep the user's
        paths (`upstream.socket`, `upstream[2].address`)."""
        if isinstance(value, Upstream) or (isinstance(value, dict) and "endpoints" in value):
            return handler(value)
        hint = _options_hint(value) if isinstance(value, dict) else None
        if hint is not None:
            raise ValueError(hint)
        single = not isinstance(value, list)
        try:
            return handler({"endpoints": [value] if single else value})
        except ValidationError as exc:
            raise ValidationError.from_exception_data(
                exc.title, [_short_form_error(e, single) for e in exc.errors()]) from None


def _short_form_error(error: Any, single: bool) -> InitErrorDetails:
    loc = tuple(error["loc"])
    loc = loc[1:] if loc[:1] == ("endpoints",) else loc
    loc = loc[1:] if single and loc[:1] == (0,) else loc
    details = InitErrorDetails(type=error["type"], loc=loc, input=error["input"])
    if "ctx" in error:
        details["ctx"] = error["ctx"]
    return details


UpstreamField = Annotated[
    Upstream,
    BeforeValidator(lambda v: v, json_schema_input_type=Endpoint | list[Endpoint] | Upstream),
]


class Overrides(Strict):
    """Envoy fields merged into what this site renders (see 'The envoy: escape hatch')."""

    cluster: dict[str, Any] | None = Field(None, description="Into every cluster of the site.")
    clusters: dict[Name, dict[str, Any]] | None = Field(
        None, description="Into the cluster of one named upstream (after 'cluster').")
    virtual_host: dict[str, Any] | None = Field(None, description="Into the virtual host.")


class SiteSpec(Strict):
    """A site file: the domains it serves and where their requests go."""

    domains: Annotated[list[Domain], Field(min_length=1)] = Field(
        description="Host names, lower-cased; '*.example.com' and '*' allowed.",
    )
    upstream: UpstreamField | None = Field(None, description="The one upstream of the site.")
    upstreams: dict[Name, UpstreamField] | None = Field(None, description="Named upstreams.")
    routes: list[Route] | None = Field(None, description="First match wins.")
    tls: Tls | None = Field(None, description="Serve over HTTPS with these certificate files.")
    cors: Cors | None = Field(None, description="CORS for the whole site.")
    rate_limit: RateLimit | None = Field(None, description="Local rate limit for the site.")
    access: Access | None = Field(None, description="Client IP allow and deny lists.")
    compression: bool = Field(False, description="Compress responses (gzip) for clients"
                              " that accept it.")
    access_log: AccessLog | None = Field(None, description="An access log of this site.")
    basic_auth: BasicAuth | None = Field(None, description="Ask for a user and password"
                                         " (routes may opt out with 'basic_auth: false').")
    stats_prefix: Annotated[str, Field(pattern=r"^[a-z0-9_]+$", max_length=60)] | None = Field(
        None, description="Name of the site's upstream and route stats (default: the name).")
    request_headers: HeaderEdits | None = Field(None, description="Edit request headers.")
    response_headers: HeaderEdits | None = Field(None, description="Edit response headers.")
    envoy: Overrides | None = Field(None, description="Envoy fields merged into this site's"
                                    " clusters and virtual host.")

    @model_validator(mode="after")
    def _consistent(self) -> SiteSpec:
        if (self.upstream is None) == (self.upstreams is None):
            raise ValueError("give exactly one of 'upstream' or 'upstreams'")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError("domains: a domain is listed twice")
        if self.upstreams is not None and self.routes is None:
            raise ValueError("routes: required when 'upstreams' names several upstreams")
        for i, route in enumerate(self.routes or ()):
            self._check_reference(f"routes[{i + 1}]", route)
            if route.basic_auth is False and self.basic_auth is None:
                raise ValueError(f"routes[{i + 1}].basic_auth: false opts a route out of the"
                                 " site's basic_auth, which this site does not have")
        unknown = set((self.envoy and self.envoy.clusters) or ()) - set(self.upstreams or ())
        if unknown:
            raise ValueError(f"envoy.clusters: {', '.join(sorted(unknown))}: not a name under"
                             " 'upstreams'")
        return self

    def _check_reference(self, where: str, route: Route) -> None:
        named = route.upstreams()
        if self.upstreams is None:
            if named:
                key = "upstream" if route.upstream else "split"
                raise ValueError(f"{where}.{key}: this site has one 'upstream'; name several"
                                 " under 'upstreams'")
            return
        if route.proxies and not named:
            raise ValueError(f"{where}.upstream: each route needs an upstream from 'upstreams'")
        for name in named:
            if name not in self.upstreams:
                known = ", ".join(sorted(self.upstreams))
                key = "upstream" if route.upstream else "split"
                raise ValueError(f"{where}.{key}: {name!r} is not defined; known: {known}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    """A validated site: its name (the file stem), its spec, and where it came from."""

    name: str
    spec: SiteSpec
    source: str
    digest: str

    def upstream_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.spec.upstreams)) if self.spec.upstreams else ("",)

    def upstream(self, name: str) -> Upstream:
        if self.spec.upstreams is None:
            assert self.spec.upstream is not None
            return self.spec.upstream
        return self.spec.upstreams[name]

    def endpoints(self, upstream: str) -> list[Endpoint]:
        return self.upstream(upstream).endpoints


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
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"]).replace("|", "\\|")
    if prop.get("type") == "object":
        values = [*prop.get("patternProperties", {}).values(), prop.get("additionalProperties")]
        typed = [v for v in values if isinstance(v, dict) and v]
        return f"map of name to {_type_of(typed[0])}" if typed else "mapping (Envoy fields)"
    pattern = f" `{prop['pattern']}`".replace("|", "\\|") if "pattern" in prop else ""
    return str(prop.get("type", "any")) + pattern
