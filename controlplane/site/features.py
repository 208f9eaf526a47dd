"""Site-wide parts of the site file: TLS, CORS, rate limiting, IP access lists,
compression, the access log, and upstream options (load balancing, health checks,
circuit breakers, HTTP/2).

No I/O, no Envoy: these are the user's words; `clusters`, `vhosts` and `tls` turn them
into Envoy's.
"""

from __future__ import annotations

import ipaddress
import posixpath
from typing import Annotated, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_validator

from controlplane.site.fields import Duration, Format, PositiveDuration, Strict, Text, duration_ms


def absolute_path(path: str) -> str:
    """An absolute path without `..` or NUL (certificates, keys, logs)."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r}: the path must be absolute")
    if ".." in path.split("/") or "\x00" in path:
        raise ValueError(f"{path!r}: '..' and NUL are not allowed in the path")
    return path


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR block") from None


def file_path(path: str) -> str:
    """A file the site names for reading: absolute, or relative to the site file's folder
    (so an example can ship its files beside it); no `..`, no NUL."""
    if not path or ".." in path.split("/") or "\x00" in path:
        raise ValueError(f"{path!r}: '..' and NUL are not allowed in the path")
    if posixpath.normpath(path) != path.rstrip("/") or path.endswith("/"):
        raise ValueError(f"{path!r}: write the path plainly, as {posixpath.normpath(path)!r}")
    return path


AbsolutePath = Annotated[str, AfterValidator(absolute_path)]
FilePath = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(file_path)]
"""Absolute, or relative to the folder of the site file (`validating` anchors it)."""
Cidr = Annotated[str, AfterValidator(_cidr)]
Count = Annotated[int, Field(ge=1, le=1_000_000_000)]


class Tls(Strict):
    """Serve the site over HTTPS (SNI on its domains) with these certificate files, or
    with a certificate the daemon orders by ACME (`acme: true`)."""

    cert: FilePath | None = Field(
        None, description="PEM certificate chain file (e.g. fullchain.pem); absolute, or"
        " relative to the site file's folder.")
    key: FilePath | None = Field(None, description="PEM private key file; absolute, or"
                                 " relative to the site file's folder.")
    acme: bool = Field(False, description="Order the certificate for the site's domains by"
                       " ACME HTTP-01 (settings `acme_*`), instead of naming files;"
                       " until it is issued the site serves plain HTTP.")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version.")
    alpn: Annotated[list[Literal["h2", "http/1.1"]], Field(min_length=1)] = Field(
        ["h2", "http/1.1"], description="ALPN protocols offered, in order.")
    redirect: bool = Field(True, description="Answer plain HTTP with a 301 to HTTPS"
                           " (routes may opt out with 'https_redirect: false').")

    @model_validator(mode="after")
    def _files_or_acme(self) -> Tls:
        if self.acme and (self.cert is not None or self.key is not None):
            raise ValueError("give 'cert' and 'key', or 'acme: true', not both")
        if not self.acme and (self.cert is None or self.key is None):
            missing = "cert" if self.cert is None else "key"
            raise ValueError(f"{missing}: required (or 'acme: true' to have the"
                             " certificate ordered)")
        return self

    def files(self) -> tuple[str, str]:
        """(certificate, key): the files named, or those the ACME order wrote."""
        if self.cert is None or self.key is None:
            raise ValueError("an ACME site has no certificate files yet")
        return self.cert, self.key


class BasicAuth(Strict):
    """HTTP basic authentication of the site's requests against an htpasswd file."""

    htpasswd: FilePath = Field(description="An htpasswd file of `user:{SHA}hash` lines"
                               " (`htpasswd -s`); Envoy reads it, and again when it"
                               " changes. Absolute, or relative to the site file's folder.")
    realm: Annotated[str, Field(min_length=1, max_length=64,
                                pattern=r"^[A-Za-z0-9 .,:;!?@#&()+=/_'-]+$")] | None = Field(
        None, description="The realm the browser shows in its password prompt (the 401's"
        " `WWW-Authenticate: Basic realm=\"...\"`); default: Envoy's, the request's URL.")


ErrorCode = Literal[400, 401, 403, 404, 413, 429, 431, 500, 502, 503, 504]
"""The statuses of Envoy's own replies a site may give a page for: no route (404), an
access list (403), a password asked (401), a rate limit (429), a bad or oversized request
(400, 413, 431), the upstream down, failing or slow (503, 502, 504, 500)."""
ErrorPages = Annotated[dict[ErrorCode, FilePath], Field(min_length=1)]


class Cors(Strict):
    """Cross-origin resource sharing for browsers."""

    origins: Annotated[list[Text], Field(min_length=1)] = Field(
        description="Allowed origins, exactly ('https://app.example.com') or '*'.")
    methods: list[Text] | None = Field(None, description="Allowed methods.")
    headers: list[Text] | None = Field(None, description="Allowed request headers.")
    expose_headers: list[Text] | None = Field(None, description="Response headers exposed.")
    max_age: Duration | None = Field(None, description="How long a preflight is cached.")
    credentials: bool = Field(False, description="Allow credentials.")


class RateLimit(Strict):
    """A local token bucket per Envoy: at most `requests` per `per`, then 429; one bucket
    for the whole site, or one per client address."""

    requests: Count = Field(description="Requests allowed per interval.")
    per: PositiveDuration = Field("1s", description="The interval.")
    burst: Count | None = Field(None, description="Bucket size (default: 'requests').")
    by: Literal["site", "client"] = Field(
        "site", description="One bucket for the site (`site`), or one per client address"
        " (`client`: an IPv4 address, or an IPv6 /64; the address Envoy found, see"
        " trusted_proxies), so one busy client does not take the others' share.")


class Access(Strict):
    """Client IP access lists; deny wins over allow; others are refused when 'allow' is set."""

    allow: Annotated[list[Cidr], Field(min_length=1)] | None = Field(
        None, description="Only these addresses or CIDR blocks.")
    deny: Annotated[list[Cidr], Field(min_length=1)] | None = Field(
        None, description="Never these addresses or CIDR blocks.")

    @model_validator(mode="after")
    def _some(self) -> Access:
        if self.allow is None and self.deny is None:
            raise ValueError("give 'allow', 'deny' or both")
        return self


LogKey = Annotated[Text, Field(min_length=1, max_length=128)]
LogValue = Annotated[Format, Field(max_length=1024)]
def _form(value: object) -> str:
    return "json" if isinstance(value, dict) else "text"


JsonFormat = Annotated[
    dict[LogKey, Annotated[
        Annotated[LogValue, Tag("text")]
        | Annotated[dict[LogKey, LogValue], Field(min_length=1, max_length=64), Tag("json")],
        Discriminator(_form)]],
    Field(min_length=1, max_length=64)]
"""A JSON access-log line: keys to formats, one level of nesting (Envoy's json_format)."""
LogFormat = Annotated[
    Annotated[Annotated[Format, Field(min_length=1, max_length=4096)], Tag("text")]
    | Annotated[JsonFormat, Tag("json")],
    Discriminator(_form)]
"""One line of text, or one JSON object: only the errors of the form given are told."""


class AccessLog(Strict):
    """An access log file for this site's requests."""

    path: AbsolutePath = Field(description="Log file (Envoy appends to it); under one of"
                               " the allowed log folders (setting `log_dirs`).")
    format: LogFormat | None = Field(
        None, description="Envoy format string with the allowed commands (README 'Strings"
        " and formats'), or a mapping for one JSON object a line (Envoy's json_format: each"
        " value such a format, or a mapping of them); default: Envoy's default line.")

    @field_validator("path")
    @classmethod
    def _plain(cls, path: str) -> str:
        """The spelling only. Envoy opens the file with its own rights, so where it leads
        (under `log_dirs`, a regular file, no symlink) is judged on the resolved path at
        every pass: `paths.Fence`."""
        if posixpath.normpath(path) != path:
            raise ValueError(f"{path!r}: write the path plainly, as"
                             f" {posixpath.normpath(path)!r}")
        return path


class HealthCheck(Strict):
    """Active HTTP health checks of each endpoint."""

    path: Text = Field("/", description="Path to GET.")
    host: Text | None = Field(None, description="Host header (default: the site's first domain).")
    interval: PositiveDuration = Field("10s", description="Time between checks (at least"
                                       " 1s: Envoy's health checks share its two cores"
                                       " with every site).")
    timeout: PositiveDuration = Field("2s", description="Time to wait for an answer (at"
                                      " least 100ms).")
    healthy: Annotated[int, Field(ge=1, le=100)] = Field(
        2, description="Passes before an endpoint is healthy again.")
    unhealthy: Annotated[int, Field(ge=1, le=100)] = Field(
        3, description="Failures before an endpoint is unhealthy.")

    @model_validator(mode="after")
    def _path(self) -> HealthCheck:
        if not self.path.startswith("/"):
            raise ValueError(f"path: {self.path!r} must start with '/'")
        if duration_ms(self.interval) < 1000:
            raise ValueError(f"interval: {self.interval!r} is under 1s; checks that often"
                             " cost every site Envoy's time: write 1s or more")
        if duration_ms(self.timeout) < 100:
            raise ValueError(f"timeout: {self.timeout!r} is under 100ms: write 100ms or more")
        return self


class CircuitBreaker(Strict):
    """Limits on what Envoy sends to one upstream at a time."""

    max_connections: Count | None = Field(None, description="Connections.")
    max_pending_requests: Count | None = Field(None, description="Queued requests.")
    max_requests: Count | None = Field(None, description="Requests in flight.")
    max_retries: Count | None = Field(None, description="Retries in flight.")


LbPolicy = Literal["round_robin", "least_request", "random"]
