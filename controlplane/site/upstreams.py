"""The upstream part of the site file: endpoints (a Unix socket or a TCP address) and
the options of an upstream, with the hints that make a wrong endpoint easy to fix.
No I/O: where a socket path leads is judged at every pass (`intake/paths`).
"""

from __future__ import annotations

import ipaddress
import posixpath
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

from controlplane.site.features import (
    CircuitBreaker,
    HealthCheck,
    LbPolicy,
)
from controlplane.site.fields import (
    PositiveDuration,
    Strict,
)
from controlplane.site.places import CONTROL_SOCKET_NAMES

MAX_ENDPOINTS = 64
"""Endpoints per upstream: each is probed and reported, so thousands in one file would
cost the daemon's loop for every site (a balanced pool of 64 is plenty on one node)."""
MAX_SOCKET_PATH_BYTES = 107
"""Envoy refuses a pipe path of 108 bytes or more (sun_path holds 108 with the NUL)."""


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


class Upstream(Strict):
    """An upstream: its endpoints and how Envoy talks to them. A site file may also give
    just an endpoint mapping or a list of endpoints (no options)."""

    endpoints: Annotated[list[Endpoint], Field(min_length=1, max_length=MAX_ENDPOINTS)] = Field(
        description="The endpoints (sockets or addresses), at most 64.")
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
