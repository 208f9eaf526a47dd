"""The escape hatch's fence on Envoy's canonical form: every JSON spelling protobuf
accepts (snake_case, lowerCamel), nesting inside `Any` and per-filter configs,
TypedStruct wrappers and oneof alternatives are judged by what Envoy will parse, and
each refusal names the field as the user wrote it."""

from __future__ import annotations

import pytest

from controlplane.intake.checking import check_content
from controlplane.settings import Settings
from controlplane.site import formats

SETTINGS = Settings()
NAMED = ("domains: [a.example]\nupstreams:\n  a: {socket: /tmp/a.sock}\n"
         "  b: {socket: /tmp/b.sock}\nroutes: [{prefix: /, upstream: a}]\n")
SITE = "domains: [a.example]\nupstream: {socket: /tmp/a.sock}\n"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
FILTER = "type.googleapis.com/envoy.config.route.v3.FilterConfig"


def _problems(text: str) -> list[str]:
    checked = check_content("site", "sites/site.yaml", text.encode(), SETTINGS)
    return [str(p) for p in checked.problems]


def _route(envoy: str) -> str:
    return SITE + f"routes:\n  - prefix: /\n    envoy: {envoy}\n"


@pytest.mark.parametrize(("text", "expected"), [
    # Picking a cluster at request time, in every spelling and position
    (_route("{route: {cluster: null, cluster_header: x-to}}"),
     "routes[1].envoy.route.cluster_header: picks a cluster at request time"),
    (_route("{route: {cluster: null, clusterHeader: x-to}}"),
     "routes[1].envoy.route.clusterHeader: picks a cluster at request time"),
    (SITE + "envoy: {virtual_host: {routes: [{match: {prefix: /}, route: {clusterHeader: x}}]}}\n",
     "envoy.virtual_host.routes[1].route.clusterHeader: picks a cluster"),
    (_route("{route: {cluster: null, weightedClusters: {clusters: [{clusterHeader: x,"
            " weight: 1}]}}}"),
     "routes[1].envoy.route.weightedClusters.clusters[1].clusterHeader: picks a cluster"),
    (_route("{route: {cluster: null, weighted_clusters: {clusters: [{name: other, weight: 1}]}}}"),
     "routes[1].envoy.route.weighted_clusters.clusters[1].name: 'other' is not a cluster"),
    (_route("{route: {requestMirrorPolicies: [{cluster: other}]}}"),
     "routes[1].envoy.route.requestMirrorPolicies[1].cluster: 'other' is not a cluster"),
    (_route("{route: {request_mirror_policies: [{cluster_header: x-m}]}}"),
     "routes[1].envoy.route.request_mirror_policies[1].cluster_header: picks a cluster"),
    (_route("{route: {cluster: null, clusterSpecifierPlugin: p}}"),
     "routes[1].envoy.route.clusterSpecifierPlugin: picks a cluster"),
    (_route("{route: {cluster: other}}"), "routes[1].envoy.route.cluster: 'other' is not"),
    (_route("{route: {internalRedirectPolicy: {maxInternalRedirects: 3}}}"),
     "routes[1].envoy.route.internalRedirectPolicy: not on the escape hatch's allow-list"),
    # Files and the environment, through every DataSource alternative and spelling
    (SITE + "routes: [{prefix: /, respond: {status: 200}, envoy: {direct_response: "
     "{body: {filename: /etc/passwd}}}}]\n",
     "routes[1].envoy.direct_response.body.filename: makes Envoy open a file"),
    (SITE + "routes: [{prefix: /, respond: {status: 200}, envoy: {direct_response: "
     "null, directResponse: {status: 200, body: {environmentVariable: HOME}}}}]\n",
     "routes[1].envoy.directResponse.body.environmentVariable: makes Envoy open a file"),
    (SITE + "envoy: {cluster: {healthChecks: [{timeout: 1s, interval: 1s, unhealthyThreshold: 1,"
     " healthyThreshold: 1, httpHealthCheck: {path: /}, eventLogPath: /etc/x}]}}\n",
     "envoy.cluster.healthChecks[1].eventLogPath: makes Envoy open a file"),
    (SITE + "envoy: {cluster: {healthChecks: [{timeout: 1s, interval: 1s, unhealthyThreshold: 1,"
     " healthyThreshold: 1, tcpHealthCheck: {}, eventLogger: [{name: x, typedConfig: {'@type':"
     " type.googleapis.com/envoy.config.route.v3.FilterConfig}}]}]}}\n",
     "envoy.cluster.healthChecks[1].eventLogger: makes Envoy open a file"),
    (SITE + "envoy: {cluster: {transportSocket: {name: envoy.transport_sockets.tap}}}\n",
     "envoy.cluster.transportSocket: not on the escape hatch's allow-list"),
    # Fixed fields in camelCase
    (SITE + "envoy: {cluster: {loadAssignment: {clusterName: x}}}\n",
     "envoy.cluster.loadAssignment: fixed by the site file"),
    (SITE + "envoy: {cluster: {altStatName: other}}\n", "envoy.cluster.altStatName: fixed"),
    (SITE + "envoy: {cluster: {type: null, clusterType: {name: x}}}\n",
     "envoy.cluster.type: fixed by the site file"),
    (SITE + "envoy: {virtual_host: {domains: null}}\n", "envoy.virtual_host.domains: fixed"),
    # Any, per-filter configs, TypedStruct
    (SITE + "envoy: {virtual_host: {typedPerFilterConfig: {envoy.filters.http.cors: {'@type': "
     + CORS + ", allowOriginStringMatch: [{exact: \"a\\r\\nb\"}]}}}}\n",
     "envoy.virtual_host.typedPerFilterConfig.envoy.filters.http.cors.allowOriginStringMatch[1]"
     ".exact: holds carriage return"),
    (SITE + "envoy: {virtual_host: {typed_per_filter_config: {envoy.filters.http.router: {"
     "'@type': " + FILTER + ", config: {'@type': " + CORS + "}}}}}\n",
     "typed_per_filter_config.envoy.filters.http.router: the type"
     " envoy.config.route.v3.FilterConfig is not allowed here"),
    (SITE + "envoy: {virtual_host: {typed_per_filter_config: {envoy.filters.http.cors: {"
     "'@type': type.googleapis.com/xds.type.v3.TypedStruct, type_url: x}}}}\n",
     "envoy.filters.http.cors: xds.type.v3.TypedStruct is refused"),
    (SITE + "envoy: {virtual_host: {typed_per_filter_config: {envoy.filters.http.cors: {"
     "'@type': type.googleapis.com/udpa.type.v1.TypedStruct}}}}\n",
     "udpa.type.v1.TypedStruct is refused"),
    (_route("{route: {retryPolicy: {retryHostPredicate: [{name: x, typedConfig: {'@type':"
            " type.googleapis.com/envoy.config.route.v3.FilterConfig}}]}}}"),
     "routes[1].envoy.route.retryPolicy.retryHostPredicate[1].typedConfig: the type"),
    # Strings and formats
    (SITE + "envoy: {virtual_host: {responseHeadersToAdd: [{header: {key: x-e, value:"
     " '%ENVIRONMENT(HOME)%'}}]}}\n",
     "envoy.virtual_host.responseHeadersToAdd[1].header.value: the command %ENVIRONMENT%"),
    (_route("{response_headers_to_add: [{header: {key: x-e, value: \"a\\r\\nset-cookie: x\"}}]}"),
     "routes[1].envoy.response_headers_to_add[1].header.value: holds carriage return"),
    (_route("{request_headers_to_add: [{header: {key: x-e, value: '50% off'}}]}"),
     "header.value: a lone '%' at character 3; write '%%'"),
    (SITE + "envoy: {cluster: {health_checks: [{timeout: 1s, interval: 1s, unhealthy_threshold:"
     " 1, healthy_threshold: 1, http_health_check: {path: /, request_headers_to_add: [{header:"
     " {key: x, value: '%HOSTNAME%'}}]}}]}}\n", "the command %HOSTNAME% is not allowed"),
    (SITE + "envoy: {virtual_host: {typed_per_filter_config: {envoy.filters.http.local_ratelimit: {"
     "'@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit,"
     " stat_prefix: x, response_headers_to_add: [{header: {key: x, value:"
     " '%ENVIRONMENT(PATH)%'}}]}}}}\n", "the command %ENVIRONMENT% is not allowed"),
    (SITE + "envoy: {cluster: {perConnectionBufferLimitBytes: 4294967295}}\n",
     "envoy.cluster.perConnectionBufferLimitBytes: 4294967295 is over 1048576 bytes"),
    (SITE + "envoy: {virtual_host: {per_request_buffer_limit_bytes: 2000000}}\n",
     "envoy.virtual_host.per_request_buffer_limit_bytes: 2000000 is over 1048576 bytes"),
    (SITE + "envoy: {cluster: {lb_policy: RING_HASH, ringHashLbConfig: {minimumRingSize:"
     " 8388608}}}\n", "envoy.cluster.ringHashLbConfig.minimumRingSize: 8388608 is over 65536"),
    (_route("{route: {requestMirrorPolicies: [{cluster: site}, {cluster: site}, {cluster:"
            " site}]}}"), "routes[1].envoy.route.requestMirrorPolicies: 3 mirror policies"),
    (SITE + "envoy: {virtual_host: {typed_per_filter_config: {envoy.filters.http.local_ratelimit: {"
     "'@type': type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit,"
     " stat_prefix: x, maxDynamicDescriptors: 4294967295}}}}\n",
     "local_ratelimit.maxDynamicDescriptors: 4294967295 is over 1000"),
    (SITE + "envoy: {cluster: {lb_policy: MAGLEV, maglev_lb_config: {table_size: 5000011}}}\n",
     "envoy.cluster.maglev_lb_config.table_size: 5000011 is over 65537"),
    (SITE + "routes: [{prefix: /, respond: {status: 200}, envoy: {direct_response: "
     "{body_format: {text_format: '%ENVIRONMENT(HOME)%'}}}}]\n",
     "routes[1].envoy.direct_response.body_format: not on the escape hatch's allow-list"),
])
def test_fence_judges_the_parsed_message_in_any_spelling(text: str, expected: str) -> None:
    """Each way around the fence is refused, naming the field as the user spelled it."""
    problems = _problems(text)
    assert any(expected in p for p in problems), problems
    assert not any(": envoy: " in p for p in problems), problems


@pytest.mark.parametrize("text", [
    SITE + "envoy: {cluster: {outlierDetection: {consecutive5xx: 5}, connectTimeout: null}}\n",
    SITE + "envoy: {cluster: {typed_extension_protocol_options: {envoy.extensions.upstreams.http"
    ".v3.HttpProtocolOptions: {'@type': type.googleapis.com/envoy.extensions.upstreams.http.v3"
    ".HttpProtocolOptions, explicitHttpConfig: {http2ProtocolOptions: {}}}}}}\n",
    SITE + "envoy: {cluster: {healthChecks: [{timeout: 1s, interval: 1s, unhealthyThreshold: 1,"
    " healthyThreshold: 1, httpHealthCheck: {path: /}}]}}\n",
    _route("{route: {hashPolicy: [{header: {headerName: x-user}}], timeout: 3s}}"),
    _route("{route: {cluster: null, weighted_clusters: {clusters: [{name: site, weight: 1}]}}}"),
    _route("{response_headers_to_add: [{header: {key: x-ip, value:"
           " '%DOWNSTREAM_REMOTE_ADDRESS% 100%%'}}]}"),
    NAMED + "envoy: {virtual_host: {requestMirrorPolicies: [{cluster: site/b}],"
    " routes: [{match: {prefix: /}, route: {cluster: site/b}}]}}\n",
    SITE + "envoy: {virtual_host: {typedPerFilterConfig: {envoy.filters.http.cors: {'@type': "
    + FILTER + ", config: {'@type': " + CORS + ", allowOriginStringMatch: [{exact: x}]}}}}}\n",
    SITE + "envoy: {cluster: {lb_policy: RING_HASH, ring_hash_lb_config: {minimum_ring_size:"
    " 4096}}}\n",
    SITE + "routes: [{prefix: /, respond: {status: 200}, envoy: {direct_response: "
    "{body: {inline_string: \"User-agent: *\\nDisallow: /\\n\"}}}}]\n",
])
def test_fence_lets_allow_listed_fields_through(text: str) -> None:
    """Allow-listed fields pass in either spelling, and a site's own clusters may be named."""
    assert _problems(text) == []


def test_camel_case_overrides_merge_into_the_generated_fields() -> None:
    """A lowerCamel key merges into the generated snake_case one (no duplicate field), in
    nested messages and inside an `Any`; Envoy gets the canonical form."""
    checked = check_content("site", "sites/site.yaml", (
        SITE + "routes: [{prefix: /, envoy: {route: {timeout: 3s, hashPolicy: [{header:"
        " {headerName: x-u}}]}}}]\nenvoy: {cluster: {connectTimeout: 2s}}\n").encode(),
        SETTINGS)
    assert checked.resources is not None, checked.problems
    assert checked.resources.clusters[0][1]["connect_timeout"] == "2s"
    route = checked.resources.virtual_host["routes"][0]["route"]
    assert route["hash_policy"] == [{"header": {"header_name": "x-u"}}]
    assert route["cluster"] == "site" and route["timeout"] == "3s"


def test_header_values_of_the_schema_are_literal() -> None:
    """A `%` in a schema header value reaches Envoy escaped, so it is never a command."""
    checked = check_content("site", "sites/site.yaml", (
        SITE + "response_headers: {set: {x-a: '100% %ENVIRONMENT(HOME)%'}}\n").encode(), SETTINGS)
    assert checked.resources is not None, checked.problems
    added = checked.resources.virtual_host["response_headers_to_add"]
    assert added[0]["header"]["value"] == "100%% %%ENVIRONMENT(HOME)%%"


@pytest.mark.parametrize(("text", "expected"), [
    ("%REQ(:PATH)% %RESPONSE_CODE% 100%%", None),
    ("%START_TIME(%Y/%m/%dT%H:%M:%S%z)% %REQ(USER-AGENT):20%", None),
    ("%ENVIRONMENT(HOME)%", "the command %ENVIRONMENT% is not allowed"),
    ("%HOSTNAME%", "the command %HOSTNAME% is not allowed"),
    ("%DYNAMIC_METADATA(a:b)%", "the command %DYNAMIC_METADATA% is not allowed"),
    ("50% off", "a lone '%' at character 3"),
    ("ends with %", "a lone '%' at character 11"),
    ("%req(:path)%", "'%req' at character 1 is not a command Envoy knows"),
    ("%REQ(:PATH) x", "'%REQ' at character 1 is not a command Envoy knows"),
])
def test_formats_take_only_allowed_commands(text: str, expected: str | None) -> None:
    """A format may use the allowed commands and `%%`; anything else is named."""
    found = formats.format_problem(text)
    assert (found is None) if expected is None else (expected in (found or "")), found


def test_control_characters_are_named_and_bodies_keep_line_breaks() -> None:
    """CR, LF, NUL and DEL are named with their position; a body keeps tabs and LF."""
    assert formats.control_character("a\r\nb") == "carriage return (CR) (U+000D) at character 2"
    assert formats.control_character("a\x7f") == "DEL (U+007F) at character 2"
    assert formats.control_character("a\tb\nc", formats.BODY_ALLOWED) is None
    assert formats.control_character("a\r\n", formats.BODY_ALLOWED) is not None
    assert formats.literal("100% %ENVIRONMENT(X)%") == "100%% %%ENVIRONMENT(X)%%"


def test_changes_see_presence_removal_and_inside_any() -> None:
    """An empty message that is now present, a removed list item, and a field inside an
    `Any` are each a change at their canonical path; equal messages have none."""
    from envoy.config.cluster.v3 import cluster_pb2
    from google.protobuf import json_format

    from controlplane.render.fence import changes

    def parse(data: dict[str, object]) -> cluster_pb2.Cluster:
        return json_format.ParseDict(data, cluster_pb2.Cluster())

    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    base = parse({"name": "a", "health_checks": [{"timeout": "1s"}, {"timeout": "2s"}]})
    merged = parse({"name": "a", "health_checks": [{"timeout": "1s"}],
                    "http2ProtocolOptions": {}, "typed_extension_protocol_options": {
                        options: {"@type": f"type.googleapis.com/{options}",
                                  "explicit_http_config": {"http_protocol_options": {}}}}})
    found = {".".join(str(s) for s in c.path): c for c in changes(base, merged)}
    assert found["health_checks.1"].removed
    assert not found["http2_protocol_options"].removed
    assert found[f"typed_extension_protocol_options.{options}"].type_name == options
    assert (f"typed_extension_protocol_options.{options}.explicit_http_config"
            ".http_protocol_options") in found
    assert changes(base, parse({"name": "a", "healthChecks": [{"timeout": "1s"},
                                                              {"timeout": "2s"}]})) == []
