"""The site file contract (v1) as frozen pydantic models: the domain types of the package.

No I/O, no YAML, no Envoy here. A document that validates into `SiteSpec` is a site that
can be rendered; checks that need other sites or settings live in `validating`. The JSON
Schema of the site file (`controlplane schema`) is generated from these models, so the
docs and the editor hints cannot drift from what is accepted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    model_validator,
)

from controlplane.site.auth import AUTH, ForwardAuth
from controlplane.site.features import (
    Access,
    AccessLog,
    BasicAuth,
    Cors,
    ErrorPages,
    RateLimit,
    Tls,
)
from controlplane.site.fields import (
    DNS_LABEL,
    Duration,
    HeaderEdits,
    Name,
    Strict,
    duration_ms,
)
from controlplane.site.routes import Route
from controlplane.site.upstreams import Endpoint, Upstream, UpstreamField

__all__ = ["DNS_LABEL", "Duration", "Endpoint", "Route", "Site", "SiteSpec", "Upstream",
           "duration_ms"]


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


# Before-validators run last-first: lower-case, then check.
Domain = Annotated[str, BeforeValidator(_domain), BeforeValidator(_lower)]


class Overrides(Strict):
    """Envoy fields merged into what this site renders (see 'The envoy: escape hatch')."""

    cluster: dict[str, Any] | None = Field(None, description="Into every cluster of the site.")
    clusters: dict[Name, dict[str, Any]] | None = Field(
        None, description="Into the cluster of one named upstream (after 'cluster').")
    virtual_host: dict[str, Any] | None = Field(None, description="Into the virtual host.")


class SiteSpec(Strict):
    """A site file: the domains it serves and where their requests go."""

    kind: Literal["http"] = Field("http", description="`http` (the default); `tcp` and"
                                  " `tls-passthrough` sites are StreamSpec.")
    domains: Annotated[list[Domain], Field(min_length=1)] = Field(
        description="Host names, lower-cased; '*.example.com' and '*' allowed.",
    )
    upstream: UpstreamField | None = Field(None, description="The one upstream of the site.")
    upstreams: Annotated[dict[Name, UpstreamField], Field(max_length=16)] | None = Field(
        None, description="Named upstreams, at most 16.")
    routes: list[Route] | None = Field(None, description="First match wins.")
    tls: Tls | None = Field(None, description="Serve over HTTPS with these certificate"
                            " files, or with one ordered by ACME.")
    cors: Cors | None = Field(None, description="CORS for the whole site.")
    rate_limit: RateLimit | None = Field(None, description="Local rate limit for the site.")
    access: Access | None = Field(None, description="Client IP allow and deny lists.")
    compression: bool = Field(False, description="Compress responses (gzip) for clients"
                              " that accept it.")
    access_log: AccessLog | None = Field(None, description="An access log of this site.")
    basic_auth: BasicAuth | None = Field(None, description="Ask for a user and password"
                                         " (routes may opt out with 'basic_auth: false').")
    forward_auth: ForwardAuth | None = Field(
        None, description="Ask an auth service about each request (routes may opt out"
        " with 'forward_auth: false').")
    error_pages: ErrorPages | None = Field(
        None, description="A page (`.html`, `.txt` or `.json` file, at most 64 KiB; 128 KiB"
        " for all of them) for each status of Envoy's own replies, by status:"
        " `{503: pages/503.html}`; absolute, or relative to the site file's folder."
        " Upstream responses pass unchanged.")
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
        if self.tls is not None and self.tls.acme:
            wild = [d for d in self.domains if d.startswith("*")]
            if wild:
                raise ValueError(f"tls.acme: {wild[0]!r} is a wildcard, which ACME issues"
                                 " only by the DNS-01 challenge (not supported here): list"
                                 " each name, or give 'cert' and 'key' from elsewhere")
        if self.upstreams is not None and self.routes is None:
            raise ValueError("routes: required when 'upstreams' names several upstreams")
        for i, route in enumerate(self.routes or ()):
            self._check_reference(f"routes[{i + 1}]", route)
            for key in ("basic_auth", "forward_auth"):
                if getattr(route, key) is False and getattr(self, key) is None:
                    raise ValueError(f"routes[{i + 1}].{key}: false opts a route out of the"
                                     f" site's {key}, which this site does not have")
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
        """The site's upstreams (`""`: its one `upstream`), the auth service's (`AUTH`) last."""
        names = tuple(sorted(self.spec.upstreams)) if self.spec.upstreams else ("",)
        return (*names, AUTH) if self.spec.forward_auth is not None else names

    def upstream(self, name: str) -> Upstream:
        if name == AUTH and self.spec.forward_auth is not None:
            return self.spec.forward_auth.upstream
        if self.spec.upstreams is None:
            assert self.spec.upstream is not None
            return self.spec.upstream
        return self.spec.upstreams[name]

    def endpoints(self, upstream: str) -> list[Endpoint]:
        return self.upstream(upstream).endpoints


def digest_of(content: bytes) -> str:
    """The content hash that identifies one version of a site file."""
    return hashlib.sha256(content).hexdigest()[:16]


