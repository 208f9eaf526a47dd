"""Pure rendering of a site's error pages and basic-auth realm: the per-virtual-host
config of Envoy's custom_response filter.

The listener installs the filter first and disabled (`vhosts.HTTP_FILTERS`); a site with
`error_pages` or `basic_auth.realm` switches it on for its own virtual host, so a page
added or changed touches only `rds.json`. Being first, the filter sees every reply the
later filters make (the access list's 403, the rate limit's 429, basic auth's 401) and the
router's (no route, the upstream down or slow). It replaces only Envoy's own replies: a
response whose details are `via_upstream` (the upstream's own 404 or 503) passes as sent.
Each page is inlined, read by the daemon (`pages`): Envoy opens no file a site names, and
its body is sent as written, never as a format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CUSTOM_RESPONSE = "envoy.filters.http.custom_response"
CUSTOM_RESPONSE_TYPE = ("type.googleapis.com/envoy.extensions.filters.http.custom_response.v3"
                        ".CustomResponse")
LOCAL_RESPONSE = ("type.googleapis.com/envoy.extensions.http.custom_response"
                  ".local_response_policy.v3.LocalResponsePolicy")
STATUS_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpResponseStatusCodeMatchInput"
CEL_INPUT = "type.googleapis.com/xds.type.matcher.v3.HttpAttributesCelMatchInput"
CEL_MATCHER = "type.googleapis.com/xds.type.matcher.v3.CelMatcher"
LISTENER_FILTER: dict[str, Any] = {"name": CUSTOM_RESPONSE, "disabled": True,
                                   "typed_config": {"@type": CUSTOM_RESPONSE_TYPE}}
"""The listener's entry: off until a virtual host gives it its matcher."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """One error page as read and judged: the status it answers, its type and text."""

    status: int
    content_type: str
    body: str


def _is_local() -> dict[str, Any]:
    """`response.code_details != 'via_upstream'`, as a parsed CEL expression (this matcher
    takes no expression text): true for Envoy's own replies only."""
    details = {"id": 2, "select_expr": {"operand": {"id": 3, "ident_expr": {
        "name": "response"}}, "field": "code_details"}}
    expression = {"id": 1, "call_expr": {"function": "_!=_", "args": [
        details, {"id": 4, "const_expr": {"string_value": "via_upstream"}}]}}
    return {"single_predicate": {
        "input": {"name": "attributes", "typed_config": {"@type": CEL_INPUT}},
        "custom_match": {"name": "local_reply", "typed_config": {
            "@type": CEL_MATCHER, "expr_match": {"cel_expr_parsed": {"expr": expression}}}}}}


def _header(key: str, value: str) -> dict[str, Any]:
    # Header values are formats to Envoy: a literal `%` is `%%`.
    return {"header": {"key": key, "value": value.replace("%", "%%")},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _matcher(status: int, page: Page | None, realm: str | None) -> dict[str, Any]:
    policy: dict[str, Any] = {"@type": LOCAL_RESPONSE}
    headers = []
    if page is not None:
        policy["body"] = {"inline_string": page.body}
        headers.append(_header("content-type", page.content_type))
    if realm is not None and status == 401:
        headers.append(_header("www-authenticate", f'Basic realm="{realm}"'))
    if headers:
        policy["response_headers_to_add"] = headers
    status_is = {"single_predicate": {
        "input": {"name": "status", "typed_config": {"@type": STATUS_INPUT}},
        "value_match": {"exact": str(status)}}}
    return {"predicate": {"and_matcher": {"predicate": [status_is, _is_local()]}},
            "on_match": {"action": {"name": f"status_{status}", "typed_config": policy}}}


def custom_response(pages: tuple[Page, ...], realm: str | None) -> dict[str, Any] | None:
    """The filter's config for a virtual host, or None when the site needs none."""
    by_status = {page.status: page for page in pages}
    statuses = sorted({*by_status, *((401,) if realm is not None else ())})
    if not statuses:
        return None
    return {"@type": CUSTOM_RESPONSE_TYPE, "custom_response_matcher": {"matcher_list": {
        "matchers": [_matcher(s, by_status.get(s), realm) for s in statuses]}}}
