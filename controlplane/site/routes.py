"""The route part of the site file: what a request must match and what happens to it.

No I/O, no Envoy. A route has one path match (prefix, path or regex), optional header
and query matches, and one action: an upstream (the default), a weighted split, a
redirect or a direct response. Upstream actions take rewrites, timeouts, retries and
websocket upgrades; every action takes header edits.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from controlplane.site.fields import (
    Body,
    Duration,
    HeaderEdits,
    MatchHeaderName,
    Name,
    PositiveDuration,
    Regex,
    Strict,
    Text,
    check_re2,
)

RETRY_ON = Literal[
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
    "retriable-4xx", "refused-stream", "envoy-ratelimited",
]
_STRING_MATCHES = ("exact", "prefix", "suffix", "contains", "regex")


def _one_of(model: Strict, keys: tuple[str, ...], what: str) -> list[str]:
    given = [k for k in keys if getattr(model, k) is not None]
    if len(given) != 1:
        names = [repr(k) for k in keys]
        raise ValueError(f"give exactly one of {', '.join(names[:-1])} or {names[-1]}{what}")
    return given


class HeaderMatch(Strict):
    """A request header that must (or, inverted, must not) match."""

    name: MatchHeaderName = Field(description="Header name; ':method' and the like allowed.")
    exact: Text | None = Field(None, description="The value is exactly this.")
    prefix: Text | None = Field(None, description="The value starts with this.")
    suffix: Text | None = Field(None, description="The value ends with this.")
    contains: Text | None = Field(None, description="The value contains this.")
    regex: Regex | None = Field(None, description="The whole value matches this RE2 regex.")
    present: bool | None = Field(None, description="The header is there (true) or not.")
    invert: bool = Field(False, description="Match when the test above fails.")

    @model_validator(mode="after")
    def _one_test(self) -> HeaderMatch:
        _one_of(self, (*_STRING_MATCHES, "present"), "")
        return self


class QueryMatch(Strict):
    """A query parameter that must match."""

    name: Annotated[Text, Field(min_length=1, max_length=256)] = Field(
        description="Query parameter name.")
    exact: Text | None = Field(None, description="The value is exactly this.")
    prefix: Text | None = Field(None, description="The value starts with this.")
    regex: Regex | None = Field(None, description="The whole value matches this RE2 regex.")
    present: bool | None = Field(None, description="The parameter is there (must be true).")

    @model_validator(mode="after")
    def _one_test(self) -> QueryMatch:
        _one_of(self, ("exact", "prefix", "regex", "present"), "")
        if self.present is False:
            raise ValueError("present: only 'true' is supported; use a header match to"
                             " test for absence")
        return self


class Split(Strict):
    """One share of a weighted split."""

    upstream: Name = Field(description="A name under 'upstreams'.")
    weight: Annotated[int, Field(ge=1, le=10_000)] = Field(description="Relative weight.")


class Redirect(Strict):
    """Answer with a redirect instead of proxying."""

    scheme: Literal["http", "https"] | None = Field(None, description="New scheme.")
    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+$")] | None = Field(
        None, description="New host name.")
    port: Annotated[int, Field(ge=1, le=65535)] | None = Field(None, description="New port.")
    path: Text | None = Field(None, description="Replace the whole path.")
    prefix: Text | None = Field(None, description="Replace the matched prefix.")
    code: Literal[301, 302, 303, 307, 308] = Field(301, description="Status code.")
    strip_query: bool = Field(False, description="Drop the query string.")

    @model_validator(mode="after")
    def _something(self) -> Redirect:
        if all(getattr(self, k) is None for k in ("scheme", "host", "port", "path", "prefix")):
            raise ValueError("give at least one of 'scheme', 'host', 'port', 'path', 'prefix'")
        if self.path is not None and self.prefix is not None:
            raise ValueError("give 'path' or 'prefix', not both")
        for key in ("path", "prefix"):
            value = getattr(self, key)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{key}: {value!r} must start with '/'")
        return self


class Respond(Strict):
    """Answer directly with a status and a body."""

    status: Annotated[int, Field(ge=200, le=599)] = Field(description="HTTP status code.")
    body: Annotated[Body, Field(max_length=4096)] = Field(
        "", description="Response body; tabs and line breaks allowed, no other control"
        " characters; sent as written.")


class Retries(Strict):
    """Retry failed upstream attempts."""

    attempts: Annotated[int, Field(ge=1, le=10)] = Field(
        2, description="Retries after the first attempt.")
    conditions: Annotated[list[RETRY_ON], Field(min_length=1)] = Field(
        ["connect-failure", "refused-stream", "reset", "gateway-error"],
        description="Envoy's retry conditions.")
    per_try_timeout: PositiveDuration | None = Field(None, description="Timeout per attempt.")


class RegexRewrite(Strict):
    """Rewrite the path with an RE2 regex substitution (`\\1` for groups)."""

    pattern: Regex = Field(description="RE2 regex over the path.")
    substitution: Text = Field(description="Replacement; `\\1` names a group.")


_UPSTREAM_ONLY = ("timeout", "idle_timeout", "retries", "rewrite_prefix", "rewrite_regex",
                  "host_rewrite")


class Route(Strict):
    """One route: a match (exactly one of prefix, path, regex) and where it goes."""

    prefix: Text | None = Field(None, description="Match paths starting with this.")
    path: Text | None = Field(None, description="Match this exact path.")
    regex: Text | None = Field(None, description="Match the whole path with this RE2 regex.")
    headers: list[HeaderMatch] | None = Field(None, description="Headers that must match.")
    query: list[QueryMatch] | None = Field(None, description="Query parameters that must match.")
    upstream: Name | None = Field(None, description="A name under 'upstreams'.")
    split: Annotated[list[Split], Field(min_length=1)] | None = Field(
        None, description="Weighted split across named upstreams.")
    redirect: Redirect | None = Field(None, description="Answer with a redirect.")
    respond: Respond | None = Field(None, description="Answer directly.")
    timeout: Duration | None = Field(None, description="Request timeout (Envoy's: 15s).")
    idle_timeout: Duration | None = Field(None, description="Stream idle timeout.")
    retries: Retries | None = Field(None, description="Retry policy.")
    websocket: bool = Field(False, description="Allow websocket upgrades.")
    rewrite_prefix: Text | None = Field(None, description="Replace the matched prefix.")
    rewrite_regex: RegexRewrite | None = Field(None, description="Rewrite the path by regex.")
    host_rewrite: Annotated[str, Field(pattern=r"^[A-Za-z0-9.:\[\]-]+$")] | None = Field(
        None, description="Send this Host header upstream.")
    request_headers: HeaderEdits | None = Field(None, description="Edit request headers.")
    response_headers: HeaderEdits | None = Field(None, description="Edit response headers.")
    https_redirect: bool = Field(True, description="On a TLS site, answer plain HTTP with a"
                                 " 301 to HTTPS; false serves this route over HTTP too.")
    basic_auth: Literal[False] | None = Field(
        None, description="false: this route needs no password on a site with basic_auth"
        " (a health check, a public page).")
    forward_auth: Literal[False] | None = Field(
        None, description="false: this route is not checked by the site's forward_auth"
        " service (a health check, the login page).")
    envoy: dict[str, Any] | None = Field(None, description="Envoy Route fields merged into"
                                         " this route (see 'The envoy: escape hatch').")

    @model_validator(mode="after")
    def _one_match(self) -> Route:
        kind = _one_of(self, ("prefix", "path", "regex"), "")[0]
        for key in ("prefix", "path"):
            value = getattr(self, key)
            if value is not None and not value.startswith("/"):
                raise ValueError(f"{key}: {value!r} must start with '/'")
        if self.regex is not None:
            _check_regex(self.regex)
            if self.rewrite_prefix is not None:
                raise ValueError("rewrite_prefix: needs a 'prefix' or 'path' match")
        if self.rewrite_prefix is not None and self.rewrite_regex is not None:
            raise ValueError("rewrite_regex: give 'rewrite_prefix' or 'rewrite_regex', not both")
        self._check_action(kind)
        return self

    def _check_action(self, kind: str) -> None:
        actions = [k for k in ("upstream", "split", "redirect", "respond")
                   if getattr(self, k) is not None]
        if len(actions) > 1:
            raise ValueError(f"give one of 'upstream', 'split', 'redirect' or 'respond',"
                             f" not {' and '.join(repr(a) for a in actions)}")
        if self.proxies:
            return
        for key in (*_UPSTREAM_ONLY, "websocket"):
            if getattr(self, key) not in (None, False):
                raise ValueError(f"{key}: only for routes that go to an upstream")

    @property
    def proxies(self) -> bool:
        """True when the route sends requests upstream (not a redirect or a response)."""
        return self.redirect is None and self.respond is None

    def upstreams(self) -> tuple[str, ...]:
        """The named upstreams this route uses."""
        if self.split is not None:
            return tuple(s.upstream for s in self.split)
        return (self.upstream,) if self.upstream is not None else ()

    @property
    def match(self) -> tuple[str, str]:
        for key in ("prefix", "path", "regex"):
            value = getattr(self, key)
            if value is not None:
                return key, value
        raise AssertionError("validated route without a match")


def _check_regex(pattern: str) -> None:
    try:
        check_re2(pattern)
    except ValueError as exc:
        raise ValueError(f"regex: {exc}") from None
