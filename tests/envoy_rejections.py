"""Site files that pass every check of the daemon's own and that Envoy refuses: the
escape hatch's Envoy fields with values only Envoy judges (protoc-gen-validate rules, and
Envoy's own checks when it builds a cluster or a route table). `tests/test_twin_e2e.py`
runs them on the live Envoy, the validation twin and `envoy --mode validate`. And
`MISTAKES`: type errors no site file can make, which Envoy's verdict must refuse in a
render of the daemon's own making, whose Python type checks it skips."""

from __future__ import annotations

import dataclasses

from controlplane.render.rendering import CLUSTER, SiteResources, fragment

_CHECK = "{timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1"

HATCH = {
    "negtimeout": "envoy: {cluster: {connect_timeout: -1s}}\n",
    "zerotimeout": "envoy: {cluster: {connect_timeout: 0s}}\n",
    "ringsize": "envoy: {cluster: {lb_policy: RING_HASH, ring_hash_lb_config:"
                " {minimum_ring_size: 10, maximum_ring_size: 5}}}\n",
    "nochecker": "envoy: {cluster: {health_checks: [" + _CHECK + "}]}}\n",
    "checkzero": "envoy: {cluster: {health_checks: [{timeout: 0s, interval: 1s,"
                 " unhealthy_threshold: 1, healthy_threshold: 1,"
                 " http_health_check: {path: /}}]}}\n",
    "checkpath": "envoy: {cluster: {health_checks: [" + _CHECK
                 + ", http_health_check: {path: ''}}]}}\n",
    "ejection": "envoy: {cluster: {outlier_detection: {max_ejection_percent: 101}}}\n",
    "panic": "envoy: {cluster: {common_lb_config: {healthy_panic_threshold: {value: 150}}}}\n",
    "h2window": "envoy: {cluster: {http2_protocol_options: {initial_stream_window_size: 1}}}\n",
    "status99": "routes: [{prefix: /, respond: {status: 200}, envoy: {direct_response:"
                " {status: 99}}}]\n",
    "pseudo": "envoy: {virtual_host: {request_headers_to_add: [{header: {key: ':path',"
              " value: x}}]}}\n",
    "nohost": "envoy: {virtual_host: {request_headers_to_remove: [host]}}\n",
    "backoff": "envoy: {virtual_host: {retry_policy: {retry_back_off: {base_interval: 10s,"
               " max_interval: 1s}}}}\n",
    "hedge": "envoy: {virtual_host: {hedge_policy: {initial_requests: 0}}}\n",
    "rewrite": "routes: [{prefix: /, envoy: {route: {regex_rewrite: {pattern: {regex: '(?=a)'},"
               " substitution: x}}}}]\n",
    "tworewrites": "routes: [{prefix: /a, envoy: {route: {prefix_rewrite: /b, regex_rewrite:"
                   " {pattern: {regex: a}, substitution: b}}}}]\n",
    "headername": "routes: [{prefix: /, envoy: {match: {headers: [{name: '',"
                  " present_match: true}]}}}]\n",
    "upgrade": "routes: [{prefix: /, envoy: {route: {upgrade_configs: [{upgrade_type: ''}]}}}]\n",
}
"""Site name -> what follows its domains and upstream."""

ACCEPTED = {
    "plain": "",
    "checked": "envoy: {cluster: {health_checks: [" + _CHECK
               + ", http_health_check: {path: /}}]}}\n",
    "retries": "envoy: {virtual_host: {retry_policy: {retry_on: 5xx, num_retries: 2}}}\n",
}
"""Controls: every validator must take these."""


def site_text(name: str, body: str) -> str:
    return f"domains: [{name}.example.com]\nupstream: {{socket: /tmp/{name}.sock}}\n{body}"


MISTAKES = [{"connect_timeout": "soon"}, {"conect_timeout": "1s"}]
"""Type errors the Python type checks catch: a wrong value, an unknown field."""


def broken(good: SiteResources, mistake: dict[str, str]) -> SiteResources:
    """`good` with `mistake` in its cluster, as a bug in the renderer would make it."""
    (name, cluster), = good.clusters
    changed = {**cluster, **mistake}
    return dataclasses.replace(good, digest="b" * 16, clusters=((name, changed),),
                               cluster_json=((name, fragment(changed, CLUSTER)),))
