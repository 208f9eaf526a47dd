"""The small value types every part of the site file shares: the strict model base,
names, durations, RE2 patterns, header names and header edits.

No I/O, no Envoy. `model`, `routes` and `policies` build the site file from these.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import re2
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from controlplane.site.formats import BODY_ALLOWED, check_format, check_text

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
"""Site and upstream names: a DNS label of at most 63 characters."""

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
MAX_DURATION_S = 315_576_000_000
"""The longest protobuf Duration (10,000 years): Envoy refuses more."""
_RE2_QUIET = re2.Options()
_RE2_QUIET.log_errors = False  # the reason is reported per file; nothing on stderr


class Strict(BaseModel):
    """Unknown keys are errors, values are never coerced, models are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def duration_ms(text: str) -> int:
    """`'1.5s'` -> 1500. The model has already checked the form."""
    match = _DURATION.match(text)
    assert match is not None
    return round(float(match.group(1)) * _UNIT_MS[match.group(2)])


def envoy_duration(text: str) -> str:
    """`'1.5s'` -> `'1.500s'`, the protobuf JSON form of a Duration."""
    ms = duration_ms(text)
    return f"{ms // 1000}.{ms % 1000:03d}s"


ENVOY_MAX_RE2_PROGRAM = 100
"""Envoy refuses regexes whose RE2 program is larger (its default error level)."""


def check_re2(pattern: str) -> str:
    """The pattern, if Envoy's RE2 accepts it (Python's `re` accepts more)."""
    try:
        size = re2.compile(pattern, _RE2_QUIET).programsize
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(f"{pattern!r} is not valid RE2 syntax: {reason}") from None
    if size > ENVOY_MAX_RE2_PROGRAM:
        raise ValueError(f"{pattern!r} compiles to an RE2 program of size {size};"
                         f" Envoy allows at most {ENVOY_MAX_RE2_PROGRAM}")
    return pattern


def _positive(text: str) -> str:
    if duration_ms(text) <= 0:
        raise ValueError(f"{text!r}: must be more than 0")
    return text


Name = Annotated[str, Field(pattern=f"^{DNS_LABEL.pattern}$", max_length=63)]
def _duration(value: Any) -> Any:
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a duration; write a duration like 30s, 500ms, 5m"
                         " (a number and a unit: ms, s, m or h)")
    if float(match.group(1)) * _UNIT_MS[match.group(2)] > MAX_DURATION_S * 1000:
        raise ValueError(f"{value!r} is longer than Envoy takes; write at most"
                         f" {MAX_DURATION_S}s (10,000 years)")
    return value


Duration = Annotated[str, BeforeValidator(_duration), WithJsonSchema(
    {"type": "string", "pattern": _DURATION.pattern, "examples": ["30s", "500ms", "5m"]})]
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
Regex = Annotated[str, AfterValidator(check_re2)]
HeaderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$", max_length=256)]
"""A header name that may be set or removed (not `:path` and the like)."""
MatchHeaderName = Annotated[str, Field(pattern=r"^:?[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
                                       max_length=256)]
"""A header name to match on; pseudo-headers such as `:method` are allowed."""
Text = Annotated[str, AfterValidator(check_text)]
"""A string that reaches Envoy: no control characters (CR, LF, NUL, ...)."""
Body = Annotated[str, AfterValidator(lambda text: check_text(text, BODY_ALLOWED))]
"""A response body: tabs and line breaks allowed (Envoy frames it by length)."""
Format = Annotated[str, AfterValidator(check_format)]
"""An Envoy format string: only the allowed `%COMMAND%`s (`formats.FORMAT_COMMANDS`)."""
HeaderValue = Annotated[Text, Field(max_length=8192)]
"""A header value, sent as written: a `%` is escaped for Envoy (`formats.literal`)."""
_FORBIDDEN_EDITS = {"host", "connection", "transfer-encoding", "upgrade", "content-length"}


def _editable(names: Any) -> Any:
    for name in names:
        if name.lower() in _FORBIDDEN_EDITS:
            raise ValueError(f"{name!r}: this header is managed by Envoy and cannot be edited")
    return names


class HeaderEdits(Strict):
    """Headers to set (replace), add (append) or remove, on a request or a response."""

    set: Annotated[dict[HeaderName, HeaderValue], AfterValidator(_editable)] | None = Field(
        None, description="Set these headers, replacing any value they have.")
    add: Annotated[dict[HeaderName, HeaderValue], AfterValidator(_editable)] | None = Field(
        None, description="Add these headers, keeping any values they have.")
    remove: Annotated[list[HeaderName], AfterValidator(_editable)] | None = Field(
        None, description="Remove these headers.")
