"""Strings that reach Envoy: control characters, and Envoy's `%...%` substitution commands.

No I/O, no Envoy. Checked on Envoy 1.40: header values (`request_headers_to_add`,
`response_headers_to_add`, health-check headers) and access-log formats go through
Envoy's substitution formatter, so `%ENVIRONMENT(HOME)%` in a header value sends Envoy's
environment to clients, `%%` is a literal `%`, and a lone `%` makes Envoy refuse the
whole file. Direct-response bodies and redirect targets are sent as written. A body is
framed by its length, so line breaks in it cannot split a response; in every other
string a control character is refused.
"""

from __future__ import annotations

import re

FORMAT_COMMANDS = frozenset({
    "START_TIME", "REQ", "RESP", "TRAILER", "PROTOCOL", "RESPONSE_CODE",
    "RESPONSE_CODE_DETAILS", "RESPONSE_FLAGS", "RESPONSE_FLAGS_LONG", "BYTES_RECEIVED",
    "BYTES_SENT", "DURATION", "REQUEST_DURATION", "REQUEST_TX_DURATION", "RESPONSE_DURATION",
    "RESPONSE_TX_DURATION", "UPSTREAM_HOST", "UPSTREAM_CLUSTER", "UPSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_REMOTE_ADDRESS", "UPSTREAM_TRANSPORT_FAILURE_REASON",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT", "DOWNSTREAM_REMOTE_ADDRESS",
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_REMOTE_PORT",
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_ADDRESS", "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_LOCAL_PORT",
    "REQUESTED_SERVER_NAME", "ROUTE_NAME", "CONNECTION_ID", "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_CIPHER", "DOWNSTREAM_TLS_SESSION_ID", "UNIQUE_ID",
})
"""The substitution commands a site may use where Envoy reads a format: facts about the
request and its connection. Never `ENVIRONMENT`, `HOSTNAME`, metadata, filter state or
anything else that reads Envoy's own state."""

_COMMAND = re.compile(r"%([A-Z][A-Z0-9_]*)(\([^)]*\))?(:[0-9]+)?%")
_WORD = re.compile(r"[A-Za-z_]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NAMES = {0: "NUL", 9: "tab", 10: "line feed (LF)", 13: "carriage return (CR)", 127: "DEL"}
BODY_ALLOWED = "\t\n"
"""Control characters a direct-response body may hold: a text file's tabs and line breaks."""


def control_character(text: str, allowed: str = "") -> str | None:
    """A description of the first control character in `text` not in `allowed`, if any."""
    for match in _CONTROL.finditer(text):
        if match.group() not in allowed:
            code = ord(match.group())
            name = _NAMES.get(code, "a control character")
            return f"{name} (U+{code:04X}) at character {match.start() + 1}"
    return None


def check_text(text: str, allowed: str = "") -> str:
    """`text`, if it holds no control character (but those `allowed`); else ValueError."""
    found = control_character(text, allowed)
    if found is not None:
        raise ValueError(f"{_short(text)} holds {found}; control characters are not allowed"
                         " (they would split or corrupt what Envoy sends)")
    return text


def format_problem(text: str) -> str | None:
    """Why `text` is not a format a site may give Envoy: a command not on
    `FORMAT_COMMANDS`, or a lone `%` (Envoy refuses those); None when it is fine."""
    position = 0
    while (start := text.find("%", position)) != -1:
        if text.startswith("%%", start):
            position = start + 2
            continue
        match = _COMMAND.match(text, start)
        if match is None:
            word = _WORD.match(text, start + 1)
            if word is not None:
                return (f"'%{word.group()}' at character {start + 1} is not a command Envoy"
                        " knows (commands are upper case, as %REQ(...)%, and end with '%');"
                        " write '%%' for a literal percent sign")
            return (f"a lone '%' at character {start + 1}; write '%%' for a literal percent"
                    " sign")
        if match.group(1) not in FORMAT_COMMANDS:
            return (f"the command %{match.group(1)}% is not allowed; allowed: request and"
                    " connection facts such as %REQ(...)%, %RESPONSE_CODE%, %START_TIME%"
                    " (see README 'Strings and formats')")
        position = match.end()
    return None


def check_format(text: str) -> str:
    """`text`, if it is a format a site may give Envoy; else ValueError."""
    check_text(text)
    found = format_problem(text)
    if found is not None:
        raise ValueError(f"{_short(text)}: {found}")
    return text


def literal(text: str) -> str:
    """`text` as an Envoy format that means exactly `text` (`%` written `%%`)."""
    return text.replace("%", "%%")


def _short(text: str) -> str:
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."
