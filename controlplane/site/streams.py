"""Sites without HTTP: `kind: tcp` (a port of its own, forwarded to an upstream) and
`kind: tls-passthrough` (TLS connections on the HTTPS port, chosen by SNI, passed whole
to an upstream that terminates TLS itself).

No I/O, no Envoy: `render/streams` turns them into Envoy's tcp_proxy listeners and filter
chains. Where a TCP site may listen (never Envoy's, the daemon's, a control-plane port
or below `tcp_min_port`) is judged with the settings in `intake/streams`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from controlplane.site.fields import PositiveDuration, Strict
from controlplane.site.upstreams import Endpoint, Upstream, UpstreamField

KINDS = ("http", "tcp", "tls-passthrough")
"""The site kinds; a site file without `kind` is an HTTP site."""


def _listen(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    host, sep, port = value.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise ValueError(f"{value!r} is not HOST:PORT with an IP host, like 0.0.0.0:5432"
                         " or [::]:5432") from None
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: the port must be 1-65535")
    if ip.is_multicast:
        raise ValueError(f"{value!r}: not an address of this host")
    return value


def _server_name(value: Any) -> Any:
    if isinstance(value, str) and (value == "*" or "*" in value.removeprefix("*.")):
        raise ValueError(f"{value!r}: a passthrough domain is a host name or '*.example.com'"
                         " (SNI cannot match '*')")
    return value.lower() if isinstance(value, str) else value


ServerName = Annotated[str, BeforeValidator(_server_name),
                       Field(pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?"
                             r"(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length=253)]


class StreamSpec(Strict):
    """A TCP or TLS-passthrough site file: where connections come in, where they go."""

    kind: Literal["tcp", "tls-passthrough"] = Field(
        description="`tcp`: a port of its own; `tls-passthrough`: TLS by SNI on the HTTPS"
        " port, passed through undecrypted.")
    listen: Annotated[str, BeforeValidator(_listen)] | None = Field(
        None, description="HOST:PORT of a TCP site's own listener (`kind: tcp`).")
    domains: Annotated[list[ServerName], Field(min_length=1)] | None = Field(
        None, description="The SNI names of a passthrough site (`kind: tls-passthrough`).")
    upstream: UpstreamField = Field(description="Where the connections go: a socket, an"
                                    " address, or an upstream mapping.")
    idle_timeout: PositiveDuration = Field(
        "1h", description="A connection with no bytes either way for this long is closed.")

    @model_validator(mode="after")
    def _shape(self) -> StreamSpec:
        if self.kind == "tcp" and (self.listen is None or self.domains is not None):
            raise ValueError("a tcp site has 'listen: HOST:PORT' and no 'domains'")
        if self.kind == "tls-passthrough" and (self.domains is None or self.listen is not None):
            raise ValueError("a tls-passthrough site has 'domains' (its SNI names) and no"
                             " 'listen' (it is served on the HTTPS listener)")
        if self.domains is not None and len(set(self.domains)) != len(self.domains):
            raise ValueError("domains: a domain is listed twice")
        if self.upstream.health_check is not None or self.upstream.http2:
            raise ValueError("upstream: health_check and http2 are HTTP options; a stream"
                             " site's upstream takes endpoints, lb_policy, circuit_breaker"
                             " and connect_timeout")
        return self

    def listen_port(self) -> tuple[str, int]:
        assert self.listen is not None
        host, _, port = self.listen.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSite:
    """A validated TCP or passthrough site: its name (the file stem) and spec."""

    name: str
    spec: StreamSpec
    source: str
    digest: str

    @property
    def upstream(self) -> Upstream:
        return self.spec.upstream

    def endpoints(self) -> list[Endpoint]:
        return self.spec.upstream.endpoints
