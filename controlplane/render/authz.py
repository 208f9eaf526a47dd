"""Pure rendering of a site's `forward_auth`: Envoy's ext_authz HTTP filter asking the
site's auth service (its cluster `SITE/_auth`) about each request.

The listener installs two filters, disabled (`LISTENER_FILTERS`): a header mutation that
removes the client's own copies of the headers the service vouches for, then ext_authz
with a placeholder service. A site switches both on for its own virtual host, and its
per-route config names its own service (`check_settings.http_service`), so adding or
changing forward_auth touches only `rds.json`. Envoy 1.40 honours the per-route service's
`headers_to_add`, `path_prefix`, timeout and `allowed_upstream_headers`, not its
`allowed_headers`: the headers sent to the service are added by name as formats
(`%REQ(cookie)%`; a header the client did not send is left out).

Failing closed: no answer within the timeout, a refused connection or a broken answer is
503 (`status_on_error`, one value for every site, on the listener); `failure_mode_allow`
stays off. A denial (any non-2xx) reaches the client as the service gave it (its status,
body and headers: a login redirect with its cookie), so oauth2-proxy's pattern works.
"""

from __future__ import annotations

from typing import Any

from controlplane.site.auth import ForwardAuth

EXT_AUTHZ = "envoy.filters.http.ext_authz"
HEADER_MUTATION = "envoy.filters.http.header_mutation"
_API = "type.googleapis.com/envoy.extensions.filters.http"
PLACEHOLDER_CLUSTER = "_no_auth_service"
"""The listener's ext_authz names a cluster that never exists (not a DNS label); it is
disabled, and each site's config names the site's own service instead."""
LISTENER_FILTERS: tuple[dict[str, Any], ...] = (
    {"name": HEADER_MUTATION, "disabled": True, "typed_config": {
        "@type": f"{_API}.header_mutation.v3.HeaderMutation"}},
    {"name": EXT_AUTHZ, "disabled": True, "typed_config": {
        "@type": f"{_API}.ext_authz.v3.ExtAuthz",
        "http_service": {"server_uri": {"uri": "http://auth", "cluster": PLACEHOLDER_CLUSTER,
                                        "timeout": "1s"}},
        "failure_mode_allow": False, "status_on_error": {"code": "ServiceUnavailable"}}},
)
_FORWARDED = (("x-forwarded-method", "%REQ(:METHOD)%"),
              ("x-forwarded-host", "%REQ(:AUTHORITY)%"), ("x-forwarded-uri", "%REQ(:PATH)%"),
              ("x-forwarded-proto", "%REQ(X-FORWARDED-PROTO)%"),
              ("x-forwarded-for", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"))
"""What the client asked for, in the forward-auth convention; `x-forwarded-for` is the
client's address as Envoy found it (behind trusted_proxies, the forwarded one)."""


def configs(auth: ForwardAuth, cluster: str, timeout: str) -> dict[str, dict[str, Any]]:
    """The virtual host's `typed_per_filter_config` entries (unwrapped) for forward_auth."""
    sent = [*_FORWARDED, *((name, f"%REQ({name})%") for name in auth.headers)]
    service: dict[str, Any] = {
        "server_uri": {"uri": "http://auth", "cluster": cluster, "timeout": timeout},
        "authorization_request": {"headers_to_add": [
            {"key": key, "value": value} for key, value in sent]},
    }
    if auth.path:
        service["path_prefix"] = auth.path.rstrip("/")
    found: dict[str, dict[str, Any]] = {EXT_AUTHZ: {
        "@type": f"{_API}.ext_authz.v3.ExtAuthzPerRoute",
        "check_settings": {"http_service": service}}}
    if auth.response_headers:
        service["authorization_response"] = {"allowed_upstream_headers": {"patterns": [
            {"exact": name} for name in auth.response_headers]}}
        found[HEADER_MUTATION] = {
            "@type": f"{_API}.header_mutation.v3.HeaderMutationPerRoute",
            "mutations": {"request_mutations": [{"remove": name}
                                                for name in auth.response_headers]}}
    return found
