"""The site file's `forward_auth`: the site's own auth service, asked about each request.

No I/O, no Envoy: `render/authz` turns it into Envoy's ext_authz configs. The service is
an upstream like any other (rendered as the cluster `SITE/_auth`, fenced and owned like
every upstream); what it may see and set is bounded here.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from controlplane.site.fields import HeaderName, PositiveDuration, Strict, duration_ms
from controlplane.site.upstreams import UpstreamField

AUTH = "_auth"
"""The forward_auth upstream's name among the site's upstreams (cluster `SITE/_auth`):
not a DNS label, so no upstream a site names can take it."""
FIXED_AUTH_HEADERS = frozenset({"host", "authorization", "content-length",
                                "x-forwarded-method", "x-forwarded-host", "x-forwarded-uri",
                                "x-forwarded-proto", "x-forwarded-for"})
"""Sent to the auth service with every check: Envoy always sends the first three; the
others say what the client asked for (the forward-auth convention of Traefik and
oauth2-proxy)."""
UNVOUCHED = frozenset({"host", "content-length", "transfer-encoding", "connection",
                       "keep-alive", "te", "trailer", "upgrade", "proxy-authorization",
                       "proxy-connection", "x-real-ip", "x-forwarded-for",
                       "x-forwarded-proto", "x-request-id"})
"""Request headers an auth service may not set upstream: framing and hop-by-hop headers,
and those by which the upstream knows the client and the request."""


def _auth_header(value: str) -> str:
    name = value.lower()
    if name.startswith("x-envoy-"):
        raise ValueError(f"{value!r}: x-envoy-* headers are Envoy's own")
    return name


AuthHeader = Annotated[HeaderName, AfterValidator(_auth_header)]


class ForwardAuth(Strict):
    """Ask an HTTP auth service about each request (Envoy's ext_authz); a 2xx lets the
    request through, any other answer goes to the client as the service gave it."""

    upstream: UpstreamField = Field(description="The auth service: a socket, an address, or"
                                    " an upstream mapping; fenced like every upstream.")
    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$",
                               max_length=256)] = Field(
        "", description="Prefix of the check's path (the request's path follows it).")
    headers: Annotated[list[AuthHeader], Field(max_length=32)] = Field(
        ["cookie"], description="Request headers sent to the auth service, besides Host,"
        " Authorization, Content-Length and X-Forwarded-Method, -Host, -Uri, -Proto, -For.")
    response_headers: Annotated[list[AuthHeader], Field(max_length=32)] = Field(
        [], description="Headers of the service's 2xx answer sent upstream (a client's own"
        " copies are removed first, so they cannot be forged).")
    timeout: PositiveDuration = Field("2s", description="No answer within this: 503 (fail"
                                      " closed), as when the service is down.")

    @model_validator(mode="after")
    def _headers(self) -> ForwardAuth:
        for field, names, taken in (("headers", self.headers, FIXED_AUTH_HEADERS),
                                    ("response_headers", self.response_headers, UNVOUCHED)):
            if len(set(names)) != len(names):
                raise ValueError(f"{field}: a header is listed twice")
            clash = sorted(set(names) & taken)
            if clash:
                reason = ("is always sent" if field == "headers" else
                          "is not the auth service's to set")
                raise ValueError(f"{field}: {clash[0]!r} {reason}")
        if duration_ms(self.timeout) > 60_000:
            raise ValueError("timeout: at most 60s")
        return self
